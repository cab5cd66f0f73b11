"""Topology files: YAML -> a validated, typed model.

``load(path)`` parses the file, checks *every* key and collects every problem
with its location (``file:line: nodes.node1.address: ...``) before raising one
:class:`TopologyError`; nothing is built from a file that has an error.
The schema is documented key by key in docs/netlab/topology-reference.md.
"""
from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from ..base.units import (default_burst, gateway, node_slice, parse_rate)  # noqa: F401 (schema users import them from here too)

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
LAB_NAME_MAX = 20
ITEM_NAME_MAX = 20
CHECK_TYPES = ("reach", "mtu", "dns", "port", "bandwidth", "capture", "service", "policy", "bgp", "throughput")
NETWORK_TYPES = ("bridge", "overlay", "routed")   # routed: see netlab/features/bgp.py
IPAM_TYPES = ("host-local", "dhcp")
POD_MODES = ("bridge", "overlay", "host", "none")  # + container:<pod>
NODE_RUNTIMES = ("netlab", "containerd")           # who makes a node's pods (ADR 0025)
CRI_CNI_VERSION = "1.0.0"   # highest result version containerd 1.6's libcni reads
PROTOS = ("icmp", "tcp", "udp")


class TopologyError(Exception):
    """Every problem found in a topology file; ``.errors`` is a list of strings."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(f"{len(errors)} error(s) in topology:\n  " + "\n  ".join(errors))
        self.errors = errors


# --------------------------------------------------------------------------- model

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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
class Check:
    type: str
    index: int
    name: str
    params: dict[str, Any]


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

    def pod_netns_owner(self, pod: str) -> str:
        """The pod whose namespace ``pod`` lives in (itself, or its container: target)."""
        seen = set()
        p = self.pods[pod]
        while p.mode == "container" and p.container_of and p.name not in seen:
            seen.add(p.name)
            p = self.pods[p.container_of]
        return p.name


# --------------------------------------------------------------------------- parsing helpers

def _line_map(text: str) -> dict[tuple, int]:
    """Map key paths to 1-based line numbers, from the composed YAML tree."""
    lines: dict[tuple, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node, path):
        if node is None:
            return
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
                lines[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (i,))
    walk(root, ())
    return lines


class _Ctx:
    """Collects errors with their location."""

    def __init__(self, fname: str, lines: dict[tuple, int]) -> None:
        self.fname = fname
        self.lines = lines
        self.errors: list[str] = []

    def err(self, path: tuple, msg: str) -> None:
        p = path
        line = None
        while p is not None:
            if p in self.lines:
                line = self.lines[p]
                break
            p = p[:-1] if p else None
        where = ".".join(str(x) if not isinstance(x, int) else f"[{x}]" for x in path)
        where = where.replace(".[", "[") or "(top level)"
        loc = f"{self.fname}:{line}" if line else self.fname
        self.errors.append(f"{loc}: {where}: {msg}")


def _typename(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false",
            int: "an integer", float: "a number", type(None): "empty"}.get(type(v), type(v).__name__)


class _Obj:
    """Typed reads of one mapping, recording errors and unknown keys."""

    def __init__(self, ctx: _Ctx, data: Any, path: tuple, known: tuple[str, ...]) -> None:
        self.ctx, self.path = ctx, path
        if not isinstance(data, dict):
            if data is not None:
                ctx.err(path, f"must be a mapping, got {_typename(data)}")
            data = {}
        self.data = data
        for k in data:
            if k not in known:
                ctx.err(path + (k,), f"unknown key (known: {', '.join(known)})")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str, kind: type | tuple, default: Any = None, *, required: bool = False,
            check: Callable[[Any], str | None] | None = None) -> Any:
        v = self.data.get(key)
        if v is None:
            if required:
                self.ctx.err(self.path + (key,), "is required")
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(v, bool) and bool not in kinds:
            ok = False
        else:
            ok = isinstance(v, kinds)
        if not ok:
            want = " or ".join(_typename(k()) if k is not type(None) else "empty" for k in kinds)
            self.ctx.err(self.path + (key,), f"must be {want}, got {_typename(v)} {json.dumps(v, default=str)[:60]}")
            return default
        if check:
            msg = check(v)
            if msg:
                self.ctx.err(self.path + (key,), msg)
                return default
        return v

    def int(self, key: str, default: int | None = None, lo: int | None = None,
            hi: int | None = None, required: bool = False) -> int | None:
        def rng(v):
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                return f"must be between {lo} and {hi}, got {v}" if hi is not None else f"must be at least {lo}, got {v}"
            return None
        return self.get(key, int, default, required=required, check=rng)


RESERVED = ("ext", "dns", "underlay", "sw")


def _name_check(v: str) -> str | None:
    if v in RESERVED:
        return f"{v!r} is reserved (used for the lab's own namespaces)"
    if not NAME_RE.match(v) or len(v) > ITEM_NAME_MAX:
        return f"{v!r} is not a valid name (lowercase letters, digits and '-', at most {ITEM_NAME_MAX} chars)"
    return None


def _ip4(v: str) -> str | None:
    try:
        ipaddress.IPv4Address(v)
    except ValueError:
        return f"{v!r} is not an IPv4 address"
    return None


def _ip(v: str) -> str | None:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return f"{v!r} is not an IPv4 or IPv6 address"
    return None


def _net(v: str) -> str | None:
    try:
        ipaddress.ip_network(v, strict=True)
    except ValueError as e:
        return f"{v!r} is not an IPv4 or IPv6 subnet ({e})"
    return None


def _subnets(ctx: "_Ctx", o: "_Obj", key: str, default: Any = None, required: bool = False) -> list:
    """``key: CIDR`` or ``key: [CIDR, CIDR]`` (dual-stack: one per family, the first
    is the primary family) -> a list of networks; [] after an error."""
    v = o.get(key, (str, list), default, required=required)
    if v is None:
        return []
    items = [v] if isinstance(v, str) else v
    path = o.path + (key,)
    if not items or len(items) > 2:
        ctx.err(path, f"give one subnet, or a list of two (one IPv4, one IPv6), got {len(items)}")
        return []
    out = []
    for j, x in enumerate(items):
        where = path + ((j,) if isinstance(v, list) else ())
        msg = _net(x) if isinstance(x, str) else f"must be a subnet like 10.0.0.0/16 or fd00::/64, got {_typename(x)}"
        if msg:
            ctx.err(where, msg)
            return []
        out.append(ipaddress.ip_network(x))
    if len(out) == 2 and out[0].version == out[1].version:
        ctx.err(path, f"two IPv{out[0].version} subnets: a dual-stack list has one IPv4 and one IPv6 subnet")
        return []
    return out


def _addresses(ctx: "_Ctx", o: "_Obj", key: str) -> list[str] | None:
    """``key: ADDR`` or ``key: [ADDR, ADDR]`` (one per family); None when absent or bad."""
    v = o.get(key, (str, list), None)
    if v is None:
        return None
    items = [v] if isinstance(v, str) else v
    path = o.path + (key,)
    if not items or len(items) > 2:
        ctx.err(path, f"give one address, or a list of two (one per family), got {len(items)}")
        return None
    for j, x in enumerate(items):
        msg = _ip(x) if isinstance(x, str) else f"must be an address, got {_typename(x)}"
        if msg:
            ctx.err(path + ((j,) if isinstance(v, list) else ()), msg)
            return None
    if len(items) == 2 and ipaddress.ip_address(items[0]).version == ipaddress.ip_address(items[1]).version:
        ctx.err(path, "two addresses of one family: give one IPv4 and one IPv6 address")
        return None
    return list(items)


def nth_host(net: IPNetwork, k: int) -> str | None:
    """The k-th host address of ``net`` (0 = network address + 1); None past the end.
    Arithmetic, never a list of hosts (an IPv6 /64 has 2**64)."""
    last = net.broadcast_address - (1 if net.version == 4 else 0)
    a = net.network_address + 1 + k
    return str(a) if a <= last else None


def _net4(v: str) -> str | None:
    try:
        ipaddress.IPv4Network(v, strict=True)
    except ValueError as e:
        return f"{v!r} is not an IPv4 subnet ({e})"
    return None


def _dns_name(v: str) -> str | None:
    n = v[:-1] if v.endswith(".") else v
    if not n or len(n) > 253 or not all(re.match(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$", p) for p in n.split(".")):
        return f"{v!r} is not a valid DNS name"
    return None


# --------------------------------------------------------------------------- load

TOP_KEYS = ("name", "description", "underlay", "nodes", "networks", "pods", "dns", "checks", "external",
            "scenario", "bgp",
            "serviceCIDR", "services", "namespaces", "networkPolicies", "proxyMode", "loadBalancer")   # netlab/features/k8s.py   # scenario: broken-on-purpose labs, validated by netlab/lab/scenario.py


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
    ctx = _Ctx(fname, _line_map(text))
    base_dir = os.path.dirname(os.path.abspath(path)) if not path.startswith("<") else os.getcwd()
    topo = _build(ctx, data, path, base_dir, name)
    if ctx.errors:
        raise TopologyError(ctx.errors)
    assert topo is not None
    return topo


def _build(ctx: _Ctx, data: Any, path: str, base_dir: str, name_override: str | None) -> Topology | None:
    top = _Obj(ctx, data, (), TOP_KEYS)
    if not isinstance(data, dict):
        return None
    lab = top.get("name", str, "", required=name_override is None)
    if name_override:
        lab = name_override
    if lab and (not NAME_RE.match(lab) or len(lab) > LAB_NAME_MAX):
        ctx.err(("name",), f"{lab!r} is not a valid lab name (lowercase letters, digits, '-', at most {LAB_NAME_MAX} chars)")
    description = top.get("description", str, "")
    external = top.get("external", bool, True)

    # underlay
    u = _Obj(ctx, data.get("underlay", {}), ("underlay",), ("subnet", "mtu", "switchAddress", "impair"))
    usubs = _subnets(ctx, u, "subnet", "192.168.100.0/24") or [ipaddress.IPv4Network("192.168.100.0/24")]
    for j, un in enumerate(usubs):
        if un.prefixlen > un.max_prefixlen - 4:
            ctx.err(("underlay", "subnet") + ((j,) if len(usubs) > 1 else ()),
                    f"{un} is too small for a lab (at most /{un.max_prefixlen - 4})")
    usub = usubs[0]
    umtu = u.int("mtu", 1500, 576, 9000)
    if any(un.version == 6 for un in usubs) and umtu is not None and umtu < 1280:
        ctx.err(("underlay", "mtu"), f"IPv6 needs a link MTU of at least 1280, got {umtu}")
    sw_addr = u.get("switchAddress", str, None, check=_ip)
    underlay = Underlay(usub, umtu, sw_addr, subnets=usubs)
    used_addrs: dict[str, tuple] = {}

    def claim(addr: str, where: tuple) -> None:
        if addr in used_addrs:
            ctx.err(where, f"address {addr} is already used at {'.'.join(map(str, used_addrs[addr]))}")
        used_addrs[addr] = where
        a = ipaddress.ip_address(addr)
        un = underlay.subnet_of(a.version)
        if un is None:
            ctx.err(where, f"address {addr} is IPv{a.version}, the underlay has no IPv{a.version} subnet "
                    f"({', '.join(map(str, usubs))})")
        elif a not in un:
            ctx.err(where, f"address {addr} is not in the underlay subnet {un}")
        elif a == un.network_address or (un.version == 4 and a == un.broadcast_address):
            ctx.err(where, f"address {addr} is the network or broadcast address of {un}")

    # nodes
    nodes: dict[str, Node] = {}
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, dict) or not raw_nodes:
        ctx.err(("nodes",), "is required: a mapping of node name -> settings (at least one node)")
        raw_nodes = raw_nodes if isinstance(raw_nodes, dict) else {}
    for i, (nname, nspec) in enumerate(raw_nodes.items()):
        p = ("nodes", nname)
        if not isinstance(nname, str) or _name_check(nname):
            ctx.err(p, _name_check(str(nname)) or "node names must be strings")
            continue
        o = _Obj(ctx, nspec if nspec is not None else {}, p, ("address", "mtu", "impair", "runtime"))
        given = _addresses(ctx, o, "address") or []
        addrs = []
        for un in usubs:      # one address per underlay family: the given one, else the default
            mine = [a for a in given if ipaddress.ip_address(a).version == un.version]
            addrs.append(mine[0] if mine else nth_host(un, 10 + i))
        for a in given:
            if underlay.subnet_of(ipaddress.ip_address(a).version) is None:
                claim(a, p + ("address",))         # reports the missing family
        if None in addrs:
            ctx.err(p + ("address",), "no default address left in the underlay subnet: give one")
            continue
        for a in addrs:
            claim(a, p + ("address",))
        runtime = o.get("runtime", str, "netlab", check=lambda v: None if v in NODE_RUNTIMES else
                        f"must be one of {', '.join(NODE_RUNTIMES)}, got {v!r}")
        nodes[nname] = Node(nname, i, addrs[0], o.int("mtu", umtu, 576, 9000), _impair(ctx, o, p),
                            runtime=runtime or "netlab", addresses=addrs)

    # networks
    networks: dict[str, Network] = {}
    raw_nets = data.get("networks") or {}
    if not isinstance(raw_nets, dict):
        ctx.err(("networks",), f"must be a mapping of network name -> settings, got {_typename(raw_nets)}")
        raw_nets = {}
    for i, (wname, wspec) in enumerate(raw_nets.items()):
        p = ("networks", wname)
        if not isinstance(wname, str) or _name_check(wname):
            ctx.err(p, _name_check(str(wname)) or "network names must be strings")
            continue
        o = _Obj(ctx, wspec, p, ("type", "subnet", "nodePrefix", "mtu", "vni", "port", "conflist", "file", "routing",
                                 "ipam", "underlayFamily", "vxlanMode", "encap"))
        wtype = o.get("type", str, "bridge", check=lambda v: None if v in NETWORK_TYPES else f"must be one of {', '.join(NETWORK_TYPES)}, got {v!r}")
        wsubs = _subnets(ctx, o, "subnet", required=True)
        raw_np = o.get("nodePrefix", (int, list), None)
        if isinstance(raw_np, list) and (len(raw_np) != len(wsubs) or not all(type(x) is int for x in raw_np)):
            ctx.err(p + ("nodePrefix",), f"a list of nodePrefix gives one integer per subnet ({len(wsubs)})")
            raw_np = None
        nprefixes: list[int] = []
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
            elif np_ - wsub.prefixlen < 32 and 2 ** (np_ - wsub.prefixlen) < len(nodes):
                ctx.err(npath, f"{wsub} has room for {2 ** (np_ - wsub.prefixlen)} slices of /{np_}, the lab has {len(nodes)} nodes")
            if not wsub.is_private:
                ctx.err(p + ("subnet",), f"{wsub} is not a private range: lab traffic must stay on this machine")
            nprefixes.append(np_)
        wsub = wsubs[0] if wsubs else None
        nprefix = nprefixes[0] if nprefixes and None not in nprefixes else None
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
        conflist = o.get("conflist", dict, None)
        fpath = o.get("file", str, None)
        source = "generated"
        if conflist is not None and fpath is not None:
            ctx.err(p, "give either conflist or file, not both")
        if fpath is not None:
            full = fpath if os.path.isabs(fpath) else os.path.join(base_dir, fpath)
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
        for wn in wsubs:
            for other in networks.values():
                for on in other.subnets:
                    if on.overlaps(wn):
                        ctx.err(p + ("subnet",), f"{wn} overlaps network {other.name} ({on})")
            for un in usubs:
                if wn.overlaps(un):
                    ctx.err(p + ("subnet",), f"{wn} overlaps the underlay {un}")
        routing = _routing(ctx, o, wtype)
        vxmode = _overlay_options(ctx, o, wtype)
        wipam = o.get("ipam", str, "host-local", check=lambda v: None if v in IPAM_TYPES else f"must be one of {', '.join(IPAM_TYPES)}, got {v!r}")
        if wipam == "dhcp" and wtype != "bridge":
            ctx.err(p + ("ipam",), f"ipam dhcp needs a bridge network (a DHCP server per node segment), not {wtype}")
        if wipam == "dhcp" and any(wn.version == 6 for wn in wsubs):
            ctx.err(p + ("ipam",), "ipam dhcp leases IPv4 only, like the reference dhcp plugin (DHCPv4); "
                    "Kubernetes pod networks do not use DHCPv6: give the IPv6 subnet to a host-local network "
                    "(docs/netlab/ipv6.md)")
        if wsub is not None and nprefix is not None:
            networks[wname] = Network(wname, i, wtype, wsub, nprefix, mtu, vni or 0, port or 4789,
                                      copy.deepcopy(conflist) if conflist is not None else None, source,
                                      routing or "static", wipam or "host-local", vxlan_mode=vxmode,
                                      subnets=list(wsubs), node_prefixes=list(nprefixes),
                                      underlay_family=ufam or 0)
    vnis: dict[int, str] = {}
    for w in networks.values():
        if w.type == "overlay":
            if w.vni in vnis:
                ctx.err(("networks", w.name, "vni"), f"VNI {w.vni} is already used by network {vnis[w.vni]}")
            vnis[w.vni] = w.name

    # dns
    d = _Obj(ctx, data.get("dns", {}), ("dns",), ("enabled", "domain", "address", "records", "podRecords"))
    dns = DNSConfig(enabled=d.get("enabled", bool, True),
                    domain=d.get("domain", str, "cluster.local", check=_dns_name).rstrip("."),
                    pod_records=d.get("podRecords", bool, True))
    if dns.enabled:
        given = _addresses(ctx, d, "address") or []
        for un in usubs:      # one address per underlay family, like a node
            mine = [a for a in given if ipaddress.ip_address(a).version == un.version]
            dns.addresses.append(mine[0] if mine else nth_host(un, 1))
        for a in set(given) - set(dns.addresses):
            claim(a, ("dns", "address"))           # a family the underlay lacks
        dns.addresses = [a for a in dns.addresses if a]
        dns.address = dns.addresses[0] if dns.addresses else None
        for a in dns.addresses:
            claim(a, ("dns", "address"))
    recs = d.get("records", (list, dict), [])
    if isinstance(recs, dict):
        recs = [{"name": k, "address": v} for k, v in recs.items()]
    for j, r in enumerate(recs):
        ro = _Obj(ctx, r, ("dns", "records", j), ("name", "address"))
        rn = ro.get("name", str, None, required=True, check=_dns_name)
        ra = ro.get("address", str, None, required=True, check=_ip)
        if rn and ra:
            dns.records.append(Record(rn.rstrip("."), ra))
    if sw_addr:
        claim(sw_addr, ("underlay", "switchAddress"))
    if external:
        for un in usubs:
            ext_default = nth_host(un, 2)
            if ext_default and ext_default not in used_addrs:
                used_addrs[ext_default] = ("external",)

    # impaired switch ports: keyed by what the port faces
    if u.has("impair"):
        faces = set(nodes) | ({"ext"} if external else set()) | ({"dns"} if dns.enabled else set())
        raw_imp = u.get("impair", dict, {})
        for k, v in raw_imp.items():
            if k not in faces:
                ctx.err(("underlay", "impair", k), f"no switch port faces {k!r} (ports face: {', '.join(sorted(faces))})")
                continue
            spec = _impair(ctx, _Obj(ctx, {"impair": v}, ("underlay",), ("impair",)), ("underlay", "impair", k),
                           key=None)
            if spec:
                underlay.impair[k] = spec

    # pods
    pods: dict[str, Pod] = {}
    raw_pods = data.get("pods") or {}
    if not isinstance(raw_pods, dict):
        ctx.err(("pods",), f"must be a mapping of pod name -> settings, got {_typename(raw_pods)}")
        raw_pods = {}
    pod_ips: dict[str, str] = {}
    for i, (pname, pspec) in enumerate(raw_pods.items()):
        p = ("pods", pname)
        if not isinstance(pname, str) or _name_check(pname):
            ctx.err(p, _name_check(str(pname)) or "pod names must be strings")
            continue
        o = _Obj(ctx, pspec, p, ("node", "network", "mode", "ip", "namespace", "ports", "bandwidth", "dns", "ifname",
                                 "impair", "labels", "containerPorts"))
        node = o.get("node", str, None, required=True)
        if node is not None and node not in nodes and nodes:
            ctx.err(p + ("node",), f"unknown node {node!r} (nodes: {', '.join(nodes)})")
        net = o.get("network", str, None)
        mode = o.get("mode", str, None)
        container_of = None
        if mode is None:
            mode = pod_mode_of(networks[net]) if net in networks else ("bridge" if net else "none")
        if mode.startswith("container:"):
            container_of = mode.split(":", 1)[1]
            mode = "container"
            if container_of not in raw_pods:
                ctx.err(p + ("mode",), f"container:{container_of}: no pod named {container_of!r}")
            elif container_of == pname:
                ctx.err(p + ("mode",), "a pod cannot join its own namespace")
        elif mode not in POD_MODES:
            ctx.err(p + ("mode",), f"must be one of {', '.join(POD_MODES)} or container:<pod>, got {mode!r}")
        if mode in ("bridge", "overlay"):
            if net is None:
                ctx.err(p + ("network",), f"is required for mode {mode}")
            elif net not in networks:
                if net not in raw_nets:
                    ctx.err(p + ("network",), f"unknown network {net!r} (networks: {', '.join(networks) or 'none'})")
            elif pod_mode_of(networks[net]) != mode:
                ctx.err(p + ("mode",), f"mode {mode} does not match network {net} of type {networks[net].type}")
        elif net is not None:
            ctx.err(p + ("network",), f"a pod in mode {mode} has no network of its own")
        ips = _addresses(ctx, o, "ip") or []
        ip = ips[0] if ips else None
        if ip and net in networks and networks[net].ipam == "dhcp":
            ctx.err(p + ("ip",), f"network {net} leases addresses by DHCP: a pod cannot ask for {ip}")
        elif ips and net in networks:
            w = networks[net]
            for one in ips:
                a = ipaddress.ip_address(one)
                if a.version not in w.families:
                    ctx.err(p + ("ip",), f"{one} is IPv{a.version}, network {net} has no IPv{a.version} subnet")
                    continue
                if node in nodes:
                    sl = node_slice(w, nodes[node].index, a.version)
                    if a not in sl:
                        ctx.err(p + ("ip",), f"{one} is not in node {node}'s slice {sl} of network {net}")
                    elif a in (sl.network_address, sl.broadcast_address, gateway(w, nodes[node].index, a.version)):
                        ctx.err(p + ("ip",), f"{one} is reserved (network, broadcast or gateway address) in {sl}")
                if one in pod_ips:
                    ctx.err(p + ("ip",), f"{one} is already requested by pod {pod_ips[one]}")
                pod_ips[one] = pname
            # ip: the address of the network's primary family (None: IPAM picks it)
            ip = next((x for x in ips if ipaddress.ip_address(x).version == w.families[0]), None)
            ips = sorted(ips, key=lambda x: w.families.index(ipaddress.ip_address(x).version)
                         if ipaddress.ip_address(x).version in w.families else 9)
        elif ip and mode not in ("bridge", "overlay"):
            ctx.err(p + ("ip",), f"a pod in mode {mode} gets no address of its own")
        ns = o.get("namespace", str, "default", check=lambda v: None if NAME_RE.match(v) and len(v) <= 63 else f"{v!r} is not a valid Kubernetes namespace name")
        ifname = o.get("ifname", str, "eth0", check=lambda v: None if re.match(r"^[A-Za-z0-9_.-]{1,15}$", v) and v not in (".", "..", "lo") else f"{v!r} is not a valid interface name")
        ports: list[PortMapping] = []
        for j, pm in enumerate(o.get("ports", list, [])):
            po = _Obj(ctx, pm, p + ("ports", j), ("hostPort", "containerPort", "protocol"))
            hp = po.int("hostPort", None, 1, 65535, required=True)
            cp = po.int("containerPort", hp, 1, 65535)
            proto = po.get("protocol", str, "tcp", check=lambda v: None if v in ("tcp", "udp", "sctp") else f"must be tcp, udp or sctp, got {v!r}")
            if hp and cp:
                ports.append(PortMapping(hp, cp, proto))
        if ports and mode not in ("bridge", "overlay"):
            ctx.err(p + ("ports",), f"port mappings need a network attachment (mode bridge or overlay), not {mode}")
        bw = None
        if o.has("bandwidth"):
            bo = _Obj(ctx, o.data["bandwidth"], p + ("bandwidth",), ("ingressRate", "ingressBurst", "egressRate", "egressBurst", "rate", "burst"))
            vals = {}
            for k in ("ingressRate", "ingressBurst", "egressRate", "egressBurst", "rate", "burst"):
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
            if mode not in ("bridge", "overlay"):
                ctx.err(p + ("bandwidth",), f"shaping needs a network attachment (mode bridge or overlay), not {mode}")
        pd = PodDNS()
        if o.has("dns"):
            do = _Obj(ctx, o.data["dns"], p + ("dns",), ("nameservers", "search", "ndots", "options"))
            ns_list = do.get("nameservers", list, [])
            for j, a in enumerate(ns_list):
                if not isinstance(a, str) or _ip(a):
                    ctx.err(p + ("dns", "nameservers", j), f"{a!r} is not an IPv4 or IPv6 address")
            pd.nameservers = [a for a in ns_list if isinstance(a, str)]
            srch = do.get("search", list, None)
            if srch is not None:
                for j, s in enumerate(srch):
                    if not isinstance(s, str) or _dns_name(s):
                        ctx.err(p + ("dns", "search", j), f"{s!r} is not a valid search domain")
                pd.search = [s for s in srch if isinstance(s, str)]
            pd.ndots = do.int("ndots", 5, 0, 15)
            pd.options = [str(x) for x in do.get("options", list, [])]
        pods[pname] = Pod(pname, i, node or "", mode, net, container_of, ip, ns, ports, bw, pd, ifname,
                          _impair(ctx, o, p), ips=list(ips))
        if pods[pname].impair and mode not in ("bridge", "overlay"):
            ctx.err(p + ("impair",), f"a pod in mode {mode} has no interface of its own to impair")
        from ..features.services import parse_container_ports, parse_labels
        pods[pname].labels = parse_labels(o, "labels")
        pods[pname].container_ports = parse_container_ports(o, _Obj)
    # container chains: no cycles, same node
    for pod in pods.values():
        if pod.mode == "container" and pod.container_of in pods:
            seen, cur = [pod.name], pods[pod.container_of]
            while cur.mode == "container" and cur.container_of in pods:
                if cur.name in seen:
                    ctx.err(("pods", pod.name, "mode"), f"container: chain loops ({' -> '.join(seen + [cur.name])})")
                    break
                seen.append(cur.name)
                cur = pods[cur.container_of]
            if cur.node != pod.node:
                ctx.err(("pods", pod.name, "node"), f"must be the node of the pod whose namespace it joins ({cur.name} is on {cur.node})")
    # host ports are per node and protocol
    seen_ports: dict[tuple, str] = {}
    for pod in pods.values():
        for j, pm in enumerate(pod.ports):
            key = (pod.node, pm.protocol, pm.host_port)
            if key in seen_ports:
                ctx.err(("pods", pod.name, "ports", j, "hostPort"), f"{pm.protocol}/{pm.host_port} on node {pod.node} is already taken by pod {seen_ports[key]}")
            seen_ports[key] = pod.name

    _containerd_nodes(ctx, nodes, networks, pods, raw_pods, "scenario" in data)

    from ..features.k8s import parse as _parse_k8s      # Services, namespaces, NetworkPolicies
    k8s = _parse_k8s(ctx, data, pods, list(networks.values()), underlay, _Obj)
    from ..features.loadbalancer import parse as _parse_lb    # type LoadBalancer: addresses from loadBalancer.pools
    k8s.lb = _parse_lb(ctx, data, k8s, underlay, used_addrs, _Obj)

    # checks
    checks: list[Check] = []
    raw_checks = data.get("checks") or []
    if not isinstance(raw_checks, list):
        ctx.err(("checks",), f"must be a list, got {_typename(raw_checks)}")
        raw_checks = []
    for j, c in enumerate(raw_checks):
        chk = _check(ctx, c, ("checks", j), j, nodes, pods, dns, external, k8s)
        if chk:
            checks.append(chk)
    names = [c.name for c in checks]
    for c in checks:
        if names.count(c.name) > 1:
            ctx.err(("checks", c.index, "name"), f"check name {c.name!r} is used more than once")
            break
    if "scenario" in data:
        from .scenario import validate as _validate_scenario
        for spath, msg in _validate_scenario(data["scenario"], nodes, pods, names):
            ctx.err(("scenario",) + spath, msg)
    bgp_cfg = _bgp(ctx, data, nodes, networks)
    return Topology(lab or "", path, underlay, nodes, networks, pods, dns, checks, description, external, k8s,
                    bgp_cfg)


def _containerd_nodes(ctx: _Ctx, nodes: dict, networks: dict, pods: dict, raw_pods: dict,
                      scenario: bool) -> None:
    """A ``runtime: containerd`` node's pods are CRI sandboxes (netlab/cri, ADR 0025): only
    what a kubelet can ask containerd for through RunPodSandbox can be built there."""
    for n in nodes.values():
        if n.runtime != "containerd":
            continue
        mine = [q for q in pods.values() if q.node == n.name]
        nets: dict[str, list[str]] = {}
        for q in mine:
            p = ("pods", q.name)
            if q.mode not in ("bridge", "overlay"):
                ctx.err(p + ("mode",), f"node {n.name} runs containerd: its pods are CRI sandboxes "
                        f"on the node's CNI network (mode bridge or overlay); mode "
                        f"{'container:' + str(q.container_of) if q.mode == 'container' else q.mode} "
                        "would need a sandbox with host networking or a container joining one, "
                        "which netlab does not create through CRI")
                continue
            if q.network:
                nets.setdefault(q.network, []).append(q.name)
            raw = raw_pods.get(q.name) if isinstance(raw_pods.get(q.name), dict) else {}
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
            if q.network in networks and networks[q.network].ipam == "dhcp":
                ctx.err(p + ("network",), f"node {n.name} runs containerd: network {q.network} "
                        "leases by DHCP, which netlab runs for its own runtime only")
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
        if scenario and mine:
            ctx.err(("nodes", n.name, "runtime"), "scenarios re-run CNI on pods through netlab's "
                    "own runtime: a lab with a scenario cannot have pods on a containerd node")


def _version_above(v: str, limit: str) -> bool:
    def parts(x: str) -> tuple:
        try:
            return tuple(int(i) for i in x.split("."))
        except ValueError:
            return ()
    return parts(v) > parts(limit)


def _k8s_check_keys(ctype: str) -> tuple[str, ...]:
    from ..features.k8s import CHECK_KEYS
    return CHECK_KEYS[ctype]


def _impair(ctx: _Ctx, o: _Obj, path: tuple, key: str | None = "impair") -> dict | None:
    """An ``impair`` mapping, validated by netlab/features/impair.py; stored as its plain dict."""
    if not o.has("impair"):
        return None
    from ..features.impair import parse
    imp, errs = parse(o.data["impair"])
    where = path + ((key,) if key else ())
    for k, msg in errs:
        ctx.err(where + ((k,) if k else ()), msg)
    return None if errs else imp.to_dict()


def _loss_expect(ctx: _Ctx, exp: dict, path: tuple, params: dict) -> dict:
    """reach ``expect: {loss: 5%, tolerance: 3%}``: the share of probes that go unanswered."""
    from ..features.impair import parse_percent
    eo = _Obj(ctx, exp, path, ("loss", "tolerance"))
    out: dict[str, float] = {}
    for k in ("loss", "tolerance"):
        if not eo.has(k):
            if k == "loss":
                ctx.err(path + (k,), "is required")
            continue
        try:
            out[k] = parse_percent(eo.data[k])
        except ValueError as e:
            ctx.err(path + (k,), str(e))
    if params.get("proto") != "icmp":
        ctx.err(path, "a loss is measured with ICMP echo: proto must be icmp")
    if "loss" in out and "tolerance" not in out:
        # three standard deviations of the share lost in `count` tries, plus one probe
        n = params.get("count") or 1
        p_ = out["loss"] / 100
        out["tolerance"] = round(100 * (3 * (p_ * (1 - p_) / n) ** 0.5 + 1 / n), 2)
    return out


def pod_mode_of(w: Network) -> str:
    """The attachment mode of a network's pods: a routed network attaches with the
    bridge plugin on each node (per-node slice, no overlay)."""
    return "bridge" if w.type == "routed" else w.type


def _routing(ctx: _Ctx, o: _Obj, wtype: str) -> str | None:
    from ..features.bgp import ROUTING_KINDS
    routing = o.get("routing", str, "bgp" if wtype == "routed" else "static",
                    check=lambda v: None if v in ROUTING_KINDS else f"must be one of {', '.join(ROUTING_KINDS)}, got {v!r}")
    if routing == "bgp" and wtype == "overlay":
        ctx.err(o.path + ("routing",), "an overlay network is not routed between nodes (routing bgp needs type routed or bridge)")
    return routing


def _overlay_options(ctx: _Ctx, o: _Obj, wtype: str) -> str:
    """``vxlanMode`` and ``encap`` of an overlay network (ADR 0027)."""
    mode = o.get("vxlanMode", str, "l2", check=lambda v: None if v in ("l2", "l3") else
                 f"must be l2 (one shared segment) or l3 (flannel-style routed VTEPs), got {v!r}")
    encap = o.get("encap", str, "vxlan", check=lambda v: None if v in ("vxlan", "geneve") else
                  f"must be vxlan (or geneve, where the kernel has it), got {v!r}")
    for key in ("vxlanMode", "encap"):
        if o.has(key) and wtype != "overlay":
            ctx.err(o.path + (key,), f"only overlay networks have {key}")
    if encap == "geneve":
        from plugins.net import kmod
        ctx.err(o.path + ("encap",), kmod.missing_message("geneve", "encap geneve") or
                "encap geneve is not implemented: the vxlan plugin makes VXLAN devices only")
    return mode or "l2"


def _bgp(ctx: _Ctx, data: dict, nodes: dict, networks: dict):
    """The top-level ``bgp`` key (netlab/features/bgp.py); a default when a network routes by BGP."""
    from ..features import bgp
    uses = any(w.routing == "bgp" for w in networks.values())
    if data.get("bgp") is None:
        return bgp.BGPConfig() if uses else None
    if not uses:
        ctx.err(("bgp",), "no network has routing: bgp (type: routed, or routing: bgp on a bridge network)")
    return bgp.parse(_Obj(ctx, data["bgp"], ("bgp",), bgp.BGP_KEYS), ctx.err, nodes)


def _check_conflist(ctx: _Ctx, conf: Any, path: tuple) -> None:
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


# --------------------------------------------------------------------------- checks schema

_TARGET_HELP = "a pod name, node name, 'ext' (client outside the nodes) or 'dns'"


def _check(ctx: _Ctx, c: Any, p: tuple, j: int, nodes: dict, pods: dict, dns: DNSConfig,
           external: bool = True, k8s: Any = None) -> Check | None:
    if not isinstance(c, dict):
        ctx.err(p, f"a check must be a mapping, got {_typename(c)}")
        return None
    ctype = c.get("type")
    if ctype not in CHECK_TYPES:
        ctx.err(p + ("type",), f"must be one of {', '.join(CHECK_TYPES)}, got {ctype!r}")
        return None
    # only keys a check reads are accepted: anything else is an error, never ignored
    common = ("type", "name") + (() if ctype == "bandwidth" else ("expect",))
    if ctype in ("service", "policy"):
        from ..features.k8s import check_params
        targets = set(nodes) | set(pods) | ({"ext"} if external else set()) | ({"dns"} if dns.enabled else set())
        params, name = check_params(ctx, c, p, ctype, _Obj(ctx, c, p, common + _k8s_check_keys(ctype)),
                                    pods, nodes, targets, k8s)
        return Check(ctype, j, name, params) if params is not None else None
    per = {
        "reach": ("from", "to", "proto", "port", "count", "timeout", "listen", "size", "family"),
        "mtu": ("from", "to", "min", "max", "timeout", "family"),
        "dns": ("pod", "query", "timeout", "lookup"),
        "port": ("from", "pod", "hostPort", "proto", "timeout", "family"),
        "bandwidth": ("from", "to", "rate", "tolerance", "seconds"),
        "capture": ("at", "filter", "run", "in", "timeout", "count"),
        "bgp": ("node", "peers", "learned", "timeout"),
        "throughput": ("from", "to", "streams", "seconds"),
    }[ctype]
    if ctype == "bandwidth" and "expect" in c:
        ctx.err(p + ("expect",), "a bandwidth check takes no expect: it passes when the measured rate is "
                "within tolerance of rate (give rate and tolerance)")
        c = {k: v for k, v in c.items() if k != "expect"}
    o = _Obj(ctx, c, p, common + per)
    targets = set(nodes) | set(pods) | ({"ext"} if external else set()) | ({"dns"} if dns.enabled else set())

    def target(key, required=True, kinds=targets, default=None):
        v = o.get(key, str, default, required=required)
        if v is not None and v not in kinds:
            ctx.err(p + (key,), f"unknown target {v!r}: {_TARGET_HELP}")
        return v

    def podref(key, required=True, need_ip=False):
        v = o.get(key, str, None, required=required)
        if v is not None:
            if v not in pods:
                ctx.err(p + (key,), f"unknown pod {v!r}")
            elif need_ip and pods[v].mode in ("none",):
                ctx.err(p + (key,), f"pod {v} (mode none) has no address")
        return v

    params: dict[str, Any] = {}
    name = o.get("name", str, None)
    exp = c.get("expect")
    if "family" in per:     # IPv4 or IPv6 (reach: both by default, where both exist)
        params["family"] = o.get("family", int, None, check=lambda v: None if v in (4, 6) else f"must be 4 or 6, got {v!r}")
    if ctype == "reach":
        params["from"] = target("from")
        params["to"] = target("to")
        params["proto"] = o.get("proto", str, "icmp", check=lambda v: None if v in PROTOS else f"must be icmp, tcp or udp, got {v!r}")
        params["port"] = o.int("port", 8080 if params["proto"] != "icmp" else None, 1, 65535)
        params["count"] = o.int("count", 1, 1, 1000)
        params["timeout"] = o.int("timeout", 2, 1, 30)
        params["listen"] = o.get("listen", bool, True)
        params["size"] = o.int("size", None, 0, 65000)
        if exp is None:
            exp = "pass"
        if isinstance(exp, dict):
            exp = _loss_expect(ctx, exp, p + ("expect",), params)
        elif exp not in ("pass", "fail"):
            ctx.err(p + ("expect",), f"must be pass, fail or {{loss: PERCENT, tolerance: PERCENT}}, got {exp!r}")
        if params["size"] is not None and params["proto"] != "icmp":
            ctx.err(p + ("size",), "size is the ICMP data size (like ping -s): only with proto icmp")
        params["expect"] = exp
        if params["to"] in pods and pods[params["to"]].mode == "none" and exp == "pass":
            ctx.err(p + ("to",), f"pod {params['to']} (mode none) has no address to reach")
        name = name or (f"reach {params['from']} -> {params['to']} {params['proto']}"
                        + (f" IPv{params['family']}" if params.get("family") else ""))
    elif ctype == "mtu":
        params["from"] = podref("from")
        params["to"] = target("to")
        params["min"] = o.int("min", None, 68, 9000)      # default: 1200, or 1280 (the IPv6 minimum) over IPv6
        if params.get("family") == 6 and params["min"] is not None and params["min"] < 1280:
            ctx.err(p + ("min",), "IPv6 links have an MTU of at least 1280: min below it probes nothing")
        params["max"] = o.int("max", 1500, 68, 9000)
        params["timeout"] = o.int("timeout", 1, 1, 10)
        eo = _Obj(ctx, exp, p + ("expect",), ("mtu", "blackhole"))
        params["expect"] = {"mtu": eo.int("mtu", None, 1280 if params.get("family") == 6 else 68, 9000,
                                          required=True),
                            "blackhole": eo.get("blackhole", bool, False)}
        name = name or f"mtu {params['from']} -> {params['to']}"
    elif ctype == "dns":
        params["pod"] = podref("pod")
        params["query"] = o.get("query", str, None, required=True, check=_dns_name)
        params["timeout"] = o.int("timeout", 5, 1, 30)
        params["lookup"] = o.get("lookup", str, "ahostsv4", check=lambda v: None if v in ("ahostsv4", "ahostsv6", "ahosts")
                                 else f"must be ahostsv4 (A only), ahostsv6 (AAAA only) or ahosts (both), got {v!r}")
        eo = _Obj(ctx, exp, p + ("expect",), ("queries", "count", "answer", "sequence", "sending", "unanswered"))
        qs = eo.get("queries", list, None)

        def typed(key):
            v = eo.get(key, list, None)
            if v is None:
                return None
            out = []
            for j, x in enumerate(v):
                parts = str(x).split()
                if len(parts) != 2 or parts[0] not in ("A", "AAAA"):
                    ctx.err(p + ("expect", key, j), f"must be 'A NAME' or 'AAAA NAME', got {x!r}")
                    continue
                out.append(f"{parts[0]} {parts[1].rstrip('.')}")
            return out
        params["expect"] = {"queries": [str(q).rstrip(".") for q in qs] if qs is not None else None,
                            "count": eo.int("count", None, 0, 50),
                            "answer": eo.get("answer", str, None, check=lambda v: None if v == "none" else _ip(v)),
                            "sequence": typed("sequence"),
                            "sending": eo.get("sending", str, None, check=lambda v: None if v in (
                                "parallel", "single-request", "single-request-reopen") else
                                f"must be parallel, single-request or single-request-reopen, got {v!r}"),
                            "unanswered": typed("unanswered")}
        if params["expect"]["sending"] and params["lookup"] != "ahosts":
            ctx.err(p + ("expect", "sending"), "only lookup: ahosts sends A and AAAA queries")
        if all(v is None for v in params["expect"].values()):
            ctx.err(p + ("expect",), "give at least one of queries, count, answer, sequence, sending, unanswered")
        if params["pod"] in pods and not dns.enabled and not pods[params["pod"]].dns.nameservers:
            ctx.err(p + ("pod",), "the lab has no DNS server (dns.enabled is false)")
        name = name or f"dns {params['pod']} {params['query']}"
    elif ctype == "port":
        params["from"] = target("from", required=False, default="ext")
        params["pod"] = podref("pod")
        params["hostPort"] = o.int("hostPort", None, 1, 65535, required=True)
        params["proto"] = o.get("proto", str, "tcp", check=lambda v: None if v in ("tcp", "udp") else f"must be tcp or udp, got {v!r}")
        params["timeout"] = o.int("timeout", 3, 1, 30)
        pod = pods.get(params["pod"])
        if pod and params["hostPort"] and not any(pm.host_port == params["hostPort"] and pm.protocol == params["proto"] for pm in pod.ports):
            ctx.err(p + ("hostPort",), f"pod {pod.name} has no {params['proto']} mapping for host port {params['hostPort']}")
        if exp is None:
            exp = "pass"
        if exp not in ("pass", "fail"):
            ctx.err(p + ("expect",), f"must be pass or fail, got {exp!r}")
        params["expect"] = exp
        name = name or f"port {params['from']} -> {params['pod']} via hostPort {params['hostPort']}/{params['proto']}"
    elif ctype == "bandwidth":
        params["from"] = podref("from")
        params["to"] = podref("to")
        params["seconds"] = o.int("seconds", 2, 1, 30)
        try:
            params["rate"] = parse_rate(c["rate"]) if c.get("rate") is not None else None
        except ValueError as e:
            ctx.err(p + ("rate",), str(e))
        tol = o.get("tolerance", (float, int), 0.15, check=lambda v: None if 0 < v < 1 else "must be between 0 and 1 (a fraction)")
        params["tolerance"] = float(tol)
        if params.get("rate") is None:
            # the limit of the shaped end: ingress of the receiver, else egress of the sender
            rcv, snd = pods.get(params["to"]), pods.get(params["from"])
            lim = min([x for x in ((rcv.bandwidth.ingress_rate if rcv and rcv.bandwidth else 0),
                                  (snd.bandwidth.egress_rate if snd and snd.bandwidth else 0)) if x] or [0])
            if not lim and rcv and snd:
                ctx.err(p + ("rate",), f"neither {snd.name} (egress) nor {rcv.name} (ingress) is shaped: give rate")
            params["rate"] = lim
        name = name or f"bandwidth {params['from']} -> {params['to']}"
    elif ctype == "throughput":          # netlab/checks/throughput.py
        params["from"] = podref("from", need_ip=True)
        params["to"] = podref("to", need_ip=True)
        params["streams"] = o.int("streams", 1, 1, 32)
        params["seconds"] = o.int("seconds", 3, 1, 60)
        params["min"] = 0
        if exp is not None:
            eo = _Obj(ctx, exp, p + ("expect",), ("min",))
            m = eo.get("min", (str, int), None, required=True)
            try:
                params["min"] = parse_rate(m[:-2] if isinstance(m, str) and m.endswith("/s") else m)
            except ValueError as e:
                ctx.err(p + ("expect", "min"), str(e).replace("10mbit", "'100 Mbit/s'"))
        params["expect"] = "measured"
        name = name or (f"throughput {params['from']} -> {params['to']}"
                        + (f" x{params['streams']}" if params["streams"] > 1 else ""))
    elif ctype == "capture":
        on = o.get("at", str, None, required=True)
        if on is not None:
            tgt = on.split(":", 1)[0]
            if tgt not in targets and tgt != "underlay":
                ctx.err(p + ("at",), f"unknown target {tgt!r}: 'underlay', {_TARGET_HELP}, optionally :IFACE")
        params["at"] = on
        params["filter"] = o.get("filter", str, "")
        params["in"] = target("in", required=False, default=None)
        run = o.get("run", (str, list), None, required=True)
        params["run"] = run.split() if isinstance(run, str) else [str(x) for x in (run or [])]
        if run is not None and params["in"] is None:
            ctx.err(p + ("in",), "is required with run: where the command runs")
        params["timeout"] = o.int("timeout", 10, 1, 60)
        params["count"] = o.int("count", 200, 1, 100000)
        # one expectation, or a list that must all hold: e.g. "VXLAN carried the pings"
        # (min >= 1: the evidence) and "none of it was ARP" (max: 0) in the same capture
        exps = exp if isinstance(exp, list) and exp else [exp]
        params["expect"] = []
        for k, one in enumerate(exps):
            ep = p + (("expect", k) if isinstance(exp, list) else ("expect",))
            eo = _Obj(ctx, one, ep, ("layer", "fields", "min", "max"))
            mx = eo.int("max", None, 0)
            e1 = {"layer": eo.get("layer", str, None), "fields": eo.get("fields", dict, {}),
                  "min": eo.int("min", 1 if mx is None else 0, 0), "max": mx}   # max alone: 0..max
            if e1["min"] == 0 and e1["max"] is None:
                ctx.err(ep + ("min",), "min: 0 without max accepts any capture, so the check could never "
                        "fail: give min >= 1, or max (e.g. max: 0 for 'no such packet')")
            params["expect"].append(e1)
        if not isinstance(exp, list):
            params["expect"] = params["expect"][0]
        name = name or f"capture at {on}"
    elif ctype == "bgp":
        from ..features.bgp import check_params
        params = check_params(o, ctx.err, nodes, exp)
        name = name or f"bgp on {params['node']}"
    return Check(ctype, j, name, params)
