"""netlab.base.capture: sniffing inside a namespace from a setns'd thread (root)."""
from __future__ import annotations

import pytest

from netlab.base.capture import Capture, CaptureError, compile_bpf

pytestmark = pytest.mark.root


def _pair(make_netns):
    """ns (vb, 10.123.0.2) <-> peer (va, 10.123.0.1); returns (ns, peer)."""
    ns, peer = make_netns("cap"), make_netns("capp")
    peer.wire(ns, "va", "vb", ("10.123.0.1/24",), ("10.123.0.2/24",))
    return ns, peer


def test_ready_before_probe_filtered_and_saved(make_netns, tmp_path):
    ns, peer = _pair(make_netns)
    pcap = tmp_path / "x.pcap"
    # the namespace's interfaces do not exist in ours: capture must run inside it
    with Capture(ns.name, "vb", "icmp", pcap=str(pcap)) as cap:
        peer.run("ping", "-c", "2", "-i", "0.2", "-W", "1", "10.123.0.2", check=False)
    pkts = cap.packets()
    assert pkts and all(p.haslayer("ICMP") for p in pkts)          # no ARP: the filter held
    assert any(p["ICMP"].type == 8 and p["IP"].src == "10.123.0.1" for p in pkts)
    from scapy.utils import rdpcap
    assert len(rdpcap(str(pcap))) == len(pkts)


def test_all_interfaces_and_count(make_netns):
    ns, peer = _pair(make_netns)
    cap = Capture(ns.name, "", "arp or icmp", count=3).start()
    peer.run("ping", "-c", "3", "-i", "0.2", "-W", "1", "10.123.0.2", check=False)
    cap.wait(5)
    cap.stop()
    assert len(cap.frames) == 3


def test_errors_are_clear(make_netns):
    ns = make_netns("cap")
    with pytest.raises(CaptureError, match="No such device"):
        Capture(ns.name, "nosuch0", "").start()
    with pytest.raises(CaptureError, match="bad capture filter"):
        compile_bpf("this is not bpf")
