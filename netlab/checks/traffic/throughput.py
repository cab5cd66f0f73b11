"""throughput: iperf3 TCP from one pod to another, one or ``streams`` streams.

Verdict on evidence: iperf3's received byte count must be corroborated by the
receiving pod interface's rx byte counter (the counter grew by at least the
payload iperf3 reports and by no more than payload plus generous per-packet
header room), and, with ``expect: {min: "X Mbit/s"}``, the rate must reach it.
The result reports the rate, the counters, each pod's interface MTU and the
TCP MSS iperf3 used, so overlay and routed paths can be put side by side.
The first packets of the transfer are kept as the pcap evidence.
"""
from __future__ import annotations

import json

from . import iperf
from .bandwidth import fmt
from ..common import CheckResult, Context, run_in

PORT = 5202
# headers on the wire per segment (Ethernet 14 + IP 20 + TCP 32 with timestamps),
# acks and retransmissions: the counter may exceed the payload by this share
OVERHEAD = 0.25


def link(ns: str, dev: str) -> dict:
    p = run_in(ns, ["ip", "-j", "-s", "link", "show", "dev", dev])
    return json.loads(p.stdout)[0]


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    src, dst = ctx.target(p["from"]), ctx.target(p["to"])
    pcap = ctx.pcap(check)
    expected = f">= {fmt(p['min'])}" if p["min"] else "a measured rate, corroborated by counters"
    before = link(dst.ns, dst.iface)
    got, why, _ = iperf.measure(src, dst, PORT, p["seconds"], pcap, streams=p["streams"])
    after = link(dst.ns, dst.iface)
    if got is None:
        return CheckResult(check.name, "throughput", False, expected, why, pcap)
    rate, payload, mss = got["bits_per_second"], got["bytes"], got["mss"]
    rx = after["stats64"]["rx"]["bytes"] - before["stats64"]["rx"]["bytes"]
    src_mtu = link(src.ns, src.iface)["mtu"]
    corroborated = payload > 0 and payload <= rx <= payload * (1 + OVERHEAD) + 1_000_000
    good = corroborated and rate >= p["min"]
    observed = (f"{fmt(rate)} with {p['streams']} stream(s); {dst.iface} rx +{rx} bytes for "
                f"{payload} payload bytes" + ("" if corroborated else " (counters do NOT corroborate)"))
    return CheckResult(check.name, "throughput", good, expected, observed, pcap, [
        f"iperf3 {src.name} {src.address} -> {dst.name} {dst.address}:{PORT}, {p['seconds']}s, "
        f"-P {p['streams']} (TCP goodput at the receiver)",
        f"path MTU: {src.name} {src.iface} mtu {src_mtu}, {dst.name} {dst.iface} mtu {after['mtu']}; "
        f"TCP MSS {mss}"])
