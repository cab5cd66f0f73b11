"""Dual-stack and IPv6 in netlab, as data (no root): topology parsing and its
errors, the plan (conflists, routes, DNS records, addresses), and what the
checks read from crafted IPv6 packets."""
from __future__ import annotations

import ipaddress
import os

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from netlab.lab import plan as P
from netlab.lab import topology as T
from netlab.checks.dns import sending_of, wire_queries
from netlab.checks.mtu import mtu_evidence6
from netlab.checks.path import innermost_ip
from netlab.checks.reach import probe_matcher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(f for f in os.listdir(os.path.join(REPO, "topologies")) if f.endswith(".yaml"))


def load(fname: str) -> T.Topology:
    return T.load(os.path.join(REPO, "topologies", fname))


def errors_of(text: str) -> list[str]:
    with pytest.raises(T.TopologyError) as ei:
        T.loads(text, "t.yaml")
    return ei.value.errors


DUAL = """name: ds
underlay: {subnet: [192.168.7.0/24, "fd00:7::/64"]}
nodes: {n1: {}, n2: {address: "fd00:7::99"}}
networks:
  pods: {subnet: [10.1.0.0/16, "fd00:1::/56"], nodePrefix: [24, 64]}
  ov: {type: overlay, subnet: [10.2.0.0/24, "fd00:2::/64"], vni: 9, underlayFamily: 6}
pods:
  a: {node: n1, network: pods, ip: [10.1.0.10, "fd00:1::10"]}
  b: {node: n2, network: pods, ip: "fd00:1:0:1::20"}
  c: {node: n2, network: pods}
  o: {node: n1, network: ov}
"""


# --------------------------------------------------------------------------- topology

@pytest.mark.parametrize("fname", SHIPPED)
def test_every_shipped_single_family_lab_loads_as_before(fname):
    t = load(fname)
    if fname in ("dual-stack.yaml", "ipv6-only.yaml", "bgp-dual-stack.yaml", "bgp-ipv6-only.yaml",
                 "dual-stack-services.yaml"):
        return
    assert t.underlay.subnets == [t.underlay.subnet] and t.underlay.subnet.version == 4
    for n in t.nodes.values():
        assert n.addresses == [n.address]
    for w in t.networks.values():
        assert w.subnets == [w.subnet] and w.node_prefixes == [w.node_prefix]
    plan = P.make_plan(t, "/lab")
    # nothing IPv6 is added to an IPv4 lab: no IPv6 forwarding, no address lists, one range set
    assert not [s for s in plan.steps if s.kind == "sysctl" and "ipv6" in s.params["key"]]
    assert not [s for s in plan.steps if s.kind == "uplink" and "addresses" in s.params]
    for s in plan.steps:
        if s.kind == "attach" and s.params["generated"]:
            ipam = s.params["conflist"]["plugins"][0]["ipam"]
            assert ipam.get("type") != "host-local" or len(ipam["ranges"]) == 1


def test_dual_stack_model():
    t = T.loads(DUAL)
    assert t.underlay.families == [4, 6]
    assert t.nodes["n1"].addresses == ["192.168.7.11", "fd00:7::b"]
    assert t.nodes["n2"].addresses == ["192.168.7.12", "fd00:7::99"]      # one given, one default
    assert t.dns.addresses == ["192.168.7.2", "fd00:7::2"] and t.dns.address == "192.168.7.2"
    w = t.networks["pods"]
    assert w.families == [4, 6] and w.node_prefixes == [24, 64]
    assert str(T.node_slice(w, 1, 6)) == "fd00:1:0:1::/64" and str(T.gateway(w, 1, 6)) == "fd00:1:0:1::1"
    assert str(T.node_slice(w, 1)) == "10.1.1.0/24"                        # the primary family
    assert t.networks["ov"].node_prefixes == [26, 72]                       # defaults per family
    assert t.pods["a"].ip == "10.1.0.10" and t.pods["a"].ips == ["10.1.0.10", "fd00:1::10"]
    assert t.pods["b"].ip is None and t.pods["b"].ips == ["fd00:1:0:1::20"]  # IPAM picks the IPv4


def test_ipv6_only_model_and_huge_subnets_are_arithmetic():
    t = T.loads("""name: v6
underlay: {subnet: "fd00:9::/64"}
nodes: {n1: {}, n2: {}}
networks: {p: {subnet: "fd00:8::/32", nodePrefix: 64}}
""")
    assert t.underlay.subnet.version == 6 and t.nodes["n2"].address == "fd00:9::c"
    assert str(T.node_slice(t.networks["p"], 1)) == "fd00:8:0:1::/64"   # 2**32 slices: computed, never listed
    assert P.ext_address(t) == "fd00:9::3" and P.underlay_hosts(t)[0] == "fd00:9::1"


@pytest.mark.parametrize("snippet,where,what", [
    ("underlay: {subnet: [10.0.0.0/24, 10.1.0.0/24]}\nnodes: {n1: {}}", "underlay.subnet", "two IPv4 subnets"),
    ("underlay: {subnet: 10.0.0.0/24}\nnodes: {n1: {}}\nnetworks: {p: {subnet: [10.9.0.0/16, \"fd00::/56\"]}}",
     "networks.p.subnet", "has no IPv6 subnet"),
    ("underlay: {subnet: \"fd00:5::/64\", mtu: 1000}\nnodes: {n1: {}}", "underlay.mtu", "at least 1280"),
    ("underlay: {subnet: \"fd00:5::/126\"}\nnodes: {n1: {}}", "underlay.subnet", "too small"),
    ("underlay: {subnet: 10.0.0.0/24}\nnodes: {n1: {address: \"fd00::5\"}}", "nodes.n1.address",
     "the underlay has no IPv6 subnet"),
    ("nodes: {n1: {}}\nnetworks: {p: {subnet: [10.9.0.0/16, \"fd00::/56\"], nodePrefix: [24]}}",
     "networks.p.nodePrefix", "one integer per subnet"),
    ("nodes: {n1: {}}\nnetworks: {p: {type: overlay, vni: 3, subnet: \"fd00::/64\", nodePrefix: 125}}",
     "networks.p.nodePrefix", "between 8 and 124"),
    ("nodes: {n1: {}}\nnetworks: {p: {subnet: 10.9.0.0/16, underlayFamily: 6}}", "networks.p.underlayFamily",
     "only an overlay"),
    ("nodes: {n1: {}}\nnetworks: {p: {type: overlay, vni: 3, subnet: 10.9.0.0/16, underlayFamily: 6}}",
     "networks.p.underlayFamily", "no IPv6 subnet"),
    ("underlay: {subnet: [10.0.0.0/24, \"fd00:5::/64\"]}\nnodes: {n1: {}}\n"
     "networks: {p: {subnet: [10.9.0.0/16, \"fd00::/56\"], ipam: dhcp}}", "networks.p.ipam",
     "IPv4 only, like the reference dhcp plugin (DHCPv4); Kubernetes pod networks do not use DHCPv6"),
    ("nodes: {n1: {}}\nnetworks: {p: {type: overlay, vni: 3, subnet: [10.9.0.0/16, \"fd00::/56\"]}}\n"
     "pods: {a: {node: n1, network: p, ip: [\"fd00::1:5\", \"fd00::1:6\"]}}", "pods.a.ip", "two addresses of one family"),
    ("nodes: {n1: {}}\nnetworks: {p: {type: overlay, vni: 3, subnet: 10.9.0.0/16}}\n"
     "pods: {a: {node: n1, network: p, ip: \"fd00::5\"}}", "pods.a.ip", "has no IPv6 subnet"),
    ("underlay: {subnet: [10.0.0.0/24, \"fd00:5::/64\"]}\nnodes: {n1: {}, n2: {}}\n"
     "networks: {p: {subnet: [10.9.0.0/16, \"fd00::/56\"]}}\n"
     "pods: {a: {node: n1, network: p, ip: \"fd00:0:0:1::5\"}}", "pods.a.ip", "not in node n1's slice fd00::/64"),
    # IPv6-only networks take Services (ADR 0034), but a Service's family must be in serviceCIDR
    ("underlay: {subnet: \"fd00:5::/64\"}\nnodes: {n1: {}}\nnetworks: {p: {subnet: \"fd00::/56\"}}\n"
     "pods: {a: {node: n1, network: p}}\nserviceCIDR: \"fd00:10:96::/112\"\n"
     "services: [{name: s, ipFamilies: [IPv4], selector: {app: x}, ports: [{port: 80}]}]",
     "services[0].ipFamilies", "IPv4 is not a family of the serviceCIDR (IPv6)"),
    ("nodes: {n1: {}}\npods: {a: {node: n1, mode: host}}\nchecks: [{type: mtu, from: a, to: n1, family: 6, min: 1200, "
     "expect: {mtu: 1500}}]", "checks[0].min", "at least 1280"),
    ("nodes: {n1: {}}\npods: {a: {node: n1, mode: host}}\nchecks: [{type: reach, from: a, to: n1, family: 5}]",
     "checks[0].family", "must be 4 or 6"),
    ("nodes: {n1: {}}\npods: {a: {node: n1, mode: host}}\nchecks: [{type: dns, pod: a, query: x, "
     "expect: {sending: parallel}}]", "checks[0].expect.sending", "only lookup: ahosts"),
    ("nodes: {n1: {}}\npods: {a: {node: n1, mode: host}}\nchecks: [{type: dns, pod: a, query: x, lookup: ahosts, "
     "expect: {sequence: [MX x]}}]", "checks[0].expect.sequence[0]", "must be 'A NAME' or 'AAAA NAME'"),
])
def test_dual_stack_errors_name_the_key(snippet, where, what):
    errs = errors_of("name: e\n" + snippet + "\n")
    assert any(f": {where}: " in e and what in e for e in errs), errs


# --------------------------------------------------------------------------- plan

def test_dual_stack_plan_conflists_routes_and_records():
    t = T.loads(DUAL)
    plan = P.make_plan(t, "/lab")
    att = {s.params["pod"]: s.params for s in plan.steps if s.kind == "attach"}
    ranges = att["c"]["conflist"]["plugins"][0]["ipam"]["ranges"]
    assert ranges == [[{"subnet": "10.1.1.0/24", "gateway": "10.1.1.1"}],
                      [{"subnet": "fd00:1:0:1::/64", "gateway": "fd00:1:0:1::1"}]]
    # two requested addresses: args.cni.ips (every host-local reads it), no CNI_ARGS IP=
    assert att["a"]["conflist"]["plugins"][0]["args"] == {"cni": {"ips": ["10.1.0.10", "fd00:1::10"]}}
    assert "IP=" not in att["a"]["cni_args"]
    assert "IP=fd00:1:0:1::20" in att["b"]["cni_args"] and "args" not in att["b"]["conflist"]["plugins"][0]
    # the overlay's VXLAN over the IPv6 underlay: IPv6 local address and peers
    vx = att["o"]["conflist"]["plugins"][0]
    assert vx["localIP"] == "fd00:7::b" and vx["peers"] == ["fd00:7::99"]
    assert [r[0]["subnet"] for r in vx["ipam"]["ranges"]] == ["10.2.0.0/24", "fd00:2::/64"]
    assert vx["ipam"]["ranges"][1][0]["rangeStart"] == "fd00:2::2"
    # node routes in both families, each via the other node's address of that family
    routes = {s.params["ns"]: s.params["routes"] for s in plan.steps if s.kind == "routes"}
    assert routes["nl-ds-n-n1"] == [{"dst": "10.1.1.0/24", "via": "192.168.7.12"},
                                    {"dst": "fd00:1:0:1::/64", "via": "fd00:7::99"}]
    assert {"dst": "fd00:2:0:0:100::/72", "via": "fd00:7::99"} in routes["nl-ds-ext"]
    # addresses netlab assigns itself: both families on the uplink; IPv6 forwarding on
    up = next(s for s in plan.steps if s.kind == "uplink" and s.params["ns"] == "nl-ds-n-n1")
    assert up.params["addresses"] == ["192.168.7.11/24", "fd00:7::b/64"]
    assert any(s.kind == "sysctl" and s.params["key"] == "net/ipv6/conf/all/forwarding" for s in plan.steps)
    # A and AAAA: one --host-record per name with both addresses; listening on both
    argv = next(s for s in plan.steps if s.kind == "dnsmasq").params["argv"]
    assert "--host-record=n2.node.cluster.local,192.168.7.12,fd00:7::99" in argv
    assert "--host-record=a.default.svc.cluster.local,10.1.0.10,fd00:1::10" in argv
    assert not any(a.startswith("--host-record=b.") for a in argv)     # b's IPv4 comes from IPAM: a late record
    assert "--listen-address=192.168.7.2" in argv and "--listen-address=fd00:7::2" in argv
    late = P.late_records(t, {"b": ["10.1.1.2", "fd00:1:0:1::20"], "c": ["10.1.1.3"]})
    assert ("b.default.svc.cluster.local", "fd00:1:0:1::20") in late and ("c.default.svc.cluster.local", "10.1.1.3") in late
    assert "fd00:7::b\tn1" in next(s for s in plan.steps if s.kind == "etcnetns"
                                   and s.params["netns"] == "nl-ds-n-n1").params["files"]["hosts"]


def test_ipv6_only_lab_plan():
    t = load("ipv6-only.yaml")
    plan = P.make_plan(t, "/lab")
    assert plan.endpoints["dns"].address == "fd00:100::2" and plan.endpoints["ext"].address == "fd00:100::3"
    assert "nameserver fd00:100::2" in P.resolv_conf(t, t.pods["client"])
    att = {s.params["pod"]: s.params for s in plan.steps if s.kind == "attach"}
    assert att["web"]["conflist"]["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "fd00:10:244::/64",
                                                                        "gateway": "fd00:10:244::1"}]]
    assert "IP=fd00:10:244::10" in att["web"]["cni_args"]


# --------------------------------------------------------------------------- checks on crafted packets

def _q(qtype, name, qid, sport, t):
    x = Ether(bytes(Ether() / IP(src="10.0.0.5", dst="10.0.0.2") / UDP(sport=sport, dport=53)
                    / DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype=qtype))))
    x.time = t
    return x


def _a(qtype, name, qid, dport, t):
    x = Ether(bytes(Ether() / IP(src="10.0.0.2", dst="10.0.0.5") / UDP(sport=53, dport=dport)
                    / DNS(id=qid, qr=1, qd=DNSQR(qname=name, qtype=qtype))))
    x.time = t
    return x


@pytest.mark.parametrize("pkts,how", [
    ([_q("A", "w.", 1, 500, 0.0), _q("AAAA", "w.", 2, 500, 0.0001), _a("A", "w.", 1, 500, 0.001),
      _a("AAAA", "w.", 2, 500, 0.002)], "parallel"),
    ([_q("A", "w.", 1, 500, 0.0), _a("A", "w.", 1, 500, 0.001), _q("AAAA", "w.", 2, 500, 0.002),
      _a("AAAA", "w.", 2, 500, 0.003)], "single-request"),
    ([_q("A", "w.", 1, 500, 0.0), _a("A", "w.", 1, 500, 0.001), _q("AAAA", "w.", 2, 600, 0.002),
      _a("AAAA", "w.", 2, 600, 0.003)], "single-request-reopen"),
])
def test_how_glibc_sent_a_and_aaaa_is_read_off_the_wire(pkts, how):
    qs = wire_queries(pkts)
    assert [f"{q['type']} {q['name']}" for q in qs] == ["A w", "AAAA w"]
    assert all(q["answered"] is not None for q in qs)
    assert sending_of(qs) == how


def test_an_unanswered_aaaa_and_its_retransmission():
    pkts = [_q("A", "w.", 1, 500, 0.0), _q("AAAA", "w.", 2, 500, 0.0), _a("A", "w.", 1, 500, 0.001),
            _q("A", "w.", 3, 500, 5.0), _a("A", "w.", 3, 500, 5.001), _q("AAAA", "w.", 4, 500, 5.002)]
    qs = wire_queries(pkts)
    assert [q["answered"] is None for q in qs] == [False, True, False, True]
    assert qs[2]["t"] - qs[1]["t"] == pytest.approx(5.0)
    # an answer with another id or port answers nothing
    assert all(q["answered"] is None for q in wire_queries([_q("A", "w.", 1, 500, 0), _a("A", "w.", 9, 500, 1),
                                                            _a("A", "w.", 1, 501, 1)]))


def _pkt(layers, direction_time):
    x = Ether(bytes(Ether() / layers))
    x.time = direction_time
    return x


def test_mtu_evidence6_packet_too_big_and_black_hole():
    src, dst = "fd00::5", "fd00:1::10"
    req = lambda size, seq: _pkt(IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=1, seq=seq, data=b"x" * (size - 48)), 0)
    rep = lambda size, seq: _pkt(IPv6(src=dst, dst=src) / ICMPv6EchoReply(id=1, seq=seq, data=b"x" * (size - 48)), 0)
    ptb = _pkt(IPv6(src="fd00::1", dst=src) / ICMPv6PacketTooBig(mtu=1400) / IPv6(src=src, dst=dst), 0)
    seen = [(req(1280, 1), "out"), (rep(1280, 1), "in"), (req(1400, 2), "out"), (rep(1400, 2), "in"),
            (req(1450, 3), "out"), (ptb, "in")]
    ev = mtu_evidence6(seen, dst, 1400)
    assert ev.answered and ev.frag_needed == [1400] and ev.big_left == [1450] and not ev.big_answered
    hole = mtu_evidence6(seen[:-1], dst, 1400)          # the Packet Too Big was dropped: a black hole
    assert hole.big_left == [1450] and not hole.frag_needed
    assert not mtu_evidence6(seen, dst, 1450).answered   # the 1450 probe was never answered


def test_ipv6_probes_are_recognised_through_vxlan_over_ipv6():
    inner = Ether() / IPv6(src="fd00:2::2", dst="fd00:2::10") / ICMPv6EchoRequest()
    outer = Ether(bytes(Ether() / IPv6(src="fd00:7::b", dst="fd00:7::c") / UDP(sport=1234, dport=4789)
                        / VXLAN(vni=9) / inner))
    ip = innermost_ip(outer, (4789,))
    assert ip.dst == "fd00:2::10"
    assert probe_matcher("icmp", "fd00:2:0:0::10", None)(ip)           # any spelling of the address
    assert not probe_matcher("icmp", "fd00:2::11", None)(ip)
    v4_in_v6 = Ether(bytes(Ether() / IPv6(src="fd00:7::b", dst="fd00:7::c") / UDP(sport=1, dport=4789) / VXLAN(vni=9)
                           / Ether() / IP(src="10.2.0.2", dst="10.2.0.10") / ICMP(type=8)))
    assert probe_matcher("icmp", "10.2.0.10", None)(innermost_ip(v4_in_v6, (4789,)))
    assert ipaddress.ip_address(innermost_ip(v4_in_v6, (4789,)).dst).version == 4


def test_one_proof_of_parallel_sending_decides():
    """A parallel resolver whose A answer beat its AAAA looks sequential once;
    a sequential resolver can never send the AAAA before the A's answer."""
    raced = [_q("A", "w.", 1, 500, 0.0), _a("A", "w.", 1, 500, 0.0001), _q("AAAA", "w.", 2, 500, 0.0002),
             _a("AAAA", "w.", 2, 500, 0.001)]
    proof = [_q("A", "w.", 3, 501, 1.0), _q("AAAA", "w.", 4, 501, 1.0001), _a("A", "w.", 3, 501, 1.001),
             _a("AAAA", "w.", 4, 501, 1.002)]
    assert sending_of(wire_queries(raced)) == "single-request"
    assert sending_of(wire_queries(raced + proof)) == "parallel"
    reopen = [_q("A", "w.", 5, 502, 2.0), _a("A", "w.", 5, 502, 2.001), _q("AAAA", "w.", 6, 503, 2.002),
              _a("AAAA", "w.", 6, 503, 2.003)]
    assert sending_of(wire_queries(raced + reopen)).startswith("mixed")


# --------------------------------------------------------------------------- trace and scenario faults

def test_trace_decodes_icmpv6_and_neighbour_discovery():
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6ND_NA, ICMPv6ND_NS, IPerror6
    from netlab.debug import trace
    pr = trace.Probe("icmp", "fd00:1::7", None, 104, False, b"NLTRACE-00000000")
    assert pr.v6 and len(pr.payload()) == 104 - 48 and pr.describe().startswith("ICMPv6 echo request")
    echo = Ether() / IPv6(src="fd00:1::5", dst="fd00:1::7", hlim=63) / ICMPv6EchoRequest(id=9, seq=1) / b"NLTRACE-x"
    d = trace.decode_frame(bytes(echo))
    assert d["ip"]["icmp"]["type"] == 8 and d["ip"]["ttl"] == 63 and d["ip"]["len"] == len(bytes(echo)) - 14
    assert trace.l4_summary(d["ip"]) == "fd00:1::5 > fd00:1::7 ICMPv6 echo request"
    ptb = Ether() / IPv6(src="fd00:1::1", dst="fd00:1::5") / ICMPv6PacketTooBig(mtu=1400) / IPerror6(
        src="fd00:1::5", dst="fd00:1::7") / UDP(sport=40000, dport=53)
    p = trace.decode_frame(bytes(ptb))["ip"]
    assert p["icmp"]["type"] == 3 and p["icmp"]["code"] == 4 and p["icmp"]["mtu"] == 1400   # as ICMP frag-needed
    assert trace.l4_summary(p) == "fd00:1::1 > fd00:1::5 ICMPv6 Packet Too Big (mtu 1400)"
    assert trace.l4_summary(p["quoted"]) == "fd00:1::5:40000 > fd00:1::7:53 UDP"
    un = Ether() / IPv6(src="fd00:1::7", dst="fd00:1::5") / ICMPv6DestUnreach(code=4) / IPerror6(src="fd00:1::5", dst="fd00:1::7")
    assert trace.l4_summary(trace.decode_frame(bytes(un))["ip"]).endswith("ICMPv6 destination unreachable (port unreachable)")
    ns = trace.decode_frame(bytes(Ether(src="aa:bb:cc:00:00:01") / IPv6(src="fd00:1::1", dst="ff02::1:ff00:7")
                             / ICMPv6ND_NS(tgt="fd00:1::7")))
    na = trace.decode_frame(bytes(Ether() / IPv6(src="fd00:1::7", dst="fd00:1::1") / ICMPv6ND_NA(tgt="fd00:1::7")))
    assert ns["arp"] == {"op": "request", "psrc": "fd00:1::1", "pdst": "fd00:1::7", "hwsrc": "aa:bb:cc:00:00:01", "nd": True}
    assert na["arp"]["op"] == "reply" and na["arp"]["psrc"] == "fd00:1::7"
    syn = Ether() / IPv6(src="fd00:1::5", dst="fd00:1::7") / TCP(sport=1, dport=8080)
    assert trace.tcp_dport(bytes(syn)) == 8080
    vx = Ether() / IPv6(src="fd00:7::b", dst="fd00:7::c") / UDP(sport=5, dport=4789) / VXLAN(vni=9) / Ether() / IPv6(
        src="fd00:2::2", dst="fd00:2::10") / ICMPv6EchoReply()
    dv = trace.decode_frame(bytes(vx))
    assert dv["vxlan"]["vni"] == 9 and dv["inner"]["icmp"]["type"] == 0 and dv["ip"]["dst"] == "fd00:7::c"


def test_new_fault_kinds_validate():
    from netlab.lab import faults, scenario
    base = DUAL + "checks: [{type: reach, from: a, to: b, name: ab}]\n"
    ok = base + """scenario:
  symptom: s
  cause: c
  fix: f
  faults:
    - filter: {in: n1, hook: output, rule: "icmpv6 type packet-too-big drop"}
    - drop-dns: {in: n2, qtype: AAAA, name: b.default.svc.cluster.local}
    - route-del: {in: c, dst: default, family: 6}
    - address: {in: c, dev: eth0, address: "fd00:1:0:1::99/64", dad: false, again: false}
  failing: [{check: ab}]
"""
    T.loads(ok)
    bad = base + """scenario:
  faults:
    - filter: {in: nowhere, hook: prerouting, rule: "drop; flush ruleset"}
    - drop-dns: {in: n2, qtype: MX}
    - route-del: {in: c, dst: default, family: 5}
    - address: {in: c, dev: eth0, address: "not-an-address"}
"""
    errs = "\n".join(errors_of(bad))
    for want in ("faults[0].filter.in: unknown target 'nowhere'", "faults[0].filter.hook: must be one of input",
                 "faults[0].filter.rule: must be one nftables rule", "faults[1].drop-dns.qtype: must be A or AAAA",
                 "faults[1].drop-dns.name: is required", "faults[2].route-del.family: must be 4 or 6",
                 "faults[3].address.address: 'not-an-address' is not an ADDRESS/PREFIX"):
        assert want in errs, (want, errs)
    # the QTYPE of a query for w.default.svc.cluster.local sits after UDP (8), DNS (12) and the name (29)
    assert faults.dns_qtype_offset("w.default.svc.cluster.local.") == 8 * (8 + 12 + 29)
    hook, rule = faults.fault_rule_text("drop-dns", {"qtype": "AAAA", "name": "w.default.svc.cluster.local"})
    assert hook == "forward" and rule.startswith(f"udp dport 53 @th,{8 * 49},16 28 counter drop")


def test_capture_lines_for_ipv6():
    from netlab.cli.cmd_debug import frame_line
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS
    ns = bytes(Ether() / IPv6(src="fd00:1::1", dst="ff02::1:ff00:7") / ICMPv6ND_NS(tgt="fd00:1::7"))
    na = bytes(Ether(src="aa:bb:cc:00:00:07") / IPv6(src="fd00:1::7", dst="fd00:1::1") / ICMPv6ND_NA(tgt="fd00:1::7"))
    assert "ICMPv6 neighbour solicitation who-has fd00:1::7 tell fd00:1::1" in frame_line(0, ns, "eth0", "out")
    assert "ICMPv6 neighbour advertisement fd00:1::7 is-at aa:bb:cc:00:00:07" in frame_line(0, na, "eth0", "in")
    q = bytes(Ether() / IPv6(src="fd00:1::5", dst="fd00:1::2", hlim=64) / UDP(sport=4000, dport=53)
              / DNS(id=1, rd=1, qd=DNSQR(qname="web.", qtype="AAAA")))
    line = frame_line(0, q, "eth0", "out")
    assert "fd00:1::5:4000 > fd00:1::2:53 UDP hlim 64" in line and "DNS Qry" in line and " DF" not in line


def test_graph_labels_show_the_dad_state_of_ipv6_addresses():
    from netlab.debug.graph import Link, _label
    l = Link("ns", "eth0", 2, "veth", 1500, addrs=["10.0.0.5/24", "fd00::5/64"],
             addr_flags={"fd00::5/64": ["tentative", "dadfailed"]})
    assert "\\nfd00::5/64 (tentative dadfailed)" in _label(l) and "\\n10.0.0.5/24\\n" in _label(l)


def test_capture_check_matches_ipv6_fields_as_addresses():
    from netlab.checks.capture import _matches
    pkt = Ether(bytes(Ether() / IPv6(src="fd00:1::5", dst="fd00:1::7", hlim=60) / ICMPv6EchoRequest()))
    assert _matches(pkt, "IPv6", {"dst": "fd00:1:0:0::7", "hlim": 60})
    assert _matches(pkt, None, {"IPv6.src": "fd00:1::5", "ICMPv6EchoRequest.type": 128})
    assert not _matches(pkt, "IPv6", {"dst": "fd00:1::8"})
    assert not _matches(pkt, "IP", {})
