"""bandwidth: iperf3 between two pods; the rate the receiver measured must be
within ``tolerance`` of the configured limit, and the bytes on the wire must
agree with it.

iperf3's own figure is not taken on trust: while it runs, the receiver's
interface byte counter (``/proc/<pid>/net/dev`` of the iperf3 server, in the
receiver's namespace) is sampled, and the wire rate over the transfer
(frames with their headers, so a few percent above the TCP goodput) must be
within the same tolerance of iperf3's figure. Both are reported. The first
packets of the stream are kept as evidence (a full capture is not). A large
burst the runtime gave the shaped end is drained first (netlab/checks/bucket.py)."""
from __future__ import annotations

import threading
import time

from . import iperf
from ..common import CheckResult, Context

SAMPLE_EVERY = 0.05      # seconds between counter samples


def fmt(bps: float) -> str:
    return f"{bps / 1e6:.2f} Mbit/s"


def rx_bytes(pid: int, iface: str) -> int | None:
    """Bytes received so far on ``iface`` of the namespace process ``pid`` lives in."""
    return iperf.iface_bytes(pid, iface, 0)


class CounterSampler:
    """Samples a receive counter in a thread: ``with CounterSampler(pid, iface) as s:``."""

    def __init__(self, pid: int, iface: str, every: float = SAMPLE_EVERY, skip: float = 0.0) -> None:
        self.pid, self.iface, self.every = pid, iface, every
        self.skip = skip            # seconds after the start not sampled (iperf3 -O)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        since = time.monotonic() + self.skip
        while not self._stop.is_set():
            b = rx_bytes(self.pid, self.iface)
            if b is not None and time.monotonic() >= since:
                self.samples.append((time.monotonic(), b))
            self._stop.wait(self.every)

    def __enter__(self) -> "CounterSampler":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(2)


def wire_rate(samples: list[tuple[float, int]], min_step: int = 3000) -> tuple[float, int, float] | None:
    """(bit/s, bytes, seconds) over the intervals in which the counter moved by
    more than ``min_step`` bytes (the transfer, not the idle time around it);
    None when fewer than 4 such intervals were seen (too short to measure)."""
    moving = [i for i in range(1, len(samples)) if samples[i][1] - samples[i - 1][1] > min_step]
    if len(moving) < 4:
        return None
    # from the end of the first interval that moved to the start of the last one:
    # both may be partial (the transfer started and stopped inside them)
    a, b = moving[0], moving[-1] - 1
    nbytes = samples[b][1] - samples[a][1]
    secs = samples[b][0] - samples[a][0]
    if secs <= 0 or b - a < 2:
        return None
    return nbytes * 8 / secs, nbytes, secs


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    src, dst = ctx.target(p["from"]), ctx.target(p["to"])
    port = 5201
    pcap = ctx.pcap(check)
    limit, tol = p["rate"], p["tolerance"]
    expected = f"{fmt(limit)} +-{tol * 100:.0f}%, wire agreeing"
    from .bucket import drain        # a runtime's large burst (containerd's) drained first
    omit, drained, why = drain(ctx, p, src, dst, port)
    if why:
        return CheckResult(check.name, "bandwidth", False, expected, why, pcap)
    got, why, sampler = iperf.measure(src, dst, port, p["seconds"], pcap, omit=omit,
                                      around=lambda srv: CounterSampler(srv.pid, dst.iface, skip=omit))
    if got is None:
        return CheckResult(check.name, "bandwidth", False, expected, why, pcap)
    rate = got["bits_per_second"]
    err = (rate - limit) / limit
    details = ([drained] if drained else []) + [
        f"iperf3 {src.name} -> {dst.name} {dst.address}:{port} for {p['seconds']}s"
        + (f" after {omit}s left out" if omit else "") + " (TCP goodput at the receiver)"]
    wire = wire_rate(sampler.samples)
    if wire is None:
        return CheckResult(check.name, "bandwidth", False, expected,
                           f"iperf3 {fmt(rate)} ({err * 100:+.1f}%), but the wire counter of {dst.name}:{dst.iface} "
                           f"did not show the transfer ({len(sampler.samples)} samples)", pcap, details)
    wbps, wbytes, wsecs = wire
    agree = (rate - wbps) / wbps
    details.append(f"wire: {wbytes} bytes received on {dst.name}:{dst.iface} in {wsecs:.2f}s = {fmt(wbps)} "
                   f"(frames with headers); iperf3's figure is {agree * 100:+.1f}% off it")
    good = abs(err) <= tol and abs(agree) <= tol
    problems = [] if abs(agree) <= tol else [f"the wire ({fmt(wbps)}) disagrees with iperf3 beyond {tol * 100:.0f}%"]
    return CheckResult(check.name, "bandwidth", good, expected,
                       f"iperf3 {fmt(rate)} ({err * 100:+.1f}%), wire {fmt(wbps)}"
                       + (f" ({'; '.join(problems)})" if problems else ""), pcap, details)
