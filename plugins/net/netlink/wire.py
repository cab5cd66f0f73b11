"""The netlink wire format with the standard library: attributes, and one
request/reply exchange on a NETLINK_ROUTE socket (send, read until the ACK or
DONE, a NACK raised with the kernel's errno).

Shared by ``plugins.net.link`` (one-shot requests of DEL and loopback) and
``plugins.net.netlink.rtnl`` (the ADD path's long-lived socket). Imports
nothing of ours.
"""
from __future__ import annotations

import os
import socket
import struct

TYPE_CHECKING = False       # not from typing: importing it costs ~2 ms per plugin exec
if TYPE_CHECKING:
    from typing import Callable

NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLA_F_NESTED = 0x8000
HDR = struct.Struct("=LHHLL")          # length, type, flags, sequence, port id


def attr(atype: int, value: bytes) -> bytes:
    """One attribute (type, value), padded to 4 bytes."""
    a = struct.pack("=HH", 4 + len(value), atype) + value
    return a + b"\0" * (-len(a) % 4)


def parse_attrs(data: bytes, off: int = 0) -> dict[int, bytes]:
    """The attributes from ``off`` on: type (flags masked off) -> value."""
    out: dict[int, bytes] = {}
    n = len(data)
    while off + 4 <= n:
        alen, atype = struct.unpack_from("=HH", data, off)
        if alen < 4:
            break
        out[atype & 0x3FFF] = data[off + 4: off + alen]
        off += (alen + 3) & ~3
    return out


def open_route_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in the calling thread's network namespace, bound."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)  # 0 = NETLINK_ROUTE
    try:
        s.bind((0, 0))
    except OSError:
        s.close()
        raise
    return s


def _oserror(err: int, msg: str) -> OSError:
    return OSError(err, msg)


def exchange(sock: socket.socket, seq: int, mtype: int, payload: bytes, flags: int = 0,
             error: Callable[[int, str], OSError] = _oserror) -> list[bytes]:
    """Send one ACKed request with sequence number ``seq``; return the bodies of
    its reply messages. A NACK raises ``error(errno, message)``; messages of
    other sequence numbers are skipped."""
    sock.send(HDR.pack(16 + len(payload), mtype, NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0) + payload)
    replies: list[bytes] = []
    while True:
        data = sock.recv(1 << 16)
        off = 0
        while off + 16 <= len(data):
            mlen, t, _fl, mseq, _pid = HDR.unpack_from(data, off)
            if mlen < 16:
                break
            if mseq == seq:
                if t == NLMSG_ERROR:
                    err = struct.unpack_from("=i", data, off + 16)[0]
                    if err:
                        raise error(-err, os.strerror(-err))
                    return replies
                if t == NLMSG_DONE:
                    return replies
                replies.append(data[off + 16: off + mlen])
            off += (mlen + 3) & ~3


# ---- link deletion that returns once the link is unlisted ---------------------------

RTM_DELLINK = 17
_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, _RTNLGRP_LINK = 270, 1, 1
_IFINFO_INDEX = struct.Struct("=i")     # ifinfomsg.ifi_index, at offset 4 of the body

# Set by the node agent in its serving processes (cninode.agent); see delete_link_index.
RELEASE_LINKS_IN_BACKGROUND = False


def delete_link_index(index: int) -> None:
    """RTM_DELLINK of link ``index`` in the calling thread's network namespace;
    a NACK raises OSError with the kernel's errno.

    The kernel unlists a deleted link (a veth with its peer) within a
    millisecond and sends its RTM_DELLINK notification, but acknowledges the
    request only after an RCU barrier: 15-25 ms measured, most of a pod's DEL.
    With ``RELEASE_LINKS_IN_BACKGROUND`` (the agent, a long-lived process) the
    request runs on a helper thread and this returns as soon as the
    notification for ``index`` arrives: the name is free and nothing in the
    namespace sees the link any more (a same-named link can be created at
    once, measured). A refusal still raises; when the notification cannot be
    read (a full socket buffer) it waits for the acknowledgement, as a plugin
    process does. Both sockets are opened here, in the caller's namespace, so
    ``index`` means the same link to both.
    """
    payload = struct.pack("=BxHiII", 0, 0, index, 0, 0)
    if not RELEASE_LINKS_IN_BACKGROUND:
        with open_route_socket() as s:
            exchange(s, 1, RTM_DELLINK, payload)
        return
    import select
    import threading
    watch = open_route_socket()
    try:
        watch.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, _RTNLGRP_LINK)
        req = open_route_socket()
        outcome: list[BaseException | None] = []
        done = threading.Event()

        def release() -> None:
            try:
                exchange(req, 1, RTM_DELLINK, payload)
                outcome.append(None)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                outcome.append(e)
            finally:
                req.close()
                done.set()
        threading.Thread(target=release, name=f"release-link-{index}", daemon=True).start()
        while not done.is_set():
            if select.select([watch], [], [], 0.05)[0]:
                try:
                    data = watch.recv(1 << 16)
                except OSError:             # ENOBUFS: events lost, wait for the ACK
                    break
                if _announces_deletion(data, index):
                    if done.is_set() and outcome and outcome[0] is not None:
                        raise outcome[0]
                    return
        done.wait()
        if outcome and outcome[0] is not None:
            raise outcome[0]
    finally:
        watch.close()


def _announces_deletion(data: bytes, index: int) -> bool:
    off = 0
    while off + 16 <= len(data):
        mlen, mtype = struct.unpack_from("=LH", data, off)
        if mlen < 16:
            break
        if mtype == RTM_DELLINK and _IFINFO_INDEX.unpack_from(data, off + 20)[0] == index:
            return True
        off += (mlen + 3) & ~3
    return False
