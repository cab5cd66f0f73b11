"""What a node namespace holds, to prove a call changed nothing (or left nothing).

``state(ns)`` extends the root-namespace guard's snapshot (links, addresses,
routes, rules, nftables tables) with the full nftables ruleset (handles
dropped), every qdisc and a few sysctls; ``files(dir)`` lists a directory tree
with modes. ``leftovers(ns, ...)`` names the per-attachment artefacts our
plugins create (veths, IFBs, nft rules with our comments, IPAM reservations).
"""
from __future__ import annotations

import json
import os
import stat
import subprocess

from tests import rootns_guard

SYSCTLS = ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding")


def _run(ns: str, *argv: str) -> str:
    p = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                       timeout=60)
    return p.stdout if p.returncode == 0 else ""


def ruleset(ns: str) -> list[str]:
    """Every nftables object of the namespace, without handles (stable across reads)."""
    text = _run(ns, "nft", "-j", "list", "ruleset")
    if not text.strip():
        return []
    out = []
    for obj in json.loads(text).get("nftables", []):
        if "metainfo" in obj:
            continue
        for body in obj.values():
            if isinstance(body, dict):
                body.pop("handle", None)
        out.append(json.dumps(obj, sort_keys=True))
    return sorted(out)


def qdiscs(ns: str) -> list[str]:
    text = subprocess.run(["tc", "-n", ns, "-j", "qdisc", "show"], capture_output=True,
                          text=True).stdout
    out = []
    for q in json.loads(text or "[]"):
        out.append(f"{q.get('dev')} {q.get('kind')} {q.get('handle')} {q.get('parent', 'root')}")
    return sorted(out)


def sysctls(ns: str) -> list[str]:
    return [f"{k}={_run(ns, 'cat', '/proc/sys/' + k).strip()}" for k in SYSCTLS]


def state(ns: str) -> dict:
    wait_ipv6_settled(ns)       # else a link-local route may appear between two snapshots
    snap = rootns_guard.snapshot(ns)
    snap["ruleset"] = ruleset(ns)
    snap["qdiscs"] = qdiscs(ns)
    snap["sysctls"] = sysctls(ns)
    return snap


def wait_ipv6_settled(ns: str, within: float = 10.0) -> None:
    """Wait until no IPv6 address in ``ns`` is tentative (DAD done): the kernel adds
    each link-local address's local route only then, so a snapshot taken earlier
    would see that route appear later and blame whoever ran in between."""
    import time
    deadline = time.monotonic() + within
    while _run(ns, "ip", "-6", "-o", "addr", "show", "tentative").strip():
        if time.monotonic() > deadline:
            raise AssertionError(f"IPv6 addresses in {ns} still tentative after {within:g}s")
        time.sleep(0.05)


def diff(before: dict, after: dict) -> list[str]:
    return rootns_guard.diff(before, after)


def files(root: str) -> dict[str, str]:
    """{relative path: 'd0700' / 'f0600:<size>'} for everything under root."""
    out: dict[str, str] = {}
    if not os.path.exists(root):
        return out
    for d, dirs, fnames in os.walk(root):
        for n in dirs + fnames:
            p = os.path.join(d, n)
            st = os.lstat(p)
            kind = "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else "f"
            size = "" if kind == "d" else f":{st.st_size}"
            out[os.path.relpath(p, root)] = f"{kind}{stat.S_IMODE(st.st_mode):04o}{size}"
    return out


def links_of_kind(ns: str, kind: str) -> list[str]:
    text = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "type", kind],
                          capture_output=True, text=True).stdout
    return sorted(l["ifname"] for l in json.loads(text or "[]"))


def reservations(data_dir: str, network: str) -> dict[str, str]:
    """{ip: 'containerID/ifname'} of a host-local store."""
    d = os.path.join(data_dir, network)
    out = {}
    if not os.path.isdir(d):
        return out
    for n in os.listdir(d):
        if n[:1].isdigit() or ":" in n:
            with open(os.path.join(d, n), "rb") as f:
                cid, _, ifn = f.read().decode(errors="replace").partition("\r\n")
            out[n] = f"{cid}/{ifn}"
    return out


def our_rules(ns: str) -> list[str]:
    """nftables rules (any table) carrying a comment: ours all have one naming the attachment."""
    return [r for r in ruleset(ns) if '"rule"' in r and '"comment"' in r]


def leftovers(ns: str, data_dir: str | None = None, network: str | None = None,
              keep_links: tuple[str, ...] = ()) -> dict[str, list]:
    """Per-attachment artefacts still present: empty lists when nothing leaked."""
    left = {
        "veths": [v for v in links_of_kind(ns, "veth") if v not in keep_links],
        "ifbs": links_of_kind(ns, "ifb"),
        "rules": our_rules(ns),
        "qdiscs": [q for q in qdiscs(ns) if " tbf " in q or " ingress " in q],
    }
    if data_dir and network:
        left["reservations"] = sorted(reservations(data_dir, network))
    return left


def nothing_left(left: dict[str, list]) -> bool:
    return not any(left.values())
