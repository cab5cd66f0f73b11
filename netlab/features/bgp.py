"""BGP-routed pod networks (Calico-style): one BIRD per node namespace.

A network with ``routing: bgp`` (the default of ``type: routed``) gets no
static routes between nodes. Instead every node runs BIRD 2 in its own
namespace; it announces the node's pod slices over iBGP on the underlay (full
mesh, or through one route reflector) and installs what it learns into the
node's kernel table (``proto bird``). See ADR 0024.

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
    export_deny: list[str] = field(default_factory=list)   # prefixes this node must not announce


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
                good.append(str(ipaddress.IPv4Network(d, strict=True)))
            except (ValueError, TypeError) as e:
                ctx_err(p + ("exportDeny", j), f"{d!r} is not an IPv4 prefix ({e})")
        cfg.nodes[nname] = NodeBGP(asn, good)
    return cfg


# --------------------------------------------------------------------------- rendering

def files(lab_dir: str, node: str) -> dict[str, str]:
    d = os.path.join(lab_dir, "bgp", node)
    return {"dir": d, "conf": os.path.join(d, "bird.conf"), "socket": os.path.join(d, "bird.ctl"),
            "pid": os.path.join(d, "bird.pid"), "log": os.path.join(d, "bird.log"),
            "out": os.path.join(d, "bird.out")}


def proto_name(node: str) -> str:
    """BIRD protocol name of the session with ``node`` (an identifier)."""
    return "peer_" + re.sub(r"[^A-Za-z0-9_]", "_", node)


def render_config(*, lab: str, node: str, router_id: str, announce: list[str], cfg: BGPConfig,
                  peers: dict[str, tuple[str, int]], log_path: str, reflector_clients: bool = False) -> str:
    """bird.conf for one node. ``peers``: node -> (underlay address, its ASN as we expect it)."""
    deny = cfg.node(node).export_deny
    asn = cfg.local_asn(node)
    lines = [f"# netlab lab {lab}, node {node}: written by netlab (netlab/features/bgp.py), do not edit",
             f'log "{log_path}" all;',
             f"router id {router_id};",
             "",
             "protocol device { scan time 2; }",
             "",
             "# this node's pod slices: originated here, never installed into the kernel",
             "protocol static pods {", "  ipv4;"]
    lines += [f"  route {p} unreachable;" for p in announce]
    lines += ["}", "",
              "# learned routes go to the kernel (ip route ... proto bird); nothing is read from it",
              "protocol kernel {",
              "  ipv4 { import none; export where source = RTS_BGP; };",
              "}", "",
              "filter announce {"]
    if deny:
        lines.append(f"  if net ~ [ {', '.join(deny)} ] then reject;   # bgp.nodes.{node}.exportDeny")
    lines += ["  if source = RTS_STATIC || source = RTS_BGP then accept;", "  reject;", "}", "",
              "template bgp underlay {",
              f"  local as {asn};",
              "  direct;",
              "  hold time 6;",
              "  connect retry time 1;",
              "  connect delay time 1;",
              "  error wait time 1, 10;"]
    if reflector_clients:
        lines.append("  rr client;")
    lines += ["  ipv4 { import all; export filter announce; gateway direct; };", "}", ""]
    for peer, (addr, pasn) in peers.items():
        lines.append(f"protocol bgp {proto_name(peer)} from underlay {{ neighbor {addr} as {pasn}; }}"
                     f"   # node {peer}")
    return "\n".join(lines) + "\n"


def announced(topo, node: str) -> list[str]:
    """Pod slices ``node`` announces: one per network with routing bgp."""
    from ..base.units import node_slice
    n = topo.nodes[node]
    return [str(node_slice(w, n.index)) for w in topo.networks.values() if w.routing == "bgp"]


def enabled(topo) -> bool:
    return any(w.routing == "bgp" for w in topo.networks.values())


def plan_steps(topo, lab_dir: str, node_ns: Callable[[str, str], str], Step: Callable[..., Any]) -> list:
    """One ``bgp`` step per node (after every uplink exists); ``Step`` is the plan's step type."""
    if not enabled(topo):
        return []
    cfg = topo.bgp or BGPConfig()
    names = list(topo.nodes)
    steps = []
    for n in topo.nodes.values():
        f = files(lab_dir, n.name)
        peers = {p: (topo.nodes[p].address, cfg.asn) for p in cfg.peers_of(n.name, names)}
        conf = render_config(lab=topo.name, node=n.name, router_id=n.address, announce=announced(topo, n.name),
                             cfg=cfg, peers=peers, log_path=f["log"],
                             reflector_clients=cfg.mesh == "reflector" and n.name == cfg.reflector)
        steps.append(Step("bgp", f"{node_ns(topo.name, n.name)}: BIRD (AS {cfg.local_asn(n.name)}, "
                                 f"peers {', '.join(peers) or 'none'}, announces {', '.join(announced(topo, n.name))})",
                          {"ns": node_ns(topo.name, n.name), "node": n.name, "config": conf,
                           "files": f, "peers": {p: a for p, (a, _) in peers.items()},
                           "announce": announced(topo, n.name)}))
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
                                     "peers": p["peers"], "announce": p["announce"]})
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


def parse_routes(text: str) -> dict[str, str | None]:
    """``ip route show proto bird`` -> prefix -> gateway."""
    out: dict[str, str | None] = {}
    for ln in text.splitlines():
        parts = ln.split()
        if not parts:
            continue
        dst = parts[0]
        if dst == "default":
            dst = "0.0.0.0/0"
        elif "/" not in dst:
            dst += "/32"
        out[dst] = parts[parts.index("via") + 1] if "via" in parts else None
    return out


def learned(ns: str) -> dict[str, str | None]:
    """Routes BIRD installed in the node namespace's kernel table."""
    from ..base.namespaces import ipn
    return parse_routes(ipn(ns, "route", "show", "proto", "bird"))


def bird_records(st) -> list[dict]:
    """The BIRD daemons recorded in a lab's state (none for a lab without BGP)."""
    find = getattr(st, "find", None)
    return [r for r in find("process") if r.get("bgp")] if find else []


def missing_route_cause(st, ns: str, dst: str) -> list[str]:
    """For ``netlab trace``: when ``ns`` is a BGP node without a route to ``dst``,
    name the prefix that should have been learned, who announces it, and what
    the sessions say. Empty when BGP has nothing to do with it."""
    recs = bird_records(st)
    me = next((r for r in recs if r.get("ns") == ns), None)
    if me is None:
        return []
    try:
        a = ipaddress.IPv4Address(dst)
    except ValueError:
        return []
    owner = prefix = None
    for r in recs:
        for pfx in r.get("announce", []):
            if a in ipaddress.IPv4Network(pfx):
                owner, prefix = r, pfx
    if owner is None or owner is me:
        return []
    out = [f"no route to {prefix} on node {me['node']} (not learned via BGP): node {owner['node']} "
           f"should announce it (BIRD protocol static pods)"]
    try:
        ss = sessions(me["socket"])
    except (BGPError, OSError, subprocess.SubprocessError) as e:
        return out + [f"BIRD on node {me['node']} does not answer: {e}"]
    bad = [s for s in ss.values() if not s.info.startswith("Established")]
    for s in bad:
        out.append(f"BGP session {s.name} on node {me['node']} is not established: {s.state} {s.info}")
    if not bad:
        # the owner's session toward us, or toward the reflector it peers with
        via = me["node"] if me["node"] in owner.get("peers", {}) else next(iter(owner.get("peers", {})), me["node"])
        out.append(f"every BGP session of node {me['node']} is Established, so node {owner['node']} "
                   f"(or a reflector) does not export {prefix}: check its export filter "
                   f"(birdc -s {owner['socket']} show route export {proto_name(via)})")
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
