"""reach with ``expect: {loss: 5%, tolerance: 2%}``: a lab proves its impairment on the wire.

``count`` echo requests go from FROM to TO (like ``ping -c COUNT``, 10 ms
apart); captures at both ends count, by ICMP sequence number (duplicates
count once), the requests that left FROM, those that arrived at TO and the
answers that came back to FROM. The loss is the share of requests left
unanswered; it must be within ``tolerance`` of the expected share. The
pcaps of both ends are the evidence.
"""
from __future__ import annotations

import socket
import struct
import time

from ...base.capture import Capture
from ..common import CheckResult, Context, ping


def echo_seqs(frames: list[tuple[float, bytes]], directions: list[str], *, icmp_type: int, src: str | None,
              dst: str | None, direction: str | None) -> set[int]:
    """Sequence numbers of ICMP echo requests (type 8) or replies (0) in captured frames."""
    out = set()
    for (_, fr), d in zip(frames, directions):
        if direction and d != direction:
            continue
        if len(fr) < 42 or fr[12:14] != b"\x08\x00" or fr[23] != 1:
            continue
        ihl = (fr[14] & 0x0F) * 4
        s, t = socket.inet_ntoa(fr[26:30]), socket.inet_ntoa(fr[30:34])
        if (src and s != src) or (dst and t != dst) or len(fr) < 14 + ihl + 8:
            continue
        typ = fr[14 + ihl]
        if typ == icmp_type:
            out.add(struct.unpack_from("!H", fr, 14 + ihl + 6)[0])
    return out


def judge(sent: int, answered: int, want: float, tolerance: float) -> tuple[bool, float]:
    loss = 100.0 * (sent - answered) / sent if sent else 100.0
    return sent > 0 and abs(loss - want) <= tolerance + 1e-9, loss


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    want, tol = p["expect"]["loss"], p["expect"]["tolerance"]
    expected = f"loss {want:g}% +-{tol:g}% of {p['count']}"
    src, dst = ctx.target(p["from"]), ctx.target(p["to"])
    if not dst.address:
        return CheckResult(check.name, "reach", False, expected, f"{dst.name} has no address")
    pcap_src, pcap_dst = ctx.pcap(check, "-from"), ctx.pcap(check, "-to")
    bpf = f"icmp and host {dst.address}"
    caps = [Capture(src.ns, "" if src.iface == "any" or src.kind in ("node", "host", "ext", "dns") else src.iface,
                    bpf, pcap=pcap_src, max_seconds=600),
            Capture(dst.ns, "" if dst.kind in ("node", "host", "ext", "dns") else dst.iface, bpf, pcap=pcap_dst,
                    max_seconds=600)]
    for c in caps:
        c.start()
    try:
        r = ping(src.ns, dst.address, count=p["count"], timeout=p["timeout"], size=p.get("size"),
                 interval=0.01 if p["count"] > 20 else 0.2)
    finally:
        time.sleep(0.2)
        for c in caps:
            c.stop()
    at_src, at_dst = caps
    sent = echo_seqs(at_src.frames, at_src.directions, icmp_type=8, src=None, dst=dst.address, direction="out")
    answered = echo_seqs(at_src.frames, at_src.directions, icmp_type=0, src=dst.address, dst=None, direction="in")
    arrived = echo_seqs(at_dst.frames, at_dst.directions, icmp_type=8, src=None, dst=dst.address, direction="in")
    answered &= sent
    ok, loss = judge(len(sent), len(answered), want, tol)
    summary = (r.stdout.strip().splitlines() or [r.stderr.strip()])
    stats = next((ln for ln in summary if "transmitted" in ln), summary[-1] if summary else "")
    return CheckResult(check.name, "reach", ok, expected,
                       f"loss {loss:.1f}%: {len(answered)}/{len(sent)} answered", pcap_src,
                       [f"{src.name} ({src.address}) -> {dst.name} ({dst.address}) icmp"
                        + (f" {p['size']} data bytes" if p.get("size") is not None else ""),
                        f"on the wire: {len(sent)} request(s) left {src.name}, {len(arrived & sent)} arrived at "
                        f"{dst.name}, {len(answered)} answer(s) came back (captures {pcap_src}, {pcap_dst})",
                        f"ping says: {stats}"])
