"""Unit tests (no root): kernel drop reasons (parsing, correlation, support
probe), pcapng writing, capture sinks."""
from __future__ import annotations

import io
import struct

import pytest

from netlab import dropmon, pcapng
from netlab.dropmon import Drop

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

def test_pcapng_blocks_roundtrip_and_time_merge():
    a = [("node1/eth0", 2.5, b"\x01" * 60), ("node1/eth0", 1.0, b"\x02" * 61)]
    b = [("node2/eth0", 1.5, b"\x03" * 62)]
    buf = io.BytesIO()
    w = pcapng.Writer(buf, comment="t")
    for name, ts, fr in pcapng.merge(a + b):
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
    from netlab.pcapsink import sink_for
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
