"""Unit tests (no root): scenario schema and judging, the CNI call log reader,
graph rendering, trace's probe parsing and frame decoding."""
from __future__ import annotations

import json
import os
import textwrap

import pytest

from cniruntime import cnilog
from netlab.debug import graph, trace
from netlab.lab import scenario
from netlab.checks.common import CheckResult
from netlab.lab.topology import TopologyError, loads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BASE = textwrap.dedent("""\
    name: u
    nodes: {node1: {}, node2: {}}
    networks: {podnet: {type: bridge, subnet: 10.50.0.0/16}}
    pods:
      a: {node: node1, network: podnet}
      b: {node: node2, network: podnet, ip: 10.50.16.9}
      h: {node: node1, mode: host}
    checks:
      - {type: reach, from: a, to: b, name: ab}
    """)


def test_every_shipped_scenario_validates():
    d = os.path.join(REPO, "topologies", "scenarios")
    for fn in sorted(os.listdir(d)):
        with open(os.path.join(d, fn)) as f:
            text = f.read()
        topo = loads(text, os.path.join(d, fn))    # raises on any error
        assert topo.scenario.failing


def test_scenario_errors_are_reported_with_their_place():
    bad = BASE + textwrap.dedent("""\
        scenario:
          symptom: s
          colour: red
          faults:
            - sysctl: {in: nosuch, key: kernel.panic, value: 1}
            - replace: {pod: b}
            - replace: {pod: h}
            - udp-flow: {from: a, to: 10.0.0, port: 70000}
            - teleport: {}
            - wait: 99
          failing:
            - {check: nosuch, reason: "("}
        """)
    with pytest.raises(TopologyError) as ei:
        loads(bad, "x.yaml")
    errs = "\n".join(ei.value.errors)
    for want in ("scenario.colour: unknown key", "scenario.faults[0].sysctl.in: unknown target 'nosuch'",
                 "scenario.faults[0].sysctl.key: must be a net.* sysctl key",
                 "scenario.faults[1].replace.pod: a pod with a requested ip would get the same address back",
                 "scenario.faults[2].replace.pod: only a pod with its own network attachment can be replaced",
                 "scenario.faults[3].udp-flow.to: '10.0.0' is not an IPv4 address",
                 "scenario.faults[3].udp-flow.port: must be a port number", "scenario.faults[4].teleport: unknown fault",
                 "scenario.faults[5].wait: must be a number of seconds", "scenario.failing[0].check: no check named 'nosuch'",
                 "scenario.failing[0].reason: not a valid regular expression"):
        assert want in errs, want
    assert errs.startswith("x.yaml:")       # with a file:line location


def test_judge_wants_the_declared_failures_for_the_declared_reasons():
    sc = scenario.Scenario(failing=[scenario.Failing("ab", "^fail: .*timed out")])
    ok = CheckResult("other", "reach", True, observed="pass")
    assert scenario.judge(sc, [CheckResult("ab", "reach", False, observed="fail: TimeoutError: timed out"), ok]) == []
    assert "not for the stated reason" in scenario.judge(sc, [CheckResult("ab", "reach", False, observed="fail: refused")])[0]
    assert "expected to fail" in scenario.judge(sc, [CheckResult("ab", "reach", True, observed="pass")])[0]
    assert "should pass" in scenario.judge(sc, [CheckResult("other", "reach", False, observed="fail")])[0]


def test_service_ruleset_is_our_table_only():
    from netlab.lab.faults import _svc_ruleset
    text = _svc_ruleset([{"name": "dns", "vip": "10.96.0.10", "port": 53, "proto": "udp", "pod": "d"}],
                        {"d": "10.1.2.3"})
    assert "table ip cnilab-svc" in text
    assert "add rule ip cnilab-svc pre ip daddr 10.96.0.10 udp dport 53 dnat to 10.1.2.3:53" in text
    assert "add rule ip cnilab-svc out ip daddr 10.96.0.10 udp dport 53 dnat to 10.1.2.3:53" in text
    assert "flush ruleset" not in text


def test_cni_log_read_filter_format(tmp_path):
    calls = [
        {"time": 2.0, "plugin": "bridge", "command": "ADD", "network": "n", "container_id": "c-web", "ifname": "eth0",
         "netns": "/var/run/netns/nl-x-p-web", "env": {"CNI_COMMAND": "ADD", "CNI_ARGS": "K8S_POD_NAME=web;X=1"},
         "stdin": {"type": "bridge"}, "stdout": '{"ips": []}', "stderr": "", "exit_status": 0, "duration_ms": 12.5},
        {"time": 1.0, "plugin": "vxlan", "command": "ADD", "network": "o", "container_id": "c-db", "ifname": "eth0",
         "netns": "/var/run/netns/nl-x-p-db", "env": {"CNI_COMMAND": "ADD"}, "stdin": {"type": "vxlan"},
         "stdout": '{"code": 7, "msg": "bad"}', "stderr": "boom", "exit_status": 1, "duration_ms": 3.0},
    ]
    with open(tmp_path / "cni.log", "w") as f:
        for c in calls:
            f.write(json.dumps(c) + "\n")
        f.write('{"torn": ')                      # a crash mid-line is skipped
    got = cnilog.read(str(tmp_path))
    assert [c.plugin for c in got] == ["vxlan", "bridge"]          # oldest first
    web = cnilog.for_pod(got, "web", {"web": {"container_id": "c-web", "netns": "nl-x-p-web"}})
    assert [c.plugin for c in web] == ["bridge"]
    brief = cnilog.format_calls(got, brief=True).splitlines()
    assert "exit 1" in brief[0] and "pod web" in brief[1] and "12.5 ms" in brief[1]
    full = cnilog.format_calls(got)
    assert "stderr\n      boom" in full and '"code": 7' in full and "CNI_COMMAND=ADD" in full
    assert cnilog.format_calls([]) == "no plugin calls recorded"


def _inv() -> graph.Inventory:
    L = graph.Link
    sw = graph.NSInfo("nl-x-sw", "switch", "underlay", {
        "br0": L("nl-x-sw", "br0", 2, "bridge", 1500), "n0": L("nl-x-sw", "n0", 3, "veth", 1500, master="br0",
                                                              peer=("nl-x-n-node1", "eth0"))})
    node = graph.NSInfo("nl-x-n-node1", "node", "node1", {
        "eth0": L("nl-x-n-node1", "eth0", 2, "veth", 1500, addrs=["192.168.1.11/24"], peer=("nl-x-sw", "n0")),
        "vxlan7": L("nl-x-n-node1", "vxlan7", 3, "vxlan", 1450, vni=7, vtep="192.168.1.11", vxlan_port=4789),
        "cni0": L("nl-x-n-node1", "cni0", 4, "bridge", 1500, addrs=["10.1.0.1/24"]),
        "veth1": L("nl-x-n-node1", "veth1", 5, "veth", 1500, master="cni0", hairpin=False, peer=("nl-x-p-a", "eth0"))})
    pod = graph.NSInfo("nl-x-p-a", "pod", "a", {
        "eth0": L("nl-x-p-a", "eth0", 2, "veth", 1500, addrs=["10.1.0.5/24"], peer=("nl-x-n-node1", "veth1"))},
        node="nl-x-n-node1")
    return graph.Inventory("x", {n.name: n for n in (sw, node, pod)},
                           [{"node_ns": "nl-x-n-node1", "pod": "a", "hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])


def test_graph_dot_and_mermaid():
    inv = _inv()
    dot = graph.render_dot(inv)
    assert dot.count("[penwidth=2") == 2                 # two veth pairs, each drawn once
    assert "VXLAN VNI 7\\nlocal 192.168.1.11:4789" in dot and "hairpin off" in dot
    assert "host ports: 8080/tcp->a:80" in dot and "10.1.0.5/24" in dot
    mm = graph.render_mermaid(inv)
    assert mm.startswith("flowchart TB") and mm.count(" === ") == 2 and "{{" in mm
    inv.sharing = {"nl-x-n-node1": ["exp (host network)"]}
    inv.namespaces["nl-x-p-none"] = graph.NSInfo("nl-x-p-none", "pod", "none", {
        "lo": graph.Link("nl-x-p-none", "lo", 1, "loopback", 65536)})
    dot = graph.render_dot(inv)
    assert "also here: exp (host network)" in dot and "lo only (no network)" in dot


def test_trace_probe_options():
    assert trace.parse_proto("icmp") == ("icmp", None)
    assert trace.parse_proto("TCP/8080") == ("tcp", 8080)
    for bad in ("tcp", "udp/0", "udp/70000", "sctp/1"):
        with pytest.raises(trace.TraceError):
            trace.parse_proto(bad)
    pr = trace.Probe("udp", "10.0.0.2", 53, 100, False, b"NLTRACE-00000000")
    assert len(pr.payload()) == 100 - 28 and pr.payload().startswith(b"NLTRACE-")


def test_decode_vxlan_frame_and_icmp_error():
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    inner = Ether() / IP(src="10.1.0.5", dst="10.1.1.7", ttl=63) / ICMP(type=8, id=5) / b"NLTRACE-abcdabcd"
    outer = Ether() / IP(src="192.168.1.11", dst="192.168.1.12", flags="DF") / UDP(sport=5555, dport=4789) / VXLAN(vni=42) / inner
    d = trace.decode_frame(bytes(outer))
    assert d["vxlan"]["vni"] == 42 and d["ip"]["udp"]["dport"] == 4789 and d["ip"]["df"]
    assert d["inner"]["src"] == "10.1.0.5" and d["inner"]["ttl"] == 63 and d["inner"]["icmp"]["type"] == 8
    err = Ether() / IP(src="10.1.1.7", dst="10.1.0.5") / ICMP(type=3, code=3) / IP(src="10.1.0.5", dst="10.1.1.7") / UDP(sport=40000, dport=53)
    e = trace.decode_frame(bytes(err))
    assert trace.l4_summary(e["ip"]) == "10.1.1.7 > 10.1.0.5 ICMP unreachable (port)"
    assert trace.l4_summary(e["ip"]["quoted"]) == "10.1.0.5:40000 > 10.1.1.7:53 UDP"
    fn = Ether() / IP(src="10.1.0.1", dst="10.1.0.5") / ICMP(type=3, code=4, nexthopmtu=1400)
    assert "fragmentation needed, next-hop MTU 1400" in trace.l4_summary(trace.decode_frame(bytes(fn))["ip"])
