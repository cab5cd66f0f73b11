"""The agent in throwaway namespaces: same answers as in-process, the caller's
netns is the one the work happens in, and a dying agent never loses a call.

The agent runs inside a namespace of its own (never the root namespace) so a
test can tell "worked in the caller's node namespace" from "worked where the
agent lives". This module doubles as a tiny CNI plugin ("probe", registered
only in processes these tests start) that reports which process and which
network namespace ran it.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from netlab.base import namespaces as nsutil
from cninode.install import site_dirs
from cninode import agent as ag
from cninode import launcher

pytestmark = pytest.mark.root
ROOT = launcher.code_root()
PROBE = "tests.test_agent_root"


# ---- the probe plugin (runs inside the agent, or in-process in a launcher) -------------
def _probe(call, command: str):
    raw = call.conf.raw
    if raw.get("sleep") and os.environ.get("PROBE_IN_AGENT") == "1":
        time.sleep(float(raw["sleep"]))
    info = {"command": command, "pid": os.getpid(),
            "netns": os.stat("/proc/thread-self/ns/net").st_ino}
    with open(raw["marker"], "a") as f:
        f.write(json.dumps(info) + "\n")
    return info


def add(call):
    from plugins.core.types import DNS, Result
    info = _probe(call, "ADD")
    return Result(dns=DNS(domain=f"pid{info['pid']}.ns{info['netns']}"))


def delete(call):
    _probe(call, "DEL")


# ---- helpers --------------------------------------------------------------------------
AGENT_CODE = ("import os, sys; sys.path[:0] = [{root!r}]; os.environ['PROBE_IN_AGENT'] = '1'; "
              "from plugins.core import skel; from cninode import agent; skel.PLUGINS['probe'] = {probe!r}; "
              "sys.exit(agent.main(sys.argv[1:]))")


class AgentProc:
    """An agent (with the probe plugin) running inside its own namespace."""

    def __init__(self, ns_name: str, sock: str) -> None:
        self.sock = sock
        self.log = open(sock + ".log", "ab")
        code = AGENT_CODE.format(root=ROOT, probe=PROBE)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns_name, sys.executable, "-c", code, "--socket", sock,
             "--on-code-change", "ignore", "--call-timeout", "60", "--processes", "2"],
            stdout=self.log, stderr=self.log, cwd="/")
        deadline = time.monotonic() + 20
        while ag.ping(sock, timeout=0.5) is None:
            assert self.proc.poll() is None, "the agent exited at start-up"
            assert time.monotonic() < deadline, "the agent did not come up"
            time.sleep(0.05)
        st = ag.ping(sock)
        self.pid = st["pid"]
        deadline = time.monotonic() + 10
        while len(st["workers"]) < st["processes"]:
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.05)
            st = ag.ping(sock)
        self.workers = set(st["workers"])

    def served(self) -> int:
        st = ag.ping(self.sock)
        return -1 if st is None else st["served"]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture
def agent_ns(make_netns):
    return make_netns("agt")


@pytest.fixture
def agent(agent_ns, tmp_path):
    os.makedirs(tmp_path / "run", mode=0o700)
    a = AgentProc(agent_ns.name, str(tmp_path / "run" / "agent.sock"))
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def probe_exe(tmp_path):
    path = tmp_path / "probe"
    paths = [ROOT] + site_dirs()
    path.write_text(f"#!{sys.executable} -IS\nimport sys\nsys.path[:0] = {paths!r}\n"
                    "from plugins.core import skel\n"
                    f"skel.PLUGINS['probe'] = {PROBE!r}\n"
                    "from cninode.launcher import main\nmain('probe')\n")
    path.chmod(0o755)
    return str(path)


def ns_inode(ns) -> int:
    return os.stat(ns.path).st_ino


def call(exe: str, node, env: dict, stdin: bytes, timeout: float = 60):
    """Exec ``exe`` inside the node namespace, the way our runtime hosts plugins."""
    full = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}
    return subprocess.run(nsutil.exec_argv(node.name, [exe]), env=full, input=stdin,
                          capture_output=True, timeout=timeout, cwd="/")


def probe_conf(tmp_path, **extra) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "probenet", "type": "probe",
                       "marker": str(tmp_path / "marker.jsonl"), **extra}).encode()


def markers(tmp_path) -> list[dict]:
    try:
        with open(tmp_path / "marker.jsonl") as f:
            return [json.loads(line) for line in f]
    except FileNotFoundError:
        return []


def probe_env(command: str, pod, agent_sock: str, cid: str = "c1") -> dict:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": pod.path,
            "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent", "CNILAB_AGENT_SOCKET": agent_sock}


# ---- the caller's namespace is where the work happens ----------------------------------
def test_worker_runs_in_the_namespace_the_launcher_passed(agent, agent_ns, node, pod,
                                                          probe_exe, tmp_path):
    before = agent.served()
    p = call(probe_exe, node, probe_env("ADD", pod, agent.sock), probe_conf(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    (m,) = markers(tmp_path)
    assert m["pid"] in agent.workers             # the agent did the work ...
    assert m["netns"] == ns_inode(node)          # ... inside the caller's node namespace
    assert m["netns"] != ns_inode(agent_ns)      # not where the agent itself lives
    assert json.loads(p.stdout)["dns"]["domain"] == f"pid{m['pid']}.ns{ns_inode(node)}"
    assert agent.served() == before + 1


def test_two_nodes_at_once_each_in_its_own_namespace(agent, make_netns, pod, probe_exe,
                                                     tmp_path):
    nodes = [make_netns("nodeA"), make_netns("nodeB")]
    procs = [subprocess.Popen(nsutil.exec_argv(n.name, [probe_exe]), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE,
                              env={**probe_env("ADD", pod, agent.sock, f"c{i}"),
                                   "PATH": "/usr/bin:/bin"})
             for i, n in enumerate(nodes * 3)]
    for p in procs:
        p.communicate(probe_conf(tmp_path), timeout=60)
        assert p.returncode == 0
    seen = sorted(m["netns"] for m in markers(tmp_path))
    assert seen == sorted([ns_inode(n) for n in nodes] * 3)
    assert {m["pid"] for m in markers(tmp_path)} <= agent.workers


# ---- identical behaviour: the same calls through the agent and in-process --------------
MAC = re.compile(r'"mac": "[0-9a-f:]{17}"')


def _bridge_conf(data: str, version: str = "1.0.0") -> dict:
    return {"cniVersion": version, "name": "agtnet", "type": "bridge", "bridge": "agtbr0",
            "isGateway": True, "ipMasq": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/24"}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": data}}


def _session(exe_dir: str, node, pod, data: str, extra_env: dict) -> list[tuple[int, str]]:
    """A fixed sequence of good and bad calls; returns normalised (rc, stdout)."""
    bridge = os.path.join(exe_dir, "bridge")
    hl = os.path.join(exe_dir, "host-local")
    conf = _bridge_conf(data)
    base = {"CNI_CONTAINERID": "agt1", "CNI_NETNS": pod.path, "CNI_IFNAME": "eth0",
            "CNI_PATH": exe_dir, **extra_env}
    steps: list[tuple[str, dict, bytes]] = []
    enc = lambda d: json.dumps(d).encode()  # noqa: E731
    steps.append((bridge, {**base, "CNI_COMMAND": "ADD"}, enc(conf)))
    steps.append((bridge, {**base, "CNI_COMMAND": "ADD", "CNI_IFNAME": "bad/name"}, enc(conf)))
    steps.append((bridge, {**base, "CNI_COMMAND": "ADD", "CNI_NETNS": ""}, enc(conf)))
    steps.append((bridge, {**base, "CNI_COMMAND": "ADD"}, b"{not json"))
    steps.append((bridge, {**base, "CNI_COMMAND": "ADD"}, enc({**conf, "cniVersion": "9.9.9"})))
    steps.append((bridge, {**base, "CNI_COMMAND": "ADD", "CNI_ARGS": "FOO=1"}, enc(conf)))
    hl_conf = {"cniVersion": "1.0.0", "name": "agtipam", "type": "host-local",
               "ipam": {"type": "host-local", "subnet": "10.78.0.0/24", "dataDir": data}}
    steps.append((hl, {**base, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "agt2"}, enc(hl_conf)))
    steps.append((hl, {**base, "CNI_COMMAND": "DEL", "CNI_CONTAINERID": "agt2"}, enc(hl_conf)))
    out: list[tuple[int, str]] = []
    prev = None
    for exe, env, stdin in steps:
        p = call(exe, node, env, stdin)
        text = p.stdout.decode()
        if prev is None and p.returncode == 0 and exe == bridge:
            prev = json.loads(text)
        out.append((p.returncode, text))
    # CHECK and DEL with the ADD's result, DEL again, DEL with the netns gone
    with_prev = enc({**conf, "prevResult": prev})
    for env in ({**base, "CNI_COMMAND": "CHECK"}, {**base, "CNI_COMMAND": "DEL"},
                {**base, "CNI_COMMAND": "DEL"},
                {**base, "CNI_COMMAND": "DEL", "CNI_NETNS": pod.path + "-gone"}):
        p = call(bridge, node, env, with_prev)
        out.append((p.returncode, p.stdout.decode()))
    norm = []
    for rc, text in out:
        text = MAC.sub('"mac": "<mac>"', text)
        text = text.replace(pod.path, "<pod>").replace(node.path, "<node>").replace(data, "<data>")
        norm.append((rc, text))
    return norm


def test_same_calls_same_answers_through_the_agent_and_in_process(
        agent, agent_ns, make_netns, installed_plugins, tmp_path):
    results = {}
    for mode in ("agent", "in-process"):
        node, pod = make_netns("node"), make_netns("pod")
        data = str(tmp_path / f"ipam-{mode}")
        before = agent.served()
        extra = ({"CNILAB_AGENT_SOCKET": agent.sock} if mode == "agent"
                 else {"CNILAB_AGENT": "off", "CNILAB_AGENT_SOCKET": agent.sock})
        results[mode] = _session(installed_plugins, node, pod, data, extra)
        served = agent.served() - before
        assert served == (12 if mode == "agent" else 0), (mode, served)
        if mode == "agent":
            # the bridge was made in the caller's node namespace, not in the agent's
            assert subprocess.run(["ip", "-n", node.name, "link", "show", "agtbr0"],
                                  capture_output=True).returncode == 0
            assert subprocess.run(["ip", "-n", agent_ns.name, "link", "show", "agtbr0"],
                                  capture_output=True).returncode != 0
    assert results["agent"] == results["in-process"]
    rcs = [rc for rc, _ in results["agent"]]
    assert rcs[0] == 0 and rcs[6] == 0 and rcs[7] == 0         # the good calls worked
    assert all(rc != 0 for rc in rcs[1:6])                      # the bad ones failed alike
    assert rcs[8:] == [0, 0, 0, 0]                              # CHECK, DEL, DEL, DEL


# ---- a dying agent ---------------------------------------------------------------------
def test_agent_killed_between_calls_later_calls_fall_back(agent, node, pod, probe_exe,
                                                          tmp_path):
    assert call(probe_exe, node, probe_env("ADD", pod, agent.sock, "k1"),
                probe_conf(tmp_path)).returncode == 0
    agent.kill()
    for cid in ("k2", "k3"):
        p = call(probe_exe, node, probe_env("ADD", pod, agent.sock, cid), probe_conf(tmp_path))
        assert p.returncode == 0, p.stdout
    p = call(probe_exe, node, probe_env("DEL", pod, agent.sock, "k1"), probe_conf(tmp_path))
    assert p.returncode == 0
    ms = markers(tmp_path)
    assert ms[0]["pid"] in agent.workers
    assert all(m["pid"] not in agent.workers for m in ms[1:])   # done in-process
    assert all(m["netns"] == ns_inode(node) for m in ms)        # still in the node netns


def _kill_during(agent, node, pod, probe_exe, tmp_path, command: str):
    env = probe_env(command, pod, agent.sock, "mid1")
    proc = subprocess.Popen(nsutil.exec_argv(node.name, [probe_exe]), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env={**env, "PATH": "/usr/bin:/bin"})
    proc.stdin.write(probe_conf(tmp_path, sleep=30))
    proc.stdin.close()
    deadline = time.monotonic() + 20
    while True:
        st = ag.ping(agent.sock)
        if st and st["in_flight_total"]:
            break
        assert time.monotonic() < deadline, "the call never reached the agent"
        time.sleep(0.05)
    agent.kill()
    out = proc.stdout.read()
    proc.wait(30)
    return proc.returncode, out


def test_agent_killed_during_del_the_del_is_redone_in_process(agent, node, pod, probe_exe,
                                                              tmp_path):
    rc, out = _kill_during(agent, node, pod, probe_exe, tmp_path, "DEL")
    assert rc == 0 and out == b""
    (m,) = markers(tmp_path)                   # the agent died before writing its marker
    assert m["command"] == "DEL" and m["pid"] not in agent.workers
    assert m["netns"] == ns_inode(node)


def test_agent_killed_during_add_reports_try_again(agent, node, pod, probe_exe, tmp_path):
    rc, out = _kill_during(agent, node, pod, probe_exe, tmp_path, "ADD")
    err = json.loads(out)
    assert rc == 1 and err["code"] == 11 and err["cniVersion"] == "1.0.0"
    assert markers(tmp_path) == []             # not silently redone


def test_a_dead_worker_is_replaced_and_calls_keep_working(agent, node, pod, probe_exe,
                                                          tmp_path):
    victim = sorted(agent.workers)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:
        st = ag.ping(agent.sock)
        if st and victim not in st["workers"] and len(st["workers"]) == st["processes"]:
            break
        assert time.monotonic() < deadline, "the master did not replace the worker"
        time.sleep(0.05)
    for cid in ("w1", "w2", "w3"):
        p = call(probe_exe, node, probe_env("ADD", pod, agent.sock, cid), probe_conf(tmp_path))
        assert p.returncode == 0
    assert {m["pid"] for m in markers(tmp_path)} <= set(st["workers"])
    assert st["pid"] == agent.pid
