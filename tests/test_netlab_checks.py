"""Check logic on crafted packets (no root): what the checks read from captures."""
from __future__ import annotations

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from netlab.base.capture import write_pcap
from netlab.checks.capture import _matches
from netlab.checks.dns import parse_dns


def q(name, qid, sport=40000):
    return Ether() / IP(src="10.0.0.5", dst="10.0.0.2") / UDP(sport=sport, dport=53) / DNS(id=qid, rd=1, qd=DNSQR(qname=name))


def a(name, qid, rcode):
    return Ether() / IP(src="10.0.0.2", dst="10.0.0.5") / UDP(sport=53, dport=40000) / DNS(id=qid, qr=1, rcode=rcode, qd=DNSQR(qname=name))


def rebuilt(p):
    return Ether(bytes(p))   # as decoded from a capture


def test_dns_queries_in_order_with_answers():
    pkts = [rebuilt(x) for x in (q("web.default.svc.cluster.local.", 1), a("web.default.svc.cluster.local.", 1, 3),
                                 q("web.", 2), a("web.", 2, 0))]
    queries, answers = parse_dns(pkts)
    assert queries == ["web.default.svc.cluster.local", "web"]
    assert answers == {"web.default.svc.cluster.local": "NXDOMAIN", "web": "NOERROR"}


def test_dns_retransmissions_count_unless_deduplicated():
    pkts = [rebuilt(q("x.", 7)), rebuilt(q("x.", 7))]
    assert parse_dns(pkts)[0] == ["x", "x"]
    assert parse_dns(pkts, dedupe=True)[0] == ["x"]


def test_capture_field_matching():
    inner = Ether() / IP(src="10.250.0.10", dst="10.250.0.70") / ICMP(type=8)
    pkt = rebuilt(Ether() / IP(src="192.168.100.11", dst="192.168.100.12") / UDP(sport=5555, dport=4789)
                  / VXLAN(vni=42) / inner)
    assert _matches(pkt, "VXLAN", {"vni": "42"})
    assert not _matches(pkt, "VXLAN", {"vni": "43"})
    assert _matches(pkt, "ICMP", {"type": 8, "IP.src": "192.168.100.11"})   # outer IP: first IP layer
    assert not _matches(pkt, "TCP", {})
    assert _matches(pkt, None, {"UDP.dport": 4789})


def test_pcap_writer_roundtrip(tmp_path):
    from scapy.utils import rdpcap
    frames = [(1700000000.25, bytes(q("a.", 1))), (1700000000.5, bytes(a("a.", 1, 0)))]
    write_pcap(str(tmp_path / "t.pcap"), frames)
    back = rdpcap(str(tmp_path / "t.pcap"))
    assert [bytes(p) for p in back] == [f for _, f in frames]
    assert abs(float(back[0].time) - 1700000000.25) < 1e-5


# ---- where a probe went (checks/path.py) ------------------------------------------

def _ctx(yaml_text: str):
    from netlab.lab import topology as T
    from netlab.checks.common import Context
    from netlab.lab.plan import make_plan
    topo = T.loads(yaml_text)
    plan = make_plan(topo, "/nonexistent-lab-dir")
    return Context(topo, plan, None, evidence=False)   # no lab dir, no state: only targets are needed


TWO_NODES = """name: pt
nodes: {n1: {}, n2: {}}
networks:
  podnet: {type: bridge, subnet: 10.244.0.0/16}
  ov: {type: overlay, subnet: 10.250.0.0/24, vni: 7, port: 8472}
pods:
  a: {node: n1, network: podnet, ip: 10.244.0.10}
  b: {node: n2, network: podnet, ip: 10.244.1.10}
  c: {node: n1, network: podnet, ip: 10.244.0.11}
  h: {node: n2, mode: host}
"""


def test_path_points_in_order_one_per_namespace():
    from netlab.checks.path import points
    ctx = _ctx(TWO_NODES)
    t = ctx.target
    assert [p.label for p in points(ctx, t("a"), t("b"))] == ["a", "n1", "underlay", "n2", "b"]
    assert [p.label for p in points(ctx, t("a"), t("c"))] == ["a", "n1", "c"]            # same node
    assert [p.label for p in points(ctx, t("ext"), t("b"))] == ["ext", "underlay", "n2", "b"]
    assert [p.label for p in points(ctx, t("a"), t("h"))] == ["a", "n1", "underlay", "h"]  # h is n2's namespace
    assert [p.label for p in points(ctx, t("a"), t("a"))] == ["a", "n1", "a (back)"]      # hairpin
    pts = points(ctx, t("a"), t("b"))
    assert pts[0].iface == "eth0" and pts[1].iface == "" and pts[2].incoming_only


def test_innermost_ip_looks_through_vxlan():
    from netlab.checks.path import innermost_ip
    from netlab.checks.reach import probe_matcher
    inner = Ether() / IP(src="10.250.0.10", dst="10.250.0.70") / ICMP(type=8)
    outer = rebuilt(Ether() / IP(src="192.168.100.11", dst="192.168.100.12") / UDP(sport=5555, dport=8472)
                    / VXLAN(vni=7) / inner)
    assert innermost_ip(outer, (4789,)).dst == "192.168.100.12"     # 8472 not a tunnel port here
    ip = innermost_ip(outer, (4789, 8472))
    assert ip.dst == "10.250.0.70"
    assert probe_matcher("icmp", "10.250.0.70", None)(ip)
    assert not probe_matcher("icmp", "10.250.0.71", None)(ip)
    reply = innermost_ip(rebuilt(Ether() / IP(src="10.250.0.70", dst="10.250.0.10") / ICMP(type=0)), (4789,))
    assert not probe_matcher("icmp", "10.250.0.10", None)(reply)    # a reply is not the probe


def test_an_expected_fail_needs_a_probe_that_left():
    from netlab.checks.path import PathEvidence, Point
    from netlab.checks.reach import judge_fail
    pts = [Point("a", "ns-a", "eth0"), Point("n1", "ns-n1", ""), Point("underlay", "sw", ""), Point("b", "ns-b", "eth0")]
    stopped = PathEvidence(pts, {"a": 1, "n1": 2, "underlay": 0, "b": 0}, left_source=True)
    assert judge_fail(stopped, False) == (True, "last seen at n1; not seen at underlay, b")
    assert judge_fail(stopped, True) == (False, "it got through")
    never = PathEvidence(pts, {"a": 0}, left_source=False)
    good, why = judge_fail(never, False)
    assert not good and why == "never seen leaving a: a probe that never left proves nothing"
    refused = PathEvidence(pts, {}, left_source=False, refused_at_source="ip route get 10.0.0.1: Network is unreachable")
    assert judge_fail(refused, False) == (True, "refused at the source a: ip route get 10.0.0.1: Network is unreachable")
    assert stopped.describe() == "a (1, left) -> n1 (2) -> underlay (0) -> b (0)"


# ---- mtu: the verdict rests on what the sender's capture shows --------------------

def _echo(size, seq, *, reply=False, df=True, frag=False):
    if reply:
        ip = IP(src="10.0.1.2", dst="10.0.0.2", flags="MF" if frag else 0)
    else:
        ip = IP(src="10.0.0.2", dst="10.0.1.2", flags="DF" if df else 0)
    pkt = Ether() / ip / ICMP(type=0 if reply else 8, id=7, seq=seq) / (b"x" * (size - 28))
    return rebuilt(pkt)


def test_mtu_black_hole_needs_big_probes_seen_leaving():
    from netlab.checks.mtu import mtu_evidence
    seen = [(_echo(1400, 1), "out"), (_echo(1400, 1, reply=True), "in"),
            (_echo(1450, 2), "out"), (_echo(1401, 3), "out")]          # never answered
    ev = mtu_evidence(seen, "10.0.1.2", 1400)
    assert ev.answered and sorted(ev.big_left) == [1401, 1450] and not ev.big_answered and not ev.frag_needed
    # the same sweep without the big probes on the wire: nothing shows a black hole
    ev = mtu_evidence(seen[:2], "10.0.1.2", 1400)
    assert ev.answered and ev.big_left == []


def test_mtu_a_fragmented_reply_still_answers_its_probe():
    from netlab.checks.mtu import mtu_evidence
    first_fragment = _echo(1400, 4, reply=True, frag=True)
    ev = mtu_evidence([(_echo(1404, 4), "out"), (first_fragment, "in")], "10.0.1.2", 1404)
    assert ev.answered
    ev = mtu_evidence([(_echo(1404, 4), "out")], "10.0.1.2", 1404)       # no reply in the capture
    assert not ev.answered


def test_mtu_frag_needed_and_contradictions():
    from netlab.checks.mtu import mtu_evidence
    fn = rebuilt(Ether() / IP(src="192.168.1.1", dst="10.0.0.2") / ICMP(type=3, code=4, nexthopmtu=1400)
                 / IP(src="10.0.0.2", dst="10.0.1.2", flags="DF") / ICMP(type=8))
    ev = mtu_evidence([(_echo(1400, 1), "out"), (_echo(1400, 1, reply=True), "in"), (_echo(1450, 2), "out"),
                       (fn, "in"), (_echo(1420, 3), "out"), (_echo(1420, 3, reply=True), "in")],
                      "10.0.1.2", 1400)
    assert ev.frag_needed == [1400] and ev.big_answered == [1420] and ev.big_left == [1450]


# ---- bandwidth: the wire counter corroborates iperf3 ------------------------------

def test_wire_rate_uses_only_the_transfer():
    from netlab.checks.traffic.bandwidth import wire_rate
    idle = [(t * 0.05, 1000) for t in range(10)]
    # 10 intervals of 125000 bytes per 0.05 s = 20 Mbit/s, with partial intervals at both ends
    moving, b = [], 1000
    for i, step in enumerate([40000] + [125000] * 10 + [30000]):
        b += step
        moving.append(((10 + i) * 0.05, b))
    after = [((22 + i) * 0.05, b) for i in range(10)]
    bps, nbytes, secs = wire_rate(idle + moving + after)
    assert nbytes == 125000 * 10 and abs(secs - 0.5) < 1e-9 and abs(bps - 20e6) < 1
    short = moving[:3]
    assert wire_rate(idle + short + [(t + 1.5, short[-1][1]) for t, _ in idle]) is None   # too short to measure


def test_rx_bytes_reads_a_namespace_counter_through_a_pid():
    import os
    from netlab.checks.traffic.bandwidth import rx_bytes
    assert isinstance(rx_bytes(os.getpid(), "lo"), int)
    assert rx_bytes(os.getpid(), "no-such-if0") is None
