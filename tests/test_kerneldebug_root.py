"""Root tests: kernel drop reasons, capture to stdout / pcapng, link
impairments, counters, on throwaway namespaces and one small lab (always
torn down)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import unique_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.root

TOPO = """
name: kd
underlay: {subnet: 192.168.%d.0/24}
nodes:
  node1: {}
  node2: {}
networks:
  podnet: {type: bridge, subnet: 10.%d.0.0/16, nodePrefix: 24}
dns: {enabled: false}
pods:
  a: {node: node1, network: podnet}
  b: {node: node2, network: podnet}
"""


def netlab(*args: str, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netlab", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, **kw)


def _tracefs_state() -> dict:
    """Mounts of tracefs and, when one is mounted, its global state."""
    from netlab import dropmon
    mounts = dropmon.tracefs_mounts()
    return {"mounts": mounts, "state": dropmon.snapshot(mounts[0]) if mounts else None}


# --------------------------------------------------------------------------- drop reasons

def test_nft_drop_rule_is_reported_as_netfilter_drop_and_tracing_is_left_alone(make_netns):
    from netlab import dropmon
    if dropmon.support():
        pytest.skip(dropmon.support())
    ns = make_netns("dr")
    ns.run("ip", "link", "set", "lo", "up")
    ns.run("nft", "add table ip t; add chain ip t c { type filter hook input priority 0; }; "
           "add rule ip t c icmp type echo-request drop")
    before = _tracefs_state()
    m = dropmon.DropMonitor(unique_name("t").replace(".", "-")[-12:])
    m.start()
    try:
        sent = time.time()
        ns.run("ping", "-c", "1", "-W", "1", "127.0.0.1", check=False)
    finally:
        drops = m.stop()
    assert m.error == ""
    assert _tracefs_state() == before         # no instance, mount, enable or filter left behind
    mine = [d for d in drops if d.reason == "NETFILTER_DROP" and d.function == "nft_do_chain"]
    assert mine, drops
    assert all(d.protocol == 0x0800 for d in drops)
    v = dropmon.correlate(drops, sent, window=2.0)
    assert v.drop is not None and v.drop.reason == "NETFILTER_DROP"


# --------------------------------------------------------------------------- a small lab

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    name = unique_name("kd").replace("_", "-")[:20].lower().strip("-")
    d = tmp_path_factory.mktemp("kdlab")
    lab_dir = str(d / "lab")
    n = 100 + os.getpid() % 100
    topo = d / "kd.yaml"
    topo.write_text(TOPO % (n, n))
    try:
        up = netlab("up", str(topo), "--name", name, "--lab-dir", lab_dir, "--no-checks", "-q")
        assert up.returncode == 0, up.stderr[-3000:]
        yield {"name": name, "dir": lab_dir, "opts": ["--lab-dir", lab_dir], "topo": str(topo)}
    finally:
        dn = netlab("down", "--lab-dir", lab_dir)
        assert dn.returncode == 0, dn.stderr
        assert not [x for x in os.listdir("/var/run/netns") if x.startswith(f"nl-{name}-")]


def _st(lab):
    from netlab import state
    return state.load(lab["dir"])


def _addr(lab, pod):
    for r in _st(lab).resources:
        if r["kind"] == "attach" and r["pod"] == pod:
            return r["result"]["ips"][0]["address"].split("/")[0]
    raise KeyError(pod)


@pytest.mark.slow
def test_trace_names_the_kernel_reason_of_an_nft_drop(lab):
    from netlab import dropmon
    if dropmon.support():
        pytest.skip(dropmon.support())
    ns = f"nl-{lab['name']}-p-b"
    tbl = "kdtest"
    subprocess.run(["ip", "netns", "exec", ns, "nft", f"add table ip {tbl}; add chain ip {tbl} c "
                    "{ type filter hook input priority 0; }; add rule ip " + tbl + " c icmp type echo-request drop"],
                   check=True)
    try:
        before = _tracefs_state()
        t = netlab("trace", "a", "b", *lab["opts"])
        assert _tracefs_state() == before
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "ip", tbl], check=True)
    assert t.returncode == 1
    assert "kernel: drop reason NETFILTER_DROP in nft_do_chain (skb:kfree_skb" in t.stdout, t.stdout + t.stderr
    assert f"ip {tbl} c: icmp type echo-request drop" in t.stdout


@pytest.mark.slow
def test_trace_without_drop_reasons_says_so_in_one_line_and_still_works(lab, monkeypatch):
    from netlab import dropmon
    from netlab.trace import format_result, trace
    monkeypatch.setattr(dropmon, "support", lambda root=None: "the kernel has no tracefs")
    r = trace(_st(lab), "a", "b")
    out = format_result(r)
    assert r.arrived and r.replied, out
    assert [ln for ln in out.splitlines() if "drop reasons" in ln] == \
        ["kernel drop reasons unavailable: the kernel has no tracefs"]


# --------------------------------------------------------------------------- capture

def _ping(lab, src, dst, n=3):
    p = netlab("exec", *lab["opts"], src, "--", "ping", "-c", str(n), "-i", "0.2", "-W", "1", _addr(lab, dst))
    assert p.returncode == 0, p.stdout + p.stderr


def _start_capture(lab, *args, stdout=subprocess.PIPE):
    p = subprocess.Popen([sys.executable, "-m", "netlab", "capture", *args, *lab["opts"]],
                         stdout=stdout, stderr=subprocess.PIPE, cwd=REPO)
    line = p.stderr.readline().decode()
    assert line.startswith("capturing on"), line + p.stderr.read().decode()
    return p


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_capture_streams_pcap_to_stdout_into_tcpdump(lab, tmp_path):
    r, w = os.pipe()
    td = subprocess.Popen(["tcpdump", "-nr", "-"], stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    os.close(r)
    try:
        cap = _start_capture(lab, "b", "-w", "-", "--filter", "icmp", "--count", "4", "--timeout", "20",
                             stdout=w)
        os.close(w)
        _ping(lab, "a", "b", 2)
        assert cap.wait(30) == 0
        out, err = td.communicate(timeout=30)
    finally:
        for p in (locals().get("cap"), td):
            if p is not None and p.poll() is None:
                p.kill()
    assert not os.path.exists(os.path.join(REPO, "-"))
    lines = [ln for ln in out.splitlines() if "ICMP echo" in ln]
    assert len(lines) == 4, out + err
    assert "link-type EN10MB" in err


@pytest.mark.slow
def test_capture_several_targets_writes_one_pcapng_merged_by_time(lab, tmp_path):
    from scapy.utils import rdpcap
    from netlab import pcapng
    f = tmp_path / "both.pcapng"
    cap = _start_capture(lab, "a", "b", "node1", "-w", str(f), "--filter", "icmp", "--timeout", "20",
                         "--count", "12")
    try:
        _ping(lab, "a", "b", 2)
        assert cap.wait(30) == 0, cap.stderr.read()
    finally:
        if cap.poll() is None:
            cap.kill()
    got = pcapng.read(f.read_bytes())
    names = {n for n, _, _ in got}
    # one interface per target and interface; node1 (every interface) sees the uplink and the bridge
    assert {"a/eth0", "b/eth0", "node1/eth0", "node1/cni0"} <= names, names
    assert len(got) == 12
    ts = [t for _, t, _ in got]
    assert ts == sorted(ts)
    pk = rdpcap(str(f))                       # an independent reader agrees
    assert len(pk) == 12 and {p.sniffed_on for p in pk} == names
    if shutil.which("tcpdump"):
        td = subprocess.run(["tcpdump", "-nr", str(f)], capture_output=True, text=True)
        assert td.returncode == 0 and td.stdout.count("ICMP echo") == 12, td.stderr
