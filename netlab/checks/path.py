"""Where a check's probe went: capture points along the path from a source
to a destination, all listening before the probe is sent.

The points are the source, its node, the underlay switch (when the path
crosses it), the destination's node and the destination. A copy of the probe
is recognised by the caller's test on its *innermost* IP header, so a VXLAN
encapsulated copy on the underlay counts too. The result says whether the
probe was seen leaving the source (a probe that never left proves nothing
about the network) and which point saw it last (where it stopped).
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from typing import Callable

from ..base.capture import Capture
from .common import Context, Target, run_in

VXLAN_PORTS = (4789,)


@dataclass
class Point:
    label: str
    ns: str
    iface: str                  # "" = every interface of the namespace
    incoming_only: bool = False


@dataclass
class PathEvidence:
    points: list[Point]
    seen: dict[str, int]                      # label -> matching packets seen there
    left_source: bool
    pcaps: dict[str, str] = field(default_factory=dict)
    refused_at_source: str = ""               # the source's own kernel has no route

    @property
    def last(self) -> str | None:
        hit = [p.label for p in self.points if self.seen.get(p.label)]
        return hit[-1] if hit else None

    def count(self, label: str) -> int:
        return self.seen.get(label, 0)

    def describe(self) -> str:
        """e.g. ``a1 (1, left) -> node1 (2) -> underlay (0) -> b1 (0)``"""
        parts = []
        for i, p in enumerate(self.points):
            extra = ", left" if i == 0 and self.left_source else ""
            parts.append(f"{p.label} ({self.seen.get(p.label, 0)}{extra})")
        return " -> ".join(parts)

    def stopped(self) -> str:
        """Where the probe stopped, in words."""
        if not self.left_source:
            if self.refused_at_source:
                return f"refused at the source {self.points[0].label}: {self.refused_at_source}"
            return f"never seen leaving {self.points[0].label}"
        last = self.last
        after = [p.label for p in self.points[[q.label for q in self.points].index(last) + 1:]] if last else []
        if not after:
            return f"seen all the way to {last}"
        return f"last seen at {last}; not seen at {', '.join(after)}"


def _node_of(ctx: Context, t: Target) -> str | None:
    if t.name in ctx.topo.nodes:
        return t.name
    if t.name in ctx.topo.pods:
        return ctx.topo.pods[t.name].node
    return None                      # ext, dns: on the underlay itself


def _bound(t: Target) -> str:
    """Capture on the target's own interface where it has one of its own."""
    return t.iface if t.kind in ("bridge", "overlay", "none", "container") else ""


def points(ctx: Context, src: Target, dst: Target) -> list[Point]:
    """The capture points from ``src`` to ``dst``, in path order. The source and
    the destination always have their own (they may be one namespace, e.g. a
    pod reaching itself through its node); a node or the underlay in between
    is listed once and not when it is the source's or destination's namespace."""
    from ..lab.plan import node_ns, switch_ns
    lab = ctx.topo.name
    sn, dn = _node_of(ctx, src), _node_of(ctx, dst)
    middle = []
    if sn:
        middle.append(Point(sn, node_ns(lab, sn), ""))
    if sn is None or dn is None or sn != dn:
        middle.append(Point("underlay", switch_ns(lab), "", incoming_only=True))
    if dn:
        middle.append(Point(dn, node_ns(lab, dn), ""))
    first = Point(src.name, src.ns, _bound(src))
    last = Point(dst.name if dst.name != src.name else f"{dst.name} (back)", dst.ns, _bound(dst))
    out, used = [first], {src.ns, dst.ns}
    for p in middle:
        if p.ns not in used:
            used.add(p.ns)
            out.append(p)
    return out + [last]


def vxlan_ports(ctx: Context) -> tuple[int, ...]:
    return tuple(sorted(set(VXLAN_PORTS) | {w.port for w in ctx.topo.networks.values() if w.type == "overlay"}))


def ip_layer(pkt):
    """The packet's IPv4 header, else its IPv6 header (None: neither)."""
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    ip = pkt.getlayer(IP)
    return ip if ip is not None else pkt.getlayer(IPv6)


def innermost_ip(pkt, ports: tuple[int, ...]):
    """The IP (v4 or v6) header of the packet, looking through VXLAN encapsulation."""
    from scapy.layers.inet import UDP
    from scapy.layers.l2 import Ether
    ip = ip_layer(pkt)
    for _ in range(3):
        if ip is None or not ip.haslayer(UDP) or ip[UDP].dport not in ports:
            return ip
        raw = bytes(ip[UDP].payload)
        if len(raw) <= 8:
            return None
        ip = ip_layer(Ether(raw[8:]))
    return ip


class PathCapture:
    """Capture at every point while the probe runs: ``with PathCapture(...) as pc:``."""

    def __init__(self, ctx: Context, check, src: Target, dst: Target, bpf: str,
                 match: Callable[[object], bool], suffix: str = "") -> None:
        self.ctx, self.src, self.dst = ctx, src, dst
        self.points = points(ctx, src, dst)
        self.src_label, self.dst_label = self.points[0].label, self.points[-1].label
        self.ports = vxlan_ports(ctx)
        self.match = match
        wide = f"({bpf}) or (udp and ({' or '.join(f'dst port {p}' for p in self.ports)}))"
        self.caps: dict[str, Capture] = {}
        self.pcaps: dict[str, str] = {}
        for p in self.points:
            slug = re.sub(r"[^a-zA-Z0-9]+", "-", p.label).strip("-")
            pcap = ctx.pcap(check, suffix) if p is self.points[-1] else ctx.pcap(check, f"{suffix}-at-{slug}")
            self.pcaps[p.label] = pcap
            self.caps[p.label] = Capture(p.ns, p.iface, wide, pcap=pcap, count=500,
                                         incoming_only=p.incoming_only)

    def __enter__(self) -> "PathCapture":
        started = []
        try:
            for c in self.caps.values():
                c.start()
                started.append(c)
        except BaseException:
            for c in started:
                c.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for c in self.caps.values():
            c.stop()

    def evidence(self) -> PathEvidence:
        seen: dict[str, int] = {}
        left = False
        for i, p in enumerate(self.points):
            cap = self.caps[p.label]
            pkts = cap.packets()
            hits = [j for j, x in enumerate(pkts) if self._is_probe(x)]
            seen[p.label] = len(hits)
            if i == 0:
                left = any(cap.directions[j] == "out" for j in hits if j < len(cap.directions))
        ev = PathEvidence(self.points, seen, left, dict(self.pcaps))
        if not left and self.dst.address:
            ev.refused_at_source = no_route(self.src.ns, self.dst.address)
        return ev

    def _is_probe(self, pkt) -> bool:
        ip = innermost_ip(pkt, self.ports)
        return ip is not None and bool(self.match(ip))


def no_route(ns: str, addr: str) -> str:
    """The source kernel's own answer when it has no route to ``addr`` ('' when it has one)."""
    try:
        r = run_in(ns, ["ip", "route", "get", addr], timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return "" if r.returncode == 0 else f"ip route get {addr}: {r.stderr.strip() or 'no route'}"
