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
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, text=True)
    if loopback_up:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True,
                       capture_output=True, text=True)
    return path(name)


def delete(name: str) -> None:
    if not exists(name):
        return
    subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True)


def exec_argv(name: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", name, *argv]


def run(name: str, argv: Sequence[str], *, check: bool = True, timeout: float = 60,
        input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(exec_argv(name, argv), capture_output=True, text=True, check=check,
                          timeout=timeout, input=input)
