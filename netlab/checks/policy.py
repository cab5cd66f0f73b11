"""policy: FROM connects to pod TO (tcp/udp PORT); the NetworkPolicies allow or deny it.

Evidence: captures at the destination pod and in the nodes involved (the
source pod's node, where egress is enforced, and the destination's node,
where ingress is enforced), and the packet counters of our policy table's
rules in those nodes before and after. An ``allow`` must show the probe at
the pod; a ``deny`` must show it reaching a node, never the pod, and a
``default deny`` rule counting it.

Dual stack (ADR 0034): the probe is sent in every family both pods have
(or the one ``family`` names), each with its own captures and counters;
all must hold (one policy applies to both families)."""
from __future__ import annotations

from ..features import policy as polmod
from ..base.capture import Capture
from .common import CheckResult, Context, Server, client, families_between


def _nodes(ctx: Context, src_name: str, dst_pod) -> list[str]:
    out = []
    src = ctx.topo.pods.get(src_name)
    if src is not None and src.mode in ("bridge", "overlay"):
        out.append(src.node)
    elif src_name in ctx.topo.nodes:
        out.append(src_name)
    if dst_pod.node not in out:
        out.append(dst_pod.node)
    return out


def counters(ctx: Context, node: str) -> dict[str, int]:
    from ..lab.plan import node_ns
    return polmod.counters(node_ns(ctx.topo.name, node), polmod.FAMILY, polmod.TABLE)


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    src, dst = ctx.target(p["from"]), ctx.target(p["to"])
    fams = families_between(src, dst, p.get("family"))
    if len(fams) <= 1:
        f = fams[0] if fams else None
        return _run_family(ctx, check, src.at(f), dst.at(f), "", f)
    parts = [_run_family(ctx, check, src.at(f), dst.at(f), "" if i == 0 else f"-ipv{f}", f) for i, f in enumerate(fams)]
    return CheckResult(check.name, "policy", all(r.ok for r in parts), p["expect"],
                       "; ".join(f"IPv{f} {r.observed}" for f, r in zip(fams, parts)), parts[0].evidence,
                       [d for f, r in zip(fams, parts) for d in [f"IPv{f}:"] + r.details + [f"evidence {r.evidence}"]])


def _run_family(ctx: Context, check, src, dst, sfx: str, fam: int | None) -> CheckResult:
    from ..lab.plan import node_ns
    p = check.params
    proto, port = p["proto"], p["port"]
    if not dst.address or not src.address:
        who = dst if not dst.address else src
        return CheckResult(check.name, "policy", False, p["expect"],
                           f"{who.name} has no {f'IPv{fam} ' if fam else ''}address: nothing to probe, no evidence")
    dpod = ctx.topo.pods[p["to"]]
    nodes = _nodes(ctx, p["from"], dpod)
    bpf = f"{proto} and dst host {dst.address} and dst port {port}"
    pcap = ctx.pcap(check, sfx)
    caps = {"": Capture(dst.ns, dst.iface, bpf, pcap=pcap)}
    for n in nodes:
        caps[n] = Capture(node_ns(ctx.topo.name, n), "", bpf, pcap=ctx.pcap(check, f"-{n}{sfx}"))
    before = {n: counters(ctx, n) for n in nodes}
    with Server(dst.ns, proto, port, "::" if ":" in dst.address else "0.0.0.0"):
        for c in caps.values():
            c.start()
        try:
            ok, text = client(src.ns, proto, dst.address, port, p["timeout"])
        finally:
            for c in caps.values():
                c.stop(settle=0.1)
    after = {n: counters(ctx, n) for n in nodes}
    at_pod = len(caps[""].frames)
    at_node = {n: len(caps[n].frames) for n in nodes}
    hits = []
    for n in nodes:
        for comment, pk in after[n].items():
            d = pk - before[n].get(comment, 0)
            if d > 0:
                hits.append((n, comment, d))
    drops = [h for h in hits if h[1].startswith("default deny")]
    allows = [h for h in hits if h[1].startswith("allow")]
    details = [f"{src.name} ({src.address}) -> {dst.name} ({dst.address}) {proto}/{port}",
               "probe packets seen: " + ", ".join([f"at pod {dst.name} {at_pod}"] + [f"in node {n} {c}" for n, c in at_node.items()])]
    details += [f"rule counted in node {n}: {c!r} (+{d})" for n, c, d in hits]
    details.append("pcaps: " + ", ".join(c.pcap for c in caps.values() if c.pcap))
    if p["expect"] == "allow":
        good = ok and at_pod > 0
        observed = f"allow: {text}; {at_pod} packet(s) at the pod" if ok else f"deny: {text}"
    else:
        good = (not ok) and at_pod == 0 and any(at_node.values()) and bool(drops)
        observed = (f"deny: {text}; reached node(s) {', '.join(n for n, c in at_node.items() if c) or 'none'}, "
                    f"never the pod; dropped by {drops[0][1]!r} in {drops[0][0]}" if not ok and drops
                    else (f"allow: {text}" if ok else f"no answer: {text}; {at_pod} packet(s) at the pod, no drop rule counted it"))
    if ok and allows:
        observed += f"; accepted by {allows[-1][1]!r}"
    # the evidence of a deny is the probe in the node that dropped it (the pod's capture is empty)
    evidence = caps[drops[0][0]].pcap if (drops and not ok and at_node.get(drops[0][0])) else pcap
    return CheckResult(check.name, "policy", good, p["expect"], observed, evidence, details)
