"""The probe of a trace: what it is and how it is sent.

Owns ``Probe`` (protocol, size, DF, the random token its payload carries, the
source port / ICMP id / TCP sequence that identify it), ``parse_proto`` for
``--proto`` and ``send_probe``, which sends it once from inside a namespace
through an ordinary kernel socket (ICMP echo and TCP SYN through raw sockets,
UDP through a datagram socket), IPv4 or IPv6. Nothing here captures or
explains; a send the kernel refuses is recorded in the probe
(``send_error``), never raised.
"""
from __future__ import annotations

import re
import socket
import struct
from dataclasses import dataclass
from typing import Callable

from ...base.namespaces import in_thread


class TraceError(Exception):
    """A trace that cannot be run as asked (bad option, unknown endpoint); the message says why."""


@dataclass
class Probe:
    proto: str                 # icmp | tcp | udp
    dst: str
    port: int | None
    size: int                  # IP packet length
    df: bool
    token: bytes = b""
    src: str = ""
    sport: int = 0
    icmp_id: int = 0
    seq: int = 0               # TCP ISN
    sent: bool = False
    send_error: str = ""

    @property
    def l4_header(self) -> int:
        return {"icmp": 8, "udp": 8, "tcp": 20}[self.proto]

    @property
    def v6(self) -> bool:
        return ":" in self.dst

    @property
    def ip_header(self) -> int:
        return 40 if self.v6 else 20

    def payload(self) -> bytes:
        n = max(len(self.token), self.size - self.ip_header - self.l4_header)
        return self.token + bytes(n - len(self.token))

    def describe(self) -> str:
        what = {"icmp": "ICMPv6 echo request" if self.v6 else "ICMP echo request", "udp": f"UDP to port {self.port}",
                "tcp": f"TCP SYN to port {self.port}"}[self.proto]
        return f"{what}, {self.size} bytes{' DF' if self.df else ''}"


def parse_proto(text: str) -> tuple[str, int | None]:
    m = re.fullmatch(r"(icmp)|(tcp|udp)/(\d{1,5})", text.strip().lower())
    if not m:
        raise TraceError(f"--proto must be icmp, tcp/PORT or udp/PORT, not {text!r}")
    if m.group(1):
        return "icmp", None
    port = int(m.group(3))
    if not 1 <= port <= 65535:
        raise TraceError(f"port {port} is out of range")
    return m.group(2), port


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_PMTUDISC_DONT = 10, 2, 0
IPV6_MTU_DISCOVER = 23
SYN_OFFSET_FLAGS = 5 << 12 | 0x002     # TCP header of 20 bytes, SYN


def _tcp_syn(pr: Probe, pseudo: Callable[[int], bytes]) -> bytes:
    """A TCP SYN carrying the probe's payload, checksummed with ``pseudo(tcp length)``,
    the family's pseudo header."""
    body = pr.payload()
    hdr = struct.pack("!HHIIHHHH", pr.sport, pr.port, pr.seq, 0, SYN_OFFSET_FLAGS, 64240, 0, 0)
    c = _csum(pseudo(len(hdr) + len(body)) + hdr + body)
    return struct.pack("!HHIIHHHH", pr.sport, pr.port, pr.seq, 0, SYN_OFFSET_FLAGS, 64240, c, 0) + body


def _v6_socket_and_packet(pr: Probe) -> tuple[socket.socket, bytes]:
    # IPv6: the kernel fills the ICMPv6 checksum of a raw socket itself; the TCP
    # one is ours (pseudo header of source, destination, length, next header)
    if pr.proto == "icmp":
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        return s, struct.pack("!BBHHH", 128, 0, 0, pr.icmp_id, 1) + pr.payload()
    if pr.proto == "udp":
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("::", pr.sport))
        return s, pr.payload()
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)
    addrs = socket.inet_pton(socket.AF_INET6, pr.src) + socket.inet_pton(socket.AF_INET6, pr.dst)
    return s, _tcp_syn(pr, lambda n: addrs + struct.pack("!I3xB", n, 6))


def _v4_socket_and_packet(pr: Probe) -> tuple[socket.socket, bytes]:
    if pr.proto == "icmp":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        body = pr.payload()
        c = _csum(struct.pack("!BBHHH", 8, 0, 0, pr.icmp_id, 1) + body)
        return s, struct.pack("!BBHHH", 8, 0, c, pr.icmp_id, 1) + body
    if pr.proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # SO_REUSEPORT: share a source port with a running flow (--sport), to test *its* conntrack entry
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("0.0.0.0", pr.sport))
        return s, pr.payload()
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    addrs = socket.inet_aton(pr.src) + socket.inet_aton(pr.dst)
    return s, _tcp_syn(pr, lambda n: addrs + struct.pack("!BBH", 0, 6, n))


def _send(pr: Probe) -> None:
    """In the sender's namespace already: one socket, one packet, the outcome in ``pr``."""
    s, pkt = (_v6_socket_and_packet if pr.v6 else _v4_socket_and_packet)(pr)
    pmtu = IP_PMTUDISC_DO if pr.df else IP_PMTUDISC_DONT
    try:
        if pr.v6:
            # IPv6 has no DF bit: "DF" means the sender itself never fragments (routers never do)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, pmtu)
            s.sendto(pkt, (pr.dst, pr.port if pr.proto == "udp" else 0, 0, 0))   # raw: port 0 (or EINVAL)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, pmtu)
            s.sendto(pkt, (pr.dst, pr.port or 0))
        pr.sent = True
    except OSError as e:
        pr.send_error = f"{e.strerror or e} (errno {e.errno})"
        if e.errno == 90:   # EMSGSIZE
            pr.send_error = "the sender's kernel refused it: Message too long (EMSGSIZE)"
    finally:
        s.close()


def send_probe(ns: str, pr: Probe) -> None:
    """Send one probe from inside ``ns`` with a plain kernel socket."""
    in_thread(ns, lambda: _send(pr), 10)
