#!/usr/bin/env python3
"""Pods through containerd's CRI: our plugins vs the Go reference, side by side.

Three private containerds (netlab.cri), each in its own throwaway node
namespace: ``ref`` with /usr/lib/cni as its CNI bin dir, ``ours`` with our
executables (agent off: every call in-process), ``agent`` with our
executables and a private resident node agent (docs/adr/0010); all with the
same conflist (bridge + host-local + portmap +
bandwidth, cniVersion 1.0.0: containerd 1.6 cannot read 1.1.0 results).
Pods are started in turn on the three, one at a time, as a kubelet would:
RunPodSandbox, then StopPodSandbox + RemovePodSandbox; p50 and p95 of each,
and the ratios to the reference. A sandbox's time includes containerd's own
work (runc, the shim, the pause container), which is the same on both sides;
the difference is the CNI plugins.

Pods carry a host port and bandwidth annotations when our plugins read
go-cni's untagged capability keys (as the reference does); otherwise they
are plain pods on both sides (the table says which).

    sudo .venv/bin/python benchmarks/bench_cri.py [-n 20] [--json f]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

SIDES = ("ref", "ours", "agent")
CONF_VERSION = "1.0.0"


def conflist(data_dir: str) -> dict:
    return {"cniVersion": CONF_VERSION, "name": "benchcri", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isDefaultGateway": True, "ipMasq": False,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.89.0.0/16"}]],
                  "dataDir": data_dir}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    ]}


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def run(n: int, json_path: str | None) -> int:
    if os.geteuid() != 0:
        print("bench_cri: needs root (creates throwaway namespaces)", file=sys.stderr)
        return 2
    missing = [x for x in ("containerd", "ctr", "runc", "nsenter") if shutil.which(x) is None]
    if missing or not H.reference_available():
        print(f"bench_cri: missing {missing or H.REF_DIR} (make setup installs containerd)",
              file=sys.stderr)
        return 2
    from netlab.cri import Containerd, ContainerdOptions, PodSpec, PortMapping
    from netlab.cri.gocni import ours_read_go_keys
    rich = ours_read_go_keys()
    samples = {s: {"run": [], "down": []} for s in SIDES}
    problems: list[str] = []
    with H.Scratch("cri") as scratch:
        ours_bin = H.install_ours(scratch.mkdir("bin"))
        ctds: dict[str, Containerd] = {}
        agent = H.running_agent(scratch)
        sock = agent.__enter__()
        try:
            for side in SIDES:
                node = os.path.basename(scratch.netns(f"{side}node"))
                conf_dir = scratch.mkdir(side, "net.d")
                with open(os.path.join(conf_dir, "10-bench.conflist"), "w") as f:
                    json.dump(conflist(scratch.mkdir(side, "ipam")), f)
                ctds[side] = Containerd(ContainerdOptions(
                    netns=node, workdir=scratch.mkdir(side, "containerd"),
                    cni_bin_dir=H.REF_DIR if side == "ref" else ours_bin,
                    cni_conf_dir=conf_dir,
                    env={"CNILAB_AGENT_SOCKET": sock} if side == "agent"
                    else {"CNILAB_AGENT": "off"}))
                ctds[side].start()
                ctds[side].import_pause_image()
            clients = {s: ctds[s].client() for s in SIDES}
            served0 = H.agent_served(sock)
            order = list(SIDES)
            for i in range(n + 1):                 # pod 0 warms caches, not counted
                order = order[1:] + order[:1]
                for side in order:
                    spec = PodSpec(f"bench-{i}")
                    if rich:
                        spec.port_mappings = [PortMapping(80, 30000 + i)]
                        spec.annotations = {"kubernetes.io/ingress-bandwidth": "10M",
                                            "kubernetes.io/egress-bandwidth": "10M"}
                    c = clients[side]
                    t0 = time.perf_counter()
                    sid = c.run_pod_sandbox(spec)
                    t1 = time.perf_counter()
                    c.stop_pod_sandbox(sid)
                    c.remove_pod_sandbox(sid)
                    t2 = time.perf_counter()
                    if i:
                        samples[side]["run"].append(t1 - t0)
                        samples[side]["down"].append(t2 - t1)
            served = H.agent_served(sock) - served0
        finally:
            for side, ctd in ctds.items():
                problems += [f"{side}: {p}" for p in ctd.stop()]
            agent.__exit__(None, None, None)
    print(f"bench_cri: {n} pods per side through containerd CRI "
          f"({'host port + bandwidth annotations' if rich else 'plain pods: our plugins do not read go-cni keys yet'}), "
          "sides alternated")
    print(f"machine: {H.machine_description()}")
    rows, figures = [], {}
    for phase, label in (("run", "RunPodSandbox"), ("down", "Stop+Remove")):
        for q, qn in ((0.5, "p50"), (0.95, "p95")):
            r, o, g = (percentile(samples[s][phase], q) for s in SIDES)
            figures[f"{phase}_{qn}"] = {"ref": r, "ours": o, "agent": g}
            rows.append([f"{label} {qn}", H.fmt_ms(r), H.fmt_ms(o), H.fmt_ms(g),
                         H.fmt_ratio(o, r), H.fmt_ratio(g, r)])
    print(H.table(["per pod", "ref ms", "ours ms", "agent ms", "ours/ref", "agent/ref"], rows))
    print(f"(the agent served {served} plugin calls of the agent side's pods)")
    if problems:
        print("teardown problems:", *problems, sep="\n  ")
    H.dump_json(json_path, {"n": n, "rich": rich, "figures": figures, "samples": samples})
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20, help="timed pods per side (default 20)")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    a = ap.parse_args(argv)
    return run(a.n, a.json)


if __name__ == "__main__":
    sys.exit(main())
