#!/usr/bin/env python3
"""`netlab up` of topologies/containerd.yaml against the same lab with node1 on
netlab's own runtime, side by side (ADR 0025).

The two variants differ only in ``runtime: containerd`` on node1: with it,
node1's pods are CRI sandboxes (a private containerd started in node1, the
offline pause image imported, RunPodSandbox per pod, runc and a shim per
sandbox); without it, netlab runs the same plugins on them itself. Runs
alternate (A, B, A, B, ...) so the machine's noise hits both alike; each is
`up --no-checks` then `down`. Reported: median wall time of `up` and `down`,
netlab's own build-phase timings (containerd start, pod attach), the ratio.

    sudo .venv/bin/python benchmarks/bench_containerd_lab.py [-n 5] [--plugins ours|reference] [--json f]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPO = os.path.join(REPO, "topologies", "containerd.yaml")


def variants(workdir: str) -> dict[str, str]:
    text = open(TOPO).read()
    plain = text.replace("node1: {runtime: containerd}", "node1: {}")
    if plain == text:
        raise SystemExit("bench_containerd_lab: topologies/containerd.yaml has no "
                         "'node1: {runtime: containerd}' line")
    out = {"containerd": TOPO, "netlab": os.path.join(workdir, "containerd-on-netlab.yaml")}
    with open(out["netlab"], "w") as f:
        f.write(plain)
    return out


def once(kind: str, path: str, workdir: str, i: int, plugins: str) -> dict:
    name = f"bctd{kind[0]}{os.getpid() % 1000}{i}"
    lab_dir = os.path.join(workdir, name)
    py = [sys.executable, "-m", "netlab"]
    t0 = time.monotonic()
    up = subprocess.run(py + ["up", path, "--name", name, "--lab-dir", lab_dir, "--no-checks", "-q",
                              "--plugins", plugins], capture_output=True, text=True, cwd=REPO)
    up_s = time.monotonic() - t0
    out = {"up": up_s}
    try:
        if up.returncode != 0:
            out["error"] = (up.stderr or up.stdout)[-800:]
            return out
        st = json.load(open(os.path.join(lab_dir, "state.json")))
        out["timings"] = st.get("timings", {})
        out["sandbox"] = [r["seconds"] for r in st["resources"]
                          if r["kind"] == "attach" and r.get("runtime") == "containerd"]
    finally:
        t1 = time.monotonic()
        down = subprocess.run(py + ["down", "--lab-dir", lab_dir], capture_output=True, text=True, cwd=REPO)
        out["down"] = time.monotonic() - t1
        if down.returncode != 0:
            out["error"] = (down.stderr or down.stdout)[-800:]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5, help="runs per variant (default 5)")
    ap.add_argument("--plugins", default="ours", choices=("ours", "reference"))
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_containerd_lab: needs root (netlab up)", file=sys.stderr)
        return 2
    missing = [x for x in ("containerd", "ctr", "runc", "nsenter") if shutil.which(x) is None]
    if missing:
        print(f"bench_containerd_lab: missing {', '.join(missing)} (make setup installs containerd)",
              file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="bctd-")
    try:
        paths = variants(workdir)
        runs: dict[str, list[dict]] = {k: [] for k in paths}
        for i in range(a.n):
            for kind, path in paths.items():
                r = once(kind, path, workdir, i, a.plugins)
                if "error" in r:
                    print(f"bench_containerd_lab: {kind} run {i} failed: {r['error']}", file=sys.stderr)
                    return 1
                runs[kind].append(r)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    med = {k: {"up": statistics.median(x["up"] for x in v), "down": statistics.median(x["down"] for x in v),
               "containerd": statistics.median(x["timings"].get("containerd", 0.0) for x in v),
               "attach": statistics.median(x["timings"].get("attach", 0.0) for x in v),
               "sandbox": statistics.median(s for x in v for s in x["sandbox"]) if v[0]["sandbox"] else None}
           for k, v in runs.items()}
    c, n = med["containerd"], med["netlab"]
    print(f"bench_containerd_lab: topologies/containerd.yaml, {a.n} runs each, {a.plugins} plugins, "
          "median seconds")
    print(f"{'node1 runtime':<14} {'up':>7} {'down':>7} {'containerd start':>17} {'pods attached':>14}")
    for k in ("netlab", "containerd"):
        m = med[k]
        print(f"{k:<14} {m['up']:>7.2f} {m['down']:>7.2f} {m['containerd']:>17.2f} {m['attach']:>14.2f}")
    print(f"up: containerd / netlab = {c['up'] / n['up']:.2f}x; one RunPodSandbox (median) "
          f"{c['sandbox']:.2f}s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"runs": runs, "median": med, "plugins": a.plugins}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
