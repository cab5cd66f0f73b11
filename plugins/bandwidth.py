"""bandwidth: shape a pod's traffic with TBF, on the host side of its veth.

A chained plugin. Rates are bits per second, bursts bits (CONVENTIONS.md of
the CNI spec repository, containernetworking/cni), from ``runtimeConfig.bandwidth`` (capability ``bandwidth``) or the same four
fields at the top level of the config, which win when any of them is set.

- ingress (toward the pod): TBF as the root qdisc of the host veth;
- egress (from the pod): the host veth's ingress qdisc + a match-all filter
  with a mirred redirect to an IFB device (named from a hash of network,
  container ID and interface, alias naming all three: one IFB per attachment)
  whose root qdisc is a TBF.

Zero means unshaped; rate and burst come in pairs; values the kernel's TBF
cannot represent are code 7. DEL and GC need no state: the IFB name is
derived, and the IFB alias tells GC whom it belongs to. An IFB named by an
earlier version (hash of network and container ID only, alias without the
interface) is removed by the DEL of the attachment whose veth redirects to it
(or of any attachment of that container once nothing redirects to it), and by
GC when its container has no valid attachment left.
"""
from __future__ import annotations

from plugins.core.config import Fields, require_prev_result
from plugins.core.errors import (CHECK_FAILED, CNIError, INVALID_NETWORK_CONFIG, IO_FAILURE)
from plugins.core.record import record
from plugins.core.types import Interface, Result

FIELDS = ("ingressRate", "ingressBurst", "egressRate", "egressBurst")
MAX_BITS = (2**32 - 1) * 8        # the kernel's TBF holds bytes in 32 bits


@record(frozen=True)
class Bandwidth:
    ingress_rate: int = 0
    ingress_burst: int = 0
    egress_rate: int = 0
    egress_burst: int = 0

    @property
    def shapes_ingress(self) -> bool:
        return self.ingress_rate > 0

    @property
    def shapes_egress(self) -> bool:
        return self.egress_rate > 0

    def is_zero(self) -> bool:
        return not (self.shapes_ingress or self.shapes_egress)


def _entry(f: Fields) -> Bandwidth:
    vals = {k: f.int(k, 0, lo=0, hi=MAX_BITS) for k in FIELDS}
    for d in ("ingress", "egress"):
        rate, burst = vals[f"{d}Rate"], vals[f"{d}Burst"]
        if bool(rate) != bool(burst):
            which = f"{d}Burst" if rate else f"{d}Rate"
            raise CNIError(INVALID_NETWORK_CONFIG,
                           f"{f.path(which)} must be set: rate and burst come in pairs",
                           f"{d}Rate={rate} {d}Burst={burst}")
    return Bandwidth(vals["ingressRate"], vals["ingressBurst"], vals["egressRate"],
                     vals["egressBurst"])


def parse_config(conf, ticks: float | None = None) -> Bandwidth:
    """The effective limits; code 7 for anything the kernel could not hold."""
    top = Fields(conf.raw)
    if any(top.has(k) for k in FIELDS):
        bw = _entry(top)
    else:
        bw = _entry(Fields(conf.runtime_config, "runtimeConfig").obj("bandwidth"))
    from plugins.net import tc
    t = tc.tick_in_usec() if ticks is None else ticks
    for d, rate, burst in (("ingress", bw.ingress_rate, bw.ingress_burst),
                           ("egress", bw.egress_rate, bw.egress_burst)):
        if rate:
            try:
                tc.tbf_params(rate, burst, t)
            except tc.TcParamError as e:
                raise CNIError(INVALID_NETWORK_CONFIG, f"{d} limits out of range: {e}",
                               f"{d}Rate={rate} bit/s {d}Burst={burst} bits") from None
    return bw


def _require_prev(conf) -> Result:
    return require_prev_result(conf, "bandwidth")


# ---- finding the host veth ----------------------------------------------------

def host_veth(call, prev: Result) -> tuple[str, int]:
    """(name, ifindex) in the node of the veth peer of the pod's interface.

    The peer index is read inside the pod; the node link with that index must
    be a veth whose own peer is the pod interface, and be a host interface of
    prevResult.
    """
    from plugins.core import netns
    from plugins.net.netlink.rtnl import Rtnl, get_link
    ifname = call.args.ifname
    with netns.entered(call.args.netns):
        with Rtnl() as nl:
            link = get_link(nl, ifname)
    if link is None:
        raise CNIError(IO_FAILURE, f"pod interface {ifname} not found in {call.args.netns}")
    if link.kind != "veth" or not link.peer:
        raise CNIError(INVALID_NETWORK_CONFIG,
                       f"pod interface {ifname} is a {link.kind or 'device'} with no host veth "
                       "peer", "bandwidth shapes on the host side of a veth; the main plugin "
                       "must create a veth pair (bridge, ptp)")
    host_names = {i.name for i in prev.interfaces if not i.sandbox}
    with Rtnl() as nl:
        h = get_link(nl, index=link.peer)
    if h is None or h.kind != "veth" or h.peer != link.index:
        raise CNIError(IO_FAILURE, f"the veth peer of {ifname} (index {link.peer}) is not in "
                       "this node's namespace")
    if host_names and h.name not in host_names:
        raise CNIError(IO_FAILURE, f"the host veth {h.name} of {ifname} is not an interface of "
                       "prevResult", f"prevResult host interfaces: {sorted(host_names)}")
    return h.name, h.index


# ---- handlers -----------------------------------------------------------------

def add(call) -> Result:
    bw = parse_config(call.conf)
    prev = _require_prev(call.conf)
    if bw.is_zero():
        return prev
    from plugins.net import tc
    from plugins.net.netlink.rtnl import Rtnl
    ticks = tc.tick_in_usec()
    name, index = host_veth(call, prev)
    result = prev.copy()
    from plugins.core.undo import Undo
    with Rtnl() as nl, Undo() as undo:
        t = tc.Tc(nl)
        if bw.shapes_ingress:
            t.set_tbf(index, tc.tbf_params(bw.ingress_rate, bw.ingress_burst, ticks))
            undo.callback(t.del_root, index)
        if bw.shapes_egress:
            key = (call.conf.name, call.args.container_id, call.args.ifname)
            ifb = tc.ifb_name(*key)
            veth = t.link(index=index)
            t.delete_link(ifb)                 # this attachment's leftover of an earlier ADD
            ifb_link = t.create_ifb(ifb, veth.mtu if veth else 0, tc.ifb_alias(*key))
            undo.callback(t.delete_link, ifb)
            t.set_tbf(ifb_link.index, tc.tbf_params(bw.egress_rate, bw.egress_burst, ticks))
            t.add_ingress(index)
            undo.callback(t.del_ingress, index)
            t.redirect_all(index, ifb_link.index)
            result.interfaces.append(Interface(name=ifb, mac=ifb_link.mac))
        undo.pop_all()
    return result


def _ifbs_of(t, call, veth_index: int | None, *, orphan: bool = True) -> list:
    """The IFB links of this attachment: the one named for it and, from an earlier
    version, the one named for its container when this attachment's veth redirects
    to it (or, with ``orphan``, when no link redirects to it any more)."""
    from plugins.net import tc
    net, cid = call.conf.name, call.args.container_id
    out = []
    own = t.link(tc.ifb_name(net, cid, call.args.ifname))
    if own is not None:
        out.append(own)
    old = t.link(tc.legacy_ifb_name(net, cid))
    if old is not None and tc.parse_alias(old.alias) == (net, cid, None):
        idx = old.index
        if (veth_index is not None and t.ingress_qdisc(veth_index) is not None
                and idx in t.redirect_targets(veth_index)) \
                or (orphan and not t.redirected_to(idx)):
            out.append(old)
    return out


def delete(call) -> None:
    """Remove the attachment's IFB and our qdiscs on its host veth; everything optional.
    Every step runs; failures are reported together."""
    bw = parse_config(call.conf)
    from plugins.net import tc
    names = (tc.ifb_name(call.conf.name, call.args.container_id, call.args.ifname),
             tc.legacy_ifb_name(call.conf.name, call.args.container_id))
    if bw.is_zero() and not any(_link_exists(n) for n in names):
        return None                  # nothing was shaped: no netlink library needed
    from plugins.core import netns
    from plugins.net.netlink.rtnl import Rtnl
    veth = None
    if call.args.netns and netns.exists(call.args.netns):
        try:
            veth = host_veth(call, call.conf.prev_result or Result())
        except CNIError:
            veth = None
    errors: list[str] = []
    with Rtnl() as nl:
        t = tc.Tc(nl)
        index = veth[1] if veth is not None else None
        ifbs = _ifbs_of(t, call, index)
        ours = {link.index for link in ifbs}
        if index is not None:
            try:
                if tc.Tc.tbf_of(t.root_qdisc(index)) is not None:
                    t.del_root(index)
                targets = (t.redirect_targets(index) if t.ingress_qdisc(index) is not None
                           else None)
                # our ingress qdisc: its filters redirect to our IFB (or to nothing left);
                # without it, a redirect to a deleted IFB would blackhole the pod's traffic
                if targets is not None and (not targets or ours & set(targets)
                                            or all(t.link(index=i) is None for i in targets)):
                    t.del_ingress(index)
            except OSError as e:
                errors.append(f"qdiscs of {veth[0]}: {e}")
        for link in ifbs:
            _delete_ifb(t, link.name, errors)
    _raise_collected(errors, "DEL")
    return None


def _delete_ifb(t, name: str, errors: list[str]) -> None:
    """Delete one IFB; a failure is recorded and the caller keeps going."""
    try:
        t.delete_link(name)
    except (OSError, CNIError) as e:
        errors.append(f"IFB {name}: {e}")


def _raise_collected(errors: list[str], what: str) -> None:
    if errors:
        raise CNIError(IO_FAILURE, f"bandwidth {what} failed in part", "; ".join(errors))


def _link_exists(name: str) -> bool:
    import socket
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def check(call) -> None:
    bw = parse_config(call.conf)
    prev = _require_prev(call.conf)
    from plugins.net import tc
    from plugins.net.netlink.rtnl import Rtnl
    ticks = tc.tick_in_usec()
    try:
        name, index = host_veth(call, prev)
    except CNIError:
        if bw.is_zero():
            return None              # nothing to shape, and nowhere it could be
        raise
    problems: list[str] = []
    with Rtnl() as nl:
        t = tc.Tc(nl)
        live_in = tc.Tc.tbf_of(t.root_qdisc(index))
        if bw.shapes_ingress:
            problems += _tbf_diff(f"ingress TBF on {name}", live_in,
                                  tc.tbf_params(bw.ingress_rate, bw.ingress_burst, ticks))
        elif live_in is not None:
            problems.append(f"{name} has a TBF but the config shapes no ingress")
        ifbs = _ifbs_of(t, call, index, orphan=False)
        ifb_link = ifbs[0] if ifbs else None
        ifb = (ifb_link.name if ifb_link is not None else
               tc.ifb_name(call.conf.name, call.args.container_id, call.args.ifname))
        if bw.shapes_egress:
            if ifb_link is None:
                problems.append(f"IFB {ifb} is missing")
            else:
                problems += _tbf_diff(f"egress TBF on {ifb}",
                                      tc.Tc.tbf_of(t.root_qdisc(ifb_link.index)),
                                      tc.tbf_params(bw.egress_rate, bw.egress_burst, ticks))
                if t.ingress_qdisc(index) is None:
                    problems.append(f"{name} has no ingress qdisc")
                elif ifb_link.index not in t.redirect_targets(index):
                    problems.append(f"{name}'s ingress is not redirected to {ifb}")
        elif ifb_link is not None:
            problems.append(f"IFB {ifb} exists but the config shapes no egress")
    if problems:
        raise CNIError(CHECK_FAILED, "bandwidth shaping does not match the config",
                       "; ".join(problems))


def _tbf_diff(what: str, live, want) -> list[str]:
    if live is None:
        return [f"{what} is missing"]
    out = []
    for k in ("rate", "limit", "buffer"):
        if getattr(live, k) != getattr(want, k):
            out.append(f"{what}: {k} is {getattr(live, k)}, want {getattr(want, k)}")
    return out


def gc(call) -> None:
    """Delete IFBs of this network whose attachment is not among the valid ones (an
    earlier version's IFB, keyed by container only: when no attachment of its
    container is valid). Keeps going past errors and reports them together."""
    parse_config(call.conf)
    raw = call.conf.raw
    from .core.config import valid_attachments
    valid = valid_attachments(raw)
    containers = {cid for cid, _ifname in valid}
    from plugins.net import tc
    from plugins.net.netlink.rtnl import Rtnl
    errors: list[str] = []
    with Rtnl() as nl:
        t = tc.Tc(nl)
        for link in t.ifb_links():
            owner = tc.parse_alias(link.alias)
            if owner is None or owner[0] != call.conf.name:
                continue
            net, cid, ifname = owner
            name = link.name
            if ifname is None:
                stale = cid not in containers and name == tc.legacy_ifb_name(net, cid)
            else:                     # exactly the one we would make for that attachment
                stale = (cid, ifname) not in valid and name == tc.ifb_name(net, cid, ifname)
            if stale:
                _delete_ifb(t, name, errors)
    _raise_collected(errors, "GC")


def status(call) -> None:
    return None
