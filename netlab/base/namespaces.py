"""Named network namespaces (``ip netns`` style, under /var/run/netns), and
running things in them.

The only place netlab and the tests create or delete namespaces. Deletion is
by exact name and tolerates "already gone". ``run_in``/``in_ns`` run a command
in a namespace (setns in the child), ``in_thread`` calls a function in a
thread that entered one, ``ipn`` is ``ip -n NS``; entering uses
``plugins.core.netns.setns``. Imports nothing else of netlab.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from typing import Any, Callable, Sequence

from plugins.core import netns as cns

NETNS_DIR = "/var/run/netns"


def path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def create(name: str, *, loopback_up: bool = True) -> str:
    if "/" in name or not name or len(name) > 64:
        raise ValueError(f"bad namespace name {name!r}")
    if _netns_dir_mounted():
        _create_here(name, loopback_up)
        return path(name)
    # the first one: ``ip netns add`` also makes NETNS_DIR a shared mount point
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, text=True)
    if loopback_up:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True,
                       capture_output=True, text=True)
    return path(name)


def delete(name: str) -> None:
    """What ``ip netns del`` does, without its process: detach the bind mount
    (the kernel frees the namespace once nothing else holds it) and unlink."""
    p = path(name)
    if not os.path.exists(p):
        return
    _libc().umount2(p.encode(), _MNT_DETACH)      # as ip: a failed umount is no error by itself
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass


# ---- in-process creation (what ``ip netns add`` does, in a thread) ----------------

_CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MNT_DETACH = 2
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_cache: dict = {}          # "libc": the C library; "mounted": NETNS_DIR seen as a mount point


def _libc():
    if "libc" not in _cache:
        import ctypes
        _cache["libc"] = ctypes.CDLL(None, use_errno=True)
    return _cache["libc"]


def _netns_dir_mounted() -> bool:
    """Is NETNS_DIR a mount point already (made shared by an earlier ``ip netns add``)?"""
    if _cache.get("mounted"):
        return True
    want = {os.path.realpath(NETNS_DIR), NETNS_DIR}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            ok = any(line.split()[4] in want for line in f)
    except OSError:
        ok = False
    _cache["mounted"] = ok
    return ok


def _create_here(name: str, loopback_up: bool) -> None:
    """unshare(CLONE_NEWNET) in a short-lived thread (namespaces are per thread),
    bind its /proc/thread-self/ns/net onto NETNS_DIR/NAME, bring lo up there."""
    import threading
    p = path(name)
    fd = os.open(p, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
    os.close(fd)
    err: list[BaseException] = []

    def work() -> None:
        import ctypes
        libc = _libc()
        try:
            if libc.unshare(_CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"unshare(CLONE_NEWNET): {os.strerror(e)}")
            if libc.mount(b"/proc/thread-self/ns/net", p.encode(), b"none", _MS_BIND, None) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"bind mount onto {p}: {os.strerror(e)}")
            if loopback_up:
                _loopback_up()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            err.append(e)
    t = threading.Thread(target=work, name=f"netns-{name}")
    t.start()
    t.join()
    if err:
        delete(name)
        raise err[0]


def _loopback_up() -> None:
    import fcntl
    import socket
    import struct
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH", b"lo", 0).ljust(40, b"\0")
        flags = struct.unpack_from("H", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req), 16)[0]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP).ljust(40, b"\0"))


def exec_argv(name: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", name, *argv]


def run(name: str, argv: Sequence[str], *, check: bool = True, timeout: float = 60,
        input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(exec_argv(name, argv), capture_output=True, text=True, check=check,
                          timeout=timeout, input=input)


class BuildError(Exception):
    """A lab command failed (the build step that ran it fails with it)."""


def sh(argv: list[str], *, timeout: float = 30) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise BuildError(f"{' '.join(argv)}: {p.stderr.strip() or p.stdout.strip() or 'exit %d' % p.returncode}")
    return p.stdout


def ipn(ns: str, *args: str) -> str:
    """``ip -n NS ...``: never without a namespace."""
    if not ns:
        raise BuildError("refusing to run ip without a namespace")
    return sh(["ip", "-n", ns, *args])


def ipn_batch(ns: str, lines: list[str]) -> None:
    if not lines:
        return
    p = subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n",
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise BuildError(f"ip -n {ns} -batch: {p.stderr.strip()}")


def in_ns(ns: str, argv: list[str], *, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command inside the named namespace (setns in the child, no mount games)."""
    fd = os.open(path(ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           preexec_fn=lambda: cns.setns(fd))
    finally:
        os.close(fd)
    if check and p.returncode != 0:
        raise BuildError(f"[{ns}] {' '.join(argv)}: {p.stderr.strip() or p.stdout.strip()}")
    return p


SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17


def tx_offload_off(ns: str, dev: str) -> None:
    """Valid checksums in captures: veths otherwise leave them to 'hardware'.

    ``ethtool -K DEV tx off`` as one ioctl from this thread (no process per
    device): ETHTOOL_STXCSUM clears the device's checksum features, and the
    kernel drops the features that need them (TSO, ...), as ethtool does."""
    import ctypes
    import fcntl
    import socket
    import struct
    value = ctypes.create_string_buffer(struct.pack("=II", ETHTOOL_STXCSUM, 0), 8)
    ifreq = struct.pack("16sP", dev.encode()[:15], ctypes.addressof(value)).ljust(40, b"\0")
    try:
        with cns.entered(path(ns)):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # bound to that namespace
        with s:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
    except (OSError, cns.NetnsGone):
        pass        # as before with ethtool: a device that cannot do it keeps its offloads


def run_in(ns: str, argv: list[str], *, timeout: float = 30, etc: bool = False) -> subprocess.CompletedProcess:
    """Run a command in a namespace. ``etc=True`` goes through ``ip netns exec`` so
    the namespace's /etc/netns/<ns>/resolv.conf and hosts are in place."""
    if etc:
        return subprocess.run(exec_argv(ns, argv), capture_output=True, text=True, timeout=timeout)
    fd = os.open(path(ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=lambda: cns.setns(fd))
    finally:
        os.close(fd)


def in_thread(ns: str, fn: Callable[[], Any], timeout: float = 30) -> Any:
    """Call ``fn`` in a fresh thread that entered ``ns`` first (its sockets live there)."""
    out: dict[str, Any] = {}

    def body():
        try:
            fd = os.open(path(ns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                cns.setns(fd)
            finally:
                os.close(fd)
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001
            out["error"] = e
    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"call in {ns} did not finish in {timeout}s")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def tentative_addresses(ns: str) -> list[str]:
    """IPv6 addresses of ``ns`` that are tentative or failed DAD ("ADDR dev [dadfailed]")."""
    out = []
    for line in ipn(ns, "-6", "-o", "addr", "show", "tentative").splitlines():
        f = line.split()
        if len(f) >= 4:
            out.append(f"{f[3]} {f[1]}" + (" dadfailed" if "dadfailed" in f else ""))
    return out


def wait_not_tentative(namespaces: list[str], timeout: float = 10.0) -> dict[str, list[str]]:
    """Poll until no namespace has a tentative IPv6 address; returns what is left
    ({} once settled). A dadfailed address never settles: returned at once."""
    deadline = time.monotonic() + timeout
    pending = list(namespaces)
    left: dict[str, list[str]] = {}
    while True:
        left = {}
        for ns in pending:
            addrs = tentative_addresses(ns)
            if addrs:
                left[ns] = addrs
        if not left or time.monotonic() > deadline or any("dadfailed" in a for v in left.values() for a in v):
            return left
        pending = list(left)
        time.sleep(0.05)


def nft_in(ns: str, text: str) -> subprocess.CompletedProcess:
    """``nft -f -`` with ``text`` inside namespace ``ns`` (setns in the child)."""
    fd = os.open(path(ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        return subprocess.run(["nft", "-f", "-"], input=text, capture_output=True, text=True, timeout=30,
                              preexec_fn=lambda: cns.setns(fd))
    finally:
        os.close(fd)
