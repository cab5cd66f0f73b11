"""Root test: a LoadBalancer address fails over and comes back (ADR 0026).

The scenario lab (topologies/scenarios/lb-speaker-down.yaml) is built with its
fault: node1, the speaker of 192.168.151.201, loses its underlay link and node2
takes the address over with gratuitous ARP. Here also: the address comes back to
node1 when its link does, the check fails when it expects the wrong speaker and when two speakers answer
(heartbeats blocked: split brain), and down leaves nothing (speakers included). tests/test_debug_scenarios.py runs the scenario's trace.
"""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
import yaml

from tests.test_netlab_labs import REPO, lab_name, leftovers, netlab

pytestmark = [pytest.mark.root, pytest.mark.slow]

SCENARIO = os.path.join(REPO, "topologies", "scenarios", "lb-speaker-down.yaml")
ADDR = "192.168.151.201"


def checks_file(tmp_path, checks: list[dict]) -> str:
    """The scenario's lab with other checks (and no faults), for netlab verify."""
    with open(SCENARIO, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    data.pop("scenario")
    data["checks"] = checks
    p = tmp_path / f"checks-{len(os.listdir(tmp_path))}.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_speaker_failover_hand_back_and_teardown(tmp_path):
    name = lab_name()
    lab_dir = str(tmp_path / "lab")
    try:
        up = netlab("up", SCENARIO, "--name", name, "--lab-dir", lab_dir, "--json")
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        assert f"fault: {ADDR} taken over by node2" in up.stderr, up.stderr[-3000:]
        report = {c["name"]: c for c in json.loads(up.stdout)["checks"]}
        lb = report[f"ext -> web-lb {ADDR} after the failover"]
        assert lb["ok"], lb
        assert "ARP for 192.168.151.201 answered by node2 (takeover by gratuitous ARP)" in lb["observed"]
        assert any(d.startswith("takeover: ") and "from node2" in d for d in lb["details"]), lb["details"]
        assert any("down: node1 (uplink eth0 is down" in d for d in lb["details"]), lb["details"]
        # the takeover on the wire: gratuitous ARPs for the address, from node2's MAC only
        from netlab.features import loadbalancer as LB
        macs = json.loads(subprocess.run(["ip", "-n", f"nl-{name}-n-node2", "-j", "link", "show", "eth0"],
                                         capture_output=True, text=True).stdout)[0]["address"]
        garps = [g for g in LB.garps_in(os.path.join(lab_dir, "evidence", LB.FAILOVER_PCAP)) if g["psrc"] == ADDR]
        assert garps and {g["hwsrc"] for g in garps} == {macs}

        # node1's link comes back: its speaker listens, then takes the address back
        subprocess.run(["ip", "-n", f"nl-{name}-sw", "link", "set", "n0", "up"], check=True)
        deadline = time.monotonic() + 30       # a bound, not a measurement: they converge in ~1.5 s
        while time.monotonic() < deadline and not (
                (LB.read_status(lab_dir, "node1") or {}).get("announcing") == [ADDR]
                and (LB.read_status(lab_dir, "node2") or {}).get("announcing") == []):
            time.sleep(0.1)
        back = checks_file(tmp_path, [{"type": "service", "from": "ext", "service": "web-lb", "via": "loadBalancer",
                                       "name": "back on node1"}])
        v = netlab("verify", back, "--lab-dir", lab_dir, "--json")
        res = json.loads(v.stdout)["checks"][0]
        assert v.returncode == 0 and "answered by node1" in res["observed"], res
        # the check fails when the ARP answer comes from another node than it expects
        wrong = checks_file(tmp_path, [{"type": "service", "from": "ext", "service": "web-lb", "via": "loadBalancer",
                                        "count": 2, "speaker": "node2", "name": "expects node2"}])
        v = netlab("verify", wrong, "--lab-dir", lab_dir, "--json")
        res = json.loads(v.stdout)["checks"][0]
        assert v.returncode != 0 and not res["ok"]
        assert f"ARP for {ADDR} answered by node1, but the speaker should be node2 (given)" in res["observed"], res
        # split brain: node1's heartbeats are dropped (a firewall on MetalLB's memberlist port).
        # node1 hears nobody and keeps the address; node2 and node3 count node1 down and node2
        # claims it: two MACs answer ARP, and the check says so
        rules = ("table ip lbtest {\n chain i { type filter hook input priority 0; udp dport 7946 drop; }\n"
                 " chain o { type filter hook output priority 0; udp dport 7946 drop; }\n}\n")
        subprocess.run(["ip", "netns", "exec", f"nl-{name}-n-node1", "nft", "-f", "-"], input=rules, text=True,
                       check=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (LB.read_status(lab_dir, "node2") or {}).get("announcing") != [ADDR]:
            time.sleep(0.1)
        assert (LB.read_status(lab_dir, "node1") or {}).get("announcing") == [ADDR]
        v = netlab("verify", back, "--lab-dir", lab_dir, "--json")
        res = json.loads(v.stdout)["checks"][0]
        assert v.returncode != 0 and not res["ok"]
        assert f"2 MACs answered ARP for {ADDR} (node1, node2): only the speaker may" in res["observed"], res
        t = netlab("trace", "ext", ADDR, "--proto", "tcp/80", "--lab-dir", lab_dir)
        assert f"cause: speakers disagree with the election: node1, node2 announce {ADDR}" in t.stdout, t.stdout
        st = json.load(open(os.path.join(lab_dir, "state.json")))
        speakers = [r for r in st["resources"] if r["kind"] == "process" and r["name"].startswith("lb speaker")]
        assert sorted(r["name"] for r in speakers) == ["lb speaker node1", "lb speaker node2", "lb speaker node3"]
    finally:
        d = netlab("down", "--lab-dir", lab_dir)
    assert d.returncode == 0, d.stderr
    assert leftovers(name, lab_dir) == []          # namespaces, lab dir, speaker processes
    for r in speakers:
        assert not os.path.exists(f"/proc/{r['pid']}") or open(f"/proc/{r['pid']}/cmdline").read().find(lab_dir) < 0
