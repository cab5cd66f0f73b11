"""Packet capture inside a lab namespace, decoded with scapy.

scapy caches the interface list of the namespace it was imported in, so its
own sockets cannot be pointed at an interface of another namespace. We open
the capture socket ourselves in a dedicated thread that first calls setns(2)
into the target namespace: an AF_PACKET socket bound to the interface, with
the BPF program (compiled by ``tcpdump -ddd``) attached *before* the bind so
no unfiltered packet slips in. ``start()`` returns only once the socket is
bound (the sniffer is ready), so a probe sent afterwards is never missed.
Frames are written to a pcap file (Wireshark-readable) and decoded with
scapy on demand.

Also runnable: ``python -m netlab.base.capture NS IFACE [BPF] -w FILE -c N -t SECONDS``.
"""
from __future__ import annotations

import ctypes
import os
import select
import socket
import struct
import subprocess
import threading
import time
from typing import Any

from ..base import namespaces as nsutil

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
LINKTYPE_ETHERNET = 1
SO_TIMESTAMPNS = 35           # the kernel's receive time of each frame (struct timespec)
_TS = struct.Struct("@qq")


class CaptureError(Exception):
    pass


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


_bpf_cache: dict[str, list[tuple[int, int, int, int]]] = {}


def compile_bpf(expr: str) -> list[tuple[int, int, int, int]]:
    """BPF instructions for an Ethernet link (``tcpdump -ddd``; no interface opened)."""
    if expr in _bpf_cache:
        return _bpf_cache[expr]
    p = subprocess.run(["tcpdump", "-ddd", "-y", "EN10MB", "-s", "262144", expr],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise CaptureError(f"bad capture filter {expr!r}: {p.stderr.strip()}")
    nums = p.stdout.split("\n")
    n = int(nums[0])
    ins = [tuple(int(x) for x in line.split()) for line in nums[1:1 + n]]
    _bpf_cache[expr] = ins  # type: ignore[assignment]
    return ins  # type: ignore[return-value]


def _attach(sock: socket.socket, ins: list) -> None:
    arr = (_SockFilter * len(ins))(*[_SockFilter(*i) for i in ins])
    prog = _SockFprog(len(ins), ctypes.cast(arr, ctypes.POINTER(_SockFilter)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(ctypes.string_at(ctypes.addressof(prog), ctypes.sizeof(prog))))


def _recv(sock: socket.socket) -> tuple[float, bytes, tuple]:
    """One frame with the kernel's timestamp (wall clock), its interface and direction."""
    data, anc, _flags, addr = sock.recvmsg(262144, 64)
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= _TS.size:
            sec, nsec = _TS.unpack_from(raw)
            return sec + nsec / 1e9, data, addr
    return time.time(), data, addr


def pcap_header(snaplen: int = 262144) -> bytes:
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


def pcap_record(ts: float, data: bytes) -> bytes:
    sec = int(ts)
    usec = min(999_999, int(round((ts - sec) * 1_000_000)))
    return struct.pack("<IIII", sec, usec, len(data), len(data)) + data


def write_pcap(path: str, frames: list[tuple[float, bytes]], snaplen: int = 262144) -> None:
    with open(path, "wb") as f:
        f.write(pcap_header(snaplen))
        for ts, data in frames:
            f.write(pcap_record(ts, data))


class Capture:
    """Capture on ``iface`` inside namespace ``ns`` (a name under /var/run/netns)."""

    def __init__(self, ns: str, iface: str, bpf: str = "", *, pcap: str | None = None,
                 count: int = 0, max_seconds: float = 60.0, incoming_only: bool = False) -> None:
        self.ns, self.iface, self.bpf = ns, iface, bpf
        self.incoming_only = incoming_only   # e.g. all ports of a switch: each frame once
        self.pcap = pcap
        self.count = count
        self.max_seconds = max_seconds
        self.frames: list[tuple[float, bytes]] = []
        self.directions: list[str] = []
        self.ifaces: list[str] = []          # the interface each frame was seen on
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Capture":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self, timeout: float = 5.0) -> "Capture":
        ins = compile_bpf(self.bpf) if self.bpf else None
        self._thread = threading.Thread(target=self._run, args=(ins,), daemon=True,
                                        name=f"capture {self.ns}:{self.iface}")
        self._thread.start()
        if not self._ready.wait(timeout):
            self._stop.set()
            raise CaptureError(f"capture on {self.ns}:{self.iface} not ready after {timeout}s")
        if self._error:
            raise CaptureError(f"capture on {self.ns}:{self.iface}: {self._error}")
        return self

    def _run(self, ins) -> None:
        from plugins.core import netns as cns
        sock = None
        try:
            fd = os.open(nsutil.path(self.ns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                cns.setns(fd)   # this thread only; it is never returned to a pool
            finally:
                os.close(fd)
            if self.iface:
                # protocol 0: receives nothing until bound, so the filter is in place first
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
                if ins:
                    _attach(sock, ins)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                sock.bind((self.iface, ETH_P_ALL))
            else:
                # every interface of the namespace: an unbound ETH_P_ALL socket; drop
                # what arrived before the filter was attached
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                if ins:
                    _attach(sock, ins)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                sock.setblocking(False)
                try:
                    while True:
                        sock.recv(65536)
                except BlockingIOError:
                    pass
                sock.setblocking(True)
        except BaseException as e:  # noqa: BLE001
            self._error = e
            self._ready.set()
            if sock:
                sock.close()
            return
        self._ready.set()
        deadline = time.monotonic() + self.max_seconds
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                r, _, _ = select.select([sock], [], [], 0.05)
                if not r:
                    continue
                ts, data, addr = _recv(sock)
                if self.incoming_only and addr[2] == PACKET_OUTGOING:
                    continue
                self.frames.append((ts, data))
                self.directions.append("out" if addr[2] == PACKET_OUTGOING else "in")
                self.ifaces.append(addr[0])
                if self.count and len(self.frames) >= self.count:
                    break
            # drain what is already queued
            sock.setblocking(False)
            while True:
                try:
                    ts, data, addr = _recv(sock)
                except BlockingIOError:
                    break
                if self.count and len(self.frames) >= self.count:
                    break
                if self.incoming_only and addr[2] == PACKET_OUTGOING:
                    continue
                self.frames.append((ts, data))
                self.directions.append("out" if addr[2] == PACKET_OUTGOING else "in")
                self.ifaces.append(addr[0])
        finally:
            sock.close()

    def stop(self, settle: float = 0.05) -> list[tuple[float, bytes]]:
        if self._thread is None:
            return self.frames
        time.sleep(settle)
        self._stop.set()
        self._thread.join(5)
        self._thread = None
        if self.pcap:
            os.makedirs(os.path.dirname(self.pcap) or ".", exist_ok=True)
            write_pcap(self.pcap, self.frames)
        return self.frames

    def wait(self, timeout: float) -> None:
        """Block until ``count`` frames arrived or ``timeout`` elapsed."""
        if self._thread:
            self._thread.join(timeout)

    def packets(self) -> list:
        from scapy.layers.l2 import Ether
        import scapy.layers.inet  # noqa: F401  (bind IP/TCP/UDP/ICMP)
        import scapy.layers.dns  # noqa: F401
        import scapy.layers.vxlan  # noqa: F401
        out = []
        for ts, data in self.frames:
            p = Ether(data)
            p.time = ts
            out.append(p)
        return out


def summary_lines(packets: list, limit: int = 20) -> list[str]:
    return [p.summary() for p in packets[:limit]]


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m netlab.base.capture")
    ap.add_argument("ns")
    ap.add_argument("iface")
    ap.add_argument("filter", nargs="?", default="")
    ap.add_argument("-w", dest="pcap")
    ap.add_argument("-c", dest="count", type=int, default=0)
    ap.add_argument("-t", dest="timeout", type=float, default=10)
    a = ap.parse_args(argv)
    cap = Capture(a.ns, a.iface, a.filter, pcap=a.pcap, count=a.count, max_seconds=a.timeout)
    cap.start()
    print("ready", flush=True)
    try:
        cap.wait(a.timeout)
    except KeyboardInterrupt:
        pass
    cap.stop()
    for line in summary_lines(cap.packets(), 10**6):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
