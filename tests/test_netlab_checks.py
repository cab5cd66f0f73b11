"""Check logic on crafted packets (no root): what the checks read from captures."""
from __future__ import annotations

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from netlab.capture import write_pcap
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
