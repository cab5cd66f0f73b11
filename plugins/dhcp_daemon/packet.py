"""DHCPv4 messages (RFC 2131/2132, classless routes RFC 3442) as data.

Pure functions: ``encode`` builds a BOOTREQUEST, ``decode`` parses a reply,
``routes`` turns a reply's options into CNI routes the way the reference
plugin does (option 121 wins over 33 and the router; else option 33 plus a
default route via the router). Standard library only.
"""
from __future__ import annotations

import ipaddress
import struct

from ..core.record import field, record

MAGIC = b"\x63\x82\x53\x63"
BOOTREQUEST, BOOTREPLY = 1, 2
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE = 1, 2, 3, 4, 5, 6, 7
TYPE_NAMES = {DISCOVER: "DISCOVER", OFFER: "OFFER", REQUEST: "REQUEST", DECLINE: "DECLINE",
              ACK: "ACK", NAK: "NAK", RELEASE: "RELEASE"}

OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_STATIC_ROUTES = 1, 3, 6, 12, 33
OPT_REQUESTED_IP, OPT_LEASE_TIME, OPT_MSG_TYPE, OPT_SERVER_ID = 50, 51, 53, 54
OPT_PARAM_LIST, OPT_MESSAGE, OPT_T1, OPT_T2, OPT_CLIENT_ID = 55, 56, 58, 59, 61
OPT_CLASSLESS_ROUTES, OPT_END, OPT_PAD = 121, 255, 0
BROADCAST_FLAG = 0x8000
# What we ask for: mask, router, static routes, classless routes, lease timers.
DEFAULT_PARAMS = bytes([OPT_SUBNET_MASK, OPT_ROUTER, OPT_STATIC_ROUTES, OPT_CLASSLESS_ROUTES,
                        OPT_LEASE_TIME, OPT_T1, OPT_T2])
_HEAD = struct.Struct("!BBBBIHHIIII16s64s128s")   # 236 bytes of BOOTP header


class BadPacket(ValueError):
    pass


def _ip(b: bytes) -> str:
    return str(ipaddress.IPv4Address(b))


def _ipb(s: str) -> bytes:
    return ipaddress.IPv4Address(s or "0.0.0.0").packed


def encode(msg_type: int, xid: int, mac: bytes, *, client_id: bytes, ciaddr: str = "",
           requested: str = "", server_id: str = "", broadcast: bool = True,
           params: bytes = DEFAULT_PARAMS) -> bytes:
    head = _HEAD.pack(BOOTREQUEST, 1, 6, 0, xid, 0, BROADCAST_FLAG if broadcast else 0,
                      int.from_bytes(_ipb(ciaddr), "big"), 0, 0, 0,
                      mac.ljust(16, b"\0"), b"", b"")
    opts = [(OPT_MSG_TYPE, bytes([msg_type])), (OPT_CLIENT_ID, client_id)]
    if requested:
        opts.append((OPT_REQUESTED_IP, _ipb(requested)))
    if server_id:
        opts.append((OPT_SERVER_ID, _ipb(server_id)))
    if msg_type != RELEASE:
        opts.append((OPT_PARAM_LIST, params))
    body = b"".join(bytes([code, len(val)]) + val for code, val in opts)
    return head + MAGIC + body + bytes([OPT_END])


@record
class Reply:
    msg_type: int
    xid: int
    yiaddr: str
    chaddr: bytes
    options: dict[int, bytes] = field(default_factory=dict)

    def ip_opt(self, code: int) -> str:
        v = self.options.get(code, b"")
        return _ip(v[:4]) if len(v) >= 4 else ""

    def u32(self, code: int) -> int | None:
        v = self.options.get(code, b"")
        return struct.unpack("!I", v[:4])[0] if len(v) >= 4 else None

    @property
    def server_id(self) -> str:
        return self.ip_opt(OPT_SERVER_ID)

    @property
    def gateway(self) -> str:
        return self.ip_opt(OPT_ROUTER)

    @property
    def prefixlen(self) -> int:
        mask = self.options.get(OPT_SUBNET_MASK)
        if mask and len(mask) == 4:
            return ipaddress.IPv4Network(f"0.0.0.0/{_ip(mask)}").prefixlen
        # no mask: the classful default, as Go's net.IP.DefaultMask
        first = int(self.yiaddr.split(".")[0])
        return 8 if first < 128 else 16 if first < 192 else 24

    @property
    def address(self) -> str:
        return f"{self.yiaddr}/{self.prefixlen}"

    def timers(self) -> tuple[int, int, int]:
        """(lease, T1, T2) in seconds; T1/T2 default to 1/2 and 7/8 of the lease."""
        lease = self.u32(OPT_LEASE_TIME) or 3600
        t1 = self.u32(OPT_T1) or lease // 2
        t2 = self.u32(OPT_T2) or lease * 7 // 8
        return lease, t1, t2


def decode(data: bytes) -> Reply:
    if len(data) < _HEAD.size + 4:
        raise BadPacket(f"short packet ({len(data)} bytes)")
    op, _htype, hlen, _hops, xid, _secs, _flags, _ci, yi, _si, _gi, chaddr, _sn, _f = \
        _HEAD.unpack_from(data)
    if op != BOOTREPLY:
        raise BadPacket("not a BOOTREPLY")
    if data[_HEAD.size:_HEAD.size + 4] != MAGIC:
        raise BadPacket("no DHCP magic cookie")
    opts: dict[int, bytes] = {}
    i = _HEAD.size + 4
    while i < len(data):
        code = data[i]
        if code == OPT_END:
            break
        if code == OPT_PAD:
            i += 1
            continue
        if i + 1 >= len(data):
            raise BadPacket("truncated option")
        n = data[i + 1]
        val = data[i + 2:i + 2 + n]
        if len(val) != n:
            raise BadPacket(f"truncated option {code}")
        opts[code] = opts.get(code, b"") + val      # RFC 3396: concatenate repeats
        i += 2 + n
    mt = opts.get(OPT_MSG_TYPE, b"\0")[0]
    return Reply(msg_type=mt, xid=xid, yiaddr=_ip(struct.pack("!I", yi)),
                 chaddr=chaddr[:hlen], options=opts)


def classless_routes(opt: bytes) -> list[tuple[str, str]]:
    """RFC 3442 option 121 -> [(dst CIDR, gateway)]; raises BadPacket when malformed."""
    out = []
    i = 0
    while i < len(opt):
        width = opt[i]
        if width > 32:
            raise BadPacket(f"option 121: prefix length {width}")
        n = (width + 7) // 8
        if i + 1 + n + 4 > len(opt):
            raise BadPacket("option 121: truncated")
        dst = opt[i + 1:i + 1 + n].ljust(4, b"\0")
        gw = opt[i + 1 + n:i + 5 + n]
        out.append((str(ipaddress.IPv4Network((dst, width), strict=False)), _ip(gw)))
        i += 5 + n
    return out


def routes(reply: Reply) -> list[dict]:
    """CNI route dicts, in the reference plugin's order and rules (lease.go Routes)."""
    if reply.options.get(OPT_CLASSLESS_ROUTES):
        out = []
        for dst, gw in classless_routes(reply.options[OPT_CLASSLESS_ROUTES]):
            r = {"dst": dst, "gw": gw}
            if gw == "0.0.0.0":
                r = {"dst": dst, "scope": 253}          # on-link: SCOPE_LINK
            out.append(r)
        return out
    out = []
    static = reply.options.get(OPT_STATIC_ROUTES, b"")
    for i in range(0, len(static) - 7, 8):
        dst = ipaddress.IPv4Address(static[i:i + 4])
        first = static[i]
        plen = 8 if first < 128 else 16 if first < 192 else 24      # classful, as Go
        out.append({"dst": str(ipaddress.IPv4Network((dst, plen), strict=False)),
                    "gw": _ip(static[i + 4:i + 8])})
    if reply.gateway:
        out.append({"dst": "0.0.0.0/0", "gw": reply.gateway})
    return out
