"""Unit tests (no root) of netlab trace's parts: the counters it reads
(/proc/net/snmp, netstat and snmp6: parsing and deltas), what the IPv6
counters are taken to say, and the path correlation on made-up captures."""
from __future__ import annotations

from netlab.debug.graph import Inventory, Link, NSInfo
from netlab.debug.trace import counters, ipv6_causes
from netlab.debug.trace.correlate import Obs, Path, build_hops, walk

SNMP = """Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InNoRoutes
Ip: 1 64 120 0 2 7 1
Icmp: InMsgs OutDestUnreachs
Icmp: 4 3
Udp: InDatagrams NoPorts
Udp: 9 1
"""
NETSTAT = """TcpExt: SyncookiesSent TCPReqQFullDrop
TcpExt: 0 0
IpExt: InNoRoutes InOctets
IpExt: 1 9000
"""
SNMP6 = "".join(f"{k:<32}\t{v}\n" for k, v in (
    ("Ip6InReceives", 40), ("Ip6InNoRoutes", 2), ("Ip6InTooBigErrors", 0), ("Ip6OutForwDatagrams", 11),
    ("Icmp6InPktTooBigs", 0), ("Icmp6OutPktTooBigs", 1), ("Icmp6OutNeighborSolicits", 3), ("Udp6NoPorts", 0)))


def test_parse_snmp_reads_all_three_files_in_one_text():
    c = counters.parse_snmp(SNMP + NETSTAT + SNMP6)
    assert c["Ip:InReceives"] == 120 and c["Ip:InAddrErrors"] == 2 and c["Udp:NoPorts"] == 1
    assert c["IpExt:InNoRoutes"] == 1 and c["TcpExt:TCPReqQFullDrop"] == 0
    assert c["Ip6InNoRoutes"] == 2 and c["Icmp6OutPktTooBigs"] == 1 and c["Ip6OutForwDatagrams"] == 11
    assert "Ip6InNoRoutes" not in counters.SNMP_KEYS      # `netlab watch` (IPv4 keys) is unchanged
    # snmp6 first, and a namespace without IPv6 (no snmp6 at all): the same IPv4 counters
    assert counters.parse_snmp(SNMP6 + SNMP + NETSTAT) == c
    v4 = counters.parse_snmp(SNMP + NETSTAT)
    assert v4 == {k: v for k, v in c.items() if ":" in k}


def test_parse_snmp_skips_what_it_cannot_read():
    assert counters.parse_snmp("") == {}
    assert counters.parse_snmp("Ip: A B\nIcmp: 1 2\nIp6InNoRoutes x\ngarbage\n") == {}
    # a header whose values line is missing does not shift the pairs after it
    assert counters.parse_snmp("Ip: A B\nUdp: NoPorts\nUdp: 4\n") == {"Udp:NoPorts": 4}


def test_deltas_keep_only_what_moved():
    before = {"n1": {"snmp": {"Ip6InNoRoutes": 2, "Ip:InReceives": 5}, "links": {"eth0": {"rx_dropped": 1}}},
              "gone": {"snmp": {}, "links": {}}}
    after = {"n1": {"snmp": {"Ip6InNoRoutes": 3, "Ip:InReceives": 5, "Icmp6OutDestUnreachs": 1},
                    "links": {"eth0": {"rx_dropped": 1}, "eth1": {"tx_dropped": 2}}},
             "new": {"snmp": {"Ip6InNoRoutes": 1}, "links": {}}}
    assert counters.deltas(before, after) == {
        "n1": {"snmp": {"Ip6InNoRoutes": 1, "Icmp6OutDestUnreachs": 1}, "links": {"eth0": {}, "eth1": {"tx_dropped": 2}}}}


def _moved(**per_ns):
    return {ns: {"snmp": c, "links": {}} for ns, c in per_ns.items()}


def label(ns):
    return {"a": "pod a", "n1": "node node1", "n2": "node node2", "b": "pod b"}[ns]


def test_ipv6_counters_are_not_mixed_into_the_ipv4_counter_line():
    moved = _moved(n1={"Ip:InReceives": 1, "Ip6InNoRoutes": 1})
    assert counters.counter_lines(label, "n1", moved) == ["node node1 counters during the probe: Ip:InReceives +1"]
    assert counters.ipv6_counter_line(label, "n1", moved) == "node node1 IPv6 counters during the probe: Ip6InNoRoutes +1"
    assert counters.ipv6_counter_line(label, "a", moved) is None


def test_a_packet_too_big_made_but_never_received_is_a_cause():
    moved = _moved(a={"Icmp6OutNeighborSolicits": 1, "Icmp6InNeighborAdvertisements": 1},
                   n1={"Icmp6OutPktTooBigs": 1, "Ip6InTooBigErrors": 1, "Ip6OutForwDatagrams": 1})
    causes, evidence = ipv6_causes.counter_evidence(moved, ["a", "n1"], "a", label)
    assert causes == ["counters: node node1 (Icmp6OutPktTooBigs +1) made an ICMPv6 Packet Too Big for it, and pod a "
                      "received none (Icmp6InPktTooBigs +0): it was dropped after it was made, on its way out of "
                      "that namespace or back"]
    assert evidence == [
        "pod a IPv6 counters during the probe: Icmp6InNeighborAdvertisements +1, Icmp6OutNeighborSolicits +1",
        "node node1 IPv6 counters during the probe: Icmp6OutPktTooBigs +1, Ip6InTooBigErrors +1, "
        "Ip6OutForwDatagrams +1"]
    # received by the sender: the Packet Too Big did its job, no cause from the counters
    moved["a"]["snmp"]["Icmp6InPktTooBigs"] = 1
    assert ipv6_causes.counter_evidence(moved, ["a", "n1"], "a", label)[0] == []


def test_no_route_counters_name_the_namespace_unless_the_route_lookup_already_did():
    moved = _moved(n1={"Ip6OutForwDatagrams": 1}, n2={"Ip6InNoRoutes": 1, "Icmp6OutDestUnreachs": 1})
    causes, evidence = ipv6_causes.counter_evidence(moved, ["a", "n1", "n2"], "a", label)
    assert causes == ["counters: node node2 received a packet it had no route for (Ip6InNoRoutes +1)"]
    # forwarding alone is no evidence; the sender comes first even when listed later
    assert evidence == ["node node2 IPv6 counters during the probe: Icmp6OutDestUnreachs +1, Ip6InNoRoutes +1"]
    known = ["no route: node node2 cannot forward to fd00:99::1 (...)"]
    assert ipv6_causes.counter_evidence(moved, ["a", "n1", "n2"], "a", label, known)[0] == []


def test_solicitations_without_an_advertisement_name_what_was_asked():
    moved = _moved(a={"Icmp6OutNeighborSolicits": 3}, b={"Ip6InDiscards": 1})
    causes, evidence = ipv6_causes.counter_evidence(moved, [], "a", label, [], {"a": ["fd00:1::99", "fd00:1::99"]})
    assert causes == ["counters: pod a sent 3 neighbour solicitation(s) for fd00:1::99 (Icmp6OutNeighborSolicits +3) "
                      "and received no neighbour advertisement (Icmp6InNeighborAdvertisements +0)"]
    assert evidence == ["pod a IPv6 counters during the probe: Icmp6OutNeighborSolicits +3"]   # b is not on the path
    moved["a"]["snmp"]["Icmp6InNeighborAdvertisements"] = 1
    assert ipv6_causes.counter_evidence(moved, [], "a", label)[0] == []
    assert ipv6_causes.counter_evidence(_moved(a={"Icmp6OutNeighborSolicits": 3}), [], "a", label,
                                        ["no NA answer: pod a sent ..."])[0] == []


# --------------------------------------------------------------------------- correlation

def _inv() -> Inventory:
    """pod a (eth0) <-veth-> node n1 (va, on bridge cni0; eth0) <-veth-> node n2 (eth0)."""
    a = NSInfo("a", "pod", "a", {"eth0": Link("a", "eth0", 2, "veth", 1500, peer=("n1", "va"))})
    n1 = NSInfo("n1", "node", "node1", {"va": Link("n1", "va", 3, "veth", 1500, master="cni0", peer=("a", "eth0")),
                                        "cni0": Link("n1", "cni0", 4, "bridge", 1500),
                                        "eth0": Link("n1", "eth0", 5, "veth", 1500, peer=("n2", "eth0"))})
    n2 = NSInfo("n2", "node", "node2", {"eth0": Link("n2", "eth0", 2, "veth", 1500, peer=("n1", "eth0"),
                                                     addrs=["fd00:2::1/64"])})
    return Inventory("t", {"a": a, "n1": n1, "n2": n2})


def _obs(ns, iface, d, order, ttl, dst="fd00:2::1", sport=40000):
    ip = {"src": "fd00:1::2", "dst": dst, "ttl": ttl, "len": 104, "v6": True, "udp": {"sport": sport, "dport": 53}}
    return Obs(ns, iface, d, order, b"", kind="probe", info={"len": 118, "l2": {}, "ip": ip})


def test_walk_follows_veth_peers_and_hops_name_what_changed():
    inv = _inv()
    # listed out of order, as the captures of three namespaces come back
    items = [_obs("n2", "eth0", "in", 0, 63, sport=1234), _obs("n1", "eth0", "out", 2, 63, sport=1234),
             _obs("a", "eth0", "out", 0, 64), _obs("n1", "va", "in", 0, 64), _obs("n1", "cni0", "in", 1, 64)]
    seq = walk(inv, items, "a", key=lambda o: (o.ns, o.order))
    assert [(o.ns, o.iface) for o in seq] == [("a", "eth0"), ("n1", "va"), ("n1", "cni0"), ("n1", "eth0"), ("n2", "eth0")]
    path = Path()
    hops = build_hops(inv, seq, path)
    assert [h.where for h in hops] == ["pod a", "node node1", "node node1", "node node1", "node node2"]
    assert hops[0].role == "pod interface" and hops[1].role == "veth of pod a on cni0" and hops[2].role == "bridge"
    assert hops[3].changes == ["SNAT: source fd00:1::2:40000 -> fd00:1::2:1234", "TTL 64 -> 63 (routed)"]
    assert path.nat_points == [("n1", ("fd00:1::2", 40000, "fd00:2::1", 53), ("fd00:1::2", 1234, "fd00:2::1", 53))]
    assert hops[4].changes == [] and hops[4].header == "fd00:1::2:1234 > fd00:2::1:53 UDP"
    back = build_hops(inv, list(reversed(seq)), Path(), reply=True)
    assert back[1].changes == [] and back[2].changes[0] == "NAT undone: source fd00:1::2:1234 -> fd00:1::2:40000"
    assert not any(h.changes for h in back[3:])


# --------------------------------------------------------------------------- the probe

def test_the_tcp_syn_checksum_is_valid_in_both_families():
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from netlab.debug.trace.probe import Probe, _tcp_syn
    import socket
    import struct
    for src, dst in (("10.0.0.1", "10.0.0.2"), ("fd00:1::1", "fd00:1::2")):
        pr = Probe("tcp", dst, 80, 104, False, b"NLTRACE-00000000", src=src, sport=40000, seq=7)
        fam = socket.AF_INET6 if pr.v6 else socket.AF_INET
        addrs = socket.inet_pton(fam, src) + socket.inet_pton(fam, dst)
        seg = _tcp_syn(pr, (lambda n: addrs + struct.pack("!I3xB", n, 6)) if pr.v6
                       else (lambda n: addrs + struct.pack("!BBH", 0, 6, n)))
        assert len(seg) == pr.size - pr.ip_header and seg[20:36] == pr.token
        L3 = IPv6 if pr.v6 else IP
        pkt = L3(bytes((IPv6(src=src, dst=dst, nh=6) if pr.v6 else IP(src=src, dst=dst, proto=6)) / seg))
        rebuilt = pkt.copy()
        del rebuilt[TCP].chksum          # scapy computes the right one when it rebuilds
        assert pkt[TCP].chksum == L3(bytes(rebuilt))[TCP].chksum
        assert TCP(seg).flags == "S" and TCP(seg).seq == 7 and TCP(seg).dport == 80
