"""Traffic-control messages on a standard-library rtnetlink socket (``rtnl.Rtnl``).

What the bandwidth plugin needs of tc, and nothing more: a TBF as a root
qdisc, the ingress qdisc, a filter on it that redirects everything to another
device (matchall, or u32 match-all on kernels without cls_matchall), and
reading those back. pyroute2 costs ~150 ms of imports in a cold plugin and
1-3 ms of Python per request in a warm one (docs/adr/0036, 0037); these are
a dozen fixed-layout messages.

Layouts (include/uapi/linux/rtnetlink.h, pkt_sched.h, pkt_cls.h,
tc_act/tc_mirred.h): ``struct tcmsg`` is family, 3 pad bytes, ifindex,
handle, parent, info; a filter's info is (priority << 16) | protocol in
network byte order. Kernel refusals are ``link.NetlinkFailure`` (an OSError).
"""
from __future__ import annotations

import errno
import struct

from ...core.record import record
from . import wire
from .rtnl import Rtnl, cstr, nested

RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46
_CREATE, _EXCL, _REPLACE, _DUMP, _ECHO = 0x400, 0x200, 0x100, 0x300, 0x8

TC_H_ROOT = 0xFFFFFFFF
TC_H_INGRESS = 0xFFFFFFF1
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_TBF_PARMS = 1
TCA_MATCHALL_ACT = 2
TCA_U32_CLASSID, TCA_U32_SEL, TCA_U32_ACT = 1, 5, 7
TCA_ACT_KIND, TCA_ACT_OPTIONS = 1, 2
TCA_MIRRED_PARMS = 2
TCA_EGRESS_REDIR = 1          # mirred eaction: redirect to the target's egress
TC_ACT_STOLEN = 4             # what tc and the reference use for a redirect
TC_U32_TERMINAL = 1
TC_LINKLAYER_ETHERNET = 1

TCMSG = struct.Struct("=BxxxiIII")           # family, ifindex, handle, parent, info
_RATESPEC = "BBHhHI"                          # cell_log, linklayer, overhead, cell_align, mpu, rate
TBF_QOPT = struct.Struct("=" + _RATESPEC + _RATESPEC + "III")   # rate, peakrate, limit, buffer, mtu
MIRRED = struct.Struct("=IIiiiiI")           # index, capab, action, refcnt, bindcnt, eaction, ifindex
U32_SEL = struct.Struct("=BBBxHHhhI")        # flags, offshift, nkeys, offmask, off, offoff, hoff, hmask
U32_KEY = struct.Struct("=IIii")             # mask, val, off, offmask


@record(frozen=True)
class Qdisc:
    index: int
    handle: int
    parent: int
    kind: str
    tbf: tuple[int, int, int] | None         # (rate B/s, limit B, buffer ticks) of a TBF


def _tcmsg(index: int, handle: int = 0, parent: int = 0, info: int = 0) -> bytes:
    return TCMSG.pack(0, index, handle, parent, info)


def _filter_info(prio: int, protocol: int) -> int:
    return (prio << 16) | struct.unpack("=H", struct.pack("!H", protocol))[0]   # htons


# ---- qdiscs -----------------------------------------------------------------------

def replace_tbf(nl: Rtnl, index: int, handle: int, rate: int, limit: int, buffer: int) -> None:
    """TBF as the root qdisc of ``index`` (created, or replacing what is there):
    rate in bytes/s, limit in bytes, buffer in scheduler ticks. No rate table,
    as the reference (vishvananda/netlink) sends: the kernel computes rates
    from ``rate`` itself; the link layer is set to Ethernet, as tc's rate
    table would have made the kernel detect."""
    qopt = TBF_QOPT.pack(0, TC_LINKLAYER_ETHERNET, 0, 0, 0, rate, 0, 0, 0, 0, 0, 0, limit,
                         buffer, 0)
    nl.request(RTM_NEWQDISC, _tcmsg(index, handle, TC_H_ROOT) + cstr(TCA_KIND, "tbf")
               + nested(TCA_OPTIONS, wire.attr(TCA_TBF_PARMS, qopt)), _CREATE | _REPLACE)


def add_ingress(nl: Rtnl, index: int, handle: int) -> bool:
    """The ingress qdisc of ``index``; False when one is there already."""
    try:
        nl.request(RTM_NEWQDISC, _tcmsg(index, handle, TC_H_INGRESS) + cstr(TCA_KIND, "ingress"),
                   _CREATE | _EXCL)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise
        return False
    return True


def delete_qdisc(nl: Rtnl, index: int, parent: int, handle: int = 0) -> bool:
    """Delete the qdisc at ``parent`` (TC_H_ROOT, TC_H_INGRESS); False when there was
    none of ours (the kernel says ENOENT for a default root, EINVAL for none at all)."""
    try:
        nl.request(RTM_DELQDISC, _tcmsg(index, handle, parent))
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            return False
        raise
    return True


def get_qdisc(nl: Rtnl, index: int, parent: int) -> Qdisc | None:
    """The qdisc at ``parent`` of ``index`` (one RTM_GETQDISC, no dump), the default
    one included (a veth's root is ``noqueue``); None when there is none (no
    ingress qdisc, a link that is down). The kernel answers a qdisc GET as a
    notification: only to the TC multicast group unless the request asks for
    an echo."""
    try:
        replies = nl.request(RTM_GETQDISC, _tcmsg(index, 0, parent), _ECHO)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            return None
        raise
    return parse_qdisc(replies[0]) if replies else None


def parse_qdisc(body: bytes) -> Qdisc:
    _fam, index, handle, parent, _info = TCMSG.unpack_from(body, 0)
    a = wire.parse_attrs(body, TCMSG.size)
    kind = a.get(TCA_KIND, b"").split(b"\0", 1)[0].decode()
    tbf = None
    if kind == "tbf" and TCA_OPTIONS in a:
        parms = wire.parse_attrs(a[TCA_OPTIONS]).get(TCA_TBF_PARMS)
        if parms is not None and len(parms) >= TBF_QOPT.size:
            f = TBF_QOPT.unpack_from(parms)
            tbf = (f[5], f[12], f[13])
    return Qdisc(index=index, handle=handle, parent=parent, kind=kind, tbf=tbf)


# ---- filters ----------------------------------------------------------------------

def _mirred_redirect(target: int) -> bytes:
    """One action list holding a mirred egress redirect to ``target``."""
    parms = MIRRED.pack(0, 0, TC_ACT_STOLEN, 0, 0, TCA_EGRESS_REDIR, target)
    return nested(1, cstr(TCA_ACT_KIND, "mirred"),
                  nested(TCA_ACT_OPTIONS, wire.attr(TCA_MIRRED_PARMS, parms)))


def replace_redirect_filter(nl: Rtnl, index: int, parent: int, prio: int, protocol: int,
                            target: int, classifier: str, classid: int = 0) -> None:
    """A filter at ``prio`` on qdisc ``parent`` of ``index`` sending every packet
    to ``target``'s egress: ``matchall``, or ``u32`` with one key that matches
    anything (``classid`` its flow id, as ``tc ... u32 match u32 0 0 flowid``)."""
    if classifier == "matchall":
        opts = nested(TCA_MATCHALL_ACT, _mirred_redirect(target))
    elif classifier == "u32":
        sel = U32_SEL.pack(TC_U32_TERMINAL, 0, 1, 0, 0, 0, 0, 0) + U32_KEY.pack(0, 0, 0, 0)
        opts = (wire.attr(TCA_U32_CLASSID, struct.pack("=I", classid))
                + wire.attr(TCA_U32_SEL, sel) + nested(TCA_U32_ACT, _mirred_redirect(target)))
    else:
        raise ValueError(f"unknown classifier {classifier!r}")
    nl.request(RTM_NEWTFILTER, _tcmsg(index, 0, parent, _filter_info(prio, protocol))
               + cstr(TCA_KIND, classifier) + nested(TCA_OPTIONS, opts), _CREATE | _REPLACE)


def redirect_targets(nl: Rtnl, index: int, parent: int) -> list[int]:
    """ifindexes the mirred actions of the filters on ``parent`` of ``index`` send to
    (matchall and u32 filters; others have no actions we read)."""
    try:
        replies = nl.request(RTM_GETTFILTER, _tcmsg(index, 0, parent), _DUMP)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            return []
        raise
    out: list[int] = []
    for body in replies:
        a = wire.parse_attrs(body, TCMSG.size)
        kind = a.get(TCA_KIND, b"").split(b"\0", 1)[0]
        acts_attr = {b"matchall": TCA_MATCHALL_ACT, b"u32": TCA_U32_ACT}.get(kind)
        if acts_attr is None or TCA_OPTIONS not in a:
            continue
        acts = wire.parse_attrs(a[TCA_OPTIONS]).get(acts_attr)
        if acts is not None:
            out += _mirred_targets(acts)
    return out


def _mirred_targets(acts: bytes) -> list[int]:
    out = []
    for act in wire.parse_attrs(acts).values():       # keyed by order: 1, 2, ...
        fields = wire.parse_attrs(act)
        if fields.get(TCA_ACT_KIND, b"").split(b"\0", 1)[0] != b"mirred":
            continue
        parms = wire.parse_attrs(fields.get(TCA_ACT_OPTIONS, b"")).get(TCA_MIRRED_PARMS)
        if parms is not None and len(parms) >= MIRRED.size:
            out.append(MIRRED.unpack_from(parms)[6])
    return out
