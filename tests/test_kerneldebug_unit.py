"""Unit tests (no root): kernel drop reasons (parsing, correlation, support
probe), pcapng writing, capture sinks."""
from __future__ import annotations

import io
import struct

import pytest

from netlab.debug import dropmon, pcapng
from netlab.debug.dropmon import Drop

TRACE = """# tracer: nop
#
#                                _-----=> irqs-off/BH-disabled
            ping-1234    [001] b..1.   812.000100: kfree_skb: skbaddr=000000008b1c rx_sk=0000000000000000 protocol=2048 location=nft_do_chain+0x46f/0x690 reason: NETFILTER_DROP
          <idle>-0       [000] ..s2.   812.000300: kfree_skb: skbaddr=00000000aa rx_sk=0000000000000000 protocol=2048 location=ffffffff81a00010 reason: NO_SOCKET
"""


def test_parse_trace_reads_reason_location_and_time():
    ks = dropmon.Kallsyms("ffffffff81a00000 T ping_rcv\nffffffff81a00100 t other\n0000 d data\n")
    rows = dropmon.parse_trace(TRACE, ks)
    assert [(t, d.reason, d.function, d.protocol, d.cpu) for t, d in rows] == [
        (812.0001, "NETFILTER_DROP", "nft_do_chain", 2048, 1),
        (812.0003, "NO_SOCKET", "ping_rcv", 2048, 0)]


def test_function_of_and_kallsyms():
    ks = dropmon.Kallsyms("ffffffff81000000 T a_func\nffffffff81000200 T b_func\n")
    assert ks.resolve(0xffffffff81000210) == "b_func+0x10"
    assert dropmon.function_of("ip_error+0x1c/0x2a0") == "ip_error"
    assert dropmon.function_of("ffffffff81000010", ks) == "a_func"
    assert dropmon.function_of("ffffffff81000010") == "ffffffff81000010"   # no symbols: the address
    hidden = dropmon.Kallsyms("0000000000000000 T a_func\n")                 # kptr_restrict
    assert hidden.resolve(0x10) is None


def _d(ts, reason="NETFILTER_DROP"):
    return Drop(ts, reason, "x+0x1/0x2", "x", 2048)


def test_correlate_takes_the_first_real_drop_after_the_last_sighting():
    drops = [_d(9.0, "NO_SOCKET"), _d(10.00002, "OTHERHOST"), _d(10.00004), _d(10.2, "NO_SOCKET")]
    v = dropmon.correlate(drops, 10.0)
    assert v.drop is drops[2] and v.after_us == 40
    assert v.others == [drops[1]]                 # in the window, not the probe's; the rest is outside
    assert "drop reason NETFILTER_DROP in x" in v.line() and "1 other IPv4 drop(s)" in v.line()
    only_flood = dropmon.correlate([_d(10.00001, "OTHERHOST")], 10.0)
    assert only_flood.drop.reason == "OTHERHOST"
    none = dropmon.correlate([_d(11.0)], 10.0)
    assert none.drop is None and "no IPv4 drop reported" in none.line()


def test_support_names_what_is_missing(tmp_path):
    assert "no skb:kfree_skb tracepoint" in dropmon.support(str(tmp_path))
    (tmp_path / "events" / "skb" / "kfree_skb").mkdir(parents=True)
    assert dropmon.support(str(tmp_path)) is None


def test_tracefs_mounts_and_filesystems(tmp_path):
    m = tmp_path / "mounts"
    m.write_text("proc /proc proc rw 0 0\nnodev /sys/kernel/tracing tracefs rw 0 0\n")
    assert dropmon.tracefs_mounts(str(m)) == ["/sys/kernel/tracing"]
    m.write_text("proc /proc proc rw 0 0\n")
    assert dropmon.tracefs_mounts(str(m)) == []
    # another trace's private mount goes away when that trace ends: never used by a second one
    m.write_text("nodev /tmp/netlab-tracefs-ab12-x1 tracefs rw 0 0\nnodev /sys/kernel/tracing tracefs rw 0 0\n")
    assert dropmon.tracefs_mounts(str(m)) == ["/tmp/netlab-tracefs-ab12-x1", "/sys/kernel/tracing"]
    assert dropmon.shared_tracefs_mounts(str(m)) == ["/sys/kernel/tracing"]
    m.write_text("nodev /tmp/netlab-tracefs-ab12-x1 tracefs rw 0 0\n")
    assert dropmon.shared_tracefs_mounts(str(m)) == []
    fs = tmp_path / "fs"
    fs.write_text("nodev\tsysfs\nnodev\ttracefs\n")
    assert dropmon.kernel_has_tracefs(str(fs))
    fs.write_text("nodev\tsysfs\n")
    assert not dropmon.kernel_has_tracefs(str(fs))


def test_drop_monitor_on_a_fake_tracefs_leaves_it_as_it_was(tmp_path):
    """The instance life cycle against a directory laid out like tracefs."""
    root = tmp_path
    (root / "instances").mkdir()
    (root / "events" / "skb" / "kfree_skb").mkdir(parents=True)
    before = dropmon.snapshot(str(root))
    import os
    import shutil

    class FakeTracefs(dropmon.DropMonitor):
        @staticmethod
        def _mkdir(path):          # a real tracefs creates the instance's files itself
            os.makedirs(os.path.join(path, dropmon.EVENT))
            with open(os.path.join(path, "trace"), "w") as f:
                f.write(TRACE)
        _rmdir = staticmethod(shutil.rmtree)     # ... and removes them with the instance
    m = FakeTracefs("abc123", root=str(root))
    m.start()
    inst = root / "instances" / "netlab-abc123"
    assert (inst / "events/skb/kfree_skb/filter").read_text() == "protocol == 0x0800"
    assert (inst / "trace_clock").read_text() == "mono"
    drops = m.stop()
    assert [d.reason for d in drops] == ["NETFILTER_DROP", "NO_SOCKET"]
    assert abs(drops[0].ts - (812.0001 + m.offset)) < 1e-6
    assert dropmon.snapshot(str(root)) == before


def test_bad_tag_is_refused():
    with pytest.raises(dropmon.DropMonError):
        dropmon.DropMonitor("../x")


# --------------------------------------------------------------------------- pcapng

def test_pcapng_blocks_roundtrip():
    a = [("node1/eth0", 2.5, b"\x01" * 60), ("node1/eth0", 1.0, b"\x02" * 61)]
    b = [("node2/eth0", 1.5, b"\x03" * 62)]
    buf = io.BytesIO()
    w = pcapng.Writer(buf, comment="t")
    for name, ts, fr in sorted(a + b, key=lambda x: x[1]):
        w.write(name, ts, fr)
    data = buf.getvalue()
    assert struct.unpack_from("<I", data, 0)[0] == pcapng.SHB
    got = pcapng.read(data)
    assert [(n, t, len(f)) for n, t, f in got] == [("node1/eth0", 1.0, 61), ("node2/eth0", 1.5, 62),
                                                   ("node1/eth0", 2.5, 60)]
    assert w.ids == {"node1/eth0": 0, "node2/eth0": 1}
    # every block's length is a multiple of 4 and repeated at its end
    off = 0
    while off < len(data):
        n = struct.unpack_from("<I", data, off + 4)[0]
        assert n % 4 == 0 and struct.unpack_from("<I", data, off + n - 4)[0] == n
        off += n
    assert off == len(data)


def test_pcapng_read_by_scapy_names_interfaces(tmp_path):
    from scapy.layers.l2 import Ether
    from scapy.utils import rdpcap
    p = tmp_path / "x.pcapng"
    with open(p, "wb") as f:
        w = pcapng.Writer(f)
        w.write("a/eth0", 1.25, bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / (b"x" * 50)))
        w.write("underlay/n0", 1.5, bytes(Ether() / (b"y" * 50)))
    pk = rdpcap(str(p))
    assert len(pk) == 2 and float(pk[0].time) == 1.25
    assert [getattr(x, "sniffed_on", None) for x in pk] == ["a/eth0", "underlay/n0"]


def test_sinks(tmp_path):
    from netlab.debug.pcapsink import sink_for
    f = tmp_path / "one.pcap"
    s = sink_for(str(f), several=False)
    s.add("web", "eth0", "in", 3.000001, b"\x00" * 60)
    s.close()
    raw = f.read_bytes()
    assert s.kind == "pcap" and raw[:4] == b"\xd4\xc3\xb2\xa1" and len(raw) == 24 + 16 + 60
    g = tmp_path / "two.pcap"
    s = sink_for(str(g), several=True)
    s.add("web", "eth0", "in", 3.0, b"\x00" * 60)
    s.close()
    assert s.kind == "pcapng" and pcapng.read(g.read_bytes())[0][0] == "web/eth0"
    lines = []
    s = sink_for(None, several=True, line=lambda ts, fr, ifn, d, v: lines.append(ifn) or ifn)
    s.add("web", "eth0", "in", 3.0, b"")
    assert lines == ["web/eth0"]


# --------------------------------------------------------------------------- impairments

from netlab.features import impair  # noqa: E402


def test_impair_parse_values_and_errors():
    imp, errs = impair.parse({"loss": "5%", "duplicate": 0.5, "rate": "10mbit", "burst": "32kb", "minSize": 1000,
                              "direction": "ingress"})
    assert errs == []
    assert (imp.loss, imp.duplicate, imp.rate, imp.burst, imp.min_size, imp.direction) == \
        (5.0, 0.5, 10_000_000, 32768, 1000, "ingress")
    assert impair.Impairment.from_dict(imp.to_dict()) == imp
    _, errs = impair.parse({"loss": "150%", "jitter": "5ms", "burst": "1k", "speed": 1, "direction": "up"})
    keys = {k for k, _ in errs}
    assert keys == {"loss", "jitter", "burst", "speed", "direction"}, errs
    assert impair.parse({})[1] == [("", "give at least one of loss, duplicate, rate, delay")]
    assert impair.parse({"minSize": 100, "rate": "1mbit"})[1][0][0] == "minSize"
    assert impair.parse_ms("1.5s") == 1500 and impair.parse_ms("500us") == 0.5
    with pytest.raises(ValueError):
        impair.parse_percent("0.001%")


def test_impair_words():
    assert impair.parse_words(["loss", "5%", "rate=1mbit"]) == impair.Impairment(loss=5.0, rate=1_000_000)
    for bad in (["loss"], ["loss", "5%", "loss", "6%"], ["colour", "red"]):
        with pytest.raises(impair.ImpairError):
            impair.parse_words(bad)


def test_impair_plan_egress_puts_loss_at_the_receiving_end():
    imp = impair.Impairment(loss=2.5, duplicate=1.0, rate=8_000_000, min_size=1000)
    parts = impair.plan(imp, "A", "eth0", ("B", "veth1"), netem=False)
    assert [(p.kind, p.ns, p.dev) for p in parts] == [("nft", "B", "veth1"), ("nft", "A", "eth0"), ("tbf", "A", "eth0")]
    loss, dup, tbf = parts
    assert "hook ingress device \"veth1\"" in loss.text and "meta length >= 1000 numgen random mod 10000 < 250 counter drop" in loss.text
    assert loss.table == "cnilab-impair-veth1-in" and loss.text.startswith("create table netdev")
    assert "hook egress device \"eth0\"" in dup.text and "meta mark 0x4e4c0001 accept" in dup.text
    assert "< 100 meta mark set 0x4e4c0001 counter dup to \"eth0\"" in dup.text
    assert tbf.params == {"rate": 8_000_000, "burst": impair.default_burst(8_000_000)}


def test_impair_plan_ingress_uses_an_ifb_and_the_peer_for_duplicates():
    imp = impair.Impairment(loss=1, duplicate=2, rate=1_000_000, burst=20000, direction="ingress")
    parts = impair.plan(imp, "A", "eth0", ("B", "veth1"), netem=False)
    assert [(p.kind, p.ns, p.dev) for p in parts] == [
        ("nft", "A", "eth0"), ("nft", "B", "veth1"), ("ifb", "A", "eth0"), ("tbf", "A", parts[2].ifb)]
    assert parts[2].ifb == impair.ifb_name("A", "eth0") and len(parts[2].ifb) <= 15
    assert parts[3].params == {"rate": 1_000_000, "burst": 20000}


def test_impair_delay_is_refused_without_netem_and_planned_with_it():
    imp = impair.Impairment(delay=20, jitter=5, rate=1_000_000)
    with pytest.raises(impair.ImpairError) as e:
        impair.plan(imp, "A", "eth0", ("B", "v"), netem=False)
    msg = str(e.value)
    assert "\n" not in msg and "sch_netem" in msg and "delay and jitter need" in msg
    parts = impair.plan(imp, "A", "eth0", ("B", "v"), netem=True)          # the probe, faked: netem exists
    assert [(p.kind, p.dev) for p in parts] == [("netem", "eth0")]
    assert parts[0].params == {"rate": 1_000_000, "burst": impair.default_burst(1_000_000), "delay": 20, "jitter": 5}
    ing = impair.plan(impair.Impairment(delay=10, direction="ingress"), "A", "eth0", None, netem=True)
    assert [p.kind for p in ing] == ["ifb", "netem"] and ing[1].dev == ing[0].ifb


def test_impair_needs_a_wire_for_loss():
    with pytest.raises(impair.ImpairError, match="not a veth"):
        impair.plan(impair.Impairment(loss=1), "A", "eth0", None, netem=False)


def test_preflight_refuses_delay_with_the_real_probe_faked(monkeypatch):
    from netlab.lab.topology import loads
    t = loads("name: x\nnodes: {n1: {impair: {delay: 10ms}}}\n")
    monkeypatch.setattr(impair, "kernel_has_netem", lambda: False)
    assert "nodes.n1.impair: delay needs the kernel's netem qdisc (module sch_netem)" in impair.preflight(t)
    monkeypatch.setattr(impair, "kernel_has_netem", lambda: True)
    assert impair.preflight(t) is None


def test_topology_impair_keys():
    from netlab.lab.topology import TopologyError, loads
    t = loads("""
name: x
underlay: {impair: {n2: {loss: 1%}, ext: {rate: 1mbit}}}
nodes: {n1: {impair: {duplicate: 1%}}, n2: {}}
networks: {w: {type: bridge, subnet: 10.9.0.0/16, nodePrefix: 24}}
pods: {a: {node: n1, network: w, impair: {rate: 2mbit, direction: ingress}}}
""")
    assert t.underlay.impair == {"n2": {"loss": 1.0, "direction": "egress"},
                                 "ext": {"rate": 1_000_000, "direction": "egress"}}
    assert t.nodes["n1"].impair == {"duplicate": 1.0, "direction": "egress"}
    assert t.pods["a"].impair == {"rate": 2_000_000, "direction": "ingress"}
    with pytest.raises(TopologyError) as e:
        loads("name: x\nunderlay: {impair: {n9: {loss: 1%}}}\nnodes: {n1: {impair: {loss: x}}}\n"
              "pods: {p: {node: n1, impair: {loss: 1%}}}\n")
    text = "\n".join(e.value.errors)
    assert "underlay.impair.n9: no switch port faces 'n9'" in text
    assert "nodes.n1.impair.loss: must be a percentage" in text
    assert "pods.p.impair: a pod in mode none has no interface of its own to impair" in text


def test_reach_loss_expectation():
    from netlab.lab.topology import TopologyError, loads
    base = "name: x\nnodes: {n1: {}, n2: {}}\nchecks:\n  - {type: reach, from: n1, to: n2, %s}\n"
    t = loads(base % "count: 200, size: 1400, expect: {loss: 5%, tolerance: 2%}")
    assert t.checks[0].params["expect"] == {"loss": 5.0, "tolerance": 2.0} and t.checks[0].params["size"] == 1400
    t = loads(base % "count: 100, expect: {loss: 20%}")
    assert t.checks[0].params["expect"]["tolerance"] == 13.0     # 3 sigma of 100 tries (12%) + one probe
    with pytest.raises(TopologyError) as e:
        loads(base % "proto: tcp, size: 10, expect: {loss: 5%, colour: red}")
    text = "\n".join(e.value.errors)
    assert "expect.colour: unknown key" in text and "proto must be icmp" in text and "size is the ICMP data size" in text


def test_loss_judge_and_echo_seqs():
    from netlab.checks.traffic.loss import echo_seqs, judge
    assert judge(100, 72, 0.0, 1.0) == (False, 28.0)
    assert judge(300, 210, 30.0, 10.0) == (True, 30.0)
    assert judge(0, 0, 0.0, 100.0)[0] is False            # nothing sent proves nothing
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether
    req = [bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, seq=s)) for s in (1, 2, 2)]
    rep = [bytes(Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / ICMP(type=0, seq=1))]
    frames = [(0.0, f) for f in req + rep]
    dirs = ["out", "out", "out", "in"]
    assert echo_seqs(frames, dirs, icmp_type=8, src=None, dst="10.0.0.2", direction="out") == {1, 2}
    assert echo_seqs(frames, dirs, icmp_type=0, src="10.0.0.2", dst=None, direction="in") == {1}
    assert echo_seqs(frames, dirs, icmp_type=0, src="10.0.0.9", dst=None, direction="in") == set()


def test_watch_rate_lines():
    from netlab.cli.cmd_impair import rate_lines
    z = {"rx_packets": 0, "rx_bytes": 0, "tx_packets": 0, "tx_bytes": 0, "rx_dropped": 0, "tx_dropped": 0,
         "rx_errors": 0, "tx_errors": 0}
    after = {"eth0": dict(z, rx_packets=20, rx_bytes=2000, rx_dropped=3), "cni0": dict(z), "lo": dict(z, rx_packets=5)}
    lines = rate_lines("node1", {"eth0": z, "cni0": z}, after, 2.0)
    assert len(lines) == 1 and lines[0].startswith("node1/eth0") and "10.0 pkt/s" in lines[0] and "1.0 KB/s" in lines[0]
    assert lines[0].endswith("rx_dropped +3")
    assert len(rate_lines("node1", {"eth0": z, "cni0": z}, after, 2.0, show_all=True)) == 2


def test_netdev_drop_rules_are_named_and_the_kernel_line_is_printed():
    from netlab.debug.trace import Probe, TraceResult, format_result, parse_netdev_drops
    text = """table netdev cnilab-impair-eth0-in {
	chain impair {
		type filter hook ingress device "eth0" priority -500; policy accept;
		meta length >= 1000 numgen random mod 10000 < 3000 counter packets 5 bytes 7000 drop comment "netlab loss 30%"
	}
}
table netdev other {
	chain c {
		type filter hook ingress device "eth1" priority 0; policy drop;
		ip saddr 10.0.0.1 drop
		counter packets 1 bytes 2 accept
	}
}
"""
    assert parse_netdev_drops(text) == [
        "netdev cnilab-impair-eth0-in impair: meta length >= 1000 numgen random mod 10000 < 3000 counter packets 5 "
        "bytes 7000 drop (a netlab impairment: netlab impair all show)",
        "netdev other c: ip saddr 10.0.0.1 drop"]
    r = TraceResult(Probe("icmp", "10.0.0.2", None, 84, False, b"NLTRACE-x", src="10.0.0.1"), "a", "b", "ns")
    r.verdict, r.kernel = "lost", "drop reason NETFILTER_DROP in nft_do_chain (skb:kfree_skb, 3 µs ...)"
    r.kernel_note = "kernel drop reasons unavailable: the kernel has no tracefs"
    out = format_result(r).splitlines()
    assert out[2] == "kernel drop reasons unavailable: the kernel has no tracefs"
    assert out[out.index("verdict: lost") + 1] == "  kernel: drop reason NETFILTER_DROP in nft_do_chain (skb:kfree_skb, 3 µs ...)"
