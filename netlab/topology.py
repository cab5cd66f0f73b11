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

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
LAB_NAME_MAX = 20
ITEM_NAME_MAX = 20
CHECK_TYPES = ("reach", "mtu", "dns", "port", "bandwidth", "capture", "service", "policy", "bgp", "throughput")
NETWORK_TYPES = ("bridge", "overlay", "routed")   # routed: see netlab/bgp.py
IPAM_TYPES = ("host-local", "dhcp")
POD_MODES = ("bridge", "overlay", "host", "none")  # + container:<pod>
PROTOS = ("icmp", "tcp", "udp")
RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(bit|bps)?\s*$", re.I)
_MULT = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


class TopologyError(Exception):
    """Every problem found in a topology file; ``.errors`` is a list of strings."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(f"{len(errors)} error(s) in topology:\n  " + "\n  ".join(errors))
        self.errors = errors


# --------------------------------------------------------------------------- model

@dataclass
class Underlay:
    subnet: ipaddress.IPv4Network
    mtu: int = 1500
    switch_address: str | None = None
    impair: dict[str, dict] = field(default_factory=dict)   # node/ext/dns -> impairment of its switch port


@dataclass
class Node:
    name: str
    index: int
    address: str
    mtu: int
    impair: dict | None = None   # impairment of the node's uplink (netlab/impair.py)


@dataclass
class Network:
    name: str
    index: int
    type: str                   # bridge | overlay
    subnet: ipaddress.IPv4Network
    node_prefix: int            # each node gets one /node_prefix slice of subnet
    mtu: int | None = None
    vni: int = 0
    port: int = 4789
    conflist: dict | None = None    # user template (inline or from file); None = generated
    source: str = ""                # where the conflist came from
    routing: str = "static"         # static (netlab writes node routes) | bgp (BIRD learns them)
    ipam: str = "host-local"        # host-local | dhcp (netlab/dhcp.py runs server + daemon)


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
    impair: dict | None = None   # impairment of the pod's interface (netlab/impair.py)
    labels: dict[str, str] = field(default_factory=dict)          # Kubernetes pod labels
    container_ports: list = field(default_factory=list)           # services.ContainerPort


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
    k8s: Any = None          # k8s.K8s: Services, namespaces, NetworkPolicies (netlab/k8s.py)
    bgp: Any = None          # netlab.bgp.BGPConfig when the lab has BGP-routed networks

    def pod_netns_owner(self, pod: str) -> str:
        """The pod whose namespace ``pod`` lives in (itself, or its container: target)."""
        seen = set()
        p = self.pods[pod]
        while p.mode == "container" and p.container_of and p.name not in seen:
            seen.add(p.name)
            p = self.pods[p.container_of]
        return p.name


# --------------------------------------------------------------------------- parsing helpers

def parse_rate(v: Any) -> int:
    """'10mbit', '1.5Gbit', '500k', 10000000 -> bits per second."""
    if isinstance(v, bool):
        raise ValueError("must be a rate like 10mbit or an integer (bit/s)")
    if isinstance(v, int):
        if v < 0:
            raise ValueError("must not be negative")
        return v
    if isinstance(v, str):
        m = RATE_RE.match(v)
        if m:
            n = float(m.group(1)) * _MULT[m.group(2).lower()]
            if (m.group(3) or "").lower() == "bps":
                n *= 8
            return int(n)
    raise ValueError(f"must be a rate like 10mbit or an integer (bit/s), got {v!r}")


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
            "serviceCIDR", "services", "namespaces", "networkPolicies")   # netlab/k8s.py   # scenario: broken-on-purpose labs, validated by netlab/scenario.py


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
    subnet_s = u.get("subnet", str, "192.168.100.0/24", check=_net4)
    usub = ipaddress.IPv4Network(subnet_s)
    if usub.prefixlen > 28:
        ctx.err(("underlay", "subnet"), f"{subnet_s} is too small for a lab (at most /28)")
    umtu = u.int("mtu", 1500, 576, 9000)
    sw_addr = u.get("switchAddress", str, None, check=_ip4)
    underlay = Underlay(usub, umtu, sw_addr)
    used_addrs: dict[str, tuple] = {}

    def claim(addr: str, where: tuple) -> None:
        if addr in used_addrs:
            ctx.err(where, f"address {addr} is already used at {'.'.join(map(str, used_addrs[addr]))}")
        used_addrs[addr] = where
        a = ipaddress.IPv4Address(addr)
        if a not in usub:
            ctx.err(where, f"address {addr} is not in the underlay subnet {usub}")
        elif a in (usub.network_address, usub.broadcast_address):
            ctx.err(where, f"address {addr} is the network or broadcast address of {usub}")

    hosts = list(usub.hosts())

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
        o = _Obj(ctx, nspec if nspec is not None else {}, p, ("address", "mtu", "impair"))
        default_addr = str(hosts[10 + i]) if len(hosts) > 10 + i else None
        addr = o.get("address", str, default_addr, check=_ip4)
        if addr is None:
            ctx.err(p + ("address",), "no default address left in the underlay subnet: give one")
            continue
        claim(addr, p + ("address",))
        nodes[nname] = Node(nname, i, addr, o.int("mtu", umtu, 576, 9000), _impair(ctx, o, p))

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
        o = _Obj(ctx, wspec, p, ("type", "subnet", "nodePrefix", "mtu", "vni", "port", "conflist", "file", "routing", "ipam"))
        wtype = o.get("type", str, "bridge", check=lambda v: None if v in NETWORK_TYPES else f"must be one of {', '.join(NETWORK_TYPES)}, got {v!r}")
        wsub_s = o.get("subnet", str, None, required=True, check=_net4)
        wsub = ipaddress.IPv4Network(wsub_s) if wsub_s else None
        default_prefix = (24 if wtype in ("bridge", "routed") else (wsub.prefixlen + 2 if wsub else 26)) if wsub else 24
        if wsub and wtype in ("bridge", "routed") and wsub.prefixlen >= 24:
            default_prefix = min(wsub.prefixlen + 4, 28)
        nprefix = o.int("nodePrefix", default_prefix, 8, 29)
        if wsub and nprefix is not None:
            if nprefix < wsub.prefixlen:
                ctx.err(p + ("nodePrefix",), f"/{nprefix} is larger than the subnet {wsub}")
            elif 2 ** (nprefix - wsub.prefixlen) < len(nodes):
                ctx.err(p + ("nodePrefix",), f"{wsub} has room for {2 ** (nprefix - wsub.prefixlen)} slices of /{nprefix}, the lab has {len(nodes)} nodes")
        if wsub and not wsub.is_private:
            ctx.err(p + ("subnet",), f"{wsub} is not a private range: lab traffic must stay on this machine")
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
        for other in networks.values():
            if wsub and other.subnet.overlaps(wsub):
                ctx.err(p + ("subnet",), f"{wsub} overlaps network {other.name} ({other.subnet})")
        if wsub and wsub.overlaps(usub):
            ctx.err(p + ("subnet",), f"{wsub} overlaps the underlay {usub}")
        routing = _routing(ctx, o, wtype)
        wipam = o.get("ipam", str, "host-local", check=lambda v: None if v in IPAM_TYPES else f"must be one of {', '.join(IPAM_TYPES)}, got {v!r}")
        if wipam == "dhcp" and wtype != "bridge":
            ctx.err(p + ("ipam",), f"ipam dhcp needs a bridge network (a DHCP server per node segment), not {wtype}")
        if wsub is not None and nprefix is not None:
            networks[wname] = Network(wname, i, wtype, wsub, nprefix, mtu, vni or 0, port or 4789,
                                      copy.deepcopy(conflist) if conflist is not None else None, source,
                                      routing or "static", wipam or "host-local")
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
        dns.address = d.get("address", str, str(hosts[1]) if len(hosts) > 2 else None, check=_ip4)
        if dns.address:
            claim(dns.address, ("dns", "address"))
    recs = d.get("records", (list, dict), [])
    if isinstance(recs, dict):
        recs = [{"name": k, "address": v} for k, v in recs.items()]
    for j, r in enumerate(recs):
        ro = _Obj(ctx, r, ("dns", "records", j), ("name", "address"))
        rn = ro.get("name", str, None, required=True, check=_dns_name)
        ra = ro.get("address", str, None, required=True, check=_ip4)
        if rn and ra:
            dns.records.append(Record(rn.rstrip("."), ra))
    if sw_addr:
        claim(sw_addr, ("underlay", "switchAddress"))
    if external:
        ext_default = str(hosts[2]) if len(hosts) > 3 else None
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
        ip = o.get("ip", str, None, check=_ip4)
        if ip and net in networks and networks[net].ipam == "dhcp":
            ctx.err(p + ("ip",), f"network {net} leases addresses by DHCP: a pod cannot ask for {ip}")
        elif ip and net in networks:
            w = networks[net]
            a = ipaddress.IPv4Address(ip)
            if node in nodes:
                sl = node_slice(w, nodes[node].index)
                if a not in sl:
                    ctx.err(p + ("ip",), f"{ip} is not in node {node}'s slice {sl} of network {net}")
                elif a in (sl.network_address, sl.broadcast_address, gateway(w, nodes[node].index)):
                    ctx.err(p + ("ip",), f"{ip} is reserved (network, broadcast or gateway address) in {sl}")
            if ip in pod_ips:
                ctx.err(p + ("ip",), f"{ip} is already requested by pod {pod_ips[ip]}")
            pod_ips[ip] = pname
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
                if not isinstance(a, str) or _ip4(a):
                    ctx.err(p + ("dns", "nameservers", j), f"{a!r} is not an IPv4 address")
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
                          _impair(ctx, o, p))
        if pods[pname].impair and mode not in ("bridge", "overlay"):
            ctx.err(p + ("impair",), f"a pod in mode {mode} has no interface of its own to impair")
        from .services import parse_container_ports, parse_labels
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

    from .k8s import parse as _parse_k8s      # Services, namespaces, NetworkPolicies
    k8s = _parse_k8s(ctx, data, pods, list(networks.values()), underlay, _Obj)

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


def _k8s_check_keys(ctype: str) -> tuple[str, ...]:
    from .k8s import CHECK_KEYS
    return CHECK_KEYS[ctype]


def _impair(ctx: _Ctx, o: _Obj, path: tuple, key: str | None = "impair") -> dict | None:
    """An ``impair`` mapping, validated by netlab/impair.py; stored as its plain dict."""
    if not o.has("impair"):
        return None
    from .impair import parse
    imp, errs = parse(o.data["impair"])
    where = path + ((key,) if key else ())
    for k, msg in errs:
        ctx.err(where + ((k,) if k else ()), msg)
    return None if errs else imp.to_dict()


def _loss_expect(ctx: _Ctx, exp: dict, path: tuple, params: dict) -> dict:
    """reach ``expect: {loss: 5%, tolerance: 3%}``: the share of probes that go unanswered."""
    from .impair import parse_percent
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
    from .bgp import ROUTING_KINDS
    routing = o.get("routing", str, "bgp" if wtype == "routed" else "static",
                    check=lambda v: None if v in ROUTING_KINDS else f"must be one of {', '.join(ROUTING_KINDS)}, got {v!r}")
    if routing == "bgp" and wtype == "overlay":
        ctx.err(o.path + ("routing",), "an overlay network is not routed between nodes (routing bgp needs type routed or bridge)")
    return routing


def _bgp(ctx: _Ctx, data: dict, nodes: dict, networks: dict):
    """The top-level ``bgp`` key (netlab/bgp.py); a default when a network routes by BGP."""
    from . import bgp
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


def default_burst(rate: int) -> int:
    """Bits of burst for a rate: 25 ms worth, at least 12000 bytes (bits *8)."""
    if not rate:
        return 0
    return max(rate // 40, 12000 * 8)


def node_slice(w: Network, node_index: int) -> ipaddress.IPv4Network:
    if w.node_prefix <= w.subnet.prefixlen:
        return w.subnet
    # arithmetic, not list(subnets())[i]: a /16 cut into /24s built 256 objects per call
    if not 0 <= node_index < 1 << (w.node_prefix - w.subnet.prefixlen):
        raise IndexError(f"node slice {node_index} is outside {w.subnet} cut into /{w.node_prefix}")
    size = 1 << (w.subnet.max_prefixlen - w.node_prefix)
    return ipaddress.ip_network((int(w.subnet.network_address) + node_index * size, w.node_prefix))


def gateway(w: Network, node_index: int) -> ipaddress.IPv4Address:
    """The node's address on this network (bridge/VXLAN bridge), first of its slice."""
    return node_slice(w, node_index).network_address + 1


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
        from .k8s import check_params
        targets = set(nodes) | set(pods) | ({"ext"} if external else set()) | ({"dns"} if dns.enabled else set())
        params, name = check_params(ctx, c, p, ctype, _Obj(ctx, c, p, common + _k8s_check_keys(ctype)),
                                    pods, nodes, targets, k8s)
        return Check(ctype, j, name, params) if params is not None else None
    per = {
        "reach": ("from", "to", "proto", "port", "count", "timeout", "listen", "size"),
        "mtu": ("from", "to", "min", "max", "timeout"),
        "dns": ("pod", "query", "timeout"),
        "port": ("from", "pod", "hostPort", "proto", "timeout"),
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
        name = name or f"reach {params['from']} -> {params['to']} {params['proto']}"
    elif ctype == "mtu":
        params["from"] = podref("from")
        params["to"] = target("to")
        params["min"] = o.int("min", 1200, 68, 9000)
        params["max"] = o.int("max", 1500, 68, 9000)
        params["timeout"] = o.int("timeout", 1, 1, 10)
        eo = _Obj(ctx, exp, p + ("expect",), ("mtu", "blackhole"))
        params["expect"] = {"mtu": eo.int("mtu", None, 68, 9000, required=True),
                            "blackhole": eo.get("blackhole", bool, False)}
        name = name or f"mtu {params['from']} -> {params['to']}"
    elif ctype == "dns":
        params["pod"] = podref("pod")
        params["query"] = o.get("query", str, None, required=True, check=_dns_name)
        params["timeout"] = o.int("timeout", 5, 1, 30)
        eo = _Obj(ctx, exp, p + ("expect",), ("queries", "count", "answer"))
        qs = eo.get("queries", list, None)
        params["expect"] = {"queries": [str(q).rstrip(".") for q in qs] if qs is not None else None,
                            "count": eo.int("count", None, 0, 50),
                            "answer": eo.get("answer", str, None, check=lambda v: None if v == "none" else _ip4(v))}
        if qs is None and params["expect"]["count"] is None and params["expect"]["answer"] is None:
            ctx.err(p + ("expect",), "give at least one of queries, count, answer")
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
        eo = _Obj(ctx, exp, p + ("expect",), ("layer", "fields", "min", "max"))
        params["expect"] = {"layer": eo.get("layer", str, None),
                            "fields": eo.get("fields", dict, {}),
                            "min": eo.int("min", 1, 0),
                            "max": eo.int("max", None, 0)}
        if params["expect"]["min"] == 0 and params["expect"]["max"] is None:
            ctx.err(p + ("expect", "min"), "min: 0 without max accepts any capture, so the check could never "
                    "fail: give min >= 1, or max (e.g. max: 0 for 'no such packet')")
        name = name or f"capture at {on}"
    elif ctype == "bgp":
        from .bgp import check_params
        params = check_params(o, ctx.err, nodes, exp)
        name = name or f"bgp on {params['node']}"
    return Check(ctype, j, name, params)
