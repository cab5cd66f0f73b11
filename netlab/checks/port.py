"""port: a client outside the node reaches a pod through node:hostPort.

A server listens on the pod's containerPort; the client (default: the
``ext`` namespace on the underlay) connects to the node's address and the
host port. Captures along the path (checks/path.py) follow the probe: a pass
must show the rewritten destination (pod IP : containerPort) in the pod,
which is what portmap's DNAT does; a fail must show the probe leaving the
client and says where it stopped.

``family: 6`` connects to the node's IPv6 address (portmap's ``ip6`` table);
the default is the lab's primary family. Host ports on ``::1`` cannot work:
the kernel never routes a packet from the IPv6 loopback address off the host
(IPv6 has no ``route_localnet``), so portmap DNATs 127.0.0.1 only."""
from __future__ import annotations

import ipaddress

from .common import CheckResult, Context, Server, client
from .path import PathCapture
from .reach import judge_fail


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    pod = ctx.topo.pods[p["pod"]]
    mapping = next(m for m in pod.ports if m.host_port == p["hostPort"] and m.protocol == p["proto"])
    tgt = ctx.target(pod.name)
    src = ctx.target(p["from"])
    node = ctx.topo.nodes[pod.node]
    fam = p.get("family")
    node_addr = node.address_of(fam) if fam else node.address
    if fam:
        tgt, src = tgt.at(fam), src.at(fam)
    if not node_addr or not tgt.address:
        return CheckResult(check.name, "port", p["expect"] == "fail", p["expect"],
                           f"no IPv{fam} address on {'node ' + node.name if not node_addr else pod.name}")
    layer = p["proto"].upper()
    wanted = {(ipaddress.ip_address(node_addr), mapping.host_port),
              (ipaddress.ip_address(tgt.address), mapping.container_port)}

    def match(ip) -> bool:       # before or after the DNAT
        return ip.haslayer(layer) and (ipaddress.ip_address(ip.dst), ip[layer].dport) in wanted
    bpf = (f"{p['proto']} and ((dst host {node_addr} and dst port {mapping.host_port}) or "
           f"(dst host {tgt.address} and dst port {mapping.container_port}))")
    path = PathCapture(ctx, check, src, tgt, bpf, match)
    v6 = ":" in tgt.address
    ipl = "IPv6" if v6 else "IP"
    with Server(tgt.ns, p["proto"], mapping.container_port, "::" if v6 else "0.0.0.0"):
        with path:
            ok, text = client(src.ns, p["proto"], node_addr, mapping.host_port, p["timeout"])
    ev = path.evidence()
    pkts = path.caps[path.dst_label].packets()
    rewritten = [x for x in pkts if x.haslayer(layer) and x.haslayer(ipl)
                 and ipaddress.ip_address(x[ipl].dst) == ipaddress.ip_address(tgt.address)
                 and x[layer].dport == mapping.container_port]
    details = [f"client {src.name} ({src.address}) -> {node_addr}:{mapping.host_port}/{p['proto']}",
               f"path: {ev.describe()}"]
    if rewritten:
        x = rewritten[0]
        details.append(f"seen at {pod.name}: {x[ipl].src}:{x[layer].sport} -> {x[ipl].dst}:{x[layer].dport} "
                       f"(destination rewritten from {node_addr}:{mapping.host_port})")
    observed = "pass" if ok else "fail"
    summary = f"{len(rewritten)} packet(s) to {tgt.address}:{mapping.container_port} at the pod"
    if p["expect"] == "pass":
        good = ok and bool(rewritten)
    else:
        good, why = judge_fail(ev, ok)
        summary += f"; {why}"
    return CheckResult(check.name, "port", good, p["expect"], f"{observed}: {text}; {summary}",
                       path.pcaps[path.dst_label], details)
