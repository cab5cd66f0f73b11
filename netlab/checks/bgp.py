"""bgp: a node's BGP sessions are Established and its kernel tables hold the
pod slices of the other nodes, learned by BIRD (``proto bird``) via their
underlay addresses, in every family the BGP-routed networks have (one
session per peer and family: ``peer_N`` IPv4, ``peer6_N`` IPv6; ADR 0035).

Evidence: ``birdc show protocols``, ``birdc show route`` (the prefixes each
session brought in), and ``ip route`` / ``ip -6 route show proto bird`` of the
node, saved as a text file in the evidence directory. The result's details
list, per peer and family, the prefixes learned from it."""
from __future__ import annotations

import time

from ..base.namespaces import ipn
from ..features import bgp
from ..lab.plan import node_ns
from .common import CheckResult, Context


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    topo, node = ctx.topo, p["node"]
    cfg = topo.bgp or bgp.BGPConfig()
    ns = node_ns(topo.name, node)
    sock = bgp.files(ctx.lab_dir, node)["socket"]
    fams = bgp.families(topo)
    peers = p["peers"] if p["peers"] is not None else cfg.peers_of(node, list(topo.nodes))
    others = p["learned"] if p["learned"] is not None else [n for n in topo.nodes if n != node]
    # BGP converges after the lab is built: look again until it holds or the timeout ends
    deadline = time.monotonic() + p.get("timeout", 15)
    while True:
        problems, routes = _problems(topo, ns, sock, peers, others, fams)
        if not problems or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    try:
        by_proto = bgp.routes_by_protocol(sock)
    except (bgp.BGPError, OSError) as e:
        by_proto, problems = {}, problems + [str(e)]
    evidence = ctx.pcap(check, "").replace(".pcap", ".txt")
    with open(evidence, "w", encoding="utf-8") as f:
        f.write(f"# birdc -s {sock} show protocols\n")
        f.write(bgp.birdc(sock, "show", "protocols").stdout)
        f.write(f"\n# birdc -s {sock} show route\n")
        f.write(bgp.birdc(sock, "show", "route").stdout)
        for fam in fams:       # the whole table: learned routes show as proto bird next to the rest
            args = ("route", "show") if fam == 4 else ("-6", "route", "show")
            f.write(f"\n# ip -n {ns} {' '.join(args)}\n")
            f.write(ipn(ns, *args))
    observed = "pass" if not problems else "fail"
    nsess = sum(1 for peer in peers for fam in fams if topo.nodes[peer].address_of(fam))
    text = (f"{observed}: " + ("; ".join(problems) if problems else
            f"{nsess} session(s) Established{_fam_text(fams)}, {len(routes)} route(s) proto bird"))
    details = [f"{node}: peers {', '.join(peers) or 'none'}; expects routes of {', '.join(others) or 'none'}"]
    for peer in peers:
        for fam in fams:
            name = bgp.proto_name(peer, fam)
            got = by_proto.get(name, [])
            details.append(f"{name} (IPv{fam}): {len(got)} prefix(es) learned: {', '.join(got) or 'none'}")
    return CheckResult(check.name, "bgp", observed == p["expect"], p["expect"], text, evidence, details)


def _fam_text(fams: list[int]) -> str:
    """`` (IPv4 and IPv6)``, `` (IPv6)``; nothing for an IPv4-only lab (its text as before)."""
    return "" if fams == [4] else " (" + " and ".join(f"IPv{f}" for f in fams) + ")"


def _problems(topo, ns: str, sock: str, peers: list[str], others: list[str],
              fams: list[int]) -> tuple[list[str], dict]:
    sessions = bgp.sessions(sock)
    routes = bgp.learned(ns, tuple(fams))
    problems = []
    for peer in peers:
        for fam in fams:
            if not topo.nodes[peer].address_of(fam):
                continue
            s = sessions.get(bgp.proto_name(peer, fam))
            what = f"session with {peer}" if fam == 4 else f"IPv6 session with {peer}"
            if s is None:
                problems.append(f"no {what}")
            elif not s.info.startswith("Established"):
                problems.append(f"{what} {s.state}: {s.info}")
    for other in others:
        for pfx in bgp.announced(topo, other):
            via = topo.nodes[other].address_of(bgp.family_of(pfx))
            if pfx not in routes:
                problems.append(f"{pfx} of {other} not learned")
            elif routes[pfx] != via:
                problems.append(f"{pfx} of {other} learned via {routes[pfx]}, not {via}")
    return problems, routes
