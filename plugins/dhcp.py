"""The dhcp IPAM plugin: ADD, DEL, CHECK by asking the dhcp daemon.

The plugin side is lean on purpose (every CNI call is a process start): it
reads ``ipam.daemonSocketPath`` (default /run/cni/dhcp.sock, as the
reference), sends the call to the daemon (plugins/dhcp_daemon) over that
unix socket and prints what the daemon answers. DHCP itself, the lease table
and the renewals live in the daemon: ``dhcp daemon [-socketpath P]``.
"""
from __future__ import annotations

import json
import os

from plugins.core.config import Fields
from plugins.core.errors import CNIError, NOT_AVAILABLE, TRY_AGAIN_LATER
from plugins.core.types import Result

DEFAULT_SOCKET = "/run/cni/dhcp.sock"
# The daemon answers within its own DHCP timeout (default 10 s); this only
# bounds a daemon that accepted the call and then hangs.
REPLY_TIMEOUT = 120.0


def socket_path(conf) -> str:
    return Fields(conf.ipam, "ipam").str("daemonSocketPath") or DEFAULT_SOCKET


def _call(call, method: str, *, unreachable: int = TRY_AGAIN_LATER) -> dict:
    import socket
    path = socket_path(call.conf)
    a = call.args
    Fields(call.conf.ipam, "ipam").int("priority", 0, lo=0)     # bad config fails here, not in the daemon
    req = {"method": method, "containerID": a.container_id,
           "netns": os.path.abspath(a.netns) if a.netns else "", "ifname": a.ifname,
           "stdin": a.stdin.decode()}
    if method == "status":
        req = {"method": method}
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(5.0)
        try:
            s.connect(path)
        except OSError as e:
            raise CNIError(unreachable, f"dhcp: cannot reach the dhcp daemon at {path}",
                           f"{e.strerror or e}; is `dhcp daemon -socketpath {path}` running?") from None
        s.settimeout(REPLY_TIMEOUT)
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except OSError as e:
        raise CNIError(TRY_AGAIN_LATER, f"dhcp: the dhcp daemon at {path} did not answer",
                       str(e)) from None
    finally:
        s.close()
    try:
        reply = json.loads(buf)
    except ValueError:
        raise CNIError(TRY_AGAIN_LATER, f"dhcp: the dhcp daemon at {path} closed the call "
                       "without an answer", buf[:200].decode(errors="replace")) from None
    err = reply.get("error")
    if err:
        raise CNIError(int(err.get("code", 999)), err.get("msg", "dhcp daemon error"),
                       err.get("details", ""))
    return reply


def add(call) -> Result:
    res = Result.from_dict(_call(call, "allocate")["result"])
    res.cni_version = call.conf.cni_version
    return res


def delete(call) -> None:
    _call(call, "release")


def check(call) -> None:
    _call(call, "check")


def gc(call) -> None:
    """Nothing to collect: leases live in the daemon and end with DEL (or the
    daemon's exit); the reference's GC is a no-op as well."""


def status(call) -> None:
    """Ready when the daemon answers (code 50 otherwise)."""
    _call(call, "status", unreachable=NOT_AVAILABLE)
