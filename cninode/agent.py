"""The resident node agent: serves plugin calls from thin launchers.

One long-running root process per node listens on a unix socket (default
/run/cnilab/agent.sock, env CNILAB_AGENT_SOCKET), mode 0600 in a 0700
directory, and serves only peers whose SO_PEERCRED uid is 0. Each call
arrives with the launcher's environment, stdin and its network namespace as
an fd (SCM_RIGHTS). A worker thread setns(2)s into that namespace (setns is
per thread, so callers in different namespaces never disturb each other),
runs ``skel.dispatch`` (the very function the in-process path runs) and
sends back stdout, stderr and the exit status. pyroute2, libnftables and
every plugin module are imported once at start-up, which is the whole point:
a call costs a round trip plus the netlink/nftables work itself.

Safety:
- The agent never configures its own namespace; work happens only in the
  namespace the caller passed. A call without a namespace fd is refused.
- A call is refused (``F``: the launcher falls back in-process, nothing done)
  when the protocol differs, the launcher belongs to another code tree, the
  code on disk changed since the agent loaded it (stale after an upgrade:
  the agent then exits once idle so its supervisor restarts it on the new
  code), or all workers are busy.
- A watchdog ends the process if one call runs longer than ``call_timeout``
  (a wedged netlink call must not wedge the node): the launchers of calls in
  flight see the connection drop and redo DELs in-process or report ADDs as
  "try again".

See docs/adr/0010-thin-launcher-and-resident-agent.md.
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import importlib
import json
import os
import pkgutil
import signal
import socket
import stat
import struct
import sys
import threading
import time
from typing import Callable

from . import launcher as proto
from plugins.core.netns import setns

_libc = ctypes.CDLL(None, use_errno=True)
PACKAGES = ("plugins", "ipam", "cninode")          # the code the agent serves (and fingerprints)
ON_CODE_CHANGE = ("exit", "refuse", "ignore")
EXIT_STALE = 75                          # EX_TEMPFAIL: restart me on the new code
EXIT_WEDGED = 70                         # EX_SOFTWARE: a call overran call_timeout
MAX_PROCESSES = 16
ROW = 5                                   # served, refused, failed, in flight, pid
SERVED, REFUSED, FAILED, IN_FLIGHT, PID = range(ROW)
_PR_SET_PDEATHSIG = 1
_UCRED = struct.Struct("3i")


def log(msg: str) -> None:
    sys.stderr.write(f"cnilab-agent[{os.getpid()}] {msg}\n")
    sys.stderr.flush()


def loaded_files(root: str) -> list[str]:
    """Source files of the served packages that this process has imported."""
    prefixes = tuple(os.path.join(root, pkg) + os.sep for pkg in PACKAGES)
    files = []
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and f.startswith(prefixes):
            files.append(f)
    return sorted(set(files))


def code_fingerprint(files: list[str]) -> tuple:
    """(path, mtime_ns, size) of each file; a vanished file counts as changed."""
    out = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((f, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((f, -1, -1))
    return tuple(out)


_reaper_queue = None          # this process's queue of libnftables contexts to free


def defer_nft_context_frees(nftables_mod) -> None:
    """Free libnftables contexts on a reaper thread instead of in the call.

    Closing the netlink socket of a context whose transaction released kernel
    objects (deleted a rule, re-added an existing chain) waits for an RCU
    grace period in the kernel: 10-20 ms, measured, on every such call. In a
    short-lived plugin process that wait is part of its exit; in the agent it
    need not be part of the call: the transaction is committed already, only
    the socket's release is left. A context is never used again once its
    Python object is garbage, and nft_ctx_free has no thread affinity.
    ``start_nft_reaper`` must run in each serving process (after any fork);
    until it has, contexts are freed inline as before.
    """
    cls = nftables_mod.Nftables
    if getattr(cls, "_cnilab_deferred", False):
        return
    inline = cls.__del__

    def __del__(self) -> None:
        q = _reaper_queue
        ctx = getattr(self, "_Nftables__ctx", None)
        if q is None or ctx is None:
            inline(self)
        else:
            q.put((self.nft_ctx_free, ctx))

    cls.__del__ = __del__
    cls._cnilab_deferred = True


def start_nft_reaper() -> None:
    global _reaper_queue
    import queue
    q: "queue.SimpleQueue" = queue.SimpleQueue()

    def reaper() -> None:
        while True:
            free, ctx = q.get()
            try:
                free(ctx)
            except Exception:  # noqa: BLE001 - a failed free must not kill the reaper
                pass

    threading.Thread(target=reaper, name="nft-reaper", daemon=True).start()
    _reaper_queue = q


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("launcher closed the connection")
        buf += chunk
    return bytes(buf)


def parse_env_block(block: bytes) -> dict[str, str]:
    env: dict[str, str] = {}
    if not block:
        return env
    for item in block.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep and k:
            env[os.fsdecode(k)] = os.fsdecode(v)
    return env


def secure_socket_dir(path: str) -> None:
    """Create (or check) the socket's directory: root-owned, mode 0700."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeError(f"{d} is not a directory")
    if st.st_uid != os.geteuid():
        raise RuntimeError(f"{d} is owned by uid {st.st_uid}, not by us: refusing to serve there")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(d, 0o700)


def _socket_alive(path: str, timeout: float = 1.0) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class Agent:
    def __init__(self, path: str, *, workers: int = 64, call_timeout: float = 120.0,
                 handshake_timeout: float = 5.0, on_code_change: str = "exit",
                 warm: bool = True, dispatch: Callable | None = None,
                 processes: int = 1) -> None:
        self.path = os.path.abspath(path)
        self.processes = max(1, min(int(processes), MAX_PROCESSES))
        # One row per serving process (served, refused, failed, in flight, pid),
        # in memory shared across fork; each process writes only its own row.
        import multiprocessing
        self.table = multiprocessing.get_context("fork").RawArray("q", ROW * self.processes)
        self.row = 0
        self.master_pid = os.getpid()
        self.children: dict[int, int] = {}
        self.root = proto.code_root()
        self.workers = threading.BoundedSemaphore(workers)
        self.max_workers = workers
        self.call_timeout = call_timeout
        self.handshake_timeout = handshake_timeout
        if on_code_change not in ON_CODE_CHANGE:
            raise ValueError(f"on_code_change must be one of {ON_CODE_CHANGE}")
        self.on_code_change = on_code_change
        self.warm = warm
        self._dispatch = dispatch
        self.started = time.time()
        self.files: list[str] = []
        self.fingerprint: tuple = ()
        self.stale = False
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.in_flight: dict[int, tuple[float, str, str, str]] = {}
        self.warmed: list[str] = []
        self.sock: socket.socket | None = None
        self._next_id = 0

    # ---- start-up -------------------------------------------------------
    def warm_up(self) -> None:
        """Import everything a call may need, once: the dispatcher, every
        plugin module, pyroute2 and libnftables."""
        from plugins.core import skel
        from plugins.net.netlink import wire
        self._dispatch = self._dispatch or skel.dispatch
        # A link deletion returns once the kernel has unlisted the link; the RCU
        # barrier the kernel waits for before its ACK (15-25 ms) ends on a helper
        # thread (docs/adr/0039).
        wire.RELEASE_LINKS_IN_BACKGROUND = True
        if not self.warm:
            return
        for pkg in PACKAGES:
            try:
                mod = importlib.import_module(pkg)
            except ImportError:
                continue
            for info in pkgutil.walk_packages(mod.__path__, pkg + "."):
                if info.name.split(".")[-1].startswith("_") and not info.ispkg:
                    continue
                try:
                    importlib.import_module(info.name)
                    self.warmed.append(info.name)
                except Exception as e:  # noqa: BLE001 - a broken module must not stop the agent
                    log(f"warm-up: cannot import {info.name}: {type(e).__name__}: {e}")
        try:
            from pyroute2 import IPRoute  # noqa: F401
            self.warmed.append("pyroute2")
        except ImportError as e:
            log(f"warm-up: pyroute2 unavailable: {e}")
        try:
            import nftables
            nftables.Nftables()            # loads libnftables.so; contexts are per call
            self.warmed.append("nftables")
            defer_nft_context_frees(nftables)
        except Exception as e:  # noqa: BLE001
            log(f"warm-up: libnftables unavailable: {e}")

    def snapshot_code(self) -> None:
        self.files = loaded_files(self.root)
        self.fingerprint = code_fingerprint(self.files)

    def bind(self) -> socket.socket:
        secure_socket_dir(self.path)
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise RuntimeError(f"{self.path} exists and is not a socket: refusing to replace it")
            if _socket_alive(self.path):
                raise RuntimeError(f"another agent is already serving {self.path}")
            os.unlink(self.path)           # a stale socket of a dead agent
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        s.listen(128)
        self.sock = s
        return s

    # ---- serving --------------------------------------------------------
    def _bump(self, field: int, delta: int = 1) -> None:
        with self.lock:
            self.table[self.row * ROW + field] += delta

    def _total(self, field: int) -> int:
        return sum(self.table[r * ROW + field] for r in range(self.processes))

    def status(self) -> dict:
        with self.lock:
            now = time.time()
            flight = [{"plugin": p, "command": c, "container_id": cid,
                       "seconds": round(now - t0, 3)} for t0, p, c, cid in self.in_flight.values()]
        workers = [self.table[r * ROW + PID] for r in range(self.processes)]
        return {"pid": self.master_pid, "worker_pid": os.getpid(),
                "workers": [w for w in workers if w], "protocol": proto.PROTOCOL,
                "socket": self.path, "code_root": self.root, "python": sys.version.split()[0],
                "uptime": round(now - self.started, 3), "served": self._total(SERVED),
                "refused": self._total(REFUSED), "failed": self._total(FAILED),
                "in_flight": flight, "in_flight_total": self._total(IN_FLIGHT),
                "processes": self.processes, "max_workers": self.max_workers,
                "call_timeout": self.call_timeout, "stale": self.stale,
                "on_code_change": self.on_code_change,
                "stopping": self.stopping.is_set(), "warm": sorted(self.warmed),
                "healthy": not self.stale and not self.stopping.is_set()}

    def _refuse(self, conn: socket.socket, reason: str) -> None:
        self._bump(REFUSED)
        data = reason.encode()[:4000]
        try:
            conn.sendall(b"F" + len(data).to_bytes(4, "big") + data)
        except OSError:
            pass

    def _check_stale(self) -> bool:
        """Has the code this process loaded changed on disk (an upgrade)?"""
        if self.on_code_change == "ignore" or self.stale:
            return self.stale
        if code_fingerprint(self.files) != self.fingerprint:
            self.stale = True
            log("code on disk changed since start-up: refusing calls"
                + (", exiting when idle" if self.on_code_change == "exit" else ""))
            if self.on_code_change == "exit":
                self.stopping.set()
        return self.stale

    def handle(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            conn.settimeout(self.handshake_timeout)
            cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
            pid, uid, _gid = _UCRED.unpack(cred)
            if uid != 0:
                log(f"refused a connection from pid {pid} uid {uid}: root only")
                return
            fdsize = struct.calcsize("i")
            msg, anc, _flags, _ = conn.recvmsg(proto.HEADER_LEN, socket.CMSG_SPACE(8 * fdsize),
                                               socket.MSG_CMSG_CLOEXEC)
            for level, typ, data in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    n = len(data) // fdsize
                    fds.extend(struct.unpack(f"{n}i", data[:n * fdsize]))
            if len(msg) < proto.HEADER_LEN:
                msg += _recv_exact(conn, proto.HEADER_LEN - len(msg))
            if msg[:4] != proto.MAGIC:
                log(f"refused a malformed request from pid {pid}")
                return
            version = int.from_bytes(msg[4:6], "big")
            kind = msg[6:7]
            lens = [int.from_bytes(msg[7 + 4 * i:11 + 4 * i], "big") for i in range(4)]
            if any(n > proto.MAX_FIELD for n in lens):
                self._refuse(conn, "request too large")
                return
            body = _recv_exact(conn, sum(lens))
            fields, off = [], 0
            for n in lens:
                fields.append(body[off:off + n])
                off += n
            plugin, root, envb, stdin = fields
            if kind == proto.KIND_PING:
                self._check_stale()
                data = json.dumps(self.status()).encode()
                conn.sendall(b"P" + len(data).to_bytes(4, "big") + data)
                return
            if version != proto.PROTOCOL:
                self._refuse(conn, f"protocol {version} != agent protocol {proto.PROTOCOL}")
                return
            if kind != proto.KIND_CALL:
                self._refuse(conn, f"unknown request kind {kind!r}")
                return
            if root.decode(errors="replace") != self.root:
                self._refuse(conn, f"launcher from {root!r}, agent serves {self.root!r}")
                return
            if self.stopping.is_set() or self._check_stale():
                self._refuse(conn, "agent is stopping or its code is stale")
                return
            if len(fds) != 1:
                self._refuse(conn, f"expected 1 network namespace fd, got {len(fds)}")
                return
            if not self.workers.acquire(blocking=False):
                self._refuse(conn, "all workers busy")
                return
            try:
                self._serve_call(conn, fds, plugin.decode(errors="replace"), envb, stdin)
            finally:
                self.workers.release()
        except (OSError, EOFError, ValueError, struct.error) as e:
            log(f"connection dropped: {type(e).__name__}: {e}")
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            conn.close()

    def _serve_call(self, conn: socket.socket, fds: list[int], plugin: str,
                    envb: bytes, stdin: bytes) -> None:
        try:
            setns(fds[0])   # this thread only; it ends with the call, nothing to restore
        except OSError as e:
            why = "not a network namespace" if e.errno == errno.EINVAL else str(e)
            self._refuse(conn, f"cannot enter the caller's network namespace: {why}")
            return
        env = parse_env_block(envb)
        conn.sendall(b"A")
        if _recv_exact(conn, 1) != b"G":
            return                     # the launcher gave up (it falls back): do nothing
        key = threading.get_ident()
        command = env.get("CNI_COMMAND", "")
        cid = env.get("CNI_CONTAINERID", "")
        t0 = time.monotonic()
        with self.lock:
            self.in_flight[key] = (time.time(), plugin, command, cid)
        self._bump(IN_FLIGHT)
        errbuf: list[str] = []
        try:
            out, rc = self._dispatch(plugin, env, stdin, log=errbuf.append)
        finally:
            with self.lock:
                self.in_flight.pop(key, None)
            self._bump(IN_FLIGHT, -1)
            self._bump(SERVED)
        if rc != 0:
            self._bump(FAILED)
        outb = out.encode("utf-8", "surrogateescape")
        errb = "".join(errbuf).encode("utf-8", "replace")
        if errb:
            log(f"{plugin} {command} {cid}: {errb.decode()}")
        conn.settimeout(self.handshake_timeout)
        conn.sendall(b"R" + rc.to_bytes(4, "big", signed=True) + len(outb).to_bytes(4, "big")
                     + len(errb).to_bytes(4, "big") + outb + errb)
        log(f"{plugin} {command} {cid or '-'} rc={rc} {1000 * (time.monotonic() - t0):.1f}ms")

    def _watchdog(self) -> None:
        while True:
            time.sleep(0.5)
            now = time.time()
            with self.lock:
                late = [v for v in self.in_flight.values() if now - v[0] > self.call_timeout]
            if late:
                t0, p, c, cid = late[0]
                log(f"{p} {c} {cid} has run {now - t0:.0f}s > {self.call_timeout:.0f}s: "
                    "exiting so the node is not wedged")
                os._exit(EXIT_WEDGED)
            if self.stopping.is_set() and not self.in_flight:
                return

    def serve(self) -> int:
        """Bind, warm up, serve until SIGTERM/SIGINT or stale code; returns the exit code.

        With ``processes`` > 1 this process binds and warms up, then forks that
        many serving processes (copy-on-write: they start warm) which accept on
        the same socket, so calls use every CPU instead of sharing one GIL; it
        supervises them (a worker that dies is replaced) and is the one
        ``pid`` in the status. Workers die with it (PR_SET_PDEATHSIG).
        """
        t0 = time.monotonic()
        self.warm_up()
        self.snapshot_code()
        s = self.bind()
        self.master_pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stopping.set())
        log(f"serving {self.path} (protocol {proto.PROTOCOL}, code {self.root}, "
            f"{len(self.warmed)} modules warm in {time.monotonic() - t0:.2f}s, "
            f"{self.processes} process{'es' if self.processes > 1 else ''})")
        if self.processes == 1:
            self.table[PID] = os.getpid()
            try:
                code = self._serve_process(s)
            finally:
                self.close()
            log("stopped" + (" (stale code)" if self.stale else ""))
            return code
        try:
            for row in range(self.processes):
                self._spawn(s, row)
            return self._supervise(s)
        finally:
            self.close()

    def _serve_process(self, s: socket.socket) -> int:
        """Accept and serve calls in this process until stopping."""
        start_nft_reaper()
        threading.Thread(target=self._watchdog, name="watchdog", daemon=True).start()
        s.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                conn, _ = s.accept()
            except TimeoutError:
                continue
            except OSError as e:
                if e.errno in (errno.EINTR, errno.ECONNABORTED, errno.EAGAIN):
                    continue
                raise
            conn.settimeout(None)
            self._next_id += 1
            threading.Thread(target=self.handle, args=(conn,), daemon=True,
                             name=f"call-{self._next_id}").start()
        deadline = time.monotonic() + self.call_timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        return EXIT_STALE if self.stale else 0

    def _spawn(self, s: socket.socket, row: int) -> None:
        pid = os.fork()
        if pid:
            self.children[pid] = row
            return
        code = 1
        try:                                     # the serving child
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != self.master_pid:
                os._exit(1)                      # the master died before prctl
            self.row = row
            self.lock = threading.Lock()
            self.in_flight = {}
            self.workers = threading.BoundedSemaphore(self.max_workers)
            self.table[row * ROW + IN_FLIGHT] = 0
            self.table[row * ROW + PID] = os.getpid()
            self.sock = None                     # only the master unlinks the socket
            code = self._serve_process(s)
        except BaseException as e:  # noqa: BLE001 - a child must never return into the master's code
            log(f"worker crashed: {type(e).__name__}: {e}")
        finally:
            os._exit(code)

    def _supervise(self, s: socket.socket) -> int:
        while not self.stopping.is_set():
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                self.stopping.wait(0.2)      # SIGTERM sets it: stop at once, not at the next tick
                continue
            row = self.children.pop(pid, None)
            if row is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            self.table[row * ROW + IN_FLIGHT] = 0
            self.table[row * ROW + PID] = 0
            if code == EXIT_STALE:
                self.stale = True
                self.stopping.set()
                break
            log(f"worker {pid} exited with status {code}: starting another")
            self._spawn(s, row)
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.call_timeout + 5
        while self.children and time.monotonic() < deadline:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.children.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log("stopped" + (" (stale code)" if self.stale else ""))
        return EXIT_STALE if self.stale else 0

    def close(self) -> None:
        if self.sock is not None:
            try:
                st = os.lstat(self.path)
                if stat.S_ISSOCK(st.st_mode):
                    os.unlink(self.path)
            except OSError:
                pass
            self.sock.close()
            self.sock = None


# ---- client helpers (health check) ---------------------------------------
def ping(path: str, timeout: float = 2.0) -> dict | None:
    """The agent's status, or None when nothing healthy answers at ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(proto.encode_request(proto.KIND_PING, "", proto.code_root(), b"", b""))
        head = _recv_exact(s, 5)
        if head[:1] != b"P":
            return None
        return json.loads(_recv_exact(s, int.from_bytes(head[1:5], "big")))
    except (OSError, EOFError, ValueError):
        return None
    finally:
        s.close()


def default_processes() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="python -m cninode.agent",
                                     description="cnilab resident node agent (foreground)")
    p.add_argument("--socket", default=None,
                   help=f"unix socket path (default: ${proto.SOCKET_ENV} or {proto.DEFAULT_SOCKET})")
    p.add_argument("--workers", type=int, default=64,
                   help="concurrent calls per process (default 64)")
    p.add_argument("--processes", type=int, default=default_processes(),
                   help="serving processes (default: CPUs, at most 4)")
    p.add_argument("--call-timeout", type=float, default=120.0,
                   help="seconds one call may run before the agent exits (default 120)")
    p.add_argument("--on-code-change", choices=ON_CODE_CHANGE, default="exit",
                   help="when the loaded code changes on disk: exit once idle so the "
                        "supervisor restarts the agent on the new code (default); refuse "
                        "calls (launchers fall back); or ignore (development labs only)")
    return p


def run_from_args(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        log("the agent must run as root")
        return 1
    agent = Agent(args.socket or proto.socket_path(), workers=args.workers,
                  call_timeout=args.call_timeout, on_code_change=args.on_code_change,
                  processes=getattr(args, "processes", 1))
    try:
        return agent.serve()
    except RuntimeError as e:
        log(str(e))
        return 1


def main(argv: list[str] | None = None) -> int:
    return run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
