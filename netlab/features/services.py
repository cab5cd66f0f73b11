"""Kubernetes Services in a lab: kube-proxy's nftables mode, for namespaces.

The *structure* of kube-proxy's nftables proxier (kubernetes
pkg/proxy/nftables/proxier.go), written again for labs (ADR 0022). Per node
namespace and IP family, one table of ours, ``ip cnilab-services`` and (dual
stack, ADR 0034) ``ip6 cnilab-services``, as kube-proxy has ``ip kube-proxy``
and ``ip6 kube-proxy``; both have this shape:

    map service-ips       daddr . l4proto . dport -> goto service-<svc>/<port>
    map service-nodeports l4proto . dport         -> goto external-<svc>/<port>
                                                     (only for local addresses: fib daddr type local)
    chain services        the dispatch: both maps
    chain service-...     one per service port: affinity lookups, then
                          numgen random mod N vmap { i : goto endpoint-... }
    chain external-...    NodePort: marks for masquerade (policy Cluster) and
                          jumps to the service chain, or (policy Local) picks
                          only this node's endpoints, without masquerade
    chain endpoint-...    one per endpoint: hairpin (saddr = the endpoint)
                          marked for masquerade; affinity set update; DNAT
    chain masquerading    postrouting: mark 0x4000 -> masquerade
    chain endpoints-check ct state new: services without endpoints are
                          rejected (tcp reset / icmp port unreachable); a
                          NodePort with policy Local and no local endpoint
                          goes to no-local-endpoints (drop)
    chain cluster-ips-check  a VIP on a port it does not serve: reject; an
                          unallocated address in the serviceCIDR: drop

Everything here but ``parse`` (the schema) and ``sync`` (one libnftables
transaction per node) is a pure function, unit-tested without root.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

TABLE = "cnilab-services"
FAMILY = "ip"                   # the IPv4 table; the IPv6 one is FAMILY6 (nft_family)
FAMILY6 = "ip6"
MASQ_MARK = 0x4000
DEFAULT_CIDR = "10.96.0.0/16"
DEFAULT_CIDRS = {4: DEFAULT_CIDR, 6: "fd00:10:96::/112"}
IP_FAMILIES = {"IPv4": 4, "IPv6": 6}
FAMILY_POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")
AFFINITY_DEFAULT = 10800
NODEPORT_RANGE = (30000, 32767)
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")   # LoadBalancer: netlab/loadbalancer.py
WITH_NODE_PORTS = ("NodePort", "LoadBalancer")
PROTOCOLS = ("tcp", "udp")
PORT_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^([a-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
LABEL_VAL_RE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")


# --------------------------------------------------------------------------- model

@dataclass
class ContainerPort:
    name: str | None
    port: int
    protocol: str = "tcp"


@dataclass
class ServicePort:
    name: str
    port: int
    target_port: int | str          # a number, or a named container port
    protocol: str = "tcp"
    node_port: int | None = None


@dataclass
class Service:
    name: str
    namespace: str
    index: int
    type: str                       # ClusterIP | NodePort
    headless: bool
    selector: dict[str, str]
    ports: list[ServicePort]
    cluster_ip: str | None          # None for a headless Service; else clusterIPs[0]
    affinity: bool = False
    affinity_timeout: int = AFFINITY_DEFAULT
    external_policy: str = "Cluster"
    lb_request: str | None = None   # loadBalancerIP as written (netlab/loadbalancer.py checks it)
    lb_ip: str | None = None        # the LoadBalancer address (given or from a pool)
    lb_pool: str | None = None
    families: list[int] = field(default_factory=lambda: [4])   # ipFamilies, primary first
    family_policy: str = "SingleStack"                          # ipFamilyPolicy
    cluster_ips: dict[int, str] = field(default_factory=dict)   # clusterIPs by family

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def ip_of(self, family: int) -> str | None:
        """The ClusterIP of one family (None: headless, or not of that family)."""
        if family in self.cluster_ips:
            return self.cluster_ips[family]
        if self.cluster_ip and ipaddress.ip_address(self.cluster_ip).version == family:
            return self.cluster_ip
        return None


@dataclass
class Endpoint:
    pod: str
    address: str
    port: int
    node: str

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4


@dataclass
class ServiceConfig:
    """``cidrs``: the serviceCIDR of each family, primary first (kube-apiserver's
    ``--service-cluster-ip-range=v4,v6``)."""
    cidrs: list = field(default_factory=lambda: [ipaddress.IPv4Network(DEFAULT_CIDR)])
    services: list[Service] = field(default_factory=list)

    @property
    def cidr(self):
        """The primary family's serviceCIDR."""
        return self.cidrs[0]

    @cidr.setter
    def cidr(self, net) -> None:
        self.cidrs = [net]

    @property
    def families(self) -> list[int]:
        return [c.version for c in self.cidrs]

    def cidr_of(self, family: int):
        return next((c for c in self.cidrs if c.version == family), None)

    def uses(self, family: int) -> bool:
        """Does any Service have a ClusterIP (or, headless, endpoints) of this family?"""
        return any(family in s.families for s in self.services)

    def find(self, ref: str) -> Service | None:
        """``name`` (namespace default) or ``namespace/name``."""
        key = ref if "/" in ref else f"default/{ref}"
        return next((s for s in self.services if s.key == key), None)


# --------------------------------------------------------------------------- schema

def label_errors(labels: Any) -> list[tuple[tuple, str]]:
    if not isinstance(labels, dict):
        return [((), "must be a mapping of label -> value")]
    errs = []
    for k, v in labels.items():
        if not isinstance(k, str) or not LABEL_KEY_RE.match(k):
            errs.append(((k,), f"{k!r} is not a valid label key"))
        if isinstance(v, bool) or not isinstance(v, (str, int)) or not LABEL_VAL_RE.match(str(v)):
            errs.append(((k,), f"{v!r} is not a valid label value"))
    return errs


def parse_labels(o, key: str) -> dict[str, str]:
    """Read a ``labels``-like mapping from a topology ``_Obj``."""
    raw = o.get(key, dict, {})
    for sub, msg in label_errors(raw):
        o.ctx.err(o.path + (key,) + sub, msg)
    return {str(k): str(v) for k, v in raw.items()}


def parse_container_ports(o, ctx_obj) -> list[ContainerPort]:
    """A pod's ``containerPorts``: [{name, containerPort, protocol}]."""
    out: list[ContainerPort] = []
    names: set[str] = set()
    for j, cp in enumerate(o.get("containerPorts", list, [])):
        po = ctx_obj(o.ctx, cp, o.path + ("containerPorts", j), ("name", "containerPort", "protocol"))
        name = po.get("name", str, None, check=lambda v: None if PORT_NAME_RE.match(v) and re.search("[a-z]", v)
                      else f"{v!r} is not a valid port name (IANA_SVC_NAME: 1-15 lowercase letters, digits, '-')")
        port = po.int("containerPort", None, 1, 65535, required=True)
        proto = po.get("protocol", str, "tcp", check=lambda v: None if v in PROTOCOLS else f"must be tcp or udp, got {v!r}")
        if name and name in names:
            o.ctx.err(o.path + ("containerPorts", j, "name"), f"port name {name!r} is used twice")
        if name:
            names.add(name)
        if port:
            out.append(ContainerPort(name, port, proto))
    return out


def parse(ctx, data: dict, pods: dict, nets: list, underlay, Obj) -> ServiceConfig:
    """The ``serviceCIDR`` and ``services`` keys (errors go to ``ctx``)."""
    cfg = ServiceConfig()
    mode = data.get("proxyMode", "nftables")      # kube-proxy's --proxy-mode
    if mode == "ipvs":
        from plugins.net import kmod
        ctx.err(("proxyMode",), kmod.missing_message("ipvs", "proxyMode ipvs") or
                "proxyMode ipvs is not implemented: Services are programmed as kube-proxy's "
                "nftables mode (ADR 0022)")
    elif mode != "nftables":
        ctx.err(("proxyMode",), f"must be nftables (kube-proxy's nftables mode; ipvs needs the "
                f"kernel module ip_vs), got {mode!r}")
    raw_cidr = data.get("serviceCIDR")
    if raw_cidr is not None:
        cfg.cidrs = parse_cidrs(ctx, raw_cidr) or cfg.cidrs
    else:
        # no serviceCIDR: one default range per family of the pod networks (a
        # dual-stack lab is a dual-stack cluster; an IPv4 lab keeps 10.96.0.0/16)
        fams = [f for w in nets for f in (getattr(w, "families", None) or [w.subnet.version])]
        fams = list(dict.fromkeys(fams)) or [4]
        cfg.cidrs = [ipaddress.ip_network(DEFAULT_CIDRS[f]) for f in fams]
    if raw_cidr is None and not data.get("services"):
        return cfg           # no Services: the default serviceCIDR claims nothing
    for c in cfg.cidrs:
        if not c.is_private:
            ctx.err(("serviceCIDR",), f"{c} is not a private range: lab traffic must stay on this machine")
        if c.max_prefixlen - c.prefixlen < 4:
            ctx.err(("serviceCIDR",), f"{c} is too small (at most /{c.max_prefixlen - 4})")
        for w in nets:
            for sub in (getattr(w, "subnets", None) or [w.subnet]):
                if sub.version == c.version and sub.overlaps(c):
                    ctx.err(("serviceCIDR",), f"{c} overlaps network {w.name} ({sub})")
        for sub in (getattr(underlay, "subnets", None) or [underlay.subnet]):
            if sub.version == c.version and sub.overlaps(c):
                ctx.err(("serviceCIDR",), f"{c} overlaps the underlay {sub}")
    raw = data.get("services") or []
    if not isinstance(raw, list):
        ctx.err(("services",), "must be a list of services")
        return cfg
    taken_ips: dict[str, str] = {}
    taken_np: dict[tuple, str] = {}
    pending_ip: list[Service] = []
    pending_np: list[ServicePort] = []
    keys: set[str] = set()
    for i, spec in enumerate(raw):
        p = ("services", i)
        o = Obj(ctx, spec, p, ("name", "namespace", "type", "clusterIP", "clusterIPs", "ipFamilies",
                               "ipFamilyPolicy", "selector", "ports",
                               "sessionAffinity", "sessionAffinityTimeout", "externalTrafficPolicy",
                               "loadBalancerIP"))
        name = o.get("name", str, None, required=True,
                     check=lambda v: None if re.match(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", v) else f"{v!r} is not a valid Service name")
        ns = o.get("namespace", str, "default", check=lambda v: None if re.match(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", v) else f"{v!r} is not a valid namespace name")
        stype = o.get("type", str, "ClusterIP", check=lambda v: None if v in SERVICE_TYPES else f"must be ClusterIP, NodePort or LoadBalancer, got {v!r}")
        cip = o.get("clusterIP", str, None)
        cips = [str(x) for x in o.get("clusterIPs", list, [])]
        if cips and cip is not None and cips[0] != cip:
            ctx.err(p + ("clusterIPs",), f"the first clusterIPs entry must be the clusterIP ({cip})")
        cips = cips or ([cip] if cip is not None else [])
        headless = bool(cips) and cips[0] == "None"
        if headless and len(cips) > 1:
            ctx.err(p + ("clusterIPs",), "a headless Service has clusterIPs [None] only")
        given: dict[int, str] = {}
        for j, one in enumerate([] if headless else cips):
            where = p + (("clusterIPs", j) if o.has("clusterIPs") else ("clusterIP",))
            try:
                a = ipaddress.ip_address(one)
            except ValueError:
                ctx.err(where, f"{one!r} is not an IPv4 or IPv6 address (or None for a headless Service)")
                continue
            net = cfg.cidr_of(a.version)
            if a.version in given:
                ctx.err(where, f"two IPv{a.version} clusterIPs: a dual-stack Service has one per family")
            elif net is None:
                ctx.err(where, f"{one} is IPv{a.version}, and the serviceCIDR has no IPv{a.version} range")
            elif a not in net:
                ctx.err(where, f"{one} is not in the serviceCIDR {net}")
            elif a in (net.network_address, net.broadcast_address):
                ctx.err(where, f"{one} is the network or broadcast address of {net}")
            elif str(a) in taken_ips:
                ctx.err(where, f"{one} is already the clusterIP of {taken_ips[str(a)]}")
            else:
                taken_ips[str(a)] = f"{ns}/{name}"
                given[a.version] = str(a)
        fams = service_families(ctx, p, o, cfg.families, [ipaddress.ip_address(x).version for x in given.values()]
                                if given else [])
        if headless and stype != "ClusterIP":
            ctx.err(p + ("type",), "a headless Service (clusterIP: None) must be of type ClusterIP")
        selector = parse_labels(o, "selector")
        aff = o.get("sessionAffinity", str, "None", check=lambda v: None if v in ("None", "ClientIP") else f"must be None or ClientIP, got {v!r}")
        tmo = o.int("sessionAffinityTimeout", AFFINITY_DEFAULT, 1, 86400)
        if o.has("sessionAffinityTimeout") and aff != "ClientIP":
            ctx.err(p + ("sessionAffinityTimeout",), "only with sessionAffinity: ClientIP")
        etp = o.get("externalTrafficPolicy", str, "Cluster", check=lambda v: None if v in ("Cluster", "Local") else f"must be Cluster or Local, got {v!r}")
        if o.has("externalTrafficPolicy") and stype not in WITH_NODE_PORTS:
            ctx.err(p + ("externalTrafficPolicy",), "only for type NodePort or LoadBalancer")
        lb_req = o.get("loadBalancerIP", str, None)
        if lb_req is not None and stype != "LoadBalancer":
            ctx.err(p + ("loadBalancerIP",), "only for type LoadBalancer")
        ports: list[ServicePort] = []
        raw_ports = o.get("ports", list, [], required=not headless)
        if not raw_ports and not headless and name:
            ctx.err(p + ("ports",), "a Service needs at least one port")
        pnames: set[str] = set()
        for j, rp in enumerate(raw_ports):
            pp = p + ("ports", j)
            po = Obj(ctx, rp, pp, ("name", "port", "targetPort", "protocol", "nodePort"))
            pname = po.get("name", str, "", check=lambda v: None if PORT_NAME_RE.match(v) else f"{v!r} is not a valid port name")
            port = po.int("port", None, 1, 65535, required=True)
            tp = po.get("targetPort", (int, str), port)
            if isinstance(tp, int) and not 1 <= tp <= 65535:
                ctx.err(pp + ("targetPort",), f"must be between 1 and 65535, got {tp}")
            elif isinstance(tp, str) and not (PORT_NAME_RE.match(tp) and re.search("[a-z]", tp)):
                ctx.err(pp + ("targetPort",), f"{tp!r} is neither a port number nor a valid port name")
            proto = po.get("protocol", str, "tcp", check=lambda v: None if v.lower() in PROTOCOLS else f"must be TCP or UDP, got {v!r}")
            proto = proto.lower()
            np_ = po.int("nodePort", None, NODEPORT_RANGE[0], NODEPORT_RANGE[1])
            if np_ is not None and stype not in WITH_NODE_PORTS:
                ctx.err(pp + ("nodePort",), "only a Service of type NodePort or LoadBalancer has node ports")
            if len(raw_ports) > 1 and not pname:
                ctx.err(pp + ("name",), "is required when a Service has more than one port")
            if pname in pnames:
                ctx.err(pp + ("name",), f"port name {pname!r} is used twice")
            pnames.add(pname)
            if port:
                sp = ServicePort(pname, port, tp if tp is not None else port, proto, np_)
                ports.append(sp)
                if stype in WITH_NODE_PORTS:
                    if np_ is not None:
                        if (proto, np_) in taken_np:
                            ctx.err(pp + ("nodePort",), f"{proto}/{np_} is already the node port of {taken_np[(proto, np_)]}")
                        taken_np[(proto, np_)] = f"{ns}/{name}"
                    else:
                        pending_np.append(sp)
        seen_pp = set()
        for j, sp in enumerate(ports):
            if (sp.protocol, sp.port) in seen_pp:
                ctx.err(p + ("ports", j, "port"), f"{sp.protocol}/{sp.port} is given twice")
            seen_pp.add((sp.protocol, sp.port))
        if not name:
            continue
        if f"{ns}/{name}" in keys:
            ctx.err(p + ("name",), f"Service {ns}/{name} is defined twice")
        keys.add(f"{ns}/{name}")
        svc = Service(name, ns, i, stype or "ClusterIP", headless, selector, ports,
                      None, aff == "ClientIP", tmo or AFFINITY_DEFAULT, etp or "Cluster",
                      lb_req if stype == "LoadBalancer" else None)
        svc.families, svc.family_policy = fams
        svc.cluster_ips = {f: given[f] for f in svc.families if f in given} if not headless else {}
        if not headless:
            svc.cluster_ip = svc.cluster_ips.get(svc.families[0]) if svc.families else None
            if any(f not in given for f in svc.families):
                pending_ip.append(svc)
        cfg.services.append(svc)
    # allocation, in file order, of what was not given: VIPs from each family's
    # serviceCIDR (the first ten addresses are left for explicit ones, as the
    # apiserver leaves .1 for the kubernetes Service) and node ports from 30000 up
    def pool(c):
        first = int(c.network_address) + min(10, c.num_addresses // 4)
        return (str(a) for a in c.hosts() if int(a) >= first and str(a) not in taken_ips)
    free = {c.version: pool(c) for c in cfg.cidrs}
    for svc in pending_ip:
        for f in svc.families:
            if f in svc.cluster_ips or f not in free:
                continue
            ip = next(free[f], None)
            if ip is None:
                ctx.err(("services", svc.index), f"no free address left in the serviceCIDR {cfg.cidr_of(f)}")
            else:
                svc.cluster_ips[f] = ip
                taken_ips[ip] = svc.key
        svc.cluster_ip = svc.cluster_ips.get(svc.families[0]) if svc.families else None
    nxt = NODEPORT_RANGE[0]
    for sp in pending_np:
        while (sp.protocol, nxt) in taken_np:
            nxt += 1
        sp.node_port = nxt
        taken_np[(sp.protocol, nxt)] = "allocated"
    return cfg


def parse_cidrs(ctx, raw) -> list:
    """``serviceCIDR``: one network, or one per family (a list, or "v4,v6" as the
    apiserver's flag writes it), primary first."""
    items = raw if isinstance(raw, list) else [x.strip() for x in str(raw).split(",")]
    out = []
    for j, x in enumerate(items):
        try:
            out.append(ipaddress.ip_network(str(x)))
        except ValueError:
            ctx.err(("serviceCIDR",) + ((j,) if isinstance(raw, list) else ()),
                    f"{x!r} is not an IPv4 or IPv6 network (like 10.96.0.0/16 or fd00:10:96::/112)")
    if len(items) > 2 or (len(out) == 2 and out[0].version == out[1].version):
        ctx.err(("serviceCIDR",), "give one range, or two (one IPv4, one IPv6) for a dual-stack cluster")
        return out[:1]
    return out


def service_families(ctx, p: tuple, o, cluster: list[int], from_ips: list[int]) -> tuple[list[int], str]:
    """``ipFamilies`` and ``ipFamilyPolicy`` as the apiserver settles them:
    unset policy is SingleStack (RequireDualStack when two families or two
    clusterIPs are given); SingleStack takes the first family asked for, else the
    cluster's primary; PreferDualStack takes both where the cluster has both;
    RequireDualStack fails on a single-stack cluster."""
    raw = o.get("ipFamilies", list, [])
    asked: list[int] = []
    for j, x in enumerate(raw):
        if x not in IP_FAMILIES:
            ctx.err(p + ("ipFamilies", j), f"must be IPv4 or IPv6, got {x!r}")
        elif IP_FAMILIES[x] in asked:
            ctx.err(p + ("ipFamilies", j), f"{x} is listed twice")
        else:
            asked.append(IP_FAMILIES[x])
    if len(raw) > 2:
        ctx.err(p + ("ipFamilies",), "at most two families (IPv4 and IPv6)")
    for j, (a, f) in enumerate(zip(asked, from_ips)):
        if a != f:
            ctx.err(p + ("ipFamilies", j), f"is IPv{a}, but clusterIPs[{j}] is IPv{f}")
    asked = asked or from_ips
    pol = o.get("ipFamilyPolicy", str, None,
                check=lambda v: None if v in FAMILY_POLICIES else f"must be one of {', '.join(FAMILY_POLICIES)}, got {v!r}")
    if pol is None:
        pol = "RequireDualStack" if len(asked) == 2 else "SingleStack"
    for f in asked:
        if f not in cluster:
            ctx.err(p + ("ipFamilies",), f"IPv{f} is not a family of the serviceCIDR "
                    f"({', '.join(f'IPv{x}' for x in cluster)}): add an IPv{f} range to serviceCIDR")
    if pol == "SingleStack":
        if len(asked) > 1:
            ctx.err(p + ("ipFamilyPolicy",), "SingleStack takes one family: use PreferDualStack or RequireDualStack for two")
        return (asked[:1] or cluster[:1]), pol
    if pol == "RequireDualStack" and len(cluster) < 2:
        ctx.err(p + ("ipFamilyPolicy",), f"RequireDualStack needs a dual-stack serviceCIDR (one IPv4 and one IPv6 range); "
                f"this lab has IPv{cluster[0]} only")
    fams = asked + [f for f in cluster if f not in asked]
    return [f for f in fams if f in cluster] or cluster[:1], pol


def validate_targets(ctx, cfg: ServiceConfig, pods: dict) -> None:
    """A named targetPort must name a port of at least one selected pod (else say so)."""
    for svc in cfg.services:
        sel = selected_pods(svc, pods)
        for j, sp in enumerate(svc.ports):
            if isinstance(sp.target_port, str) and sel and not any(
                    _named(pods[x], sp.target_port, sp.protocol) for x in sel):
                ctx.err(("services", svc.index, "ports", j, "targetPort"),
                        f"no pod selected by {svc.key} has a {sp.protocol} containerPort named {sp.target_port!r}")


# --------------------------------------------------------------------------- endpoints (pure)

def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def selected_pods(svc: Service, pods: dict) -> list[str]:
    """Pods of the Service's namespace its selector picks (none for an empty selector:
    such a Service has manually managed endpoints in Kubernetes, none here)."""
    if not svc.selector:
        return []
    return [p.name for p in pods.values() if p.namespace == svc.namespace and p.mode in ("bridge", "overlay")
            and matches(svc.selector, getattr(p, "labels", {}))]


def _named(pod, name: str, proto: str) -> int | None:
    for cp in getattr(pod, "container_ports", []):
        if cp.name == name and cp.protocol == proto:
            return cp.port
    return None


def address_of(addresses: dict, pod: str, family: int | None) -> str | None:
    """A pod's address of one family from either shape of address map: pod ->
    primary address (netlab.base.state.attach_addresses), or pod -> every family's
    (attach_addresses_all). ``family`` None: the primary."""
    v = addresses.get(pod)
    if not v:
        return None
    vals = [v] if isinstance(v, str) else list(v)
    if family is None:
        return vals[0]
    return next((a for a in vals if (6 if ":" in a else 4) == family), None)


def endpoints(cfg: ServiceConfig, pods: dict, addresses: dict,
              family: int | None = None) -> dict[tuple[str, str], list[Endpoint]]:
    """(service key, port name) -> its ready endpoints: selected pods that have an
    address, with the target port resolved per pod (a pod without the named port
    is not an endpoint of that port, as in an EndpointSlice).

    ``family`` 4 or 6: the EndpointSlice of that family, for the Services that
    have it in their ipFamilies (pod addresses of that family); None: each pod's
    primary address, for every Service (the IPv4-only view of ADR 0022)."""
    out: dict[tuple[str, str], list[Endpoint]] = {}
    for svc in cfg.services:
        if family is not None and family not in svc.families:
            continue
        sel = selected_pods(svc, pods)
        for sp in svc.ports:
            eps = []
            for name in sel:
                addr = address_of(addresses, name, family)
                if not addr:
                    continue
                port = sp.target_port if isinstance(sp.target_port, int) else _named(pods[name], sp.target_port, sp.protocol)
                if port:
                    eps.append(Endpoint(name, addr, port, pods[name].node))
            out[(svc.key, sp.name)] = sorted(eps, key=lambda e: ipaddress.ip_address(e.address))
        if svc.headless and not svc.ports:
            out[(svc.key, "")] = sorted((Endpoint(n, a, 0, pods[n].node) for n in sel
                                         if (a := address_of(addresses, n, family))),
                                        key=lambda e: ipaddress.ip_address(e.address))
    return out


def endpoints_by_family(cfg: ServiceConfig, pods: dict, addresses: dict) -> dict[int, dict[tuple[str, str], list[Endpoint]]]:
    """family -> endpoints of that family, for each family of the serviceCIDR."""
    return {f: endpoints(cfg, pods, addresses, f) for f in cfg.families}


def dns_records(cfg: ServiceConfig, domain: str, eps: dict) -> list[tuple[str, str]]:
    """``<svc>.<ns>.svc.<domain>``: every ClusterIP (A for IPv4, AAAA for IPv6), or,
    for a headless Service, its endpoints of each of its families. ``eps`` is one
    family's endpoints (``endpoints``), or family -> endpoints (``endpoints_by_family``)."""
    by_fam = eps if eps and all(isinstance(k, int) for k in eps) else {None: eps}
    recs = []
    for svc in cfg.services:
        fq = f"{svc.name}.{svc.namespace}.svc.{domain}"
        if svc.headless:
            addrs = {e.address for fam, m in by_fam.items() if fam is None or fam in svc.families
                     for (k, _), lst in m.items() if k == svc.key for e in lst}
            recs += [(fq, a) for a in sorted(addrs, key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))]
        else:
            recs += [(fq, ip) for f in svc.families if (ip := svc.ip_of(f))]
    return recs


# --------------------------------------------------------------------------- nft JSON (pure)

def nft_family(family: int) -> str:
    """The nft family of one IP family's Services table (kube-proxy: ip / ip6 kube-proxy)."""
    return FAMILY6 if family == 6 else FAMILY


def nft_payload(proto: str, fld: str) -> dict:
    return {"payload": {"protocol": proto, "field": fld}}


def nft_match(left, right, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


def _goto(target: str) -> dict:
    return {"goto": {"target": target}}


PROTO_PORT = {"concat": [{"meta": {"key": "l4proto"}}, nft_payload("th", "dport")]}
MARK = {"meta": {"key": "mark"}}
CT_NEW = nft_match({"ct": {"key": "state"}}, "new", "in")
FIB_LOCAL = nft_match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")


def svc_chain(svc: Service, sp: ServicePort) -> str:
    return f"service-{svc.key}/{sp.protocol}/{sp.name or sp.port}"


def ext_chain(svc: Service, sp: ServicePort) -> str:
    return f"external-{svc.key}/{sp.protocol}/{sp.name or sp.port}"


def ep_chain(svc: Service, sp: ServicePort, ep: Endpoint) -> str:
    return f"endpoint-{svc.key}/{sp.protocol}/{sp.name or sp.port}__{ep.address}/{ep.port}"


def aff_set(svc: Service, sp: ServicePort, ep: Endpoint) -> str:
    return f"affinity-{svc.key}/{sp.protocol}/{sp.name or sp.port}__{ep.address}/{ep.port}"


def _pick(chains: list[str]) -> dict:
    """numgen random mod N over endpoint chains (one endpoint: a plain goto)."""
    if len(chains) == 1:
        return _goto(chains[0])
    return {"vmap": {"key": {"numgen": {"mode": "random", "mod": len(chains), "offset": 0}},
                     "data": {"set": [[i, _goto(c)] for i, c in enumerate(chains)]}}}


def plan_table(cfg: ServiceConfig, node: str, eps: dict[tuple[str, str], list[Endpoint]],
               family: int = 4) -> list[dict]:
    """The whole table of one family for one node, as one transaction: create-if-absent,
    delete (contents and all), create again. Conntrack is not touched. ``eps`` are
    that family's endpoints (``endpoints(..., family)``); family 6 is the ``ip6``
    table, holding the IPv6 ClusterIPs of the Services that have IPv6 in their
    ipFamilies (LoadBalancer addresses are IPv4 only)."""
    fam = nft_family(family)
    ip = "ip6" if family == 6 else "ip"
    atype = "ipv6_addr" if family == 6 else "ipv4_addr"
    icmp = "icmpv6" if family == 6 else "icmp"
    cidr = cfg.cidr_of(family)
    cmds: list[dict] = [{"add": {"table": {"family": fam, "name": TABLE}}},
                        {"delete": {"table": {"family": fam, "name": TABLE}}},
                        {"add": {"table": {"family": fam, "name": TABLE}}}]

    def _t(**kw) -> dict:
        return {"family": fam, "table": TABLE, **kw}

    def _rule(chain: str, expr: list, comment: str | None = None) -> dict:
        r = _t(chain=chain, expr=expr)
        if comment:
            r["comment"] = comment[:128]
        return {"add": {"rule": r}}

    daddr_proto_port = {"concat": [nft_payload(ip, "daddr"), {"meta": {"key": "l4proto"}}, nft_payload("th", "dport")]}

    def chain(name: str, **hook) -> None:
        cmds.append({"add": {"chain": _t(name=name, **hook)}})
    # maps and sets
    cmds.append({"add": {"map": _t(name="service-ips", type=[atype, "inet_proto", "inet_service"], map="verdict")}})
    cmds.append({"add": {"map": _t(name="service-nodeports", type=["inet_proto", "inet_service"], map="verdict")}})
    cmds.append({"add": {"map": _t(name="no-endpoint-services", type=[atype, "inet_proto", "inet_service"], map="verdict")}})
    cmds.append({"add": {"map": _t(name="no-endpoint-nodeports", type=["inet_proto", "inet_service"], map="verdict")}})
    cmds.append({"add": {"set": _t(name="service-ports", type=[atype, "inet_proto", "inet_service"])}})
    cmds.append({"add": {"set": _t(name="cluster-ips", type=atype)}})
    cmds.append({"add": {"set": _t(name="load-balancer-ips", type=atype)}})
    # base chains
    chain("nat-prerouting", type="nat", hook="prerouting", prio=-100, policy="accept")
    chain("nat-output", type="nat", hook="output", prio=-100, policy="accept")
    chain("nat-postrouting", type="nat", hook="postrouting", prio=100, policy="accept")
    chain("filter-prerouting", type="filter", hook="prerouting", prio=-110, policy="accept")
    chain("filter-output", type="filter", hook="output", prio=-110, policy="accept")
    for c in ("services", "masquerading", "mark-for-masquerade", "endpoints-check", "cluster-ips-check", "reject-chain",
              "no-local-endpoints"):
        chain(c)
    cmds.append(_rule("nat-prerouting", [{"jump": {"target": "services"}}]))
    cmds.append(_rule("nat-output", [{"jump": {"target": "services"}}]))
    cmds.append(_rule("nat-postrouting", [{"jump": {"target": "masquerading"}}]))
    for base in ("filter-prerouting", "filter-output"):
        cmds.append(_rule(base, [CT_NEW, {"jump": {"target": "endpoints-check"}}]))
        cmds.append(_rule(base, [CT_NEW, {"jump": {"target": "cluster-ips-check"}}]))
    cmds.append(_rule("services", [{"vmap": {"key": daddr_proto_port, "data": "@service-ips"}}]))
    cmds.append(_rule("services", [FIB_LOCAL, nft_match(nft_payload(ip, "daddr"), {"prefix": {"addr": "::1", "len": 128}} if family == 6
                                             else {"prefix": {"addr": "127.0.0.0", "len": 8}}, "!="),
                                   {"vmap": {"key": PROTO_PORT, "data": "@service-nodeports"}}]))
    cmds.append(_rule("mark-for-masquerade", [{"mangle": {"key": MARK, "value": {"|": [MARK, MASQ_MARK]}}}]))
    cmds.append(_rule("masquerading", [nft_match({"&": [MARK, MASQ_MARK]}, 0), {"return": None}]))
    cmds.append(_rule("masquerading", [{"mangle": {"key": MARK, "value": {"^": [MARK, MASQ_MARK]}}},
                                       {"counter": None}, {"masquerade": {"flags": ["fully-random"]}}],
                      "masquerade (hairpin, NodePort, LoadBalancer)"))
    cmds.append(_rule("endpoints-check", [{"vmap": {"key": daddr_proto_port, "data": "@no-endpoint-services"}}]))
    cmds.append(_rule("endpoints-check", [FIB_LOCAL, {"vmap": {"key": PROTO_PORT, "data": "@no-endpoint-nodeports"}}]))
    cmds.append(_rule("cluster-ips-check", [nft_match(daddr_proto_port, "@service-ports"), {"return": None}]))
    cmds.append(_rule("cluster-ips-check", [nft_match(nft_payload(ip, "daddr"), "@cluster-ips"), {"counter": None},
                                            {"reject": {"type": icmp, "expr": "port-unreachable"}}],
                      "a cluster IP on a port it does not serve"))
    cmds.append(_rule("cluster-ips-check", [nft_match(nft_payload(ip, "daddr"), "@load-balancer-ips"), {"counter": None},
                                            {"reject": {"type": icmp, "expr": "port-unreachable"}}],
                      "a LoadBalancer IP on a port it does not serve"))
    cmds.append(_rule("cluster-ips-check", [nft_match(nft_payload(ip, "daddr"), {"prefix": {"addr": str(cidr.network_address),
                                                                                  "len": cidr.prefixlen}}),
                                            {"counter": None}, {"drop": None}],
                      f"an unallocated address in the serviceCIDR {cidr}"))
    cmds.append(_rule("reject-chain", [nft_match({"meta": {"key": "l4proto"}}, "tcp"), {"counter": None},
                                       {"reject": {"type": "tcp reset"}}], "no endpoints: tcp reset"))
    cmds.append(_rule("reject-chain", [{"counter": None}, {"reject": {"type": icmp, "expr": "port-unreachable"}}],
                      f"no endpoints: {icmp} port unreachable"))
    cmds.append(_rule("no-local-endpoints", [{"counter": None}, {"drop": None}],
                      "NodePort with externalTrafficPolicy Local: no endpoint on this node"))

    def element(name: str, key, verdict: dict) -> None:
        cmds.append({"add": {"element": _t(name=name, elem=[[key, verdict]])}})

    for svc in cfg.services:
        vip = svc.ip_of(family)
        if svc.headless or not vip:
            continue
        lb_ip = svc.lb_ip if svc.lb_ip and (6 if ":" in svc.lb_ip else 4) == family else None
        cmds.append({"add": {"element": _t(name="cluster-ips", elem=[vip])}})
        if svc.type == "LoadBalancer" and lb_ip:
            cmds.append({"add": {"element": _t(name="load-balancer-ips", elem=[lb_ip])}})
        for sp in svc.ports:
            vip_key = {"concat": [vip, sp.protocol, sp.port]}
            cmds.append({"add": {"element": _t(name="service-ports", elem=[vip_key])}})
            all_eps = eps.get((svc.key, sp.name), [])
            np_key = {"concat": [sp.protocol, sp.node_port]} if svc.type in WITH_NODE_PORTS and sp.node_port else None
            # a LoadBalancer address: in every node, like kube-proxy (only the node whose
            # speaker answers ARP for it gets its traffic: netlab/loadbalancer.py)
            lb_key = {"concat": [lb_ip, sp.protocol, sp.port]} if svc.type == "LoadBalancer" and lb_ip else None
            if lb_key:
                cmds.append({"add": {"element": _t(name="service-ports", elem=[lb_key])}})
            if not all_eps:
                element("no-endpoint-services", vip_key, _goto("reject-chain"))
                if np_key:
                    element("no-endpoint-nodeports", np_key, _goto("reject-chain"))
                if lb_key:
                    element("no-endpoint-services", lb_key, _goto("reject-chain"))
                continue
            sc = svc_chain(svc, sp)
            chain(sc)
            epcs = []
            for ep in all_eps:
                ec = ep_chain(svc, sp, ep)
                epcs.append(ec)
                chain(ec)
                cmds.append(_rule(ec, [nft_match(nft_payload(ip, "saddr"), ep.address), {"jump": {"target": "mark-for-masquerade"}}],
                                  f"hairpin: {ep.pod} reaching itself through {svc.key}"))
                if svc.affinity:
                    cmds.append({"add": {"set": _t(name=aff_set(svc, sp, ep), type=atype, flags=["timeout"],
                                                   timeout=svc.affinity_timeout)}})
                    cmds.append(_rule(ec, [{"set": {"op": "update", "elem": nft_payload(ip, "saddr"),
                                                    "set": "@" + aff_set(svc, sp, ep)}}]))
                cmds.append(_rule(ec, [nft_match({"meta": {"key": "l4proto"}}, sp.protocol), {"counter": None},
                                       {"dnat": {"addr": ep.address, "port": ep.port}}],
                                  f"{svc.key}:{sp.name or sp.port} -> {ep.pod} {ep.address}:{ep.port}"))
            if svc.affinity:
                for ep, ec in zip(all_eps, epcs):
                    cmds.append(_rule(sc, [nft_match(nft_payload(ip, "saddr"), "@" + aff_set(svc, sp, ep)), _goto(ec)],
                                      f"ClientIP affinity -> {ep.pod}"))
            cmds.append(_rule(sc, [_pick(epcs)], f"{svc.key}:{sp.name or sp.port}: {len(epcs)} endpoint(s)"))
            element("service-ips", vip_key, _goto(sc))
            if np_key or lb_key:
                xc = ext_chain(svc, sp)
                entry = f"{svc.key} " + " / ".join(x for x in (f"NodePort {sp.node_port}" if np_key else "",
                                                              f"LoadBalancer {lb_ip}:{sp.port}" if lb_key else "") if x)
                if svc.external_policy == "Local":
                    local = [ec for ep, ec in zip(all_eps, epcs) if ep.node == node]
                    if not local:
                        if np_key:
                            element("no-endpoint-nodeports", np_key, _goto("no-local-endpoints"))
                        if lb_key:
                            element("no-endpoint-services", lb_key, _goto("no-local-endpoints"))
                        continue
                    chain(xc)
                    cmds.append(_rule(xc, [_pick(local)], f"{entry} (Local): {len(local)} local endpoint(s)"))
                else:
                    chain(xc)
                    cmds.append(_rule(xc, [{"jump": {"target": "mark-for-masquerade"}}]))
                    cmds.append(_rule(xc, [_goto(sc)], f"{entry} (Cluster)"))
                if np_key:
                    element("service-nodeports", np_key, _goto(xc))
                if lb_key:
                    element("service-ips", lb_key, _goto(xc))
    return cmds


# --------------------------------------------------------------------------- applying

def apply_in(ns: str, cmds: list[dict], what: str) -> None:
    """One libnftables transaction inside the named namespace (a thread of its own enters it)."""
    from plugins.net.nft import Nft
    from ..base.namespaces import in_thread
    in_thread(ns, lambda: Nft().apply(cmds, what=what), timeout=60)
