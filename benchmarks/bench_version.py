#!/usr/bin/env python3
"""Bare VERSION call: our installed `bridge` vs the Go reference /usr/lib/cni/bridge.

Wall time (median and p90 of N execs, each a fresh process with the minimal
environment a runtime gives: CNI_COMMAND only, cwd /) and peak RSS of the
plugin process (ru_maxrss from wait4). A child forked from this Python process
would inherit our ~14 MB as its high-water mark (the kernel keeps the pre-exec
maximum), so the RSS is taken by a tiny static parent, `busybox time -f %M`,
calibrated against a child that reports its own VmHWM (busybox 1.35 prints
ru_maxrss x4). Without busybox, the raw os.wait4 figure is shown with a
"floor" note. Our executable is measured as `netlab cni
install` writes it (python -IS with explicit sys.path) and in the -I variant
(site-packages found by site.py), which is what install() falls back to.
A second block measures an input error (ADD with every variable missing).

    .venv/bin/python benchmarks/bench_version.py [-n 50]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from cninode import install as inst  # noqa: E402

REFERENCE = "/usr/lib/cni/bridge"


def one(path: str, env: dict, stdin: bytes) -> tuple[float, int, int]:
    """(seconds, peak RSS KiB, exit status) of one exec."""
    r, w = os.pipe()
    start = time.perf_counter()
    p = subprocess.Popen([path], env=env, stdin=r, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, cwd="/")
    os.close(r)
    try:
        os.write(w, stdin)
    except BrokenPipeError:
        pass            # the plugin answered (e.g. an env error) without reading stdin
    os.close(w)
    _, status, usage = os.wait4(p.pid, 0)
    elapsed = time.perf_counter() - start
    p.returncode = os.waitstatus_to_exitcode(status)
    return elapsed, usage.ru_maxrss, p.returncode


BUSYBOX = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.access(p, os.X_OK)), None)
_HWM_CHILD = ("import sys; sys.stdout.write(open('/proc/self/status').read()"
              ".split('VmHWM:')[1].split()[0])")


def _busybox_maxrss(argv: list[str], env: dict, stdin: bytes) -> tuple[int, bytes]:
    p = subprocess.run([BUSYBOX, "time", "-f", "%M", *argv], env=env, input=stdin,
                       capture_output=True, cwd="/", timeout=60)
    return int(p.stderr.decode().strip().splitlines()[-1]), p.stdout


def busybox_scale() -> float | None:
    """busybox's %M divided by the true peak RSS (1 if correct, 4 on busybox 1.35)."""
    if BUSYBOX is None:
        return None
    try:
        printed, out = _busybox_maxrss([sys.executable, "-I", "-c", _HWM_CHILD], {}, b"")
        return round(printed / int(out))
    except (ValueError, IndexError, OSError, subprocess.SubprocessError):
        return None


def peak_rss_kib(path: str, env: dict, stdin: bytes, scale: float | None, runs: int = 5) -> tuple[int, str]:
    if scale:
        return max(_busybox_maxrss([path], env, stdin)[0] for _ in range(runs)) // scale, ""
    return max(one(path, env, stdin)[1] for _ in range(runs)), " (floor: parent RSS)"


def measure(path: str, env: dict, stdin: bytes, n: int) -> dict:
    one(path, env, stdin)                      # warm: page cache, __pycache__
    times, rss, codes = [], [], set()
    for _ in range(n):
        t, m, rc = one(path, env, stdin)
        times.append(t * 1000)
        rss.append(m)
        codes.add(rc)
    times.sort()
    return {"median": statistics.median(times), "p90": times[int(0.9 * (len(times) - 1))],
            "min": times[0], "rc": sorted(codes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=50, help="execs per row (default 50)")
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cni-") as d:
        installed = os.path.join(d, "is")
        inst.install(installed, plugins=("bridge",))
        mode = open(os.path.join(installed, "bridge")).readline().split()[1]
        variant = os.path.join(d, "i")
        os.makedirs(variant)
        with open(os.path.join(variant, "bridge"), "w") as f:
            f.write(inst.script_text("bridge", mode="-I"))
        os.chmod(os.path.join(variant, "bridge"), 0o755)
        rows = []
        if os.access(REFERENCE, os.X_OK):
            rows.append(("Go reference " + REFERENCE, REFERENCE))
        rows.append((f"ours, installed ({mode})", os.path.join(installed, "bridge")))
        rows.append(("ours, -I (site.py)", os.path.join(variant, "bridge")))
        cases = [("VERSION", {"CNI_COMMAND": "VERSION"}, b""),
                 ("ADD, env missing", {"CNI_COMMAND": "ADD"}, b"{}")]
        scale = busybox_scale()
        print(f"{'call':<17} {'executable':<38} {'median ms':>9} {'p90 ms':>7} "
              f"{'min ms':>7} {'peak RSS':>9}  exit")
        for label, env, stdin in cases:
            for name, path in rows:
                m = measure(path, env, stdin, opts.n)
                rss, note = peak_rss_kib(path, env, stdin, scale)
                print(f"{label:<17} {name:<38} {m['median']:9.1f} {m['p90']:7.1f} "
                      f"{m['min']:7.1f} {rss / 1024:7.1f}MB  {m['rc']}{note}")
        print(f"(N={opts.n} per row, {os.cpu_count()} CPUs, python {sys.version.split()[0]}; "
              f"RSS via {'busybox time, scale %s' % scale if scale else 'os.wait4'})")


if __name__ == "__main__":
    main()
