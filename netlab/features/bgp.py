"""BGP-routed pod networks (Calico-style): one BIRD per node namespace.

A network with ``routing: bgp`` (the default of ``type: routed``) gets no
static routes between nodes. Instead every node runs BIRD 2 in its own
namespace; it announces the node's pod slices over iBGP on the underlay (full
mesh, or through one route reflector) and installs what it learns into the
node's kernel table (``proto bird``). See ADR 0024.

IPv6 (ADR 0035): a network with an IPv6 subnet has each node announce its IPv6
slice too, over one IPv6 session per peer (protocol ``peer6_N``, channel
``ipv6``) between the nodes' IPv6 underlay addresses, next to the IPv4 session
``peer_N`` on a dual-stack underlay, alone on an IPv6-only one, the way Calico
runs ``bird6`` next to ``bird``.

Pure parts (schema, config rendering, ``birdc`` output parsing) are unit-
tested without root; ``start`` runs the daemon and is used by the builder,
``sessions``/``learned`` by the ``bgp`` check and by ``netlab trace``.

Files of node N, all in the lab directory (removed with it)::

    bgp/N/bird.conf   bird.ctl (control socket)   bird.pid   bird.log   bird.out
"""
from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from dataclasses import dataclass, field
from typing import Any, Callable

DEFAULT_ASN = 64512
MESH_KINDS = ("full", "reflector")
ROUTING_KINDS = ("static", "bgp")
BGP_KEYS = ("asn", "mesh", "reflector", "nodes")
NODE_KEYS = ("asn", "exportDeny")
BIRD = "bird"
BIRDC = "birdc"


class BGPError(Exception):
    pass


# --------------------------------------------------------------------------- model

@dataclass
class NodeBGP:
    """Per-node settings; mostly for broken-on-purpose scenarios."""
    asn: int | None = None                              # None = the lab's ASN
    export_deny: list[str] = field(default_factory=list)   # prefixes (either family) this node must not announce


@dataclass
class BGPConfig:
    asn: int = DEFAULT_ASN
    mesh: str = "full"                 # full | reflector
    reflector: str | None = None       # node name, with mesh: reflector
    nodes: dict[str, NodeBGP] = field(default_factory=dict)

    def node(self, name: str) -> NodeBGP:
        return self.nodes.get(name) or NodeBGP()

    def local_asn(self, name: str) -> int:
        return self.node(name).asn or self.asn

    def peers_of(self, name: str, all_nodes: list[str]) -> list[str]:
        """Nodes this node opens a session with."""
        others = [n for n in all_nodes if n != name]
        if self.mesh == "reflector":
            return others if name == self.reflector else [self.reflector] if self.reflector else []
        return others


def parse(o, ctx_err: Callable[[tuple, str], None], nodes: dict) -> BGPConfig:
    """The top-level ``bgp`` key, read with topology's typed reader ``o`` (an _Obj)."""
    cfg = BGPConfig()
    cfg.asn = o.int("asn", DEFAULT_ASN, 1, 4294967295)
    cfg.mesh = o.get("mesh", str, "full",
                     check=lambda v: None if v in MESH_KINDS else f"must be one of {', '.join(MESH_KINDS)}, got {v!r}")
    cfg.reflector = o.get("reflector", str, None)
    if cfg.mesh == "reflector" and cfg.reflector is None:
        ctx_err(o.path + ("reflector",), "is required with mesh: reflector (the node all others peer with)")
    if cfg.reflector is not None:
        if cfg.mesh != "reflector":
            ctx_err(o.path + ("reflector",), "only with mesh: reflector")
        elif cfg.reflector not in nodes:
            ctx_err(o.path + ("reflector",), f"unknown node {cfg.reflector!r} (nodes: {', '.join(nodes)})")
    raw = o.get("nodes", dict, {})
    for nname, spec in raw.items():
        p = o.path + ("nodes", nname)
        if nname not in nodes:
            ctx_err(p, f"unknown node {nname!r} (nodes: {', '.join(nodes)})")
            continue
        no = type(o)(o.ctx, spec, p, NODE_KEYS)
        asn = no.int("asn", None, 1, 4294967295)
        deny = no.get("exportDeny", list, [])
        good = []
        for j, d in enumerate(deny):
            try:
                good.append(str(ipaddress.ip_network(d, strict=True)))
            except (ValueError, TypeError) as e:
                ctx_err(p + ("exportDeny", j), f"{d!r} is not an IPv4 or IPv6 prefix ({e})")
        cfg.nodes[nname] = NodeBGP(asn, good)
    return cfg


# --------------------------------------------------------------------------- rendering

def files(lab_dir: str, node: str) -> dict[str, str]:
    d = os.path.join(lab_dir, "bgp", node)
    return {"dir": d, "conf": os.path.join(d, "bird.conf"), "socket": os.path.join(d, "bird.ctl"),
            "pid": os.path.join(d, "bird.pid"), "log": os.path.join(d, "bird.log"),
            "out": os.path.join(d, "bird.out")}


def proto_name(node: str, family: int = 4) -> str:
    """BIRD protocol name of the session with ``node`` (an identifier): ``peer_N``
    for the IPv4 session, ``peer6_N`` for the IPv6 one."""
    return ("peer_" if family == 4 else "peer6_") + re.sub(r"[^A-Za-z0-9_]", "_", node)


def family_of_proto(name: str) -> int:
    """The family of a session protocol named by ``proto_name``."""
    return 6 if name.startswith("peer6_") else 4


def family_of(prefix: str) -> int:
    """4 or 6: the family of a prefix or address."""
    return ipaddress.ip_network(prefix, strict=False).version


# per family: static protocol, kernel protocol, export filter, session template, channel
# (the IPv4 kernel protocol stays unnamed, BIRD calls it kernel1, as before IPv6 came)
_NAMES = {4: ("pods", "", "announce", "underlay", "ipv4"),
          6: ("pods6", "kernel6", "announce6", "underlay6", "ipv6")}


def render_config(*, lab: str, node: str, router_id: str, announce: list[str], cfg: BGPConfig,
                  peers: dict[str, dict[int, tuple[str, int]]], log_path: str,
                  reflector_clients: bool = False) -> str:
    """bird.conf for one node. ``announce``: its pod slices (either family); ``peers``:
    node -> {family: (its underlay address of that family, its ASN as we expect it)},
    one BGP session per entry. A family gets its static, kernel, filter and template
    blocks only when it has something to announce or a session."""
    deny = cfg.node(node).export_deny
    asn = cfg.local_asn(node)
    fams = sorted({family_of(p) for p in announce} | {f for by in peers.values() for f in by})
    lines = [f"# netlab lab {lab}, node {node}: written by netlab (netlab/features/bgp.py), do not edit",
             f'log "{log_path}" all;',
             f"router id {router_id};",
             "",
             "protocol device { scan time 2; }"]
    for fam in fams:
        static, kernel, filt, _, chan = _NAMES[fam]
        lines += ["",
                  f"# this node's IPv{fam} pod slices: originated here, never installed into the kernel",
                  f"protocol static {static} {{", f"  {chan};"]
        lines += [f"  route {p} unreachable;" for p in announce if family_of(p) == fam]
        lines += ["}", "",
                  f"# learned IPv{fam} routes go to the kernel (ip -{fam} route ... proto bird); nothing is read from it",
                  f"protocol kernel {kernel + ' ' if kernel else ''}{{",
                  f"  {chan} {{ import none; export where source = RTS_BGP; }};",
                  "}", "",
                  f"filter {filt} {{"]
        mine = [d for d in deny if family_of(d) == fam]
        if mine:
            lines.append(f"  if net ~ [ {', '.join(mine)} ] then reject;   # bgp.nodes.{node}.exportDeny")
        lines += ["  if source = RTS_STATIC || source = RTS_BGP then accept;", "  reject;", "}"]
    for fam in fams:
        if not any(fam in by for by in peers.values()):
            continue
        _, _, filt, tmpl, chan = _NAMES[fam]
        lines += ["", f"template bgp {tmpl} {{",
                  f"  local as {asn};",
                  "  direct;",
                  "  hold time 6;",
                  "  connect retry time 1;",
                  "  connect delay time 1;",
                  "  error wait time 1, 10;"]
        if reflector_clients:
            lines.append("  rr client;")
        # IPv6: the kernel route goes via the peer's global address, not the link-local
        # one BIRD also receives on a shared segment (so it names the node, as IPv4 does)
        extra = " next hop prefer global;" if fam == 6 else ""
        lines += [f"  {chan} {{ import all; export filter {filt}; gateway direct;{extra} }};", "}"]
    lines.append("")
    for peer, by in peers.items():
        for fam in sorted(by):
            addr, pasn = by[fam]
            lines.append(f"protocol bgp {proto_name(peer, fam)} from {_NAMES[fam][3]} "
                         f"{{ neighbor {addr} as {pasn}; }}   # node {peer}")
    return "\n".join(lines) + "\n"


def families(topo) -> list[int]:
    """Families of the BGP-routed pod subnets: one session per peer and family (a
    bridge/routed network's families are on the underlay, topology checks that)."""
    return sorted({net.version for w in topo.networks.values() if w.routing == "bgp" for net in w.subnets})


def announced(topo, node: str) -> list[str]:
    """Pod slices ``node`` announces: one per network with routing bgp and family."""
    from ..base.units import node_slice
    n = topo.nodes[node]
    return [str(node_slice(w, n.index, net.version)) for w in topo.networks.values() if w.routing == "bgp"
            for net in w.subnets]


def router_id(topo, node: str) -> str:
    """The node's IPv4 underlay address; on an IPv6-only underlay a 32-bit id made
    from its index (BGP router ids are 32 bits whatever the families)."""
    n = topo.nodes[node]
    return n.address_of(4) or str(ipaddress.IPv4Address(0x0A000000 + n.index + 1))


def enabled(topo) -> bool:
    return any(w.routing == "bgp" for w in topo.networks.values())


def plan_steps(topo, lab_dir: str, node_ns: Callable[[str, str], str], Step: Callable[..., Any]) -> list:
    """One ``bgp`` step per node (after every uplink exists); ``Step`` is the plan's step type."""
    if not enabled(topo):
        return []
    cfg = topo.bgp or BGPConfig()
    names = list(topo.nodes)
    fams = families(topo)
    steps = []
    for n in topo.nodes.values():
        f = files(lab_dir, n.name)
        peers = {p: {fam: (topo.nodes[p].address_of(fam), cfg.asn) for fam in fams if topo.nodes[p].address_of(fam)}
                 for p in cfg.peers_of(n.name, names)}
        ann = announced(topo, n.name)
        conf = render_config(lab=topo.name, node=n.name, router_id=router_id(topo, n.name), announce=ann,
                             cfg=cfg, peers=peers, log_path=f["log"],
                             reflector_clients=cfg.mesh == "reflector" and n.name == cfg.reflector)
        fam_txt = "" if fams == [4] else f", sessions IPv{' and IPv'.join(map(str, fams))}"
        steps.append(Step("bgp", f"{node_ns(topo.name, n.name)}: BIRD (AS {cfg.local_asn(n.name)}, "
                                 f"peers {', '.join(peers) or 'none'}{fam_txt}, announces {', '.join(ann)})",
                          {"ns": node_ns(topo.name, n.name), "node": n.name, "config": conf,
                           "files": f, "peers": {p: next(iter(by.values()))[0] for p, by in peers.items() if by},
                           "sessions": {proto_name(p, fam): a for p, by in peers.items() for fam, (a, _) in by.items()},
                           "announce": ann}))
    return steps


# --------------------------------------------------------------------------- running

def birdc(socket: str, *args: str, timeout: float = 5) -> subprocess.CompletedProcess:
    return subprocess.run([BIRDC, "-s", socket, *args], capture_output=True, text=True, timeout=timeout)


def start(ns: str, p: dict, record: Callable[..., dict],
          timeout: float = 10.0) -> int:
    """Write the config, check it, start ``bird -f`` in ``ns`` and wait for its socket.

    The process is recorded in the lab state (kind ``process``) so ``netlab down``
    stops exactly it, by pid and start time."""
    from ..base.proc import StartError, start_recorded
    f = p["files"]
    os.makedirs(f["dir"], exist_ok=True)
    with open(f["conf"], "w", encoding="utf-8") as fh:
        fh.write(p["config"])
    chk = subprocess.run([BIRD, "-p", "-c", f["conf"]], capture_output=True, text=True, timeout=10)
    if chk.returncode != 0:
        raise BGPError(f"{f['conf']}: {(chk.stderr or chk.stdout).strip()}")
    argv = [BIRD, "-f", "-c", f["conf"], "-s", f["socket"], "-P", f["pid"]]
    try:
        return start_recorded(ns, argv, f"bird {p['node']}", f["out"],
                              lambda pid: os.path.exists(f["socket"])
                              and birdc(f["socket"], "show", "status").returncode == 0,
                              record=lambda **kw: record("process", **kw), timeout=timeout,
                              extra={"node": p["node"], "bgp": True, "socket": f["socket"],
                                     "peers": p["peers"], "sessions": p.get("sessions", {}),
                                     "announce": p["announce"]})
    except StartError as e:
        raise BGPError(str(e)) from None


# --------------------------------------------------------------------------- observing

@dataclass
class Session:
    name: str          # BIRD protocol name
    state: str         # up | start | down ...
    info: str          # Established | Active | Idle ... plus the last error


def parse_protocols(text: str) -> dict[str, Session]:
    """``birdc show protocols`` -> BGP sessions by protocol name."""
    out = {}
    for ln in text.splitlines():
        parts = ln.split(None, 5)
        if len(parts) >= 4 and parts[1] == "BGP":
            info = " ".join(parts[5].split()) if len(parts) > 5 else ""
            out[parts[0]] = Session(parts[0], parts[3], info)
    return out


def sessions(socket: str) -> dict[str, Session]:
    r = birdc(socket, "show", "protocols")
    if r.returncode != 0:
        raise BGPError(f"birdc -s {socket} show protocols: {(r.stderr or r.stdout).strip() or 'failed'}")
    return parse_protocols(r.stdout)


def parse_routes(text: str, family: int = 4) -> dict[str, str | None]:
    """``ip [-6] route show proto bird`` -> prefix -> gateway."""
    out: dict[str, str | None] = {}
    for ln in text.splitlines():
        parts = ln.split()
        if not parts:
            continue
        dst = parts[0]
        if dst == "default":
            dst = "0.0.0.0/0" if family == 4 else "::/0"
        elif "/" not in dst:
            dst += "/32" if family == 4 else "/128"
        out[dst] = parts[parts.index("via") + 1] if "via" in parts else None
    return out


def learned(ns: str, families: tuple[int, ...] = (4, 6)) -> dict[str, str | None]:
    """Routes BIRD installed in the node namespace's kernel tables (both families)."""
    from ..base.namespaces import ipn
    out: dict[str, str | None] = {}
    for fam in families:
        args = ("route", "show", "proto", "bird") if fam == 4 else ("-6", "route", "show", "proto", "bird")
        out.update(parse_routes(ipn(ns, *args), fam))
    return out


_ROUTE_HEAD = re.compile(r"^(\S+/\d+)\s+(\S+\s+)?\[(\S+)\s")
_ROUTE_MORE = re.compile(r"^\s+(\S+\s+)?\[(\S+)\s")


def parse_bird_routes(text: str) -> dict[str, list[str]]:
    """``birdc show route`` -> BIRD protocol -> prefixes it brought into the tables
    (a session's entries are the prefixes learned from that peer)."""
    out: dict[str, list[str]] = {}
    prefix = None
    for ln in text.splitlines():
        m = _ROUTE_HEAD.match(ln)
        if m:
            prefix, proto = m.group(1), m.group(3)
        else:
            m = _ROUTE_MORE.match(ln)
            if not m or prefix is None:
                continue
            proto = m.group(2)
        out.setdefault(proto, [])
        if prefix not in out[proto]:
            out[proto].append(prefix)
    return out


def routes_by_protocol(socket: str) -> dict[str, list[str]]:
    r = birdc(socket, "show", "route")
    if r.returncode != 0:
        raise BGPError(f"birdc -s {socket} show route: {(r.stderr or r.stdout).strip() or 'failed'}")
    return parse_bird_routes(r.stdout)


def bird_records(st) -> list[dict]:
    """The BIRD daemons recorded in a lab's state (none for a lab without BGP)."""
    find = getattr(st, "find", None)
    return [r for r in find("process") if r.get("bgp")] if find else []


def peer_status(st) -> list[dict]:
    """For ``netlab status``: every BGP session of every BIRD in the lab, with its
    family, state and the prefixes learned from that peer (from ``birdc show
    protocols`` and ``show route``); a daemon that does not answer is one entry
    with the error."""
    out = []
    for r in bird_records(st):
        if r.get("removed"):
            continue
        try:
            ss = sessions(r["socket"])
            got = routes_by_protocol(r["socket"])
        except (BGPError, OSError, subprocess.SubprocessError) as e:
            out.append({"node": r.get("node"), "session": None, "error": str(e)})
            continue
        for name, s in ss.items():
            out.append({"node": r.get("node"), "session": name, "family": family_of_proto(name),
                        "state": s.state, "info": s.info, "prefixes": got.get(name, [])})
    return out


def missing_route_cause(st, ns: str, dst: str) -> list[str]:
    """For ``netlab trace``: when ``ns`` is a BGP node without a route to ``dst``,
    name the prefix that should have been learned, who announces it, and what
    the sessions say. Empty when BGP has nothing to do with it."""
    recs = bird_records(st)
    me = next((r for r in recs if r.get("ns") == ns), None)
    if me is None:
        return []
    try:
        a = ipaddress.ip_address(dst)
    except ValueError:
        return []
    owner = prefix = None
    for r in recs:
        for pfx in r.get("announce", []):
            net = ipaddress.ip_network(pfx)
            if net.version == a.version and a in net:
                owner, prefix = r, pfx
    if owner is None or owner is me:
        return []
    out = [f"no route to {prefix} on node {me['node']} (not learned via BGP): node {owner['node']} "
           f"should announce it (BIRD protocol static {_NAMES[a.version][0]})"]
    try:
        ss = sessions(me["socket"])
    except (BGPError, OSError, subprocess.SubprocessError) as e:
        return out + [f"BIRD on node {me['node']} does not answer: {e}"]
    # only the sessions of the destination's family carry its routes (peer_N IPv4, peer6_N IPv6)
    bad = [s for s in ss.values() if family_of_proto(s.name) == a.version and not s.info.startswith("Established")]
    for s in bad:
        out.append(f"BGP session {s.name} on node {me['node']} is not established: {s.state} {s.info}")
    if not bad:
        # the owner's session toward us, or toward the reflector it peers with
        via = me["node"] if me["node"] in owner.get("peers", {}) else next(iter(owner.get("peers", {})), me["node"])
        out.append(f"every {'IPv6 ' if a.version == 6 else ''}BGP session of node {me['node']} is Established, so node {owner['node']} "
                   f"(or a reflector) does not export {prefix}: check its export filter "
                   f"(birdc -s {owner['socket']} show route export {proto_name(via, a.version)})")
    return out


def check_params(o, ctx_err: Callable[[tuple, str], None], nodes: dict, exp: Any) -> dict:
    """Schema of a ``bgp`` check: node, peers and learned (node lists; default:
    every configured peer, every other node), timeout (seconds to wait for BGP
    to converge), expect pass|fail."""
    params: dict[str, Any] = {"node": o.get("node", str, None, required=True),
                              "timeout": o.int("timeout", 15, 1, 120)}
    if params["node"] is not None and params["node"] not in nodes:
        ctx_err(o.path + ("node",), f"unknown node {params['node']!r} (nodes: {', '.join(nodes)})")
    for key in ("peers", "learned"):
        v = o.get(key, list, None)
        if v is not None:
            for j, n in enumerate(v):
                if n not in nodes:
                    ctx_err(o.path + (key, j), f"unknown node {n!r} (nodes: {', '.join(nodes)})")
        params[key] = v
    exp = "pass" if exp is None else exp
    if exp not in ("pass", "fail"):
        ctx_err(o.path + ("expect",), f"must be pass or fail, got {exp!r}")
    params["expect"] = exp
    return params
