"""Per-namespace sysctls through /proc/sys (resolved in the calling thread's netns)."""
from __future__ import annotations

import os


def _path(key: str) -> str:
    parts = key.replace(".", "/") if "/" not in key else key
    if ".." in parts.split("/"):
        raise ValueError(f"bad sysctl key {key!r}")
    return os.path.join("/proc/sys", parts)


def read(key: str) -> str:
    with open(_path(key)) as f:
        return f.read().strip()


def write(key: str, value: str | int) -> None:
    with open(_path(key), "w") as f:
        f.write(str(value))


def ensure(key: str, value: str | int) -> bool:
    """Set ``key`` to ``value`` if it differs; True when it was changed."""
    if read(key) == str(value):
        return False
    write(key, value)
    return True


def iface_key(family: int, ifname: str, leaf: str) -> str:
    """e.g. iface_key(4, 'eth0', 'arp_notify') -> net/ipv4/conf/eth0/arp_notify"""
    fam = "ipv6" if family == 6 else "ipv4"
    return f"net/{fam}/conf/{ifname}/{leaf}"
