"""Root tests: every scenario in topologies/scenarios/ comes up, its checks
fail exactly as it declares (the symptom, for the stated reason) while the
others pass, and netlab trace points at the cause. Labs always go down.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import unique_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "topologies", "scenarios", "*.yaml")))

pytestmark = [pytest.mark.root, pytest.mark.slow]

# what `netlab trace` must say for each scenario: (FROM, TO, trace options, text in the output
# [, tries: a random loss loses *some* probes, so the trace is repeated until one is lost])
TRACES = {
    "ip-forward-off.yaml": ("client", "web", ["--proto", "tcp/80"],
                            ["verdict: lost after node node2 cni0 (received)",
                             "cause: ip_forward is off in node node2 (net.ipv4.ip_forward = 0)"]),
    "hairpin-off.yaml": ("web", "node1", ["--proto", "tcp/8080"],
                         ["dnat to 10.241.0.2:80", "cause: hairpin:",
                          "hairpin mode is off on veth"]),
    "mtu-blackhole-vxlan.yaml": ("a", "b", ["--size", "2000", "--df"],
                                 ["encapsulated: VXLAN VNI 77", "verdict: lost after node node1 eth0 (sent)",
                                  "MTU: the frame carries a 2050-byte packet; n0 in underlay switch has MTU 1500"]),
    "masquerade-missing.yaml": ("app", "192.168.124.1", [],
                                ["verdict: delivered to underlay switch; no answer came back",
                                 "cause: no route back: underlay switch has no route to 10.242.",
                                 "nothing rewrote it (no masquerade/SNAT"]),
    "stale-udp-conntrack.yaml": ("client", "10.96.0.10", ["--proto", "udp/53", "--sport", "40053"],
                                 ["cause: stale conntrack entry: in node node1", "no ARP answer: node node2 asked who has 10.240.1.2"]),
    "hostport-collision.yaml": ("ext", "exporter", ["--proto", "tcp/9100"],
                                ["DNAT: destination 192.168.127.11:9100 -> 10.239.0.2:9100",
                                 "cnilab-portmap hostports: tcp dport 9100 dnat to 10.239.0.2:9100",
                                 "verdict: delivered to pod web and answered",
                                 "note:  addressed to exporter (192.168.127.11:9100) but delivered to pod web"]),
    # Services and NetworkPolicy (netlab/features/k8s.py, ADR 0022)
    "service-selector-mismatch.yaml": ("client", "10.96.0.20", ["--proto", "tcp/80"],
                                       ["cause: Service rule in node node1: no endpoints: tcp reset -> rejected"]),
    "service-wrong-targetport.yaml": ("client", "10.96.0.20", ["--proto", "tcp/80"],
                                      ["note:  Service DNAT in node node1: default/web:80 -> web", ":8081 (chain endpoint-",
                                       "TCP [RA]"]),
    "service-hairpin.yaml": ("web", "10.96.0.20", ["--proto", "tcp/80"],
                             ["verdict: lost in node node1 right after a DNAT to 10.236.0.2:8080", "cause: hairpin:",
                              "note:  hairpin: web reaching itself through default/web (marked for masquerade"]),
    "policy-blocks-dns.yaml": ("client", "dns", ["--proto", "udp/53"],
                               ["cause: NetworkPolicy in node node1: dropped by egress-default/client: "
                                "'default deny egress of default/client (policies default/client-egress)'"]),
    "nodeport-local-no-endpoint.yaml": ("ext", "node2", ["--proto", "tcp/30080"],
                                        ["cause: Service rule in node node2: NodePort with externalTrafficPolicy Local: "
                                         "no endpoint on this node -> dropped"]),
    "bgp-wrong-as.yaml": ("a1", "c1", ["--proto", "tcp/80"],
                          ["verdict: lost after node node1 cni0 (received)",
                           "cause: no route to 10.248.2.0/24 on node node1 (not learned via BGP)",
                           "BGP session peer_node3 on node node1 is not established", "Bad peer AS"]),
    "bgp-export-filter.yaml": ("b1", "c1", [],
                               ["cause: no route to 10.249.2.0/24 on node node2 (not learned via BGP)",
                                "every BGP session of node node2 is Established, so node node3",
                                "show route export peer_node1"]),
    # LoadBalancer failover (netlab/loadbalancer.py, ADR 0026): the trace names the new speaker and why
    "lb-speaker-down.yaml": ("ext", "192.168.151.201", ["--proto", "tcp/80"],
                             ["note:  192.168.151.201 is the LoadBalancer address of default/web-lb (pool default); "
                              "its speaker is node2", "down: node1 (uplink eth0 is down",
                              "Service DNAT in node node2: default/web-lb:http"]),
    "lossy-underlay.yaml": ("client", "server", ["--size", "1400"],
                            ["verdict: lost after node node2 eth0 (received)",
                             "kernel: drop reason NETFILTER_DROP in nft_do_chain",
                             "netdev cnilab-impair-eth0-in impair: meta length >= 1000 numgen random mod 10000 < 3000",
                             "(a netlab impairment: netlab impair all show)"], 25),
    # IPv6 (ADR 0028)
    "ipv6-pmtu-blackhole.yaml": ("a", "b", ["--size", "1500", "--df"],
                                 ["verdict: lost after node node1 cni0 (received)",
                                  "cause: ICMPv6 Packet Too Big is filtered in node node1: icmpv6 type packet-too-big",
                                  "an IPv6 router never fragments: node node1 must answer with an ICMPv6 Packet Too Big "
                                  "(mtu 1400)"]),
    "ipv6-no-default-route.yaml": ("client", "web", ["--proto", "tcp/80", "--family", "6"],
                                   ["verdict: not sent: pod client has no route to fd00:10:232::10",
                                    "pod client has no IPv6 default route"]),
    "ipv6-dad-duplicate.yaml": ("client", "web", ["--proto", "tcp/80", "--family", "6"],
                                ["verdict: delivered to pod imposter and answered",
                                 "cause: DAD failed: the destination address fd00:10:233::10/64 on eth0 in pod web is "
                                 "'tentative dadfailed'", "pod imposter holds it too"]),
}
# the kernel's drop reason (skb:kfree_skb) where the kernel has one to give
KERNEL = {
    "ip-forward-off.yaml": "kernel: drop reason IP_INADDRERRORS in ip_error",
    "hairpin-off.yaml": "kernel: drop reason NOT_SPECIFIED in br_handle_frame_finish",
    "mtu-blackhole-vxlan.yaml": "kernel: drop reason NOT_SPECIFIED in __dev_forward_skb",
}


def netlab(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netlab", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def test_every_scenario_has_a_trace_or_dns_evidence():
    assert len(SCENARIOS) >= 7
    assert set(TRACES) | {"ndots-amplification.yaml", "aaaa-timeout.yaml"} == set(SCENARIOS)   # DNS: the check's capture


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_shows_its_symptom(scenario, tmp_path):
    from netlab.lab import scenario as sc_mod
    from netlab.lab.topology import load
    from netlab.checks.common import CheckResult
    path = os.path.join(REPO, "topologies", "scenarios", scenario)
    sc = load(path).scenario          # parsed with the topology, typed
    assert sc is not None and sc.symptom and sc.cause and sc.fix and sc.failing
    name = unique_name("s").replace("_", "-")[:20].lower().strip("-")
    lab_dir = str(tmp_path / "lab")
    try:
        up = netlab("up", path, "--name", name, "--lab-dir", lab_dir, "--json", "-q")
        # its checks fail (the symptom) exactly as declared: for a scenario that is success
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        report = json.loads(up.stdout)
        results = [CheckResult(**{k: c[k] for k in ("name", "type", "ok", "expected", "observed", "details")})
                   for c in report["checks"]]
        assert sc_mod.judge(sc, results) == [], json.dumps(report["checks"], indent=1)
        if scenario in TRACES:
            src, dst, opts, wants, *tries = TRACES[scenario]
            from netlab.debug import dropmon
            if scenario in KERNEL and not dropmon.support():
                wants = wants + [KERNEL[scenario]]
            for _ in range(tries[0] if tries else 1):
                t = netlab("trace", src, dst, *opts, "--lab-dir", lab_dir)
                if all(w in t.stdout for w in wants):
                    break
            for w in wants:
                assert w in t.stdout, f"{w!r} not in:\n{t.stdout}\n{t.stderr}"
    finally:
        d = netlab("down", "--lab-dir", lab_dir)
    assert d.returncode == 0, d.stderr
    assert not [n for n in os.listdir("/var/run/netns") if n.startswith(f"nl-{name}-")]
    assert not os.path.exists(lab_dir)
    # the udp-flow process of a scenario is stopped by down
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert lab_dir.encode() not in f.read(), f"process {pid} left running"
        except OSError:
            pass
