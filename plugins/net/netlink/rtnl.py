"""The bridge ADD's netlink work on one standard-library rtnetlink socket.

pyroute2 builds and parses every message through its own object model and
runs each request through an asyncio event loop: ~1-3 ms per request in a
warm process, and ~150 ms of imports in a cold one. A bridge ADD needs
about 18 small requests whose replies it reads five fields of, so this module
speaks the few messages it needs with ``socket`` and ``struct`` (docs/adr/0036).

``Rtnl()`` opens a NETLINK_ROUTE socket bound to the calling thread's network
namespace at creation (as pyroute2's ``IPRoute``; open one per namespace).
The functions below mirror ``plugins.net.link``'s (same arguments minus the
socket type, same ``LinkInfo`` / ``Addr`` results, same ``CNIError``s through
``link.kernel_error``), so the attach code reads the same either way; kernel
refusals are ``link.NetlinkFailure`` (an OSError with ``errno`` and ``code``).

What stays on pyroute2: bridge vlan filtering (``ensure_bridge`` with
``vlan_filtering``, port vlans), CHECK, GC and the other plugins' tc and
vxlan work.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import time

from ...core.errors import CNIError, IO_FAILURE, LINK_EXISTS
from . import wire
from ..link import (IFA_F_NODAD, IFF_PROMISC, IFF_UP, RT_SCOPE_UNIVERSE, Addr, LinkInfo,
                   NetlinkFailure, kernel_error, netlink_errno)

TYPE_CHECKING = False       # not from typing: importing it costs ~2 ms per plugin exec
if TYPE_CHECKING:
    from typing import Iterable

# message types and flags
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE = 24
_DUMP, _EXCL, _CREATE = 0x300, 0x200, 0x400
_NESTED = 0x8000
# link attributes
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK = 1, 3, 4, 5
IFLA_MASTER, IFLA_TXQLEN, IFLA_OPERSTATE, IFLA_LINKINFO = 10, 13, 16, 18
IFLA_IFALIAS, IFLA_NET_NS_FD = 20, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER = 1
IFLA_BR_VLAN_FILTERING = 7
IFLA_BRPORT_MODE, IFLA_BRPORT_ISOLATED = 4, 33
# address and route attributes
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_METRICS, RTA_TABLE = 1, 4, 5, 6, 8, 15
RTAX_MTU, RTAX_ADVMSS = 2, 8
RTPROT_STATIC, RTN_UNICAST, RT_TABLE_MAIN = 4, 1, 254
# the names pyroute2 gives IFLA_OPERSTATE values (LinkInfo.operstate keeps them)
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")

_IFINFO = struct.Struct("=BxHiII")       # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")        # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")     # family, dst_len, src_len, tos, table, proto, scope,
#                                          type, flags
_U32 = struct.Struct("=I")


attr = wire.attr
parse_attrs = wire.parse_attrs


def nested(atype: int, *parts: bytes) -> bytes:
    return attr(atype | _NESTED, b"".join(parts))


def u32(atype: int, v: int) -> bytes:
    return attr(atype, _U32.pack(v))


def u8(atype: int, v: int) -> bytes:
    return attr(atype, bytes((v,)))


def cstr(atype: int, s: str) -> bytes:
    return attr(atype, s.encode() + b"\0")


def _mac(raw: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in raw) if raw else ""


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def _str(raw: bytes | None) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace") if raw else ""


def _int(raw: bytes | None) -> int:
    return _U32.unpack_from(raw)[0] if raw and len(raw) >= 4 else 0


def _thread_netns() -> tuple[int, int]:
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


class Rtnl:
    """One NETLINK_ROUTE socket in the current thread's netns; requests are synchronous."""

    def __init__(self) -> None:
        self.sock = wire.open_route_socket()
        self.pid = self.sock.getsockname()[0]
        self.seq = 0
        self.netns = _thread_netns()

    def in_thread_netns(self) -> bool:
        """Whether the calling thread is in the namespace this socket is bound to."""
        return _thread_netns() == self.netns

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, mtype: int, payload: bytes, flags: int = 0) -> list[bytes]:
        """Send one request (ACKed), return the bodies of the reply messages.

        A NACK raises ``NetlinkFailure`` with the kernel's errno. Messages of
        other sequence numbers (none expected on this private socket) are skipped.
        """
        self.seq += 1
        return wire.exchange(self.sock, self.seq, mtype, payload, flags,
                             error=lambda err, msg: NetlinkFailure(err, f"netlink: {msg}"))


# ---- links ----------------------------------------------------------------------------

def _to_info(body: bytes) -> LinkInfo:
    _fam, _type, index, flags, _change = _IFINFO.unpack_from(body, 0)
    a = parse_attrs(body, 16)
    kind, data = "", {}
    li = a.get(IFLA_LINKINFO)
    if li is not None:
        info = parse_attrs(li)
        kind = _str(info.get(IFLA_INFO_KIND))
        if kind == "bridge" and IFLA_INFO_DATA in info:
            vf = parse_attrs(info[IFLA_INFO_DATA]).get(IFLA_BR_VLAN_FILTERING)
            if vf is not None:
                data["IFLA_BR_VLAN_FILTERING"] = vf[0]
    op = a.get(IFLA_OPERSTATE)
    return LinkInfo(index=index, name=_str(a.get(IFLA_IFNAME)), kind=kind,
                    mac=_mac(a.get(IFLA_ADDRESS)), mtu=_int(a.get(IFLA_MTU)), flags=flags,
                    master=_int(a.get(IFLA_MASTER)), peer=_int(a.get(IFLA_LINK)),
                    operstate=OPERSTATES[op[0]] if op and op[0] < len(OPERSTATES) else "",
                    data=data, alias=_str(a.get(IFLA_IFALIAS)),
                    txqlen=_int(a.get(IFLA_TXQLEN)))


def get_link(nl: Rtnl, name: str | None = None, index: int | None = None) -> LinkInfo | None:
    """The link by name (one RTM_GETLINK by IFLA_IFNAME, no dump) or index; None if absent."""
    if index is not None:
        payload = _IFINFO.pack(0, 0, index, 0, 0)
    else:
        payload = _IFINFO.pack(0, 0, 0, 0, 0) + cstr(IFLA_IFNAME, name or "")
    try:
        replies = nl.request(RTM_GETLINK, payload)
    except NetlinkFailure as e:
        if e.errno in (errno.ENODEV, errno.ENOENT):
            return None
        raise kernel_error(e, f"looking up link {name or index}") from None
    return _to_info(replies[0]) if replies else None


def _setlink(nl: Rtnl, index: int, attrs: bytes = b"", flags: int = 0, change: int = 0) -> None:
    nl.request(RTM_NEWLINK, _IFINFO.pack(0, 0, index, flags, change) + attrs)


def set_link(nl: Rtnl, index: int, what: str, *, master: int | None = None,
             state: str | None = None, ifalias: str | None = None, mtu: int | None = None,
             address: str | None = None) -> None:
    attrs = b""
    if master is not None:
        attrs += u32(IFLA_MASTER, master)
    if mtu is not None:
        attrs += u32(IFLA_MTU, mtu)
    if address is not None:
        attrs += attr(IFLA_ADDRESS, _mac_bytes(address))
    if ifalias is not None:
        attrs += attr(IFLA_IFALIAS, ifalias.encode())
    flags = change = 0
    if state is not None:
        change = IFF_UP
        flags = IFF_UP if state == "up" else 0
    try:
        _setlink(nl, index, attrs, flags, change)
    except NetlinkFailure as e:
        raise kernel_error(e, what) from None


def ensure_bridge(nl: Rtnl, name: str, *, mtu: int = 0,
                  promisc: bool = False) -> tuple[LinkInfo, bool]:
    """``link.ensure_bridge`` without vlan filtering (that one stays on pyroute2)."""
    created = False
    cur = get_link(nl, name)
    if cur is None:
        attrs = cstr(IFLA_IFNAME, name) + nested(IFLA_LINKINFO, cstr(IFLA_INFO_KIND, "bridge"))
        if mtu:
            attrs += u32(IFLA_MTU, mtu)
        try:
            nl.request(RTM_NEWLINK, _IFINFO.pack(0, 0, 0, 0, 0) + attrs, _CREATE | _EXCL)
            created = True
        except NetlinkFailure as e:
            if e.errno != errno.EEXIST:     # lost a race with a parallel ADD: fine
                raise kernel_error(e, f"creating bridge {name!r}") from None
        cur = get_link(nl, name)
        if cur is None:
            raise CNIError(IO_FAILURE, f"bridge {name!r} vanished right after creation")
    if cur.kind != "bridge":
        raise CNIError(LINK_EXISTS, f"{name!r} already exists but is not a bridge",
                       f"it is a {cur.kind or 'device without a kind'}")
    attrs = u32(IFLA_MTU, mtu) if mtu and cur.mtu != mtu else b""
    up = not cur.up
    try:
        if attrs or up:
            _setlink(nl, cur.index, attrs, IFF_UP if up else 0, IFF_UP if up else 0)
        if promisc and not cur.promisc:
            _setlink(nl, cur.index, b"", IFF_PROMISC, IFF_PROMISC)
    except NetlinkFailure as e:
        raise kernel_error(e, f"configuring bridge {name!r}") from None
    if not (attrs or up or (promisc and not cur.promisc)):
        return cur, created        # nothing changed since the lookup: no second one
    return get_link(nl, index=cur.index) or cur, created


def add_veth(nl: Rtnl, name: str, peer: str, peer_netns_fd: int, *, mtu: int = 0,
             peer_mac: str = "") -> None:
    """Veth ``name`` here, its peer ``peer`` created directly in another netns: one request."""
    pattrs = cstr(IFLA_IFNAME, peer) + u32(IFLA_NET_NS_FD, peer_netns_fd)
    attrs = cstr(IFLA_IFNAME, name)
    if mtu:
        pattrs += u32(IFLA_MTU, mtu)
        attrs += u32(IFLA_MTU, mtu)
    if peer_mac:
        pattrs += attr(IFLA_ADDRESS, _mac_bytes(peer_mac))
    attrs += nested(IFLA_LINKINFO, cstr(IFLA_INFO_KIND, "veth"),
                    nested(IFLA_INFO_DATA, attr(VETH_INFO_PEER, _IFINFO.pack(0, 0, 0, 0, 0)
                                                + pattrs)))
    try:
        nl.request(RTM_NEWLINK, _IFINFO.pack(0, 0, 0, 0, 0) + attrs, _CREATE | _EXCL)
    except NetlinkFailure as e:
        if e.errno == errno.EEXIST:
            raise CNIError(LINK_EXISTS, f"cannot create veth {name!r} / {peer!r}: a link "
                           "of that name already exists",
                           "the attachment may already exist (ADD twice without DEL?)") from None
        raise kernel_error(e, f"creating veth {name!r}") from None


def add_link(nl: Rtnl, name: str, kind: str, *, mtu: int = 0, up: bool = False) -> None:
    """A new link of ``kind`` with no kind-specific data (ifb, dummy), up at once when
    asked: one request. A name in use is ``LINK_EXISTS``."""
    attrs = cstr(IFLA_IFNAME, name) + nested(IFLA_LINKINFO, cstr(IFLA_INFO_KIND, kind))
    if mtu:
        attrs += u32(IFLA_MTU, mtu)
    flags = IFF_UP if up else 0
    try:
        nl.request(RTM_NEWLINK, _IFINFO.pack(0, 0, 0, flags, flags) + attrs, _CREATE | _EXCL)
    except NetlinkFailure as e:
        if e.errno == errno.EEXIST:
            raise CNIError(LINK_EXISTS, f"cannot create {kind} {name!r}: a link of that name "
                           "already exists") from None
        raise kernel_error(e, f"creating {kind} {name!r}") from None


def dump_links(nl: Rtnl) -> list[LinkInfo]:
    """Every link of the socket's namespace (one dump)."""
    try:
        replies = nl.request(RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0), _DUMP)
    except NetlinkFailure as e:
        raise kernel_error(e, "listing links") from None
    return [_to_info(b) for b in replies]


def set_brport(nl: Rtnl, index: int, *, hairpin: bool | None = None,
               isolated: bool | None = None) -> None:
    """Bridge-port flags, as ``ip link set DEV type bridge_slave hairpin on``."""
    data = b""
    if hairpin is not None:
        data += u8(IFLA_BRPORT_MODE, int(hairpin))        # the hairpin flag
    if isolated is not None:
        data += u8(IFLA_BRPORT_ISOLATED, int(isolated))
    if not data:
        return
    try:
        _setlink(nl, index, nested(IFLA_LINKINFO, cstr(IFLA_INFO_SLAVE_KIND, "bridge"),
                                   nested(IFLA_INFO_SLAVE_DATA, data)))
    except NetlinkFailure as e:
        kw = {k: int(v) for k, v in (("mode", hairpin), ("isolated", isolated)) if v is not None}
        raise kernel_error(e, f"setting bridge port options {kw} on link {index}") from None


def delete_link(nl: Rtnl, name: str) -> bool:
    """Delete link ``name``; False when it did not exist."""
    cur = get_link(nl, name)
    if cur is None:
        return False
    try:
        if wire.RELEASE_LINKS_IN_BACKGROUND and nl.in_thread_netns():
            wire.delete_link_index(cur.index)       # the agent: back once unlisted
        else:
            nl.request(RTM_DELLINK, _IFINFO.pack(0, 0, cur.index, 0, 0))
    except OSError as e:
        if e.errno in (errno.ENODEV, errno.ENOENT):
            return False
        raise kernel_error(e, f"deleting link {name!r}") from None
    return True


def has_ports(nl: Rtnl, index: int) -> bool:
    """Whether any link is enslaved to ``index`` (one filtered dump)."""
    try:
        replies = nl.request(RTM_GETLINK, _IFINFO.pack(0, 0, 0, 0, 0) + u32(IFLA_MASTER, index),
                             _DUMP)
    except NetlinkFailure as e:
        raise kernel_error(e, f"listing ports of link {index}") from None
    return any(_int(parse_attrs(b, 16).get(IFLA_MASTER)) == index for b in replies)


def pin_mac(nl: Rtnl, index: int) -> None:
    """Set a bridge's MAC to its current value so it stops following its ports."""
    cur = get_link(nl, index=index)
    if cur is None or not cur.mac:
        return
    try:
        _setlink(nl, index, attr(IFLA_ADDRESS, _mac_bytes(cur.mac)))
    except NetlinkFailure as e:
        raise kernel_error(e, f"pinning the MAC of {cur.name}") from None


RTMGRP_LINK, RTMGRP_IPV6_IFADDR = 0x1, 0x100


def _until(groups: int, check, timeout: float):
    """``check()`` until it returns non-None, re-checked on each rtnetlink event of
    ``groups`` (subscribed before the first check, so none is missed) instead of a
    poll; after ``timeout`` seconds ``check(final=True)`` decides."""
    import select
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0) as ev:
        ev.bind((0, groups))
        deadline = time.monotonic() + timeout
        while True:
            got = check(final=False)
            if got is not None:
                return got
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([ev], [], [], min(left, 0.25))[0] \
                    and time.monotonic() >= deadline:
                return check(final=True)
            try:
                while ev.recv(1 << 16, socket.MSG_DONTWAIT):
                    pass            # drain: the check re-reads the state it needs
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:    # ENOBUFS: events were lost, the check re-reads anyway
                if e.errno != errno.ENOBUFS:
                    raise


def wait_operstate_up(nl: Rtnl, index: int, timeout: float = 2.5, what: str = "") -> LinkInfo:
    """Wait for the link's operstate UP: on link events, not a poll."""
    def check(final: bool):
        info = get_link(nl, index=index)
        if info is None:
            raise CNIError(IO_FAILURE, f"link {what or index} vanished")
        if info.operstate == "UP":
            return info
        if final:
            raise CNIError(IO_FAILURE, f"link {what or index} is not up after {timeout}s",
                           f"operstate {info.operstate}")
        return None
    return _until(RTMGRP_LINK, check, timeout)


# ---- addresses --------------------------------------------------------------------------

def _family(version: int) -> int:
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def list_addrs(nl: Rtnl, index: int, family: int | None = None) -> list[Addr]:
    """Global-scope addresses of link ``index`` (family 4, 6 or None for both)."""
    fam = _family(family) if family is not None else 0
    try:
        replies = nl.request(RTM_GETADDR, _IFADDR.pack(fam, 0, 0, 0, index), _DUMP)
    except NetlinkFailure as e:
        raise kernel_error(e, f"listing addresses of link {index}") from None
    out = []
    for body in replies:
        f, plen, flags8, scope, idx = _IFADDR.unpack_from(body, 0)
        if idx != index or (fam and f != fam) or scope != RT_SCOPE_UNIVERSE:
            continue        # other links (older kernels ignore the filter), fe80::/10, host scope
        a = parse_attrs(body, _IFADDR.size)
        raw = a.get(IFA_ADDRESS) or a.get(IFA_LOCAL)
        if not raw:
            continue
        flags = _int(a.get(IFA_FLAGS)) if IFA_FLAGS in a else flags8
        out.append(Addr(f"{socket.inet_ntop(f, raw)}/{plen}", flags))
    return out


def add_addr(nl: Rtnl, index: int, cidr: str, *, nodad: bool = False, what: str = "") -> bool:
    """Add ``cidr`` to link ``index``; False when exactly that address was already there."""
    ifc = ipaddress.ip_interface(cidr)
    fam = _family(ifc.version)
    raw = ifc.ip.packed
    flags = IFA_F_NODAD if nodad and ifc.version == 6 else 0
    attrs = attr(IFA_ADDRESS, raw)
    if ifc.version == 4:
        attrs = attr(IFA_LOCAL, raw) + attrs
    if flags:
        attrs += u32(IFA_FLAGS, flags)
    try:
        nl.request(RTM_NEWADDR, _IFADDR.pack(fam, ifc.network.prefixlen, flags, 0, index)
                   + attrs, _CREATE | _EXCL)
    except NetlinkFailure as e:
        if e.errno == errno.EEXIST:
            return False
        raise kernel_error(e, f"adding address {cidr} to {what or index}") from None
    return True


def del_addr(nl: Rtnl, index: int, cidr: str) -> None:
    ifc = ipaddress.ip_interface(cidr)
    raw = ifc.ip.packed
    attrs = attr(IFA_ADDRESS, raw)
    if ifc.version == 4:
        attrs = attr(IFA_LOCAL, raw) + attrs
    try:
        nl.request(RTM_DELADDR, _IFADDR.pack(_family(ifc.version), ifc.network.prefixlen, 0, 0,
                                             index) + attrs)
    except NetlinkFailure as e:
        if e.errno not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
            raise kernel_error(e, f"removing address {cidr}") from None


def settle_addrs(nl: Rtnl, index: int, timeout: float = 5.0, what: str = "",
                 only: Iterable[str] | None = None) -> None:
    """Wait until no (global) IPv6 address of the link is tentative; error on failed DAD.
    Re-checked on IPv6 address events, not a poll."""
    wanted = {ipaddress.ip_interface(c) for c in only} if only is not None else None

    def check(final: bool):
        addrs = [a for a in list_addrs(nl, index, 6) if wanted is None or a.iface in wanted]
        failed = [a.address for a in addrs if a.dadfailed]
        if failed:
            raise CNIError(IO_FAILURE, f"duplicate address detection failed on {what or index}",
                           ", ".join(failed))
        if not any(a.tentative for a in addrs):
            return True
        if final:
            raise CNIError(IO_FAILURE, f"IPv6 addresses on {what or index} still tentative "
                           f"after {timeout:.0f}s",
                           ", ".join(a.address for a in addrs if a.tentative))
        return None
    _until(RTMGRP_IPV6_IFADDR, check, timeout)


# ---- routes -------------------------------------------------------------------------------

def add_route(nl: Rtnl, *, dst: str, oif: int, gw: str = "", priority: int = 0,
              table: int | None = None, scope: int | None = None, mtu: int = 0,
              advmss: int = 0, exist_ok: bool = False) -> bool:
    """``link.add_route``: the same request pyroute2 makes (proto static, type unicast)."""
    net = ipaddress.ip_network(dst, strict=False)
    fam = _family(net.version)
    tab = table or 0
    attrs = b""
    if net.prefixlen:
        attrs += attr(RTA_DST, net.network_address.packed)
    attrs += u32(RTA_OIF, oif)
    if gw:
        attrs += attr(RTA_GATEWAY, ipaddress.ip_address(gw).packed)
    if priority:
        attrs += u32(RTA_PRIORITY, priority)
    if table is not None:
        attrs += u32(RTA_TABLE, table)
    metrics = (u32(RTAX_MTU, mtu) if mtu else b"") + (u32(RTAX_ADVMSS, advmss) if advmss else b"")
    if metrics:
        attrs += nested(RTA_METRICS, metrics)
    hdr = _RTMSG.pack(fam, net.prefixlen, 0, 0, tab if 0 < tab < 255 else RT_TABLE_MAIN,
                      RTPROT_STATIC, scope or 0, RTN_UNICAST, 0)
    try:
        nl.request(RTM_NEWROUTE, hdr + attrs, _CREATE | _EXCL)
        return True
    except NetlinkFailure as e:
        desc = f"{net}" + (f" via {gw}" if gw else "") + (f" metric {priority}" if priority else "")
        if netlink_errno(e) == errno.EEXIST:
            if exist_ok:
                return False
            raise CNIError(IO_FAILURE, f"route {desc} already exists", str(e)) from None
        raise kernel_error(e, f"adding route {desc}") from None
