"""Kubernetes NetworkPolicy in a lab, compiled to nftables (ADR 0022).

Per node namespace, one table of ours, ``inet cnilab-policy``:

    chain forward   hook forward:  ct state established,related accept; jump policy
    chain input     hook input:    ct state established,related accept; pods' egress
                                   (a pod reaching its own node is egress too)
    chain policy    ip saddr vmap @egress-pods  (-> jump egress-<ns>/<pod>)
                    ip daddr vmap @ingress-pods (-> jump ingress-<ns>/<pod>)
                    and, when pods have IPv6 addresses (ADR 0034), the same
                    with ip6 and @egress-pods6 / @ingress-pods6, after an
                    accept of ICMPv6 neighbour discovery (untracked, so not
                    "established", and a default deny must not cut a pod off
                    its neighbours: RFC 4890 says firewalls must not drop it)
    chain ingress-<ns>/<pod>, egress-<ns>/<pod>
                    one rule per (policy rule, peer kind, protocol): peers and
                    ports that are allowed ``return``; the last rule counts and
                    drops (the default deny of every direction a policy selects)

Only pods of this node get chains here: ingress is enforced on the
destination's node, egress on the source's. Pod-to-pod traffic on one bridge
is seen by the forward hook because bridged IPv4 and IPv6 go through the IP
hooks (br_netfilter: built into this kernel, ``bridge-nf-call-iptables`` and
``bridge-nf-call-ip6tables`` are on in each node namespace; the same setting makes Service replies between pods of
one bridge un-NAT correctly, which is why kube-proxy needs it too). Traffic
the node itself sends (kubelet probes) takes the output hook: never filtered.
Services are DNATed in prerouting, before the forward hook: policies see the
endpoint, as in Kubernetes.

``parse`` reads the schema; everything else but ``counters`` is pure.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from .services import label_errors, nft_match, nft_payload

TABLE = "cnilab-policy"
FAMILY = "inet"
ND_TYPES = ["nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert"]
ND_COMMENT = "ICMPv6 neighbour discovery (never filtered by a policy)"
NAME_LABEL = "kubernetes.io/metadata.name"
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass
class Selector:
    """A LabelSelector: matchLabels AND every matchExpression; empty = everything."""
    match_labels: dict[str, str] = field(default_factory=dict)
    expressions: list[tuple[str, str, list[str]]] = field(default_factory=list)

    def matches(self, labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for key, op, values in self.expressions:
            has = key in labels
            if op == "In" and not (has and labels[key] in values):
                return False
            if op == "NotIn" and has and labels[key] in values:
                return False
            if op == "Exists" and not has:
                return False
            if op == "DoesNotExist" and has:
                return False
        return True


@dataclass
class Peer:
    pod_selector: Selector | None = None
    namespace_selector: Selector | None = None
    cidr: str | None = None
    excepts: list[str] = field(default_factory=list)


@dataclass
class PortSpec:
    protocol: str = "tcp"
    port: int | str | None = None        # None: every port of the protocol
    end_port: int | None = None


@dataclass
class Rule:
    peers: list[Peer] | None             # None: every peer (no from/to)
    ports: list[PortSpec] | None         # None: every port and protocol


@dataclass
class Policy:
    name: str
    namespace: str
    index: int
    selector: Selector
    types: list[str]
    ingress: list[Rule]
    egress: list[Rule]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class PolicyConfig:
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)    # name -> labels
    policies: list[Policy] = field(default_factory=list)

    def ns_labels(self, ns: str) -> dict[str, str]:
        return {**self.namespaces.get(ns, {}), NAME_LABEL: ns}


# --------------------------------------------------------------------------- schema

def _selector(ctx, raw: Any, path: tuple, Obj) -> Selector:
    o = Obj(ctx, raw if raw is not None else {}, path, ("matchLabels", "matchExpressions"))
    sel = Selector()
    ml = o.get("matchLabels", dict, {})
    for sub, msg in label_errors(ml):
        ctx.err(path + ("matchLabels",) + sub, msg)
    sel.match_labels = {str(k): str(v) for k, v in ml.items()}
    for j, e in enumerate(o.get("matchExpressions", list, [])):
        eo = Obj(ctx, e, path + ("matchExpressions", j), ("key", "operator", "values"))
        key = eo.get("key", str, None, required=True)
        op = eo.get("operator", str, None, required=True,
                    check=lambda v: None if v in OPERATORS else f"must be one of {', '.join(OPERATORS)}, got {v!r}")
        vals = eo.get("values", list, [])
        if op in ("In", "NotIn") and not vals:
            ctx.err(path + ("matchExpressions", j, "values"), f"{op} needs at least one value")
        if op in ("Exists", "DoesNotExist") and vals:
            ctx.err(path + ("matchExpressions", j, "values"), f"{op} takes no values")
        if key and op:
            sel.expressions.append((key, op, [str(v) for v in vals]))
    return sel


def _peer(ctx, raw: Any, path: tuple, Obj) -> Peer | None:
    o = Obj(ctx, raw, path, ("podSelector", "namespaceSelector", "ipBlock"))
    if not isinstance(raw, dict):
        return None
    peer = Peer()
    if "podSelector" in raw:
        peer.pod_selector = _selector(ctx, raw["podSelector"], path + ("podSelector",), Obj)
    if "namespaceSelector" in raw:
        peer.namespace_selector = _selector(ctx, raw["namespaceSelector"], path + ("namespaceSelector",), Obj)
    if o.has("ipBlock"):
        if peer.pod_selector or peer.namespace_selector:
            ctx.err(path + ("ipBlock",), "ipBlock cannot be combined with podSelector or namespaceSelector")
        bo = Obj(ctx, raw["ipBlock"], path + ("ipBlock",), ("cidr", "except"))
        cidr = bo.get("cidr", str, None, required=True)
        try:
            net = ipaddress.ip_network(cidr) if cidr else None
        except ValueError:
            ctx.err(path + ("ipBlock", "cidr"), f"{cidr!r} is not an IPv4 or IPv6 network")
            net = None
        peer.cidr = str(net) if net else None
        for j, ex in enumerate(bo.get("except", list, [])):
            try:
                en = ipaddress.ip_network(str(ex))
                if net and (en.version != net.version or not en.subnet_of(net)):
                    ctx.err(path + ("ipBlock", "except", j), f"{en} is not inside {net}")
                else:
                    peer.excepts.append(str(en))
            except ValueError:
                ctx.err(path + ("ipBlock", "except", j), f"{ex!r} is not an IPv4 or IPv6 network")
    elif peer.pod_selector is None and peer.namespace_selector is None:
        ctx.err(path, "a peer needs podSelector, namespaceSelector or ipBlock")
        return None
    return peer


def _rules(ctx, raw: Any, path: tuple, peer_key: str, Obj) -> list[Rule]:
    out = []
    if not isinstance(raw, list):
        ctx.err(path, "must be a list of rules")
        return out
    for j, r in enumerate(raw):
        rp = path + (j,)
        o = Obj(ctx, r if r is not None else {}, rp, (peer_key, "ports"))
        peers = None
        if o.has(peer_key):
            peers = [x for k, pr in enumerate(o.get(peer_key, list, [])) if (x := _peer(ctx, pr, rp + (peer_key, k), Obj))]
        ports = None
        if o.has("ports"):
            ports = []
            for k, pr in enumerate(o.get("ports", list, [])):
                po = Obj(ctx, pr, rp + ("ports", k), ("protocol", "port", "endPort"))
                proto = po.get("protocol", str, "TCP", check=lambda v: None if v.lower() in ("tcp", "udp") else f"must be TCP or UDP, got {v!r}")
                port = po.get("port", (int, str), None)
                if isinstance(port, int) and not 1 <= port <= 65535:
                    ctx.err(rp + ("ports", k, "port"), f"must be between 1 and 65535, got {port}")
                end = po.int("endPort", None, 1, 65535)
                if end is not None and not isinstance(port, int):
                    ctx.err(rp + ("ports", k, "endPort"), "needs a numeric port")
                elif end is not None and end < port:
                    ctx.err(rp + ("ports", k, "endPort"), f"must be at least port ({port})")
                ports.append(PortSpec(proto.lower(), port, end))
        out.append(Rule(peers, ports))
    return out


def parse(ctx, data: dict, pods: dict, Obj) -> PolicyConfig:
    cfg = PolicyConfig()
    raw_ns = data.get("namespaces") or {}
    if not isinstance(raw_ns, dict):
        ctx.err(("namespaces",), "must be a mapping of namespace -> {labels}")
        raw_ns = {}
    for ns, spec in raw_ns.items():
        o = Obj(ctx, spec if spec is not None else {}, ("namespaces", ns), ("labels",))
        if not isinstance(ns, str) or not re.match(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", ns):
            ctx.err(("namespaces", ns), f"{ns!r} is not a valid namespace name")
            continue
        from .services import parse_labels
        cfg.namespaces[ns] = parse_labels(o, "labels")
    raw = data.get("networkPolicies") or []
    if not isinstance(raw, list):
        ctx.err(("networkPolicies",), "must be a list of policies")
        return cfg
    keys = set()
    for i, spec in enumerate(raw):
        p = ("networkPolicies", i)
        o = Obj(ctx, spec, p, ("name", "namespace", "podSelector", "policyTypes", "ingress", "egress"))
        name = o.get("name", str, None, required=True,
                     check=lambda v: None if re.match(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$", v) else f"{v!r} is not a valid name")
        ns = o.get("namespace", str, "default")
        if not isinstance(spec, dict):
            continue
        sel = _selector(ctx, spec.get("podSelector"), p + ("podSelector",), Obj)
        types = o.get("policyTypes", list, None)
        if types is None:
            types = ["Ingress"] + (["Egress"] if "egress" in spec else [])
        for j, t in enumerate(types):
            if t not in ("Ingress", "Egress"):
                ctx.err(p + ("policyTypes", j), f"must be Ingress or Egress, got {t!r}")
        ing = _rules(ctx, spec.get("ingress") or [], p + ("ingress",), "from", Obj)
        eg = _rules(ctx, spec.get("egress") or [], p + ("egress",), "to", Obj)
        if name:
            if f"{ns}/{name}" in keys:
                ctx.err(p + ("name",), f"NetworkPolicy {ns}/{name} is defined twice")
            keys.add(f"{ns}/{name}")
            cfg.policies.append(Policy(name, ns, i, sel, list(types), ing, eg))
    return cfg


# --------------------------------------------------------------------------- resolution (pure)

def _pod_ok(pod) -> bool:
    return pod.mode in ("bridge", "overlay")


def selected(pol: Policy, pods: dict) -> list[str]:
    return [p.name for p in pods.values() if _pod_ok(p) and p.namespace == pol.namespace
            and pol.selector.matches(p.labels)]


def peer_pods(cfg: PolicyConfig, pol: Policy, peer: Peer, pods: dict) -> list[str]:
    """The pods a podSelector / namespaceSelector peer names (AND when both)."""
    out = []
    for p in pods.values():
        if not _pod_ok(p):
            continue
        if peer.namespace_selector is not None:
            if not peer.namespace_selector.matches(cfg.ns_labels(p.namespace)):
                continue
        elif p.namespace != pol.namespace:
            continue
        if peer.pod_selector is not None and not peer.pod_selector.matches(p.labels):
            continue
        out.append(p.name)
    return out


def _resolve_port(pod, spec: PortSpec) -> list:
    """nft dport values for a port spec toward ``pod`` ([] = matches nothing)."""
    if spec.port is None:
        return []
    if isinstance(spec.port, str):
        for cp in pod.container_ports:
            if cp.name == spec.port and cp.protocol == spec.protocol:
                return [cp.port]
        return []
    return [{"range": [spec.port, spec.end_port]}] if spec.end_port and spec.end_port != spec.port else [spec.port]


def _fam(addr: str) -> int:
    return 6 if ":" in addr else 4


def _ip(family: int) -> str:
    return "ip6" if family == 6 else "ip"


def addrs_of(addresses: dict, name: str) -> list[str]:
    """A pod's addresses from either shape of map (pod -> primary address, or
    pod -> every family's, netlab.base.state.attach_addresses(_all))."""
    v = addresses.get(name)
    if not v:
        return []
    return [v] if isinstance(v, str) else list(v)


def _addr_match(direction: str, addrs: list) -> dict:
    """One family's addresses (``ip`` or ``ip6`` payload, by the first address)."""
    fld = "saddr" if direction == "ingress" else "daddr"
    right = addrs[0] if len(addrs) == 1 else {"set": addrs}
    return nft_match(nft_payload(_ip(_fam(addrs[0])), fld), right)


def _prefix(cidr: str):
    n = ipaddress.ip_network(cidr)
    return (str(n.network_address) if n.prefixlen == n.max_prefixlen
            else {"prefix": {"addr": str(n.network_address), "len": n.prefixlen}})


def _by_family(addrs: list[str]) -> list[tuple[int, list[str]]]:
    """[(family, sorted addresses)], IPv4 first: one nft match per family."""
    out = []
    for f in (4, 6):
        got = sorted((a for a in addrs if _fam(a) == f), key=ipaddress.ip_address)
        if got:
            out.append((f, got))
    return out


def _suffix(f: int) -> str:
    """Comments of IPv6 rules say so (IPv4 ones read as before)."""
    return " (IPv6)" if f == 6 else ""


def chain_name(direction: str, pod) -> str:
    return f"{direction}-{pod.namespace}/{pod.name}"


def pod_rules(cfg: PolicyConfig, pods: dict, addresses: dict, pod, direction: str,
              sel: dict[str, set[str]] | None = None) -> list[list]:
    """[expr, comment] of one pod's chain for one direction, or [] when no policy
    of that type selects it (then the chain does not exist: everything allowed).
    ``sel``: policy key -> the pods it selects, when the caller has it already.
    ``addresses``: pod -> address or pod -> [addresses]; peers of both families
    give one rule per family (``ip saddr`` and ``ip6 saddr``), an ipBlock the
    rule of its own family, so one policy applies to IPv4 and IPv6 alike."""
    if sel is None:
        sel = {pl.key: set(selected(pl, pods)) for pl in cfg.policies}
    pols = [pl for pl in cfg.policies if direction.capitalize() in pl.types and pod.name in sel[pl.key]]
    if not pols:
        return []
    out: list[list] = []
    for pl in pols:
        rules = pl.ingress if direction == "ingress" else pl.egress
        for ri, r in enumerate(rules):
            where = f"{pl.key} {direction}[{ri}]"
            # peer groups: (what, address match exprs, pods the ports resolve on,
            # the family of the match: None = both)
            groups: list[tuple[str, list, list, int | None]] = []
            if r.peers is None:
                groups.append(("any peer", [], [n for n in pods if addresses.get(n)] if direction == "egress" else [], None))
            else:
                for pi, peer in enumerate(r.peers):
                    if peer.cidr:
                        bf = ipaddress.ip_network(peer.cidr).version
                        ipf = _ip(bf)
                        m = [nft_match(nft_payload(ipf, "saddr" if direction == "ingress" else "daddr"), _prefix(peer.cidr))]
                        if peer.excepts:
                            m.append(nft_match(nft_payload(ipf, "saddr" if direction == "ingress" else "daddr"),
                                            {"set": [_prefix(e) for e in peer.excepts]}, "!="))
                        groups.append((f"ipBlock {peer.cidr}" + (f" except {','.join(peer.excepts)}" if peer.excepts else ""), m, [], bf))
                    else:
                        names = [n for n in peer_pods(cfg, pl, peer, pods) if addresses.get(n)]
                        kind = " and ".join(k for k, v in (("namespaceSelector", peer.namespace_selector),
                                                             ("podSelector", peer.pod_selector)) if v is not None)
                        for f, addrs in _by_family([a for n in names for a in addrs_of(addresses, n)]):
                            groups.append((f"{kind} ({', '.join(names)})" + _suffix(f),
                                           [_addr_match(direction, addrs)], names, f))
            for what, m, names, gf in groups:
                if r.ports is None:
                    out.append([m + [{"counter": None}, {"return": None}], f"allow {where} from {what}" if direction == "ingress"
                                else f"allow {where} to {what}"])
                    continue
                for proto in ("tcp", "udp"):
                    specs = [s for s in r.ports if s.protocol == proto]
                    if not specs:
                        continue
                    if direction == "egress" and any(isinstance(s.port, str) for s in specs):
                        # named ports resolve on each destination pod
                        for n in names:
                            vals = [v for s in specs for v in _resolve_port(pods[n], s)]
                            any_port = any(s.port is None for s in specs)
                            pm = [] if any_port else ([nft_match(nft_payload("th", "dport"), vals[0] if len(vals) == 1 else {"set": vals})] if vals else None)
                            if pm is None:
                                continue
                            for a in addrs_of(addresses, n):
                                if gf is not None and _fam(a) != gf:
                                    continue      # this group's peers are of the other family
                                out.append([[_addr_match(direction, [a]), nft_match({"meta": {"key": "l4proto"}}, proto)]
                                            + pm + [{"counter": None}, {"return": None}],
                                            f"allow {where} to {n} {proto}" + _suffix(_fam(a))])
                        continue
                    any_port = any(s.port is None for s in specs)
                    vals = [] if any_port else [v for s in specs for v in _resolve_port(pod, s)]
                    if not any_port and not vals:
                        continue
                    pm = [] if any_port else [nft_match(nft_payload("th", "dport"), vals[0] if len(vals) == 1 else {"set": vals})]
                    out.append([m + [nft_match({"meta": {"key": "l4proto"}}, proto)] + pm + [{"counter": None}, {"return": None}],
                                f"allow {where} {'from' if direction == 'ingress' else 'to'} {what} {proto}"])
    out.append([[{"counter": None}, {"drop": None}],
                f"default deny {direction} of {pod.namespace}/{pod.name} (policies {', '.join(p.key for p in pols)})"])
    return out


def _t(**kw) -> dict:
    return {"family": FAMILY, "table": TABLE, **kw}


def uses_ipv6(addresses: dict) -> bool:
    return any(_fam(a) == 6 for n in addresses for a in addrs_of(addresses, n))


def plan_table(cfg: PolicyConfig, pods: dict, addresses: dict, node: str) -> list[dict]:
    """The whole policy table of one node, replaced in one transaction.
    ``addresses``: pod -> address, or pod -> every family's addresses; with IPv6
    ones the table gets the ``ip6`` maps and the neighbour-discovery accept."""
    v6 = uses_ipv6(addresses)
    cmds: list[dict] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}},
                        {"delete": {"table": {"family": FAMILY, "name": TABLE}}},
                        {"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    cmds.append({"add": {"map": _t(name="ingress-pods", type="ipv4_addr", map="verdict")}})
    cmds.append({"add": {"map": _t(name="egress-pods", type="ipv4_addr", map="verdict")}})
    if v6:
        cmds.append({"add": {"map": _t(name="ingress-pods6", type="ipv6_addr", map="verdict")}})
        cmds.append({"add": {"map": _t(name="egress-pods6", type="ipv6_addr", map="verdict")}})
    cmds.append({"add": {"chain": _t(name="forward", type="filter", hook="forward", prio=0, policy="accept")}})
    cmds.append({"add": {"chain": _t(name="input", type="filter", hook="input", prio=0, policy="accept")}})
    cmds.append({"add": {"chain": _t(name="policy")}})
    est = nft_match({"ct": {"key": "state"}}, ["established", "related"], "in")
    nd = nft_match(nft_payload("icmpv6", "type"), {"set": ND_TYPES})
    for base in ("forward", "input"):
        cmds.append({"add": {"rule": _t(chain=base, expr=[est, {"accept": None}])}})
        if v6:      # untracked (never "established"), needed whatever a policy says
            cmds.append({"add": {"rule": _t(chain=base, expr=[nd, {"counter": None}, {"accept": None}],
                                            comment=ND_COMMENT)}})
    cmds.append({"add": {"rule": _t(chain="forward", expr=[{"jump": {"target": "policy"}}])}})
    cmds.append({"add": {"rule": _t(chain="input", expr=[{"vmap": {"key": nft_payload("ip", "saddr"), "data": "@egress-pods"}}])}})
    if v6:
        cmds.append({"add": {"rule": _t(chain="input", expr=[{"vmap": {"key": nft_payload("ip6", "saddr"), "data": "@egress-pods6"}}])}})
    cmds.append({"add": {"rule": _t(chain="policy", expr=[{"vmap": {"key": nft_payload("ip", "saddr"), "data": "@egress-pods"}}])}})
    if v6:
        cmds.append({"add": {"rule": _t(chain="policy", expr=[{"vmap": {"key": nft_payload("ip6", "saddr"), "data": "@egress-pods6"}}])}})
    cmds.append({"add": {"rule": _t(chain="policy", expr=[{"vmap": {"key": nft_payload("ip", "daddr"), "data": "@ingress-pods"}}])}})
    if v6:
        cmds.append({"add": {"rule": _t(chain="policy", expr=[{"vmap": {"key": nft_payload("ip6", "daddr"), "data": "@ingress-pods6"}}])}})
    sel = {pl.key: set(selected(pl, pods)) for pl in cfg.policies}
    for pod in pods.values():
        if pod.node != node or not _pod_ok(pod) or not addresses.get(pod.name):
            continue
        for direction in ("egress", "ingress"):
            rules = pod_rules(cfg, pods, addresses, pod, direction, sel)
            if not rules:
                continue
            cn = chain_name(direction, pod)
            cmds.append({"add": {"chain": _t(name=cn)}})
            for expr, comment in rules:
                cmds.append({"add": {"rule": _t(chain=cn, expr=expr, comment=comment[:128])}})
            for a in addrs_of(addresses, pod.name):
                cmds.append({"add": {"element": _t(name=f"{direction}-pods" + ("6" if _fam(a) == 6 else ""),
                                                   elem=[[a, {"jump": {"target": cn}}]])}})
    return cmds


# --------------------------------------------------------------------------- reading counters

def counters(ns: str, family: str, table: str) -> dict[str, int]:
    """comment -> packets of every counted rule of one of our tables (empty if absent)."""
    from plugins.net.nft import Nft
    from ..base.namespaces import in_thread
    out: dict[str, int] = {}

    def go():
        objs = Nft().list_table(family, table) or []
        for o in objs:
            r = o.get("rule")
            if not r:
                continue
            pk = next((e["counter"]["packets"] for e in r.get("expr", []) if isinstance(e, dict)
                       and isinstance(e.get("counter"), dict)), None)
            if pk is not None:
                out[r.get("comment") or f"{r['chain']}#{r.get('handle')}"] = pk
    in_thread(ns, go)
    return out
