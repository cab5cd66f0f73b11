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
(no answer and no endpoint reached).

Dual stack (ADR 0034): the check runs in every family the Service
(``ipFamilies``), the client and, for a NodePort, the node have, or in the one
``family`` names; each family has its own connections and captures (the
IPv6 ClusterIP or the node's IPv6 address, the endpoints' IPv6 addresses),
and all must hold."""
from __future__ import annotations

import contextlib

from ..features import services as svcmod
from ..base.capture import Capture
from .common import CheckResult, Context, Server, client


def _listen_ports(pod, proto: str, fallback: int) -> list[int]:
    ports = sorted({cp.port for cp in pod.container_ports if cp.protocol == proto})
    return ports or [fallback]


def _ipl(addr: str) -> str:
    """scapy's layer name for an address's IP header."""
    return "IPv6" if ":" in addr else "IP"


def _arrivals(pkts, proto: str, addr: str, port: int) -> int:
    layer, ipl = proto.upper(), _ipl(addr)
    n = 0
    for x in pkts:
        if not (x.haslayer(ipl) and x.haslayer(layer) and x[ipl].dst == addr and x[layer].dport == port):
            continue
        if proto == "tcp" and not (int(x["TCP"].flags) & 0x02 and not int(x["TCP"].flags) & 0x10):
            continue          # count connections: SYN without ACK
        n += 1
    return n


def families(ctx: Context, check) -> list[int]:
    """The families the check runs in: the one asked for, else those the Service,
    the client and (NodePort) the node all have, in the Service's order."""
    p = check.params
    svc = ctx.topo.k8s.services.find(p["service"])
    if p.get("family"):
        return [p["family"]]
    if p["via"] == "loadBalancer":
        return [4]
    src = ctx.target(p["from"])
    fams = [f for f in svc.families if not src.addresses or f in src.families]
    if p["via"] != "clusterIP":
        node = ctx.target(p["via"])
        fams = [f for f in fams if not node.addresses or f in node.families]
    return fams or svc.families[:1]


def run(ctx: Context, check) -> CheckResult:
    fams = families(ctx, check)
    if len(fams) == 1:
        return _run_family(ctx, check, fams[0], "")
    parts = [_run_family(ctx, check, f, "" if i == 0 else f"-ipv{f}") for i, f in enumerate(fams)]
    return CheckResult(check.name, "service", all(r.ok for r in parts), check.params["expect"],
                       "; ".join(f"IPv{f} {r.observed}" for f, r in zip(fams, parts)), parts[0].evidence,
                       [d for f, r in zip(fams, parts) for d in [f"IPv{f}:"] + r.details + [f"evidence {r.evidence}"]])


def _run_family(ctx: Context, check, fam: int, sfx: str) -> CheckResult:
    p = check.params
    topo = ctx.topo
    cfg = topo.k8s.services
    svc = cfg.find(p["service"])
    sp = next(x for x in svc.ports if x.name == p["port"])
    proto = sp.protocol
    eps = svcmod.endpoints(cfg, topo.pods, ctx.addresses_all or ctx.addresses, fam).get((svc.key, sp.name), [])
    selected = svcmod.selected_pods(svc, topo.pods)
    src = ctx.target(p["from"]).at(fam)
    if p["via"] == "clusterIP":
        vip = svc.ip_of(fam)
        host, port, how = vip, sp.port, f"ClusterIP {vip}:{sp.port}/{proto}"
    elif p["via"] == "loadBalancer":      # the ARP side is judged by netlab/checks/loadbalancer.py
        host, port = svc.lb_ip, sp.port
        how = f"LoadBalancer {svc.lb_ip}:{sp.port}/{proto} (externalTrafficPolicy {svc.external_policy})"
    else:
        host, port = ctx.target(p["via"]).address_of(fam), sp.node_port
        h = f"[{host}]" if host and ":" in host else host
        how = f"node {p['via']} {h}:{sp.node_port}/{proto} (NodePort, externalTrafficPolicy {svc.external_policy})"
    if not host or not src.address:
        why = (f"{svc.key} has no IPv{fam} ClusterIP" if not host and p["via"] == "clusterIP"
               else f"{p['via']} has no IPv{fam} address" if not host else f"{src.name} has no IPv{fam} address")
        return CheckResult(check.name, "service", False, p["expect"], why + ": nothing to connect to, no evidence")
    any_addr = "::" if fam == 6 else "0.0.0.0"
    icmp = "icmp6" if fam == 6 else "icmp"
    count = p.get("count") or max(10, 10 * len(eps))
    fallback = sp.target_port if isinstance(sp.target_port, int) else 0
    listen = {name: [x for x in _listen_ports(topo.pods[name], proto, fallback) if x] for name in selected}
    caps: dict[str, Capture] = {}
    watched: list[tuple[str, str, int]] = []     # (pod, address, port) counted at
    for name in selected:
        t = ctx.target(name).at(fam)
        if not t.address:
            continue
        watched += [(name, t.address, x) for x in sorted(set(listen[name]) | {e.port for e in eps if e.pod == name})]
        caps[name] = Capture(t.ns, t.iface, f"{proto} and dst host {t.address}", pcap=ctx.pcap(check, f"-{name}{sfx}"))
    src_pcap = ctx.pcap(check, f"-client{sfx}")
    caps[""] = Capture(src.ns, "", f"({proto} and host {host} and port {port}) or {icmp}", pcap=src_pcap)
    results: list[tuple[bool, str]] = []
    with contextlib.ExitStack() as stack:
        for name in caps:
            if name:
                for x in listen[name]:
                    stack.enter_context(Server(ctx.target(name).ns, proto, x, any_addr))
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
    ipl = _ipl(host)
    resets = [x for x in cpk if x.haslayer("TCP") and x.haslayer(ipl) and x[ipl].src == host and int(x["TCP"].flags) & 0x04]
    icmp_err = ([x for x in cpk if x.haslayer("ICMPv6DestUnreach")] if fam == 6 else
                [x for x in cpk if x.haslayer("ICMP") and x["ICMP"].type == 3])
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
