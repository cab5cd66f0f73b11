"""Running the resident node agent: start, stop, the systemd unit.

``start_agent``/``stop_agent`` are what netlab uses to run one agent for a
lab (and the benchmarks for theirs); ``install_systemd_unit`` is what
`netlab cni install --systemd` calls. The agent itself is cninode.agent.
Imports the standard library and plugins.core only.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from cninode import launcher

UNIT_NAME = "cnilab-agent.service"
DEFAULT_UNIT_DIR = "/etc/systemd/system"


def agent_module():
    from cninode import agent
    return agent


def _agent_argv(python: str, sock: str, *, workers: int = 64, call_timeout: float = 120.0,
                on_code_change: str = "exit", processes: int | None = None) -> list[str]:
    argv = [python, "-m", "cninode.agent", "--socket", sock, "--workers", str(workers),
            "--call-timeout", f"{call_timeout:g}", "--on-code-change", on_code_change]
    if processes:
        argv += ["--processes", str(processes)]
    return argv


def _agent_env() -> dict[str, str]:
    env = dict(os.environ)
    root = launcher.code_root()
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _pid_file(sock: str) -> str:
    return sock + ".pid"


def is_our_agent(pid: int, sock: str) -> bool:
    """Is ``pid`` an agent process serving ``sock``? (checked before any signal)"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"cninode.agent" in argv and sock.encode() in argv


def start_agent(sock: str, *, log_path: str | None = None, wait: float = 15.0,
                workers: int = 64, call_timeout: float = 120.0,
                on_code_change: str = "exit", python: str | None = None,
                processes: int | None = None) -> int:
    """Start a detached agent serving ``sock``; returns its pid once it answers.

    Already running and healthy at ``sock``: returns that agent's pid.
    Raises RuntimeError when it does not come up within ``wait`` seconds.
    """
    agent = agent_module()
    sock = os.path.abspath(sock)
    st = agent.ping(sock, timeout=1.0)
    if st is not None and st.get("healthy"):
        return int(st["pid"])
    agent.secure_socket_dir(sock)
    log_path = log_path or sock + ".log"
    argv = _agent_argv(python or sys.executable, sock, workers=workers,
                       call_timeout=call_timeout, on_code_change=on_code_change,
                       processes=processes)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                cwd="/", env=_agent_env(), start_new_session=True)
    finally:
        os.close(fd)
    with open(_pid_file(sock), "w") as f:
        f.write(f"{proc.pid}\n")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the agent exited with status {proc.returncode}; see {log_path}")
        st = agent.ping(sock, timeout=0.5)
        if st is not None and st.get("pid") == proc.pid:
            return proc.pid
        time.sleep(0.05)
    proc.terminate()
    raise RuntimeError(f"the agent did not answer on {sock} within {wait:g}s; see {log_path}")


def stop_agent(sock: str, *, timeout: float = 30.0) -> bool:
    """Stop the agent serving ``sock`` (SIGTERM, then wait). True if one was stopped."""
    agent = agent_module()
    sock = os.path.abspath(sock)
    pid = None
    st = agent.ping(sock, timeout=1.0)
    if st is not None:
        pid = int(st["pid"])
    else:
        try:
            with open(_pid_file(sock)) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            pid = None
    stopped = False
    if pid is not None and is_our_agent(pid, sock):
        try:
            os.kill(pid, signal.SIGTERM)
            stopped = True
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and is_our_agent(pid, sock):
            try:
                os.waitpid(pid, os.WNOHANG)     # reap it if it is our child
            except ChildProcessError:
                pass
            time.sleep(0.05)
        if is_our_agent(pid, sock):
            os.kill(pid, signal.SIGKILL)
    for path in (_pid_file(sock),):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    # A socket left by a killed agent: remove it only if it is a dead socket.
    try:
        import stat as stat_mod
        if stat_mod.S_ISSOCK(os.lstat(sock).st_mode) and agent.ping(sock, timeout=0.5) is None:
            os.unlink(sock)
    except OSError:
        pass
    return stopped


def unit_text(sock: str = launcher.DEFAULT_SOCKET, python: str | None = None,
              root: str | None = None) -> str:
    """A systemd unit running the agent (Restart=always: restarts pick up upgrades)."""
    python = python or sys.executable
    root = root or launcher.code_root()
    if not os.path.isabs(python) or not os.path.isabs(sock):
        raise ValueError("interpreter and socket paths must be absolute")
    argv = " ".join(_agent_argv(python, sock)[1:])
    runtime_dir = ""
    if os.path.dirname(sock).startswith("/run/") and os.path.dirname(sock).count("/") == 2:
        runtime_dir = (f"RuntimeDirectory={os.path.basename(os.path.dirname(sock))}\n"
                       "RuntimeDirectoryMode=0700\nRuntimeDirectoryPreserve=no\n")
    return ("# Written by `netlab cni install --systemd` (cnilab). Optional: without it,\n"
            "# the plugin executables do the work in-process.\n"
            "[Unit]\n"
            "Description=cnilab CNI node agent (serves the thin plugin launchers)\n"
            "Documentation=file://" + os.path.join(root, "docs/adr/0010-thin-launcher-and-resident-agent.md") + "\n"
            "After=local-fs.target\n\n"
            "[Service]\n"
            "Type=simple\n"
            f"Environment=PYTHONPATH={root}\n"
            f"ExecStart={python} {argv}\n"
            "Restart=always\n"
            "RestartSec=1\n"
            "UMask=0022\n"
            f"{runtime_dir}"
            "KillSignal=SIGTERM\n"
            "TimeoutStopSec=150\n\n"
            "[Install]\n"
            "WantedBy=multi-user.target\n")


def install_systemd_unit(unit_dir: str = DEFAULT_UNIT_DIR, *, sock: str = launcher.DEFAULT_SOCKET,
                         python: str | None = None, root: str | None = None) -> str:
    """Write (or rewrite) the unit file; returns its path. Enabling it is left to
    the operator (`systemctl daemon-reload && systemctl enable --now cnilab-agent`)."""
    from plugins.core.fsutil import write_atomic
    path = os.path.join(unit_dir, UNIT_NAME)
    write_atomic(path, unit_text(sock, python, root).encode(), mode=0o644)
    return path
