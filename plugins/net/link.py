"""Netlink helpers over pyroute2: bridges, veth pairs, addresses, routes, MTU.

Every function takes an open ``IPRoute`` (see ``open_iproute``): the socket is
bound to the network namespace of the thread that opened it, so open one per
namespace (inside ``plugins.core.netns.entered`` for a pod). Errors from the
kernel become ``CNIError`` with a message naming the object.

``ifindex`` and ``exists`` use only the standard library (an ioctl on a socket
of the current thread's namespace) so cheap paths such as a no-op DEL need not
import pyroute2 at all.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import time

from ..core.errors import (CNIError, IO_FAILURE, LINK_EXISTS, NOT_SUPPORTED_BY_KERNEL)
from ..core.record import field, record
from .netlink import wire

TYPE_CHECKING = False       # not from typing: importing it costs ~2 ms per plugin exec
if TYPE_CHECKING:
    from typing import Any, Iterable

IFF_UP = 0x1
IFF_PROMISC = 0x100
IFF_ALLMULTI = 0x200
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_TABLE_MAIN = 254


# ---- stdlib-only lookups --------------------------------------------------

def ifindex(name: str) -> int | None:
    """Index of link ``name`` in the calling thread's netns, or None (no pyroute2)."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def exists(name: str) -> bool:
    return ifindex(name) is not None


# A few rtnetlink requests with the standard library only, so DEL (deleting a
# link by name) does not pay pyroute2's ~100 ms import. Same thread-netns rule.
_RTM_NEWLINK, _RTM_GETLINK = 16, 18
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_TXQLEN = 1, 3, 4, 13
_IFLA_LINKINFO, _IFLA_INFO_KIND = 18, 1


def _nl_attrs(data: bytes, off: int) -> dict[int, bytes]:
    return wire.parse_attrs(data, off)


def _nl_call(msg_type: int, payload: bytes, flags: int = 0) -> list[bytes]:
    """One rtnetlink request on a one-shot socket; returns the reply payloads,
    raises OSError on a NACK."""
    with wire.open_route_socket() as s:
        return wire.exchange(s, 1, msg_type, payload, flags)


_nl_attr = wire.attr


def _getlink_by_name(name: str) -> bytes | None:
    """The RTM_NEWLINK reply body for link ``name``, None when it does not exist."""
    try:
        replies = _nl_call(_RTM_GETLINK, struct.pack("=BxHiII", 0, 0, 0, 0, 0)
                           + _nl_attr(_IFLA_IFNAME, name.encode() + b"\0"))
    except OSError as e:
        if e.errno in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    return replies[0] if replies else None


def link_kind(name: str) -> str | None:
    """IFLA_INFO_KIND of link ``name`` ('' for none), None when it does not exist."""
    body = _getlink_by_name(name)
    if body is None:
        return None
    info = _nl_attrs(body, 16).get(_IFLA_LINKINFO)
    if info is not None:
        return _nl_attrs(info, 0).get(_IFLA_INFO_KIND, b"").rstrip(b"\0").decode()
    return ""


def link_basics(name: str) -> "LinkInfo | None":
    """Link ``name`` with index, name, MAC, MTU, flags and txqlen filled (stdlib only;
    kind, master, peer and operstate are left empty). None when it does not exist."""
    try:
        body = _getlink_by_name(name)
    except OSError as e:
        raise CNIError(IO_FAILURE, f"looking up link {name}", str(e)) from None
    if body is None:
        return None
    _fam, _type, index, flags, _change = struct.unpack_from("=BxHiII", body, 0)
    attrs = _nl_attrs(body, 16)

    def u32(key: int) -> int:
        return struct.unpack("=I", attrs[key][:4])[0] if key in attrs else 0

    return LinkInfo(index=index, name=name, kind="",
                    mac=":".join(f"{b:02x}" for b in attrs.get(_IFLA_ADDRESS, b"")),
                    mtu=u32(_IFLA_MTU), flags=flags, master=0, peer=0, operstate="",
                    txqlen=u32(_IFLA_TXQLEN))


def set_link_basics(index: int, what: str, *, mac: str | None = None, mtu: int | None = None,
                    txqlen: int | None = None, flags: int = 0, change: int = 0) -> None:
    """Change a link's MAC, MTU, txqlen or flags (``change`` is the mask of flags to
    set to ``flags``), stdlib only; a refusal is a CNIError naming ``what``."""
    attrs = b""
    if mac is not None:
        attrs += _nl_attr(_IFLA_ADDRESS, bytes(int(x, 16) for x in mac.split(":")))
    if mtu is not None:
        attrs += _nl_attr(_IFLA_MTU, struct.pack("=I", mtu))
    if txqlen is not None:
        attrs += _nl_attr(_IFLA_TXQLEN, struct.pack("=I", txqlen))
    try:
        _nl_call(_RTM_NEWLINK, struct.pack("=BxHiII", 0, 0, index, flags, change) + attrs)
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            raise CNIError(NOT_SUPPORTED_BY_KERNEL, f"{what}: not supported by this kernel",
                           str(e)) from None
        raise CNIError(IO_FAILURE, f"{what} failed", str(e)) from None


def delete_index(index: int) -> bool:
    """Delete link ``index`` (stdlib); False when it was already gone. In the agent
    this returns once the kernel has unlisted the link (``wire.delete_link_index``)."""
    try:
        wire.delete_link_index(index)
    except OSError as e:
        if e.errno in (errno.ENODEV, errno.ENOENT):
            return False
        raise CNIError(IO_FAILURE, f"deleting link {index} failed", str(e)) from None
    return True


_RTM_GETADDR = 22
_NLM_F_DUMP = 0x300
_IFA_ADDRESS, _IFA_LOCAL = 1, 2


def link_flags(index: int) -> int | None:
    """The IFF_* flags of link ``index`` (stdlib), None when it does not exist."""
    try:
        replies = _nl_call(_RTM_GETLINK, struct.pack("=BxHiII", 0, 0, index, 0, 0))
    except OSError as e:
        if e.errno in (errno.ENODEV, errno.ENOENT):
            return None
        raise CNIError(IO_FAILURE, f"reading link {index} failed", str(e)) from None
    for body in replies:
        return struct.unpack_from("=I", body, 8)[0]
    return None


def set_up_index(index: int, up: bool, what: str = "") -> None:
    """Set link ``index`` up or down (stdlib: one RTM_NEWLINK with IFF_UP in the change mask)."""
    try:
        _nl_call(_RTM_NEWLINK, struct.pack("=BxHiII", 0, 0, index, IFF_UP if up else 0, IFF_UP))
    except OSError as e:
        raise CNIError(IO_FAILURE, f"setting {what or f'link {index}'} "
                       f"{'up' if up else 'down'} failed", str(e)) from None


def all_addrs(index: int) -> list[str]:
    """Every address of link ``index`` in CIDR form, any scope, IPv4 first (stdlib)."""
    out: dict[int, list[str]] = {socket.AF_INET: [], socket.AF_INET6: []}
    for family in out:
        try:
            replies = _nl_call(_RTM_GETADDR, struct.pack("=BBBBI", family, 0, 0, 0, 0),
                               _NLM_F_DUMP)
        except OSError as e:
            raise CNIError(IO_FAILURE, f"listing addresses of link {index} failed",
                           str(e)) from None
        for body in replies:
            fam, plen, _fl, _scope, idx = struct.unpack_from("=BBBBI", body, 0)
            if idx != index or fam != family:
                continue
            attrs = _nl_attrs(body, 8)
            raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
            if raw:
                out[family].append(f"{socket.inet_ntop(family, raw)}/{plen}")
    return out[socket.AF_INET] + out[socket.AF_INET6]


def delete_by_name(name: str, *, kind: str | None = None) -> bool:
    """Delete link ``name`` if it exists (and is of ``kind`` when given); stdlib only."""
    idx = ifindex(name)
    if idx is None:
        return False
    if kind is not None and link_kind(name) != kind:
        return False
    return delete_index(idx)


# ---- pyroute2 ---------------------------------------------------------------

class NetlinkFailure(OSError):
    """A netlink request the kernel refused, as an ``OSError`` (errno set).

    pyroute2 raises ``NetlinkError``, which is not an OSError: it slipped past
    every ``except OSError`` of DEL's and GC's keep-going loops and skipped the
    remaining steps. ``open_iproute`` hands out sockets whose requests raise this
    instead, so one conversion point covers every plugin. ``code`` mirrors
    pyroute2's attribute for code that reads it.
    """

    @property
    def code(self) -> int:
        return self.errno


def netlink_failure(exc: BaseException) -> NetlinkFailure:
    code = getattr(exc, "code", None)
    if not isinstance(code, int) or code <= 0:
        code = errno.EIO         # e.g. NetlinkDumpInterrupted: no kernel errno
    return NetlinkFailure(code, f"netlink: {os.strerror(code)} ({exc})")


class NetlinkSocket:
    """An IPRoute whose requests raise ``NetlinkFailure`` instead of NetlinkError.

    pyroute2's synchronous API returns materialised lists and tuples, so wrapping
    each call is enough: no error can surface later while iterating a result.
    """

    def __init__(self, ipr) -> None:
        from pyroute2.netlink.exceptions import NetlinkError
        self._ipr = ipr
        self._error = NetlinkError

    def __getattr__(self, name: str):
        attr = getattr(self._ipr, name)
        if not callable(attr):
            return attr
        error = self._error

        def call(*args, **kw):
            try:
                return attr(*args, **kw)
            except error as e:
                raise netlink_failure(e) from e
        return call

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> "NetlinkSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_iproute() -> NetlinkSocket:
    """An IPRoute socket bound to the calling thread's current network namespace.

    Every pyroute2 IPRoute of the plugins comes from here (the netlink boundary):
    its kernel errors are ``NetlinkFailure`` (an OSError).
    """
    from pyroute2 import IPRoute  # lazy: ~100 ms, only when links are touched
    return NetlinkSocket(IPRoute())


def netlink_errno(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def kernel_error(exc: BaseException, what: str) -> CNIError:
    """A CNIError for a failed netlink request about ``what``."""
    code = netlink_errno(exc)
    if code == errno.EOPNOTSUPP:
        return CNIError(NOT_SUPPORTED_BY_KERNEL, f"{what}: not supported by this kernel",
                        str(exc))
    if code == errno.EEXIST:
        return CNIError(LINK_EXISTS, f"{what}: already exists", str(exc))
    return CNIError(IO_FAILURE, f"{what} failed", str(exc))


@record
class LinkInfo:
    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    flags: int
    master: int          # 0 when not enslaved
    peer: int            # IFLA_LINK: the veth peer's index (in its own netns), else 0
    operstate: str
    data: dict = field(default_factory=dict)        # IFLA_INFO_DATA attrs (bridge options...)
    alias: str = ""                                 # IFLA_IFALIAS (marks links as ours)
    brport: dict = field(default_factory=dict)      # bridge-port attrs when enslaved
    txqlen: int = 0                                 # IFLA_TXQLEN

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def promisc(self) -> bool:
        return bool(self.flags & IFF_PROMISC)

    @property
    def allmulti(self) -> bool:
        return bool(self.flags & IFF_ALLMULTI)


def _attrs(msg: Any) -> dict:
    if msg is None:
        return {}
    return {k: v for k, v in (msg.get("attrs") or [])}


def _to_info(msg: Any) -> LinkInfo:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind, data = "", {}
    if linkinfo is not None:
        kind = linkinfo.get_attr("IFLA_INFO_KIND") or ""
        data = _attrs(linkinfo.get_attr("IFLA_INFO_DATA"))
    return LinkInfo(index=msg["index"], name=msg.get_attr("IFLA_IFNAME") or "", kind=kind,
                    mac=(msg.get_attr("IFLA_ADDRESS") or "").lower(),
                    mtu=msg.get_attr("IFLA_MTU") or 0, flags=msg["flags"],
                    master=msg.get_attr("IFLA_MASTER") or 0,
                    peer=msg.get_attr("IFLA_LINK") or 0,
                    operstate=msg.get_attr("IFLA_OPERSTATE") or "",
                    data=data, alias=msg.get_attr("IFLA_IFALIAS") or "",
                    txqlen=msg.get_attr("IFLA_TXQLEN") or 0)


def get_link(ipr, name: str | None = None, index: int | None = None) -> LinkInfo | None:
    """The link by name or index, or None when it does not exist."""
    try:
        if index is not None:
            msgs = ipr.link("get", index=index)
        else:
            msgs = ipr.link("get", ifname=name)
    except Exception as e:  # noqa: BLE001 - pyroute2 raises NetlinkError
        if netlink_errno(e) in (errno.ENODEV, errno.ENOENT):
            return None
        raise kernel_error(e, f"looking up link {name or index}") from None
    return _to_info(msgs[0]) if msgs else None


def list_links(ipr) -> list[LinkInfo]:
    """Every link of the namespace ``ipr`` is bound to (one dump)."""
    return [_to_info(msg) for msg in ipr.get_links()]


def brport_attrs(ipr, index: int) -> dict:
    try:
        msgs = ipr.brport("show", index=index)
    except Exception as e:  # noqa: BLE001
        raise kernel_error(e, f"reading bridge port {index}") from None
    if not msgs:
        return {}
    return _attrs(msgs[0].get_attr("IFLA_PROTINFO"))


def ensure_bridge(ipr, name: str, *, mtu: int = 0, promisc: bool = False,
                  vlan_filtering: bool = False) -> tuple[LinkInfo, bool]:
    """Create bridge ``name`` if missing (an existing non-bridge is an error), bring it up.

    ``mtu`` (0 = leave as is) is applied to an existing bridge too, raising or
    lowering it. Returns (link, created).
    """
    created = False
    cur = get_link(ipr, name)
    if cur is None:
        kw: dict[str, Any] = {"ifname": name, "kind": "bridge"}
        if mtu:
            kw["mtu"] = mtu
        if vlan_filtering:
            kw["br_vlan_filtering"] = 1
        try:
            ipr.link("add", **kw)
            created = True
        except Exception as e:  # noqa: BLE001
            if netlink_errno(e) == errno.EOPNOTSUPP and vlan_filtering:
                raise CNIError(NOT_SUPPORTED_BY_KERNEL,
                               "vlan/vlanTrunk need bridge vlan filtering, which this kernel "
                               "does not support", str(e)) from None
            if netlink_errno(e) != errno.EEXIST:    # lost a race with a parallel ADD: fine
                raise kernel_error(e, f"creating bridge {name!r}") from None
        cur = get_link(ipr, name)
        if cur is None:
            raise CNIError(IO_FAILURE, f"bridge {name!r} vanished right after creation")
    if cur.kind != "bridge":
        raise CNIError(LINK_EXISTS, f"{name!r} already exists but is not a bridge",
                       f"it is a {cur.kind or 'device without a kind'}")
    touched = False
    if vlan_filtering and not cur.data.get("IFLA_BR_VLAN_FILTERING"):
        touched = True
        try:
            ipr.link("set", index=cur.index, kind="bridge", br_vlan_filtering=1)
        except Exception as e:  # noqa: BLE001
            if netlink_errno(e) == errno.EOPNOTSUPP:
                raise CNIError(NOT_SUPPORTED_BY_KERNEL,
                               "vlan/vlanTrunk need bridge vlan filtering, which this kernel "
                               "does not support", str(e)) from None
            raise kernel_error(e, f"enabling vlan filtering on {name!r}") from None
    changes: dict[str, Any] = {}
    if mtu and cur.mtu != mtu:
        changes["mtu"] = mtu
    if not cur.up:
        changes["state"] = "up"
    try:
        if changes:
            ipr.link("set", index=cur.index, **changes)
        if promisc and not cur.promisc:
            ipr.link("set", index=cur.index, flags=IFF_PROMISC, change=IFF_PROMISC)
    except Exception as e:  # noqa: BLE001
        raise kernel_error(e, f"configuring bridge {name!r}") from None
    if not (touched or changes or (promisc and not cur.promisc)):
        return cur, created        # nothing changed since the lookup: no second one
    return get_link(ipr, index=cur.index) or cur, created


def pin_mac(ipr, index: int) -> None:
    """Set a bridge's MAC to its current value so it stops following its ports."""
    cur = get_link(ipr, index=index)
    if cur is None or not cur.mac:
        return
    try:
        ipr.link("set", index=index, address=cur.mac)
    except Exception as e:  # noqa: BLE001
        raise kernel_error(e, f"pinning the MAC of {cur.name}") from None


def add_veth(ipr, name: str, peer: str, peer_netns_fd: int, *, mtu: int = 0,
             peer_mac: str = "") -> None:
    """Create veth ``name`` here with its peer ``peer`` created directly in another netns."""
    peer_spec: dict[str, Any] = {"ifname": peer, "net_ns_fd": peer_netns_fd}
    kw: dict[str, Any] = {"ifname": name, "kind": "veth", "peer": peer_spec}
    if mtu:
        kw["mtu"] = mtu
        peer_spec["mtu"] = mtu
    if peer_mac:
        peer_spec["address"] = peer_mac
    try:
        ipr.link("add", **kw)
    except Exception as e:  # noqa: BLE001
        if netlink_errno(e) == errno.EEXIST:
            raise CNIError(LINK_EXISTS, f"cannot create veth {name!r} / {peer!r}: a link "
                           "of that name already exists",
                           "the attachment may already exist (ADD twice without DEL?)") from None
        raise kernel_error(e, f"creating veth {name!r}") from None


def set_link(ipr, index: int, what: str, **kw: Any) -> None:
    try:
        ipr.link("set", index=index, **kw)
    except Exception as e:  # noqa: BLE001
        raise kernel_error(e, what) from None


def set_brport(ipr, index: int, *, hairpin: bool | None = None,
               isolated: bool | None = None) -> None:
    kw: dict[str, int] = {}
    if hairpin is not None:
        kw["mode"] = int(hairpin)         # IFLA_BRPORT_MODE is the hairpin flag
    if isolated is not None:
        kw["isolated"] = int(isolated)
    if not kw:
        return
    try:
        ipr.brport("set", index=index, **kw)
    except Exception as e:  # noqa: BLE001
        raise kernel_error(e, f"setting bridge port options {kw} on link {index}") from None


def delete_link(ipr, name: str) -> bool:
    """Delete link ``name``; False when it did not exist."""
    idx = get_link(ipr, name)
    if idx is None:
        return False
    try:
        ipr.link("del", index=idx.index)
    except Exception as e:  # noqa: BLE001
        if netlink_errno(e) in (errno.ENODEV, errno.ENOENT):
            return False
        raise kernel_error(e, f"deleting link {name!r}") from None
    return True


# ---- addresses ----------------------------------------------------------------

@record(frozen=True)
class Addr:
    address: str        # CIDR form, e.g. 10.1.0.1/24
    flags: int

    @property
    def iface(self):
        return ipaddress.ip_interface(self.address)

    @property
    def tentative(self) -> bool:
        return bool(self.flags & IFA_F_TENTATIVE)

    @property
    def dadfailed(self) -> bool:
        return bool(self.flags & IFA_F_DADFAILED)


def list_addrs(ipr, index: int, family: int | None = None) -> list[Addr]:
    """Global-scope addresses of link ``index`` (family 4, 6 or None for both)."""
    kw: dict[str, Any] = {"index": index}
    if family is not None:
        kw["family"] = socket.AF_INET6 if family == 6 else socket.AF_INET
    try:
        msgs = ipr.get_addr(**kw)
    except Exception as e:  # noqa: BLE001
        raise kernel_error(e, f"listing addresses of link {index}") from None
    out = []
    for m in msgs:
        if m.get("scope", 0) != RT_SCOPE_UNIVERSE:
            continue        # skip fe80::/10 and host-scope addresses
        addr = m.get_attr("IFA_ADDRESS") or m.get_attr("IFA_LOCAL")
        flags = m.get_attr("IFA_FLAGS")
        if flags is None:
            flags = m.get("flags", 0)
        out.append(Addr(f"{addr}/{m['prefixlen']}", flags))
    return out


def add_addr(ipr, index: int, cidr: str, *, nodad: bool = False, what: str = "") -> bool:
    """Add ``cidr`` to link ``index``; False when exactly that address was already there."""
    ifc = ipaddress.ip_interface(cidr)
    kw: dict[str, Any] = {"index": index, "address": str(ifc.ip), "prefixlen": ifc.network.prefixlen}
    if nodad and ifc.version == 6:
        kw["flags"] = IFA_F_NODAD
    try:
        ipr.addr("add", **kw)
    except Exception as e:  # noqa: BLE001
        if netlink_errno(e) == errno.EEXIST:
            return False
        raise kernel_error(e, f"adding address {cidr} to {what or index}") from None
    return True


def del_addr(ipr, index: int, cidr: str) -> None:
    ifc = ipaddress.ip_interface(cidr)
    try:
        ipr.addr("del", index=index, address=str(ifc.ip), prefixlen=ifc.network.prefixlen)
    except Exception as e:  # noqa: BLE001
        if netlink_errno(e) not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
            raise kernel_error(e, f"removing address {cidr}") from None


def settle_addrs(ipr, index: int, timeout: float = 5.0, what: str = "",
                 only: Iterable[str] | None = None) -> None:
    """Wait until no (global) IPv6 address of the link is tentative; error on failed DAD.

    ``only``: restrict to these CIDRs (e.g. the addresses we just added)."""
    wanted = {ipaddress.ip_interface(c) for c in only} if only is not None else None
    deadline = time.monotonic() + timeout
    while True:
        addrs = [a for a in list_addrs(ipr, index, 6) if wanted is None or a.iface in wanted]
        failed = [a.address for a in addrs if a.dadfailed]
        if failed:
            raise CNIError(IO_FAILURE, f"duplicate address detection failed on {what or index}",
                           ", ".join(failed))
        if not any(a.tentative for a in addrs):
            return
        if time.monotonic() >= deadline:
            raise CNIError(IO_FAILURE, f"IPv6 addresses on {what or index} still tentative "
                           f"after {timeout:.0f}s",
                           ", ".join(a.address for a in addrs if a.tentative))
        time.sleep(0.05)


# ---- routes -------------------------------------------------------------------

@record(frozen=True)
class RouteInfo:
    dst: str            # CIDR, "0.0.0.0/0" for default
    gw: str
    oif: int
    priority: int
    table: int
    scope: int
    mtu: int
    advmss: int


def list_routes(ipr, family: int, table: int | None = None) -> list[RouteInfo]:
    fam = socket.AF_INET6 if family == 6 else socket.AF_INET
    kw: dict[str, Any] = {"family": fam}
    if table is not None:
        kw["table"] = table
    try:
        msgs = ipr.get_routes(**kw)
    except Exception as e:  # noqa: BLE001
        raise kernel_error(e, "listing routes") from None
    out = []
    zero = "::" if family == 6 else "0.0.0.0"
    for m in msgs:
        dst = m.get_attr("RTA_DST") or zero
        metrics = _attrs(m.get_attr("RTA_METRICS"))
        tab = m.get_attr("RTA_TABLE") or m.get("table", 0)
        out.append(RouteInfo(dst=str(ipaddress.ip_network(f"{dst}/{m['dst_len']}", strict=False)),
                             gw=m.get_attr("RTA_GATEWAY") or "", oif=m.get_attr("RTA_OIF") or 0,
                             priority=m.get_attr("RTA_PRIORITY") or 0, table=tab,
                             scope=m.get("scope", 0), mtu=metrics.get("RTAX_MTU", 0),
                             advmss=metrics.get("RTAX_ADVMSS", 0)))
    return out


def add_route(ipr, *, dst: str, oif: int, gw: str = "", priority: int = 0,
              table: int | None = None, scope: int | None = None, mtu: int = 0,
              advmss: int = 0, exist_ok: bool = False) -> bool:
    """Add a route; with ``exist_ok`` an existing one for the same destination
    (and metric) is left as it is and False is returned."""
    net = ipaddress.ip_network(dst, strict=False)
    kw: dict[str, Any] = {"dst": str(net), "oif": oif}
    if gw:
        kw["gateway"] = gw
    if priority:
        kw["priority"] = priority
    if table is not None:
        kw["table"] = table
    if scope is not None:
        kw["scope"] = scope
    metrics = {}
    if mtu:
        metrics["mtu"] = mtu
    if advmss:
        metrics["advmss"] = advmss
    if metrics:
        kw["metrics"] = metrics
    try:
        ipr.route("add", **kw)
        return True
    except Exception as e:  # noqa: BLE001
        desc = f"{net}" + (f" via {gw}" if gw else "") + (f" metric {priority}" if priority else "")
        if netlink_errno(e) == errno.EEXIST:
            if exist_ok:
                return False
            raise CNIError(IO_FAILURE, f"route {desc} already exists", str(e)) from None
        raise kernel_error(e, f"adding route {desc}") from None


def wait_operstate_up(ipr, index: int, timeout: float = 2.5, what: str = "") -> LinkInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = get_link(ipr, index=index)
        if info is None:
            raise CNIError(IO_FAILURE, f"link {what or index} vanished")
        if info.operstate == "UP":
            return info
        if time.monotonic() >= deadline:
            raise CNIError(IO_FAILURE, f"link {what or index} is not up after {timeout}s",
                           f"operstate {info.operstate}")
        time.sleep(0.02)


def families(cidrs: Iterable[str]) -> set[int]:
    return {ipaddress.ip_interface(c).version for c in cidrs}


# ---- bridge vlan filtering (kernels with CONFIG_BRIDGE_VLAN_FILTERING) ---------

BRIDGE_VLAN_INFO_PVID = 0x2
BRIDGE_VLAN_INFO_UNTAGGED = 0x4


def port_vlans(ipr, index: int) -> list[int]:
    """VLAN ids configured on bridge port ``index``."""
    try:
        msgs = ipr.get_vlans(index=index) if hasattr(ipr, "get_vlans") else []
    except Exception as e:  # noqa: BLE001
        raise kernel_error(e, f"listing vlans of link {index}") from None
    out = []
    for m in msgs:
        spec = m.get_attr("IFLA_AF_SPEC")
        for name, val in (spec.get("attrs") if spec else []):
            if name == "IFLA_BRIDGE_VLAN_INFO":
                out.append(val["vid"])
    return out


def set_port_vlans(ipr, index: int, *, vlan: int, trunk: list[int],
                   preserve_default: bool) -> None:
    """Access vlan ``vlan`` (pvid, untagged) and/or tagged ``trunk`` vids on a bridge port."""
    try:
        if (vlan or trunk) and not preserve_default:
            for vid in port_vlans(ipr, index):
                ipr.vlan_filter("del", index=index, vlan_info={"vid": vid})
        if vlan:
            ipr.vlan_filter("add", index=index, vlan_info={
                "vid": vlan, "flags": BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED})
        for vid in trunk:
            ipr.vlan_filter("add", index=index, vlan_info={"vid": vid})
        if not vlan and trunk:
            ipr.vlan_filter("add", index=index, vlan_info={
                "vid": 1, "flags": BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED})
    except CNIError:
        raise
    except Exception as e:  # noqa: BLE001
        raise kernel_error(e, f"configuring vlans on link {index}") from None
