"""IPv6 for BGP-routed networks without root (netlab/features/bgp.py, ADR 0035):
one IPv6 session per peer next to the IPv4 one on a dual-stack underlay, IPv6
sessions only on an IPv6-only underlay, full mesh and route reflector; the
IPv6 slices originated, learned routes exported to the kernel's IPv6 table;
BIRD's own parser on every rendered config; the check's per-family verdict;
parsing of ``ip -6 route`` and ``birdc show route``; trace's IPv6 cause."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from netlab.checks import bgp as bgpcheck
from netlab.features import bgp
from netlab.lab.plan import make_plan
from netlab.lab.topology import TopologyError, loads

DUAL = """
name: b6
underlay: {subnet: [192.168.138.0/24, "fd00:138::/64"]}
nodes: {node1: {}, node2: {}, node3: {}}
networks:
  pods: {type: routed, subnet: [10.246.0.0/16, "fd00:10:246::/56"], nodePrefix: [24, 64]}
dns: {enabled: false}
pods:
  a1: {node: node1, network: pods}
  c1: {node: node3, network: pods}
"""

V6ONLY = """
name: o6
underlay: {subnet: "fd00:139::/64"}
nodes: {node1: {}, node2: {}, node3: {}}
networks:
  pods: {type: routed, subnet: "fd00:10:245::/56", nodePrefix: 64}
dns: {enabled: false}
pods:
  a1: {node: node1, network: pods}
"""


def steps_of(text: str) -> dict:
    return {s.params["node"]: s for s in make_plan(loads(text), "/lab").steps if s.kind == "bgp"}


def test_dual_stack_full_mesh_one_session_per_peer_and_family():
    s = steps_of(DUAL)["node2"]
    conf = s.params["config"]
    assert "router id 192.168.138.12;" in conf
    assert "protocol static pods {\n  ipv4;\n  route 10.246.1.0/24 unreachable;\n}" in conf
    assert "protocol static pods6 {\n  ipv6;\n  route fd00:10:246:1::/64 unreachable;\n}" in conf
    # learned IPv6 routes go to the kernel's IPv6 table, nothing is read from it
    assert "protocol kernel kernel6 {\n  ipv6 { import none; export where source = RTS_BGP; };\n}" in conf
    assert "ipv6 { import all; export filter announce6; gateway direct; next hop prefer global; };" in conf
    for peer, v4, v6 in (("node1", "192.168.138.11", "fd00:138::b"), ("node3", "192.168.138.13", "fd00:138::d")):
        assert f"protocol bgp peer_{peer} from underlay {{ neighbor {v4} as 64512; }}" in conf
        assert f"protocol bgp peer6_{peer} from underlay6 {{ neighbor {v6} as 64512; }}" in conf
    # the IPv4 session carries only ipv4, the IPv6 one only ipv6 (no MP-BGP across families)
    t4 = conf[conf.index("template bgp underlay {"):conf.index("template bgp underlay6 {")]
    t6 = conf[conf.index("template bgp underlay6 {"):]
    assert "ipv4 {" in t4 and "ipv6" not in t4
    assert "ipv6 {" in t6.split("protocol bgp")[0] and "ipv4" not in t6.split("protocol bgp")[0]
    assert s.params["announce"] == ["10.246.1.0/24", "fd00:10:246:1::/64"]
    assert s.params["sessions"] == {"peer_node1": "192.168.138.11", "peer6_node1": "fd00:138::b",
                                    "peer_node3": "192.168.138.13", "peer6_node3": "fd00:138::d"}
    assert "sessions IPv4 and IPv6" in s.desc


def test_ipv4_lab_config_has_no_ipv6_at_all():
    conf = steps_of(DUAL.replace('[192.168.138.0/24, "fd00:138::/64"]', "192.168.138.0/24")
                    .replace('[10.246.0.0/16, "fd00:10:246::/56"], nodePrefix: [24, 64]', "10.246.0.0/16, nodePrefix: 24"))
    conf = conf["node1"].params["config"]
    assert "ipv6" not in conf and "peer6_" not in conf and "pods6" not in conf


def test_v4_only_network_on_dual_stack_underlay_opens_no_ipv6_sessions():
    conf = steps_of(DUAL.replace('[10.246.0.0/16, "fd00:10:246::/56"], nodePrefix: [24, 64]',
                                 "10.246.0.0/16, nodePrefix: 24"))["node1"].params["config"]
    assert "peer_node2" in conf and "peer6_" not in conf and "ipv6" not in conf


def test_ipv6_only_reflector_sessions_and_router_ids():
    st = steps_of(V6ONLY + "bgp: {mesh: reflector, reflector: node1}\n")
    rr, c2, c3 = (st[n].params["config"] for n in ("node1", "node2", "node3"))
    assert "ipv4" not in rr + c2 + c3 and "protocol bgp peer_" not in rr + c2 + c3
    assert "rr client;" in rr and "rr client" not in c2
    assert "protocol bgp peer6_node2 from underlay6 { neighbor fd00:139::c as 64512; }" in rr
    assert "protocol bgp peer6_node3 from underlay6" in rr
    assert [ln for ln in c2.splitlines() if ln.startswith("protocol bgp")] == [
        "protocol bgp peer6_node1 from underlay6 { neighbor fd00:139::b as 64512; }   # node node1"]
    # BGP router ids are 32-bit: distinct ones without an IPv4 address
    ids = [next(ln for ln in c.splitlines() if ln.startswith("router id")) for c in (rr, c2, c3)]
    assert len(set(ids)) == 3 and all(i.startswith("router id 10.0.0.") for i in ids)
    assert st["node2"].params["announce"] == ["fd00:10:245:1::/64"]


def test_export_deny_goes_to_the_filter_of_its_family():
    conf = steps_of(DUAL + "bgp:\n  nodes:\n    node3: {exportDeny: [10.246.2.0/24, \"fd00:10:246:2::/64\"]}\n")
    conf = conf["node3"].params["config"]
    f4 = conf[conf.index("filter announce {"):conf.index("}", conf.index("filter announce {"))]
    f6 = conf[conf.index("filter announce6 {"):conf.index("}", conf.index("filter announce6 {"))]
    assert "if net ~ [ 10.246.2.0/24 ] then reject;" in f4 and "fd00" not in f4
    assert "if net ~ [ fd00:10:246:2::/64 ] then reject;" in f6 and "10.246" not in f6


def test_no_static_node_routes_in_either_family_but_ext_routes_both():
    plan = make_plan(loads(DUAL.replace("dns: {enabled: false}", "dns: {enabled: true}")), "/lab")
    routes = [s for s in plan.steps if s.kind == "routes"]
    assert not [s for s in routes if "-n-" in s.params["ns"]]
    side = [r["dst"] for s in routes for r in s.params["routes"]]
    assert "fd00:10:246:2::/64" in side and "10.246.2.0/24" in side


def test_routed_ipv6_needs_ipv6_on_the_underlay():
    with pytest.raises(TopologyError) as e:
        loads(DUAL.replace('[192.168.138.0/24, "fd00:138::/64"]', "192.168.138.0/24"))
    assert "the underlay, which has no IPv6 subnet" in "\n".join(e.value.errors)


def test_dhcp_refuses_ipv6_saying_why():
    with pytest.raises(TopologyError) as e:
        loads(DUAL.replace("type: routed,", "type: bridge, ipam: dhcp,").replace("pods:\n  a1", "x:\n  a1"))
    msg = "\n".join(e.value.errors)
    assert "networks.pods.ipam: ipam dhcp leases IPv4 only, like the reference dhcp plugin (DHCPv4)" in msg
    assert "Kubernetes pod networks do not use DHCPv6" in msg and "docs/netlab/ipv6.md" in msg


@pytest.mark.skipif(not shutil.which("bird"), reason="bird (Debian bird2) is not installed")
@pytest.mark.parametrize("text", [
    DUAL, DUAL + "bgp: {mesh: reflector, reflector: node2}\n",
    DUAL + "bgp: {nodes: {node1: {asn: 1, exportDeny: [10.246.0.0/24, \"fd00:10:246::/64\", \"fd00:9::/48\"]}}}\n",
    V6ONLY, V6ONLY + "bgp: {mesh: reflector, reflector: node1, nodes: {node2: {exportDeny: [\"fd00:10:245:1::/64\"]}}}\n"])
def test_bird_parses_every_ipv6_config(text, tmp_path):
    for node, s in steps_of(text).items():
        path = tmp_path / f"{node}.conf"
        path.write_text(s.params["config"].replace("/lab/", f"{tmp_path}/"))
        r = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, (node, r.stderr, s.params["config"])


def test_proto_names_and_families():
    assert bgp.proto_name("node-a1", 6) == "peer6_node_a1" and bgp.proto_name("n1") == "peer_n1"
    assert bgp.family_of_proto("peer6_n1") == 6 and bgp.family_of_proto("peer_n1") == 4
    assert bgp.family_of("fd00::/64") == 6 and bgp.family_of("10.0.0.0/8") == 4


def test_parse_ipv6_routes():
    r = bgp.parse_routes("fd00:10:246:1::/64 via fd00:138::c dev eth0 proto bird metric 32 pref medium\n"
                         "fd00:9::9 dev eth0 proto bird metric 32 pref medium\n"
                         "default via fd00:138::1 dev eth0 proto bird metric 32 pref medium\n", 6)
    assert r == {"fd00:10:246:1::/64": "fd00:138::c", "fd00:9::9/128": None, "::/0": "fd00:138::1"}


BIRD_ROUTES = """BIRD 2.0.12 ready.
Table master4:
10.246.0.0/24        unreachable [pods 17:06:35.620] * (200)
10.246.1.0/24        unicast [peer_node2 17:06:36.500] * (100) [i]
\tvia 192.168.138.12 on eth0
                     unicast [peer_node3 17:06:37.000] (100) [i]
\tvia 192.168.138.13 on eth0

Table master6:
fd00:10:246:2::/64   unicast [peer6_node3 17:06:36.912] * (100) [i]
\tvia fd00:138::d on eth0
fd00:10:245:2::/64   unicast [peer6_node1 17:06:56.492 from fd00:139::b] * (100) [i]
\tvia fd00:139::d on eth0
fd00:10:246::/64     unreachable [pods6 17:06:35.620] * (200)
"""


def test_parse_bird_routes_per_protocol():
    got = bgp.parse_bird_routes(BIRD_ROUTES)
    assert got == {"pods": ["10.246.0.0/24"], "peer_node2": ["10.246.1.0/24"], "peer_node3": ["10.246.1.0/24"],
                   "peer6_node3": ["fd00:10:246:2::/64"], "peer6_node1": ["fd00:10:245:2::/64"],
                   "pods6": ["fd00:10:246::/64"]}


def test_check_judges_each_family(monkeypatch):
    topo = loads(DUAL)
    fams = bgp.families(topo)
    assert fams == [4, 6]
    up = bgp.Session("x", "up", "Established")
    sess = {"peer_node2": up, "peer6_node2": up, "peer_node3": up,
            "peer6_node3": bgp.Session("peer6_node3", "start", "Active  Socket: Connection refused")}
    routes = {"10.246.1.0/24": "192.168.138.12", "10.246.2.0/24": "192.168.138.13",
              "fd00:10:246:1::/64": "fe80::1"}
    monkeypatch.setattr(bgp, "sessions", lambda sock: sess)
    monkeypatch.setattr(bgp, "learned", lambda ns, families=(4, 6): routes)
    problems, _ = bgpcheck._problems(topo, "ns", "sock", ["node2", "node3"], ["node2", "node3"], fams)
    assert problems == ["IPv6 session with node3 start: Active  Socket: Connection refused",
                        "fd00:10:246:1::/64 of node2 learned via fe80::1, not fd00:138::c",
                        "fd00:10:246:2::/64 of node3 not learned"]
    sess["peer6_node3"] = up
    routes.update({"fd00:10:246:1::/64": "fd00:138::c", "fd00:10:246:2::/64": "fd00:138::d"})
    assert bgpcheck._problems(topo, "ns", "sock", ["node2", "node3"], ["node2", "node3"], fams)[0] == []


class _State:
    def __init__(self, recs):
        self.recs = recs

    def find(self, kind):
        return self.recs if kind == "process" else []


def test_trace_cause_for_an_ipv6_destination(monkeypatch):
    recs = [{"bgp": True, "ns": "nl-x-n-node1", "node": "node1", "socket": "/s1", "peers": {"node2": "fd00:138::c"},
             "announce": ["10.246.0.0/24", "fd00:10:246::/64"]},
            {"bgp": True, "ns": "nl-x-n-node2", "node": "node2", "socket": "/s2", "peers": {"node1": "fd00:138::b"},
             "announce": ["10.246.1.0/24", "fd00:10:246:1::/64"]}]
    st = _State(recs)
    # the IPv4 session is down, the IPv6 one is up: for an IPv6 destination only the IPv6 one counts
    monkeypatch.setattr(bgp, "sessions", lambda sock: {
        "peer_node2": bgp.Session("peer_node2", "start", "Active"),
        "peer6_node2": bgp.Session("peer6_node2", "up", "Established")})
    out = bgp.missing_route_cause(st, "nl-x-n-node1", "fd00:10:246:1::7")
    assert out[0] == ("no route to fd00:10:246:1::/64 on node node1 (not learned via BGP): node node2 "
                      "should announce it (BIRD protocol static pods6)")
    assert "every IPv6 BGP session of node node1 is Established" in out[1]
    assert "show route export peer6_node1" in out[1]
    out4 = bgp.missing_route_cause(st, "nl-x-n-node1", "10.246.1.7")
    assert out4[1] == "BGP session peer_node2 on node node1 is not established: start Active"
    assert bgp.missing_route_cause(st, "nl-x-n-node1", "fd00:10:246::7") == []   # its own slice
