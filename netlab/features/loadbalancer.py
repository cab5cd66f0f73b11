"""LoadBalancer Services in a lab, MetalLB-style layer 2 (ADR 0026).

A Service of ``type: LoadBalancer`` gets, besides its ClusterIP and node
ports, an address on the underlay: ``loadBalancerIP`` if it names one, else
the next free address of the ``loadBalancer.pools`` (in file order). Every
node's Services table (netlab/services.py) sends traffic for that address to
the Service's external chain, as kube-proxy does; what makes the address
reachable from the underlay is ARP, and only one node answers it: the
*speaker* elected for that address.

The speakers (``netlab/lbspeaker.py``, one process per node namespace, like
MetalLB's DaemonSet) answer ARP in userspace on the node's uplink: the
address is never configured on an interface. They learn which nodes are up
from each other's heartbeats on the underlay (UDP 7946, a small stand-in for
MetalLB's memberlist) and elect, for each address, with ``elect``:

    candidates = the nodes that are up (heard within DEAD_AFTER seconds)
                 and, for externalTrafficPolicy Local, run an endpoint
    speaker    = the candidate with the lowest sha256("<node>#<address>")

Every speaker computes the same answer from the same view, so no two answer
at once; a speaker that gains an address announces it with gratuitous ARP.

Here: the schema (``parse``, called by netlab/topology.py), the election
(pure), the speakers' configuration and start (``sync``, from netlab/k8s.py,
processes recorded in the lab state so ``netlab down`` stops them), the
``link-down`` scenario fault with its capture of the takeover, and what
``netlab trace`` says about an address (``trace_notes``).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

PORT = 7946                 # MetalLB's memberlist port
INTERVAL = 0.2              # heartbeat period (seconds)
DEAD_AFTER = 1.5           # a node not heard for this long is down (room for a starved process)
LB_DIR = "lb"               # <lab dir>/lb: config.json, status-<node>.json
FAILOVER_PCAP = "lb-failover.pcap"
POOL_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass
class Pool:
    name: str
    addresses: list[str] = field(default_factory=list)     # every usable address, in order


@dataclass
class LBConfig:
    pools: list[Pool] = field(default_factory=list)


# --------------------------------------------------------------------------- schema

def _expand(ctx, item: Any, where: tuple, usub: ipaddress.IPv4Network) -> list[ipaddress.IPv4Address]:
    """One pool entry: a CIDR (10.0.0.8/29) or a range (10.0.0.8-10.0.0.12)."""
    if not isinstance(item, str):
        ctx.err(where, f"must be a CIDR (like 192.168.140.200/29) or a range (A-B), got {item!r}")
        return []
    try:
        if "-" in item:
            a, b = (ipaddress.IPv4Address(x.strip()) for x in item.split("-", 1))
            if int(b) < int(a):
                ctx.err(where, f"{item}: the range ends before it starts")
                return []
            out = [ipaddress.IPv4Address(i) for i in range(int(a), int(b) + 1)]
        else:
            net = ipaddress.IPv4Network(item, strict=True)
            out = list(net)     # as MetalLB: every address of a CIDR (the underlay's own are refused below)
    except ValueError as e:
        ctx.err(where, f"{item!r} is neither a CIDR nor a range of IPv4 addresses ({e})")
        return []
    outside = [a for a in out if a not in usub]
    if outside:
        ctx.err(where, f"{item} is not inside the underlay subnet {usub} (the speakers answer ARP there only)")
        return []
    if len(out) > 1024:
        ctx.err(where, f"{item} holds {len(out)} addresses: at most 1024 per entry in a lab")
        return []
    return out


def parse(ctx, data: dict, k8s, underlay, used_addrs: dict[str, tuple], Obj) -> LBConfig:
    """The ``loadBalancer`` key, and the address of every Service of type LoadBalancer."""
    cfg = LBConfig()
    usub = underlay.subnet
    lbs = [s for s in (k8s.services.services if k8s else []) if s.type == "LoadBalancer"]
    raw = data.get("loadBalancer")
    if raw is not None:
        o = Obj(ctx, raw, ("loadBalancer",), ("pools",))
        pools = o.get("pools", list, [], required=True)
        seen: dict[str, str] = {}
        for i, rp in enumerate(pools):
            p = ("loadBalancer", "pools", i)
            po = Obj(ctx, rp, p, ("name", "addresses"))
            name = po.get("name", str, f"pool{i}", check=lambda v: None if POOL_NAME_RE.match(v)
                          else f"{v!r} is not a valid pool name (lowercase letters, digits, '-')")
            if any(x.name == name for x in cfg.pools):
                ctx.err(p + ("name",), f"pool name {name!r} is used twice")
            addrs: list[str] = []
            for j, item in enumerate(po.get("addresses", list, [], required=True)):
                for a in _expand(ctx, item, p + ("addresses", j), usub):
                    s = str(a)
                    if a in (usub.network_address, usub.broadcast_address):
                        ctx.err(p + ("addresses", j), f"{item} holds {s}, the network or broadcast address of {usub}")
                        addrs = []
                        break
                    if s in used_addrs:
                        ctx.err(p + ("addresses", j), f"{item} holds {s}, already used at "
                                f"{'.'.join(map(str, used_addrs[s]))}: a pool must not collide with the lab's own addresses")
                        addrs = []
                        break
                    if s in seen:
                        ctx.err(p + ("addresses", j), f"{s} is already in pool {seen[s]}")
                        addrs = []
                        break
                    seen[s] = name
                    addrs.append(s)
            cfg.pools.append(Pool(name, addrs))
        if not lbs:
            ctx.err(("loadBalancer",), "no Service has type LoadBalancer")
    if lbs and not cfg.pools:
        ctx.err(("services", lbs[0].index, "type"), "type LoadBalancer needs addresses: give loadBalancer.pools "
                "(MetalLB's IPAddressPool) with a range of the underlay subnet")
        return cfg
    pool_of = {a: pl.name for pl in cfg.pools for a in pl.addresses}
    taken: dict[str, str] = {}
    for svc in lbs:
        if svc.lb_request is None:
            continue
        where = ("services", svc.index, "loadBalancerIP")
        try:
            ipaddress.IPv4Address(svc.lb_request)
        except ValueError:
            ctx.err(where, f"{svc.lb_request!r} is not an IPv4 address")
            continue
        if svc.lb_request not in pool_of:
            ctx.err(where, f"{svc.lb_request} is in no loadBalancer pool ("
                    + ", ".join(f"{pl.name}: {_span(pl)}" for pl in cfg.pools) + ")")
        elif svc.lb_request in taken:
            ctx.err(where, f"{svc.lb_request} is already the address of {taken[svc.lb_request]}")
        else:
            svc.lb_ip, svc.lb_pool = svc.lb_request, pool_of[svc.lb_request]
            taken[svc.lb_ip] = svc.key
    free = [a for pl in cfg.pools for a in pl.addresses if a not in taken]
    for svc in lbs:
        if svc.lb_request is not None:
            continue
        if not free:
            ctx.err(("services", svc.index, "type"), f"no free address left in the loadBalancer pools for {svc.key}")
            continue
        svc.lb_ip = free.pop(0)
        svc.lb_pool = pool_of[svc.lb_ip]
        taken[svc.lb_ip] = svc.key
    return cfg


def _span(pl: Pool) -> str:
    if not pl.addresses:
        return "empty"
    return pl.addresses[0] if len(pl.addresses) == 1 else f"{pl.addresses[0]}-{pl.addresses[-1]}"


# --------------------------------------------------------------------------- election (pure)

def rank(node: str, address: str) -> str:
    """A node's rank for an address: lower wins (hex of sha256("<node>#<address>"))."""
    return hashlib.sha256(f"{node}#{address}".encode()).hexdigest()


def elect(address: str, candidates) -> str | None:
    """The speaker for ``address`` among ``candidates`` (None when there is none)."""
    cands = sorted(set(candidates))
    return min(cands, key=lambda n: (rank(n, address), n)) if cands else None


def eligible(svc, nodes: list[str], eps: dict) -> list[str]:
    """Nodes that may announce the Service's address: all nodes (externalTrafficPolicy
    Cluster), or only the nodes that run one of its endpoints (Local)."""
    if svc.external_policy != "Local":
        return sorted(nodes)
    on = {e.node for (k, _), lst in eps.items() if k == svc.key for e in lst}
    return sorted(n for n in nodes if n in on)


def announcements(topo, addresses: dict[str, str]) -> list[dict]:
    """What the speakers announce: [{address, service, pool, policy, eligible}]."""
    from . import services as svcmod
    k = topo.k8s
    if not (k and k.services.services):
        return []
    eps = svcmod.endpoints(k.services, topo.pods, addresses)
    out = []
    for svc in k.services.services:
        if svc.type == "LoadBalancer" and svc.lb_ip:
            out.append({"address": svc.lb_ip, "service": svc.key, "pool": svc.lb_pool,
                        "policy": svc.external_policy, "eligible": eligible(svc, list(topo.nodes), eps)})
    return out


def explain(address: str, eligible_nodes: list[str], up: list[str]) -> tuple[str | None, list[str]]:
    """(speaker, the reasoning as lines) for an address, given the nodes that are up."""
    cands = [n for n in eligible_nodes if n in up]
    sp = elect(address, cands)
    lines = [f"{n}: sha256({n}#{address}) = {rank(n, address)[:12]}..."
             + ("" if n in up else "  (down)") + ("  <- lowest, speaker" if n == sp else "")
             for n in sorted(eligible_nodes, key=lambda x: rank(x, address))]
    return sp, lines


# --------------------------------------------------------------------------- speakers

def lb_dir(lab_dir: str) -> str:
    return os.path.join(lab_dir, LB_DIR)


def config_path(lab_dir: str) -> str:
    return os.path.join(lb_dir(lab_dir), "config.json")


def status_path(lab_dir: str, node: str) -> str:
    return os.path.join(lb_dir(lab_dir), f"status-{node}.json")


def speaker_config(topo, addresses: dict[str, str]) -> dict:
    return {"nodes": {n.name: n.address for n in topo.nodes.values()}, "port": PORT,
            "interval": INTERVAL, "deadAfter": DEAD_AFTER, "iface": "eth0",
            "addresses": announcements(topo, addresses)}


def _write_json(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def read_status(lab_dir: str, node: str) -> dict | None:
    try:
        with open(status_path(lab_dir, node), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def speaker_argv(lab_dir: str, node: str) -> list[str]:
    return [sys.executable, "-m", "netlab.features.lbspeaker", "--config", config_path(lab_dir), "--node", node,
            "--status", status_path(lab_dir, node)]


def active(topo) -> bool:
    k = topo.k8s
    return bool(k and any(s.type == "LoadBalancer" for s in k.services.services))


def sync(topo, lab: str, lab_dir: str, addresses: dict[str, str], st=None, record=None,
         progress: Callable[[str], None] = lambda s: None) -> None:
    """Write the speakers' configuration (they re-read it when it changes) and start
    the speakers that are not running yet, recorded before they start."""
    if not active(topo):
        return
    from ..base.names import node_ns
    from ..base.proc import code_root, start_recorded
    from ..base.state import proc_starttime
    os.makedirs(lb_dir(lab_dir), exist_ok=True)
    cfg = speaker_config(topo, addresses)
    _write_json(config_path(lab_dir), cfg)
    started = []
    for n in topo.nodes:
        name = f"lb speaker {n}"
        old = [r for r in (st.find("process", name=name) if st else []) if not r.get("removed")]
        if old and proc_starttime(int(old[0]["pid"] or 0)) == old[0].get("starttime"):
            continue
        if record is None:
            continue
        sp = status_path(lab_dir, n)
        start_recorded(node_ns(lab, n), speaker_argv(lab_dir, n), name,
                       os.path.join(lb_dir(lab_dir), f"speaker-{n}.log"),
                       lambda pid, sp=sp: os.path.exists(sp), record=lambda **kw: record("process", **kw),
                       cwd=code_root())
        started.append(n)
    want, have = wait_converged(topo, lab_dir, cfg)
    for a in cfg["addresses"]:
        w, h = want.get(a["address"]), have.get(a["address"], [])
        who = (w if h == [w] else "none (no eligible node is up)" if not w and not h
               else f"{', '.join(h) or 'none'} announce it, the election gives {w or 'nobody'} (not converged)")
        progress(f"      loadbalancer: {a['address']} ({a['service']}, pool {a['pool']}) -> speaker {who}")
    if started:
        progress(f"      loadbalancer: speakers on {', '.join(started)} (ARP in userspace, heartbeats udp/{PORT})")


def speakers(topo, lab_dir: str) -> dict[str, list[str]]:
    """address -> the nodes whose speaker says it announces it (from their status files)."""
    out: dict[str, list[str]] = {}
    for n in topo.nodes:
        s = read_status(lab_dir, n) or {}
        for a in s.get("announcing", []):
            out.setdefault(a, []).append(n)
    return out


def wait_converged(topo, lab_dir: str, cfg: dict, timeout: float = 8.0) -> tuple[dict, dict]:
    """Until every speaker is ready and each address has exactly the speaker the
    election gives over the nodes that are up (as the speakers see them), or the
    timeout: (address -> elected node, address -> nodes announcing it)."""
    deadline = time.monotonic() + timeout
    want: dict[str, str | None] = {}
    while True:
        sts = {n: read_status(lab_dir, n) for n in topo.nodes}
        ready = all(s and s.get("ready") and s.get("configMtime") == _mtime(config_path(lab_dir)) for s in sts.values())
        up = sorted(n for n, s in sts.items() if s and n in s.get("up", []))
        want = {a["address"]: elect(a["address"], [n for n in a["eligible"] if n in up]) for a in cfg["addresses"]}
        have = speakers(topo, lab_dir)
        if (ready and all(have.get(a, []) == ([w] if w else []) for a, w in want.items())) \
                or time.monotonic() > deadline:
            return want, have
        time.sleep(0.05)


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


# --------------------------------------------------------------------------- kernel facts

def uplink_macs(topo, lab: str) -> dict[str, str]:
    """MAC of each node's uplink -> node name (read from the kernel)."""
    from ..base.names import node_ns
    from ..base.namespaces import ipn
    out = {}
    for n in topo.nodes:
        try:
            txt = ipn(node_ns(lab, n), "-j", "link", "show", "dev", "eth0")
            out[json.loads(txt)[0]["address"].lower()] = n
        except Exception:  # noqa: BLE001 - a node that is gone has no MAC
            continue
    return out


def nodes_up(topo, lab: str) -> dict[str, str]:
    """node -> 'up' or why not: its uplink or its switch port is not operational."""
    from ..base.names import node_ns, switch_ns
    from ..base.namespaces import ipn
    out = {}
    for n in topo.nodes.values():
        why = "up"
        for ns, dev, what in ((node_ns(lab, n.name), "eth0", "uplink eth0"),
                              (switch_ns(lab), f"n{n.index}", f"switch port n{n.index}")):
            try:
                info = json.loads(ipn(ns, "-j", "link", "show", "dev", dev))[0]
            except Exception:  # noqa: BLE001
                why = f"{what} is gone"
                break
            flags = info.get("flags", [])
            if "UP" not in flags or "LOWER_UP" not in flags:
                why = f"{what} is {info.get('operstate', 'down').lower()} ({','.join(flags)})"
                break
        out[n.name] = why
    return out


# --------------------------------------------------------------------------- ARP evidence

def arp_frames(pkts) -> list[dict]:
    """ARP frames of a capture as dicts: op, sender MAC/IP, target IP, eth dst, time, gratuitous."""
    out = []
    for x in pkts:
        if not x.haslayer("ARP"):
            continue
        a = x["ARP"]
        out.append({"op": int(a.op), "hwsrc": str(a.hwsrc).lower(), "psrc": a.psrc, "pdst": a.pdst,
                    "dst": str(x.dst).lower(), "time": float(x.time),
                    "gratuitous": a.psrc == a.pdst and str(x.dst).lower() == "ff:ff:ff:ff:ff:ff"})
    return out


def switch_ports_only(cap) -> list:
    """Frames a capture on every interface of the switch namespace saw on the ports,
    decoded, without the bridge device's own copies of broadcasts (each frame once);
    the capture's pcap is rewritten to hold just those."""
    from scapy.layers.l2 import Ether
    from ..base.capture import write_pcap
    from ..base.names import SWITCH_BRIDGE
    frames = [fr for fr, ifn in zip(cap.frames, cap.ifaces) if ifn != SWITCH_BRIDGE]
    if cap.pcap:
        write_pcap(cap.pcap, frames)
    out = []
    for ts, data in frames:
        x = Ether(data)
        x.time = ts
        out.append(x)
    return out


def garps_in(path: str) -> list[dict]:
    """The gratuitous ARPs in a saved capture."""
    from scapy.utils import rdpcap
    import scapy.layers.l2  # noqa: F401
    try:
        pk = rdpcap(path)
    except (OSError, Exception):  # noqa: BLE001 - a missing or empty file holds none
        return []
    return [f for f in arp_frames(pk) if f["gratuitous"]]


# --------------------------------------------------------------------------- the link-down fault

def fault_link_down(plan, st, node: str, progress: Callable[[str], None]) -> None:
    """Take a node's underlay link down (its switch port) with a capture on the
    switch running across it, until every address the node announced was taken
    over by another speaker's gratuitous ARP (or 8 s passed). The capture is
    saved as evidence/lb-failover.pcap; the ``service`` check with ``takeover``
    reads it."""
    from ..base.capture import Capture
    from ..base.namespaces import ipn
    from ..base.names import switch_ns
    topo = plan.topology
    lab_dir = plan.lab_dir
    was = [a for a, ns_ in speakers(topo, lab_dir).items() if node in ns_] if active(topo) else []
    macs = uplink_macs(topo, plan.lab)
    pcap = os.path.join(lab_dir, "evidence", FAILOVER_PCAP)
    cap = Capture(switch_ns(plan.lab), "", "arp", pcap=pcap, incoming_only=True, max_seconds=30)
    cap.start()
    t0 = time.time()
    try:
        ipn(switch_ns(plan.lab), "link", "set", f"n{topo.nodes[node].index}", "down")
        deadline = time.monotonic() + 8
        while was and time.monotonic() < deadline:
            time.sleep(0.1)
            got = {f["psrc"] for f in arp_frames(cap.packets()) if f["gratuitous"] and macs.get(f["hwsrc"]) != node}
            if set(was) <= got:
                time.sleep(0.3)
                break
    finally:
        cap.stop()
        garps = [f for f in arp_frames(switch_ports_only(cap)) if f["gratuitous"]]
    progress(f"      fault: node {node}: underlay link down (switch port n{topo.nodes[node].index}); "
             f"ARP on the switch captured in {pcap}")
    for a in was:
        g = [f for f in garps if f["psrc"] == a and macs.get(f["hwsrc"]) != node]
        if g:
            progress(f"      fault: {a} taken over by {macs.get(g[0]['hwsrc'], '?')} ({g[0]['hwsrc']}): "
                     f"{len(g)} gratuitous ARP(s), the first {g[0]['time'] - t0:.2f}s after the link went down")
    left = [a for a in was if not any(f["psrc"] == a and macs.get(f["hwsrc"]) != node for f in garps)]
    if left:
        progress(f"      fault: no takeover of {', '.join(left)} seen within 8 s")


# --------------------------------------------------------------------------- trace

def trace_notes(st, topo, dst: str) -> list[str]:
    """``netlab trace`` to a LoadBalancer address: whose address it is, which node
    is its speaker and why (the election, the nodes up), who says it announces it."""
    if topo is None or not active(topo):
        return []
    from ..base.state import attach_addresses
    ann = next((a for a in announcements(topo, attach_addresses(st)) if a["address"] == dst), None)
    if ann is None:
        return []
    state = nodes_up(topo, st.lab)
    up = [n for n, why in state.items() if why == "up"]
    sp, lines = explain(dst, ann["eligible"], up)
    pol = ("all nodes are eligible (externalTrafficPolicy Cluster)" if ann["policy"] != "Local" else
           f"eligible: the nodes running an endpoint ({', '.join(ann['eligible']) or 'none'}; externalTrafficPolicy Local)")
    down = [f"{n} ({why})" for n, why in state.items() if why != "up"]
    out = [f"note: {dst} is the LoadBalancer address of {ann['service']} (pool {ann['pool']}); its speaker is "
           f"{sp or 'nobody'}: {pol}" + (f"; down: {', '.join(down)}" if down else "")
           + "; the eligible node that is up with the lowest sha256(node#address) answers ARP"]
    out.append("note: election for " + dst + ": " + "; ".join(lines))
    claims = speakers(topo, st.lab_dir).get(dst, [])
    macs = {v: k for k, v in uplink_macs(topo, st.lab).items()}
    if claims:
        for n in claims:
            s = read_status(st.lab_dir, n) or {}
            since = (s.get("since") or {}).get(dst)
            out.append(f"note: the speaker on {n} announces {dst} (ARP answers from {macs.get(n, '?')}"
                       + (f", since {time.strftime('%H:%M:%S', time.localtime(since))} with gratuitous ARP" if since else "")
                       + f"; {s.get('answered', {}).get(dst, 0)} ARP request(s) answered)")
        if claims != ([sp] if sp else []):
            views = "; ".join(f"{n} counts as up: {', '.join((read_status(st.lab_dir, n) or {}).get('up', [])) or 'nobody'}"
                              for n in claims)
            out.append(f"speakers disagree with the election: {', '.join(claims)} announce {dst}, the election "
                       f"over the nodes whose links are up gives {sp or 'nobody'}. {views}: a speaker that hears "
                       f"no heartbeats (udp/{PORT}) from the others counts them down and elects itself")
    elif sp:
        out.append(f"no speaker announces {dst}, but the election gives {sp}: is the speaker on {sp} running? "
                   f"(netlab status; its log is {os.path.join(lb_dir(st.lab_dir), 'speaker-' + sp + '.log')})")
    return out
