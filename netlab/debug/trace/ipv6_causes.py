"""What is particular to IPv6 in explaining a lost probe.

Owns two kinds of evidence only IPv6 has: the ICMPv6 Packet Too Big a router
must send instead of fragmenting (was it seen on the way back, or is a rule
dropping it) and duplicate address detection (an address still tentative, or
failed, answers no neighbour solicitation).
"""
from __future__ import annotations

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
