"""The Kubernetes objects of a lab beyond pods: Services (netlab/features/services.py),
namespaces with labels and NetworkPolicies (netlab/features/policy.py).

``parse`` is called by ``netlab.lab.topology`` (errors go to its context, with
file:line:path); ``sync`` writes both nftables tables of every node, one
libnftables transaction per node, after the pods are attached and again
whenever a pod is replaced; ``dns_records`` are the Service names for the
lab DNS. Each table is recorded in the lab state before it is first made,
so ``netlab down`` removes exactly them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import policy as polmod
from . import services as svcmod

CHECK_KEYS = {
    "service": ("from", "service", "port", "via", "count", "timeout", "speaker", "takeover", "family"),
    "policy": ("from", "to", "proto", "port", "timeout", "family"),
}
SERVICE_EXPECT = ("spread", "affinity", "reject", "fail")
BRIDGE_NF = "net/bridge/bridge-nf-call-iptables"
BRIDGE_NF6 = "net/bridge/bridge-nf-call-ip6tables"


@dataclass
class K8s:
    services: svcmod.ServiceConfig = field(default_factory=svcmod.ServiceConfig)
    policy: polmod.PolicyConfig = field(default_factory=polmod.PolicyConfig)
    lb: Any = None          # loadbalancer.LBConfig: the loadBalancer pools (netlab/loadbalancer.py)

    @property
    def active(self) -> bool:
        return bool(self.services.services or self.policy.policies)


def parse(ctx, data: dict, pods: dict, networks: list, underlay, Obj) -> K8s:
    k = K8s(svcmod.parse(ctx, data, pods, networks, underlay, Obj), polmod.parse(ctx, data, pods, Obj))
    svcmod.validate_targets(ctx, k.services, pods)
    return k


def check_params(ctx, c: dict, p: tuple, ctype: str, o, pods: dict, nodes: dict, targets: set,
                 k8s: K8s | None) -> tuple[dict | None, str]:
    """Parameters of a ``service`` or ``policy`` check."""
    params: dict[str, Any] = {}
    name = o.get("name", str, None)
    exp = c.get("expect")
    src = o.get("from", str, None, required=True)
    if src is not None and src not in targets:
        ctx.err(p + ("from",), f"unknown target {src!r}: a pod name, node name, 'ext' or 'dns'")
    params["from"] = src
    params["timeout"] = o.int("timeout", 2, 1, 30)
    # IPv4 or IPv6 (ADR 0034): by default every family both ends (and the Service) have
    params["family"] = o.get("family", int, None, check=lambda v: None if v in (4, 6) else f"must be 4 or 6, got {v!r}")
    if ctype == "service":
        ref = o.get("service", str, None, required=True)
        svc = k8s.services.find(ref) if (k8s and ref) else None
        if ref and svc is None:
            ctx.err(p + ("service",), f"unknown Service {ref!r} (give name or namespace/name)")
        if svc is not None and svc.headless:
            ctx.err(p + ("service",), f"{svc.key} is headless: it has no virtual IP to connect to")
        port = o.get("port", (int, str), None)
        sp = None
        if svc is not None and svc.ports:
            sp = svc.ports[0] if port is None else next((x for x in svc.ports if port in (x.name, x.port)), None)
            if sp is None:
                ctx.err(p + ("port",), f"{svc.key} has no port {port!r}")
        via = o.get("via", str, "clusterIP")
        if via not in ("clusterIP", "loadBalancer") and via not in nodes:
            ctx.err(p + ("via",), f"must be clusterIP, loadBalancer or a node name (NodePort), got {via!r}")
        elif via == "loadBalancer" and svc is not None and svc.type != "LoadBalancer":
            ctx.err(p + ("via",), f"{svc.key} is of type {svc.type}: it has no LoadBalancer address")
        elif via not in ("clusterIP", "loadBalancer") and svc is not None and svc.type not in svcmod.WITH_NODE_PORTS:
            ctx.err(p + ("via",), f"{svc.key} is of type {svc.type}: it has no node port")
        params.update(service=svc.key if svc else ref, port=sp.name if sp else None, via=via,
                      count=o.int("count", None, 1, 200))
        fam = params["family"]
        if fam and svc is not None and fam not in svc.families:
            ctx.err(p + ("family",), f"{svc.key} is IPv{'/IPv'.join(map(str, svc.families))} only "
                    f"(ipFamilies): it has no IPv{fam} address")
        elif fam == 6 and via == "loadBalancer":
            ctx.err(p + ("family",), "LoadBalancer addresses are IPv4 only")
        # via loadBalancer (netlab/checks/loadbalancer.py): which node answers ARP
        speaker = o.get("speaker", str, None)
        if speaker is not None and speaker not in nodes:
            ctx.err(p + ("speaker",), f"unknown node {speaker!r}")
        takeover = o.get("takeover", bool, False)
        for k in ("speaker", "takeover"):
            if o.has(k) and via != "loadBalancer":
                ctx.err(p + (k,), "only with via: loadBalancer")
        if via == "loadBalancer" and src is not None and src not in ("ext", "dns") and src in targets:
            ctx.err(p + ("from",), "a LoadBalancer address is reached over the underlay: from must be ext or dns "
                    "(a pod or node reaches it through its own node's Services table, without ARP)")
        params.update(speaker=speaker, takeover=takeover)
        exp = exp if exp is not None else "spread"
        if exp not in SERVICE_EXPECT:
            ctx.err(p + ("expect",), f"must be one of {', '.join(SERVICE_EXPECT)}, got {exp!r}")
        params["expect"] = exp
        name = name or (f"service {params['from']} -> {params['service']} via {via}"
                        + (f" IPv{params['family']}" if params.get("family") else ""))
        if exp not in ("spread", "affinity") and via == "loadBalancer" and (speaker or takeover):
            ctx.err(p + ("expect",), "speaker and takeover are judged on answered connections: expect spread or affinity")
    else:
        dst = o.get("to", str, None, required=True)
        if dst is not None and dst not in pods:
            ctx.err(p + ("to",), f"unknown pod {dst!r}")
        elif dst is not None and pods[dst].mode not in ("bridge", "overlay"):
            ctx.err(p + ("to",), f"pod {dst} has no address of its own (mode {pods[dst].mode})")
        params["to"] = dst
        params["proto"] = o.get("proto", str, "tcp", check=lambda v: None if v in ("tcp", "udp") else f"must be tcp or udp, got {v!r}")
        params["port"] = o.int("port", 8080, 1, 65535)
        exp = exp if exp is not None else "allow"
        if exp not in ("allow", "deny"):
            ctx.err(p + ("expect",), f"must be allow or deny, got {exp!r}")
        params["expect"] = exp
        name = name or (f"policy {src} -> {dst} {params['proto']}/{params['port']}"
                        + (f" IPv{params['family']}" if params.get("family") else ""))
    return params, name


# --------------------------------------------------------------------------- applying

def service_families(topo) -> list[int]:
    """The IP families that get a Services table: IPv4 whenever the serviceCIDR has
    it (the ADR 0022 table, LoadBalancer addresses), IPv6 when a Service has it in
    its ipFamilies (ADR 0034)."""
    k = topo.k8s
    if not (k and k.services.services):
        return []
    return [f for f in (4, 6) if f in k.services.families and (f == 4 or k.services.uses(6))]


def plan_node(topo, node: str, addresses: dict) -> list[dict]:
    """Our tables of one node as one transaction (only the ones the lab uses):
    ``ip cnilab-services``, ``ip6 cnilab-services`` (dual stack) and
    ``inet cnilab-policy``. ``addresses``: pod -> address, or pod -> every
    family's addresses (attach_addresses_all)."""
    k = topo.k8s
    cmds: list[dict] = []
    for fam in service_families(topo):
        eps = svcmod.endpoints(k.services, topo.pods, addresses, fam)
        cmds += svcmod.plan_table(k.services, node, eps, fam)
    if k.policy.policies:
        cmds += polmod.plan_table(k.policy, topo.pods, addresses, node)
    return cmds


def tables(topo) -> list[tuple[str, str]]:
    k = topo.k8s
    out = [(svcmod.nft_family(f), svcmod.TABLE) for f in service_families(topo)]
    if k and k.policy.policies:
        out.append((polmod.FAMILY, polmod.TABLE))
    return out


def sync(topo, lab: str, addresses: dict, st=None, record=None, progress=lambda s: None) -> None:
    """Write (or rewrite) our tables in every node: one transaction per node.
    Tables not yet in the lab state are recorded (``record``) before they are made.
    With ``st``, every family's pod addresses come from it (dual stack: the IPv6
    endpoints and policy peers); ``addresses`` is the primary-only map."""
    if not (topo.k8s and topo.k8s.active):
        return
    from plugins.net import sysctl
    from ..base.names import node_ns
    from ..base.namespaces import in_thread
    primary = addresses
    if st is not None:
        from ..base.state import attach_addresses_all
        full = attach_addresses_all(st)
        # primary first (the map of primaries is what ADR 0022's tables were planned from)
        addresses = {n: ([addresses[n]] if addresses.get(n) else []) + [a for a in full.get(n, []) if a != addresses.get(n)]
                     for n in dict.fromkeys([*addresses, *full])}
    v6 = polmod.uses_ipv6(addresses)
    for n in topo.nodes:
        ns = node_ns(lab, n)
        for fam, tab in tables(topo):
            if record is not None and not (st and st.find("nft_table", ns=ns, family=fam, table=tab)):
                record("nft_table", ns=ns, family=fam, table=tab)

        # bridged IPv4 through the IP hooks: Service replies between pods of one
        # bridge are un-NATed and policies see pod-to-pod traffic (ADR 0022)
        in_thread(ns, lambda: sysctl.write(BRIDGE_NF, "1"))
        if v6:      # the same for bridged IPv6 (ADR 0034)
            in_thread(ns, lambda: sysctl.write(BRIDGE_NF6, "1"))
        svcmod.apply_in(ns, plan_node(topo, n, addresses), f"services/policy tables in {ns}")
    k = topo.k8s
    if st is not None:          # type LoadBalancer: the speakers (netlab/loadbalancer.py)
        from . import loadbalancer
        loadbalancer.sync(topo, lab, st.lab_dir, primary, st=st, record=record, progress=progress)
    if k.services.services:
        for fam in service_families(topo):
            eps = svcmod.endpoints(k.services, topo.pods, addresses, fam)
            progress(f"      services{' IPv6' if fam == 6 else ''}: "
                     f"{sum(1 for s in k.services.services if fam in s.families)} Service(s), "
                     f"{sum(len(v) for v in eps.values())} endpoint(s) (table {svcmod.nft_family(fam)} {svcmod.TABLE})")
    if k.policy.policies:
        progress(f"      network policies: {len(k.policy.policies)} (table {polmod.FAMILY} {polmod.TABLE})")


def dns_records(topo, addresses: dict) -> list[tuple[str, str]]:
    """A / AAAA records of the Services (``addresses``: pod -> address, or pod ->
    every family's: with the latter, headless Services get their pods' IPv6 too)."""
    if not (topo.k8s and topo.k8s.services.services and topo.dns.enabled):
        return []
    k = topo.k8s.services
    return svcmod.dns_records(k, topo.dns.domain, svcmod.endpoints_by_family(k, topo.pods, addresses))


def drop_table(res: dict) -> None:
    """``down``: delete one recorded table (gone with its namespace is fine)."""
    from ..base import namespaces as nsutil
    if not nsutil.exists(res["ns"]):
        return
    svcmod.apply_in(res["ns"], [{"add": {"table": {"family": res["family"], "name": res["table"]}}},
                                              {"delete": {"table": {"family": res["family"], "name": res["table"]}}}],
                    f"removing table {res['family']} {res['table']}")
