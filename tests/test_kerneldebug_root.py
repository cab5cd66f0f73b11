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


def _tracefs_state(own: str | None = None) -> dict:
    """Mounts of tracefs and, when one is mounted, its global state. Other
    netlab traces (other tests running beside this one) make and remove their
    own ``netlab-<tag>`` instances and private mounts meanwhile: only ``own``'s
    are judged among those. Without ``own`` (a `serial` test: nothing else runs)
    every instance and mount is judged."""
    from netlab.debug import dropmon
    mounts = [m for m in dropmon.tracefs_mounts()
              if own is None or not os.path.basename(m).startswith(dropmon.PRIVATE_MOUNT_PREFIX)
              or os.path.basename(m).startswith(f"{dropmon.PRIVATE_MOUNT_PREFIX}{own}-")]
    state = dropmon.snapshot(mounts[0]) if mounts else None
    if state and own is not None:
        state["instances"] = [i for i in state["instances"]
                              if not i.startswith("netlab-") or i == f"netlab-{own}"]
    return {"mounts": mounts, "state": state}


# --------------------------------------------------------------------------- drop reasons

@pytest.mark.serial     # the kernel's drop events are machine-wide: other tests' drops would compete
def test_nft_drop_rule_is_reported_as_netfilter_drop_and_tracing_is_left_alone(make_netns):
    from netlab.debug import dropmon
    if dropmon.support():
        pytest.skip(dropmon.support())
    ns = make_netns("dr")
    ns.run("ip", "link", "set", "lo", "up")
    ns.run("nft", "add table ip t; add chain ip t c { type filter hook input priority 0; }; "
           "add rule ip t c icmp type echo-request drop")
    # kfree_skb events carry no namespace: a drop elsewhere on the machine (a
    # namespace being deleted purges its neighbour queues) can land in the same
    # window. Such an attempt proves nothing either way and is repeated (3 at most).
    for attempt in range(3):
        tag = unique_name("t").replace(".", "-")[-12:]
        before = _tracefs_state(tag)
        m = dropmon.DropMonitor(tag)
        m.start()
        try:
            sent = time.time()
            ns.run("ping", "-c", "1", "-W", "1", "127.0.0.1", check=False)
        finally:
            drops = m.stop()
        assert m.error == ""
        assert _tracefs_state(tag) == before         # no instance, mount, enable or filter left behind
        mine = [d for d in drops if d.reason == "NETFILTER_DROP" and d.function == "nft_do_chain"]
        assert mine, drops
        assert all(d.protocol == 0x0800 for d in drops)
        if len(drops) == len(mine) or attempt == 2:
            break
    v = dropmon.correlate(drops, sent, window=2.0)
    assert v.drop is not None and v.drop.reason == "NETFILTER_DROP", drops


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
    from netlab.base import state
    return state.load(lab["dir"])


def _addr(lab, pod):
    for r in _st(lab).resources:
        if r["kind"] == "attach" and r["pod"] == pod:
            return r["result"]["ips"][0]["address"].split("/")[0]
    raise KeyError(pod)


@pytest.mark.slow
@pytest.mark.serial     # judges the machine-wide tracefs state: no other trace may run meanwhile
def test_trace_names_the_kernel_reason_of_an_nft_drop(lab):
    from netlab.debug import dropmon
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
def test_trace_json_carries_the_kernel_drops(lab):
    from netlab.debug import dropmon
    if dropmon.support():
        pytest.skip(dropmon.support())
    ns = f"nl-{lab['name']}-p-b"
    subprocess.run(["ip", "netns", "exec", ns, "nft", "add table ip kdj; add chain ip kdj c { type filter hook "
                    "input priority 0; }; add rule ip kdj c icmp type echo-request drop"], check=True)
    try:
        t = netlab("trace", "a", "b", "--json", *lab["opts"])
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "ip", "kdj"], check=True)
    r = json.loads(t.stdout)
    mine = [d for d in r["kernel_drops"] if d.get("probe")]
    assert len(mine) == 1 and mine[0]["reason"] == "NETFILTER_DROP" and mine[0]["protocol"] == 0x0800
    assert r["kernel"].startswith("drop reason NETFILTER_DROP in nft_do_chain")


@pytest.mark.slow
def test_trace_without_drop_reasons_says_so_in_one_line_and_still_works(lab, monkeypatch):
    from netlab.debug import dropmon
    from netlab.debug.trace import format_result, trace
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
    from netlab.debug import pcapng
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


# --------------------------------------------------------------------------- impairments

def _imp(lab, *args):
    return netlab("impair", *args, *lab["opts"])


def _echo_counts(lab, src, dst, n, *, size=None):
    """(request seqs that left src, request frames that arrived at dst, their distinct seqs, answered seqs)."""
    from netlab.base.capture import Capture
    from netlab.checks.common import ping
    from netlab.checks.traffic.loss import echo_seqs
    d = _addr(lab, dst)
    a = Capture(f"nl-{lab['name']}-p-{src}", "eth0", f"icmp and host {d}")
    b = Capture(f"nl-{lab['name']}-p-{dst}", "eth0", f"icmp and host {d}")
    a.start()
    b.start()
    try:
        ping(a.ns, d, count=n, timeout=1, size=size, interval=0.005)
    finally:
        time.sleep(0.2)
        a.stop()
        b.stop()
    sent = echo_seqs(a.frames, a.directions, icmp_type=8, src=None, dst=d, direction="out")
    answered = echo_seqs(a.frames, a.directions, icmp_type=0, src=d, dst=None, direction="in")
    arrived = [f for f, dd in zip(b.frames, b.directions) if dd == "in" and f[1][34] == 8]
    got = echo_seqs(b.frames, b.directions, icmp_type=8, src=None, dst=d, direction="in")
    return sent, arrived, got, answered


def _recorded(lab):
    return [r for r in _st(lab).find("impair") if not r.get("removed")]


def _ns_has_impair_tables(ns):
    p = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True, text=True)
    return [ln for ln in p.stdout.splitlines() if "cnilab-impair-" in ln]


@pytest.mark.slow
def test_loss_is_measured_on_the_wire_and_cleared_exactly(lab):
    p = _imp(lab, "a", "set", "loss", "30%")
    assert p.returncode == 0, p.stderr
    assert "numgen random mod 10000 < 3000" in p.stdout
    [rec] = _recorded(lab)
    node_ns = f"nl-{lab['name']}-n-node1"
    assert [(x["kind"], x["ns"]) for x in rec["parts"]] == [("nft", node_ns)]   # the receiving end of a's wire
    try:
        sent, arrived, got, answered = _echo_counts(lab, "a", "b", 400)
    finally:
        c = _imp(lab, "a", "clear")
    assert c.returncode == 0 and "removed 1" in c.stdout
    assert not _ns_has_impair_tables(node_ns) and not _recorded(lab)
    assert len(sent) == 400                         # the sender saw no error: the loss is on the wire
    lost = 1 - len(got & sent) / len(sent)
    assert 0.2 <= lost <= 0.4, lost                 # 30% +- 5 standard deviations of 400 tries
    assert answered <= got


@pytest.mark.slow
def test_duplicate_is_measured_on_the_wire(lab):
    p = _imp(lab, "a", "set", "duplicate", "50%")
    assert p.returncode == 0, p.stderr
    try:
        sent, arrived, got, answered = _echo_counts(lab, "a", "b", 300)
    finally:
        assert _imp(lab, "a", "clear").returncode == 0
    assert got == sent and len(sent) == 300
    dup = len(arrived) / len(got) - 1
    assert 0.35 <= dup <= 0.65, dup                 # 50% +- 5 standard deviations of 300 tries


def _iperf(lab, src, dst, secs=2):
    bns = f"nl-{lab['name']}-p-{dst}"
    srv = subprocess.Popen(["ip", "netns", "exec", bns, "iperf3", "-s", "-1", "-p", "5299"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if "5299" in subprocess.run(["ip", "netns", "exec", bns, "ss", "-ltn"], capture_output=True,
                                        text=True).stdout:
                break
            time.sleep(0.05)
        c = subprocess.run(["ip", "netns", "exec", f"nl-{lab['name']}-p-{src}", "iperf3", "-c", _addr(lab, dst),
                            "-p", "5299", "-t", str(secs), "-J"], capture_output=True, text=True, timeout=60)
        return float(json.loads(c.stdout)["end"]["sum_received"]["bits_per_second"])
    finally:
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 is not installed")
@pytest.mark.parametrize("target,direction", [("a", "egress"), ("b", "ingress")])
def test_rate_is_measured_on_the_wire(lab, target, direction):
    p = _imp(lab, target, "set", "rate", "4mbit", "direction", direction)
    assert p.returncode == 0, p.stderr
    assert "rate 4Mbit" in p.stdout
    try:
        rate = _iperf(lab, "a", "b", secs=3)
    finally:
        assert _imp(lab, target, "clear").returncode == 0
    # TCP goodput under a 4 Mbit/s token bucket (an unimpaired veth carries Gbit/s); a busy machine
    # and TCP's start-up keep it under the limit, never far above it
    assert 2.0e6 <= rate <= 4.6e6, rate
    if direction == "ingress":
        ns = f"nl-{lab['name']}-p-b"
        links = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True).stdout
        assert "nli" not in links                   # the IFB went with clear


@pytest.mark.slow
def test_delay_is_refused_in_one_line_naming_sch_netem(lab):
    from netlab.features import impair
    if impair.kernel_has_netem():
        pytest.skip("this kernel has netem: nothing to refuse")
    p = _imp(lab, "a", "set", "delay", "20ms")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().count("\n") == 0 and "sch_netem" in p.stderr and "delay needs" in p.stderr
    assert not _recorded(lab)


@pytest.mark.slow
def test_bad_values_and_targets_change_nothing(lab):
    for args, msg in ((["a", "set", "loss", "200%"], "between 0% and 100%"),
                      (["nosuch", "set", "loss", "1%"], "unknown target"),
                      (["underlay", "set", "loss", "1%"], "underlay needs a port"),
                      (["all", "set", "loss", "1%"], "set needs one TARGET")):
        p = _imp(lab, *args)
        assert p.returncode == 2 and msg in p.stderr, (args, p.stderr)
    assert not _recorded(lab)


@pytest.mark.slow
def test_two_impairments_never_share_a_hook(lab):
    """node2's egress loss is made at the switch port's ingress; the switch port's own
    ingress loss would need the same table: refused, rolled back, the first one intact."""
    assert _imp(lab, "node2", "set", "loss", "1%").returncode == 0
    try:
        p = _imp(lab, "underlay:node2", "set", "loss", "2%", "direction", "ingress")
        assert p.returncode == 1 and "already has an impairment in this direction" in p.stderr, p.stderr
        assert "nothing changed" in p.stderr
        recs = _recorded(lab)
        assert [r["target"] for r in recs] == ["node2"]
        show = _imp(lab, "all", "show").stdout
        assert "< 100 counter" in show and "< 200" not in show
    finally:
        assert _imp(lab, "all", "clear").returncode == 0
    assert not _ns_has_impair_tables(f"nl-{lab['name']}-sw")


@pytest.mark.slow
def test_a_qdisc_someone_else_made_is_never_replaced(lab):
    ns = f"nl-{lab['name']}-p-a"
    subprocess.run(["tc", "-n", ns, "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "7mbit", "burst", "20k",
                    "latency", "30ms"], check=True)
    try:
        p = _imp(lab, "a", "set", "rate", "1mbit")
        assert p.returncode == 1 and "already has a tbf root qdisc" in p.stderr and "nothing changed" in p.stderr
        q = subprocess.run(["tc", "-n", ns, "qdisc", "show", "dev", "eth0"], capture_output=True, text=True).stdout
        assert "rate 7Mbit" in q
        assert not _recorded(lab)
    finally:
        subprocess.run(["tc", "-n", ns, "qdisc", "del", "dev", "eth0", "root"], check=True)


@pytest.mark.slow
def test_underlay_port_impairment_show_status_watch_and_down(lab):
    p = _imp(lab, "underlay:node2", "set", "loss", "1%", "duplicate", "1%")
    assert p.returncode == 0, p.stderr
    show = _imp(lab, "all", "show")
    assert "underlay:node2 (n1 in nl-" in show.stdout and "loss 1%, duplicate 1% (egress)" in show.stdout
    assert "counter packets" in show.stdout
    st = netlab("status", *lab["opts"])
    assert "impair underlay:node2" in st.stdout
    assert any(ln.strip().startswith("eth0") and " rx " in ln for ln in st.stdout.splitlines()), st.stdout
    w = subprocess.Popen([sys.executable, "-m", "netlab", "watch", "a", "underlay", "--count", "2",
                          "--interval", "0.5", *lab["opts"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=REPO)
    _ping(lab, "a", "b", 5)
    out, err = w.communicate(timeout=60)
    assert w.returncode == 0, err
    assert out.count("--- ") == 2 and "a/eth0" in out and "underlay/n1" in out, out
    js = json.loads(netlab("status", "--json", *lab["opts"]).stdout)["labs"][0]
    assert [m["target"] for m in js["impairments"]] == ["underlay:node2"]
    sw = next(n for n in js["namespaces"] if n["name"].endswith("-sw"))
    assert sw["interfaces"]["n1"]["tx_packets"] > 0
    # left in place: the lab's down (the fixture) removes it with the rest
    assert len(_recorded(lab)) == 1


def test_up_refuses_delay_before_building_anything(tmp_path):
    from netlab.features import impair
    if impair.kernel_has_netem():
        pytest.skip("this kernel has netem: nothing to refuse")
    name = unique_name("kdr").replace("_", "-")[:20].lower().strip("-")
    topo = tmp_path / "d.yaml"
    topo.write_text("name: x\nnodes: {node1: {impair: {delay: 20ms, jitter: 2ms}}}\n")
    lab_dir = tmp_path / "lab"
    p = netlab("up", str(topo), "--name", name, "--lab-dir", str(lab_dir), "-q")
    assert p.returncode == 2
    assert "nodes.node1.impair: delay and jitter need the kernel's netem qdisc (module sch_netem)" in p.stderr
    assert not lab_dir.exists()
    assert not [x for x in os.listdir("/var/run/netns") if x.startswith(f"nl-{name}-")]


# --------------------------------------------------------------------------- IPv6 counters in trace

TOPO6 = """
name: kd6
underlay: {subnet: "fd00:1%02d::/64"}
nodes:
  node1: {}
networks:
  podnet: {type: bridge, subnet: "fd00:10:%d::/56"}
dns: {enabled: false}
pods:
  a: {node: node1, network: podnet}
"""


@pytest.mark.slow
def test_trace_reads_the_ipv6_counters_of_the_path(tmp_path):
    """A v6 probe to an address nobody routes: node1 counts Ip6InNoRoutes (snmp6) and
    trace shows it; one to an unused address of the pod's own /64: only neighbour
    solicitations leave, and the counters say no advertisement came back."""
    import ipaddress
    import netlab
    from netlab.debug.trace import format_result
    n = 10 + os.getpid() % 80
    topo = tmp_path / "kd6.yaml"
    topo.write_text(TOPO6 % (n, n))
    name = unique_name("kd6").replace("_", "-")[:20].lower().strip("-")
    with netlab.Lab(str(topo), name=name, lab_dir=str(tmp_path / "lab")) as lab:
        node_ns, pod_ns = f"nl-{name}-n-node1", f"nl-{name}-p-a"
        r = lab.trace("a", "fd00:99::1")
        out = format_result(r)
        assert r.verdict == "lost after node node1 cni0 (received)", out
        assert r.ipv6_counters[node_ns]["Ip6InNoRoutes"] >= 1, r.ipv6_counters
        assert r.ipv6_counters[node_ns]["Icmp6OutDestUnreachs"] >= 1
        assert r.ipv6_counters[pod_ns]["Icmp6InDestUnreachs"] >= 1      # the answer reached the sender
        line = next(ln for ln in out.splitlines() if ln.startswith("  seen:  node node1 IPv6 counters during the probe:"))
        assert "Ip6InNoRoutes +" in line and "Icmp6OutDestUnreachs +" in line
        assert "  cause: no route: node node1 cannot forward to fd00:99::1" in out

        unused = str(ipaddress.ip_interface(r.probe.src + "/64").network[0x99])
        r = lab.trace("a", unused)
        out = format_result(r)
        assert r.verdict == "the probe was not seen anywhere (not even leaving the sender)", out
        assert r.ipv6_counters[pod_ns]["Icmp6OutNeighborSolicits"] >= 1
        assert f"  cause: counters: pod a sent {r.ipv6_counters[pod_ns]['Icmp6OutNeighborSolicits']} neighbour " \
               f"solicitation(s) for {unused} (Icmp6OutNeighborSolicits +" in out
    assert not [x for x in os.listdir("/var/run/netns") if x.startswith(f"nl-{name}-")]
