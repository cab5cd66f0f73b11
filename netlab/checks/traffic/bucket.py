"""A token bucket's burst, drained before the ``bandwidth`` check measures.

A bucket that starts with a large burst passes that many bytes at line rate
before it shapes: containerd (1.6, and later) turns the
``kubernetes.io/*-bandwidth`` annotations into a rate with a burst of 2^32-1
bits (512 MiB). When the shaped end's recorded burst (the capability args the
runtime sent, as recorded at ADD) is more than a tenth of what the
measurement moves, ``drain`` empties it first: an unmeasured iperf3 between
the pod and its own node (the fastest path through the bucket) until the
pod's interface counter shows the shaped rate for a second, or the whole
burst went through. The measurement then leaves out its first second (what
refilled in between: iperf3 ``-O``, and the wire counter from then on).
"""
from __future__ import annotations

import subprocess
import time

from ...base import namespaces as nsutil
from . import iperf
from ..common import Context


def drain(ctx: Context, p: dict, src, dst, port: int) -> tuple[int, str | None, str | None]:
    """(seconds the measurement must omit, a detail line, an error) for check params ``p``."""
    limit = p["rate"]
    burst = recorded_burst(ctx, p["to"], "ingress") or recorded_burst(ctx, p["from"], "egress")
    size = burst // 8
    if not limit or size <= limit * p["seconds"] // 80:
        return 0, None, None
    line = _drain(ctx, p, src, dst, port, burst, size, limit)
    if line.startswith("FAILED:"):
        return 0, None, line[len("FAILED:"):]
    return 1, line, None


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


def if_bytes(pid: int, iface: str, column: int) -> int | None:
    """/proc/<pid>/net/dev column of ``iface``: 0 received bytes, 8 sent bytes."""
    return iperf.iface_bytes(pid, iface, column)


def _drain(ctx: Context, p: dict, src, dst, port: int, burst: int, drain: int, limit: int) -> str:
    """Empty the shaped end's token bucket: send from/to the pod's own node (the fastest
    path through the bucket) until the pod's eth0 counter shows the shaped rate for a
    second, or ``drain`` bytes went through. Returns a detail line, or 'FAILED:...'."""
    ingress = bool(recorded_burst(ctx, p["to"], "ingress"))
    pod = p["to"] if ingress else p["from"]
    podt = dst if ingress else src
    node = ctx.target(ctx.topo.pods[pod].node)
    a, b = (node, dst) if ingress else (src, node)
    with iperf.server(b, port) as srv:
        return _drive(srv, a, b, podt, pod, port, burst, drain, limit, ingress)


def _drive(srv, a, b, podt, pod: str, port: int, burst: int, drain: int, limit: int, ingress: bool) -> str:
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
    secs = time.monotonic() - t0
    if cli.returncode not in (0, -15) and shaped_for < 1.0:
        return f"FAILED:iperf3 failed draining the token bucket: {(cli.stderr.read() if cli.stderr else '')[-200:]}"
    return (f"drained {pod}'s {'ingress' if ingress else 'egress'} token bucket first ({a.name} -> {b.name}): "
            f"its burst is {burst} bits ({burst / 8 / 2**20:.0f} MiB, as the runtime sent it); "
            f"{moved / 2**20:.0f} MiB {'reached' if ingress else 'left'} {pod}:{podt.iface} in {secs:.1f}s "
            "before the rate fell to the limit")
