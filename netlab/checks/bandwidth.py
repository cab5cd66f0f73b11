"""bandwidth: iperf3 between two pods; the rate the receiver measured must be
within ``tolerance`` of the configured limit, and the bytes on the wire must
agree with it.

A token bucket that starts with a large burst passes that many bytes at line
rate before it shapes: containerd (1.6, and later) turns the
``kubernetes.io/*-bandwidth`` annotations into a rate with a burst of 2^32-1
bits (512 MiB). When the shaped end's recorded burst (the capability args the
runtime sent) is more than a tenth of what the measurement moves, the check
first drains it (an unmeasured iperf3 between the pod and its own node, the
fastest path through the bucket, until the pod's interface counter shows the
shaped rate for a second or the whole burst went through), then measures with
the first second omitted (what refilled in between), and says so.

iperf3's own figure is not taken on trust: while it runs, the receiver's
interface byte counter (``/proc/<pid>/net/dev`` of the iperf3 server, in the
receiver's namespace) is sampled, and the wire rate over the transfer
(frames with their headers, so a few percent above the TCP goodput) must be
within the same tolerance of iperf3's figure. Both are reported. The first
packets of the stream are kept as evidence (a full capture is not)."""
from __future__ import annotations

import json
import subprocess
import threading
import time

from .. import netns as nsutil
from .common import CheckResult, Context, captured, run_in

SAMPLE_EVERY = 0.05      # seconds between counter samples


def _listening_tcp(pid: int, port: int) -> bool:
    try:
        with open(f"/proc/{pid}/net/tcp", encoding="ascii") as f:
            next(f)
            return any(line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A" for line in f)
    except OSError:
        return False


def fmt(bps: float) -> str:
    return f"{bps / 1e6:.2f} Mbit/s"


def rx_bytes(pid: int, iface: str) -> int | None:
    """Bytes received so far on ``iface`` of the namespace process ``pid`` lives in."""
    try:
        with open(f"/proc/{pid}/net/dev", encoding="ascii") as f:
            for line in f:
                name, sep, rest = line.partition(":")
                if sep and name.strip() == iface:
                    return int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return None


class CounterSampler:
    """Samples a receive counter in a thread: ``with CounterSampler(pid, iface) as s:``."""

    def __init__(self, pid: int, iface: str, every: float = SAMPLE_EVERY) -> None:
        self.pid, self.iface, self.every = pid, iface, every
        self.samples: list[tuple[float, int]] = []
        self.skip_until = 0.0      # samples before this time are not kept (iperf3 -O)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            b = rx_bytes(self.pid, self.iface)
            if b is not None and time.monotonic() >= self.skip_until:
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


def recorded_burst(ctx: Context, pod: str, direction: str) -> int:
    """Bits of burst the runtime gave ``pod``'s ``direction`` (ingress/egress) bucket, from
    the capability args recorded at ADD (netlab: spec keys; containerd: go-cni's)."""
    if ctx.st is None:
        return 0
    res = ctx.st.attachments().get(pod) or {}
    bw = (res.get("capability_args") or {}).get("bandwidth") or {}
    want = f"{direction}burst"
    for k, v in bw.items():
        if k.lower() == want and isinstance(v, int):
            return v
    return 0


def _iperf_server(ns: str, address: str, port: int) -> subprocess.Popen:
    srv = subprocess.Popen(nsutil.exec_argv(ns, ["iperf3", "-s", "-1", "-B", address, "-p", str(port)]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 5
    while not _listening_tcp(srv.pid, port) and time.monotonic() < deadline:
        time.sleep(0.02)
    return srv


def _reap(srv: subprocess.Popen) -> None:
    try:
        srv.wait(5)
    except subprocess.TimeoutExpired:
        srv.kill()
        srv.wait()


def if_bytes(pid: int, iface: str, column: int) -> int | None:
    """/proc/<pid>/net/dev column of ``iface``: 0 received bytes, 8 sent bytes."""
    try:
        with open(f"/proc/{pid}/net/dev", encoding="ascii") as f:
            for line in f:
                name, sep, rest = line.partition(":")
                if sep and name.strip() == iface:
                    return int(rest.split()[column])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _drain(ctx: Context, p: dict, src, dst, port: int, burst: int, drain: int, limit: int) -> str:
    """Empty the shaped end's token bucket: send from/to the pod's own node (the fastest
    path through the bucket) until the pod's eth0 counter shows the shaped rate for a
    second, or ``drain`` bytes went through. Returns a detail line, or 'FAILED:...'."""
    ingress = bool(recorded_burst(ctx, p["to"], "ingress"))
    pod = p["to"] if ingress else p["from"]
    podt = dst if ingress else src
    node = ctx.target(ctx.topo.pods[pod].node)
    a, b = (node, dst) if ingress else (src, node)
    srv = _iperf_server(b.ns, b.address, port)
    cli = subprocess.Popen(nsutil.exec_argv(a.ns, ["iperf3", "-c", b.address, "-p", str(port), "-n", str(drain)]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # the pod's eth0: received bytes (ingress bucket), sent bytes (egress bucket)
    pid, col = (srv.pid, 0) if ingress else (cli.pid, 8)
    t0 = time.monotonic()
    start = if_bytes(pid, podt.iface, col) or 0
    window: list[tuple[float, int]] = []
    shaped_for = 0.0
    try:
        while cli.poll() is None:
            time.sleep(0.1)
            n = if_bytes(pid, podt.iface, col)
            if n is None:
                continue
            window.append((time.monotonic(), n))
            window = [w for w in window if w[0] >= window[-1][0] - 0.5]
            if len(window) >= 4 and window[-1][0] > window[0][0]:
                rate = (window[-1][1] - window[0][1]) * 8 / (window[-1][0] - window[0][0])
                shaped_for = shaped_for + 0.1 if rate < 1.5 * limit else 0.0
                if shaped_for >= 1.0:
                    break
    finally:
        moved = (window[-1][1] if window else start) - start
        if cli.poll() is None:
            cli.terminate()
        try:
            cli.wait(5)
        except subprocess.TimeoutExpired:
            cli.kill()
            cli.wait()
        srv.terminate()
        _reap(srv)
    secs = time.monotonic() - t0
    if cli.returncode not in (0, -15) and shaped_for < 1.0:
        return f"FAILED:iperf3 failed draining the token bucket: {(cli.stderr.read() if cli.stderr else '')[-200:]}"
    return (f"drained {pod}'s {'ingress' if ingress else 'egress'} token bucket first ({a.name} -> {b.name}): "
            f"its burst is {burst} bits ({burst / 8 / 2**20:.0f} MiB, as the runtime sent it); "
            f"{moved / 2**20:.0f} MiB {'reached' if ingress else 'left'} {pod}:{podt.iface} in {secs:.1f}s "
            "before the rate fell to the limit")


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    src, dst = ctx.target(p["from"]), ctx.target(p["to"])
    port = 5201
    pcap = ctx.pcap(check)
    limit, tol = p["rate"], p["tolerance"]
    expected = f"{fmt(limit)} +-{tol * 100:.0f}%, wire agreeing"
    # the shaped end's bucket: the receiver's ingress, else the sender's egress
    burst = recorded_burst(ctx, p["to"], "ingress") or recorded_burst(ctx, p["from"], "egress")
    drain = burst // 8 if burst // 8 > limit * p["seconds"] // 80 else 0
    omit = 1 if drain else 0
    drained = []
    if drain:
        why = _drain(ctx, p, src, dst, port, burst, drain, limit)
        if why.startswith("FAILED"):
            return CheckResult(check.name, "bandwidth", False, expected, why[7:], pcap)
        drained = [why]
    srv = _iperf_server(dst.ns, dst.address, port)
    try:
        with CounterSampler(srv.pid, dst.iface) as sampler:
            argv = ["iperf3", "-c", dst.address, "-p", str(port), "-t", str(p["seconds"] + omit), "-J"]
            if omit:
                argv += ["-O", str(omit)]
            sampler.skip_until = time.monotonic() + omit
            proc, _ = captured(dst.ns, dst.iface, f"tcp port {port}", pcap,
                               lambda: run_in(src.ns, argv, timeout=p["seconds"] + omit + 20), count=100)
    finally:
        _reap(srv)
    try:
        data = json.loads(proc.stdout)
        rate = float(data["end"]["sum_received"]["bits_per_second"])
    except (ValueError, KeyError, TypeError):
        return CheckResult(check.name, "bandwidth", False, expected, f"iperf3 failed: {(proc.stderr or proc.stdout)[-200:]}", pcap)
    err = (rate - limit) / limit
    details = drained + [f"iperf3 {src.name} -> {dst.name} {dst.address}:{port} for {p['seconds']}s"
                         + (f" after {omit}s omitted" if omit else "") + " (TCP goodput at the receiver)"]
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
