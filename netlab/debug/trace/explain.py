"""The verdict of a trace and its likely cause, from the evidence gathered.

Owns turning the correlated path and the recorded evidence (counter moves,
nft verdicts, kernel drop reasons, conntrack entries, kernel state read on
the spot) into ``res.verdict``, ``res.causes`` and ``res.evidence``:
``explain`` decides which story applies (not sent, not seen, lost after a
DNAT, delivered and answered or not, lost on the way) and hands a loss to
``where_lost``; it adds the kernel's own drop reason for the lost packet,
IPv6 specifics (``ipv6_causes``), and what Services, NetworkPolicy and
LoadBalancer addresses did to the probe. Causes that are only context are
prefixed ``note: ``.
"""
from __future__ import annotations

import re

from .. import dropmon
from .correlate import Obs, owner_of
from .facts import Facts
from .frames import l4_summary
from .ipv6_causes import counter_causes, dad_causes
from .netstate import route_get, run_ns
from .nftrules import k8s_notes, netdev_drop_rules
from .where_lost import explain_loss


def explain(f: Facts) -> None:
    """Everything: the verdict and causes, the kernel's drop, IPv6, Services and LoadBalancers."""
    diagnose(f)
    kernel_verdict(f)
    if f.probe.v6:
        dad_causes(f)
        if f.probe.sent:
            counter_causes(f)
    feature_notes(f)


def _endpoint(addr: str, port) -> str:
    return f"{addr}{':' + str(port) if port else ''}"


def diagnose(f: Facts) -> None:
    pr, res, fwd = f.probe, f.res, f.path.fwd
    if not pr.sent:
        res.verdict = f"not sent: {pr.send_error}"
        if "EMSGSIZE" in pr.send_error:
            r = route_get(f.src_ns, f.dst)
            l = f.inv.link(f.src_ns, r.get("dev", ""))
            res.causes.append(f"MTU: the probe is {pr.size} bytes with DF, the route to {f.dst} "
                              f"leaves {r.get('dev')} (mtu {l.mtu if l else '?'}"
                              + (f", path mtu {r['mtu']}" if r.get("mtu") else "") + ")")
        return
    if not fwd:
        res.verdict = "the probe was not seen anywhere (not even leaving the sender)"
        return
    conntrack_notes(f)
    last = fwd[-1]
    if f.path.dnat_lost is not None:
        return _lost_after_dnat(f)
    if res.arrived:
        return _arrived(f, last)
    res.verdict = f"lost after {f.label(last.ns)} {last.iface} ({'received' if last.direction == 'in' else 'sent'})"
    explain_loss(f, last, fwd, reply=False)


def _lost_after_dnat(f: Facts) -> None:
    """The nft trace saw a DNAT; no copy with its new destination was seen anywhere."""
    pr, res = f.probe, f.res
    ns, a, port, rule = f.path.dnat_lost
    res.verdict = f"lost in {f.label(ns)} right after a DNAT to {_endpoint(a, port)}"
    res.causes.append(f"{f.label(ns)} rewrote the destination to {_endpoint(a, port)}"
                      + f" ({rule['table']} chain {rule['chain']}: {rule['rule']}) and no copy with that "
                      "destination was seen anywhere")
    came_in = next((o for o in f.path.fwd if o.ns == ns and o.direction == "in"), None)
    pl = f.inv.link(ns, came_in.iface) if came_in else None
    if a == pr.src and pl is not None and pl.master and pl.hairpin is False:
        res.causes.append(f"hairpin: {a} is the sender itself; the bridge {pl.master} must send the packet "
                          f"back out of the port it came in on ({pl.name}), and hairpin mode is off on "
                          f"{pl.name} (`bridge link show dev {pl.name}`), so the bridge drops it")
    else:
        r = route_get(ns, a)
        res.causes.append(f"route to {a} in {f.label(ns)}: " + (r.get("error") or f"dev {r.get('dev')}"
                          + (f" via {r['gateway']}" if r.get("gateway") else "")))


def _arrived(f: Facts, last: Obs) -> None:
    """Delivered: answered, answered with an ICMP error, the answer lost, or no answer."""
    res, back = f.res, f.path.back
    top = last.top
    owner = owner_of(f.inv, top["dst"]) or last.ns
    where = f.label(owner)
    if f.dst_ns and owner != f.dst_ns and f.path.nat_points:
        ns0, a, b = f.path.nat_points[0]
        rule = next((r for r in f.rules.get(ns0, []) if "dnat" in r["rule"]), None)
        res.causes.append(f"note: addressed to {res.dst_name} ({_endpoint(a[2], a[3])}) but "
                          f"delivered to {where} ({_endpoint(b[2], b[3])}): {f.label(ns0)} "
                          "rewrote the destination" + (f" ({rule['table']} chain {rule['chain']}: {rule['rule']})"
                                                       if rule else ""))
    if res.replied:
        res.verdict = f"delivered to {where} and answered ({l4_summary(back[-1].top)})"
        return
    err_home = [e for e in res.errors if e.startswith(f.label(f.src_ns) + " ")]
    res.verdict = f"delivered to {where}; " + ("the answer was lost on the way back" if back else
                                              ("the answer was an ICMP error" if err_home else "no answer came back"))
    if back:
        explain_loss(f, back[-1], back, reply=True)
    else:
        _no_answer(f, last, top)


def _conntrack_argv(proto: str, a: tuple) -> list[str]:
    argv = ["conntrack", "-L", "-p", proto, "--orig-src", a[0], "--orig-dst", a[2]]
    if a[1]:
        argv += ["--orig-port-src", str(a[1]), "--orig-port-dst", str(a[3])]
    return argv


def conntrack_notes(f: Facts) -> None:
    """A NAT rewrite with no NAT rule hit in the nft trace: an existing conntrack
    entry decided it. Show that entry; flag it when its target is gone."""
    pr, res = f.probe, f.res
    seen = set()
    for ns, a, b in f.path.nat_points:
        if (ns, a) in seen or ns not in f.inv.namespaces:
            continue
        seen.add((ns, a))
        if any(re.search(r"\b[ds]nat to|masquerade", r["rule"]) for r in f.rules.get(ns, [])):
            continue    # a rule made this NAT now: a new connection
        p = run_ns(ns, _conntrack_argv(pr.proto, a))
        entries = [ln.strip() for ln in p.stdout.splitlines() if ln.strip()]
        if not entries:
            continue
        res.evidence.append(f"conntrack in {f.label(ns)}: {entries[0]}")
        if f.nftrace:
            target = b[2] if a[2:] != b[2:] else b[0]
            if owner_of(f.inv, target) is None:
                res.causes.insert(0, f"stale conntrack entry: in {f.label(ns)} this flow's NAT was decided "
                                  f"when it started and still points at {target}, an address no namespace of the "
                                  "lab has any more (the pod behind it was replaced); no NAT rule was consulted "
                                  f"for this packet. Delete it: conntrack -D -p {pr.proto} --orig-src {a[0]} "
                                  f"--orig-dst {a[2]}" + (f" --orig-port-src {a[1]}" if a[1] else ""))


def _no_answer(f: Facts, last: Obs, top: dict) -> None:
    res, pr = f.res, f.probe
    ns = owner_of(f.inv, top["dst"]) or last.ns
    r = route_get(ns, top["src"], src=top["dst"])
    if "error" in r:
        res.causes.append(f"no route back: {f.label(ns)} has no route to {top['src']} "
                          f"(`ip route get {top['src']}`: {r['error']})")
        if top["src"] == pr.src:
            res.causes.append(f"the probe arrived with the sender's own address {pr.src} as source: "
                              "nothing rewrote it (no masquerade/SNAT on the way out of the sender's node)")
        return
    sn = f.moved.get(ns, {}).get("snmp", {})
    if pr.proto == "udp" and sn.get("Udp:NoPorts"):
        res.causes.append(f"nothing listens on UDP port {top['udp']['dport']} in {f.label(ns)} "
                          "(Udp:NoPorts +1; an ICMP port unreachable is the answer)")
    elif pr.proto == "udp" and sn.get("Udp6NoPorts"):
        res.causes.append(f"nothing listens on UDP port {top['udp']['dport']} in {f.label(ns)} "
                          "(Udp6NoPorts +1; an ICMPv6 port unreachable is the answer)")
    for d in f.dropping_rules(ns):
        res.causes.append(f"rule: {d['table']} chain {d['chain']}: {d['rule']} (verdict {d['verdict']})")
    if res.errors:
        res.causes.append("an ICMP error came back instead: " + res.errors[0])
    if not res.causes:
        res.causes.append(f"{f.label(ns)} got it and a route back exists (via {r.get('gateway') or r.get('dev')}); "
                          "no answer was sent: no listener, or a rule in the destination")
    res.evidence += f.counter_lines(ns)


def kernel_verdict(f: Facts) -> None:
    """For a probe (or answer) that got lost: the kernel's drop right after it was last seen."""
    res, drops = f.res, f.rec.drops
    if not f.drop_reasons or (res.kernel_note and not drops):
        return      # unavailable, or reading them failed (the note says which)
    res.kernel_drops = [d.to_dict() for d in drops]
    if (res.arrived and res.replied) or not f.probe.sent:
        return
    seq = f.path.back if f.path.back else f.path.fwd
    last = max((o.ts for o in seq), default=0.0) or f.rec.sent_at
    v = dropmon.correlate(drops, last)
    res.kernel = v.line("IPv6" if f.probe.v6 else "IPv4")
    if v.drop is not None and v.drop.reason == "NETFILTER_DROP" and seq:
        ns = max(seq, key=lambda o: o.ts).ns
        if not f.dropping_rules(ns):
            rules = netdev_drop_rules(ns)
            if rules:
                res.causes.insert(0, f"netdev rules in {f.label(ns)} that drop (the nft trace starts after the "
                                  "netdev hooks, so it cannot show them): " + "; ".join(rules))
    for d, dd in zip(drops, res.kernel_drops):
        dd["probe"] = d is v.drop


def feature_notes(f: Facts) -> None:
    """What our Services / NetworkPolicy tables and a LoadBalancer address did: drops first."""
    res = f.res
    k8s = k8s_notes(f.rec.nft_lines, f.label)
    res.causes[:0] = [c for c in k8s if not c.startswith("note: ")]
    res.causes += [c for c in k8s if c.startswith("note: ")]
    from ...features.loadbalancer import trace_notes   # a LoadBalancer address: its speaker and why
    from ...lab.labs import plan_for_state
    try:
        lb_topo = plan_for_state(f.st)[0] if f.st is not None else None
    except Exception:  # noqa: BLE001 - a trace explains what it can
        lb_topo = None
    lb = trace_notes(f.st, lb_topo, f.dst)
    res.causes[:0] = [c for c in lb if not c.startswith("note: ")]
    res.causes += [c for c in lb if c.startswith("note: ")]
