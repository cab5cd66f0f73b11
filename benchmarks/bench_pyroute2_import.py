#!/usr/bin/env python3
"""What pyroute2 costs a plugin process that does not use the agent: the
import of the parts our plugins use, and the first netlink socket and link
dump, each in a fresh ``python -IS`` (as our installed launchers start),
median of N runs, CPU time (user+system of the child) and wall time.

Rows:
  bare interpreter      python -IS -c pass (the floor)
  import pyroute2       ``from pyroute2 import IPRoute`` (the package __init__ as shipped)
  lean import           the same through the launcher's stand-in package
                        (cninode.launcher.lean_package: what our in-process path does)
  lean + IPRoute()      lean import, open a socket, dump the links once

By default it measures the pyroute2 installed with this interpreter. With
``--target DIR`` (repeatable) it measures the pyroute2 found in each DIR
instead (e.g. versions installed with ``pip install --no-deps --target DIR
pyroute2==X``), side by side in one run, rows alternated.

    .venv/bin/python benchmarks/bench_pyroute2_import.py [-n 15] [--target DIR ...]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = {
    "bare interpreter": "pass",
    "import pyroute2": "from pyroute2 import IPRoute\nfrom pyroute2.netlink.exceptions import NetlinkError",
    "lean import": ("from cninode.launcher import lean_package\n"
                    "lean_package('pyroute2'); lean_package('unittest')\n"
                    "from pyroute2 import IPRoute\nfrom pyroute2.netlink.exceptions import NetlinkError"),
    "lean + IPRoute()": ("from cninode.launcher import lean_package\n"
                         "lean_package('pyroute2'); lean_package('unittest')\n"
                         "from pyroute2 import IPRoute\nfrom pyroute2.netlink.exceptions import NetlinkError\n"
                         "ipr = IPRoute(); ipr.get_links(); ipr.close()"),
}

PROBE = r"""
import sys, time
sys.path[:0] = {paths!r}
t0 = time.perf_counter()
{body}
t1 = time.perf_counter()
import json
print(json.dumps({{"body_ms": (t1 - t0) * 1000, "modules": len(sys.modules)}}))
"""


def version_of(target: str | None) -> str:
    """pyroute2's distribution and version in ``target`` (None: the installed one)."""
    if target is None:
        from importlib.metadata import version
        return f"pyroute2-{version('pyroute2')} (installed)"
    infos = [d for d in os.listdir(target) if d.endswith(".dist-info")]
    return infos[0][:-len(".dist-info")] if infos else os.path.basename(target)


def site_paths() -> list[str]:
    return [p for p in sys.path if p.endswith("-packages")]


def one(case: str, target: str | None) -> dict:
    paths = [ROOT] + ([target] if target else []) + site_paths()
    code = PROBE.format(paths=paths, body=CASES[case])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True,
                       timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"{case} ({target or 'installed'}): {p.stderr.strip()[-300:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["cpu_ms"] = 1000 * ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=15)
    ap.add_argument("--target", action="append", default=[],
                    help="a directory holding a pyroute2 to measure instead of the installed one")
    a = ap.parse_args(argv)
    targets = a.target or [None]
    res: dict = {}
    for i in range(a.n):
        for t in (targets if i % 2 == 0 else list(reversed(targets))):
            for case in CASES:
                if case == "bare interpreter" and t is not targets[0]:
                    continue
                r = one(case, t)
                k = (t, case)
                res.setdefault(k, {"cpu": [], "body": [], "modules": r["modules"],
                                   "version": version_of(t)})
                res[k]["cpu"].append(r["cpu_ms"])
                res[k]["body"].append(r["body_ms"])
    print(f"pyroute2 import cost in a fresh `python -IS` (Python {sys.version.split()[0]}), "
          f"medians of {a.n} runs, versions alternated")
    print(f"{'pyroute2':24} {'case':20} {'process CPU ms':>14} {'import ms':>10} {'modules':>8}")
    floor = statistics.median(res[(targets[0], 'bare interpreter')]["cpu"])
    for t in targets:
        for case in CASES:
            k = (t, case)
            if k not in res:
                continue
            r = res[k]
            name = "-" if case == "bare interpreter" else r["version"]
            print(f"{name:24} {case:20} {statistics.median(r['cpu']):14.1f} "
                  f"{statistics.median(r['body']):10.1f} {r['modules']:8d}")
    print(f"(process CPU: user+system of the whole child; the bare interpreter's {floor:.1f} ms is in every row)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
