"""Reading one namespace's kernel state, for the trace's explanations.

Owns the small read-only questions asked of a namespace: a route lookup
(``route_get``, with the real input interface when asked), a neighbour
entry's state, a sysctl, a bridge FDB entry, the text of an ``ip`` command,
and ``run_ns`` to run any command inside it. Nothing here changes the
namespace.
"""
from __future__ import annotations

import json
import subprocess

from ...base.namespaces import run_in


def run_ns(ns: str, argv: list[str], timeout: float = 10) -> subprocess.CompletedProcess:
    return run_in(ns, argv, timeout=timeout)


def route_get(ns: str, dst: str, *, src: str | None = None, iif: str | None = None,
              mark: int | None = None) -> dict:
    """``ip route get`` in a namespace: {'dev','gateway','prefsrc','type'} or {'error': ...}."""
    argv = ["ip", "-n", ns, "-j", "route", "get", dst]
    if src:
        argv += ["from", src]
    if iif:
        argv += ["iif", iif]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        return {"error": (p.stderr.strip() or "failed").replace("RTNETLINK answers: ", "")}
    try:
        r = json.loads(p.stdout)[0]
    except (ValueError, IndexError):
        return {"error": p.stdout.strip()}
    return r


def fdb_port(ns: str, br: str, mac: str) -> str | None:
    """The port of bridge ``br`` that has learned ``mac`` (or None)."""
    p = subprocess.run(["ip", "netns", "exec", ns, "bridge", "fdb", "show", "br", br], capture_output=True, text=True)
    for ln in p.stdout.splitlines():
        parts = ln.split()
        if parts and parts[0].lower() == mac.lower() and "dev" in parts:
            return parts[parts.index("dev") + 1]
    return None


def vxlan_fdb(ns: str, dev: str) -> str:
    """``bridge fdb show dev DEV`` of a VXLAN device, as text."""
    return subprocess.run(["ip", "netns", "exec", ns, "bridge", "fdb", "show", "dev", dev],
                          capture_output=True, text=True).stdout


def neigh_state(ns: str, addr: str, dev: str | None) -> str | None:
    """The neighbour entry's state (REACHABLE, FAILED, INCOMPLETE, ...) or None without one."""
    argv = ["ip", "-n", ns, "-j", "neigh", "show", addr] + (["dev", dev] if dev else [])
    p = subprocess.run(argv, capture_output=True, text=True)
    try:
        e = json.loads(p.stdout or "[]")
    except ValueError:
        return None
    return e[0].get("state", [None])[0] if e else None


def sysctl(ns: str, key: str) -> str:
    """A sysctl of the namespace by its /proc/sys path (``net/ipv4/ip_forward``)."""
    p = run_ns(ns, ["cat", f"/proc/sys/{key}"])
    return p.stdout.strip()


def ip_text(ns: str, *args: str) -> str:
    """The output of ``ip -n NS ARGS...``."""
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True).stdout.rstrip()


def indent(text: str, pad: str = "    ") -> str:
    return "\n".join(pad + ln for ln in text.splitlines())
