"""`netlab trace`: one probe, captured everywhere at once, explained hop by hop.

How it works (see docs/adr/0009-namespace-and-capture-mechanics.md), and
which module owns each step:

1. The lab is read from the kernel (``graph.inventory``): every namespace,
   interface, veth peer, bridge port and VXLAN device.
2. ``capture``: one capture socket per lab namespace, an nft trace of the
   probe (``nftrules``) and the kernel's drop reasons (``dropmon``), all
   listening before anything is sent; counters (``counters``: link counters,
   /proc/net/snmp and /proc/net/snmp6, read before and after).
3. ``probe``: one probe is sent from FROM's namespace through an ordinary
   kernel socket (ICMP echo, UDP datagram or TCP SYN, IPv4 or IPv6) whose
   payload carries a random token. The token survives NAT and encapsulation
   (a VXLAN frame carries the inner frame verbatim), so every copy of the
   probe is found by a byte search, whatever happened to its headers; ICMP
   errors quoting it are found the same way.
4. ``correlate``: the copies (decoded by ``frames``) are ordered along the
   path (namespaces by their distance from the sender over veth links;
   within one namespace, kernel order) and compared hop to hop: TTL,
   addresses and ports (NAT), encapsulation (VNI, outer addresses).
5. ``explain`` (with ``where_lost`` and ``ipv6_causes``): where the probe
   was last seen, the kernel state of that place is read (``netstate``:
   route lookup with the real input interface, forwarding sysctl, neighbour
   entry, FDB; plus ARP/ND seen on the wire, MTUs, counter deltas, rules of
   our tables) to name the likely cause. ``result`` holds what was found and
   prints it.

This module is the entry point (``trace``, ``resolve``) and the
orchestration (``Tracer.run``); the names other packages use are
re-exported here.

May import: netlab.lab, netlab.features, netlab.base, netlab.debug (graph,
dropmon), plugins.core, scapy. Its modules import each other downwards only
(probe, frames, netstate -> counters, nftrules, result -> correlate, capture
-> facts -> ipv6_causes -> where_lost -> explain), never this module.
"""
from __future__ import annotations

import ipaddress
import os
import random

from ..graph import Inventory, inventory
from .capture import record
from .correlate import correlate, ns_label
from .counters import SNMP6_KEYS, SNMP_KEYS, link_stats, parse_snmp, snapshot, snmp
from .explain import explain
from .facts import Facts
from .frames import VXLAN_DEFAULT_PORTS, decode_frame, l4_summary, tcp_dport
from .netstate import indent, ip_text, route_get
from .nftrules import NfTrace, k8s_notes, parse_netdev_drops, rule_lines
from .probe import Probe, TraceError, parse_proto, send_probe
from .result import Hop, TraceResult, format_result
from .where_lost import bgp_causes

__all__ = ["trace", "resolve", "format_result", "Tracer", "TraceResult", "Hop", "Probe", "TraceError",
           "parse_proto", "send_probe", "decode_frame", "l4_summary", "tcp_dport", "VXLAN_DEFAULT_PORTS",
           "SNMP_KEYS", "SNMP6_KEYS", "snmp", "parse_snmp", "link_stats", "snapshot", "route_get",
           "NfTrace", "parse_netdev_drops", "k8s_notes"]


class Tracer:
    """One trace: record the probe everywhere, correlate the copies, explain the outcome."""

    def __init__(self, st, inv: Inventory, src_ns: str, dst_addr: str, probe: Probe, *,
                 src_name: str, dst_name: str, wait: float = 1.0, pcap_dir: str | None = None,
                 nftrace: bool = True, dst_ns: str = "", drop_reasons: bool = True) -> None:
        self.st, self.inv = st, inv
        self.src_ns, self.dst, self.dst_ns = src_ns, dst_addr, dst_ns
        self.probe = probe
        self.wait, self.pcap_dir = wait, pcap_dir
        self.nftrace, self.drop_reasons = nftrace, drop_reasons
        self.res = TraceResult(probe, src_name, dst_name, src_ns)

    def label(self, ns: str) -> str:
        return ns_label(self.inv, ns)

    def _not_routable(self, err: str) -> TraceResult:
        """The sender has no route: nothing is sent, the routes say why."""
        pr, res = self.probe, self.res
        res.verdict = f"not sent: {self.label(self.src_ns)} has no route to {self.dst}"
        res.causes.append(f"no route: `ip route get {self.dst}` in {self.src_ns} says: {err}")
        res.causes += bgp_causes(self.st, self.src_ns, self.dst)
        res.evidence.append(f"routes in {self.src_ns}:\n" + indent(ip_text(self.src_ns, *(["-6"] if pr.v6 else []),
                                                                         "route", "show")))
        if pr.v6 and "unreachable" in err.lower():
            res.causes.append(f"{self.label(self.src_ns)} has no IPv6 default route (nor a route to "
                              f"{self.dst}'s subnet): the kernel refuses the packet before it leaves")
        return res

    def run(self) -> TraceResult:
        pr, res = self.probe, self.res
        r = route_get(self.src_ns, self.dst)
        if "error" in r:
            return self._not_routable(r["error"])
        pr.src = r.get("prefsrc") or pr.src
        nss = list(self.inv.namespaces)
        res.captured_in = nss
        rec = record(nss, self.src_ns, pr, wait=self.wait, pcap_dir=self.pcap_dir, nftrace=self.nftrace,
                     drop_reasons=self.drop_reasons)
        res.kernel_note = rec.kernel_note
        res.rules = rule_lines(rec.rules)
        if self.pcap_dir:
            res.pcaps = [c.pcap for c in rec.caps.values() if c.pcap and c.frames]
        path = correlate(res, self.inv, pr, self.src_ns, rec.caps, rec.rules)
        explain(Facts.of(st=self.st, inv=self.inv, probe=pr, res=res, src_ns=self.src_ns, dst=self.dst,
                         dst_ns=self.dst_ns, rec=rec, path=path, nftrace=self.nftrace,
                         drop_reasons=self.drop_reasons))
        return res


def resolve(st, name: str, family: int | None = None) -> tuple[str, str | None, str]:
    """A lab endpoint name (pod, node, ext, dns) or an address -> (netns, address, label)."""
    from ...lab.labs import plan_for_state, target
    from ...base.state import attach_addresses, attach_addresses_all
    topo, plan = plan_for_state(st)
    if plan is None:
        raise TraceError("cannot load the lab's topology")
    if name in plan.endpoints:
        tg = target(topo, plan, attach_addresses(st), name, attach_addresses_all(st))
        if family:
            if not tg.address_of(family):
                raise TraceError(f"{name} has no IPv{family} address")
            return tg.ns, tg.address_of(family), name
        return tg.ns, tg.address, name
    try:
        a = ipaddress.ip_address(name)
    except ValueError:
        raise TraceError(f"unknown endpoint {name!r}: a pod, node, 'ext', 'dns' or an IPv4 or IPv6 address "
                         f"(have: {', '.join(plan.endpoints)})") from None
    if family and a.version != family:
        raise TraceError(f"{name} is not an IPv{family} address")
    return "", str(a), name


def trace(st, src: str, dst: str, *, proto: str = "icmp", size: int | None = None, df: bool = False,
          wait: float = 1.0, pcap_dir: str | None = None, nftrace: bool = True,
          sport: int | None = None, drop_reasons: bool = True, family: int | None = None) -> TraceResult:
    """Send one probe from SRC to DST (names of the lab, or DST an address) and explain what happened."""
    p, port = parse_proto(proto)
    dst_ns, dst_addr, dst_label = resolve(st, dst, family)
    if not dst_addr:
        raise TraceError(f"{dst} has no address")
    fam = family or (6 if ":" in dst_addr else 4)
    src_ns, src_addr, src_label = resolve(st, src)
    if src_addr and (":" in src_addr) != (fam == 6):      # the source's address of the probe's family
        src_ns, src_addr, src_label = resolve(st, src, fam)
    if not src_ns:
        raise TraceError("FROM must be a pod, node, 'ext' or 'dns' of the lab (the probe is sent from its namespace)")
    inv = inventory(st)
    hdr = {"icmp": 8, "udp": 8, "tcp": 20}[p]
    tok = b"NLTRACE-" + os.urandom(4).hex().encode()
    min_size = (40 if fam == 6 else 20) + hdr + len(tok)
    if size is not None and size < min_size:
        raise TraceError(f"--size must be at least {min_size} (IP + {p.upper()} headers + the {len(tok)}-byte trace token)")
    pr = Probe(p, dst_addr, port, size or max(104 if fam == 6 else 84, min_size), df, tok, src=src_addr or "",
               sport=sport or random.randint(33000, 60999), icmp_id=random.randint(1, 65535),
               seq=random.randint(1, 2**32 - 1))
    t = Tracer(st, inv, src_ns, dst_addr, pr, src_name=src_label, dst_name=dst_label, wait=wait, pcap_dir=pcap_dir,
               dst_ns=dst_ns, nftrace=nftrace, drop_reasons=drop_reasons)
    return t.run()
