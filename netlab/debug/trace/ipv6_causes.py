"""What is particular to IPv6 in explaining a lost probe.

Owns three kinds of evidence only IPv6 has: the ICMPv6 Packet Too Big a router
must send instead of fragmenting (was it seen on the way back, or is a rule
dropping it), duplicate address detection (an address still tentative, or
failed, answers no neighbour solicitation), and the namespace's IPv6 counters
(/proc/net/snmp6) that moved while the probe was out, along its path: no
route, Packet Too Big sent and received, neighbour solicitations without an
advertisement, discards. ``counter_evidence`` is pure (counter moves in,
text out) so it is tested without root.
"""
from __future__ import annotations

from typing import Callable

from .counters import SNMP6_MEANING, ipv6_counter_line
from .facts import Facts
from .netstate import run_ns


def ptb_causes(f: Facts, ns: str, mtu: int) -> None:
    """IPv6 routers never fragment: ``ns`` must have sent an ICMPv6 Packet Too Big.
    Seen on the way back, or not; and the rules in ``ns`` that drop it."""
    res = f.res
    ptb = [e for e in res.errors if "Packet Too Big" in e]
    if ptb:
        res.causes.append(f"ICMPv6 Packet Too Big (mtu {mtu}) went back: {ptb[0]}")
        return
    res.causes.append(f"an IPv6 router never fragments: {f.label(ns)} must answer with an ICMPv6 Packet Too "
                      f"Big (mtu {mtu}), and none was seen anywhere: the sender never learns the path MTU "
                      "(a black hole)")
    rules = [ln.strip() for ln in run_ns(ns, ["nft", "list", "ruleset"]).stdout.splitlines()
             if ("packet-too-big" in ln or "icmpv6" in ln) and ("drop" in ln or "reject" in ln)]
    if rules:
        res.causes.insert(0, f"ICMPv6 Packet Too Big is filtered in {f.label(ns)}: " + "; ".join(rules))


def _holders(f: Facts, ns: str, addr: str) -> list[str]:
    """The other namespaces that have ``addr`` too."""
    return [f.label(o.name) for o in f.inv.namespaces.values() if o.name != ns
            for m in o.links.values() if any(x.split("/")[0] == addr for x in m.addrs)]


def dad_causes(f: Facts) -> None:
    """Duplicate address detection: an IPv6 address the probe is for (or comes
    from) that is still tentative, or failed DAD, answers no neighbour
    solicitation; find who else holds it."""
    pr, res = f.probe, f.res
    for addr, role in ((pr.dst, "destination"), (pr.src, "source")):
        for n in f.inv.namespaces.values():
            for l in n.links.values():
                for a, fl in l.addr_flags.items():
                    if a.split("/")[0] != addr:
                        continue
                    others = _holders(f, n.name, addr)
                    if "dadfailed" in fl:
                        res.causes.insert(0, f"DAD failed: the {role} address {a} on {l.name} in {f.label(n.name)} "
                                          "is 'tentative dadfailed': another host answered its duplicate address "
                                          "detection, so the kernel neither uses nor answers for it"
                                          + (f"; {', '.join(sorted(set(others)))} holds it too and answers the "
                                             "neighbour solicitations instead" if others else ""))
                    else:
                        res.causes.insert(0, f"DAD not finished: the {role} address {a} on {l.name} in "
                                          f"{f.label(n.name)} is still tentative: until duplicate address "
                                          "detection is over (about 1-2 s) the kernel answers no neighbour "
                                          "solicitation for it")


def _count(moved: dict, ns: str, key: str) -> int:
    return moved.get(ns, {}).get("snmp", {}).get(key, 0)


def counter_evidence(moved: dict, path_nss: list[str], sender: str, label: Callable[[str], str],
                     known: list[str] = (), solicited: dict[str, list[str]] | None = None
                     ) -> tuple[list[str], list[str]]:
    """The IPv6 counters that moved in the namespaces of the probe's path (``sender``
    first, then in path order) -> (causes, evidence lines).

    Evidence: one line per namespace whose counters say more than "forwarded
    it" (``Ip6OutForwDatagrams``). Causes only where the counters add to the
    causes already ``known``: a Packet Too Big made by a router that the
    sender never received, a namespace that counted the probe as unroutable,
    neighbour solicitations that got no advertisement (``solicited``: ns ->
    the addresses its solicitations in the capture asked for)."""
    nss = list(dict.fromkeys([sender, *path_nss]))
    evidence = []
    for ns in nss:
        moved_here = set(moved.get(ns, {}).get("snmp", {})) & set(SNMP6_MEANING)
        if moved_here - {"Ip6OutForwDatagrams"}:        # forwarding alone is the normal case
            evidence.append(ipv6_counter_line(label, ns, moved))
    causes = []
    ptb_out = [(ns, _count(moved, ns, "Icmp6OutPktTooBigs")) for ns in nss[1:] if _count(moved, ns, "Icmp6OutPktTooBigs")]
    if ptb_out and not _count(moved, sender, "Icmp6InPktTooBigs"):
        who = ", ".join(f"{label(ns)} (Icmp6OutPktTooBigs +{n})" for ns, n in ptb_out)
        causes.append(f"counters: {who} made an ICMPv6 Packet Too Big for it, and {label(sender)} received none "
                      "(Icmp6InPktTooBigs +0): it was dropped after it was made, on its way out of that "
                      "namespace or back")
    no_route_known = any(c.startswith("no route") for c in known)
    no_na_known = any(c.startswith("no NA answer") for c in known)
    for ns in nss:
        for key in ("Ip6InNoRoutes", "Ip6OutNoRoutes"):
            n = _count(moved, ns, key)
            if n and not no_route_known:
                causes.append(f"counters: {label(ns)} {SNMP6_MEANING[key]} ({key} +{n})")
        sol = _count(moved, ns, "Icmp6OutNeighborSolicits")
        if sol and not _count(moved, ns, "Icmp6InNeighborAdvertisements") and not no_na_known:
            asked = sorted(set((solicited or {}).get(ns, [])))
            causes.append(f"counters: {label(ns)} sent {sol} neighbour solicitation(s)"
                          + (f" for {', '.join(asked)}" if asked else "") + f" (Icmp6OutNeighborSolicits +{sol}) and "
                          "received no neighbour advertisement (Icmp6InNeighborAdvertisements +0)")
    return causes, evidence


def path_namespaces(f: Facts) -> list[str]:
    """The namespaces the probe or its answer was seen in, in path order."""
    return list(dict.fromkeys(o.ns for o in f.path.fwd + f.path.back))


def counter_causes(f: Facts) -> None:
    """The IPv6 counters of the probe's path: always into ``res.ipv6_counters``;
    for a probe that was not delivered and answered, also as causes and evidence."""
    nss = list(dict.fromkeys([f.src_ns, *path_namespaces(f)]))
    for ns in nss:
        moved = {k: v for k, v in sorted(f.moved.get(ns, {}).get("snmp", {}).items()) if k in SNMP6_MEANING}
        if moved:
            f.res.ipv6_counters[ns] = moved
    if f.res.arrived and f.res.replied:
        return
    solicited: dict[str, list[str]] = {}
    for a in f.path.arps:
        if a.info["arp"].get("nd") and a.info["arp"]["op"] == "request" and a.direction == "out":
            solicited.setdefault(a.ns, []).append(a.info["arp"]["pdst"])
    causes, evidence = counter_evidence(f.moved, nss, f.src_ns, f.label, f.res.causes, solicited)
    f.res.causes += causes
    f.res.evidence += evidence
