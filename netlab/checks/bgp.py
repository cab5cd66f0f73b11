"""bgp: a node's BGP sessions are Established and its kernel table holds the
pod slices of the other nodes, learned by BIRD (``proto bird``) via their
underlay addresses.

Evidence: ``birdc show protocols`` and ``ip route show proto bird`` of the
node, saved as a text file in the evidence directory."""
from __future__ import annotations

import time

from ..features import bgp
from ..lab.plan import node_ns
from .common import CheckResult, Context


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    topo, node = ctx.topo, p["node"]
    cfg = topo.bgp or bgp.BGPConfig()
    ns = node_ns(topo.name, node)
    sock = bgp.files(ctx.lab_dir, node)["socket"]
    peers = p["peers"] if p["peers"] is not None else cfg.peers_of(node, list(topo.nodes))
    others = p["learned"] if p["learned"] is not None else [n for n in topo.nodes if n != node]
    # BGP converges after the lab is built: look again until it holds or the timeout ends
    deadline = time.monotonic() + p.get("timeout", 15)
    while True:
        problems, routes = _problems(topo, ns, sock, peers, others)
        if not problems or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    evidence = ctx.pcap(check, "").replace(".pcap", ".txt")
    with open(evidence, "w", encoding="utf-8") as f:
        f.write(f"# birdc -s {sock} show protocols\n")
        f.write(bgp.birdc(sock, "show", "protocols").stdout)
        f.write(f"\n# ip -n {ns} route show proto bird\n")
        f.write("".join(f"{k} via {v}\n" for k, v in routes.items()))
    observed = "pass" if not problems else "fail"
    text = (f"{observed}: " + ("; ".join(problems) if problems else
            f"{len(peers)} session(s) Established, {len(routes)} route(s) proto bird"))
    return CheckResult(check.name, "bgp", observed == p["expect"], p["expect"], text, evidence,
                       [f"{node}: peers {', '.join(peers) or 'none'}; expects routes of {', '.join(others) or 'none'}"])


def _problems(topo, ns: str, sock: str, peers: list[str], others: list[str]) -> tuple[list[str], dict]:
    sessions = bgp.sessions(sock)
    routes = bgp.learned(ns)
    problems = []
    for peer in peers:
        s = sessions.get(bgp.proto_name(peer))
        if s is None:
            problems.append(f"no session with {peer}")
        elif not s.info.startswith("Established"):
            problems.append(f"session with {peer} {s.state}: {s.info}")
    for other in others:
        via = topo.nodes[other].address
        for pfx in bgp.announced(topo, other):
            if pfx not in routes:
                problems.append(f"{pfx} of {other} not learned")
            elif routes[pfx] != via:
                problems.append(f"{pfx} of {other} learned via {routes[pfx]}, not {via}")
    return problems, routes
