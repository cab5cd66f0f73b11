"""port: a client outside the node reaches a pod through node:hostPort.

A server listens on the pod's containerPort; the client (default: the
``ext`` namespace on the underlay) connects to the node's address and the
host port. The capture on the pod side must show the rewritten destination
(pod IP : containerPort), which is what portmap's DNAT does."""
from __future__ import annotations

from .common import CheckResult, Context, Server, captured, client


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    pod = ctx.topo.pods[p["pod"]]
    mapping = next(m for m in pod.ports if m.host_port == p["hostPort"] and m.protocol == p["proto"])
    tgt = ctx.target(pod.name)
    src = ctx.target(p["from"])
    node = ctx.topo.nodes[pod.node]
    pcap = ctx.pcap(check)
    bpf = f"{p['proto']} port {mapping.container_port}"
    with Server(tgt.ns, p["proto"], mapping.container_port):
        (ok, text), pkts = captured(tgt.ns, tgt.iface, bpf, pcap,
                                    lambda: client(src.ns, p["proto"], node.address, mapping.host_port, p["timeout"]))
    layer = p["proto"].upper()
    rewritten = [x for x in pkts if x.haslayer(layer) and x.haslayer("IP") and x["IP"].dst == tgt.address
                 and x[layer].dport == mapping.container_port]
    details = [f"client {src.name} ({src.address}) -> {node.address}:{mapping.host_port}/{p['proto']}"]
    if rewritten:
        x = rewritten[0]
        details.append(f"seen at {pod.name}: {x['IP'].src}:{x[layer].sport} -> {x['IP'].dst}:{x[layer].dport} "
                       f"(destination rewritten from {node.address}:{mapping.host_port})")
    observed = "pass" if ok else "fail"
    good = observed == p["expect"] and (not ok or bool(rewritten))
    return CheckResult(check.name, "port", good, p["expect"],
                       f"{observed}: {text}; {len(rewritten)} packet(s) to {tgt.address}:{mapping.container_port} at the pod",
                       pcap, details)
