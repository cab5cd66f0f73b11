"""Deleting conntrack entries (in the calling thread's network namespace).

Used by portmap after ADD: a UDP flow that reached the node's host port before
the DNAT rule existed keeps its conntrack entry (delivered locally or dropped)
and would blackhole the new mapping until it times out.

Primary path: the ``conntrack`` tool (conntrack-tools, a few ms per call);
fallback: pyroute2's ctnetlink socket (dump filtered by protocol and original
destination port, delete each entry), which costs ~150 ms of imports.
"""
from __future__ import annotations

import shutil
import socket
import subprocess

IPPROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132}
AF = {4: socket.AF_INET, 6: socket.AF_INET6}


def delete_by_dport(port: int, protocol: str = "udp", family: int = 4) -> int:
    """Delete every entry whose original tuple has this protocol and destination port.

    Returns the number of entries deleted. Raises OSError on failure.
    """
    if shutil.which("conntrack") is not None:
        try:
            return _delete_tool(port, protocol, family)
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return _delete_pyroute2(port, protocol, family)
    except ImportError as e:
        raise OSError(f"conntrack delete failed: {e}") from None


def _delete_pyroute2(port: int, protocol: str, family: int) -> int:
    from pyroute2 import Conntrack
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    want = NFCTAttrTuple(family=AF[family], proto=IPPROTO[protocol], dport=port)
    n = 0
    ct = Conntrack(nfgen_family=AF[family])
    try:
        entries = [e for e in ct.dump_entries(tuple_orig=want)
                   if e.tuple_orig.proto == IPPROTO[protocol] and e.tuple_orig.dport == port]
        for e in entries:
            try:
                ct.delete(e)
                n += 1
            except NetlinkError as err:
                if err.code != 2:         # ENOENT: it expired meanwhile
                    raise OSError(err.code, f"conntrack delete: {err}") from None
    except NetlinkError as err:
        raise OSError(err.code, f"conntrack dump: {err}") from None
    finally:
        ct.close()
    return n


def _delete_tool(port: int, protocol: str, family: int) -> int:
    p = subprocess.run(["conntrack", "-D", "-f", "ipv6" if family == 6 else "ipv4",
                        "-p", protocol, "--orig-port-dst", str(port)],
                       capture_output=True, text=True, timeout=30)
    # exit 1 with "0 flow entries" means nothing matched: not an error
    out = (p.stderr or "") + (p.stdout or "")
    for line in out.splitlines():
        if "flow entries have been deleted" in line:
            try:
                return int(line.split()[-6])
            except (ValueError, IndexError):
                return 0
    if p.returncode not in (0, 1):
        raise OSError(f"conntrack -D failed ({p.returncode}): {out.strip()[:300]}")
    return 0
