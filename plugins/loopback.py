"""loopback: bring ``lo`` up in the pod's network namespace, and down at DEL.

containerd's CRI runs ``loopback`` from the CNI bin dir for every sandbox
(before the pod network), so a node whose bin dir holds only our suite needs
it. Behaviour follows the reference (containernetworking/plugins
plugins/main/loopback):

- the interface is always ``lo``, whatever CNI_IFNAME says;
- ADD sets it up and returns, when there is no prevResult, one interface
  ``{name: lo, mac: 00:00:00:00:00:00, sandbox: CNI_NETNS}`` and its first
  IPv4 and first IPv6 address with ``interface: 0``; with a prevResult it
  passes that on unchanged (in the config's version). An address on ``lo``
  that is not a loopback address is an error, found *before* anything is
  changed (the reference finds it after setting ``lo`` up and leaves it up);
- DEL sets ``lo`` down and succeeds when CNI_NETNS is empty or gone;
- CHECK fails when ``lo`` is down;
- STATUS and GC succeed: loopback keeps no state and needs no resource
  (the reference does not implement them at all).

All netlink work is done with the standard library (plugins.net.link's
rtnetlink helpers), so a loopback call never imports pyroute2: it is exec'd
for every pod.
"""
from __future__ import annotations

from plugins.core import netns as nsmod
from plugins.core.errors import CHECK_FAILED, CNIError, IO_FAILURE
from plugins.core.types import Interface, IPConfig, Result
from plugins.net import link

LO = "lo"
NULL_MAC = "00:00:00:00:00:00"


def _lo_index() -> int:
    idx = link.ifindex(LO)
    if idx is None:
        raise CNIError(IO_FAILURE, "no loopback interface 'lo' in the network namespace")
    return idx


def _non_loopback(cidrs: list[str]) -> list[str]:
    import ipaddress
    return [c for c in cidrs if not ipaddress.ip_interface(c).ip.is_loopback]


def add(call) -> Result:
    a, conf = call.args, call.conf
    with nsmod.entered(a.netns):
        idx = _lo_index()
        odd = _non_loopback(link.all_addrs(idx))
        if odd:
            raise CNIError(IO_FAILURE,
                           f"loopback interface found with non-loopback address {odd[0]}",
                           ", ".join(odd))
        link.set_up_index(idx, True, "lo")
        cidrs = link.all_addrs(idx)
    if conf.prev_result is not None:
        return conf.prev_result
    first = {}
    for c in cidrs:
        first.setdefault(":" in c, c)
    return Result(interfaces=[Interface(name=LO, mac=NULL_MAC, sandbox=a.netns)],
                  ips=[IPConfig(address=first[v6], interface=0)
                       for v6 in (False, True) if v6 in first])


def delete(call) -> None:
    if not call.args.netns:
        return
    try:
        with nsmod.entered(call.args.netns):
            idx = link.ifindex(LO)
            if idx is not None:
                link.set_up_index(idx, False, "lo")
    except nsmod.NetnsGone:
        return          # the pod is gone, and its lo with it


def check(call) -> None:
    with nsmod.entered(call.args.netns):
        flags = link.link_flags(_lo_index())
    if not (flags or 0) & link.IFF_UP:
        raise CNIError(CHECK_FAILED, "loopback interface is down")


def status(call) -> None:
    """Always ready: loopback needs no pool, device or daemon."""


def gc(call) -> None:
    """Nothing to collect: loopback keeps no state outside the pod's namespace."""
