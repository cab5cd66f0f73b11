"""The entry point of an installed plugin executable: a thin, stdlib-only launcher.

A runtime execs ``bridge`` (or any of our plugins); the executable calls
``main("bridge")``. The launcher first offers the call to the resident node
agent (cninode/agent.py) over a root-only unix socket, passing the
environment, stdin and its own network namespace (an fd, SCM_RIGHTS). The
agent runs the very same dispatcher (skel.dispatch) in a worker thread that
entered that namespace, with pyroute2 and libnftables already loaded, and
sends back stdout, stderr and the exit status.

When the agent is absent, refuses the call (busy, stale code, other code
tree, protocol version) or does not answer the handshake in time, the
launcher does the work itself, in-process, through the same dispatcher. The
only case where it cannot silently fall back is an ADD the agent had
already started when it died: redoing it here could double-apply half-made
changes, so the runtime gets error 11 (try again later) and will DEL/retry
as it does for any failed ADD. DEL, CHECK, GC, STATUS and VERSION are safe to
redo and are redone in-process.

This module imports only ``sys`` and ``posix`` (built in) at load time and
``_socket`` (the C module, not ``socket``, which pulls in enum/selectors) on
the agent path,
so the fast path costs an interpreter start plus a round trip. The
in-process path imports the dispatcher, which imports plugin modules (and
pyroute2, nftables) only after the input is valid and the command needs
them.

Wire protocol (version ``PROTOCOL``), all integers big-endian:

  request   MAGIC(4) PROTOCOL(2) kind(1) then four u32 lengths and the four
            fields: plugin name, code root, env block (NUL-separated
            K=V, bytes), stdin.  kind b"C" = a CNI call (the netns fd rides
            on the first byte as SCM_RIGHTS), b"P" = a health check.
  agent     b"F" u32 len reason   refused, nothing done: fall back
            b"A"                  accepted and ready (already in our netns)
  launcher  b"G"                  go: from here on the call belongs to the agent
  agent     b"R" i32 rc u32 len stdout u32 len stderr, the bytes
  ping      b"P" u32 len JSON status
"""
# No ``from __future__`` and no ``os`` here: with ``-S`` neither is loaded at
# start-up and together they are ~1 ms of a ~10 ms call. ``posix`` is built in.
import posix
import sys

PROTOCOL = 1
MAGIC = b"CNLA"
DEFAULT_SOCKET = "/run/cnilab/agent.sock"
SOCKET_ENV = "CNILAB_AGENT_SOCKET"
# "off" (or 0/no/false) disables the agent path entirely.
AGENT_ENV = "CNILAB_AGENT"
# Seconds: for the agent's "accepted" answer, and for the result once accepted.
ACK_TIMEOUT_ENV = "CNILAB_AGENT_ACK_TIMEOUT"
RESULT_TIMEOUT_ENV = "CNILAB_AGENT_TIMEOUT"
DEFAULT_ACK_TIMEOUT = 5.0
DEFAULT_RESULT_TIMEOUT = 150.0
# Commands that are safe to redo in-process if the agent died while running them.
REDO_SAFE = frozenset({"DEL", "CHECK", "GC", "STATUS", "VERSION"})
KIND_CALL = b"C"
KIND_PING = b"P"
HEADER_LEN = 4 + 2 + 1 + 4 * 4
MAX_FIELD = 16 << 20         # 16 MiB: no CNI config or env comes near it


class AgentLost(Exception):
    """The agent accepted the call and then went away (died, timed out)."""


def code_root() -> str:
    """The directory holding the ``plugins`` package and this ``cninode`` package."""
    here = __file__
    if not here.startswith("/"):
        import os
        here = os.path.abspath(here)
    return here.rsplit("/", 2)[0]


def _getenv(name: str, env=None) -> str:
    if env is not None:
        return env.get(name, "")
    v = posix.environ.get(name.encode())
    return v.decode("utf-8", "surrogateescape") if v is not None else ""


def socket_path(env=None) -> str:
    return _getenv(SOCKET_ENV, env) or DEFAULT_SOCKET


def agent_enabled(env=None) -> bool:
    return _getenv(AGENT_ENV, env).lower() not in ("0", "off", "no", "false")


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def encode_request(kind: bytes, plugin: str, root: str, env_block: bytes, stdin: bytes) -> bytes:
    fields = (plugin.encode(), root.encode(), env_block, stdin)
    return (MAGIC + PROTOCOL.to_bytes(2, "big") + kind
            + b"".join(_u32(len(f)) for f in fields) + b"".join(fields))


def env_block(environb) -> bytes:
    """An environment of bytes (os.environb, posix.environ) as NUL-separated K=V."""
    return b"\0".join(k + b"=" + v for k, v in environb.items())


def _float_env(name: str, default: float) -> float:
    try:
        v = float(_getenv(name))
        return v if v > 0 else default
    except ValueError:
        return default


def _recv_exact(s, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("agent closed the connection")
        buf += chunk
    return buf


def call_agent(path: str, plugin: str, environb, stdin: bytes, *,
               ack_timeout: float, result_timeout: float, netns_fd=None):
    """Run one call through the agent.

    Returns (rc, stdout bytes, stderr bytes), or None when the agent did not
    take the call (nothing was done: fall back). Raises AgentLost when the
    agent took the call and then failed to answer. ``netns_fd``: the network
    namespace the call runs in (default: this process's own).
    """
    import _socket
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            s.settimeout(ack_timeout)
            s.connect(path)
            fd = netns_fd if netns_fd is not None else posix.open("/proc/self/ns/net",
                                                                 posix.O_RDONLY | posix.O_CLOEXEC)
            try:
                req = encode_request(KIND_CALL, plugin, code_root(), env_block(environb), stdin)
                sent = s.sendmsg([req[:HEADER_LEN]],
                                 [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                   fd.to_bytes(4, sys.byteorder, signed=True))])
            finally:
                if netns_fd is None:
                    posix.close(fd)
            s.sendall(req[sent:])
            status = _recv_exact(s, 1)
            if status != b"A":
                return None          # b"F" (refused, with a reason) or garbage: fall back
            s.sendall(b"G")
        except (OSError, EOFError):
            return None              # absent, refused, unhealthy, timed out: nothing started
        try:
            s.settimeout(result_timeout)
            head = _recv_exact(s, 13)
            if head[:1] != b"R":
                raise AgentLost(f"unexpected reply {head[:1]!r}")
            rc = int.from_bytes(head[1:5], "big", signed=True)
            out_len = int.from_bytes(head[5:9], "big")
            err_len = int.from_bytes(head[9:13], "big")
            if out_len > MAX_FIELD or err_len > MAX_FIELD:
                raise AgentLost("oversized reply")
            out = _recv_exact(s, out_len)
            err = _recv_exact(s, err_len)
            return rc, out, err
        except (OSError, EOFError) as e:
            raise AgentLost(str(e) or type(e).__name__) from None
    finally:
        s.close()


# Two packages whose __init__ costs a short-lived process far more than the
# part our plugins use: pyroute2's imports every family it supports (ndb,
# ipdb, conntrack, wireguard, nl80211, ...: ~110 ms here, of which the rtnl
# part we use is ~75 ms), and unittest's (runner, loader, argparse, difflib)
# comes along only because pyroute2's rtnl socket module does
# ``from unittest import mock``. Each gets a stand-in package module that
# imports submodules on demand, resolves a few well-known names from their
# submodules, and runs the real __init__ (exactly as shipped) the first time
# anything else is asked of it. Only the in-process path of the launcher does
# this; the agent imports everything normally, once.
_SHORTCUTS = {
    "pyroute2": {
        "pyroute2.iproute": ("IPRoute", "AsyncIPRoute", "NetNS", "RawIPRoute",
                             "ChaoticIPRoute", "IPBatch"),
        "pyroute2.conntrack": ("Conntrack", "AsyncConntrack", "ConntrackEntry"),
        "pyroute2.netlink.exceptions": ("NetlinkError", "NetlinkDecodeError",
                                        "NetlinkDumpInterrupted", "ChaoticException"),
    },
    "unittest": {},
}


def lean_package(package: str) -> bool:
    """Install the stand-in for ``package`` (only if nothing imported it yet).

    Uses the import system's frozen core directly (no ``importlib.util``,
    which alone drags in collections/contextlib/functools).
    """
    if package in sys.modules:
        return False
    import _frozen_importlib as bootstrap
    try:
        spec = bootstrap._find_spec(package, None)
    except (ImportError, ValueError):
        return False
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return False
    mod = bootstrap.module_from_spec(spec)
    where = {name: sub for sub, names in _SHORTCUTS.get(package, {}).items() for name in names}
    state = {"full": False}

    def _import(fullname: str):
        __import__(fullname)
        return sys.modules[fullname]

    def __getattr__(name: str):
        sub = where.get(name)
        if sub is not None:
            return getattr(_import(sub), name)
        if not name.startswith("__") and bootstrap._find_spec(f"{package}.{name}", mod.__path__):
            return _import(f"{package}.{name}")          # a submodule
        if not state["full"]:
            state["full"] = True
            spec.loader.exec_module(mod)       # the real package, exactly as shipped
            if name in mod.__dict__:
                return mod.__dict__[name]
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    mod.__getattr__ = __getattr__
    sys.modules[package] = mod
    return True


def run_in_process(plugin: str, env, stdin: bytes) -> tuple[str, int]:
    """The same call through the dispatcher in this process."""
    if sys.flags.no_site and not any(p.endswith("-packages") for p in sys.path):
        # Started with -S and nobody put site-packages on sys.path (netlab's
        # installer does): the plugins need them (pyroute2, nftables).
        import site
        site.main()
    if env.get("CNI_COMMAND") != "VERSION" and env.get("CNILAB_LEAN_IMPORTS", "1") != "0":
        for package in _SHORTCUTS:
            lean_package(package)
    from plugins.core.skel import dispatch
    return dispatch(plugin, env, stdin, log=sys.stderr.write)


def lost_error(plugin: str, command: str, stdin: bytes, why: str) -> str:
    from plugins.core.errors import CNIError, TRY_AGAIN_LATER
    from plugins.core.skel import error_version
    err = CNIError(TRY_AGAIN_LATER,
                   f"the cnilab node agent stopped answering during {plugin} {command}",
                   f"{why}; the agent may have applied part of the call: DEL and retry")
    return err.to_json(error_version(stdin))


def _read_stdin() -> bytes:
    try:
        return sys.stdin.buffer.read()
    except (AttributeError, OSError, ValueError):
        return b""           # no stdin at all (closed fd): same as empty input


def main(plugin: str) -> None:
    if plugin == "dhcp" and sys.argv[1:2] == ["daemon"]:
        # `dhcp daemon ...`: the same executable runs the lease daemon (as the reference)
        from plugins.dhcp_daemon.server import main as daemon_main
        daemon_main(sys.argv[2:])
        return
    command = _getenv("CNI_COMMAND")
    stdin = b"" if command == "VERSION" else _read_stdin()
    # VERSION never goes to the agent: in-process it needs no plugin module
    # (skel answers it with a few small imports), cheaper than a round trip.
    if command != "VERSION" and agent_enabled():
        try:
            reply = call_agent(socket_path(), plugin, posix.environ, stdin,
                               ack_timeout=_float_env(ACK_TIMEOUT_ENV, DEFAULT_ACK_TIMEOUT),
                               result_timeout=_float_env(RESULT_TIMEOUT_ENV,
                                                         DEFAULT_RESULT_TIMEOUT))
        except AgentLost as e:
            if command not in REDO_SAFE:
                sys.stdout.write(lost_error(plugin, command, stdin, str(e)) + "\n")
                sys.stdout.flush()
                sys.exit(1)
            reply = None         # safe to redo: do it here
        if reply is not None:
            rc, out, err = reply
            if err:
                sys.stderr.buffer.write(err)
                sys.stderr.flush()
            if out:
                sys.stdout.buffer.write(out + b"\n")
            sys.stdout.flush()
            # Output flushed, nothing else to release: skip the interpreter's
            # teardown (~0.5-1.5 ms of a ~9 ms call; docs/performance.md).
            posix._exit(rc)
    import os
    out_s, code = run_in_process(plugin, os.environ, stdin)
    if out_s:
        sys.stdout.write(out_s + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    if command != "VERSION":
        # The call is complete and its output flushed; skip the interpreter's
        # teardown of pyroute2 & co. (~15-20 ms of CPU). Kernel objects (flocks,
        # netlink sockets, fds) are released by the exit itself; our plugins
        # write files with context managers, never rely on finalisers.
        os._exit(code)
    sys.exit(code)
