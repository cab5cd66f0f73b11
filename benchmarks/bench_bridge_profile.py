#!/usr/bin/env python3
"""Where one bridge ADD's time goes, warm (as the agent runs it) and cold (exec'd, no agent).

Everything runs in throwaway namespaces made here (a node and one pod per
ADD), with a tmp host-local ``dataDir``; the conflist is the lab's bridge
(isGateway, isDefaultGateway, hairpinMode, mtu 1500, host-local).

1. **warm**: N ADDs (then N DELs, not counted) in this process, on a thread
   in the node namespace, through ``skel.dispatch`` as the agent does; timers
   around every netlink request kind (pyroute2 through ``plugins.net.link``,
   the stdlib socket of ``plugins.net.netlink.rtnl``), sysctl writes, IPAM,
   namespace switches. Exclusive ms per ADD, the rest is Python.
2. **cold**: our installed ``bridge`` executable exec'd with the agent off,
   N ADD+DEL pairs: median wall ms and CPU ms (user+system of the process) of
   the ADD; then one ADD under ``python -X importtime`` (the top imports by
   cumulative time, and whether pyroute2 / nftables were loaded).

``--baseline DIR`` runs the same measurements on the code tree in DIR (e.g.
``git archive COMMIT | tar -x -C DIR``) in a child process, alternated with
this tree's, ``--rounds`` times; the summary shows medians per tree.

    sudo .venv/bin/python benchmarks/bench_bridge_profile.py [-n 20] [--baseline DIR] [--rounds 3]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _tree_from_argv() -> str:
    if "--tree" in sys.argv:
        return os.path.abspath(sys.argv[sys.argv.index("--tree") + 1])
    return os.path.dirname(HERE)


TREE = _tree_from_argv()
sys.path.insert(0, TREE)


def conf(data_dir: str) -> dict:
    return {"cniVersion": "1.0.0", "name": "podnet", "type": "bridge", "bridge": "cni0",
            "isGateway": True, "isDefaultGateway": True, "hairpinMode": True, "mtu": 1500,
            "ipam": {"type": "host-local", "dataDir": data_dir,
                     "ranges": [[{"subnet": "10.241.0.0/16"}]]}}


class Timers:
    """Exclusive seconds per category: only the outermost timed call on a thread counts."""

    def __init__(self) -> None:
        self.secs: dict[str, float] = collections.defaultdict(float)
        self.count: dict[str, int] = collections.Counter()
        self.local = threading.local()
        self.undo: list = []
        self.on = False

    def wrap(self, owner, attr: str, cat: str) -> None:
        if not hasattr(owner, attr):
            return
        orig = getattr(owner, attr)
        t = self

        def timed(*a, **kw):
            if not t.on or getattr(t.local, "busy", False):
                return orig(*a, **kw)
            t.local.busy = True
            t0 = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                t.secs[cat] += time.perf_counter() - t0
                t.count[cat] += 1
                t.local.busy = False
        setattr(owner, attr, timed)
        self.undo.append((owner, attr, orig))

    def restore(self) -> None:
        for owner, attr, orig in reversed(self.undo):
            setattr(owner, attr, orig)
        self.undo.clear()


def _env(command: str, cid: str, netns: str, bin_dir: str) -> dict:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
            "CNI_IFNAME": "eth0", "CNI_PATH": bin_dir, "CNILAB_AGENT": "off",
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def warm(n: int, work: str) -> dict:
    from netlab.base import namespaces as nsutil
    from plugins import bridge
    from plugins.core import netns as cns, skel
    from plugins.net import attach, link, sysctl
    try:
        from plugins.net.netlink import rtnl
    except ImportError:         # a tree before ADR 0036
        rtnl = None
    tag = f"bp{os.getpid() % 100000}"
    made: list[str] = []
    t = Timers()
    res: dict = {}
    try:
        for name in ["n"] + [f"p{i}" for i in range(n + 1)]:
            nsutil.create(f"{tag}{name}")
            made.append(f"{tag}{name}")
        c = json.dumps(conf(os.path.join(work, "ipam-warm"))).encode()
        node = nsutil.path(f"{tag}n")
        for fn in ("open_iproute", "get_link", "ensure_bridge", "add_veth", "set_link",
                   "set_brport", "add_addr", "add_route", "list_addrs", "settle_addrs",
                   "pin_mac", "wait_operstate_up", "delete_link", "_nl_call"):
            t.wrap(link, fn, f"netlink via pyroute2: {fn}" if fn != "_nl_call"
                   else "netlink stdlib (link._nl_call)")
        if rtnl is not None:
            t.wrap(rtnl, "Rtnl", "netlink stdlib: open socket")
            for fn in ("get_link", "ensure_bridge", "add_veth", "set_link", "set_brport",
                       "add_addr", "add_route", "list_addrs", "settle_addrs", "pin_mac",
                       "wait_operstate_up"):
                t.wrap(rtnl, fn, f"netlink stdlib: {fn}")
        t.wrap(sysctl, "ensure", "sysctl writes (/proc/sys)")
        t.wrap(bridge, "delegate_add", "IPAM host-local (in-process)")
        t.wrap(attach, "_pod_link", "pod side: read the pod end")
        t.wrap(cns, "open_netns", "namespace fds")

        def run() -> None:
            with cns.entered(node):
                out, rc = skel.dispatch("bridge", _env("ADD", "w0", nsutil.path(f"{tag}p0"), "/nonexistent"), c)
                assert rc == 0, out
                times = []
                t.on = True
                for i in range(1, n + 1):
                    t0 = time.perf_counter()
                    out, rc = skel.dispatch("bridge", _env("ADD", f"w{i}",
                                                           nsutil.path(f"{tag}p{i}"), "/nonexistent"), c)
                    times.append(time.perf_counter() - t0)
                    if rc != 0:
                        raise RuntimeError(out)
                t.on = False
                for i in range(n + 1):
                    skel.dispatch("bridge", _env("DEL", f"w{i}", nsutil.path(f"{tag}p{i}"), "/nonexistent"), c)
                res["times"] = times
        th = threading.Thread(target=run)
        th.start()
        th.join()
    finally:
        t.restore()
        for ns in reversed(made):
            nsutil.delete(ns)
    if "times" not in res:
        raise RuntimeError("warm run failed")
    total = sum(res["times"])
    cats = {k: (t.count[k] / n, 1000 * v / n) for k, v in t.secs.items()}
    cats["python (config, result, undo: the rest)"] = (
        0, 1000 * (total - sum(t.secs.values())) / n)
    return {"median_ms": 1000 * statistics.median(res["times"]), "mean_ms": 1000 * total / n,
            "cats": cats}


def cold(n: int, work: str) -> dict:
    from cninode.install import install
    from netlab.base import namespaces as nsutil
    from plugins.core import netns as cns
    bin_dir = os.path.join(work, "bin")
    install(bin_dir)
    tag = f"bc{os.getpid() % 100000}"
    made = []
    walls, cpus = [], []
    try:
        for name in ("n", "p"):
            nsutil.create(f"{tag}{name}")
            made.append(f"{tag}{name}")
        node, pod = nsutil.path(f"{tag}n"), nsutil.path(f"{tag}p")
        c = json.dumps(conf(os.path.join(work, "ipam-cold"))).encode()
        exe = os.path.join(bin_dir, "bridge")

        def call(cmd: str, cid: str, argv: list[str]) -> tuple[int, bytes, bytes, float]:
            with cns.entered(node):          # the child starts in the node namespace
                t0 = time.perf_counter()
                p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=_env(cmd, cid, pod, bin_dir),
                                     cwd="/")
            out, err = p.communicate(c, timeout=120)       # reaps the child
            return p.returncode, out, err, time.perf_counter() - t0

        call("ADD", "c0", [exe])              # bridge, page cache
        call("DEL", "c0", [exe])
        for i in range(1, n + 1):
            before = os.times()
            rc, out, _, dt = call("ADD", f"c{i}", [exe])
            after = os.times()
            if rc != 0:
                raise RuntimeError(out.decode())
            walls.append(dt)
            cpus.append((after.children_user - before.children_user)
                        + (after.children_system - before.children_system))
            call("DEL", f"c{i}", [exe])
        with open(exe) as f:
            shebang = f.readline()[2:].split()
        rc, out, err, _ = call("ADD", "imp", [shebang[0], *shebang[1:], "-X", "importtime", exe])
        call("DEL", "imp", [exe])
        rows = []
        for line in err.decode().splitlines():
            if line.startswith("import time:") and "|" in line:
                parts = line[len("import time:"):].split("|")
                try:
                    rows.append((int(parts[1]), parts[2].rstrip()))
                except ValueError:
                    pass
        names = {r[1].strip() for r in rows}
        heavy = sorted({nm.split(".")[0] for nm in names} & {"pyroute2", "nftables", "asyncio",
                                                             "subprocess", "scapy"})
        top = sorted(rows, reverse=True)[:15]
    finally:
        for ns in reversed(made):
            nsutil.delete(ns)
    return {"wall_ms": 1000 * statistics.median(walls), "cpu_ms": 1000 * statistics.median(cpus),
            "modules": len(rows), "heavy": heavy, "top": top}


def report(tree: str, w: dict, c: dict) -> str:
    lines = [f"tree {tree}",
             f"  warm bridge ADD (in-process, as in the agent): median {w['median_ms']:.1f} ms, "
             f"mean {w['mean_ms']:.1f} ms",
             f"    {'category':52} {'calls':>6} {'ms/ADD':>7}"]
    for k, (calls, ms) in sorted(w["cats"].items(), key=lambda kv: -kv[1][1]):
        lines.append(f"    {k:52} {calls:6.1f} {ms:7.2f}")
    lines.append(f"  cold bridge ADD (exec'd launcher, agent off): median wall {c['wall_ms']:.1f} ms, "
                 f"CPU {c['cpu_ms']:.1f} ms; {c['modules']} modules imported; heavy: "
                 f"{', '.join(c['heavy']) or 'none'}")
    lines.append("    top imports by cumulative us (python -X importtime, one ADD):")
    for us, name in c["top"]:
        lines.append(f"      {us:8d}  {name}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20, help="ADDs per measurement (default 20)")
    ap.add_argument("--baseline", default=None, metavar="DIR", help="another code tree to compare")
    ap.add_argument("--rounds", type=int, default=3, help="alternations with --baseline")
    ap.add_argument("--tree", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_bridge_profile: needs root (creates throwaway namespaces)", file=sys.stderr)
        return 2
    if a.baseline is None or a.tree:
        with tempfile.TemporaryDirectory(prefix="bench-brprof-") as work:
            w = warm(a.n, work)
            c = cold(max(3, a.n // 2), work)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"warm": w, "cold": c}, f)
        else:
            print(f"bench_bridge_profile: load average {os.getloadavg()[0]:.1f}")
            print(report(TREE, w, c))
        return 0
    trees = {"baseline": os.path.abspath(a.baseline), "this tree": os.path.dirname(HERE)}
    got: dict[str, list[dict]] = {k: [] for k in trees}
    with tempfile.TemporaryDirectory(prefix="bench-brprof-") as work:
        for r in range(a.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for label in order:
                out = os.path.join(work, f"{label}-{r}.json")
                subprocess.run([sys.executable, os.path.abspath(__file__), "-n", str(a.n),
                                "--tree", trees[label], "--json", out], check=True,
                               cwd=trees[label])
                with open(out) as f:
                    got[label].append(json.load(f))
    print(f"bench_bridge_profile: {a.rounds} rounds, trees alternated, medians; "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"{'tree':10} {'warm ADD ms':>12} {'cold ADD ms':>12} {'cold CPU ms':>12}  heavy imports")
    for label, runs in got.items():
        med = lambda f: statistics.median(f(x) for x in runs)  # noqa: E731
        print(f"{label:10} {med(lambda x: x['warm']['median_ms']):12.1f} "
              f"{med(lambda x: x['cold']['wall_ms']):12.1f} {med(lambda x: x['cold']['cpu_ms']):12.1f}"
              f"  {', '.join(runs[-1]['cold']['heavy']) or 'none'}")
    for label, runs in got.items():
        last = runs[-1]
        print()
        print(report(f"{label} ({trees[label]}), last round", last["warm"], last["cold"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
