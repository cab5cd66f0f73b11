"""`netlab agent run|start|stop|status|unit`: the resident node agent.

    netlab agent run    [--socket P] [--workers N] [--call-timeout S] [--on-code-change M]
    netlab agent start  [--socket P] [--log FILE] [--wait S] [same options as run]
    netlab agent stop   [--socket P] [--timeout S]
    netlab agent status [--socket P] [--json]
    netlab agent unit   [--socket P] [--python PY] [--unit-dir DIR]

The socket defaults to $CNILAB_AGENT_SOCKET, else /run/cnilab/agent.sock.
Labs and tests use a socket of their own (e.g. in the lab directory), so they
never touch a node-wide agent. Plugin executables find the agent through the
same variable (see plugins/core/launcher.py).

``start_agent``/``stop_agent`` are the API netlab uses to run one agent for a
lab; ``install_systemd_unit`` is what `netlab cni install --systemd` calls.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from plugins.core import launcher

from .exitcodes import FAILED, NOT_RUNNING, OK

UNIT_NAME = "cnilab-agent.service"
DEFAULT_UNIT_DIR = "/etc/systemd/system"


def _agent_module():
    from plugins.core import agent
    return agent


def _socket(args: argparse.Namespace) -> str:
    return os.path.abspath(args.socket or launcher.socket_path())


def _agent_argv(python: str, sock: str, *, workers: int = 64, call_timeout: float = 120.0,
                on_code_change: str = "exit", processes: int | None = None) -> list[str]:
    argv = [python, "-m", "plugins.core.agent", "--socket", sock, "--workers", str(workers),
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


def _is_our_agent(pid: int, sock: str) -> bool:
    """Is ``pid`` an agent process serving ``sock``? (checked before any signal)"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"plugins.core.agent" in argv and sock.encode() in argv


def start_agent(sock: str, *, log_path: str | None = None, wait: float = 15.0,
                workers: int = 64, call_timeout: float = 120.0,
                on_code_change: str = "exit", python: str | None = None,
                processes: int | None = None) -> int:
    """Start a detached agent serving ``sock``; returns its pid once it answers.

    Already running and healthy at ``sock``: returns that agent's pid.
    Raises RuntimeError when it does not come up within ``wait`` seconds.
    """
    agent = _agent_module()
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
    agent = _agent_module()
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
    if pid is not None and _is_our_agent(pid, sock):
        try:
            os.kill(pid, signal.SIGTERM)
            stopped = True
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _is_our_agent(pid, sock):
            try:
                os.waitpid(pid, os.WNOHANG)     # reap it if it is our child
            except ChildProcessError:
                pass
            time.sleep(0.05)
        if _is_our_agent(pid, sock):
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
    from .fsutil import write_atomic
    path = os.path.join(unit_dir, UNIT_NAME)
    write_atomic(path, unit_text(sock, python, root).encode(), mode=0o644)
    return path


# ---- verbs ----------------------------------------------------------------------------
def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=64,
                   help="concurrent calls per process (default 64)")
    p.add_argument("--processes", type=int, default=None,
                   help="serving processes (default: CPUs, at most 4)")
    p.add_argument("--call-timeout", type=float, default=120.0,
                   help="seconds one call may run before the agent exits (default 120)")
    p.add_argument("--on-code-change", choices=("exit", "refuse", "ignore"), default="exit",
                   help="when the loaded code changes on disk (default: exit when idle)")


def cmd_run(args: argparse.Namespace) -> int:
    args.socket = _socket(args)
    if args.processes is None:
        args.processes = _agent_module().default_processes()
    return _agent_module().run_from_args(args)


def cmd_start(args: argparse.Namespace) -> int:
    sock = _socket(args)
    try:
        pid = start_agent(sock, log_path=args.log, wait=args.wait, workers=args.workers,
                          call_timeout=args.call_timeout, on_code_change=args.on_code_change,
                          processes=args.processes)
    except (RuntimeError, OSError) as e:
        print(f"netlab agent start: {e}", file=sys.stderr)
        return FAILED
    print(f"agent pid {pid} serving {sock}")
    return OK


def cmd_stop(args: argparse.Namespace) -> int:
    sock = _socket(args)
    if stop_agent(sock, timeout=args.timeout):
        print(f"agent serving {sock} stopped")
    else:
        print(f"no agent was serving {sock}")
    return OK


def cmd_status(args: argparse.Namespace) -> int:
    sock = _socket(args)
    st = _agent_module().ping(sock, timeout=args.timeout)
    if args.json:
        print(json.dumps(st if st is not None else {"socket": sock, "running": False}, indent=2))
    elif st is None:
        print(f"no agent answers on {sock} (plugins run in-process)")
    else:
        state = "healthy" if st.get("healthy") else ("stale code" if st.get("stale") else "stopping")
        print(f"agent pid {st['pid']} on {sock}: {state}; up {st['uptime']:.0f}s, "
              f"{st.get('processes', 1)} serving process(es), "
              f"served {st['served']} calls ({st['failed']} failed, {st['refused']} refused), "
              f"{st.get('in_flight_total', 0)} in flight; code {st['code_root']}")
    if st is None:
        return NOT_RUNNING
    return OK if st.get("healthy") else FAILED


def cmd_unit(args: argparse.Namespace) -> int:
    sock = _socket(args)
    if args.unit_dir:
        print(install_systemd_unit(args.unit_dir, sock=sock, python=args.python))
    else:
        sys.stdout.write(unit_text(sock, args.python))
    return OK


def register(subparsers) -> None:
    p = subparsers.add_parser("agent", help="the resident node agent (fast plugin calls)",
                              description=__doc__.split(" Plugin executables")[0].strip(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="agent_command", metavar="VERB")

    def verb(name: str, func, help_text: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_text)
        q.add_argument("--socket", default=None,
                       help=f"socket path (default: ${launcher.SOCKET_ENV} or "
                            f"{launcher.DEFAULT_SOCKET})")
        q.set_defaults(func=func)
        return q

    q = verb("run", cmd_run, "serve in the foreground (what the systemd unit runs)")
    _add_run_options(q)
    q = verb("start", cmd_start, "start a detached agent and wait until it answers")
    _add_run_options(q)
    q.add_argument("--log", default=None, help="log file (default: SOCKET.log)")
    q.add_argument("--wait", type=float, default=15.0, help="seconds to wait for it (default 15)")
    q = verb("stop", cmd_stop, "stop the agent serving the socket")
    q.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for calls in flight (default 30)")
    q = verb("status", cmd_status, "health check (exit 0 healthy, 1 unhealthy, 3 not running)")
    q.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
    q.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer (default 2)")
    q = verb("unit", cmd_unit, "print (or write into --unit-dir) the systemd unit")
    q.add_argument("--python", default=None, help="interpreter (default: this one)")
    q.add_argument("--unit-dir", default=None, help="write the unit there instead of printing it")
