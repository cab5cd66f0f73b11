"""port: a client outside the node reaches a pod through node:hostPort.

A server listens on the pod's containerPort; the client (default: the
``ext`` namespace on the underlay) connects to the node's address and the
host port. Captures along the path (checks/path.py) follow the probe: a pass
must show the rewritten destination (pod IP : containerPort) in the pod,
which is what portmap's DNAT does; a fail must show the probe leaving the
client and says where it stopped."""
from __future__ import annotations

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
    layer = p["proto"].upper()
    wanted = {(node.address, mapping.host_port), (tgt.address, mapping.container_port)}

    def match(ip) -> bool:       # before or after the DNAT
        return ip.haslayer(layer) and (ip.dst, ip[layer].dport) in wanted
    bpf = (f"{p['proto']} and ((dst host {node.address} and dst port {mapping.host_port}) or "
           f"(dst host {tgt.address} and dst port {mapping.container_port}))")
    path = PathCapture(ctx, check, src, tgt, bpf, match)
    with Server(tgt.ns, p["proto"], mapping.container_port):
        with path:
            ok, text = client(src.ns, p["proto"], node.address, mapping.host_port, p["timeout"])
    ev = path.evidence()
    pkts = path.caps[path.dst_label].packets()
    rewritten = [x for x in pkts if x.haslayer(layer) and x.haslayer("IP") and x["IP"].dst == tgt.address
                 and x[layer].dport == mapping.container_port]
    details = [f"client {src.name} ({src.address}) -> {node.address}:{mapping.host_port}/{p['proto']}",
               f"path: {ev.describe()}"]
    if rewritten:
        x = rewritten[0]
        details.append(f"seen at {pod.name}: {x['IP'].src}:{x[layer].sport} -> {x['IP'].dst}:{x[layer].dport} "
                       f"(destination rewritten from {node.address}:{mapping.host_port})")
    observed = "pass" if ok else "fail"
    summary = f"{len(rewritten)} packet(s) to {tgt.address}:{mapping.container_port} at the pod"
    if p["expect"] == "pass":
        good = ok and bool(rewritten)
    else:
        good, why = judge_fail(ev, ok)
        summary += f"; {why}"
    return CheckResult(check.name, "port", good, p["expect"], f"{observed}: {text}; {summary}",
                       path.pcaps[path.dst_label], details)
