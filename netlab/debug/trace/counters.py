"""Kernel counters around a probe: read before, read after, the difference.

Owns the per-namespace counters a trace compares: the protocol counters of
``/proc/net/snmp`` and ``/proc/net/netstat`` (``Ip:InNoRoutes``, ``Udp:NoPorts``, ...), read in
one ``cat`` inside the namespace (``/proc/net`` follows the reader's network
namespace), and the link counters of every
interface (``ip -s link``). ``snapshot`` reads all namespaces at once,
``deltas`` subtracts two snapshots (only what moved), ``counter_lines`` words
one namespace's moves for the trace's evidence. What a move *means* for the
probe is decided by the explanation, not here.
"""
from __future__ import annotations

import json
import subprocess
from typing import Any, Callable

from .netstate import run_ns

# IPv4 counters worth showing (also what `netlab watch` reports as drops)
SNMP_KEYS = ("Ip:InReceives", "Ip:ForwDatagrams", "Ip:InAddrErrors", "Ip:InDiscards", "Ip:OutNoRoutes",
             "Ip:OutDiscards", "Ip:FragFails", "Ip:InHdrErrors", "Ip:InNoRoutes", "Icmp:OutDestUnreachs",
             "Icmp:InDestUnreachs", "Icmp:OutTimeExcds", "Udp:NoPorts", "Udp:InErrors", "Udp:RcvbufErrors",
             "IpExt:InNoRoutes", "TcpExt:TCPReqQFullDrop")

SNMP_FILES = ("/proc/net/snmp", "/proc/net/netstat")


def parse_snmp(text: str) -> dict[str, int]:
    """The text of /proc/net/snmp and /proc/net/netstat -> {"Ip:InNoRoutes": n, ...}: pairs of
    lines, names then values, each starting with the same ``Prefix:``."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    for i in range(0, len(lines) - 1, 2):
        h, v = lines[i].split(), lines[i + 1].split()
        if not h or h[0] != v[0]:
            continue
        pre = h[0].rstrip(":")
        for k, x in zip(h[1:], v[1:]):
            try:
                out[f"{pre}:{k}"] = int(x)
            except ValueError:
                pass
    return out


def snmp(ns: str) -> dict[str, int]:
    """The namespace's protocol counters."""
    return parse_snmp(run_ns(ns, ["cat", *SNMP_FILES]).stdout)


def link_stats(ns: str) -> dict[str, dict[str, int]]:
    p = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show"], capture_output=True, text=True, timeout=30)
    out = {}
    try:
        for d in json.loads(p.stdout or "[]"):
            st = d.get("stats64") or d.get("stats") or {}
            rx, tx = st.get("rx", {}), st.get("tx", {})
            out[d["ifname"]] = {"rx_packets": rx.get("packets", 0), "rx_dropped": rx.get("dropped", 0),
                                "rx_errors": rx.get("errors", 0), "tx_packets": tx.get("packets", 0),
                                "tx_dropped": tx.get("dropped", 0), "tx_errors": tx.get("errors", 0),
                                "rx_bytes": rx.get("bytes", 0), "tx_bytes": tx.get("bytes", 0)}
    except ValueError:
        pass
    return out


def snapshot(nss: list[str]) -> dict[str, dict]:
    """ns -> {"snmp": protocol counters, "links": ifname -> link counters}, read in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    def one(ns):
        out: dict[str, Any] = {"snmp": {}, "links": {}}
        for k, fn in (("snmp", snmp), ("links", link_stats)):
            try:
                out[k] = fn(ns)
            except (subprocess.SubprocessError, OSError):
                pass   # a busy machine: the diagnosis has less to go on, the trace still works
        return ns, out
    with ThreadPoolExecutor(max_workers=8) as ex:
        return dict(ex.map(one, nss))


def delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """What grew from ``a`` to ``b`` (counters that did not move are left out)."""
    return {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0) > 0}


def deltas(before: dict, after: dict) -> dict[str, dict]:
    """Two snapshots -> ns -> {"snmp": moved counters, "links": ifname -> moved counters}."""
    return {ns: {"snmp": delta(before[ns]["snmp"], after[ns]["snmp"]),
                 "links": {ifn: delta(before[ns]["links"].get(ifn, {}), v)
                           for ifn, v in after[ns]["links"].items()}}
            for ns in after if ns in before}


def counter_lines(label: Callable[[str], str], ns: str, moved: dict) -> list[str]:
    """The IPv4 protocol counters and the link drop/error counters of ``ns`` that moved, as text."""
    sn = {k: v for k, v in moved.get(ns, {}).get("snmp", {}).items() if k in SNMP_KEYS}
    out = []
    if sn:
        out.append(f"{label(ns)} counters during the probe: " + ", ".join(f"{k} +{v}" for k, v in sorted(sn.items())))
    for ifn, d in moved.get(ns, {}).get("links", {}).items():
        dd = {k: v for k, v in d.items() if "drop" in k or "err" in k}
        if dd:
            out.append(f"{label(ns)} {ifn}: " + ", ".join(f"{k} +{v}" for k, v in dd.items()))
    return out
