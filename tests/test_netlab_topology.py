"""Topology schema and validation (no root needed)."""
from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from netlab.lab import topology as T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(glob.glob(os.path.join(REPO, "topologies", "*.yaml")))

MINIMAL = """
name: t1
nodes:
  n1: {}
  n2: {address: 192.168.100.50, mtu: 1400}
networks:
  podnet: {type: bridge, subnet: 10.244.0.0/16}
pods:
  a: {node: n1, network: podnet}
"""


def test_every_shipped_topology_validates():
    assert len(SHIPPED) >= 7
    for path in SHIPPED:
        topo = T.load(path)
        assert topo.name and topo.nodes and topo.checks, path


def test_minimal_defaults():
    t = T.loads(MINIMAL)
    assert t.underlay.subnet.with_prefixlen == "192.168.100.0/24" and t.underlay.mtu == 1500
    assert t.nodes["n1"].address == "192.168.100.11" and t.nodes["n1"].mtu == 1500
    assert t.nodes["n2"].address == "192.168.100.50" and t.nodes["n2"].mtu == 1400
    assert t.networks["podnet"].node_prefix == 24
    p = t.pods["a"]
    assert p.mode == "bridge" and p.namespace == "default" and p.dns.ndots == 5 and p.ifname == "eth0"
    assert t.dns.enabled and t.dns.domain == "cluster.local" and t.dns.address == "192.168.100.2"


def test_name_override():
    assert T.loads(MINIMAL, name="other").name == "other"


def test_every_error_is_reported_with_its_location():
    text = """name: Bad_Name
underlay: {subnet: 10.0.0.0/33, mtu: 20}
nodes:
  n1: {address: 1.2.3.4}
  n2: {colour: red}
networks:
  podnet: {type: ring, subnet: 10.244.0.0/16}
  vx: {type: overlay, subnet: 10.250.0.0/24}
pods:
  a: {node: nowhere, network: podnet, ip: 10.9.9.9}
  b: {node: n1, mode: "container:ghost"}
  c: {node: n1, network: podnet, bandwidth: {rate: fast}, ports: [{hostPort: 70000}]}
checks:
  - {type: reach, from: a, to: zz}
  - {type: teleport}
  - {type: dns, pod: a, query: x}
"""
    with pytest.raises(T.TopologyError) as ei:
        T.loads(text, "bad.yaml")
    errs = "\n".join(ei.value.errors)
    expected = [
        ("bad.yaml:1: name", "not a valid lab name"),
        ("bad.yaml:2: underlay.subnet", "not an IPv4 or IPv6 subnet"),
        ("bad.yaml:2: underlay.mtu", "between 576 and 9000"),
        ("bad.yaml:5: nodes.n2.colour", "unknown key"),
        ("bad.yaml:7: networks.podnet.type", "must be one of bridge, overlay"),
        ("bad.yaml:8: networks.vx.vni", "is required"),
        ("bad.yaml:10: pods.a.node", "unknown node 'nowhere'"),
        ("bad.yaml:11: pods.b.mode", "no pod named 'ghost'"),
        ("bad.yaml:12: pods.c.bandwidth.rate", "must be a rate"),
        ("bad.yaml:12: pods.c.ports[0].hostPort", "between 1 and 65535"),
        ("bad.yaml:14: checks[0].to", "unknown target 'zz'"),
        ("bad.yaml:15: checks[1].type", "must be one of"),
        ("bad.yaml:16: checks[2].expect", "give at least one of"),
    ]
    for where, what in expected:
        assert any(e.startswith(where) and what in e for e in ei.value.errors), (where, what, errs)
    assert len(ei.value.errors) >= len(expected)


@pytest.mark.parametrize("snippet,needle", [
    ("pods: {a: {node: n1, network: podnet, ip: 10.244.1.5}}", "not in node n1's slice 10.244.0.0/24"),
    ("pods: {a: {node: n1, network: podnet, ip: 10.244.0.1}}", "reserved"),
    ("pods: {a: {node: n1, network: podnet, ip: 10.244.0.9}, b: {node: n1, network: podnet, ip: 10.244.0.9}}",
     "already requested by pod a"),
    ("pods: {a: {node: n1, mode: host, ports: [{hostPort: 80}]}}", "port mappings need a network"),
    ("pods: {a: {node: n1, mode: none, network: podnet}}", "has no network of its own"),
    ("pods: {a: {node: n1, mode: 'container:b'}, b: {node: n1, mode: 'container:a'}}", "chain loops"),
    ("pods: {a: {node: n1, network: podnet}, b: {node: n2, mode: 'container:a'}}", "must be the node of the pod"),
    ("pods: {a: {node: n1, network: podnet, ports: [{hostPort: 80}]}, b: {node: n1, network: podnet, ports: [{hostPort: 80}]}}",
     "already taken by pod a"),
    ("pods: {ext: {node: n1, network: podnet}}", "reserved"),
    ("external: false\nchecks: [{type: reach, from: ext, to: n1}]", "unknown target 'ext'"),
    ("dns: {enabled: false}\nchecks: [{type: reach, from: n1, to: dns}]", "unknown target 'dns'"),
    ("checks: [{type: port, pod: a, hostPort: 81}]\npods: {a: {node: n1, network: podnet, ports: [{hostPort: 80}]}}",
     "no tcp mapping for host port 81"),
    ("checks: [{type: bandwidth, from: a, to: b}]\npods: {a: {node: n1, network: podnet}, b: {node: n1, network: podnet}}",
     "neither a (egress) nor b (ingress) is shaped"),
    ("checks: [{type: mtu, from: a, to: a}]\npods: {a: {node: n1, network: podnet}}", "expect.mtu: is required"),
])
def test_semantic_errors(snippet, needle):
    base = "name: t\nnodes: {n1: {}, n2: {}}\nnetworks: {podnet: {type: bridge, subnet: 10.244.0.0/16}}\n"
    with pytest.raises(T.TopologyError) as ei:
        T.loads(base + snippet)
    assert any(needle in e for e in ei.value.errors), ei.value.errors


def test_keys_no_check_reads_are_errors_with_their_location():
    """A key that nothing reads would make a check look stricter than it is."""
    text = """name: t
nodes: {n1: {}}
networks: {podnet: {type: bridge, subnet: 10.244.0.0/16}}
pods:
  a: {node: n1, network: podnet, ports: [{hostPort: 80}]}
  b: {node: n1, network: podnet, bandwidth: {rate: 10mbit}}
checks:
  - {type: bandwidth, from: a, to: b, direction: ingress}
  - {type: bandwidth, from: a, to: b, name: bw2, expect: pass}
  - {type: dns, pod: a, query: x.example, expect: {answer: none, rcode: NXDOMAIN}}
  - {type: port, pod: a, node: n1, hostPort: 80}
  - {type: capture, at: underlay, in: a, run: [true], expect: {min: 0}}
"""
    with pytest.raises(T.TopologyError) as ei:
        T.loads(text, "k.yaml")
    expected = [
        ("k.yaml:8: checks[0].direction", "unknown key"),
        ("k.yaml:9: checks[1].expect", "takes no expect"),
        ("k.yaml:10: checks[2].expect.rcode", "unknown key"),
        ("k.yaml:11: checks[3].node", "unknown key"),
        ("k.yaml:12: checks[4].expect.min", "could never fail"),
    ]
    for where, what in expected:
        assert any(e.startswith(where) and what in e for e in ei.value.errors), (where, what, ei.value.errors)
    assert len(ei.value.errors) == len(expected), ei.value.errors
    # min: 0 with a max is a real expectation ("no such packet")
    ok = text.split("checks:")[0] + "checks:\n  - {type: capture, at: underlay, in: a, run: [true], expect: {min: 0, max: 0}}\n"
    assert T.loads(ok).checks[0].params["expect"]["max"] == 0


def test_overlapping_and_public_subnets():
    text = """name: t
nodes: {n1: {}}
networks:
  a: {type: bridge, subnet: 10.1.0.0/16}
  b: {type: bridge, subnet: 10.1.2.0/24}
  c: {type: bridge, subnet: 8.8.0.0/16}
"""
    with pytest.raises(T.TopologyError) as ei:
        T.loads(text)
    assert any("overlaps network a" in e for e in ei.value.errors)
    assert any("not a private range" in e for e in ei.value.errors)


def test_yaml_syntax_error_has_a_line():
    with pytest.raises(T.TopologyError) as ei:
        T.loads("name: x\nnodes: [\n", "f.yaml")
    assert ei.value.errors[0].startswith("f.yaml:") and "not valid YAML" in ei.value.errors[0]


@pytest.mark.parametrize("text,bits", [("10mbit", 10_000_000), ("1.5Gbit", 1_500_000_000), ("500k", 500_000),
                                       (2000, 2000), ("1mbps", 8_000_000)])
def test_parse_rate(text, bits):
    assert T.parse_rate(text) == bits


@pytest.mark.parametrize("bad", ["fast", -1, True, "10 parsecs"])
def test_parse_rate_rejects(bad):
    with pytest.raises(ValueError):
        T.parse_rate(bad)


def test_node_slices_and_gateways():
    t = T.loads(MINIMAL)
    w = t.networks["podnet"]
    assert str(T.node_slice(w, 0)) == "10.244.0.0/24" and str(T.node_slice(w, 1)) == "10.244.1.0/24"
    assert str(T.gateway(w, 1)) == "10.244.1.1"


def test_conflist_from_file(tmp_path):
    (tmp_path / "net.conflist").write_text('{"cniVersion": "1.0.0", "name": "podnet", "plugins": [{"type": "bridge"}]}')
    (tmp_path / "t.yaml").write_text(MINIMAL.replace("{type: bridge, subnet: 10.244.0.0/16}",
                                                     "{type: bridge, subnet: 10.244.0.0/16, file: net.conflist}"))
    t = T.load(str(tmp_path / "t.yaml"))
    assert t.networks["podnet"].conflist["plugins"][0]["type"] == "bridge"
    (tmp_path / "t2.yaml").write_text(MINIMAL.replace("{type: bridge, subnet: 10.244.0.0/16}",
                                                      "{type: bridge, subnet: 10.244.0.0/16, file: missing.conflist}"))
    with pytest.raises(T.TopologyError) as ei:
        T.load(str(tmp_path / "t2.yaml"))
    assert "cannot read" in ei.value.errors[0]


def test_cli_exit_2_and_nothing_built(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nnodes: {n1: {mtu: 5}}\npods: {p: {node: n9}}\n")
    lab_dir = tmp_path / "lab"
    p = subprocess.run([sys.executable, "-m", "netlab", "up", str(bad), "--lab-dir", str(lab_dir)],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2, p.stderr
    assert "nothing was built" in p.stderr
    assert "nodes.n1.mtu" in p.stderr and "pods.p.node" in p.stderr
    assert not lab_dir.exists()
