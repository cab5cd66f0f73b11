"""Why a packet disappeared right after the place it was last seen.

Owns the explanation of a loss by the kind of place: a veth whose peer never
saw the frame (receiver's MTU, drop counters, a peer that is down), a VXLAN
device that sent nothing encapsulated (FDB entry, route to the VTEP), a
bridge that did not deliver (FDB, hairpin, port MTU), a bridge port whose
frame was neither switched nor routed (hairpin, the switch), and a namespace
that should have routed it (route lookup with the real input interface,
forwarding sysctl, MTU and IPv6 Packet Too Big, neighbour resolution seen on
the wire, rules with a drop verdict, drop-policy chains, a BGP route never
learned). Each reads the kernel state of that place only.
"""
from __future__ import annotations

import re

from .correlate import Obs, owner_of
from .facts import Facts
from .ipv6_causes import ptb_causes
from .netstate import fdb_port, indent, ip_text, neigh_state, route_get, sysctl, vxlan_fdb
from .nftrules import chain_policies


def bgp_causes(st, ns: str, dst: str) -> list[str]:
    """A BGP node's missing route, explained (netlab/features/bgp.py); nothing otherwise."""
    from ...features.bgp import missing_route_cause
    return missing_route_cause(st, ns, dst)


def explain_loss(f: Facts, last: Obs, seq: list[Obs], reply: bool) -> None:
    """``last`` is the last sighting of the probe (or its answer, ``reply``) in ``seq``."""
    link = f.inv.link(last.ns, last.iface)
    if last.direction == "out" and link is not None and link.kind == "veth" and link.peer:
        return _lost_on_veth(f, last, link)
    if last.direction == "out" and link is not None and link.kind == "vxlan":
        return _lost_in_vxlan(f, last, link)
    if last.direction == "out" and link is not None and link.kind == "bridge":
        return _lost_in_bridge(f, last, seq, link)
    in_if = _lost_at_bridge_port(f, last, seq, link)
    if in_if is not None:
        _lost_in_router(f, last, in_if)


def _lost_on_veth(f: Facts, last: Obs, link) -> None:
    ns, ifn, causes = last.ns, last.iface, f.res.causes
    pns, pif = link.peer
    peer = f.inv.link(pns, pif)
    ip_len = last.info["len"] - 14
    causes.append(f"it left {f.label(ns)} on {ifn} and never arrived at {f.label(pns)} {pif}")
    if peer and ip_len > peer.mtu:
        causes.append(f"MTU: the frame carries a {ip_len}-byte packet; {pif} in {f.label(pns)} has MTU "
                      f"{peer.mtu} (sender side {ifn}: {link.mtu}). A veth drops a frame bigger than the "
                      "receiver's MTU without any ICMP: a black hole")
    ld = f.moved.get(pns, {}).get("links", {}).get(pif, {})
    sd = f.moved.get(ns, {}).get("links", {}).get(ifn, {})
    if ld.get("rx_dropped") or sd.get("tx_dropped"):
        causes.append(f"counters: {pif} rx_dropped +{ld.get('rx_dropped', 0)}, {ifn} tx_dropped +{sd.get('tx_dropped', 0)}")
    if peer and not peer.up:
        causes.append(f"{pif} in {f.label(pns)} is down")


def _lost_in_vxlan(f: Facts, last: Obs, link) -> None:
    ns, ifn, causes = last.ns, last.iface, f.res.causes
    causes.append(f"it entered the VXLAN device {ifn} (VNI {link.vni}) and no encapsulated copy left {f.label(ns)}")
    dmac = last.info["l2"]["dst"]
    ent = [ln for ln in vxlan_fdb(ns, ifn).splitlines() if ln.startswith(dmac) and " dst " in ln]
    if not ent:
        causes.append(f"no VXLAN FDB entry for the inner destination MAC {dmac} on {ifn} (bridge fdb show dev {ifn})")
    else:
        vtep = re.search(r" dst (\S+)", ent[0]).group(1)
        rr = route_get(ns, vtep)
        causes.append(f"FDB: {dmac} -> VTEP {vtep}; route to it: " + (rr.get("error") or f"dev {rr.get('dev')}"))


def _lost_in_bridge(f: Facts, last: Obs, seq: list[Obs], link) -> None:
    """Handed to the bridge for delivery: which port should have sent it?"""
    inv, ns, ifn, causes = f.inv, last.ns, last.iface, f.res.causes
    top = last.top
    dmac = last.info["l2"]["dst"]
    port = fdb_port(ns, ifn, dmac)
    came_in = next((o.iface for o in seq if o.ns == ns and o.direction == "in"
                    and (inv.link(ns, o.iface) or link).master == ifn), None)
    pl = inv.link(ns, port) if port else None
    if port and port == came_in and pl is not None and pl.hairpin is False:
        causes.append(f"hairpin: after the DNAT the packet is for {top['dst']}, the sender itself; the bridge "
                      f"{ifn} must send it back out of the port it came in on ({port}), and hairpin mode is "
                      f"off on {port} (`bridge link show dev {port}`), so the bridge drops it")
        return
    if port is None:
        causes.append(f"the bridge {ifn} does not know the destination MAC {dmac} (bridge fdb show br {ifn})")
    else:
        causes.append(f"the bridge {ifn} should have sent it out of {port} (MAC {dmac}); nothing left there")
        if pl is not None and last.info["len"] - 14 > pl.mtu:
            causes.append(f"MTU: {last.info['len'] - 14}-byte packet, {port} has MTU {pl.mtu}")


def _lost_at_bridge_port(f: Facts, last: Obs, seq: list[Obs], link) -> str | None:
    """Received here (or sent on another device) and not forwarded on. A frame in on a
    bridge port is forwarded to another port (L2) or up to the host (routed): explain an
    L2 loss and return None, or return the interface the routing decision sees."""
    ns, ifn, causes = last.ns, last.iface, f.res.causes
    n = f.inv.namespaces.get(ns)
    if not (link is not None and link.master and link.master in (n.links if n else {})):
        return ifn
    br = link.master
    routed_up = any(o.ns == ns and o.iface == br for o in seq)
    if n and n.role == "switch" or not routed_up:
        dmac = last.info["l2"]["dst"]
        out_port = fdb_port(ns, br, dmac)
        if out_port == ifn and link.hairpin is False:
            causes.append(f"hairpin: the bridge {br} would send it back out of the port it came in on "
                          f"({ifn}, towards the sender itself), and hairpin mode is off on {ifn}")
            causes.append(f"`bridge link show dev {ifn}` shows hairpin off; the DNAT turned a packet for "
                          f"a host port into one for the sender's own address")
            return None
        if n and n.role == "switch":
            causes.append(f"the switch bridge {br} did not forward it to any port"
                          + (f" (MAC {dmac} is learned on {out_port})" if out_port else f" (MAC {dmac} unknown)"))
            return None
    return br if routed_up else ifn


def _no_route(f: Facts, ns: str, top: dict, in_if: str, r: dict, fwd: tuple[str, str, str]) -> None:
    fwd_key, fwd_name, fwd_on = fwd
    causes, cur_dst = f.res.causes, top["dst"]
    lookup = f"`ip route get {cur_dst} from {top['src']} iif {in_if}`: {r['error']}"
    if fwd_on == "0":
        causes.append(f"{fwd_name} is off in {f.label(ns)} ({fwd_key.replace('/', '.')} = 0): it is not a router, "
                      f"packets for other hosts are dropped ({lookup})")
    else:
        causes.append(f"no route: {f.label(ns)} cannot forward to {cur_dst} ({lookup})")
        causes += bgp_causes(f.st, ns, cur_dst)
        causes.append(f"routes in {ns}:\n" + indent(ip_text(ns, *(["-6"] if top.get("v6") else []), "route", "show")))
    f.res.evidence += f.counter_lines(ns)


def _neighbour_causes(f: Facts, ns: str, top: dict, nh: str, out_dev: str) -> None:
    """Neighbour resolution of the next hop: the entry's state and ARP / ND seen on the wire."""
    causes, arps = f.res.causes, f.path.arps
    nb = neigh_state(ns, nh, out_dev)
    asked = [a for a in arps if a.ns == ns and a.info["arp"]["op"] == "request" and a.info["arp"]["pdst"] == nh]
    answered = [a for a in arps if a.ns == ns and a.info["arp"]["op"] == "reply" and a.info["arp"]["psrc"] == nh]
    if nb in ("FAILED", "INCOMPLETE") or (asked and not answered):
        if top.get("v6"):
            causes.append(f"no NA answer: {f.label(ns)} sent {len(asked)} neighbour solicitation(s) for {nh} "
                          f"on {out_dev} in the capture, no neighbour advertisement came back (neighbour state "
                          f"{nb or 'none'})")
        else:
            causes.append(f"no ARP answer: {f.label(ns)} asked who has {nh} on {out_dev} "
                          f"{len(asked)} time(s) in the capture, nobody answered (neighbour state {nb or 'none'})")
        if owner_of(f.inv, nh) is None:
            causes.append(f"no namespace of the lab has the address {nh} any more (a stale route or endpoint?)")


def _lost_in_router(f: Facts, last: Obs, in_if: str) -> None:
    """It should have been routed on from ``last.ns``: route, forwarding, MTU, neighbour, rules."""
    res, causes, ns = f.res, f.res.causes, last.ns
    top = last.top
    cur_dst = top["dst"]
    if owner_of(f.inv, cur_dst) == ns:
        causes.append(f"it reached {f.label(ns)}, which owns {cur_dst}, and was not delivered to a socket")
        res.evidence += f.counter_lines(ns)
        return
    r = route_get(ns, cur_dst, src=top["src"], iif=in_if)
    fwd_key = "net/ipv6/conf/all/forwarding" if top.get("v6") else "net/ipv4/ip_forward"
    fwd_name = "IPv6 forwarding" if top.get("v6") else "ip_forward"
    fwd_on = sysctl(ns, fwd_key)
    if "error" in r:
        return _no_route(f, ns, top, in_if, r, (fwd_key, fwd_name, fwd_on))
    out_dev = r.get("dev")
    nh = r.get("gateway") or cur_dst
    out_link = f.inv.link(ns, out_dev)
    if fwd_on == "0":
        causes.append(f"{fwd_name} is off in {f.label(ns)} ({fwd_key.replace('/', '.')} = 0): the route exists "
                      f"(via {nh} dev {out_dev}) but the namespace does not forward")
        res.evidence += f.counter_lines(ns)
        return
    frame_len = last.info["len"]
    if out_link is not None and (frame_len - 14 if "vxlan" not in last.info else top["len"]) > out_link.mtu:
        causes.append(f"MTU: a {top['len']}-byte packet{' with DF' if top.get('df') else ''} must leave on {out_dev} "
                      f"(mtu {out_link.mtu})" + (": an ICMP fragmentation-needed goes back" if top.get("df")
                                                 and not top.get("v6") else ""))
        if top.get("v6"):
            ptb_causes(f, ns, out_link.mtu)
    _neighbour_causes(f, ns, top, nh, out_dev)
    for d in f.dropping_rules(ns):
        causes.insert(0, f"rule: {d['table']} chain {d['chain']}: {d['rule']} (verdict {d['verdict']})")
    pol = chain_policies(ns)
    if not causes and pol:
        causes.append("base chains with policy drop: " + ", ".join(f"{p['table']} {p['chain']} ({p['hook']})" for p in pol))
    if not causes:
        causes.append(f"{f.label(ns)} routes it via {nh} dev {out_dev}, but no copy left on {out_dev}")
    if f.moved.get(ns, {}).get("snmp", {}):
        res.evidence += f.counter_lines(ns)
