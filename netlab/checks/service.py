"""service: connections to a Service (its ClusterIP, or node:nodePort with
``via: <node>``) and where they land, proven by captures at every endpoint.

A responder runs in every selected pod on the ports the pod declares
(``containerPorts``; the target port when it declares none), so a Service
whose targetPort is wrong meets a pod that does not listen there. Each
endpoint's capture counts the connections (TCP SYNs, UDP datagrams) that
reached it after the DNAT; a capture at the client shows what came back
(a TCP reset or ICMP port unreachable for a Service without endpoints).

expect: ``spread`` (every connection answered, every endpoint reached),
``affinity`` (every connection answered, all by one endpoint), ``reject``
(refused: the client's capture holds the reset / ICMP error), ``fail``
(no answer and no endpoint reached)."""
from __future__ import annotations

import contextlib

from ..features import services as svcmod
from ..base.capture import Capture
from .common import CheckResult, Context, Server, client


def _listen_ports(pod, proto: str, fallback: int) -> list[int]:
    ports = sorted({cp.port for cp in pod.container_ports if cp.protocol == proto})
    return ports or [fallback]


def _arrivals(pkts, proto: str, addr: str, port: int) -> int:
    layer = proto.upper()
    n = 0
    for x in pkts:
        if not (x.haslayer("IP") and x.haslayer(layer) and x["IP"].dst == addr and x[layer].dport == port):
            continue
        if proto == "tcp" and not (int(x["TCP"].flags) & 0x02 and not int(x["TCP"].flags) & 0x10):
            continue          # count connections: SYN without ACK
        n += 1
    return n


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    topo = ctx.topo
    cfg = topo.k8s.services
    svc = cfg.find(p["service"])
    sp = next(x for x in svc.ports if x.name == p["port"])
    proto = sp.protocol
    eps = svcmod.endpoints(cfg, topo.pods, ctx.addresses).get((svc.key, sp.name), [])
    selected = svcmod.selected_pods(svc, topo.pods)
    src = ctx.target(p["from"])
    if p["via"] == "clusterIP":
        host, port, how = svc.cluster_ip, sp.port, f"ClusterIP {svc.cluster_ip}:{sp.port}/{proto}"
    elif p["via"] == "loadBalancer":      # the ARP side is judged by netlab/checks/loadbalancer.py
        host, port = svc.lb_ip, sp.port
        how = f"LoadBalancer {svc.lb_ip}:{sp.port}/{proto} (externalTrafficPolicy {svc.external_policy})"
    else:
        host, port = topo.nodes[p["via"]].address, sp.node_port
        how = f"node {p['via']} {host}:{sp.node_port}/{proto} (NodePort, externalTrafficPolicy {svc.external_policy})"
    count = p.get("count") or max(10, 10 * len(eps))
    fallback = sp.target_port if isinstance(sp.target_port, int) else 0
    listen = {name: [x for x in _listen_ports(topo.pods[name], proto, fallback) if x] for name in selected}
    caps: dict[str, Capture] = {}
    watched: list[tuple[str, str, int]] = []     # (pod, address, port) counted at
    for name in selected:
        t = ctx.target(name)
        if not t.address:
            continue
        watched += [(name, t.address, x) for x in sorted(set(listen[name]) | {e.port for e in eps if e.pod == name})]
        caps[name] = Capture(t.ns, t.iface, f"{proto} and dst host {t.address}", pcap=ctx.pcap(check, f"-{name}"))
    src_pcap = ctx.pcap(check, "-client")
    caps[""] = Capture(src.ns, "", f"({proto} and host {host} and port {port}) or icmp", pcap=src_pcap)
    results: list[tuple[bool, str]] = []
    with contextlib.ExitStack() as stack:
        for name in caps:
            if name:
                for x in listen[name]:
                    stack.enter_context(Server(ctx.target(name).ns, proto, x))
        for c in caps.values():
            c.start()
        try:
            for _ in range(count):
                results.append(client(src.ns, proto, host, port, p["timeout"]))
        finally:
            for c in caps.values():
                c.stop(settle=0.1)
    per = {name: sum(_arrivals(caps[name].packets(), proto, a, x) for n2, a, x in watched if n2 == name) for name in caps if name}
    reached = {n: c for n, c in per.items() if c}
    answered = sum(1 for ok, _ in results if ok)
    cpk = caps[""].packets()
    resets = [x for x in cpk if x.haslayer("TCP") and x["IP"].src == host and int(x["TCP"].flags) & 0x04]
    icmp_err = [x for x in cpk if x.haslayer("ICMP") and x["ICMP"].type == 3]
    spread = ", ".join(f"{n} {c}" for n, c in sorted(per.items())) or "no endpoint pods"
    details = [f"{src.name} ({src.address}) -> {svc.key} via {how}: {count} connection(s)",
               f"endpoints: " + (", ".join(f"{e.pod} {e.address}:{e.port}" for e in eps) or "none (the selector "
                                  f"{svc.selector} picks {', '.join(selected) or 'no pod'})"),
               f"connections seen at each selected pod (capture): {spread}"]
    if resets or icmp_err:
        details.append(f"seen at {src.name}: {len(resets)} TCP reset(s) from {host}, {len(icmp_err)} ICMP unreachable")
        for x in (resets + icmp_err)[:2]:
            details.append(f"  {x.summary()}")
    errs = sorted({t or "no reply" for ok, t in results if not ok})
    if errs:
        details.append("client errors: " + "; ".join(errs[:3]))
    details.append("pcaps: " + ", ".join(c.pcap for c in caps.values() if c.pcap))
    exp = p["expect"]
    if exp == "spread":
        good = answered == count and len(eps) > 0 and set(reached) >= {e.pod for e in eps}
    elif exp == "affinity":
        good = answered == count and len(reached) == 1 and sum(per.values()) >= count
    elif exp == "reject":
        good = answered == 0 and bool(resets or icmp_err) and not reached
    else:
        good = answered == 0 and not reached
    if answered == count:
        summary = f"{answered}/{count} answered; spread {spread}"
    elif answered == 0 and reached:
        ports = sorted({e.port for e in eps})
        summary = (f"0/{count} answered: the connections reached {', '.join(sorted(reached))} on port "
                   f"{', '.join(map(str, ports))}, " + ("refused there (nothing listens on the targetPort: the pods "
                   f"listen on {', '.join(str(x) for n in sorted(reached) for x in listen.get(n, []))})"
                   if resets or icmp_err else "and got no answer"))
    elif answered == 0 and (resets or icmp_err):
        summary = f"0/{count} answered: rejected ({len(resets)} reset(s), {len(icmp_err)} ICMP unreachable)"
    else:
        summary = f"{answered}/{count} answered ({errs[0] if errs else ''}); spread {spread}"
    return CheckResult(check.name, "service", good, exp, summary, src_pcap, details)
