"""Named network namespaces (``ip netns`` style, under /var/run/netns).

The only place netlab and the tests create or delete namespaces. Deletion is
by exact name and tolerates "already gone".
"""
from __future__ import annotations

import os
import subprocess
from typing import Sequence

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
