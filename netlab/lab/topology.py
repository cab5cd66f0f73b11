"""Topology files: YAML -> a validated, typed model.

``load(path)`` parses the file, checks *every* key and collects every problem
with its location (``file:line: nodes.node1.address: ...``) before raising one
:class:`TopologyError`; nothing is built from a file that has an error.
The schema is documented key by key in docs/netlab/topology-reference.md.

The parser is driven by one table, ``SECTIONS``: each top-level key, the
shape of its value and the one small function that parses it, in the order
they are parsed (a section may read the sections above it: nodes take their
addresses from the underlay, pods their mode from their network). Checks that
tie sections together (addresses claimed twice, a pod on a containerd node,
check names used twice) are named functions hung on the row after which they
can run (``then``). ``checks`` entries are parsed by
netlab.lab.topology_checks, the ``scenario`` section by netlab.lab.scenario
(into typed objects: ``Topology.scenario``), the Kubernetes keys by
netlab.features.k8s and loadbalancer, ``bgp`` by netlab.features.bgp.
"""
from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..base.units import (default_burst, gateway, node_slice, parse_rate)  # noqa: F401 (schema users import them from here too)
from . import scenario as scenario_mod
from .schema import (NAME_RE, Context, IPNetwork, Obj, Section, addresses, check_dns_name, check_ip, check_name,
                     line_map, nth_host, section_value, subnets)
from .topology_checks import CHECK_TYPES, Check, parse_check  # noqa: F401 (Check, CHECK_TYPES: part of the model)

LAB_NAME_MAX = 20
NETWORK_TYPES = ("bridge", "overlay", "routed")   # routed: see netlab/features/bgp.py
IPAM_TYPES = ("host-local", "dhcp")
POD_MODES = ("bridge", "overlay", "host", "none")  # + container:<pod>
NODE_RUNTIMES = ("netlab", "containerd")           # who makes a node's pods (ADR 0025)
CRI_CNI_VERSION = "1.0.0"   # highest result version containerd 1.6's libcni reads


class TopologyError(Exception):
    """Every problem found in a topology file; ``.errors`` is a list of strings."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(f"{len(errors)} error(s) in topology:\n  " + "\n  ".join(errors))
        self.errors = errors


# --------------------------------------------------------------------------- model

@dataclass
class Underlay:
    subnet: IPNetwork               # the primary (first listed) family
    mtu: int = 1500
    switch_address: str | None = None
    impair: dict[str, dict] = field(default_factory=dict)   # node/ext/dns -> impairment of its switch port
    subnets: list = field(default_factory=list)   # one per family, primary first (IPv4, IPv6 or both)

    def __post_init__(self) -> None:
        if not self.subnets:
            self.subnets = [self.subnet]

    @property
    def families(self) -> list[int]:
        return [n.version for n in self.subnets]

    def subnet_of(self, family: int) -> IPNetwork | None:
        return next((n for n in self.subnets if n.version == family), None)


@dataclass
class Node:
    name: str
    index: int
    address: str
    mtu: int
    impair: dict | None = None   # impairment of the node's uplink (netlab/features/impair.py)
    runtime: str = "netlab"      # netlab (libcni-style, cniruntime/runtime.py) | containerd (CRI)
    addresses: list[str] = field(default_factory=list)   # one per underlay family, primary first

    def __post_init__(self) -> None:
        if not self.addresses:
            self.addresses = [self.address]

    def address_of(self, family: int) -> str | None:
        return next((a for a in self.addresses if ipaddress.ip_address(a).version == family), None)


@dataclass
class Network:
    name: str
    index: int
    type: str                   # bridge | overlay
    subnet: IPNetwork           # the primary (first listed) family
    node_prefix: int            # each node gets one /node_prefix slice of subnet
    mtu: int | None = None
    vni: int = 0
    port: int = 4789
    conflist: dict | None = None    # user template (inline or from file); None = generated
    source: str = ""                # where the conflist came from
    routing: str = "static"         # static (netlab writes node routes) | bgp (BIRD learns them)
    ipam: str = "host-local"        # host-local | dhcp (netlab/features/dhcp.py runs server + daemon)
    vxlan_mode: str = "l2"          # overlay: l2 (one shared segment) | l3 (flannel-style routed)
    subnets: list = field(default_factory=list)        # one per family, primary first (dual-stack: two)
    node_prefixes: list[int] = field(default_factory=list)   # the slice size of each subnet
    underlay_family: int = 0        # overlay: the underlay family VXLAN runs over (0: the underlay's primary)

    def __post_init__(self) -> None:
        if not self.subnets:
            self.subnets = [self.subnet]
        if not self.node_prefixes:
            self.node_prefixes = [self.node_prefix]

    @property
    def families(self) -> list[int]:
        return [n.version for n in self.subnets]


@dataclass
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"


@dataclass
class Bandwidth:
    ingress_rate: int = 0    # bit/s toward the pod
    ingress_burst: int = 0   # bits
    egress_rate: int = 0     # bit/s from the pod
    egress_burst: int = 0


@dataclass
class PodDNS:
    nameservers: list[str] = field(default_factory=list)   # empty = the lab DNS
    search: list[str] | None = None                        # None = kubelet's list
    ndots: int = 5
    options: list[str] = field(default_factory=list)       # extra options lines


@dataclass
class Pod:
    name: str
    index: int
    node: str
    mode: str                  # bridge | overlay | host | none | container
    network: str | None = None
    container_of: str | None = None
    ip: str | None = None
    namespace: str = "default"
    ports: list[PortMapping] = field(default_factory=list)
    bandwidth: Bandwidth | None = None
    dns: PodDNS = field(default_factory=PodDNS)
    ifname: str = "eth0"
    impair: dict | None = None   # impairment of the pod's interface (netlab/features/impair.py)
    labels: dict[str, str] = field(default_factory=dict)          # Kubernetes pod labels
    container_ports: list = field(default_factory=list)           # services.ContainerPort
    ips: list[str] = field(default_factory=list)   # every requested address, one per family (ip: the primary's)


@dataclass
class Record:
    name: str
    address: str


@dataclass
class DNSConfig:
    enabled: bool = True
    domain: str = "cluster.local"
    address: str | None = None
    records: list[Record] = field(default_factory=list)
    pod_records: bool = True
    addresses: list[str] = field(default_factory=list)   # one per underlay family (address: the primary)


@dataclass
class Topology:
    name: str
    path: str
    underlay: Underlay
    nodes: dict[str, Node]
    networks: dict[str, Network]
    pods: dict[str, Pod]
    dns: DNSConfig
    checks: list[Check]
    description: str = ""
    external: bool = True    # an "ext" namespace on the underlay (a client outside the nodes)
    k8s: Any = None          # k8s.K8s: Services, namespaces, NetworkPolicies (netlab/features/k8s.py)
    bgp: Any = None          # netlab.features.bgp.BGPConfig when the lab has BGP-routed networks
    scenario: scenario_mod.Scenario | None = None   # a broken-on-purpose lab (netlab.lab.scenario)

    def pod_netns_owner(self, pod: str) -> str:
        """The pod whose namespace ``pod`` lives in (itself, or its container: target)."""
        seen = set()
        p = self.pods[pod]
        while p.mode == "container" and p.container_of and p.name not in seen:
            seen.add(p.name)
            p = self.pods[p.container_of]
        return p.name


# --------------------------------------------------------------------------- load

def load(path: str, *, name: str | None = None) -> Topology:
    """Read and validate a topology file; raises TopologyError listing every problem."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise TopologyError([f"{path}: cannot read: {e.strerror}"]) from None
    return loads(text, path, name=name)


def loads(text: str, path: str = "<topology>", *, name: str | None = None) -> Topology:
    fname = os.path.relpath(path) if os.path.isabs(path) and not path.startswith("<") else path
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f"{fname}:{mark.line + 1}" if mark else fname
        raise TopologyError([f"{loc}: not valid YAML: {getattr(e, 'problem', e)}"]) from None
    ctx = Context(fname, line_map(text))
    base_dir = os.path.dirname(os.path.abspath(path)) if not path.startswith("<") else os.getcwd()
    topo = _parse(ctx, data, path, base_dir, name)
    if ctx.errors or topo is None:
        raise TopologyError(ctx.errors)
    return topo


@dataclass
class _Lab:
    """A topology being parsed: the raw file and what the sections parsed so far made."""
    ctx: Context
    raw: dict
    path: str
    base_dir: str
    name_override: str | None
    name: str = ""
    description: str = ""
    external: bool = True
    underlay: Underlay = field(default_factory=lambda: Underlay(ipaddress.IPv4Network("192.168.100.0/24")))
    underlay_obj: Obj | None = None           # read again for its impair key, once the ports are known
    nodes: dict[str, Node] = field(default_factory=dict)
    networks: dict[str, Network] = field(default_factory=dict)
    network_names: set = field(default_factory=set)   # every name under networks, valid or not
    dns: DNSConfig = field(default_factory=DNSConfig)
    pods: dict[str, Pod] = field(default_factory=dict)
    raw_pods: dict = field(default_factory=dict)
    k8s: Any = None
    checks: list[Check] = field(default_factory=list)
    scenario: scenario_mod.Scenario | None = None
    bgp: Any = None
    used_addrs: dict[str, tuple] = field(default_factory=dict)   # underlay address -> where it is used

    def claim(self, addr: str, where: tuple) -> None:
        """An underlay address used at ``where``: once only, inside the underlay subnet of its family."""
        ctx, underlay = self.ctx, self.underlay
        if addr in self.used_addrs:
            ctx.err(where, f"address {addr} is already used at {'.'.join(map(str, self.used_addrs[addr]))}")
        self.used_addrs[addr] = where
        a = ipaddress.ip_address(addr)
        un = underlay.subnet_of(a.version)
        if un is None:
            ctx.err(where, f"address {addr} is IPv{a.version}, the underlay has no IPv{a.version} subnet "
                    f"({', '.join(map(str, underlay.subnets))})")
        elif a not in un:
            ctx.err(where, f"address {addr} is not in the underlay subnet {un}")
        elif a == un.network_address or (un.version == 4 and a == un.broadcast_address):
            ctx.err(where, f"address {addr} is the network or broadcast address of {un}")

    def topology(self) -> Topology:
        return Topology(self.name or "", self.path, self.underlay, self.nodes, self.networks, self.pods, self.dns,
                        self.checks, self.description, self.external, self.k8s, self.bgp, self.scenario)


def _parse(ctx: Context, data: Any, path: str, base_dir: str, name_override: str | None) -> Topology | None:
    """Every section of ``SECTIONS`` in order, each followed by its cross-section checks."""
    if data is None:
        data = {}          # an empty file: every required key is missing
    Obj(ctx, data, (), TOP_KEYS)         # a mapping, and no key the table does not know
    if not isinstance(data, dict):
        return None
    lab = _Lab(ctx, data, path, base_dir, name_override)
    for sec in SECTIONS:
        required = sec.required(lab) if callable(sec.required) else sec.required
        sec.parse(lab, section_value(ctx, data, sec, required))
        for check in sec.then:
            check(lab)
    return lab.topology()


# --------------------------------------------------------------------------- sections: name .. underlay

def _section_name(lab: _Lab, v: str | None) -> None:
    lab.name = lab.name_override or v or ""
    if lab.name and (not NAME_RE.match(lab.name) or len(lab.name) > LAB_NAME_MAX):
        lab.ctx.err(("name",), f"{lab.name!r} is not a valid lab name (lowercase letters, digits, '-', "
                    f"at most {LAB_NAME_MAX} chars)")


def _section_description(lab: _Lab, v: str) -> None:
    lab.description = v


def _section_external(lab: _Lab, v: bool) -> None:
    lab.external = v


UNDERLAY_KEYS = ("subnet", "mtu", "switchAddress", "impair")


def _section_underlay(lab: _Lab, v: dict) -> None:
    ctx = lab.ctx
    u = lab.underlay_obj = Obj(ctx, v, ("underlay",), UNDERLAY_KEYS)
    usubs = subnets(u, "subnet", "192.168.100.0/24") or [ipaddress.IPv4Network("192.168.100.0/24")]
    for j, un in enumerate(usubs):
        if un.prefixlen > un.max_prefixlen - 4:
            ctx.err(("underlay", "subnet") + ((j,) if len(usubs) > 1 else ()),
                    f"{un} is too small for a lab (at most /{un.max_prefixlen - 4})")
    umtu = u.int("mtu", 1500, 576, 9000)
    if any(un.version == 6 for un in usubs) and umtu is not None and umtu < 1280:
        ctx.err(("underlay", "mtu"), f"IPv6 needs a link MTU of at least 1280, got {umtu}")
    sw_addr = u.get("switchAddress", str, None, check=check_ip)
    lab.underlay = Underlay(usubs[0], umtu, sw_addr, subnets=usubs)


# --------------------------------------------------------------------------- nodes

NODE_KEYS = ("address", "mtu", "impair", "runtime")


def _named_items(lab: _Lab, v: dict, section: str, what: str):
    """(index, name, path) of each entry of a name -> settings section; bad names reported and skipped."""
    for i, (name, spec) in enumerate(v.items()):
        p = (section, name)
        if not isinstance(name, str) or check_name(name):
            lab.ctx.err(p, check_name(str(name)) or f"{what} names must be strings")
            continue
        yield i, name, spec, p


def _section_nodes(lab: _Lab, v: dict) -> None:
    for i, nname, nspec, p in _named_items(lab, v, "nodes", "node"):
        node = _node(lab, i, nname, Obj(lab.ctx, nspec if nspec is not None else {}, p, NODE_KEYS), p)
        if node:
            lab.nodes[nname] = node


def _node(lab: _Lab, i: int, nname: str, o: Obj, p: tuple) -> Node | None:
    underlay = lab.underlay
    given = addresses(o, "address") or []
    addrs = []
    for un in underlay.subnets:      # one address per underlay family: the given one, else the default
        mine = [a for a in given if ipaddress.ip_address(a).version == un.version]
        addrs.append(mine[0] if mine else nth_host(un, 10 + i))
    for a in given:
        if underlay.subnet_of(ipaddress.ip_address(a).version) is None:
            lab.claim(a, p + ("address",))         # reports the missing family
    if None in addrs:
        lab.ctx.err(p + ("address",), "no default address left in the underlay subnet: give one")
        return None
    for a in addrs:
        lab.claim(a, p + ("address",))
    runtime = o.one_of("runtime", NODE_RUNTIMES, "netlab")
    return Node(nname, i, addrs[0], o.int("mtu", underlay.mtu, 576, 9000), _impair(lab.ctx, o, p),
                runtime=runtime or "netlab", addresses=addrs)


# --------------------------------------------------------------------------- networks

NETWORK_KEYS = ("type", "subnet", "nodePrefix", "mtu", "vni", "port", "conflist", "file", "routing",
                "ipam", "underlayFamily", "vxlanMode", "encap")


def _section_networks(lab: _Lab, v: dict) -> None:
    lab.network_names = set(v)
    for i, wname, wspec, p in _named_items(lab, v, "networks", "network"):
        w = _network(lab, i, wname, Obj(lab.ctx, wspec, p, NETWORK_KEYS), p)
        if w:
            lab.networks[wname] = w


def _network(lab: _Lab, i: int, wname: str, o: Obj, p: tuple) -> Network | None:
    ctx, underlay = lab.ctx, lab.underlay
    wtype = o.one_of("type", NETWORK_TYPES, "bridge")
    wsubs = subnets(o, "subnet", required=True)
    nprefixes = _node_prefixes(lab, o, p, wtype, wsubs)
    ufam = o.get("underlayFamily", int, 0, check=lambda v: None if v in (4, 6) else f"must be 4 or 6, got {v!r}")
    if ufam and wtype != "overlay":
        ctx.err(p + ("underlayFamily",), "only an overlay network chooses the underlay family it runs over")
    elif ufam and ufam not in underlay.families:
        ctx.err(p + ("underlayFamily",), f"the underlay has no IPv{ufam} subnet")
    if wtype in ("bridge", "routed"):
        for wn in wsubs:
            if wn.version not in underlay.families:
                ctx.err(p + ("subnet",), f"{wn}: a {wtype} network's nodes route IPv{wn.version} pod ranges "
                        f"to each other over the underlay, which has no IPv{wn.version} subnet")
    mtu = o.int("mtu", None, 576, 9000)
    vni = o.int("vni", 0, 1, 16777215, required=(wtype == "overlay"))
    if wtype != "overlay" and o.has("vni"):
        ctx.err(p + ("vni",), "only overlay networks have a VNI")
    port = o.int("port", 4789, 1, 65535)
    conflist, source = _conflist(lab, o, p)
    _network_overlaps(lab, p, wsubs)
    routing = _routing(ctx, o, wtype)
    vxmode = _overlay_options(ctx, o, wtype)
    wipam = o.one_of("ipam", IPAM_TYPES, "host-local")
    if wipam == "dhcp" and wtype != "bridge":
        ctx.err(p + ("ipam",), f"ipam dhcp needs a bridge network (a DHCP server per node segment), not {wtype}")
    if wipam == "dhcp" and any(wn.version == 6 for wn in wsubs):
        ctx.err(p + ("ipam",), "ipam dhcp leases IPv4 only, like the reference dhcp plugin (DHCPv4); "
                "Kubernetes pod networks do not use DHCPv6: give the IPv6 subnet to a host-local network "
                "(docs/netlab/ipv6.md)")
    if not wsubs or not nprefixes or None in nprefixes:
        return None
    return Network(wname, i, wtype, wsubs[0], nprefixes[0], mtu, vni or 0, port or 4789,
                   copy.deepcopy(conflist) if conflist is not None else None, source,
                   routing or "static", wipam or "host-local", vxlan_mode=vxmode,
                   subnets=list(wsubs), node_prefixes=list(nprefixes), underlay_family=ufam or 0)


def _node_prefixes(lab: _Lab, o: Obj, p: tuple, wtype: str, wsubs: list) -> list:
    """``nodePrefix``: the size of each node's slice, one per subnet (None where it is bad)."""
    ctx = lab.ctx
    raw_np = o.get("nodePrefix", (int, list), None)
    if isinstance(raw_np, list) and (len(raw_np) != len(wsubs) or not all(type(x) is int for x in raw_np)):
        ctx.err(p + ("nodePrefix",), f"a list of nodePrefix gives one integer per subnet ({len(wsubs)})")
        raw_np = None
    nprefixes: list = []
    for j, wsub in enumerate(wsubs):
        if wsub.version == 4:
            default_prefix = 24 if wtype in ("bridge", "routed") else wsub.prefixlen + 2
            if wtype in ("bridge", "routed") and wsub.prefixlen >= 24:
                default_prefix = min(wsub.prefixlen + 4, 28)
            lo, hi = 8, 29
        else:      # Kubernetes' default node CIDR mask for IPv6 is /64
            default_prefix = 64 if wsub.prefixlen <= 56 else min(wsub.prefixlen + 8, 120)
            lo, hi = 8, 124
        npath = p + ("nodePrefix",) + ((j,) if isinstance(raw_np, list) else ())
        np_ = raw_np[j] if isinstance(raw_np, list) else (raw_np if raw_np is not None and j == 0 else default_prefix)
        if not lo <= np_ <= hi:
            ctx.err(npath, f"must be between {lo} and {hi} for IPv{wsub.version}, got {np_}")
            np_ = None
        elif np_ < wsub.prefixlen:
            ctx.err(npath, f"/{np_} is larger than the subnet {wsub}")
        elif np_ - wsub.prefixlen < 32 and 2 ** (np_ - wsub.prefixlen) < len(lab.nodes):
            ctx.err(npath, f"{wsub} has room for {2 ** (np_ - wsub.prefixlen)} slices of /{np_}, the lab has {len(lab.nodes)} nodes")
        if not wsub.is_private:
            ctx.err(p + ("subnet",), f"{wsub} is not a private range: lab traffic must stay on this machine")
        nprefixes.append(np_)
    return nprefixes


def _conflist(lab: _Lab, o: Obj, p: tuple) -> tuple[dict | None, str]:
    """A network's own conflist, inline or from a file: (the conflist or None, where it came from)."""
    ctx = lab.ctx
    conflist = o.get("conflist", dict, None)
    fpath = o.get("file", str, None)
    source = "generated"
    if conflist is not None and fpath is not None:
        ctx.err(p, "give either conflist or file, not both")
    if fpath is not None:
        full = fpath if os.path.isabs(fpath) else os.path.join(lab.base_dir, fpath)
        try:
            with open(full, encoding="utf-8") as f:
                conflist = json.load(f) if full.endswith((".json", ".conflist", ".conf")) else yaml.safe_load(f)
            source = full
        except OSError as e:
            ctx.err(p + ("file",), f"cannot read {full}: {e.strerror}")
        except (ValueError, yaml.YAMLError) as e:
            ctx.err(p + ("file",), f"{full} is not valid JSON/YAML: {e}")
    elif conflist is not None:
        source = "inline"
    if conflist is not None:
        _check_conflist(ctx, conflist, p + ("conflist" if fpath is None else "file",))
    return conflist, source


def _check_conflist(ctx: Context, conf: Any, path: tuple) -> None:
    if not isinstance(conf, dict):
        ctx.err(path, "must be a CNI conflist (a mapping)")
        return
    plugins = conf.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        ctx.err(path + ("plugins",), "a conflist needs a non-empty plugins list")
        return
    for i, pl in enumerate(plugins):
        if not isinstance(pl, dict) or not isinstance(pl.get("type"), str):
            ctx.err(path + ("plugins", i, "type"), "every plugin needs a type")


def _network_overlaps(lab: _Lab, p: tuple, wsubs: list) -> None:
    for wn in wsubs:
        for other in lab.networks.values():
            for on in other.subnets:
                if on.overlaps(wn):
                    lab.ctx.err(p + ("subnet",), f"{wn} overlaps network {other.name} ({on})")
        for un in lab.underlay.subnets:
            if wn.overlaps(un):
                lab.ctx.err(p + ("subnet",), f"{wn} overlaps the underlay {un}")


def pod_mode_of(w: Network) -> str:
    """The attachment mode of a network's pods: a routed network attaches with the
    bridge plugin on each node (per-node slice, no overlay)."""
    return "bridge" if w.type == "routed" else w.type


def _routing(ctx: Context, o: Obj, wtype: str) -> str | None:
    from ..features.bgp import ROUTING_KINDS
    routing = o.one_of("routing", ROUTING_KINDS, "bgp" if wtype == "routed" else "static")
    if routing == "bgp" and wtype == "overlay":
        ctx.err(o.path + ("routing",), "an overlay network is not routed between nodes (routing bgp needs type routed or bridge)")
    return routing


def _overlay_options(ctx: Context, o: Obj, wtype: str) -> str:
    """``vxlanMode`` and ``encap`` of an overlay network (ADR 0027)."""
    mode = o.one_of("vxlanMode", ("l2", "l3"), "l2", "l2 (one shared segment) or l3 (flannel-style routed VTEPs)")
    encap = o.one_of("encap", ("vxlan", "geneve"), "vxlan", "vxlan (or geneve, where the kernel has it)")
    for key in ("vxlanMode", "encap"):
        if o.has(key) and wtype != "overlay":
            ctx.err(o.path + (key,), f"only overlay networks have {key}")
    if encap == "geneve":
        from plugins.net import kmod
        ctx.err(o.path + ("encap",), kmod.missing_message("geneve", "encap geneve") or
                "encap geneve is not implemented: the vxlan plugin makes VXLAN devices only")
    return mode or "l2"


def _vnis_unique(lab: _Lab) -> None:
    """Two overlay networks never share a VNI."""
    vnis: dict[int, str] = {}
    for w in lab.networks.values():
        if w.type == "overlay":
            if w.vni in vnis:
                lab.ctx.err(("networks", w.name, "vni"), f"VNI {w.vni} is already used by network {vnis[w.vni]}")
            vnis[w.vni] = w.name


# --------------------------------------------------------------------------- dns

DNS_KEYS = ("enabled", "domain", "address", "records", "podRecords")


def _section_dns(lab: _Lab, v: dict) -> None:
    ctx = lab.ctx
    d = Obj(ctx, v, ("dns",), DNS_KEYS)
    dns = lab.dns = DNSConfig(enabled=d.get("enabled", bool, True),
                              domain=d.get("domain", str, "cluster.local", check=check_dns_name).rstrip("."),
                              pod_records=d.get("podRecords", bool, True))
    if dns.enabled:
        given = addresses(d, "address") or []
        for un in lab.underlay.subnets:      # one address per underlay family, like a node
            mine = [a for a in given if ipaddress.ip_address(a).version == un.version]
            dns.addresses.append(mine[0] if mine else nth_host(un, 1))
        for a in set(given) - set(dns.addresses):
            lab.claim(a, ("dns", "address"))           # a family the underlay lacks
        dns.addresses = [a for a in dns.addresses if a]
        dns.address = dns.addresses[0] if dns.addresses else None
        for a in dns.addresses:
            lab.claim(a, ("dns", "address"))
    recs = d.get("records", (list, dict), [])
    if isinstance(recs, dict):
        recs = [{"name": k, "address": v} for k, v in recs.items()]
    for j, r in enumerate(recs):
        ro = Obj(ctx, r, ("dns", "records", j), ("name", "address"))
        rn = ro.get("name", str, None, required=True, check=check_dns_name)
        ra = ro.get("address", str, None, required=True, check=check_ip)
        if rn and ra:
            dns.records.append(Record(rn.rstrip("."), ra))


def _claim_switch_and_external(lab: _Lab) -> None:
    """The switch's own address, and the default address of the ext namespace, once nodes and DNS have theirs."""
    if lab.underlay.switch_address:
        lab.claim(lab.underlay.switch_address, ("underlay", "switchAddress"))
    if lab.external:
        for un in lab.underlay.subnets:
            ext_default = nth_host(un, 2)
            if ext_default and ext_default not in lab.used_addrs:
                lab.used_addrs[ext_default] = ("external",)


def _underlay_impairments(lab: _Lab) -> None:
    """``underlay.impair``: keyed by what the switch port faces (a node, ext, dns)."""
    u = lab.underlay_obj
    if u is None or not u.has("impair"):
        return
    ctx = lab.ctx
    faces = set(lab.nodes) | ({"ext"} if lab.external else set()) | ({"dns"} if lab.dns.enabled else set())
    for k, v in u.get("impair", dict, {}).items():
        if k not in faces:
            ctx.err(("underlay", "impair", k), f"no switch port faces {k!r} (ports face: {', '.join(sorted(faces))})")
            continue
        spec = _impair(ctx, Obj(ctx, {"impair": v}, ("underlay",), ("impair",)), ("underlay", "impair", k), key=None)
        if spec:
            lab.underlay.impair[k] = spec


def _impair(ctx: Context, o: Obj, path: tuple, key: str | None = "impair") -> dict | None:
    """An ``impair`` mapping, validated by netlab/features/impair.py; stored as its plain dict."""
    if not o.has("impair"):
        return None
    from ..features.impair import parse
    imp, errs = parse(o.data["impair"])
    where = path + ((key,) if key else ())
    for k, msg in errs:
        ctx.err(where + ((k,) if k else ()), msg)
    return None if errs else imp.to_dict()


# --------------------------------------------------------------------------- pods

POD_KEYS = ("node", "network", "mode", "ip", "namespace", "ports", "bandwidth", "dns", "ifname",
            "impair", "labels", "containerPorts")
ATTACHED = ("bridge", "overlay")     # the modes with a network attachment of their own


def _section_pods(lab: _Lab, v: dict) -> None:
    lab.raw_pods = v
    pod_ips: dict[str, str] = {}       # requested address -> pod
    for i, pname, pspec, p in _named_items(lab, v, "pods", "pod"):
        lab.pods[pname] = _pod(lab, i, pname, Obj(lab.ctx, pspec, p, POD_KEYS), p, pod_ips)


def _pod(lab: _Lab, i: int, pname: str, o: Obj, p: tuple, pod_ips: dict[str, str]) -> Pod:
    from ..features.services import parse_container_ports, parse_labels
    ctx = lab.ctx
    node = o.get("node", str, None, required=True)
    if node is not None and node not in lab.nodes and lab.nodes:
        ctx.err(p + ("node",), f"unknown node {node!r} (nodes: {', '.join(lab.nodes)})")
    net = o.get("network", str, None)
    mode, container_of = _pod_mode(lab, o, p, pname, net)
    ip, ips = _pod_ips(lab, o, p, pname, node, net, mode, pod_ips)
    ns = o.get("namespace", str, "default", check=lambda v: None if NAME_RE.match(v) and len(v) <= 63 else f"{v!r} is not a valid Kubernetes namespace name")
    ifname = o.get("ifname", str, "eth0", check=lambda v: None if re.match(r"^[A-Za-z0-9_.-]{1,15}$", v) and v not in (".", "..", "lo") else f"{v!r} is not a valid interface name")
    ports = _pod_ports(ctx, o, p, mode)
    bw = _pod_bandwidth(ctx, o, p, mode)
    pd = _pod_dns(ctx, o, p)
    pod = Pod(pname, i, node or "", mode, net, container_of, ip, ns, ports, bw, pd, ifname,
              _impair(ctx, o, p), ips=list(ips))
    if pod.impair and mode not in ATTACHED:
        ctx.err(p + ("impair",), f"a pod in mode {mode} has no interface of its own to impair")
    pod.labels = parse_labels(o, "labels")
    pod.container_ports = parse_container_ports(o, Obj)
    return pod


def _pod_mode(lab: _Lab, o: Obj, p: tuple, pname: str, net: str | None) -> tuple[str, str | None]:
    """(mode, the pod whose namespace it joins): from ``mode``, else the network's type."""
    ctx, networks = lab.ctx, lab.networks
    mode = o.get("mode", str, None)
    container_of = None
    if mode is None:
        mode = pod_mode_of(networks[net]) if net in networks else ("bridge" if net else "none")
    if mode.startswith("container:"):
        container_of = mode.split(":", 1)[1]
        mode = "container"
        if container_of not in lab.raw_pods:
            ctx.err(p + ("mode",), f"container:{container_of}: no pod named {container_of!r}")
        elif container_of == pname:
            ctx.err(p + ("mode",), "a pod cannot join its own namespace")
    elif mode not in POD_MODES:
        ctx.err(p + ("mode",), f"must be one of {', '.join(POD_MODES)} or container:<pod>, got {mode!r}")
    if mode in ATTACHED:
        if net is None:
            ctx.err(p + ("network",), f"is required for mode {mode}")
        elif net not in networks:
            if net not in lab.network_names:
                ctx.err(p + ("network",), f"unknown network {net!r} (networks: {', '.join(networks) or 'none'})")
        elif pod_mode_of(networks[net]) != mode:
            ctx.err(p + ("mode",), f"mode {mode} does not match network {net} of type {networks[net].type}")
    elif net is not None:
        ctx.err(p + ("network",), f"a pod in mode {mode} has no network of its own")
    return mode, container_of


def _pod_ips(lab: _Lab, o: Obj, p: tuple, pname: str, node: str | None, net: str | None, mode: str,
             pod_ips: dict[str, str]) -> tuple[str | None, list[str]]:
    """(ip of the network's primary family or None, every requested address): ``ip``, inside the node's slice."""
    ctx = lab.ctx
    ips = addresses(o, "ip") or []
    ip = ips[0] if ips else None
    if ip and net in lab.networks and lab.networks[net].ipam == "dhcp":
        ctx.err(p + ("ip",), f"network {net} leases addresses by DHCP: a pod cannot ask for {ip}")
    elif ips and net in lab.networks:
        w = lab.networks[net]
        for one in ips:
            a = ipaddress.ip_address(one)
            if a.version not in w.families:
                ctx.err(p + ("ip",), f"{one} is IPv{a.version}, network {net} has no IPv{a.version} subnet")
                continue
            if node in lab.nodes:
                sl = node_slice(w, lab.nodes[node].index, a.version)
                if a not in sl:
                    ctx.err(p + ("ip",), f"{one} is not in node {node}'s slice {sl} of network {net}")
                elif a in (sl.network_address, sl.broadcast_address, gateway(w, lab.nodes[node].index, a.version)):
                    ctx.err(p + ("ip",), f"{one} is reserved (network, broadcast or gateway address) in {sl}")
            if one in pod_ips:
                ctx.err(p + ("ip",), f"{one} is already requested by pod {pod_ips[one]}")
            pod_ips[one] = pname
        # ip: the address of the network's primary family (None: IPAM picks it)
        ip = next((x for x in ips if ipaddress.ip_address(x).version == w.families[0]), None)
        ips = sorted(ips, key=lambda x: w.families.index(ipaddress.ip_address(x).version)
                     if ipaddress.ip_address(x).version in w.families else 9)
    elif ip and mode not in ATTACHED:
        ctx.err(p + ("ip",), f"a pod in mode {mode} gets no address of its own")
    return ip, ips


def _pod_ports(ctx: Context, o: Obj, p: tuple, mode: str) -> list[PortMapping]:
    ports: list[PortMapping] = []
    for j, pm in enumerate(o.get("ports", list, [])):
        po = Obj(ctx, pm, p + ("ports", j), ("hostPort", "containerPort", "protocol"))
        hp = po.int("hostPort", None, 1, 65535, required=True)
        cp = po.int("containerPort", hp, 1, 65535)
        proto = po.one_of("protocol", ("tcp", "udp", "sctp"), "tcp", "tcp, udp or sctp")
        if hp and cp:
            ports.append(PortMapping(hp, cp, proto))
    if ports and mode not in ATTACHED:
        ctx.err(p + ("ports",), f"port mappings need a network attachment (mode bridge or overlay), not {mode}")
    return ports


BANDWIDTH_KEYS = ("ingressRate", "ingressBurst", "egressRate", "egressBurst", "rate", "burst")


def _pod_bandwidth(ctx: Context, o: Obj, p: tuple, mode: str) -> Bandwidth | None:
    if not o.has("bandwidth"):
        return None
    bo = Obj(ctx, o.data["bandwidth"], p + ("bandwidth",), BANDWIDTH_KEYS)
    vals = {}
    for k in BANDWIDTH_KEYS:
        if bo.has(k):
            try:
                vals[k] = parse_rate(bo.data[k])
            except ValueError as e:
                ctx.err(p + ("bandwidth", k), str(e))
    ir = vals.get("ingressRate", vals.get("rate", 0))
    er = vals.get("egressRate", vals.get("rate", 0))
    bw = Bandwidth(ir, vals.get("ingressBurst", vals.get("burst", default_burst(ir))),
                   er, vals.get("egressBurst", vals.get("burst", default_burst(er))))
    if not (ir or er):
        ctx.err(p + ("bandwidth",), "give at least one rate (rate, ingressRate or egressRate)")
    if mode not in ATTACHED:
        ctx.err(p + ("bandwidth",), f"shaping needs a network attachment (mode bridge or overlay), not {mode}")
    return bw


def _pod_dns(ctx: Context, o: Obj, p: tuple) -> PodDNS:
    pd = PodDNS()
    if not o.has("dns"):
        return pd
    do = Obj(ctx, o.data["dns"], p + ("dns",), ("nameservers", "search", "ndots", "options"))
    ns_list = do.get("nameservers", list, [])
    for j, a in enumerate(ns_list):
        if not isinstance(a, str) or check_ip(a):
            ctx.err(p + ("dns", "nameservers", j), f"{a!r} is not an IPv4 or IPv6 address")
    pd.nameservers = [a for a in ns_list if isinstance(a, str)]
    srch = do.get("search", list, None)
    if srch is not None:
        for j, s in enumerate(srch):
            if not isinstance(s, str) or check_dns_name(s):
                ctx.err(p + ("dns", "search", j), f"{s!r} is not a valid search domain")
        pd.search = [s for s in srch if isinstance(s, str)]
    pd.ndots = do.int("ndots", 5, 0, 15)
    pd.options = [str(x) for x in do.get("options", list, [])]
    return pd


def _container_chains(lab: _Lab) -> None:
    """container:<pod> chains: no loops, every pod on the node of the namespace it joins."""
    pods = lab.pods
    for pod in pods.values():
        if pod.mode == "container" and pod.container_of in pods:
            seen, cur = [pod.name], pods[pod.container_of]
            while cur.mode == "container" and cur.container_of in pods:
                if cur.name in seen:
                    lab.ctx.err(("pods", pod.name, "mode"), f"container: chain loops ({' -> '.join(seen + [cur.name])})")
                    break
                seen.append(cur.name)
                cur = pods[cur.container_of]
            if cur.node != pod.node:
                lab.ctx.err(("pods", pod.name, "node"), f"must be the node of the pod whose namespace it joins "
                            f"({cur.name} is on {cur.node})")


def _host_ports_unique(lab: _Lab) -> None:
    """Host ports are per node and protocol."""
    seen_ports: dict[tuple, str] = {}
    for pod in lab.pods.values():
        for j, pm in enumerate(pod.ports):
            key = (pod.node, pm.protocol, pm.host_port)
            if key in seen_ports:
                lab.ctx.err(("pods", pod.name, "ports", j, "hostPort"),
                            f"{pm.protocol}/{pm.host_port} on node {pod.node} is already taken by pod {seen_ports[key]}")
            seen_ports[key] = pod.name


def _containerd_nodes(lab: _Lab) -> None:
    """A ``runtime: containerd`` node's pods are CRI sandboxes (netlab/cri, ADR 0025): only
    what a kubelet can ask containerd for through RunPodSandbox can be built there."""
    ctx, networks = lab.ctx, lab.networks
    for n in lab.nodes.values():
        if n.runtime != "containerd":
            continue
        mine = [q for q in lab.pods.values() if q.node == n.name]
        nets: dict[str, list[str]] = {}
        for q in mine:
            if _containerd_pod(lab, n, q) and q.network:
                nets.setdefault(q.network, []).append(q.name)
        if len(nets) > 1:
            ctx.err(("nodes", n.name, "runtime"), "containerd's CRI loads one CNI network per node "
                    "(the first conflist in its conf dir) and gives it to every sandbox: node "
                    f"{n.name}'s pods are on {len(nets)} networks ("
                    + "; ".join(f"{w}: {', '.join(ps)}" for w, ps in sorted(nets.items())) + ")")
        for w in nets:
            conf = networks[w].conflist if w in networks else None
            v = conf.get("cniVersion") if isinstance(conf, dict) else None
            if isinstance(v, str) and _version_above(v, CRI_CNI_VERSION):
                ctx.err(("networks", w, "conflist" if networks[w].source == "inline" else "file"),
                        f"cniVersion {v}: node {n.name} runs containerd 1.6, whose CNI library "
                        f"reads results up to {CRI_CNI_VERSION} (pods there would fail with "
                        "\"unsupported CNI result version\"); say 1.0.0")
        if lab.raw.get("scenario") and mine:
            ctx.err(("nodes", n.name, "runtime"), "scenarios re-run CNI on pods through netlab's "
                    "own runtime: a lab with a scenario cannot have pods on a containerd node")


def _containerd_pod(lab: _Lab, n: Node, q: Pod) -> bool:
    """One pod of a containerd node: what CRI cannot ask for is an error. False: not a CRI sandbox at all."""
    ctx, p = lab.ctx, ("pods", q.name)
    if q.mode not in ATTACHED:
        ctx.err(p + ("mode",), f"node {n.name} runs containerd: its pods are CRI sandboxes "
                f"on the node's CNI network (mode bridge or overlay); mode "
                f"{'container:' + str(q.container_of) if q.mode == 'container' else q.mode} "
                "would need a sandbox with host networking or a container joining one, "
                "which netlab does not create through CRI")
        return False
    raw = lab.raw_pods.get(q.name) if isinstance(lab.raw_pods.get(q.name), dict) else {}
    if q.ip:
        ctx.err(p + ("ip",), f"node {n.name} runs containerd: CRI has no field for a pod's "
                "address (containerd passes no IP= to the plugins); leave ip out, IPAM "
                "picks the address")
    if q.ifname != "eth0":
        ctx.err(p + ("ifname",), f"node {n.name} runs containerd, which always names the "
                "pod's interface eth0")
    if q.impair:
        ctx.err(p + ("impair",), f"node {n.name} runs containerd: impairments of pod "
                "interfaces are applied by netlab's own runtime only")
    bw = raw.get("bandwidth") if isinstance(raw.get("bandwidth"), dict) else {}
    for k in ("ingressBurst", "egressBurst", "burst"):
        if k in bw:
            ctx.err(p + ("bandwidth", k), f"node {n.name} runs containerd: a pod's "
                    "bandwidth reaches it as the annotations kubernetes.io/ingress-bandwidth "
                    "and egress-bandwidth, which carry rates only (containerd sets the "
                    "burst itself)")
    if q.network in lab.networks and lab.networks[q.network].ipam == "dhcp":
        ctx.err(p + ("network",), f"node {n.name} runs containerd: network {q.network} "
                "leases by DHCP, which netlab runs for its own runtime only")
    return True


def _version_above(v: str, limit: str) -> bool:
    def parts(x: str) -> tuple:
        try:
            return tuple(int(i) for i in x.split("."))
        except ValueError:
            return ()
    return parts(v) > parts(limit)


# --------------------------------------------------------------------------- Kubernetes, checks, scenario, bgp

def _section_k8s(lab: _Lab, _v: Any) -> None:
    """serviceCIDR, services, namespaces, networkPolicies, proxyMode: netlab.features.k8s reads them all."""
    from ..features.k8s import parse
    lab.k8s = parse(lab.ctx, lab.raw, lab.pods, list(lab.networks.values()), lab.underlay, Obj)


def _section_load_balancer(lab: _Lab, _v: Any) -> None:
    """The pools of type LoadBalancer addresses (netlab.features.loadbalancer)."""
    from ..features.loadbalancer import parse
    lab.k8s.lb = parse(lab.ctx, lab.raw, lab.k8s, lab.underlay, lab.used_addrs, Obj)


def _section_checks(lab: _Lab, v: list) -> None:
    for j, c in enumerate(v):
        chk = parse_check(lab.ctx, c, ("checks", j), j, lab)
        if chk:
            lab.checks.append(chk)


def _check_names_unique(lab: _Lab) -> None:
    names = [c.name for c in lab.checks]
    for c in lab.checks:
        if names.count(c.name) > 1:
            lab.ctx.err(("checks", c.index, "name"), f"check name {c.name!r} is used more than once")
            break


def _section_scenario(lab: _Lab, v: dict | None) -> None:
    if v is None:
        return
    lab.scenario, errs = scenario_mod.parse(v, lab.nodes, lab.pods, [c.name for c in lab.checks])
    for spath, msg in errs:
        lab.ctx.err(("scenario",) + spath, msg)


def _section_bgp(lab: _Lab, v: Any) -> None:
    """The top-level ``bgp`` key (netlab/features/bgp.py); a default when a network routes by BGP."""
    from ..features import bgp
    uses = any(w.routing == "bgp" for w in lab.networks.values())
    if v is None:
        lab.bgp = bgp.BGPConfig() if uses else None
        return
    if not uses:
        lab.ctx.err(("bgp",), "no network has routing: bgp (type: routed, or routing: bgp on a bridge network)")
    lab.bgp = bgp.parse(Obj(lab.ctx, v, ("bgp",), bgp.BGP_KEYS), lab.ctx.err, lab.nodes)


# --------------------------------------------------------------------------- the table

SECTIONS: tuple[Section, ...] = (
    Section("name", _section_name, str, required=lambda lab: lab.name_override is None),
    Section("description", _section_description, str, empty=""),
    Section("external", _section_external, bool, empty=True),
    Section("underlay", _section_underlay, dict),
    Section("nodes", _section_nodes, dict, required=True, empty=dict,
            what="a mapping of node name -> settings (at least one node)"),
    Section("networks", _section_networks, dict, empty=dict, what="a mapping of network name -> settings",
            then=(_vnis_unique,)),
    Section("dns", _section_dns, dict, then=(_claim_switch_and_external, _underlay_impairments)),
    Section("pods", _section_pods, dict, empty=dict, what="a mapping of pod name -> settings",
            then=(_container_chains, _host_ports_unique, _containerd_nodes)),
    Section("services", _section_k8s, None, also=("serviceCIDR", "namespaces", "networkPolicies", "proxyMode")),
    Section("loadBalancer", _section_load_balancer, None),
    Section("checks", _section_checks, list, empty=list, then=(_check_names_unique,)),
    Section("scenario", _section_scenario, dict, what="a mapping (symptom, cause, fix, faults, failing)"),
    Section("bgp", _section_bgp, None),
)
TOP_KEYS = tuple(k for sec in SECTIONS for k in (sec.key,) + sec.also)
