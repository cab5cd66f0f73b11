"""Helpers for the bridge plugin's root tests: run the handlers in-process
through the dispatcher, with a throwaway node namespace as their host, and
read the kernel state of node and pod namespaces with ``ip -j``.
"""
from __future__ import annotations

import ipaddress
import json
import os
import sys

from plugins.core import netns as cns
from plugins.core.skel import dispatch

VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def conf(data_dir: str, version: str = "1.0.0", *, v4: str | None = "10.31.0.0/24",
         v6: str | None = None, name: str = "brnet", ipam: dict | None = None, **extra) -> dict:
    ranges = []
    if v4:
        ranges.append([{"subnet": v4}])
    if v6:
        ranges.append([{"subnet": v6}])
    c = {"cniVersion": version, "name": name, "type": "bridge", "bridge": "cni0"}
    if ipam is None:
        ipam = {"type": "host-local", "dataDir": data_dir, "ranges": ranges}
    if ipam:
        c["ipam"] = ipam
    c.update(extra)
    return c


def call(node, command: str, config: dict, *, netns: str | None = "", cid: str = "c1",
         ifname: str = "eth0", prev: dict | None = None, cni_args: str = "",
         path: str = "/usr/lib/cni", env: dict | None = None) -> tuple[int, dict | None]:
    """Run one bridge call in ``node``; returns (exit status, parsed stdout or None)."""
    cfg = dict(config)
    if prev is not None:
        cfg["prevResult"] = prev
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname,
           "CNI_PATH": path, "CNI_NETNS": netns or "", "CNI_ARGS": cni_args, **(env or {})}
    with cns.entered(node.path):
        out, rc = dispatch("bridge", env, json.dumps(cfg).encode(), log=sys.stderr.write)
    return rc, (json.loads(out) if out.strip() else None)


def ok(rc_out):
    rc, out = rc_out
    assert rc == 0, out
    return out


def ip_json(ns, *args) -> list:
    p = ns.run("ip", "-j", *args)
    return json.loads(p.stdout or "[]")


def links(ns) -> dict[str, dict]:
    return {l["ifname"]: l for l in ip_json(ns, "-d", "link", "show")}


def addrs(ns, dev: str) -> set[str]:
    out = set()
    for l in ip_json(ns, "addr", "show", "dev", dev):
        for a in l.get("addr_info", []):
            if a.get("scope") == "global":
                out.add(f"{a['local']}/{a['prefixlen']}")
    return out


def routes(ns, family: str = "-4") -> list[dict]:
    return ip_json(ns, family, "route", "show")


def ping(ns, addr: str, count: int = 1, tries: int = 2) -> bool:
    """True when ``addr`` answers; one retry absorbs a lost first packet on a loaded machine."""
    argv = ["ping", "-c", str(count), "-W", "1", "-i", "0.2", addr]
    if ":" in addr:
        argv.insert(1, "-6")
    return any(ns.run(*argv, check=False).returncode == 0 for _ in range(tries))


def nft_table(ns, family: str, table: str) -> str:
    p = ns.run("nft", "list", "table", family, table, check=False)
    return p.stdout if p.returncode == 0 else ""


def reservations(data_dir: str, network: str = "brnet") -> dict[str, str]:
    """host-local reservation files: ip -> '<id>\\r\\n<ifname>' (lock/last_reserved skipped)."""
    d = os.path.join(data_dir, network)
    out = {}
    if not os.path.isdir(d):
        return out
    for f in os.listdir(d):
        try:
            ipaddress.ip_address(f.replace("_", ":"))
        except ValueError:
            continue        # lock, last_reserved_ip.N, our index directory...
        with open(os.path.join(d, f), newline="") as fh:
            out[f] = fh.read()
    return out


def pod_links(pod) -> set[str]:
    return set(links(pod)) - {"lo"}


def node_veths(node) -> set[str]:
    return {n for n, l in links(node).items() if l.get("linkinfo", {}).get("info_kind") == "veth"}
