#!/usr/bin/env python3
"""netlab at scale: 2 nodes x 50 pods (bridge network, our plugins and the Go
reference plugins), timed for `up`, `verify` of a reach sample and `down`;
side by side with mininet building 100 hosts on one Linux bridge (Debian
package ``mininet``), when it is installed.

Everything runs in namespaces created here; mininet runs inside a throwaway
namespace of its own (``ip netns exec``), so its "root" switch never touches
the machine's root namespace, and its resource-limit tweaks (global sysctls)
are skipped. Run as root:  .venv/bin/python benchmarks/bench_netlab.py [--pods 50]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from netlab.base import namespaces as nsutil  # noqa: E402


def topology(name: str, pods_per_node: int, nodes: int, sample: int, seed: int = 1) -> str:
    lines = [f"name: {name}", "underlay: {subnet: 192.168.200.0/24}", "nodes:"]
    lines += [f"  node{i + 1}: {{}}" for i in range(nodes)]
    lines += ["networks:", "  podnet: {type: bridge, subnet: 10.240.0.0/16, nodePrefix: 24}", "pods:"]
    pods = [f"p{n + 1}x{i}" for n in range(nodes) for i in range(pods_per_node)]
    for n in range(nodes):
        for i in range(pods_per_node):
            lines.append(f"  p{n + 1}x{i}: {{node: node{n + 1}, network: podnet}}")
    rnd = random.Random(seed)
    lines.append("checks:")
    for _ in range(sample):
        a, b = rnd.sample(pods, 2)
        lines.append(f"  - {{type: reach, from: {a}, to: {b}}}")
    return "\n".join(lines) + "\n"


def timed(argv: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    return time.monotonic() - t0, p


def bench_netlab(plugins: str, pods: int, nodes: int, sample: int, workdir: str,
                 repo: str = REPO, label: str = "") -> dict:
    name = f"bench-{(label or plugins)[:3]}{os.getpid() % 1000}"
    f = os.path.join(workdir, f"{name}.yaml")
    with open(f, "w") as fh:
        fh.write(topology(name, pods, nodes, sample))
    lab_dir = os.path.join(workdir, name)
    py = [sys.executable, "-m", "netlab"]
    up_s, up = timed(py + ["up", f, "--lab-dir", lab_dir, "--no-checks", "-q", "--plugins", plugins], cwd=repo)
    out: dict = {"what": f"netlab ({label or plugins + ' plugins'})", "hosts": pods * nodes}
    try:
        if up.returncode != 0:
            out["error"] = up.stderr[-500:]
            return out
        st = json.load(open(os.path.join(lab_dir, "state.json")))
        attach = [r["seconds"] for r in st["resources"] if r["kind"] == "attach" and "seconds" in r]
        out["up"] = up_s
        out["timings"] = st.get("timings", {})
        out["attach_mean"] = sum(attach) / len(attach) if attach else None
        v_s, v = timed(py + ["verify", "--lab-dir", lab_dir, "--json"], cwd=repo)
        rep = json.loads(v.stdout) if v.stdout.strip().startswith("{") else {"checks": []}
        out["verify"] = v_s
        out["verify_ok"] = f"{sum(c['ok'] for c in rep['checks'])}/{len(rep['checks'])}"
    finally:
        down_s, down = timed(py + ["down", "--lab-dir", lab_dir], cwd=repo)
        out["down"] = down_s
        if down.returncode != 0:
            out["error"] = down.stderr[-500:]
    return out


MININET_SCRIPT = r"""
import json, random, sys, time
from mininet.net import Mininet
from mininet.node import Switch
from mininet.topo import SingleSwitchTopo
from mininet.log import setLogLevel

class IPBridge(Switch):
    "A Linux bridge driven with ip(8) (mininet's LinuxBridge needs brctl)."
    def start(self, controllers):
        self.cmd('ip link add name', self, 'type bridge')
        for i in self.intfList():
            if self.name in i.name:
                self.cmd('ip link set', i, 'master', self)
        self.cmd('ip link set', self, 'up')
    def stop(self, deleteIntfs=True):
        self.cmd('ip link del', self)
        super().stop(deleteIntfs)
    def connected(self):
        return True

n, sample = int(sys.argv[1]), int(sys.argv[2])
setLogLevel('error')
Mininet.inited = True          # skip fixLimits(): it raises machine-wide sysctls
t0 = time.monotonic()
net = Mininet(topo=SingleSwitchTopo(n), switch=IPBridge, controller=None, autoSetMacs=True,
              waitConnected=False)
net.start()
t1 = time.monotonic()
rnd = random.Random(1)
ok = 0
for _ in range(sample):
    a, b = rnd.sample(net.hosts, 2)
    out = a.cmd('ping -c1 -W2', b.IP())
    ok += ' 0% packet loss' in out
t2 = time.monotonic()
net.stop()
t3 = time.monotonic()
print(json.dumps({"up": t1 - t0, "verify": t2 - t1, "down": t3 - t2, "verify_ok": f"{ok}/{sample}"}))
"""


def bench_mininet(hosts: int, sample: int) -> dict:
    out: dict = {"what": "mininet (1 Linux bridge)", "hosts": hosts}
    if not os.path.exists("/usr/lib/python3/dist-packages/mininet/net.py") or not shutil.which("mnexec"):
        out["error"] = "mininet is not installed (apt-get install --no-install-recommends mininet)"
        return out
    ns = f"nl-bench-mn{os.getpid() % 10000}"
    nsutil.create(ns)
    try:
        p = subprocess.run(["ip", "netns", "exec", ns, "/usr/bin/python3", "-c", MININET_SCRIPT, str(hosts), str(sample)],
                           capture_output=True, text=True, timeout=600)
        try:
            out.update(json.loads(p.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            out["error"] = (p.stderr or p.stdout)[-500:]
    finally:
        nsutil.delete(ns)
    return out


def median_row(rs: list[dict]) -> dict:
    """The run with the median ``up`` time, with up/verify/down each the median of the runs."""
    ok = [r for r in rs if "up" in r] or rs
    out = dict(sorted(ok, key=lambda r: r.get("up", 0))[len(ok) // 2])
    for k in ("up", "verify", "down"):
        xs = sorted(r[k] for r in ok if isinstance(r.get(k), (int, float)))
        if xs:
            out[k] = xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2
    errs = [r["error"] for r in rs if r.get("error")]
    if errs:
        out["error"] = f"{len(errs)} of {len(rs)} run(s) failed: {errs[0]}"
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=50, help="pods per node")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--sample", type=int, default=10, help="reach checks in the verify sample")
    ap.add_argument("--skip", action="append", default=[], choices=("ours", "reference", "mininet"))
    ap.add_argument("--repeat", type=int, default=3, help="runs of each variant (medians are shown)")
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="also run our plugins with the code tree in DIR (e.g. `git archive` of an "
                         "older commit), for before/after in one run")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (namespaces)", file=sys.stderr)
        return 1
    variants = [v for v in ("ours", "reference", "mininet") if v not in a.skip]
    if a.baseline:
        variants.insert(1, "baseline")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="bench-netlab-") as work:
        for i in range(a.repeat):           # the order rotates, so none always goes first
            for v in variants[i % len(variants):] + variants[:i % len(variants)]:
                if v == "mininet":
                    r = bench_mininet(a.pods * a.nodes, a.sample)
                elif v == "baseline":
                    r = bench_netlab("ours", a.pods, a.nodes, a.sample, work, repo=os.path.abspath(a.baseline),
                                     label="ours, baseline tree")
                else:
                    r = bench_netlab(v, a.pods, a.nodes, a.sample, work)
                runs[v].append(r)
                print(json.dumps(r), file=sys.stderr)
    rows = [median_row(runs[v]) for v in variants]
    print(f"netlab at scale: {a.nodes} nodes x {a.pods} pods, medians of {a.repeat} run(s), variants alternated")
    def f(v):
        return f"{v:7.2f}s" if isinstance(v, (int, float)) else f"{'-':>8}"
    mn = next((r for r in rows if r["what"].startswith("mininet") and "up" in r), None)

    def ratio(r, k):
        if mn is None or not isinstance(r.get(k), (int, float)) or not mn.get(k):
            return f"{'-':>7}"
        return f"{r[k] / mn[k]:6.2f}x"
    print(f"\n{'':28} {'hosts':>5} {'up':>8} {'verify':>8} {'down':>8}  sample  {'up/mn':>7} {'down/mn':>7}  per-pod attach")
    for r in rows:
        per = f"{r['attach_mean'] * 1000:6.0f} ms" if r.get("attach_mean") else ""
        print(f"{r['what']:28} {r['hosts']:>5} {f(r.get('up'))} {f(r.get('verify'))} {f(r.get('down'))}  "
              f"{r.get('verify_ok', '-'):>6}  {ratio(r, 'up')} {ratio(r, 'down')}  {per}")
        if r.get("error"):
            print(f"    error: {r['error'].strip()[:300]}")
        if r.get("timings"):
            print("    up breakdown: " + ", ".join(f"{k} {v:.2f}s" for k, v in sorted(r["timings"].items(), key=lambda kv: -kv[1]) if v >= 0.005))
    print("(up/mn, down/mn: the ratio to mininet's time in this run; up is `netlab up --no-checks`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
