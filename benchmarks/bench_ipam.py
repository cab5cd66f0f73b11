#!/usr/bin/env python3
"""host-local: ours vs the reference (/usr/lib/cni/host-local), side by side.

Measures, on a tmp dataDir (never /var/lib/cni):
  1. one ADD (exec'd process) on an empty /16 pool and with 60,000 reservations
     (ADD/DEL cycles; only ADD is timed; median of N); DEL at 60,000 too;
  2. the same ADD in-process (how bridge/vxlan call ours), which shows the
     algorithmic cost without the interpreter start;
  3. the first ADD after another writer filled the directory (our index rebuild),
     and the worst case for round robin (60,000 taken addresses right after
     last_reserved_ip);
  4. 50 concurrent ADDs as separate processes: distinct addresses, no failures.

Usage: .venv/bin/python benchmarks/bench_ipam.py [--quick]
Prints a table; no assertions (figures go to the issue note).
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

REF = "/usr/lib/cni/host-local"
FAKE_NETNS = "/run/netns/cnilab-bench-none"          # host-local never enters it
SUBNET = "10.200.0.0/16"


def conf(data_dir: str, name: str, version: str = "1.0.0") -> bytes:
    return json.dumps({"cniVersion": version, "name": name, "type": "bridge",
                       "ipam": {"type": "host-local", "dataDir": data_dir,
                                "ranges": [[{"subnet": SUBNET}]]}}).encode()


def env(cmd: str, cid: str) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    e.update(CNI_COMMAND=cmd, CNI_CONTAINERID=cid, CNI_IFNAME="eth0", CNI_NETNS=FAKE_NETNS,
             CNI_PATH="/usr/lib/cni")
    return e


def make_ours_exe(d: str) -> str:
    exe = os.path.join(d, "host-local")
    with open(exe, "w") as f:
        f.write(f"#!{sys.executable}\nfrom cninode.launcher import main; main('host-local')\n")
    os.chmod(exe, 0o755)
    return exe


def run(exe: str, cmd: str, cid: str, stdin: bytes) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    p = subprocess.run([exe], input=stdin, env=env(cmd, cid), capture_output=True, timeout=300)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{exe} {cmd} {cid}: {p.stdout[:300]!r} {p.stderr[-300:]!r}")
    return dt, p


def in_process(cmd: str, cid: str, stdin: bytes) -> float:
    from plugins.core.skel import dispatch
    t = time.perf_counter()
    out, rc = dispatch("host-local", env(cmd, cid), stdin)
    dt = time.perf_counter() - t
    if rc != 0:
        raise RuntimeError(f"in-process {cmd} {cid}: {out[:300]}")
    return dt


def populate(net_dir: str, count: int, last_at_end: bool = True) -> None:
    """``count`` reservations in the reference format, from 10.200.0.2 upwards."""
    os.makedirs(net_dir, exist_ok=True)
    for i in range(2, count + 2):
        name = f"10.200.{i >> 8}.{i & 255}"
        fd = os.open(os.path.join(net_dir, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, f"pre-{i}\r\neth0".encode())
        os.close(fd)
    last = count + 1 if last_at_end else 1
    with open(os.path.join(net_dir, "last_reserved_ip.0"), "w") as f:
        f.write(f"10.200.{last >> 8}.{last & 255}")


def cycles(runner, stdin: bytes, n: int, tag: str) -> tuple[list[float], list[float]]:
    adds, dels = [], []
    for i in range(n):
        cid = f"{tag}-{i}"
        adds.append(runner("ADD", cid, stdin))
        dels.append(runner("DEL", cid, stdin))
    return adds, dels


def ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:8.1f}" if xs else "       -"


def concurrent(exe: str, data_dir: str, name: str, n: int = 50) -> tuple[int, int, int, float]:
    stdin = conf(data_dir, name)
    t = time.perf_counter()
    procs = [subprocess.Popen([exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env("ADD", f"cc-{i}")) for i in range(n)]
    outs = [p.communicate(stdin, timeout=300) for p in procs]
    dt = time.perf_counter() - t
    ok, ips = 0, []
    for p, (out, _err) in zip(procs, outs):
        if p.returncode == 0:
            ok += 1
            ips += [i["address"] for i in json.loads(out)["ips"]]
    files = [f for f in os.listdir(os.path.join(data_dir, name)) if f[0].isdigit()]
    return ok, len(set(ips)), len(files), dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer samples, 6,000 reservations")
    ap.add_argument("--reservations", type=int, default=60000)
    a = ap.parse_args()
    big = 6000 if a.quick else a.reservations
    n_small, n_big_ref, n_big = (5, 3, 5) if a.quick else (20, 5, 20)
    have_ref = os.access(REF, os.X_OK)
    tmp = tempfile.mkdtemp(prefix="bench-ipam-")
    try:
        exe = make_ours_exe(tmp)
        dd = os.path.join(tmp, "data")
        rows = []

        def both(label: str, name: str, n_ours: int, n_ref: int, prep=None):
            res = {}
            for who, runner_exe, n in (("ours", exe, n_ours), ("ref", REF, n_ref)):
                if who == "ref" and not have_ref:
                    res[who] = ([], [])
                    continue
                net = f"{name}-{who}"
                if prep:
                    prep(os.path.join(dd, net))
                stdin = conf(dd, net)
                if who == "ours" and prep:
                    # the first call after a foreign writer rebuilds our index (reported apart)
                    first, _ = run(runner_exe, "ADD", "warm", stdin)
                    run(runner_exe, "DEL", "warm", stdin)
                    res["first"] = first
                res[who] = cycles(lambda c, i, s: run(runner_exe, c, i, s)[0], stdin, n, who)
            rows.append((label, res))
            return res

        print(f"host-local benchmark: subnet {SUBNET}, big pool = {big} reservations, "
              f"reference {'present' if have_ref else 'MISSING'}", flush=True)
        both("exec ADD, empty pool", "empty", n_small, n_small)
        big_res = both(f"exec ADD, {big} reserved", "big", n_big, n_big_ref,
                       prep=lambda d: populate(d, big))

        # in-process (ours only; how bridge/vxlan call it)
        inproc = {}
        for label, net, prep in (("empty", "ip-empty", None),
                                 ("big", "ip-big", lambda d: populate(d, big))):
            if prep:
                prep(os.path.join(dd, net))
            stdin = conf(dd, net)
            first = in_process("ADD", "warm", stdin)
            in_process("DEL", "warm", stdin)
            adds, dels = cycles(in_process, stdin, 50, "ip")
            inproc[label] = (first, adds, dels)

        # worst case for round robin: last_reserved just before 'big' taken addresses
        worst_net = "worst"
        populate(os.path.join(dd, worst_net), big, last_at_end=False)
        stdin = conf(dd, worst_net)
        in_process("ADD", "warm", stdin)          # index rebuild
        in_process("DEL", "warm", stdin)
        with open(os.path.join(dd, worst_net, "last_reserved_ip.0"), "w") as f:
            f.write("10.200.0.1")
        worst = in_process("ADD", "worst-1", stdin)

        conc = {"ours": concurrent(exe, dd, "conc-ours")}
        if have_ref:
            conc["ref"] = concurrent(REF, dd, "conc-ref")

        print()
        print(f"{'median ms':34} {'ours':>8} {'ref':>8}")
        print("-" * 52)
        for label, res in rows:
            print(f"{label:34} {ms(res['ours'][0])} {ms(res['ref'][0])}")
        print(f"{'exec DEL, ' + str(big) + ' reserved':34} {ms(big_res['ours'][1])} {ms(big_res['ref'][1])}")
        print(f"{'exec first ADD after foreign fill':34} {big_res['first'] * 1000:8.1f}        -  (index rebuild)")
        e_add, b_add = inproc["empty"][1], inproc["big"][1]
        print(f"{'in-process ADD, empty pool':34} {ms(e_add)}        -")
        print(f"{'in-process ADD, ' + str(big) + ' reserved':34} {ms(b_add)}        -")
        print(f"{'in-process DEL, ' + str(big) + ' reserved':34} {ms(inproc['big'][2])}        -")
        print(f"{'in-process first ADD (rebuild)':34} {inproc['big'][0] * 1000:8.1f}        -")
        print(f"{'in-process ADD, probe ' + str(big) + ' taken':34} {worst * 1000:8.1f}        -  (round-robin worst case)")
        print()
        ratio_exec = statistics.median(rows[1][1]["ours"][0]) / statistics.median(rows[0][1]["ours"][0])
        ratio_in = statistics.median(b_add) / statistics.median(e_add)
        print(f"ours: ADD at {big} / ADD empty = {ratio_exec:.2f}x exec'd, {ratio_in:.2f}x in-process")
        if have_ref and rows[1][1]["ref"][0]:
            r = statistics.median(rows[1][1]["ref"][0]) / statistics.median(rows[0][1]["ref"][0])
            print(f"ref:  ADD at {big} / ADD empty = {r:.2f}x")
        print()
        print(f"{'50 concurrent ADDs (processes)':34} {'ok':>4} {'distinct':>8} {'files':>6} {'wall s':>7}")
        for who, (ok, distinct, files, dt) in conc.items():
            print(f"{who:34} {ok:4d} {distinct:8d} {files:6d} {dt:7.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
