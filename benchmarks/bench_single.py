#!/usr/bin/env python3
"""Single plugin calls, ours vs the Go reference (/usr/lib/cni), side by side.

For each plugin: VERSION, ADD and DEL alone, exec'd the way a runtime does
(env + stdin, one process per call) inside a throwaway node namespace, for
three variants alternated in one run:

  ref     /usr/lib/cni (Debian containernetworking-plugins)
  ours    our executables, agent off: everything in-process (CNILAB_AGENT=off)
  agent   our executables through a private resident agent (its own socket)

Prints medians of wall time and of the executable's peak RSS (os.wait4), and
the ratios to the reference. portmap and bandwidth are measured chained on a
pod attached once by that variant's own bridge (their ADD/DEL repeat on it).

    sudo .venv/bin/python benchmarks/bench_single.py [-n 15] [--json out.json]
    sudo .venv/bin/python benchmarks/bench_single.py --profile bridge
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

CNI_VERSION = "1.0.0"      # the newest the Debian 1.1.1 reference speaks
VARIANTS = ("ref", "ours", "agent")


def bridge_conf(data_dir: str, subnet: str = "10.201.0.0/16", bridge: str = "cnibench0") -> dict:
    return {"cniVersion": CNI_VERSION, "name": "bsingle", "type": "bridge", "bridge": bridge,
            "isGateway": True, "ipMasq": True, "hairpinMode": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data_dir}}


def host_local_conf(data_dir: str) -> dict:
    return {"cniVersion": CNI_VERSION, "name": "bsingle-ipam", "type": "host-local",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.202.0.0/16"}]],
                     "dataDir": data_dir}}


def portmap_conf(prev: dict) -> dict:
    return {"cniVersion": CNI_VERSION, "name": "bsingle", "type": "portmap", "snat": True,
            "capabilities": {"portMappings": True},
            "runtimeConfig": {"portMappings": [
                {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 18053, "containerPort": 53, "protocol": "udp"}]},
            "prevResult": prev}


def bandwidth_conf(prev: dict) -> dict:
    return {"cniVersion": CNI_VERSION, "name": "bsingle", "type": "bandwidth",
            "capabilities": {"bandwidth": True},
            "runtimeConfig": {"bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 1_000_000,
                                            "egressRate": 10_000_000, "egressBurst": 1_000_000}},
            "prevResult": prev}


class Variant:
    def __init__(self, name: str, scratch: H.Scratch, bin_dir: str, sock: str | None) -> None:
        self.name = name
        self.node = scratch.netns(f"{name}-n")
        self.pod = scratch.netns(f"{name}-p")
        self.pod2 = scratch.netns(f"{name}-q")      # the pod portmap/bandwidth chain onto
        self.data = scratch.mkdir(f"{name}-ipam")
        self.bin_dir = bin_dir
        self.extra = ({"CNILAB_AGENT": "off"} if name == "ours"
                      else {"CNILAB_AGENT_SOCKET": sock} if name == "agent" else {})
        self.calls = 0

    def has(self, plugin: str) -> bool:
        if self.name == "ref":
            return plugin in H.REFERENCE_HAS
        return True          # ours: every plugin (skel.PLUGINS)

    def run(self, plugin: str, command: str, conf: dict | None, cid: str = "",
            ifname: str = "eth0", pod: str | None = None, memory: bool = False):
        """-> (rc, stdout, value): value = seconds, or peak RSS KiB when ``memory``."""
        version = command == "VERSION"
        env = H.cni_env(command, self.bin_dir, container_id=cid,
                        netns="" if version else (pod or self.pod),
                        ifname="" if version else ifname, extra=self.extra)
        stdin = json.dumps(conf).encode() if conf is not None else b""
        exe = os.path.join(self.bin_dir, plugin)
        self.calls += 1
        if memory:
            rc, rss = H.exec_peak_rss(exe, env, stdin, host_netns=self.node)
            return rc, b"", rss
        rc, out, err, dt, _ = H.exec_measured(exe, env, stdin, host_netns=self.node)
        return rc, out or err, dt


def one_iteration(v: Variant, i: int, wanted: list[str], memory: bool, record) -> None:
    """VERSION of each plugin; ADD then DEL of bridge, host-local, portmap, bandwidth."""
    for plugin in H.PLUGINS:
        if plugin in wanted and v.has(plugin):
            record(plugin, "VERSION", *v.run(plugin, "VERSION", None, memory=memory))
    cid = f"bench{i:04d}m" if memory else f"bench{i:04d}"
    for plugin, conf in (("bridge", bridge_conf(v.data)), ("host-local", host_local_conf(v.data))):
        if plugin not in wanted:
            continue
        if not v.has(plugin):
            record(plugin, "ADD", 1, b"the reference plugins have no " + plugin.encode(), 0)
            continue
        for command in ("ADD", "DEL"):
            record(plugin, command, *v.run(plugin, command, conf, cid, memory=memory))
    chained = [p for p in ("portmap", "bandwidth") if p in wanted]
    if not chained:
        return
    setup = bridge_conf(v.data, "10.203.0.0/16", "cnibench9")
    scid = "s" + cid
    rc, out, _ = v.run("bridge", "ADD", setup, scid, "eth9", v.pod2)
    if rc != 0:
        for plugin in chained:
            record(plugin, "ADD", 1, b"no pod to chain onto: bridge ADD failed: " + out[:200], 0)
        return
    prev = json.loads(out)
    try:
        for plugin in chained:
            if not v.has(plugin):
                record(plugin, "ADD", 1, b"the reference plugins have no " + plugin.encode(), 0)
                continue
            conf = portmap_conf(prev) if plugin == "portmap" else bandwidth_conf(prev)
            for command in ("ADD", "DEL"):
                record(plugin, command, *v.run(plugin, command, conf, scid, "eth9", v.pod2,
                                               memory=memory))
    finally:
        v.run("bridge", "DEL", dict(setup, prevResult=prev), scid, "eth9", v.pod2)


def run(n: int, mem_n: int, wanted: list[str], json_path: str | None) -> int:
    if os.geteuid() != 0:
        print("bench_single: needs root (creates throwaway namespaces)", file=sys.stderr)
        return 2
    if not H.reference_available():
        print(f"bench_single: the reference plugins are missing from {H.REF_DIR}", file=sys.stderr)
        return 2
    times: dict[tuple[str, str, str], list[float]] = {}
    mems: dict[tuple[str, str, str], list[float]] = {}
    errors: dict[tuple[str, str, str], str] = {}
    with H.Scratch("single") as scratch:
        ours_bin = H.install_ours(scratch.mkdir("bin"))
        with H.running_agent(scratch) as sock:
            served0 = H.agent_served(sock)
            vs = {name: Variant(name, scratch, H.REF_DIR if name == "ref" else ours_bin, sock)
                  for name in VARIANTS}
            order = list(VARIANTS)
            # iteration 0 warms caches and is not counted; then n timed, then mem_n traced
            for i in range(1 + n + mem_n):
                memory = i > n
                order = order[1:] + order[:1]      # rotate: no variant always goes first
                for name in order:
                    def record(plugin, command, rc, out, value, _name=name, _i=i, _m=memory):
                        key = (plugin, command, _name)
                        if rc != 0:
                            errors.setdefault(key, out.decode(errors="replace").strip()[:300])
                        elif _i:
                            (mems if _m else times).setdefault(key, []).append(value)
                    one_iteration(vs[name], i, wanted, memory, record)
            agent_calls = vs["agent"].calls
            served = H.agent_served(sock) - served0
    rows = []
    report = {"machine": H.machine_description(), "iterations": n, "memory_iterations": mem_n,
              "results": []}
    for plugin in H.PLUGINS:
        if plugin not in wanted:
            continue
        for command in ("VERSION", "ADD", "DEL"):
            t = {nm: H.median(times.get((plugin, command, nm), [])) for nm in VARIANTS}
            m = {nm: H.median(mems.get((plugin, command, nm), [])) for nm in VARIANTS}
            if all(x != x for x in t.values()) and not any(
                    (plugin, command, nm) in errors for nm in VARIANTS):
                continue
            rows.append([plugin, command,
                         H.fmt_ms(t["ref"]), H.fmt_ms(t["ours"]), H.fmt_ms(t["agent"]),
                         H.fmt_ratio(t["ours"], t["ref"]), H.fmt_ratio(t["agent"], t["ref"]),
                         _kib(m["ref"]), _kib(m["ours"]), _kib(m["agent"]),
                         H.fmt_ratio(m["ours"], m["ref"]), H.fmt_ratio(m["agent"], m["ref"])])
            report["results"].append({"plugin": plugin, "command": command,
                                      "median_s": t, "median_peak_rss_kib": m})
    print(f"bench_single: medians of {n} timed runs and {mem_n} memory runs per cell "
          "(ref / ours in-process / ours via agent, alternated)")
    print(f"machine: {report['machine']}")
    print(H.table(["plugin", "cmd", "ref ms", "ours ms", "agent ms", "ours/ref", "agent/ref",
                   "ref RSS", "ours RSS", "agent RSS", "ours/ref", "agent/ref"], rows))
    print("RSS = peak resident set of the executable the runtime launched (VmHWM at exit); "
          "the Go bridge's host-local child is not included, ours runs host-local in-process")
    if errors:
        print("\nfailures (first message per cell):")
        for (plugin, command, name), msg in sorted(errors.items()):
            print(f"  {name:5} {plugin} {command}: {msg}")
    ok = served == agent_calls
    print(f"\nagent variant: {agent_calls} calls, {served} served by the agent"
          + ("" if ok else " (the rest ran in-process: VERSION always does)"))
    report["agent_calls"], report["agent_served"] = agent_calls, served
    report["errors"] = {" ".join(k): v for k, v in errors.items()}
    H.dump_json(json_path, report)
    return 0


def _kib(x: float) -> str:
    return "n/a" if x != x else f"{x / 1024:.1f}M"


def profile(plugin: str, top: int) -> int:
    """cProfile one in-process ADD+DEL of ``plugin`` (bridge or host-local), and
    print the import-time top list of a cold in-process ADD (python -X importtime)."""
    import cProfile
    import pstats
    import subprocess
    from plugins.core import netns as core_netns, skel
    with H.Scratch("prof") as scratch:
        node, pod = scratch.netns("n"), scratch.netns("p")
        data = scratch.mkdir("ipam")
        conf = bridge_conf(data) if plugin == "bridge" else host_local_conf(data)
        env = H.cni_env("ADD", H.REF_DIR, container_id="prof1", netns=pod, ifname="eth0")
        stdin = json.dumps(conf).encode()
        prof = cProfile.Profile()
        with core_netns.entered(node):
            prof.enable()
            out, rc = skel.dispatch(plugin, env, stdin)
            out2, rc2 = skel.dispatch(plugin, dict(env, CNI_COMMAND="DEL"), stdin)
            prof.disable()
        print(f"in-process {plugin} ADD rc={rc} DEL rc={rc2} (first call: includes imports)")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(top)
        code = ("import sys; from plugins.core import skel; "
                f"out, rc = skel.dispatch({plugin!r}, dict(__import__('os').environ), "
                "sys.stdin.buffer.read())")
        env3 = dict(env, CNI_CONTAINERID="prof2")
        p = subprocess.run(["ip", "netns", "exec", os.path.basename(node), sys.executable,
                            "-X", "importtime", "-c", code], input=stdin, env=env3,
                           capture_output=True, cwd=H.ROOT)
        rows = []
        for line in p.stderr.decode().splitlines():
            if line.startswith("import time:") and "|" in line:
                parts = line[len("import time:"):].split("|")
                try:
                    rows.append((int(parts[1]), parts[2].rstrip()))
                except ValueError:
                    pass
        rows.sort(reverse=True)
        print(f"\ncold in-process {plugin} ADD: top imports by cumulative time (us)")
        for us, name in rows[:top]:
            print(f"  {us:8d}  {name}")
        subprocess.run(["ip", "netns", "exec", os.path.basename(node), sys.executable, "-c",
                        code.replace("'ADD'", "'DEL'")], input=stdin,
                       env=dict(env3, CNI_COMMAND="DEL"), capture_output=True, cwd=H.ROOT)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=15, help="timed iterations per cell (default 15)")
    ap.add_argument("--mem-n", type=int, default=3,
                    help="memory (ptrace) iterations per cell (default 3)")
    ap.add_argument("--plugins", default=",".join(H.PLUGINS),
                    help="comma-separated subset (default: all)")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    ap.add_argument("--profile", metavar="PLUGIN", choices=("bridge", "host-local"),
                    help="profile one in-process ADD (cProfile + import times) instead")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args(argv)
    if a.profile:
        return profile(a.profile, a.top)
    return run(a.n, a.mem_n, a.plugins.split(","), a.json)


if __name__ == "__main__":
    sys.exit(main())
