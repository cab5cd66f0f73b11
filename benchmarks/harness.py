"""Shared plumbing for the side-by-side benchmarks (ours vs /usr/lib/cni).

Everything here runs in throwaway namespaces with tmp data dirs:
``Scratch`` creates uniquely named node/pod namespaces and a tmp dir and
removes exactly those at exit. Plugins are exec'd inside a node namespace
the way a runtime does (env + stdin), one process per call, and measured
with os.wait4 (wall time and the executable's peak RSS).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Iterator, Mapping, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from netlab.base import namespaces as nsutil          # noqa: E402
from plugins.core import netns as core_netns  # noqa: E402

REF_DIR = "/usr/lib/cni"
PLUGINS = ("bridge", "host-local", "portmap", "bandwidth", "vxlan")
REFERENCE_HAS = ("bridge", "host-local", "portmap", "bandwidth")


def reference_available() -> bool:
    return all(os.access(os.path.join(REF_DIR, p), os.X_OK) for p in REFERENCE_HAS)


def machine_description() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) // 1024} MiB"
    except (OSError, ValueError, IndexError):
        pass
    try:
        ref = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "containernetworking-plugins"],
                             capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        ref = "?"
    u = os.uname()
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem} RAM; Linux {u.release}; "
            f"Python {sys.version.split()[0]}; reference containernetworking-plugins {ref}")


class Scratch:
    """Throwaway namespaces + a tmp dir, removed (exactly those) on exit."""

    def __init__(self, tag: str) -> None:
        self.tag = f"{tag}-{secrets.token_hex(2)}{os.getpid() % 1000}"
        self.namespaces: list[str] = []
        self.dir = tempfile.mkdtemp(prefix=f"cnilab-{tag}-")
        os.chmod(self.dir, 0o700)

    def netns(self, role: str) -> str:
        name = f"b{self.tag}-{role}"
        nsutil.create(name)
        self.namespaces.append(name)
        return nsutil.path(name)

    def mkdir(self, *parts: str) -> str:
        p = os.path.join(self.dir, *parts)
        os.makedirs(p, exist_ok=True)
        return p

    def path(self, *parts: str) -> str:
        p = os.path.join(self.dir, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def close(self) -> None:
        for name in reversed(self.namespaces):
            nsutil.delete(name)
        self.namespaces.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def install_ours(directory: str) -> str:
    """Our executables, exactly as `netlab cni install` writes them."""
    from cninode.install import install
    install(directory)
    return directory


def exec_measured(exe: str, env: Mapping[str, str], stdin: bytes, *,
                  host_netns: str | None = None, timeout: float = 120.0
                  ) -> tuple[int, bytes, bytes, float, int]:
    """Exec one plugin call; returns (rc, stdout, stderr, seconds, peak RSS KiB).

    The child starts inside ``host_netns`` (this thread enters it around the
    spawn; a spawned child inherits the spawning thread's namespaces), and is
    reaped with os.wait4 for its own peak RSS (ru_maxrss includes children it
    waited for, e.g. the Go bridge's host-local exec).
    """
    ctx = core_netns.entered(host_netns) if host_netns else contextlib.nullcontext()
    with tempfile.TemporaryFile() as errf:
        t0 = time.perf_counter()
        with ctx:
            p = subprocess.Popen([exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=errf, env=dict(env), cwd="/")
        try:
            out, _ = _communicate_no_wait(p, stdin, timeout)
        finally:
            _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        errf.seek(0)
        err = errf.read()
    return p.returncode, out, err, dt, ru.ru_maxrss


# ---- peak RSS of the executable itself --------------------------------------------------
# ru_maxrss from wait4 is useless for a child of a big Python process: Linux
# keeps the pre-exec address space's high-water mark (ours, ~20 MB) in the
# child's maxrss across execve. So the memory pass traces the child (ptrace:
# stop at exit) and reads VmHWM, the peak RSS of the exec'd image alone, from
# /proc/PID/status just before it goes away; then reaps it with os.wait4.
_PTRACE_TRACEME, _PTRACE_CONT, _PTRACE_SETOPTIONS = 0, 7, 0x4200
_PTRACE_O_TRACEEXIT, _PTRACE_EVENT_EXIT = 0x40, 6
_libc = None


def _load_libc():
    global _libc
    if _libc is None:
        import ctypes
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.ptrace.restype = ctypes.c_long
        _libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    return _libc


def _ptrace(req: int, pid: int, data: int = 0) -> int:
    return _load_libc().ptrace(req, pid, None, data)


def _vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def exec_peak_rss(exe: str, env: Mapping[str, str], stdin: bytes, *,
                  host_netns: str | None = None) -> tuple[int, int]:
    """Exec one call under ptrace; returns (exit status, peak RSS KiB of the image)."""
    import signal
    _load_libc()   # in the parent: nothing but the syscall between fork and exec

    def traceme() -> None:
        if _ptrace(_PTRACE_TRACEME, 0) != 0:
            os._exit(126)

    ctx = core_netns.entered(host_netns) if host_netns else contextlib.nullcontext()
    with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout:
        fin.write(stdin)
        fin.seek(0)
        with ctx:
            p = subprocess.Popen([exe], stdin=fin, stdout=fout, stderr=subprocess.DEVNULL,
                                 env=dict(env), cwd="/", preexec_fn=traceme)
        hwm, seen_exec = -1, False
        while True:
            _, status, _ru = os.wait4(p.pid, 0)
            if not os.WIFSTOPPED(status):
                break
            sig, event = os.WSTOPSIG(status), (status >> 16) & 0xFF
            deliver = 0
            if sig == signal.SIGTRAP and event == _PTRACE_EVENT_EXIT:
                hwm = _vm_hwm_kib(p.pid)
            elif sig == signal.SIGTRAP and not seen_exec:
                seen_exec = True
                _ptrace(_PTRACE_SETOPTIONS, p.pid, _PTRACE_O_TRACEEXIT)
            else:
                deliver = sig        # e.g. Go's SIGURG preemption: hand it over
            _ptrace(_PTRACE_CONT, p.pid, deliver)
        p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, hwm


def _communicate_no_wait(p: subprocess.Popen, stdin: bytes, timeout: float):
    """Feed stdin, read stdout to EOF, but leave reaping to os.wait4."""
    try:
        if stdin:
            p.stdin.write(stdin)
        p.stdin.close()
    except BrokenPipeError:
        pass
    out = p.stdout.read()
    p.stdout.close()
    return out, b""


def cni_env(command: str, cni_path: str, *, container_id: str = "", netns: str = "",
            ifname: str = "", extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_PATH": cni_path,
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    if container_id:
        env["CNI_CONTAINERID"] = container_id
    if netns:
        env["CNI_NETNS"] = netns
    if ifname:
        env["CNI_IFNAME"] = ifname
    env.update(extra or {})
    return env


# ---- the agent, for the "ours + agent" variant ---------------------------------------
@contextlib.contextmanager
def running_agent(scratch: Scratch, processes: int | None = None) -> Iterator[str]:
    """A private agent on a socket inside the scratch dir; yields the socket path.

    ``--on-code-change ignore``: other people edit the tree while benchmarks
    run; the served counter (``agent_served``) proves calls went through it.
    """
    from cninode.agentctl import start_agent, stop_agent
    sock = scratch.path("agent", "agent.sock")
    start_agent(sock, on_code_change="ignore", log_path=scratch.path("agent", "agent.log"),
                processes=processes)
    try:
        yield sock
    finally:
        stop_agent(sock)


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's reaped children so far."""
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def agent_cpu(sock: str) -> float:
    """CPU seconds used so far by the agent's processes (master and workers)."""
    from cninode import agent
    st = agent.ping(sock)
    if st is None:
        return float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in {st["pid"], *st.get("workers", [])}:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / tick   # utime stime cutime cstime
        except (OSError, ValueError, IndexError):
            pass
    return total


def agent_served(sock: str) -> int:
    from cninode import agent
    st = agent.ping(sock)
    return -1 if st is None else int(st["served"])


# ---- statistics and tables --------------------------------------------------------------
def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def fmt_ms(x: float) -> str:
    return "n/a" if x != x else f"{1000 * x:.1f}"


def fmt_ratio(a: float, b: float) -> str:
    if a != a or b != b or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([line, sep, *body])


def dump_json(path: str | None, data: object) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
