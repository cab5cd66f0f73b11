#!/usr/bin/env python3
"""Bandwidth shaping accuracy: ours vs the reference bandwidth plugin, with iperf3.

For each variant (ref = /usr/lib/cni, ours = our executables) a fresh node
namespace gets a pod through the conflist bridge + bandwidth, run by netlab's
libcni runtime; a peer namespace hangs off the node on a veth uplink. iperf3
runs only inside these namespaces: the server in the pod, the client in the
peer. For 10 and 100 Mbit/s limits, both directions are measured:

  ingress  peer -> pod   (limit: ingressRate, TBF on the host veth)
  egress   pod  -> peer  (limit: egressRate, TBF on the IFB; iperf3 -R)

Burst is rate/10 bits (100 ms worth) for both variants; the first second of
each run is omitted (-O 1) so the initial burst does not count. Prints the
received rate and its error relative to the limit.

    sudo .venv/bin/python benchmarks/bench_bandwidth.py [-t 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

from cniruntime.runtime import Runtime  # noqa: E402

SUBNET, GW = "10.64.0.0/24", "10.64.0.1"
UP_NODE, UP_PEER = "10.63.0.1", "10.63.0.2"
RATES = (10_000_000, 100_000_000)
PORT = 5201


def conflist(data_dir: str, rate: int) -> dict:
    bw = {"ingressRate": rate, "ingressBurst": rate // 10,
          "egressRate": rate, "egressBurst": rate // 10}
    return {"cniVersion": "1.0.0", "name": "bwbench", "plugins": [
        {"type": "bridge", "bridge": "cnilab-bwb", "isGateway": True,
         "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": SUBNET}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "bandwidth", **bw}]}


def ns_name(path: str) -> str:
    return os.path.basename(path)


def run(ns: str, *argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          check=True, **kw)


def iperf(pod: str, peer: str, pod_ip: str, reverse: bool, seconds: int) -> float:
    """Received bits/s of one iperf3 TCP run (server in the pod, client in the peer)."""
    srv = subprocess.Popen(["ip", "netns", "exec", pod, "iperf3", "-s", "-1", "-p", str(PORT),
                            "-B", pod_ip], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):                      # wait until the server listens
            ss = run(pod, "ss", "-Htln", f"sport = :{PORT}").stdout
            if ss.strip():
                break
            time.sleep(0.1)
        argv = ["iperf3", "-c", pod_ip, "-p", str(PORT), "-t", str(seconds), "-O", "1", "-J"]
        if reverse:
            argv.append("-R")
        out = run(peer, *argv, timeout=seconds + 30).stdout
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"])
    finally:
        srv.kill()
        srv.wait()


def measure(variant: str, cni_path: str, rate: int, seconds: int) -> dict:
    with H.Scratch(f"bw{variant[:3]}") as s:
        node, pod, peer = s.netns("node"), s.netns("pod"), s.netns("peer")
        n, p, q = ns_name(node), ns_name(pod), ns_name(peer)
        run(n, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0p", "netns", q)
        run(n, "ip", "addr", "add", f"{UP_NODE}/24", "dev", "up0")
        run(n, "ip", "link", "set", "up0", "up")
        run(q, "ip", "addr", "add", f"{UP_PEER}/24", "dev", "up0p")
        run(q, "ip", "link", "set", "up0p", "up")
        run(q, "ip", "route", "add", SUBNET, "via", UP_NODE)
        rt = Runtime([cni_path], cache_dir=s.mkdir("cache"), host_netns=node)
        net = conflist(s.mkdir("ipam"), rate)
        res = rt.add(net, pod, "bench1", "eth0")
        pod_ip = res["ips"][0]["address"].split("/")[0]
        try:
            ingress = iperf(p, q, pod_ip, reverse=False, seconds=seconds)
            egress = iperf(p, q, pod_ip, reverse=True, seconds=seconds)
        finally:
            rt.delete(net, pod, "bench1", "eth0")
    return {"ingress": ingress, "egress": egress}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-t", "--seconds", type=int, default=5, help="iperf3 run length")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("iperf3") is None:
        print("needs root and iperf3", file=sys.stderr)
        return 2
    variants = []
    if H.reference_available():
        variants.append(("ref", H.REF_DIR))
    with H.Scratch("bwbin") as bins:
        variants.append(("ours", H.install_ours(bins.mkdir("bin"))))
        rows = []
        for rate in RATES:
            for name, path in variants:
                m = measure(name, path, rate, args.seconds)
                for direction in ("ingress", "egress"):
                    got = m[direction]
                    rows.append({"variant": name, "limit_bits": rate, "direction": direction,
                                 "measured_bits": round(got),
                                 "error_pct": round((got - rate) / rate * 100, 2)})
    print(H.machine_description())
    print(f"iperf3 TCP, {args.seconds} s per run (first second omitted), burst = rate/10\n")
    print(f"{'variant':8} {'limit':>10} {'direction':10} {'measured':>14} {'error':>8}")
    for r in rows:
        print(f"{r['variant']:8} {r['limit_bits'] / 1e6:>7.0f} Mb {r['direction']:10} "
              f"{r['measured_bits'] / 1e6:>10.2f} Mb/s {r['error_pct']:>+7.2f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": H.machine_description(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
