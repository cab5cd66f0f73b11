"""pcapng writing: several interfaces in one file, each named (``node1/eth0``).

A capture of several targets at once is one stream for Wireshark: a Section
Header Block, one Interface Description Block per interface (its ``if_name``
option carries the name, ``if_tsresol`` says nanoseconds) and one Enhanced
Packet Block per frame, in time order. Little-endian throughout, as the
byte-order magic of the section says. Spec: IETF draft-ietf-opsawg-pcapng.
(scapy's PcapNgWriter names no interfaces, so we write the few blocks ourselves.)
"""
from __future__ import annotations

import struct
from typing import BinaryIO

LINKTYPE_ETHERNET = 1
SHB, IDB, EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_END, OPT_COMMENT, IF_NAME, IF_TSRESOL = 0, 1, 2, 9


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad(value)


def _block(kind: int, body: bytes) -> bytes:
    body = _pad(body)
    n = len(body) + 12
    return struct.pack("<II", kind, n) + body + struct.pack("<I", n)


def section_header(comment: str = "") -> bytes:
    opts = (_option(OPT_COMMENT, comment.encode()) if comment else b"") + _option(OPT_END, b"")
    return _block(SHB, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + opts)


def interface(name: str, snaplen: int = 262144, linktype: int = LINKTYPE_ETHERNET) -> bytes:
    opts = _option(IF_NAME, name.encode()) + _option(IF_TSRESOL, b"\x09") + _option(OPT_END, b"")
    return _block(IDB, struct.pack("<HHI", linktype, 0, snaplen) + opts)


def packet(if_id: int, ts: float, data: bytes) -> bytes:
    ns = int(round(ts * 1e9))
    return _block(EPB, struct.pack("<IIIII", if_id, ns >> 32, ns & 0xFFFFFFFF, len(data), len(data)) + data)


class Writer:
    """Write interfaces as they first appear and packets as they come (streamable:
    an IDB always precedes the first packet that refers to it)."""

    def __init__(self, out: BinaryIO, comment: str = "") -> None:
        self.out = out
        self.ids: dict[str, int] = {}
        out.write(section_header(comment))

    def iface(self, name: str) -> int:
        if name not in self.ids:
            self.ids[name] = len(self.ids)
            self.out.write(interface(name))
        return self.ids[name]

    def write(self, name: str, ts: float, data: bytes) -> None:
        i = self.iface(name)
        self.out.write(packet(i, ts, data))

    def flush(self) -> None:
        self.out.flush()


def read(data: bytes) -> list[tuple[str, float, bytes]]:
    """(interface name, time, frame) of every packet of a little-endian pcapng file
    written by ``Writer`` (for tests and tools; not a general pcapng reader)."""
    out: list[tuple[str, float, bytes]] = []
    names: list[str] = []
    off = 0
    while off + 12 <= len(data):
        kind, n = struct.unpack_from("<II", data, off)
        body = data[off + 8:off + n - 4]
        if kind == IDB:
            names.append("")
            p = 8
            while p + 4 <= len(body):
                code, ln = struct.unpack_from("<HH", body, p)
                if code == OPT_END:
                    break
                if code == IF_NAME:
                    names[-1] = body[p + 4:p + 4 + ln].decode()
                p += 4 + ln + (-ln % 4)
        elif kind == EPB:
            if_id, hi, lo, cap, _ = struct.unpack_from("<IIIII", body, 0)
            out.append((names[if_id], ((hi << 32) | lo) / 1e9, body[20:20 + cap]))
        off += n
    return out
