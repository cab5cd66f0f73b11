#!/usr/bin/env python3
"""Where each pod's time goes in ``netlab up --no-checks`` and ``netlab down``
(2 nodes x 50 pods, our plugins with the lab's agent, the topology of
bench_netlab.py), as a breakdown per category.

Three measurements, all in throwaway namespaces made here:

1. ``up`` and ``down`` run in this process (``netlab.cli.main``) with timers
   wrapped around the functions that do each kind of work: namespace
   creation and deletion, /etc/netns files, the state file, plugin execs (per
   plugin and command), the offload switch, the agent's start, process stops,
   sleeps, other subprocesses. Time is *thread-seconds* (work on parallel
   threads adds up, so a column can exceed the wall time) and exclusive (a
   category nested in another is not counted twice). The agent's own log
   gives the time each call spent inside the agent; the rest of a plugin
   exec is the launcher's process and the round trip.
2. Inside the agent: the same conflist's ADD and DEL chains run warm, in
   this process, the way the agent runs them (a thread in the node
   namespace, ``skel.dispatch``), with timers around every netlink request
   (pyroute2 and the stdlib rtnetlink helpers), every nftables transaction and
   every sleep/poll.

    sudo .venv/bin/python benchmarks/bench_netlab_profile.py [--pods 50] [--warm 10]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import bench_netlab  # noqa: E402


class Probe:
    """Exclusive thread-seconds per category (a nested category's time is
    taken out of its parent's)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.secs: dict[str, float] = collections.defaultdict(float)
        self.count: dict[str, int] = collections.defaultdict(int)
        self.local = threading.local()
        self.undo: list = []

    def _stack(self) -> list:
        st = getattr(self.local, "stack", None)
        if st is None:
            st = self.local.stack = []
        return st

    def wrap(self, owner, attr: str, category, *, outermost_only: bool = False) -> None:
        orig = getattr(owner, attr)
        probe = self

        def timed(*a, **kw):
            stack = probe._stack()
            if outermost_only and stack:
                return orig(*a, **kw)
            cat = category(*a, **kw) if callable(category) else category
            frame = [cat, 0.0]          # [category, time of nested categories]
            stack.append(frame)
            t0 = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                dt = time.perf_counter() - t0
                stack.pop()
                if stack:
                    stack[-1][1] += dt
                with probe.lock:
                    probe.secs[cat] += dt - frame[1]
                    probe.count[cat] += 1
        timed.__wrapped__ = orig
        setattr(owner, attr, timed)
        self.undo.append((owner, attr, orig))

    def restore(self) -> None:
        for owner, attr, orig in reversed(self.undo):
            setattr(owner, attr, orig)
        self.undo.clear()

    def reset(self) -> None:
        self.secs.clear()
        self.count.clear()


def wrap_parent(probe: Probe) -> None:
    import subprocess

    from cniruntime import runtime
    from netlab.base import namespaces as netns, state
    from netlab.lab import build
    probe.wrap(netns, "create", "namespace creation")
    probe.wrap(netns, "delete", "namespace deletion")
    probe.wrap(build.Builder, "do_etcnetns", "/etc/netns files")
    probe.wrap(state.State, "save", "state file writes")
    probe.wrap(runtime.Runtime, "_exec",
               lambda self, plugin, command, *a, **kw: f"plugin exec: {plugin} {command}")
    probe.wrap(build, "tx_offload_off", "offload off (tx checksums)")
    probe.wrap(build, "start_lab_agent", "agent start (incl. its warm-up wait)")
    probe.wrap(build, "prepare_plugins", "plugin install")
    probe.wrap(state, "kill_recorded", "process stops")
    probe.wrap(time, "sleep", "sleeps")
    probe.wrap(subprocess, "run", "other subprocesses", outermost_only=True)


AGENT_LINE = re.compile(r"(\S+) (ADD|DEL|CHECK) \S+ rc=-?\d+ ([0-9.]+)ms")


def agent_times(lab_dir: str) -> dict[str, tuple[float, int]]:
    out: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    try:
        with open(os.path.join(lab_dir, "agent.log"), encoding="utf-8", errors="replace") as f:
            for line in f:
                m = AGENT_LINE.search(line)
                if m:
                    k = f"{m.group(1)} {m.group(2)}"
                    out[k][0] += float(m.group(3)) / 1000
                    out[k][1] += 1
    except OSError:
        pass
    return {k: (v[0], v[1]) for k, v in out.items()}


def run_cli(argv: list[str]) -> int:
    from netlab.cli.main import main
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            main(argv)
            rc = 0
        except SystemExit as e:
            rc = int(e.code or 0)
    return rc


def breakdown(probe: Probe, wall: float, pods: int, agent: dict, title: str) -> list[str]:
    lines = [f"{title}: wall {wall:.2f}s = {1000 * wall / pods:.1f} ms per pod "
             f"({pods} pods; thread-seconds below add up over parallel threads)",
             f"  {'category':44} {'calls':>6} {'thread-s':>9} {'ms/pod':>8}"]
    rows = sorted(probe.secs.items(), key=lambda kv: -kv[1])
    for cat, s in rows:
        lines.append(f"  {cat:44} {probe.count[cat]:>6} {s:9.2f} {1000 * s / pods:8.1f}")
        if cat.startswith("plugin exec: "):
            k = cat[len("plugin exec: "):]
            if k in agent:
                a, n = agent[k]
                lines.append(f"    {'inside the agent (netlink, nft, python)':42} {n:>6} {a:9.2f} {1000 * a / pods:8.1f}")
                lines.append(f"    {'launcher process + agent round trip':42} {'':>6} {s - a:9.2f} "
                             f"{1000 * (s - a) / pods:8.1f}")
    total = sum(probe.secs.values())
    lines.append(f"  {'(sum of the categories)':44} {'':>6} {total:9.2f} {1000 * total / pods:8.1f}")
    return lines


def profile_lab(pods: int, nodes: int, workdir: str) -> tuple[list[str], dict]:
    name = f"prof{os.getpid() % 1000}"
    f = os.path.join(workdir, f"{name}.yaml")
    with open(f, "w") as fh:
        fh.write(bench_netlab.topology(name, pods, nodes, 0))
    lab_dir = os.path.join(workdir, name)
    probe = Probe()
    wrap_parent(probe)
    out: list[str] = []
    fig: dict = {}
    total = pods * nodes
    try:
        t0 = time.perf_counter()
        rc = run_cli(["up", f, "--lab-dir", lab_dir, "--no-checks", "-q"])
        up = time.perf_counter() - t0
        if rc != 0:
            out.append(f"netlab up failed (exit {rc})")
        st = json.load(open(os.path.join(lab_dir, "state.json")))
        agent = agent_times(lab_dir)
        out += breakdown(probe, up, total, agent, "netlab up --no-checks")
        out.append("  phases (wall): " + ", ".join(
            f"{k} {v:.2f}s" for k, v in sorted(st.get("timings", {}).items(), key=lambda kv: -kv[1]) if v >= 0.01))
        fig["up"] = {"wall": up, "secs": dict(probe.secs), "count": dict(probe.count)}
        probe.reset()
        t0 = time.perf_counter()
        rc = run_cli(["down", "--lab-dir", lab_dir])
        down = time.perf_counter() - t0
        if rc != 0:
            out.append(f"netlab down failed (exit {rc})")
        agent_down = {k: (v[0] - agent.get(k, (0, 0))[0], v[1] - agent.get(k, (0, 0))[1])
                      for k, v in agent_times(lab_dir).items()} if os.path.isdir(lab_dir) else {}
        out += [""] + breakdown(probe, down, total, agent_down, "netlab down")
        fig["down"] = {"wall": down, "secs": dict(probe.secs), "count": dict(probe.count)}
    finally:
        probe.restore()
        if os.path.exists(os.path.join(lab_dir, "state.json")):
            run_cli(["down", "--lab-dir", lab_dir])
    return out, fig


# ---- inside the agent ----------------------------------------------------------

def wrap_agent_side(probe: Probe) -> None:
    from plugins.net import link, nft
    if hasattr(link, "_nl_call"):
        probe.wrap(link, "_nl_call", "netlink (stdlib rtnetlink)")
    try:        # the bridge ADD's stdlib rtnetlink (ADR 0036)
        from plugins.net.netlink import rtnl
        kinds = {rtnl.RTM_NEWLINK: "link add/set", rtnl.RTM_GETLINK: "link get",
                 rtnl.RTM_DELLINK: "link del", rtnl.RTM_NEWADDR: "addr add",
                 rtnl.RTM_GETADDR: "addr dump", rtnl.RTM_NEWROUTE: "route add"}
        probe.wrap(rtnl.Rtnl, "request", lambda self, mtype, *a, **kw:
                   f"netlink stdlib: {kinds.get(mtype, mtype)}")
        probe.wrap(rtnl.Rtnl, "__init__", "netlink stdlib: open socket")
    except ImportError:
        pass
    try:        # link deletions (ADR 0039: in the agent they return once unlisted)
        from plugins.net.netlink import wire
        if hasattr(wire, "delete_link_index"):
            probe.wrap(wire, "delete_link_index", "netlink stdlib: link delete")
    except ImportError:
        pass
    probe.wrap(link, "open_iproute", "netlink: open socket")
    timed_open = link.open_iproute

    def open_instrumented():
        s = timed_open()
        ipr = s._ipr
        for meth in ("link", "addr", "route", "get_links", "get_addr", "get_routes", "neigh",
                     "brport", "tc", "get_qdiscs", "get_filters", "get_neighbours"):
            if hasattr(ipr, meth):
                probe.wrap(ipr, meth, lambda *a, _m=meth, **kw: f"netlink: {_m}"
                           + (f" {a[0]}" if a and isinstance(a[0], str) else ""))
        return s
    link.open_iproute = open_instrumented
    probe.wrap(nft.Nft, "_run_text", "nft transaction (text)")
    probe.wrap(nft.Nft, "_cmd", "nft transaction (json)")
    probe.wrap(nft.Nft, "__init__", "nft context creation")
    probe.wrap(time, "sleep", "sleeps / polls")


def profile_agent_side(n: int, workdir: str) -> list[str]:
    import warnings

    from netlab.base import namespaces as nsutil
    from cniruntime.runtime import Runtime
    from plugins.core import netns as cns
    from plugins.core.skel import dispatch
    warnings.simplefilter("ignore")
    tag = f"nlp{os.getpid() % 10000}"
    node = f"{tag}-node"
    created = []
    probe = Probe()
    lines = []
    wire, release_before = None, None
    try:
        nsutil.create(node)
        created.append(node)
        conf = {"cniVersion": "1.1.0", "name": "podnet", "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "isDefaultGateway": True,
             "ipMasq": False, "hairpinMode": True, "mtu": 1500,
             "ipam": {"type": "host-local", "dataDir": os.path.join(workdir, "ipam"),
                      "ranges": [[{"subnet": "10.241.1.0/24", "gateway": "10.241.1.1"}]]}},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}}]}

        rt = Runtime(["/nonexistent"], cache_dir=os.path.join(workdir, "cache"),
                     host_netns=nsutil.path(node))
        env_base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNILAB_AGENT": "off",
                    "CNILAB_RUN_DIR": os.path.join(workdir, "run")}

        def in_agent_exec(self, plugin, command, conf, *, net="", container_id="", netns="",
                          ifname="", cni_args=()):
            env = dict(env_base)
            env.update(self.plugin_env(command, container_id=container_id, netns=netns,
                                       ifname=ifname, cni_args=cni_args))
            res: dict = {}

            def work():
                with cns.entered(nsutil.path(node)):
                    res["out"], res["rc"] = dispatch(plugin, env, json.dumps(conf).encode())
            t = threading.Thread(target=work)
            t.start()
            t.join()
            if res.get("rc") != 0:
                raise RuntimeError(f"{plugin} {command}: {res.get('out')}")
            return res["out"]
        rt._exec = in_agent_exec.__get__(rt)
        pods = []
        for i in range(n + 1):
            p = f"{tag}-p{i}"
            nsutil.create(p)
            created.append(p)
            pods.append(p)
        # as the agent runs calls: link deletions return once unlisted (ADR 0039)
        try:
            from plugins.net.netlink import wire
            release_before = getattr(wire, "RELEASE_LINKS_IN_BACKGROUND", None)
            if release_before is not None:
                wire.RELEASE_LINKS_IN_BACKGROUND = True
        except ImportError:
            wire, release_before = None, None
        # one warm-up pod (imports, the bridge itself), not counted
        rt.add(conf, nsutil.path(pods[0]), f"{tag}c0", "eth0")
        wrap_agent_side(probe)
        t_add = t_del = 0.0
        for i, p in enumerate(pods[1:], 1):
            t0 = time.perf_counter()
            rt.add(conf, nsutil.path(p), f"{tag}c{i}", "eth0")
            t_add += time.perf_counter() - t0
        for i, p in enumerate(pods[1:], 1):
            t0 = time.perf_counter()
            rt.delete(conf, nsutil.path(p), f"{tag}c{i}", "eth0")
            t_del += time.perf_counter() - t0
        probe.restore()
        rt.delete(conf, nsutil.path(pods[0]), f"{tag}c0", "eth0")
        lines.append(f"inside the agent: bridge+portmap+bandwidth chain, warm, {n} pods, "
                     f"ADD {1000 * t_add / n:.1f} ms + DEL {1000 * t_del / n:.1f} ms per pod")
        lines.append(f"  {'category':44} {'calls/pod':>9} {'ms/pod':>8}")
        for cat, s in sorted(probe.secs.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {cat:44} {probe.count[cat] / n:9.1f} {1000 * s / n:8.1f}")
        rest = t_add + t_del - sum(probe.secs.values())
        lines.append(f"  {'python (plugins, IPAM store, result cache)':44} {'':>9} {1000 * rest / n:8.1f}")
    finally:
        probe.restore()
        if wire is not None and release_before is not None:
            wire.RELEASE_LINKS_IN_BACKGROUND = release_before
        for ns in reversed(created):
            nsutil.delete(ns)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=50, help="pods per node")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--warm", type=int, default=10, help="pods for the inside-the-agent profile")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (namespaces)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-nlprof-") as work:
        lines, fig = profile_lab(a.pods, a.nodes, work)
        print("\n".join(lines), flush=True)
        print()
        print("\n".join(profile_agent_side(a.warm, work)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(fig, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
