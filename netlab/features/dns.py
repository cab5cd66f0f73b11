"""The lab's DNS server: Debian's dnsmasq (package dnsmasq-base) in its own
namespace, serving only the lab's records (``--no-resolv --no-hosts``: no
upstream, nothing from this machine), authoritative for the cluster domain
(``--local=/<domain>/``: unknown names there are NXDOMAIN, never forwarded).

The process is started with ``ip netns exec`` (so it sees the namespace's own
/etc/netns files), stays in the foreground of its own session, and is
recorded in the state file with its pid and start time before we wait for it,
so ``down`` stops exactly that process.
"""
from __future__ import annotations

import os
import time
from typing import Callable

from ..base.state import proc_starttime


class DNSError(Exception):
    pass


def listening_udp(pid: int, address: str, port: int = 53) -> bool:
    """Is ``pid``'s namespace listening on address:port/udp (from /proc/PID/net/udp)?"""
    import ipaddress
    want_port = f"{port:04X}"
    a = ipaddress.ip_address(address)
    # /proc/net/udp{,6}: the address as 32-bit words in host (little-endian) order
    b = a.packed
    want_ip = "".join(b[i:i + 4][::-1].hex().upper() for i in range(0, len(b), 4))
    anyaddr = "0" * len(want_ip)
    try:
        with open(f"/proc/{pid}/net/udp" + ("6" if a.version == 6 else ""), encoding="ascii") as f:
            next(f)
            for line in f:
                local = line.split()[1]
                ip, prt = local.split(":")
                if prt == want_port and ip in (want_ip, anyaddr):
                    return True
    except OSError:
        return False
    return False


def start(ns: str, argv: list[str], address: str, out_path: str, *,
          record: Callable[..., dict], timeout: float = 5.0) -> tuple[int, str | None]:
    """Start dnsmasq in ``ns``; returns (pid, starttime) once it answers on :53."""
    from ..base.proc import StartError, start_recorded
    try:
        pid = start_recorded(ns, argv, "dnsmasq", out_path,
                             lambda pid: listening_udp(pid, address), record=record,
                             timeout=timeout)
    except StartError as e:
        msg = str(e)
        if msg.endswith("was not ready within " + f"{timeout:g}s"):
            msg = f"dnsmasq did not start listening on {address}:53 within {timeout:g}s"
        raise DNSError(msg) from None
    return pid, proc_starttime(pid)


def query_log(lab_dir: str) -> list[str]:
    """The query lines dnsmasq logged (``--log-queries``)."""
    try:
        with open(os.path.join(lab_dir, "dns.log"), encoding="utf-8", errors="replace") as f:
            return [ln.rstrip("\n") for ln in f if " query[" in ln]
    except OSError:
        return []


def write_hosts(path: str, records: list[tuple[str, str]]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for name, addr in records:
            f.write(f"{addr}\t{name}\n")
    os.replace(tmp, path)


def _reads(log_path: str, hosts_path: str) -> int:
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            return f.read().count(f"read {hosts_path}")
    except OSError:
        return 0


def reload(pid: int, starttime: str | None, *, log_path: str = "", hosts_path: str = "",
           timeout: float = 2.0) -> bool:
    """SIGHUP: dnsmasq re-reads its --addn-hosts file (only our recorded process);
    with log_path/hosts_path, wait until its log says it has read the file."""
    import signal
    if not pid or proc_starttime(pid) != starttime:
        return False
    before = _reads(log_path, hosts_path) if log_path else 0
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while log_path and time.monotonic() < deadline:
        if _reads(log_path, hosts_path) > before:
            return True
        time.sleep(0.01)
    return not log_path
