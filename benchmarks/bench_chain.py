#!/usr/bin/env python3
"""A pod's full chain through the runtime: ours vs the Go reference, side by side.

Per pod: ADD then DEL of the conflist bridge (+ host-local IPAM) + portmap +
bandwidth, driven by netlab's libcni-compatible runtime (cniruntime/runtime.py:
one exec per plugin, prevResult threading, runtimeConfig from capabilities,
result cache) inside a throwaway node namespace, for three variants
alternated in one run:

  ref     /usr/lib/cni (Debian containernetworking-plugins)
  ours    our executables, agent off (everything in-process)
  agent   our executables through a private resident agent

  base    with --baseline DIR: the executables of the code tree in DIR (e.g.
          `git archive COMMIT | tar -x -C DIR`), agent off: before and after
          a change of the no-agent path, side by side in one run
Then 50 pods ADDed in parallel (50 threads, one runtime call each) and
DELeted in parallel, per variant: wall time for the batch and failures.

    sudo .venv/bin/python benchmarks/bench_chain.py [-n 15] [--parallel 50] [--json f]
                                                    [--baseline DIR]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

CNI_VERSION = "1.0.0"      # the newest the Debian 1.1.1 reference speaks
VARIANTS = ("ref", "ours", "agent")
CHAIN = ("bridge", "portmap", "bandwidth")


def conflist(data_dir: str, chain: tuple[str, ...]) -> dict:
    plugins = []
    for p in chain:
        if p == "bridge":
            plugins.append({"type": "bridge", "bridge": "cnichain0", "isGateway": True,
                            "ipMasq": True, "hairpinMode": True,
                            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.210.0.0/16"}]],
                                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data_dir}})
        elif p == "portmap":
            plugins.append({"type": "portmap", "snat": True,
                            "capabilities": {"portMappings": True}})
        elif p == "bandwidth":
            plugins.append({"type": "bandwidth", "capabilities": {"bandwidth": True}})
    return {"cniVersion": CNI_VERSION, "name": "benchchain", "plugins": plugins}


def caps(i: int) -> dict:
    return {"portMappings": [{"hostPort": 20000 + i, "containerPort": 80, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 1_000_000,
                          "egressRate": 10_000_000, "egressBurst": 1_000_000}}


class Variant:
    def __init__(self, name: str, scratch: H.Scratch, bin_dir: str, sock: str,
                 chain: tuple[str, ...]) -> None:
        from cniruntime.runtime import Runtime
        self.name = name
        self.scratch = scratch
        self.node = scratch.netns(f"{name}-n")
        self.pod = scratch.netns(f"{name}-p")
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        if name in ("ours", "base"):
            env["CNILAB_AGENT"] = "off"
        elif name == "agent":
            env["CNILAB_AGENT_SOCKET"] = sock
        self.rt = Runtime([bin_dir], conf_dir=scratch.mkdir(f"{name}-conf"),
                          cache_dir=scratch.mkdir(f"{name}-cache"), host_netns=self.node,
                          env=env, rollback=True)
        self.net = conflist(scratch.mkdir(f"{name}-ipam"), chain)
        self.calls = 0

    def add_del(self, cid: str, i: int, pod: str | None = None) -> tuple[float, float]:
        pod = pod or self.pod
        t0 = time.perf_counter()
        self.rt.add(self.net, pod, cid, "eth0", capability_args=caps(i))
        t1 = time.perf_counter()
        self.rt.delete(self.net, pod, cid, "eth0")
        t2 = time.perf_counter()
        self.calls += 2 * len(self.net["plugins"])
        return t1 - t0, t2 - t1


def parallel(v: Variant, pods: list[str], workers: int) -> dict:
    """ADD every pod at once, then DEL every pod at once."""
    def add(i: int):
        try:
            v.rt.add(v.net, pods[i], f"par{i:03d}", "eth0", capability_args=caps(i))
            return None
        except Exception as e:  # noqa: BLE001 - counted and reported
            return f"{type(e).__name__}: {e}"

    def delete(i: int):
        try:
            v.rt.delete(v.net, pods[i], f"par{i:03d}", "eth0")
            return None
        except Exception as e:  # noqa: BLE001
            return f"{type(e).__name__}: {e}"

    out = {}
    with cf.ThreadPoolExecutor(max_workers=workers) as ex:
        for phase, fn in (("add", add), ("del", delete)):
            t0 = time.perf_counter()
            errs = [e for e in ex.map(fn, range(len(pods))) if e]
            out[phase] = time.perf_counter() - t0
            out[f"{phase}_failures"] = len(errs)
            out[f"{phase}_first_error"] = errs[0][:300] if errs else ""
    v.calls += 2 * len(pods) * len(v.net["plugins"])
    return out


def install_tree(tree: str, directory: str) -> str:
    """The executables of another code tree, as its own `netlab cni install` writes them."""
    import subprocess
    os.makedirs(directory, exist_ok=True)
    subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, '.'); "
                    "from cninode.install import install; install(sys.argv[1])", directory],
                   cwd=tree, check=True)
    return directory


def run(n: int, par: int, json_path: str | None, agent_processes: int | None = None,
        baseline: str | None = None) -> int:
    if os.geteuid() != 0:
        print("bench_chain: needs root (creates throwaway namespaces)", file=sys.stderr)
        return 2
    if not H.reference_available():
        print(f"bench_chain: the reference plugins are missing from {H.REF_DIR}", file=sys.stderr)
        return 2
    chain = tuple(CHAIN)
    VARIANTS = ("ref", "ours", "agent") + (("base",) if baseline else ())
    samples: dict[str, dict[str, list[float]]] = {v: {"add": [], "del": [], "total": []}
                                                  for v in VARIANTS}
    errors: dict[str, str] = {}
    par_res: dict[str, dict] = {}
    cpu = {v: 0.0 for v in VARIANTS}          # CPU seconds of the measured pods, per variant
    with H.Scratch("chain") as scratch:
        ours_bin = H.install_ours(scratch.mkdir("bin"))
        bins = {"ref": H.REF_DIR, "ours": ours_bin, "agent": ours_bin}
        if baseline:
            bins["base"] = install_tree(os.path.abspath(baseline), scratch.path("base-bin"))
        with H.running_agent(scratch, agent_processes) as sock:
            served0 = H.agent_served(sock)
            vs = {name: Variant(name, scratch, bins[name], sock, chain) for name in VARIANTS}
            order = list(VARIANTS)
            for i in range(n + 1):                # iteration 0 warms caches, not counted
                order = order[1:] + order[:1]
                for name in order:
                    c0 = H.children_cpu() + (H.agent_cpu(sock) if name == "agent" else 0.0)
                    try:
                        a, d = vs[name].add_del(f"chain{i:04d}", i)
                    except Exception as e:  # noqa: BLE001 - reported in the table
                        errors.setdefault(name, f"{type(e).__name__}: {e}"[:400])
                        continue
                    c1 = H.children_cpu() + (H.agent_cpu(sock) if name == "agent" else 0.0)
                    if i:
                        cpu[name] += c1 - c0
                        samples[name]["add"].append(a)
                        samples[name]["del"].append(d)
                        samples[name]["total"].append(a + d)
            if par:
                for name in VARIANTS:
                    pods = [scratch.netns(f"{name}{k}") for k in range(par)]
                    par_res[name] = parallel(vs[name], pods, par)
            agent_calls = vs["agent"].calls
            served = H.agent_served(sock) - served0
    med = {v: {k: H.median(x) for k, x in s.items()} for v, s in samples.items()}
    print(f"bench_chain: per pod ADD+DEL of {' + '.join(chain)} (+ host-local) through "
          f"cniruntime.runtime; medians of {n} runs, variants alternated")
    print(f"machine: {H.machine_description()}")
    rows = []
    others = [v for v in VARIANTS if v != "ref"]
    for phase in ("add", "del", "total"):
        r = med["ref"][phase]
        rows.append([phase.upper() if phase != "total" else "ADD+DEL", H.fmt_ms(r)]
                    + [H.fmt_ms(med[v][phase]) for v in others]
                    + [H.fmt_ratio(med[v][phase], r) for v in others])
    cpu_ms = {v: cpu[v] / max(1, len(samples[v]["total"])) for v in VARIANTS}
    rows.append(["CPU/pod", H.fmt_ms(cpu_ms["ref"])] + [H.fmt_ms(cpu_ms[v]) for v in others]
                + [H.fmt_ratio(cpu_ms[v], cpu_ms["ref"]) for v in others])
    print(H.table(["per pod", "ref ms"] + [f"{v} ms" for v in others]
                  + [f"{v}/ref" for v in others], rows))
    if baseline:
        print(f"(base: the executables of {os.path.abspath(baseline)}, agent off)")
    print("(ADD, DEL, ADD+DEL: median wall time; CPU/pod: mean user+system CPU of the plugin "
          "processes, plus the agent's own for the agent variant; less sensitive to other load)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (1 min)")
    if par_res:
        print(f"\n{par} pods in parallel ({par} threads, one runtime call each): wall time")
        prow = []
        for phase in ("add", "del"):
            r = par_res.get("ref", {}).get(phase, float("nan"))
            got = [par_res.get(v, {}).get(phase, float("nan")) for v in others]
            prow.append([f"{par} x {phase.upper()}", f"{r:.2f}s"] + [f"{x:.2f}s" for x in got]
                        + [H.fmt_ratio(x, r) for x in got]
                        + ["/".join(str(par_res.get(v, {}).get(f"{phase}_failures", "?"))
                                    for v in VARIANTS)])
        print(H.table(["batch", "ref"] + others + [f"{v}/ref" for v in others]
                      + [f"failures {'/'.join(VARIANTS)}"], prow))
        for v in VARIANTS:
            for phase in ("add", "del"):
                e = par_res.get(v, {}).get(f"{phase}_first_error")
                if e:
                    print(f"  {v} parallel {phase}: first failure: {e}")
    for name, msg in errors.items():
        print(f"  {name}: failed: {msg}")
    print(f"\nagent variant: {agent_calls} plugin calls, {served} served by the agent"
          + ("" if served == agent_calls else "  <-- MISMATCH: some fell back in-process"))
    H.dump_json(json_path, {"machine": H.machine_description(), "chain": chain, "iterations": n,
                            "medians_s": med, "cpu_per_pod_s": cpu_ms, "parallel": par_res,
                            "errors": errors, "loadavg": os.getloadavg(),
                            "agent_calls": agent_calls, "agent_served": served})
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=15, help="timed pods per variant (default 15)")
    ap.add_argument("--parallel", type=int, default=50,
                    help="pods ADDed at once per variant (default 50; 0 skips)")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="add a variant with the executables of the code tree in DIR, agent off")
    ap.add_argument("--agent-processes", type=int, default=None,
                    help="the agent's serving processes (default: its own default)")
    a = ap.parse_args(argv)
    return run(a.n, a.parallel, a.json, a.agent_processes, a.baseline)


if __name__ == "__main__":
    sys.exit(main())
