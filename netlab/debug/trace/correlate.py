"""Finding the probe in every capture and putting the copies in path order.

Owns the step from captured frames to a timeline: every frame that carries
the probe's token (the probe, its answer, an ICMP error quoting it) or
answers its TCP SYN becomes an ``Obs``; ARP and neighbour discovery frames
are kept aside for the explanation, later fragments of the probe are counted
where they were seen. ``walk`` orders the copies along the path (kernel
order inside a namespace; across a veth to its peer's copy), ``build_hops``
turns them into ``Hop`` rows and names what changed between two copies
(DNAT/SNAT, TTL, VXLAN encapsulation, fragmentation), and ``correlate``
does all of it for one trace: the forward path, the way back, the ICMP
errors, whether the probe arrived and was answered, and a DNAT seen in the
nft trace whose result never showed up on the wire. Also the lab facts these
need: who owns an address, how far namespaces are from the sender, what an
interface is.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..graph import Inventory
from .frames import decode_frame, flow_tuple, l4_summary
from .probe import Probe
from .result import Hop, TraceResult


@dataclass
class Obs:
    ns: str
    iface: str
    direction: str             # in | out
    order: int                 # position in its namespace's capture
    frame: bytes
    kind: str = ""             # probe | reply | icmp-error | arp | related
    info: dict = field(default_factory=dict)
    ts: float = 0.0            # the kernel's capture time (wall clock)

    @property
    def top(self) -> dict:
        """The headers of the probe itself: the inner packet of a VXLAN frame, else the outer one."""
        return self.info.get("inner") or self.info["ip"]


@dataclass
class Path:
    """The probe's copies in path order, and what the correlation noticed on the way."""
    fwd: list[Obs] = field(default_factory=list)       # the probe, from the sender on
    back: list[Obs] = field(default_factory=list)      # its answer, from where it was made
    arps: list[Obs] = field(default_factory=list)      # ARP / neighbour discovery, every namespace
    nat_points: list[tuple[str, tuple, tuple]] = field(default_factory=list)   # (ns, flow before, flow after)
    frag_counts: dict[tuple, int] = field(default_factory=dict)   # (src, id, ns, iface, dir) -> later fragments
    dnat_lost: tuple | None = None    # (ns, address, port, rule): a DNAT whose result was never seen


# --------------------------------------------------------------------------- lab facts

def ns_label(inv: Inventory, ns: str) -> str:
    """How the trace names a namespace: "node node1", "pod web", "underlay switch"."""
    n = inv.namespaces.get(ns)
    return f"{n.role} {n.label}" if n and n.role not in ("switch",) else ("underlay switch" if n else ns)


def iface_role(inv: Inventory, ns: str, name: str) -> str:
    n = inv.namespaces.get(ns)
    l = n.links.get(name) if n else None
    if l is None:
        return "interface"
    if l.kind == "vxlan":
        return f"VXLAN device (VNI {l.vni})"
    if l.kind == "bridge":
        return "bridge"
    if l.kind == "veth" and l.peer:
        pn = inv.namespaces.get(l.peer[0])
        other = f"{pn.role} {pn.label}" if pn else l.peer[0]
        if n.role == "switch":
            return f"switch port to {other}"
        if n.role == "pod":
            return "pod interface"
        if pn and pn.role == "pod":
            return f"veth of pod {pn.label}" + (f" on {l.master}" if l.master else "")
        if pn and pn.role == "switch":
            return "uplink to the switch"
        return f"veth to {other}"
    return l.kind


def ns_distances(inv: Inventory, start: str) -> dict[str, int]:
    """Hops over veth links from ``start`` to every namespace it can reach."""
    adj: dict[str, set[str]] = {n: set() for n in inv.namespaces}
    for n in inv.namespaces.values():
        for l in n.links.values():
            if l.peer and l.peer[0] in adj:
                adj[n.name].add(l.peer[0])
                adj[l.peer[0]].add(n.name)
    dist = {start: 0}
    todo = [start]
    while todo:
        cur = todo.pop(0)
        for o in sorted(adj.get(cur, ())):
            if o not in dist:
                dist[o] = dist[cur] + 1
                todo.append(o)
    return dist


def owner_of(inv: Inventory, addr: str) -> str | None:
    """The namespace that has ``addr`` (and would answer for it), or None."""
    for n in inv.namespaces.values():
        for l in n.links.values():
            # an address that failed DAD is nobody's: the kernel neither uses nor answers for it
            if any(a.split("/")[0] == addr and "dadfailed" not in l.addr_flags.get(a, ()) for a in l.addrs):
                if n.role == "node" and l.kind == "bridge" and any(
                        any(a.split("/")[0] == addr for a in m.addrs) for o in inv.namespaces.values()
                        if o.name != n.name and o.role == "node" for m in o.links.values()):
                    continue    # an anycast gateway (the same on every node) is nobody's destination
                return n.name
    return None


# --------------------------------------------------------------------------- frames -> observations

def _kind_of_token_frame(info: dict, frag_ids: set) -> str:
    """probe | reply | icmp-error for a frame that carries the token (noting a first fragment)."""
    top = info.get("inner") or info.get("ip") or {}
    ic = top.get("icmp")
    if ic and ic["type"] in (3, 11, 4, 5, 12):
        return "icmp-error"
    if top.get("mf"):
        frag_ids.add((top["src"], top["id"]))
    return "reply" if ic and ic["type"] == 0 else "probe"


def _answers_syn(top: dict, pr: Probe) -> bool:
    """A TCP segment acknowledging the probe's SYN (with or without its payload)."""
    if not top.get("tcp") or pr.proto != "tcp":
        return False
    return top["tcp"]["ack"] in ((pr.seq + 1 + len(pr.payload())) % 2**32, (pr.seq + 1) % 2**32)


def classify(caps: dict, pr: Probe) -> tuple[list[Obs], list[Obs], dict[tuple, int]]:
    """Every capture's frames -> (observations of the probe and its answers, ARP/ND
    frames, counts of the probe's later fragments per place)."""
    obs: list[Obs] = []
    arps: list[Obs] = []
    frag_ids: set = set()
    frag_counts: dict[tuple, int] = {}
    for ns, c in caps.items():
        for i, ((ts, fr), d, ifn) in enumerate(zip(c.frames, c.directions, c.ifaces)):
            if ifn == "lo":
                continue
            o = Obs(ns, ifn, d, i, fr, ts=ts)
            if pr.token in fr:
                o.info = decode_frame(fr)
                o.kind = _kind_of_token_frame(o.info, frag_ids)
                obs.append(o)
                continue
            info = decode_frame(fr)
            top = info.get("inner") or info.get("ip") or {}
            if "arp" in info:
                o.kind, o.info = "arp", info
                arps.append(o)
            elif top and (top.get("src"), top.get("id")) in frag_ids:
                # a later fragment of the probe: counted where it was seen, not listed
                k = (top["src"], top["id"], ns, ifn, d)
                frag_counts[k] = frag_counts.get(k, 0) + 1
            elif _answers_syn(top, pr):
                o.kind, o.info = "reply", info
                obs.append(o)
    return obs, arps, frag_counts


# --------------------------------------------------------------------------- ordering

def walk(inv: Inventory, items: list[Obs], start: str | None, key) -> list[Obs]:
    """Order copies along the path: in a namespace, kernel order; leave it where a copy
    goes out of a veth whose peer saw it come in, and continue there. A packet that
    returns to a namespace (a hairpin) is followed too. What the walk cannot place is
    appended in ``key`` order."""
    by_ns: dict[str, list[Obs]] = {}
    for o in sorted(items, key=lambda o: o.order):
        by_ns.setdefault(o.ns, []).append(o)
    used: set[int] = set()
    seq: list[Obs] = []
    cur = start
    while cur in by_ns:
        nxt = None
        for o in by_ns[cur]:
            if id(o) in used:
                continue
            used.add(id(o))
            seq.append(o)
            link = inv.link(o.ns, o.iface)
            if o.direction == "out" and link is not None and link.peer:
                pns, pif = link.peer
                cand = next((x for x in by_ns.get(pns, []) if id(x) not in used and x.iface == pif
                             and x.direction == "in"), None)
                if cand is not None:
                    nxt = pns
                    break
        if nxt is None:
            break
        cur = nxt
    rest = sorted([o for o in items if id(o) not in used], key=key)
    return seq + rest


def _endpoint(addr: str, port) -> str:
    return f"{addr}{':' + str(port) if port else ''}"


def _changes(prev: Obs, o: Obs, reply: bool) -> list[str]:
    """What changed from one copy to the next: NAT, TTL, VXLAN encapsulation."""
    pd, d = prev.info, o.info
    ptop, top = prev.top, o.top
    a, b = flow_tuple(ptop), flow_tuple(top)
    out = []
    dn, sn = ("NAT undone: destination", "NAT undone: source") if reply else ("DNAT: destination", "SNAT: source")
    if a[2:] != b[2:]:
        out.append(f"{dn} {_endpoint(a[2], a[3])} -> {_endpoint(b[2], b[3])}")
    if a[:2] != b[:2]:
        out.append(f"{sn} {_endpoint(a[0], a[1])} -> {_endpoint(b[0], b[1])}")
    if top["ttl"] != ptop["ttl"]:
        out.append(f"TTL {ptop['ttl']} -> {top['ttl']} (routed)")
    if "vxlan" in d and "vxlan" not in pd:
        out.append(f"encapsulated: VXLAN VNI {d['vxlan']['vni']} to VTEP {d['ip']['dst']} "
                   f"(+{d['len'] - pd['len']} bytes)")
    if "vxlan" in pd and "vxlan" not in d:
        out.append(f"decapsulated (VNI {pd['vxlan']['vni']})")
    return out


def build_hops(inv: Inventory, seq: list[Obs], path: Path, reply: bool = False) -> list[Hop]:
    """Ordered copies -> hops, each with what changed since the previous copy. On the
    forward path, every place where addresses or ports changed goes into ``path.nat_points``."""
    hops: list[Hop] = []
    prev = None
    for o in seq:
        d = o.info
        top = o.top
        h = Hop(o.ns, ns_label(inv, o.ns), o.iface, iface_role(inv, o.ns, o.iface), o.direction,
                l4_summary(top), top["ttl"], d["len"])
        if "vxlan" in d:
            ip = d["ip"]
            h.encap = (f"VXLAN VNI {d['vxlan']['vni']}: outer {ip['src']}:{ip['udp']['sport']} > "
                       f"{ip['dst']}:{ip['udp']['dport']} ttl {ip['ttl']}{' DF' if ip['df'] else ''}")
        if prev is not None:
            a, b = flow_tuple(prev.top), flow_tuple(top)
            if a != b and not reply:
                path.nat_points.append((o.ns, a, b))
            h.changes += _changes(prev, o, reply)
        was_frag = prev is not None and bool((prev.top or {}).get("mf"))
        if top.get("mf") and not was_frag:
            n = 1 + path.frag_counts.get((top["src"], top["id"], o.ns, o.iface, o.direction), 0)
            h.changes.append(f"fragmented: this is the first of {n} fragments seen here (DF not set)")
        hops.append(h)
        prev = o
    return hops


# --------------------------------------------------------------------------- one trace

def _dnat_lost(rules: dict[str, list[dict]], fwd: list[Obs]) -> tuple | None:
    """A DNAT the nft trace saw, whose result never showed up on the wire (the last such)."""
    lost = None
    for ns, rs in rules.items():
        for r in rs:
            m = re.search(r"\bdnat to ([0-9.]+)(?::(\d+))?", r["rule"])
            if m and not any(o.top["dst"] == m.group(1) for o in fwd):
                lost = (ns, m.group(1), m.group(2), r)
    return lost


def correlate(res: TraceResult, inv: Inventory, pr: Probe, src_ns: str, caps: dict,
              rules: dict[str, list[dict]]) -> Path:
    """The captures of one trace -> its path; fills ``res.hops``, ``res.replies``,
    ``res.errors``, ``res.arrived`` and ``res.replied``."""
    dist = ns_distances(inv, src_ns)
    obs, arps, frag_counts = classify(caps, pr)
    path = Path(arps=arps, frag_counts=frag_counts)
    far = max(dist.values(), default=0) + 1
    path.fwd = walk(inv, [o for o in obs if o.kind == "probe"], src_ns,
                    key=lambda o: (dist.get(o.ns, far), o.ns, o.order))
    replies = [o for o in obs if o.kind == "reply"]
    origin = next((o.ns for o in sorted(replies, key=lambda o: o.order) if o.direction == "out"
                   and owner_of(inv, o.top["src"]) == o.ns), None)
    path.back = walk(inv, replies, origin, key=lambda o: (-dist.get(o.ns, far), o.ns, o.order))
    res.hops = build_hops(inv, path.fwd, path)
    res.replies = build_hops(inv, path.back, path, reply=True)
    for o in sorted([o for o in obs if o.kind == "icmp-error"], key=lambda o: (-dist.get(o.ns, far), o.ns, o.order)):
        top = o.top
        res.errors.append(f"{ns_label(inv, o.ns)} {o.iface} {o.direction}: {l4_summary(top)}"
                          + (f" about {l4_summary(top['quoted'])}" if top.get("quoted") else ""))
    # where did it end?
    final = path.fwd[-1] if path.fwd else None
    if final is not None:
        top = final.info.get("inner") or final.info.get("ip")
        owner = owner_of(inv, top["dst"])
        res.arrived = any(o.ns == owner and o.direction == "in" for o in path.fwd
                          if (o.info.get("inner") or o.info.get("ip"))["dst"] == top["dst"])
    res.replied = bool(path.back) and any(o.ns == src_ns for o in path.back)
    path.dnat_lost = _dnat_lost(rules, path.fwd)
    if path.dnat_lost is not None:
        res.arrived = False
    return path
