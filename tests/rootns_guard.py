"""A snapshot of the machine's root network namespace, to prove tests leave it alone."""
from __future__ import annotations

import json
import shutil
import subprocess


def _ip_json(*args: str, netns: str | None = None) -> list:
    where = ["-n", netns] if netns else []
    p = subprocess.run(["ip", *where, "-j", *args], capture_output=True, text=True)
    if p.returncode != 0 or not p.stdout.strip():
        return []
    return json.loads(p.stdout)


def _module_default(name: str) -> bool:
    return name in ("ifb0", "ifb1")


def snapshot(netns: str | None = None) -> dict:
    """Links, addresses, routes, rules and nftables tables of the root namespace
    (or of the named namespace ``netns``: tests prove the guard on a stand-in)."""
    # ifb0/ifb1 appear in the root namespace when the kernel loads the ifb module
    # (numifbs=2) the first time anything creates an IFB anywhere: not ours to judge.
    links = sorted((l.get("ifname"), l.get("mtu"), l.get("master", ""), l.get("address", ""))
                   for l in _ip_json("link", "show", netns=netns) if not _module_default(l.get("ifname", "")))
    addrs = sorted((a.get("ifname"), i.get("local"), i.get("prefixlen"))
                   for a in _ip_json("addr", "show", netns=netns) for i in a.get("addr_info", []))
    routes = []
    for fam in ("-4", "-6"):
        for r in _ip_json(fam, "route", "show", "table", "all", netns=netns):
            routes.append((fam, r.get("dst"), r.get("gateway", ""), r.get("dev", ""),
                           r.get("table", "main"), r.get("type", "")))
    rules = sorted(json.dumps(r, sort_keys=True) for r in _ip_json("rule", "show", netns=netns))
    tables = []
    if shutil.which("nft"):
        argv = ["nft", "list", "tables"]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        p = subprocess.run(argv, capture_output=True, text=True)
        tables = sorted(p.stdout.split("\n"))
    return {"links": links, "addrs": addrs, "routes": sorted(map(str, routes)),
            "rules": rules, "nft_tables": tables}


def diff(before: dict, after: dict) -> list[str]:
    out = []
    for key in before:
        b, a = set(map(str, before[key])), set(map(str, after[key]))
        for x in sorted(a - b):
            out.append(f"{key}: added {x}")
        for x in sorted(b - a):
            out.append(f"{key}: removed {x}")
    return out
