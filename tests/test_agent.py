"""The node agent and the thin launcher: protocol, fallback, security, unit file.

Pure tests (no namespaces). Tests that start an agent need root (the agent
serves uid 0 peers only) and use a socket in their own tmp dir.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from cninode import agentctl
from cninode import agent as ag
from cninode import launcher

ROOT = launcher.code_root()
IS_ROOT = os.geteuid() == 0


def run_launcher(plugin: str, env: dict, stdin: bytes = b"", timeout: float = 60):
    code = ("import sys; sys.path.insert(0, %r); from cninode.launcher import main; "
            "main(%r)" % (ROOT, plugin))
    return subprocess.run([sys.executable, "-IS", "-c", code], env=env, input=stdin,
                          capture_output=True, timeout=timeout, cwd="/")


def in_process(plugin: str, env: dict, stdin: bytes = b""):
    from plugins.core import skel
    out, rc = skel.dispatch(plugin, env, stdin)
    return rc, (out + "\n").encode() if out else b""


# ---- protocol pieces ------------------------------------------------------------------
def test_env_block_round_trip():
    envb = {b"CNI_COMMAND": b"ADD", b"CNI_ARGS": b"A=1;B=x=y", b"EMPTY": b""}
    assert ag.parse_env_block(launcher.env_block(envb)) == {
        "CNI_COMMAND": "ADD", "CNI_ARGS": "A=1;B=x=y", "EMPTY": ""}
    assert ag.parse_env_block(b"") == {}


def test_request_header_layout():
    req = launcher.encode_request(launcher.KIND_CALL, "bridge", "/r", b"K=V", b"{}")
    assert req[:4] == launcher.MAGIC
    assert int.from_bytes(req[4:6], "big") == launcher.PROTOCOL
    assert req[6:7] == b"C"
    lens = [int.from_bytes(req[7 + 4 * i:11 + 4 * i], "big") for i in range(4)]
    assert lens == [6, 2, 3, 2]
    assert req[launcher.HEADER_LEN:] == b"bridge/rK=V{}"


def test_socket_path_and_switch_from_env():
    assert launcher.socket_path({}) == launcher.DEFAULT_SOCKET == "/run/cnilab/agent.sock"
    assert launcher.socket_path({"CNILAB_AGENT_SOCKET": "/tmp/x.sock"}) == "/tmp/x.sock"
    assert launcher.agent_enabled({})
    for off in ("off", "0", "no", "false", "OFF"):
        assert not launcher.agent_enabled({"CNILAB_AGENT": off})


def test_launcher_imports_only_the_standard_library():
    """The fast path must not drag in the dispatcher, json, socket.py or pyroute2."""
    code = ("import sys; sys.path.insert(0, %r); before = set(sys.modules); "
            "import cninode.launcher as l; "
            "print(sorted(set(sys.modules) - before))" % ROOT)
    p = subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True,
                       check=True)
    new = set(json.loads(p.stdout.replace("'", '"')))
    heavy = {"json", "socket", "selectors", "enum", "typing", "dataclasses", "re",
             "plugins.core.skel", "plugins.core.config", "pyroute2", "nftables", "scapy"}
    assert not new & heavy, new & heavy
    assert {m for m in new if m.startswith(("plugins", "cninode"))} == {"cninode", "cninode.launcher"}


def test_no_agent_falls_back_in_process_with_identical_output(tmp_path):
    env = {"CNI_COMMAND": "ADD", "CNILAB_AGENT_SOCKET": str(tmp_path / "none.sock")}
    stdin = b'{"cniVersion": "1.0.0", "name": "n", "type": "bridge"}'
    p = run_launcher("bridge", env, stdin)
    rc, out = in_process("bridge", env, stdin)
    assert (p.returncode, p.stdout) == (rc, out) == (1, out)
    assert json.loads(out)["code"] == 4


def test_version_is_answered_without_the_agent(tmp_path):
    p = run_launcher("portmap", {"CNI_COMMAND": "VERSION",
                                 "CNILAB_AGENT_SOCKET": str(tmp_path / "none.sock")})
    assert p.returncode == 0 and "1.1.0" in json.loads(p.stdout)["supportedVersions"]


def test_a_socket_nobody_listens_on_means_fallback(tmp_path):
    path = str(tmp_path / "dead.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)                       # bound, never listening: connect is refused
    try:
        env = {"CNI_COMMAND": "DEL", "CNILAB_AGENT_SOCKET": path}
        p = run_launcher("bridge", env, b"not json")
        rc, out = in_process("bridge", env, b"not json")
        assert (p.returncode, p.stdout) == (rc, out)
    finally:
        s.close()


# ---- a fake agent: what the launcher does with each answer ------------------------------
class FakeAgent:
    """Accepts one connection and answers with a script of bytes (then maybe dies)."""

    def __init__(self, path: str, replies: list[bytes], die_after: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.replies = replies
        self.got: dict = {}
        self.t = threading.Thread(target=self.serve, daemon=True)
        self.t.start()

    def serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            msg, anc, _f, _a = conn.recvmsg(launcher.HEADER_LEN, socket.CMSG_SPACE(16))
            self.got["fds"] = sum(len(d) // 4 for _l, _t, d in anc)
            for _l, _t, d in anc:
                for i in range(len(d) // 4):
                    os.close(int.from_bytes(d[4 * i:4 * i + 4], sys.byteorder))
            lens = [int.from_bytes(msg[7 + 4 * i:11 + 4 * i], "big") for i in range(4)]
            body = b""
            while len(body) < sum(lens):
                body += conn.recv(65536)
            self.got["plugin"] = body[:lens[0]].decode()
            for r in self.replies:
                if r == b"<wait-go>":
                    self.got["go"] = conn.recv(1)
                else:
                    conn.sendall(r)

    def close(self) -> None:
        self.t.join(5)
        self.sock.close()


def _r(rc: int, out: bytes, err: bytes = b"") -> bytes:
    return (b"R" + rc.to_bytes(4, "big", signed=True) + len(out).to_bytes(4, "big")
            + len(err).to_bytes(4, "big") + out + err)


def test_launcher_prints_what_the_agent_returns(tmp_path):
    path = str(tmp_path / "a.sock")
    fake = FakeAgent(path, [b"A", b"<wait-go>", _r(3, b'{"x": 1}', b"warn\n")])
    p = run_launcher("bridge", {"CNI_COMMAND": "DEL", "CNILAB_AGENT_SOCKET": path}, b"{}")
    fake.close()
    assert p.returncode == 3
    assert p.stdout == b'{"x": 1}\n' and p.stderr == b"warn\n"
    assert fake.got == {"fds": 1, "plugin": "bridge", "go": b"G"}


def test_refusal_means_fallback(tmp_path):
    path = str(tmp_path / "a.sock")
    fake = FakeAgent(path, [b"F" + (4).to_bytes(4, "big") + b"busy"])
    env = {"CNI_COMMAND": "ADD", "CNILAB_AGENT_SOCKET": path}
    p = run_launcher("bridge", env, b"{}")
    fake.close()
    rc, out = in_process("bridge", env, b"{}")
    assert (p.returncode, p.stdout) == (rc, out)


def test_agent_dying_during_add_is_try_again_not_a_silent_redo(tmp_path):
    path = str(tmp_path / "a.sock")
    fake = FakeAgent(path, [b"A", b"<wait-go>"])          # then closes: died mid-call
    p = run_launcher("bridge", {"CNI_COMMAND": "ADD", "CNILAB_AGENT_SOCKET": path},
                     b'{"cniVersion": "0.4.0"}')
    fake.close()
    err = json.loads(p.stdout)
    assert p.returncode == 1 and err["code"] == 11 and err["cniVersion"] == "0.4.0"
    assert "DEL and retry" in err["details"]


def test_agent_dying_during_del_is_redone_in_process(tmp_path):
    path = str(tmp_path / "a.sock")
    fake = FakeAgent(path, [b"A", b"<wait-go>"])
    env = {"CNI_COMMAND": "DEL", "CNILAB_AGENT_SOCKET": path}
    p = run_launcher("bridge", env, b"{bad")
    fake.close()
    rc, out = in_process("bridge", env, b"{bad")
    assert (p.returncode, p.stdout) == (rc, out)


def test_an_agent_that_never_acknowledges_is_abandoned(tmp_path):
    path = str(tmp_path / "a.sock")
    fake = FakeAgent(path, [])        # reads the request, says nothing, closes later
    env = {"CNI_COMMAND": "ADD", "CNILAB_AGENT_SOCKET": path,
           "CNILAB_AGENT_ACK_TIMEOUT": "0.3"}
    t0 = time.monotonic()
    p = run_launcher("bridge", env, b"{}")
    fake.close()
    assert time.monotonic() - t0 < 20
    rc, out = in_process("bridge", env, b"{}")
    assert (p.returncode, p.stdout) == (rc, out)


# ---- staleness, unit file -----------------------------------------------------------------
def test_stale_code_is_detected(tmp_path):
    f = tmp_path / "mod.py"
    f.write_text("x = 1\n")
    a = ag.Agent(str(tmp_path / "s" / "a.sock"), on_code_change="refuse", warm=False)
    a.files = [str(f)]
    a.fingerprint = ag.code_fingerprint(a.files)
    assert not a._check_stale()
    f.write_text("x = 22\n")
    assert a._check_stale() and a.stale and not a.stopping.is_set()
    b = ag.Agent(str(tmp_path / "s" / "b.sock"), on_code_change="exit", warm=False)
    b.files = [str(f)]
    b.fingerprint = ag.code_fingerprint(b.files)
    f.unlink()
    assert b._check_stale() and b.stopping.is_set()
    c = ag.Agent(str(tmp_path / "s" / "c.sock"), on_code_change="ignore", warm=False)
    c.files, c.fingerprint = [str(f)], ()
    assert not c._check_stale()


def test_loaded_files_are_the_served_packages_only():
    files = ag.loaded_files(ROOT)
    assert any(f.endswith("cninode/agent.py") for f in files)
    assert all(f.startswith((os.path.join(ROOT, "plugins"), os.path.join(ROOT, "ipam"), os.path.join(ROOT, "cninode")))
               for f in files)


def test_systemd_unit(tmp_path):
    text = agentctl.unit_text("/run/cnilab/agent.sock", "/opt/venv/bin/python", "/srv/cnilab")
    assert "ExecStart=/opt/venv/bin/python -m cninode.agent --socket " \
           "/run/cnilab/agent.sock" in text
    assert "Restart=always" in text and "RuntimeDirectoryMode=0700" in text
    assert "Environment=PYTHONPATH=/srv/cnilab" in text
    path = agentctl.install_systemd_unit(str(tmp_path), sock="/run/cnilab/agent.sock",
                                          python="/opt/venv/bin/python", root="/srv/cnilab")
    assert path == str(tmp_path / "cnilab-agent.service")
    assert open(path).read() == text and stat.S_IMODE(os.stat(path).st_mode) == 0o644
    with pytest.raises(ValueError):
        agentctl.unit_text("relative.sock", "/usr/bin/python3")


def test_cli_verbs_are_registered():
    from netlab.cli.main import build_parser
    p = build_parser()
    for verb in ("run", "start", "stop", "status", "unit"):
        args = p.parse_args(["agent", verb, "--socket", "/tmp/x.sock"])
        assert callable(args.func) and args.socket == "/tmp/x.sock"


# ---- a real agent (root) ------------------------------------------------------------------
@pytest.fixture
def agent_sock(tmp_path):
    sock = str(tmp_path / "agent" / "agent.sock")
    agentctl.start_agent(sock, on_code_change="ignore")
    try:
        yield sock
    finally:
        agentctl.stop_agent(sock, timeout=10)


@pytest.mark.root
def test_socket_is_root_only(agent_sock):
    st = os.stat(agent_sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == 0
    assert stat.S_IMODE(os.stat(os.path.dirname(agent_sock)).st_mode) == 0o700
    status = ag.ping(agent_sock)
    assert status["healthy"] and status["protocol"] == launcher.PROTOCOL
    assert "pyroute2" in status["warm"] and status["code_root"] == ROOT


@pytest.mark.root
def test_non_root_peer_is_refused_even_if_the_socket_were_open():
    # Simulate an operator's chmod mistake: the file modes would let anyone in,
    # the SO_PEERCRED check still refuses.
    import shutil
    import tempfile
    top = tempfile.mkdtemp(prefix="cnilab-agtest-")
    sock = os.path.join(top, "agent", "agent.sock")
    try:
        agentctl.start_agent(sock, on_code_change="ignore")
        os.chmod(top, 0o711)
        os.chmod(os.path.dirname(sock), 0o711)
        os.chmod(sock, 0o666)
        served = ag.ping(sock)["served"]
        code = ("import os, sys, _socket; sys.path.insert(0, %r); "
                "from cninode import launcher as l; os.setgid(65534); os.setuid(65534); "
                "r = l.call_agent(%r, 'bridge', {b'CNI_COMMAND': b'DEL'}, b'{}', "
                "ack_timeout=5, result_timeout=5); print(r)" % (ROOT, sock))
        p = subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True,
                           timeout=30)
        assert p.stdout.strip() == "None", p.stderr
        assert ag.ping(sock)["served"] == served
        deadline = time.monotonic() + 5
        while True:
            with open(sock + ".log") as f:
                if "uid 65534: root only" in f.read():
                    break
            assert time.monotonic() < deadline, "the agent did not log the refusal"
            time.sleep(0.05)
    finally:
        agentctl.stop_agent(sock, timeout=10)
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.root
def test_protocol_and_code_root_mismatch_are_refused(agent_sock):
    def ask(req: bytes, with_fd: bool = True) -> bytes:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(agent_sock)
        fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        try:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))]
            s.sendmsg([req], anc if with_fd else [])
        finally:
            os.close(fd)
        data = s.recv(4096)
        s.close()
        return data

    good = launcher.encode_request(b"C", "bridge", ROOT, b"CNI_COMMAND=DEL", b"{}")
    other_proto = good[:4] + (99).to_bytes(2, "big") + good[6:]
    assert ask(other_proto).startswith(b"F") and b"protocol 99" in ask(other_proto)
    other_root = launcher.encode_request(b"C", "bridge", "/elsewhere", b"", b"{}")
    assert ask(other_root).startswith(b"F")
    assert ask(good, with_fd=False).startswith(b"F")
    assert ag.ping(agent_sock)["refused"] >= 4


@pytest.mark.root
def test_status_verb_exit_codes(agent_sock, tmp_path):
    def status(sock):
        return subprocess.run([sys.executable, "-m", "netlab", "agent", "status", "--socket",
                               sock, "--json"], capture_output=True, text=True, cwd=ROOT,
                              timeout=60)
    p = status(agent_sock)
    assert p.returncode == 0 and json.loads(p.stdout)["healthy"]
    p = status(str(tmp_path / "nothing.sock"))
    assert p.returncode == 3 and json.loads(p.stdout)["running"] is False


@pytest.mark.root
def test_start_twice_is_one_agent_and_stop_removes_the_socket(tmp_path):
    sock = str(tmp_path / "a" / "agent.sock")
    pid = agentctl.start_agent(sock, on_code_change="ignore")
    try:
        assert agentctl.start_agent(sock, on_code_change="ignore") == pid
    finally:
        assert agentctl.stop_agent(sock, timeout=10)
    assert not os.path.exists(sock) and ag.ping(sock) is None
    assert not os.path.exists(f"/proc/{pid}") or not agentctl.is_our_agent(pid, sock)
    assert agentctl.stop_agent(sock, timeout=1) is False


# ---- lean imports on the in-process path --------------------------------------------------
def test_lean_packages_load_only_what_is_used_and_stay_complete():
    code = """
import sys
sys.path.insert(0, %r)
from cninode import launcher
assert launcher.lean_package("pyroute2") and launcher.lean_package("unittest")
assert not launcher.lean_package("pyroute2")          # once only
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from unittest import mock
import pyroute2, unittest
assert IPRoute is pyroute2.iproute.IPRoute and NetlinkError.__name__ == "NetlinkError"
lean = ("pyroute2.ndb.main" not in sys.modules and "pyroute2.ipdb" not in sys.modules
        and "unittest.runner" not in sys.modules)
ipr = IPRoute(); ipr.link_lookup(ifname="lo"); ipr.close()
# anything else: the real package __init__ runs, exactly as shipped
assert pyroute2.NDB.__name__ == "NDB" and "pyroute2.ndb.main" in sys.modules
assert unittest.TestCase.__name__ == "TestCase"
print("lean" if lean else "not lean")
""" % ROOT
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "lean"


@pytest.mark.root
def test_large_stdin_and_env_cross_the_socket_intact(agent_sock):
    conf = {"cniVersion": "1.0.0", "name": "big", "type": "bridge", "pad": "x" * (3 << 20)}
    stdin = json.dumps(conf).encode()
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0",
           "CNI_ARGS": "IgnoreUnknown=1;" + "K=" + "v" * 100000, "CNILAB_AGENT_SOCKET": agent_sock}
    before = ag.ping(agent_sock)["served"]
    p = run_launcher("host-local", env, stdin)
    assert ag.ping(agent_sock)["served"] == before + 1           # it went through the agent
    rc, out = in_process("host-local", env, stdin)
    assert (p.returncode, p.stdout) == (rc, out)
