"""BGP-routed networks without root: schema, plan, BIRD config rendering (and
BIRD's own parser on it), birdc/ip output parsing (netlab/features/bgp.py, ADR 0024)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from netlab.features import bgp
from netlab.lab.plan import make_plan
from netlab.lab.topology import TopologyError, loads

BASE = """
name: b
underlay: {subnet: 192.168.131.0/24}
nodes: {node1: {}, node2: {}, node3: {}}
networks:
  pods: {type: routed, subnet: 10.247.0.0/16, nodePrefix: 24}
dns: {enabled: false}
pods:
  a1: {node: node1, network: pods}
  c1: {node: node3, network: pods}
"""


def topo(extra: str = "", base: str = BASE):
    return loads(base + extra)


def bgp_steps(t):
    return {s.params["node"]: s for s in make_plan(t, "/lab").steps if s.kind == "bgp"}


def errors(text: str) -> str:
    with pytest.raises(TopologyError) as e:
        loads(text)
    return "\n".join(e.value.errors)


def test_routed_defaults_to_bgp_and_pods_attach_with_the_bridge_plugin():
    t = topo()
    assert t.networks["pods"].routing == "bgp"
    assert t.bgp.asn == bgp.DEFAULT_ASN and t.bgp.mesh == "full"
    assert t.pods["a1"].mode == "bridge"
    plan = make_plan(t, "/lab")
    attach = [s for s in plan.steps if s.kind == "attach"]
    assert attach[0].params["conflist"]["plugins"][0]["type"] == "bridge"
    assert attach[0].params["conflist"]["plugins"][0]["ipam"]["ranges"][0][0]["subnet"] == "10.247.0.0/24"


def test_bgp_network_gets_no_static_node_routes_static_one_does():
    routes = [s for s in make_plan(topo(), "/lab").steps
              if s.kind == "routes" and "-n-" in s.params["ns"]]
    assert routes == []
    static = topo(base=BASE.replace("type: routed,", "type: routed, routing: static,"))
    assert static.bgp is None
    plan = make_plan(static, "/lab")
    routes = [s for s in plan.steps if s.kind == "routes" and s.params["ns"] == "nl-b-n-node1"]
    assert routes[0].params["routes"] == [{"dst": "10.247.1.0/24", "via": "192.168.131.12"},
                                          {"dst": "10.247.2.0/24", "via": "192.168.131.13"}]
    assert not [s for s in plan.steps if s.kind == "bgp"]


def test_existing_bridge_networks_stay_static():
    t = topo(base=BASE.replace("type: routed", "type: bridge"))
    assert t.networks["pods"].routing == "static" and t.bgp is None


def test_full_mesh_config_peers_every_other_node_and_announces_its_slice():
    steps = bgp_steps(topo())
    conf = steps["node2"].params["config"]
    assert "router id 192.168.131.12;" in conf
    assert "route 10.247.1.0/24 unreachable;" in conf
    assert "protocol bgp peer_node1 from underlay { neighbor 192.168.131.11 as 64512; }" in conf
    assert "protocol bgp peer_node3 from underlay { neighbor 192.168.131.13 as 64512; }" in conf
    assert "local as 64512;" in conf and "rr client" not in conf
    assert "export where source = RTS_BGP" in conf     # only learned routes reach the kernel
    assert steps["node2"].params["files"]["socket"] == "/lab/bgp/node2/bird.ctl"
    assert steps["node2"].params["announce"] == ["10.247.1.0/24"]


def test_reflector_config_clients_peer_only_with_the_reflector():
    steps = bgp_steps(topo("bgp: {asn: 65010, mesh: reflector, reflector: node2}\n"))
    rr, client = steps["node2"].params["config"], steps["node1"].params["config"]
    assert "rr client;" in rr and "peer_node1" in rr and "peer_node3" in rr
    assert "rr client" not in client and "peer_node3" not in client
    assert "protocol bgp peer_node2 from underlay { neighbor 192.168.131.12 as 65010; }" in client


def test_node_overrides_wrong_asn_and_export_deny():
    t = topo("bgp:\n  asn: 64512\n  nodes:\n    node3: {asn: 65001, exportDeny: [10.247.2.0/24]}\n")
    conf = bgp_steps(t)["node3"].params["config"]
    assert "local as 65001;" in conf
    assert "neighbor 192.168.131.11 as 64512;" in conf
    assert "if net ~ [ 10.247.2.0/24 ] then reject;" in conf
    assert "local as 64512;" in bgp_steps(t)["node1"].params["config"]


@pytest.mark.skipif(not shutil.which("bird"), reason="bird (Debian bird2) is not installed")
@pytest.mark.parametrize("extra", ["", "bgp: {mesh: reflector, reflector: node1}\n",
                                   "bgp: {nodes: {node1: {asn: 1, exportDeny: [10.247.0.0/24, 10.9.0.0/16]}}}\n"])
def test_bird_parses_every_rendered_config(extra, tmp_path):
    for node, s in bgp_steps(topo(extra)).items():
        path = tmp_path / f"{node}.conf"
        path.write_text(s.params["config"].replace("/lab/", f"{tmp_path}/"))
        r = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, (node, r.stderr)


@pytest.mark.parametrize("extra, msg", [
    ("bgp: {mesh: reflector}\n", "bgp.reflector: is required with mesh: reflector"),
    ("bgp: {mesh: reflector, reflector: node9}\n", "unknown node 'node9'"),
    ("bgp: {mesh: star}\n", "bgp.mesh: must be one of full, reflector"),
    ("bgp: {reflector: node1}\n", "only with mesh: reflector"),
    ("bgp: {asn: 0}\n", "bgp.asn: must be between 1"),
    ("bgp: {nodes: {node1: {exportDeny: [10.0.0.1/8]}}}\n", "is not an IPv4 or IPv6 prefix"),
    ("bgp: {nodes: {node7: {asn: 1}}}\n", "bgp.nodes.node7: unknown node"),
    ("bgp: {nodes: {node1: {color: red}}}\n", "unknown key"),
    ("checks: [{type: bgp, node: nodex}]\n", "unknown node 'nodex'"),
    ("checks: [{type: bgp, node: node1, learned: [zz]}]\n", "checks[0].learned[0]: unknown node"),
    ("checks: [{type: bgp, node: node1, expect: maybe}]\n", "must be pass or fail"),
])
def test_schema_errors(extra, msg):
    assert msg in errors(BASE + extra)


def test_bgp_on_overlay_and_bgp_key_without_bgp_network_are_errors():
    assert "an overlay network is not routed" in errors(
        BASE.replace("type: routed,", "type: overlay, vni: 5, routing: bgp,").replace("pods: {node: node1, network: pods}", ""))
    assert "no network has routing: bgp" in errors(
        BASE.replace("type: routed,", "type: bridge,") + "bgp: {asn: 65000}\n")


def test_bgp_check_defaults():
    t = topo("checks: [{type: bgp, node: node1}]\n")
    c = t.checks[0]
    assert (c.name, c.params["expect"], c.params["peers"], c.params["learned"]) == ("bgp on node1", "pass", None, None)


def test_parse_protocols_and_routes():
    text = """BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     11:31:58.997
pods       Static     master4    up     11:31:58.997
peer_node2 BGP        ---        up     11:31:59.814  Established
peer_node3 BGP        ---        start  11:31:59.959  Active        Received: Bad peer AS
"""
    s = bgp.parse_protocols(text)
    assert set(s) == {"peer_node2", "peer_node3"}
    assert s["peer_node2"].info == "Established"
    assert s["peer_node3"].state == "start" and "Bad peer AS" in s["peer_node3"].info
    r = bgp.parse_routes("10.247.1.0/24 via 192.168.131.12 dev eth0 proto bird metric 32 \n"
                         "10.9.9.9 dev eth0 proto bird metric 32\n")
    assert r == {"10.247.1.0/24": "192.168.131.12", "10.9.9.9/32": None}


def test_proto_names_are_identifiers():
    assert bgp.proto_name("node-a1") == "peer_node_a1"


def test_shipped_bgp_topology_validates():
    from netlab.lab.topology import load
    t = load(os.path.join(os.path.dirname(__file__), "..", "topologies", "bgp.yaml"))
    assert t.bgp.mesh == "full" and {c.type for c in t.checks} == {"bgp", "reach"}


def test_bridge_network_can_route_by_bgp_too():
    t = topo(base=BASE.replace("type: routed,", "type: bridge, routing: bgp,"))
    assert t.bgp is not None and t.pods["a1"].mode == "bridge"
    plan = make_plan(t, "/lab")
    assert [s.params["node"] for s in plan.steps if s.kind == "bgp"] == ["node1", "node2", "node3"]
    assert not [s for s in plan.steps if s.kind == "routes" and "-n-" in s.params["ns"]]


class _State:
    def __init__(self, recs):
        self.recs = recs

    def find(self, kind):
        return self.recs if kind == "process" else []


def test_trace_explanation_is_silent_without_bgp():
    assert bgp.missing_route_cause(None, "nl-x-n-node1", "10.0.0.1") == []
    assert bgp.missing_route_cause(_State([{"name": "dnsmasq", "pid": 1}]), "nl-x-n-node1", "10.0.0.1") == []
    recs = [{"bgp": True, "ns": "nl-x-n-node1", "node": "node1", "announce": ["10.247.0.0/24"], "socket": "/nonexistent"},
            {"bgp": True, "ns": "nl-x-n-node2", "node": "node2", "announce": ["10.247.1.0/24"], "socket": "/x"}]
    # an address nobody announces, or the node's own slice: not a BGP matter
    assert bgp.missing_route_cause(_State(recs), "nl-x-n-node1", "10.9.0.1") == []
    assert bgp.missing_route_cause(_State(recs), "nl-x-n-node1", "10.247.0.7") == []
    out = bgp.missing_route_cause(_State(recs), "nl-x-n-node1", "10.247.1.7")
    assert out[0].startswith("no route to 10.247.1.0/24 on node node1 (not learned via BGP): node node2")
    assert "BIRD on node node1 does not answer" in out[1]
