#!/usr/bin/env python3
"""Run every benchmark script (benchmarks/bench_*.py) one after the other.

Each script prints its own side-by-side table; this runner streams their
output, records it (with --out DIR: one NAME.txt per script plus summary.txt)
and ends with a summary of which scripts ran, how long they took and their
exit status. Scripts are found at run time, so benchmarks added by others
(bench_version.py, bench_ipam.py, bench_bandwidth.py, bench_netlab.py, ...)
run as soon as they exist.

    sudo .venv/bin/python benchmarks/run_all.py [--only chain,single] [--skip netlab]
                                                [--out DIR] [--timeout 1800]
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def scripts() -> list[str]:
    return sorted(glob.glob(os.path.join(HERE, "bench_*.py")))


def short(path: str) -> str:
    return os.path.basename(path)[len("bench_"):-len(".py")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated names (chain,single,...)")
    ap.add_argument("--skip", default="", help="comma-separated names to leave out")
    ap.add_argument("--out", default=None, help="directory for each script's output")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per script")
    ap.add_argument("--list", action="store_true", help="list the scripts and exit")
    a = ap.parse_args(argv)
    only = {x for x in a.only.split(",") if x}
    skip = {x for x in a.skip.split(",") if x}
    todo = [s for s in scripts() if (not only or short(s) in only) and short(s) not in skip]
    if a.list:
        print("\n".join(short(s) for s in todo))
        return 0
    if a.out:
        os.makedirs(a.out, exist_ok=True)
    summary = []
    for path in todo:
        name = short(path)
        banner = f"===== {name} ({os.path.relpath(path, os.path.dirname(HERE))}) ====="
        print(banner, flush=True)
        t0 = time.monotonic()
        lines: list[str] = []
        try:
            p = subprocess.Popen([sys.executable, path], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, cwd=os.path.dirname(HERE))
            deadline = t0 + a.timeout
            assert p.stdout is not None
            for line in p.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                lines.append(line)
                if time.monotonic() > deadline:
                    p.terminate()
                    lines.append(f"(terminated after {a.timeout:g}s)\n")
                    break
            rc = p.wait(timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            rc = -1
            lines.append(f"could not run: {e}\n")
        dt = time.monotonic() - t0
        summary.append((name, rc, dt))
        if a.out:
            with open(os.path.join(a.out, f"{name}.txt"), "w") as f:
                f.write(banner + "\n" + "".join(lines))
        print(flush=True)
    text = ["===== summary =====", *(f"{n:12} exit {rc:3}  {dt:7.1f}s" for n, rc, dt in summary)]
    print("\n".join(text))
    if a.out:
        with open(os.path.join(a.out, "summary.txt"), "w") as f:
            f.write("\n".join(text) + "\n")
    return 0 if all(rc == 0 for _, rc, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
