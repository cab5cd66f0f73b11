"""A lab with a node that runs containerd (topologies/containerd.yaml, ADR 0025), end to end.

node1's pods are CRI sandboxes made by a private containerd in node1's namespace
running our plugins; node2's by netlab's own runtime. The lab comes up with its
checks green, the sandboxes are READY in CRI with the addresses netlab recorded,
netlab's name for a pod's namespace is the namespace containerd made (``exec``,
``trace`` and ``status --cni-check`` work on it), a sandbox
removed through CRI has its address released by the plugins' DEL (which
containerd ran), and ``netlab down`` leaves nothing: no process, no namespace
containerd made, no mount, no cgroup, no libcni cache entry, no lab dir; also
when containerd was killed before ``down``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

import pytest

from tests.test_netlab_labs import leftovers, lab_name, netlab

NEEDED = ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "nsenter", "iperf3")
MISSING = [x for x in NEEDED if shutil.which(x) is None]
pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.e2e]
if MISSING:
    pytestmark.append(pytest.mark.skip(reason=f"{', '.join(MISSING)} not installed "
                                               "(make setup installs containerd, iperf3)"))

TOPO = "topologies/containerd.yaml"


def state(lab_dir: str) -> dict:
    with open(os.path.join(lab_dir, "state.json")) as f:
        return json.load(f)


def containerd_of(st: dict) -> dict:
    [res] = [r for r in st["resources"] if r["kind"] == "process" and r.get("containerd")]
    return res


def sandboxes_of(st: dict) -> dict[str, dict]:
    return {r["pod"]: r for r in st["resources"]
            if r["kind"] == "attach" and r.get("runtime") == "containerd"}


def what_containerd_left(ctd: dict, sandboxes: dict[str, dict], task_pids: list[int]) -> list[str]:
    """Traces of one containerd node on the machine (beyond what leftovers() looks at)."""
    out = []
    for pod, r in sandboxes.items():
        if os.path.exists(r["sandbox_netns"]):
            out.append(f"netns file {r['sandbox_netns']} of {pod}")
        if any(f"-{r['sandbox_id']}-" in n for n in _ls("/var/lib/cni/results")):
            out.append(f"libcni cache entry of {pod}")
    with open("/proc/mounts") as f:
        out += [f"mount {ln.split()[1]}" for ln in f if ctd["containerd"]["workdir"] in ln]
    for pid in [ctd["pid"]] + task_pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1][0] != "Z":
                    out.append(f"process {pid}")
        except OSError:
            pass
    out += cgroups_left(ctd["containerd"]["cgroupParent"])
    return out


def cgroups_left(parent: str) -> list[str]:
    """``parent`` under every cgroup hierarchy mounted (v1 has one per controller)."""
    with open("/proc/self/mounts") as f:
        roots = [ln.split()[1] for ln in f if ln.split()[2] in ("cgroup", "cgroup2")]
    return [f"cgroup {r}{parent}" for r in roots if os.path.isdir(r + parent)]


def _ls(d: str) -> list[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []


def task_pids(ctd: dict) -> list[int]:
    """The pause processes of the sandboxes and their shims (parents)."""
    base = os.path.join(ctd["containerd"]["workdir"], "state", "io.containerd.runtime.v2.task", "k8s.io")
    pids = []
    for t in _ls(base):
        try:
            init = int(open(os.path.join(base, t, "init.pid")).read())
        except (OSError, ValueError):
            continue
        pids.append(init)
        with open(f"/proc/{init}/stat") as f:
            pids.append(int(f.read().split(") ")[1].split()[1]))
    return pids


def test_containerd_lab_up_checks_cri_and_down_leaves_nothing(short_tmp_path):
    tmp_path = short_tmp_path
    from netlab.lab.pods import detach
    from netlab.cri import RuntimeClient
    from netlab.base.state import load
    name, lab_dir = lab_name(), str(tmp_path / "lab")
    ctd = sandboxes = None
    pids: list[int] = []
    try:
        up = netlab("up", TOPO, "--name", name, "--lab-dir", lab_dir, "--json", "-q")
        report = json.loads(up.stdout or "{}")
        failed = [c for c in report.get("checks", []) if not c["ok"]]
        assert up.returncode == 0 and report["ok"], (up.stderr[-2000:], failed)
        st = state(lab_dir)
        ctd, sandboxes = containerd_of(st), sandboxes_of(st)
        pids = task_pids(ctd)
        assert set(sandboxes) == {"web", "slow"} and len(pids) == 4
        assert cgroups_left(ctd["containerd"]["cgroupParent"])          # the sandboxes' cgroups
        assert set(st["plugins"].values()) == {"ours"} and st["plugins"]["loopback"] == "ours"
        with RuntimeClient(ctd["containerd"]["socket"], timeout=30) as cri:
            listed = {s.name: s for s in cri.list_pod_sandbox({"netlab.lab": name})}
            assert {p: s.state for p, s in listed.items()} == {"web": "SANDBOX_READY",
                                                               "slow": "SANDBOX_READY"}
            for pod, r in sandboxes.items():
                s = cri.pod_sandbox_status(r["sandbox_id"], verbose=True)
                assert s.id == listed[pod].id and s.namespace == "default"
                # the address netlab recorded is CRI's, and the plugins' result says the same
                assert s.ip == r["cri_ip"] and s.netns_path == r["sandbox_netns"]
                assert [a["address"].split("/")[0] for a in r["result"]["ips"]] == [s.ip]
                # netlab's name for the pod's namespace is the namespace containerd made
                assert os.stat(f"/var/run/netns/{r['netns']}").st_ino == os.stat(s.netns_path).st_ino
            # go-cni's untagged capability keys reached the plugins (hostPort, bandwidth)
            assert sandboxes["web"]["capability_args"]["portMappings"][0]["HostPort"] == 8080
            assert sandboxes["slow"]["capability_args"]["bandwidth"]["IngressRate"] == 20_000_000
        # status: containerd is a running process of the lab; --cni-check asks CRI for its pods
        info = json.loads(netlab("status", "--lab-dir", lab_dir, "--cni-check", "--json").stdout)["labs"][0]
        assert info["healthy"], info
        assert {p["name"]: p["running"] for p in info["processes"]}["containerd (node1)"]
        assert {p["pod"]: p["cniCheck"] for p in info["pods"]} == dict.fromkeys(
            ("web", "slow", "peer", "client"), "ok")
        ex = netlab("exec", "--lab-dir", lab_dir, "web", "--", "ip", "-4", "-o", "addr", "show", "eth0")
        assert ex.returncode == 0 and f" {sandboxes['web']['cri_ip']}/" in ex.stdout, ex.stdout + ex.stderr
        # trace follows a probe into the namespace containerd made (captured there too)
        tr = netlab("trace", "--lab-dir", lab_dir, "peer", "web")
        assert "verdict: delivered to pod web and answered" in tr.stdout, tr.stdout[-2000:] + tr.stderr
        assert "   1. pod web            eth0             out" in tr.stdout, tr.stdout[-2000:]
        resolv = open(f"/etc/netns/{sandboxes['web']['netns']}/resolv.conf").read()
        made = open(os.path.join(ctd["containerd"]["workdir"], "root", "io.containerd.grpc.v1.cri",
                                 "sandboxes", sandboxes["web"]["sandbox_id"], "resolv.conf")).read()
        assert resolv == made and "search default.svc.cluster.local svc.cluster.local cluster.local" in made
        # a sandbox removed through CRI: containerd ran our DEL, which released the address
        lease = os.path.join(lab_dir, "ipam", "node1", "podnet", sandboxes["slow"]["cri_ip"])
        assert os.path.exists(lease)
        detach(sandboxes["slow"], load(lab_dir))
        assert not os.path.exists(lease)
        with RuntimeClient(ctd["containerd"]["socket"], timeout=30) as cri:
            assert [s.name for s in cri.list_pod_sandbox({"netlab.lab": name})] == ["web"]
    finally:
        d = netlab("down", "--lab-dir", lab_dir)
    assert d.returncode == 0, d.stdout + d.stderr
    assert leftovers(name, lab_dir) == []
    assert what_containerd_left(ctd, sandboxes, pids) == []
    assert netlab("down", "--lab-dir", lab_dir).returncode == 0          # idempotent


def test_down_after_containerd_died_still_removes_everything(short_tmp_path):
    tmp_path = short_tmp_path
    name, lab_dir = lab_name(), str(tmp_path / "lab")
    ctd = sandboxes = None
    pids: list[int] = []
    try:
        netlab("up", TOPO, "--name", name, "--lab-dir", lab_dir, "--no-checks", "-q", check=True)
        st = state(lab_dir)
        ctd, sandboxes = containerd_of(st), sandboxes_of(st)
        pids = task_pids(ctd)
        os.kill(ctd["pid"], signal.SIGKILL)          # the PID netlab recorded; sandboxes live on
        for pid in pids:
            os.kill(pid, 0)
    finally:
        d = netlab("down", "--lab-dir", lab_dir)
    assert d.returncode == 0, d.stdout + d.stderr
    assert leftovers(name, lab_dir) == []
    assert what_containerd_left(ctd, sandboxes, pids) == []


BROKEN = """
name: {name}
underlay: {{subnet: 192.168.74.0/24}}
nodes:
  node1: {{runtime: containerd}}
networks:
  podnet:
    type: bridge
    subnet: 10.252.0.0/16
    conflist:
      cniVersion: 1.0.0
      plugins:
        - {{type: bridge, bridge: cni0, mtu: big, ipam: {{type: host-local, ranges: [[{{subnet: "${{podCIDR}}"}}]]}}}}
pods:
  a: {{node: node1, network: podnet}}
"""


def test_a_broken_conflist_fails_up_with_the_plugins_error_and_leaves_nothing(short_tmp_path):
    tmp_path = short_tmp_path
    name, lab_dir = lab_name(), str(tmp_path / "lab")
    topo = tmp_path / "broken.yaml"
    topo.write_text(BROKEN.format(name=name))
    try:
        up = netlab("up", str(topo), "--lab-dir", lab_dir, "-q")
        assert up.returncode == 1, up.stdout + up.stderr
        assert 'plugin type="bridge" failed (add): mtu must be an integer; got "big"' in up.stderr, up.stderr
        assert "removed" in up.stderr.splitlines()[-1], up.stderr
    finally:
        netlab("down", "--lab-dir", lab_dir)
    assert leftovers(name, lab_dir) == []
    assert cgroups_left(f"/netlab-{name}-node1") == []
