"""Root tests: BGP-routed pod networks (netlab/features/bgp.py, ADR 0024) on real BIRD
daemons in lab namespaces: sessions come up through a route reflector, pod
routes are learned (proto bird, via the announcing node, not the reflector),
pods reach each other across nodes, a stopped daemon's routes are withdrawn,
and `netlab down` stops exactly the recorded daemons."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from netlab.features import bgp
from netlab.base import state as statemod
from tests.test_netlab_labs import lab_name, leftovers, netlab

pytestmark = [pytest.mark.root, pytest.mark.slow]

REFLECTOR = """
name: rr
underlay: {subnet: 192.168.134.0/24}
nodes: {node1: {}, node2: {}, node3: {}}
networks:
  pods: {type: routed, subnet: 10.250.0.0/16, nodePrefix: 24}
bgp: {asn: 65100, mesh: reflector, reflector: node1}
dns: {enabled: false}
external: false
pods:
  a1: {node: node1, network: pods, ip: 10.250.0.10}
  b1: {node: node2, network: pods, ip: 10.250.1.10}
  c1: {node: node3, network: pods, ip: 10.250.2.10}
checks:
  - {type: bgp, node: node1, name: "reflector node1"}
  - {type: bgp, node: node2, name: "client node2"}
  - {type: bgp, node: node3, name: "client node3"}
  - {type: reach, from: b1, to: c1, proto: tcp, port: 80, name: "b1 -> c1 (client to client)"}
  - {type: reach, from: c1, to: a1, name: "c1 -> a1"}
"""


def wait_for(fn, what: str, tries: int = 60):
    for _ in range(tries):
        v = fn()
        if v:
            return v
        time.sleep(0.5)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.fixture
def rr_lab(tmp_path):
    topo = tmp_path / "rr.yaml"
    topo.write_text(REFLECTOR)
    name = lab_name()
    lab_dir = str(tmp_path / "lab")
    up = netlab("up", str(topo), "--name", name, "--lab-dir", lab_dir, "--json", "-q")
    try:
        yield name, lab_dir, up
    finally:
        d = netlab("down", "--lab-dir", lab_dir)
        assert d.returncode == 0, d.stderr
        assert leftovers(name, lab_dir) == []


def test_reflector_lab_sessions_learned_routes_and_reach(rr_lab):
    name, lab_dir, up = rr_lab
    report = json.loads(up.stdout)
    failed = [c for c in report["checks"] if not c["ok"]]
    assert up.returncode == 0 and not failed, json.dumps(report["checks"], indent=1)
    # clients peer only with the reflector; the reflector with both clients
    s2 = bgp.sessions(bgp.files(lab_dir, "node2")["socket"])
    assert {k: v.info for k, v in s2.items()} == {"peer_node1": "Established"}
    s1 = bgp.sessions(bgp.files(lab_dir, "node1")["socket"])
    assert set(s1) == {"peer_node2", "peer_node3"} and all(v.info == "Established" for v in s1.values())
    # node2 learned node3's slice through the reflector, with node3 as next hop
    routes = bgp.learned(f"nl-{name}-n-node2")
    assert routes == {"10.250.0.0/24": "192.168.134.11", "10.250.2.0/24": "192.168.134.13"}
    raw = subprocess.run(["ip", "-n", f"nl-{name}-n-node2", "route", "show", "10.250.2.0/24"],
                         capture_output=True, text=True).stdout
    assert "proto bird" in raw


def test_stopped_daemon_routes_are_withdrawn_and_down_stops_each_bird(rr_lab):
    name, lab_dir, up = rr_lab
    assert up.returncode == 0, up.stderr[-2000:]
    st = statemod.load(lab_dir)
    birds = {r["node"]: r for r in bgp.bird_records(st)}
    assert set(birds) == {"node1", "node2", "node3"}
    for r in birds.values():
        assert statemod.proc_starttime(int(r["pid"])) == r["starttime"]
        with open(f"/proc/{r['pid']}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[0].endswith(b"bird")
    wait_for(lambda: "10.250.2.0/24" in bgp.learned(f"nl-{name}-n-node2"), "node3's route on node2")
    # node3's BIRD goes away: its slice is withdrawn everywhere (nothing was written by netlab)
    os.kill(int(birds["node3"]["pid"]), signal.SIGTERM)
    wait_for(lambda: "10.250.2.0/24" not in bgp.learned(f"nl-{name}-n-node2"), "the withdrawal on node2")
    assert "10.250.2.0/24" not in bgp.learned(f"nl-{name}-n-node1")
    v = json.loads(netlab("verify", "--lab-dir", lab_dir, "--json").stdout)
    by = {c["name"]: c for c in v["checks"]}
    assert not by["client node2"]["ok"] and "10.250.2.0/24 of node3 not learned" in by["client node2"]["observed"]
    assert not by["b1 -> c1 (client to client)"]["ok"]
    assert by["reflector node1"]["observed"].startswith("fail: session with node3")


# --------------------------------------------------------------------------- IPv6 (ADR 0035)

V6_TOPOLOGY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "topologies", "bgp-ipv6-only.yaml")


def test_ipv6_only_reflector_routes_via_bird_reach_status_and_trace(tmp_path):
    """The shipped IPv6-only lab: IPv6 sessions through the reflector, /64s in the
    kernel's IPv6 table with proto bird via the announcing node's global address,
    IPv6 packets between pods on the wire, per-peer prefixes in `netlab status`,
    and, once node3's BIRD is gone, the withdrawal and trace naming the /64."""
    name = lab_name()
    lab_dir = str(tmp_path / "lab")
    up = netlab("up", V6_TOPOLOGY, "--name", name, "--lab-dir", lab_dir, "--json", "-q")
    try:
        report = json.loads(up.stdout)
        failed = [c for c in report["checks"] if not c["ok"]]
        assert up.returncode == 0 and not failed, json.dumps(report["checks"], indent=1)
        n2 = f"nl-{name}-n-node2"
        s2 = bgp.sessions(bgp.files(lab_dir, "node2")["socket"])
        assert {k: v.info for k, v in s2.items()} == {"peer6_node1": "Established"}
        s1 = bgp.sessions(bgp.files(lab_dir, "node1")["socket"])
        assert set(s1) == {"peer6_node2", "peer6_node3"} and all(v.info == "Established" for v in s1.values())
        # reflected with node3 as next hop (its global underlay address, not the reflector's)
        assert bgp.learned(n2) == {"fd00:10:245::/64": "fd00:139::b", "fd00:10:245:2::/64": "fd00:139::d"}
        raw = subprocess.run(["ip", "-n", n2, "-6", "route", "show", "fd00:10:245:2::/64"],
                             capture_output=True, text=True).stdout
        assert "via fd00:139::d" in raw and "proto bird" in raw
        # the pod-to-pod packets were captured at the destination pod (IPv6, b1 -> c1)
        from scapy.all import IPv6, rdpcap
        by = {c["name"]: c for c in report["checks"]}
        pk = [p for p in rdpcap(by["b1 -> c1 (client to client)"]["evidence"]) if p.haslayer(IPv6)
              and p[IPv6].src == "fd00:10:245:1::10" and p[IPv6].dst == "fd00:10:245:2::10"]
        assert pk, "no IPv6 packet from b1 to c1 in the capture"
        st_txt = netlab("status", "--lab-dir", lab_dir).stdout
        line = next(ln for ln in st_txt.splitlines() if "bgp   node2 peer6_node1" in ln)
        assert "(IPv6) Established: 2 prefix(es) learned" in line
        assert "fd00:10:245::/64" in line and "fd00:10:245:2::/64" in line
        # node3's BIRD goes away: its /64 is withdrawn; the check and trace say which prefix
        birds = {r["node"]: r for r in bgp.bird_records(statemod.load(lab_dir))}
        os.kill(int(birds["node3"]["pid"]), signal.SIGTERM)
        wait_for(lambda: "fd00:10:245:2::/64" not in bgp.learned(n2), "the IPv6 withdrawal on node2")
        # (the bgp check's verdict on this is unit-tested: verify would wait out its timeouts)
        assert "fd00:10:245:2::/64" not in bgp.learned(f"nl-{name}-n-node1")
        t = netlab("trace", "b1", "c1", "--lab-dir", lab_dir)
        assert "no route to fd00:10:245:2::/64 on node node2 (not learned via BGP)" in t.stdout, t.stdout + t.stderr
    finally:
        d = netlab("down", "--lab-dir", lab_dir)
        assert d.returncode == 0, d.stderr
        assert leftovers(name, lab_dir) == []
