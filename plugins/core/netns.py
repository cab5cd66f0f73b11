"""Enter a network namespace for a block of code and always come back.

setns(2) changes only the calling thread's namespace, so this works in the
single-threaded plugin process and in the agent's worker threads alike.
Sockets opened inside stay bound to that namespace after we return.
"""
from __future__ import annotations

import ctypes
import errno
import os
from contextlib import contextmanager

from .errors import CNIError, UNKNOWN_CONTAINER

TYPE_CHECKING = False       # not from typing: importing it costs ~2 ms per plugin exec
if TYPE_CHECKING:
    from typing import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsGone(CNIError):
    """The namespace path does not exist (or is no longer a namespace)."""

    def __init__(self, path: str, why: str = "does not exist") -> None:
        super().__init__(UNKNOWN_CONTAINER, f"network namespace {path} {why}")
        self.path = path


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


NS_GET_NSTYPE = 0xB703      # ioctl on an nsfs fd: the namespace's CLONE_NEW* type


def _is_netns(fd: int) -> bool:
    import fcntl
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:             # ENOTTY: a regular file, a directory, /dev/null...
        return False


def open_netns(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsGone(path) from None
    if not _is_netns(fd):
        os.close(fd)
        raise NetnsGone(path, "is not a network namespace")
    return fd


def exists(path: str) -> bool:
    if not path:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return _is_netns(fd)
    finally:
        os.close(fd)


@contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the block inside the network namespace at ``path``."""
    target = open_netns(path)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            setns(target)
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise NetnsGone(path, "is not a network namespace") from None
            raise
        try:
            yield
        finally:
            try:
                setns(own)
            except OSError:
                # Staying in the wrong namespace would make every later step lie.
                os._exit(70)
    finally:
        os.close(target)
        os.close(own)


def same_as_current(path: str) -> bool:
    try:
        a = os.stat(path)
        b = os.stat("/proc/thread-self/ns/net")
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
