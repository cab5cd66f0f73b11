"""Kernel counters around a probe: read before, read after, the difference.

Owns the per-namespace counters a trace compares: the protocol counters of
``/proc/net/snmp`` and ``/proc/net/netstat`` (IPv4: ``Ip:InNoRoutes``,
``Udp:NoPorts``, ...) and of ``/proc/net/snmp6`` (IPv6, one ``Name value``
per line: ``Ip6InNoRoutes``, ``Icmp6OutPktTooBigs``, ...; kept under the
kernel's own names), read in one ``cat`` inside the namespace (``/proc/net``
follows the reader's network namespace), and the link counters of every
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

# IPv6 counters worth showing for an IPv6 probe, with what a move of each says
SNMP6_MEANING = {
    "Ip6InNoRoutes": "received a packet it had no route for",
    "Ip6OutNoRoutes": "had no route for a packet it sent",
    "Ip6InTooBigErrors": "received a packet too big for the link it must leave on",
    "Ip6InAddrErrors": "received a packet for an address that is not its own and did not forward it",
    "Ip6InHdrErrors": "received a packet with a bad header (hop limit exceeded, ...)",
    "Ip6InDiscards": "discarded a received packet",
    "Ip6OutDiscards": "discarded a packet it was sending",
    "Ip6FragFails": "could not fragment a packet",
    "Ip6OutForwDatagrams": "forwarded a packet",
    "Icmp6OutPktTooBigs": "sent an ICMPv6 Packet Too Big",
    "Icmp6InPktTooBigs": "received an ICMPv6 Packet Too Big",
    "Icmp6OutDestUnreachs": "sent an ICMPv6 destination unreachable",
    "Icmp6InDestUnreachs": "received an ICMPv6 destination unreachable",
    "Icmp6OutTimeExcds": "sent an ICMPv6 time exceeded",
    "Icmp6InTimeExcds": "received an ICMPv6 time exceeded",
    "Icmp6OutNeighborSolicits": "sent a neighbour solicitation",
    "Icmp6InNeighborSolicits": "received a neighbour solicitation",
    "Icmp6OutNeighborAdvertisements": "sent a neighbour advertisement",
    "Icmp6InNeighborAdvertisements": "received a neighbour advertisement",
    "Udp6NoPorts": "received a UDP datagram for a port nothing listens on",
    "Udp6InErrors": "dropped a received UDP datagram",
    "Udp6RcvbufErrors": "dropped a UDP datagram: the socket's receive buffer was full",
}
SNMP6_KEYS = tuple(SNMP6_MEANING)

SNMP_FILES = ("/proc/net/snmp", "/proc/net/netstat", "/proc/net/snmp6")


def parse_snmp(text: str) -> dict[str, int]:
    """The text of /proc/net/snmp, /proc/net/netstat and /proc/net/snmp6 (in any order,
    concatenated) -> {"Ip:InNoRoutes": n, ..., "Ip6InNoRoutes": n, ...}.

    The first two come as pairs of lines, names then values, each starting
    with the same ``Prefix:``; snmp6 has one ``Name value`` per line."""
    out: dict[str, int] = {}
    lines = [ln.split() for ln in text.splitlines()]
    i = 0
    while i < len(lines):
        h = lines[i]
        if len(h) == 2 and not h[0].endswith(":"):              # snmp6: "Ip6InNoRoutes   3"
            try:
                out[h[0]] = int(h[1])
            except ValueError:
                pass
            i += 1
            continue
        v = lines[i + 1] if i + 1 < len(lines) else []
        if not h or not v or h[0] != v[0] or not h[0].endswith(":"):
            i += 1
            continue
        pre = h[0].rstrip(":")
        for k, x in zip(h[1:], v[1:]):
            try:
                out[f"{pre}:{k}"] = int(x)
            except ValueError:
                pass
        i += 2
    return out


def snmp(ns: str) -> dict[str, int]:
    """The namespace's IPv4 and IPv6 protocol counters (an IPv6-less namespace has no snmp6)."""
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


def ipv6_counter_line(label: Callable[[str], str], ns: str, moved: dict) -> str | None:
    """The IPv6 counters of ``ns`` that moved (of ``SNMP6_KEYS``), as one line, or None."""
    sn = {k: v for k, v in moved.get(ns, {}).get("snmp", {}).items() if k in SNMP6_MEANING}
    if not sn:
        return None
    return f"{label(ns)} IPv6 counters during the probe: " + ", ".join(f"{k} +{v}" for k, v in sorted(sn.items()))
