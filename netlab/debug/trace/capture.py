"""Recording one probe: everything listening before it is sent, everything stopped after.

Owns the capture side of a trace: one capture socket per lab namespace
(``netlab.base.capture.Capture`` with no interface: an unbound AF_PACKET
socket, so the frames of one namespace come out in the kernel's order, each
with the interface it was seen on), the nft trace (``nftrules.NfTrace``), the
kernel drop monitor (``dropmon``), the counter snapshots before and after,
sending the probe, and waiting for its answer (stopping early once it, or
an ICMP error quoting the probe, is back in the sender's namespace). What was
recorded comes back as a ``Recording``; finding the probe in it is the
correlation's job.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from ...base.capture import Capture
from .. import dropmon
from .counters import snapshot
from .frames import tcp_dport
from .nftrules import NfTrace
from .probe import Probe, send_probe


@dataclass
class Recording:
    caps: dict[str, Capture] = field(default_factory=dict)     # ns -> its capture
    before: dict[str, dict] = field(default_factory=dict)      # counter snapshots
    after: dict[str, dict] = field(default_factory=dict)
    rules: dict[str, list[dict]] = field(default_factory=dict)  # ns -> nft rules the probe met (verdicts)
    nft_lines: dict[str, list[str]] = field(default_factory=dict)   # ns -> raw `nft monitor trace` lines
    drops: list = field(default_factory=list)                  # dropmon.Drop, every drop meanwhile
    sent_at: float = 0.0                                       # wall clock, just before sending
    kernel_note: str = ""      # why drop reasons are not available, when they are not


def _drop_monitor(rec: Recording, pr: Probe, drop_reasons: bool):
    """A DropMonitor for this trace, or None (with a one-line note saying why not)."""
    if not drop_reasons:
        return None
    why = dropmon.support()
    if why:
        rec.kernel_note = f"kernel drop reasons unavailable: {why}"
        return None
    return dropmon.DropMonitor(pr.token.decode()[-8:], protocol=0x86DD if pr.v6 else dropmon.ETH_P_IP)


def _start_monitor(rec: Recording, mon):
    try:
        mon.start()
        return mon
    except dropmon.DropMonError as e:
        rec.kernel_note = f"kernel drop reasons unavailable: {e}"
        return None


def wait_for_answer(cap: Capture | None, pr: Probe, wait: float) -> None:
    """Up to ``wait`` seconds; stop early once an answer (or an ICMP error quoting the
    probe) is back in the sender's namespace, plus a little time for the stragglers."""
    deadline = time.monotonic() + wait
    seen = 0
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if cap is None:
            continue
        n = min(len(cap.frames), len(cap.directions))
        for i in range(seen, n):
            if cap.directions[i] != "in":
                continue
            fr = cap.frames[i][1]
            if pr.token in fr or (pr.proto == "tcp" and tcp_dport(fr) == pr.sport):
                time.sleep(0.15)
                return
        seen = n


def _stop(rec: Recording, nft: NfTrace | None, mon) -> None:
    for c in rec.caps.values():
        try:
            c.stop(settle=0)
        except Exception:  # noqa: BLE001
            pass
    if nft:
        nft.stop()
    if mon is not None:
        rec.drops = mon.stop()
        if mon.error:
            rec.kernel_note = f"kernel drop reasons: {mon.error}"


def record(nss: list[str], src_ns: str, pr: Probe, *, wait: float, pcap_dir: str | None,
           nftrace: bool, drop_reasons: bool) -> Recording:
    """Listen in every namespace of ``nss``, send ``pr`` from ``src_ns``, stop everything."""
    rec = Recording()
    nft = NfTrace(nss, pr) if nftrace else None
    mon = _drop_monitor(rec, pr, drop_reasons)
    rec.before = snapshot(nss)
    try:
        if nft:
            nft.start()
        if mon is not None:
            mon = _start_monitor(rec, mon)
        for ns in nss:
            pcap = os.path.join(pcap_dir, f"{ns}.pcap") if pcap_dir else None
            rec.caps[ns] = Capture(ns, "", "ip or ip6 or arp", pcap=pcap, max_seconds=wait + 30)
        for c in rec.caps.values():
            c.start(timeout=30)
        if nft:
            time.sleep(0.3)     # nft monitor has no "ready" signal
        rec.sent_at = time.time()
        send_probe(src_ns, pr)
        if pr.sent:
            wait_for_answer(rec.caps.get(src_ns), pr, wait)
        else:
            time.sleep(0.1)
    finally:
        _stop(rec, nft, mon)
    rec.rules = nft.verdicts() if nft else {}
    rec.nft_lines = nft.lines if nft else {}
    rec.after = snapshot(nss)
    return rec
