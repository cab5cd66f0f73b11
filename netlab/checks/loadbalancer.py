"""service ``via: loadBalancer``: connections to a Service's LoadBalancer address
from a namespace on the underlay (``ext``), and which node answered ARP for it.

The client's neighbour entry for the address is removed first, so its first
connection asks ARP again. A capture on every port of the underlay switch
runs across the connections (netlab/checks/service.py makes and judges them,
with captures at every endpoint). The verdict also needs, from the ARP
capture: the client's request for the address answered by exactly one MAC,
that MAC belonging to the uplink of the expected speaker (``speaker:`` if
given, else the election of netlab/loadbalancer.py over the nodes whose
uplink and switch port are up), and no other node answering.

``takeover: true`` also asks for the gratuitous ARP of that speaker in the
capture a ``link-down`` scenario fault saved while it took the node down
(evidence/lb-failover.pcap).
"""
from __future__ import annotations

import os
import subprocess

from ..features import loadbalancer as lbmod
from ..base.capture import Capture
from .common import CheckResult, Context


def service_or_lb(ctx: Context, check) -> CheckResult:
    from . import service
    if check.params.get("via") == "loadBalancer":
        return run(ctx, check)
    return service.run(ctx, check)


def run(ctx: Context, check) -> CheckResult:
    from ..base.names import switch_ns
    from . import service
    p = check.params
    topo = ctx.topo
    lab = topo.name if not ctx.st else ctx.st.lab
    svc = topo.k8s.services.find(p["service"])
    addr = svc.lb_ip
    src = ctx.target(p["from"])
    macs = lbmod.uplink_macs(topo, lab)
    node_mac = {v: k for k, v in macs.items()}
    state = lbmod.nodes_up(topo, lab)
    up = [n for n, why in state.items() if why == "up"]
    ann = next(a for a in lbmod.announcements(topo, ctx.addresses) if a["address"] == addr)
    elected, lines = lbmod.explain(addr, ann["eligible"], up)
    expected = p.get("speaker") or elected
    subprocess.run(["ip", "-n", src.ns, "neigh", "del", addr, "dev", src.iface], capture_output=True)
    pcap = ctx.pcap(check, "-arp")
    cap = Capture(switch_ns(lab), "", "arp", pcap=pcap, incoming_only=True)
    cap.start()
    try:
        res = service.run(ctx, check)
    finally:
        cap.stop(settle=0.1)
    frames = lbmod.arp_frames(lbmod.switch_ports_only(cap))
    asked = [f for f in frames if f["op"] == 1 and f["pdst"] == addr and f["psrc"] == src.address]
    answers = [f for f in frames if f["op"] == 2 and f["psrc"] == addr and not f["gratuitous"]]
    by_mac: dict[str, int] = {}
    for f in answers:
        by_mac[f["hwsrc"]] = by_mac.get(f["hwsrc"], 0) + 1
    who = {m: macs.get(m, "not a node") for m in by_mac}
    pol = "all nodes" if ann["policy"] != "Local" else "nodes with an endpoint: " + (", ".join(ann["eligible"]) or "none")
    down = [f"{n} ({w})" for n, w in state.items() if w != "up"]
    details = list(res.details)
    details.insert(0, f"{addr}: LoadBalancer address of {svc.key} (pool {svc.lb_pool}); eligible: {pol}"
                   + (f"; down: {', '.join(down)}" if down else ""))
    details.insert(1, "election (lowest sha256(node#address) among eligible nodes that are up): " + "; ".join(lines))
    arp_line = (f"ARP on the underlay: {len(asked)} request(s) from {src.name} for {addr}; answered by "
                + (", ".join(f"{who[m]} ({m}) x{c}" for m, c in sorted(by_mac.items())) or "nobody"))
    details.insert(2, arp_line)
    problems = []
    if not asked:
        problems.append(f"no ARP request from {src.name} for {addr} was captured (nothing to judge the speaker on)")
    if not by_mac:
        problems.append(f"nobody answered ARP for {addr}")
    elif len(by_mac) > 1:
        problems.append(f"{len(by_mac)} MACs answered ARP for {addr} ({', '.join(sorted(who.values()))}): "
                        "only the speaker may")
    if expected is None:
        problems.append(f"no eligible node is up to announce {addr}")
    elif by_mac and set(by_mac) != {node_mac.get(expected)}:
        problems.append(f"ARP for {addr} answered by {', '.join(sorted(who.values()))}, but the speaker should be {expected}"
                        + (" (given)" if p.get("speaker") else " (elected)"))
    if p.get("speaker") and elected != p["speaker"]:
        details.append(f"note: the election over the nodes that are up gives {elected}, the check expects {p['speaker']}")
    if p.get("takeover"):
        fo = os.path.join(ctx.evidence_dir, lbmod.FAILOVER_PCAP)
        g = [f for f in lbmod.garps_in(fo) if f["psrc"] == addr]
        mine = [f for f in g if expected and f["hwsrc"] == node_mac.get(expected)]
        if not os.path.exists(fo):
            problems.append(f"no takeover capture ({fo}): a scenario's link-down fault makes it")
        elif not mine:
            problems.append(f"no gratuitous ARP for {addr} from {expected} in {fo} "
                            f"({len(g)} from: {', '.join(sorted({macs.get(f['hwsrc'], f['hwsrc']) for f in g})) or 'nobody'})")
        else:
            details.insert(3, f"takeover: {len(mine)} gratuitous ARP(s) for {addr} from {expected} "
                           f"({mine[0]['hwsrc']}) in {fo}")
    details += [f"ARP capture: {pcap}"]
    ok = res.ok and not problems
    speaker_txt = ", ".join(f"{who[m]}" for m in by_mac) or "nobody"
    if problems:
        observed = f"{res.observed}; " + "; ".join(problems)
    else:
        observed = (f"{res.observed}; ARP for {addr} answered by {speaker_txt}"
                    + (" (takeover by gratuitous ARP)" if p.get("takeover") else ""))
    return CheckResult(check.name, "service", ok, f"{res.expected}, speaker {expected or 'none'}", observed, pcap, details)
