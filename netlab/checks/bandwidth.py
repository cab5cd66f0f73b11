"""bandwidth: iperf3 between two pods; the rate the receiver measured must be
within ``tolerance`` of the configured limit. The first packets of the
stream are kept as evidence (a full capture of the transfer is not)."""
from __future__ import annotations

import json
import subprocess
import time

from .. import netns as nsutil
from .common import CheckResult, Context, captured, run_in


def _listening_tcp(pid: int, port: int) -> bool:
    try:
        with open(f"/proc/{pid}/net/tcp", encoding="ascii") as f:
            next(f)
            return any(line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A" for line in f)
    except OSError:
        return False


def fmt(bps: float) -> str:
    return f"{bps / 1e6:.2f} Mbit/s"


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    src, dst = ctx.target(p["from"]), ctx.target(p["to"])
    port = 5201
    pcap = ctx.pcap(check)
    srv = subprocess.Popen(nsutil.exec_argv(dst.ns, ["iperf3", "-s", "-1", "-B", dst.address, "-p", str(port)]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while not _listening_tcp(srv.pid, port) and time.monotonic() < deadline:
            time.sleep(0.02)
        proc, _ = captured(dst.ns, dst.iface, f"tcp port {port}", pcap,
                           lambda: run_in(src.ns, ["iperf3", "-c", dst.address, "-p", str(port), "-t", str(p["seconds"]), "-J"],
                                          timeout=p["seconds"] + 20), count=100)
    finally:
        try:
            srv.wait(5)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
    try:
        data = json.loads(proc.stdout)
        rate = float(data["end"]["sum_received"]["bits_per_second"])
    except (ValueError, KeyError, TypeError):
        return CheckResult(check.name, "bandwidth", False, fmt(p["rate"]), f"iperf3 failed: {(proc.stderr or proc.stdout)[-200:]}", pcap)
    limit = p["rate"]
    err = (rate - limit) / limit
    good = abs(err) <= p["tolerance"]
    return CheckResult(check.name, "bandwidth", good, f"{fmt(limit)} +-{p['tolerance'] * 100:.0f}%",
                       f"{fmt(rate)} ({err * 100:+.1f}%)", pcap,
                       [f"iperf3 {src.name} -> {dst.name} {dst.address}:{port} for {p['seconds']}s (TCP goodput at the receiver)"])
