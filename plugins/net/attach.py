"""Attach a pod to a Linux bridge on the node with a veth pair, and take it off again.

Shared by the ``bridge`` and ``vxlan`` plugins. Everything here runs with the
calling thread in the *node* namespace (the plugin's host); pod-side work
enters the pod's namespace itself. ADD's netlink work (bridge, veth, port
flags, addresses, routes, waits) goes through the stdlib socket of
``netlink.rtnl`` (ADR 0036); pyroute2 is imported lazily, only for bridge vlan
filtering and the CHECK and GC helpers.

API (stable; the vxlan plugin builds on it)
-------------------------------------------
``host_veth_name(network, container_id, ifname, prefix="veth") -> str``
    Deterministic host-side veth name (<= 15 chars) from a hash of the
    attachment key, so DEL/CHECK/GC find it without saved state.

``ensure_bridge(name, *, mtu=0, promisc=False, vlan_filtering=False) -> (Interface, created)``
    Create the bridge if missing (an existing non-bridge link is LINK_EXISTS,
    a kernel without vlan filtering is NOT_SUPPORTED_BY_KERNEL), set ``mtu``
    (raising or lowering an existing bridge), bring it up, accept_ra=0.
    When ``created``, push ``remove_bridge_if_unused(name)`` on the undo stack
    (before ``attach``) so a failed ADD does not leave a bridge it made (kept if
    another pod joined it meanwhile). ``bridge_interface(name)`` re-reads the
    bridge's ``Interface`` (its MAC can change as ports join).

``VethSpec(network, container_id, ifname, netns, bridge, mtu=0, mac="", hairpin=False,
           isolated=False, host_name="", vlan=0, vlan_trunk=(), preserve_default_vlan=False)``
    One attachment. ``host_name`` defaults to ``host_veth_name(...)``; the
    vlan fields need a bridge with vlan filtering (see ``ensure_bridge``).

``attach(spec, undo: core.undo.Undo) -> Attached``
    Create the veth pair (pod end created directly in the pod netns under
    ``spec.ifname``, with ``mac`` and ``mtu``), bring the host end up, enslave
    it to ``spec.bridge`` with hairpin / isolation flags. Registers on ``undo``
    a callback that deletes the pair; call ``undo.pop_all()`` once the whole
    ADD succeeded. ``Attached.host`` / ``.pod`` are ``types.Interface``s
    (``pod.sandbox`` = netns path); ``refresh_macs(attached, spec)`` re-reads
    MACs at the end of ADD (the host end's MAC may change).

``compute_gateways(result, is_gateway, is_default_gateway) -> dict[int, list[str]]``
    Pure. Fills ``ip.gateway`` (first address of the subnet when missing and
    ``is_gateway``), appends a default route per family for
    ``is_default_gateway`` (unless IPAM gave one), returns {4|6: [gw CIDRs]} to
    put on the bridge.

``configure_pod(netns, ifname, ips, routes, *, enable_dad=False)``
    In the pod: sysctls (accept_dad, arp_notify, IPv6 enabled when needed,
    keep_addr_on_down), addresses, link up, IPv6 addresses settled (not
    tentative: with DAD this waits for it), routes
    (gw defaults to the family's gateway; route mtu/advmss/priority/table/
    scope applied). ``ips`` are ``types.IPConfig``, ``routes`` ``types.Route``.

``pod_link_up(netns, ifname)``  L2-only attachments: bring the pod end up.

``set_bridge_addrs(bridge, cidrs, *, force=False)``
    Put gateway addresses on the bridge; a different IPv4 address (or an
    overlapping IPv6 one) is ADDRESS_UNAVAILABLE unless ``force`` replaces it.
    IPv6 gateways are added without DAD (they are ours) and waited for until
    usable (the bridge needs carrier). Pins the bridge MAC.

``enable_forwarding(families)``  ip_forward / ipv6 forwarding in the node netns.

``wait_port_up(host_name, timeout=2.5)``  wait for the host end's operstate UP.

Masquerade and MAC spoof checks live in ``masq.py`` (``setup(network, id,
ifname, cidrs)``, ``teardown(network, id, ifname)``, ``gc(network, valid)``)
and ``macspoof.py`` (``setup(network, id, ifname, host_veth, mac)``, same
``teardown``/``gc``); both key rules by (network, container ID, ifname).

``detach(network, container_id, ifname, netns, host_name="") -> None``
    Idempotent: removes the pod end if the netns still exists (missing or
    empty netns is fine), then the host end by its deterministic name. Uses a
    few standard-library rtnetlink requests (``link.delete_by_name``), so DEL
    never imports pyroute2. Raises a CNIError only for real failures.

``check_veth(spec, bridge_index, pod_mac="", host_mac="") -> None``
``check_pod_ips(netns, ifname, ips, routes) -> None``
    CHECK helpers; raise CNIError(CHECK_FAILED) describing the first mismatch.
"""
from __future__ import annotations

import ipaddress
import os

from ..core import netns as nsmod
from ..core.errors import (ADDRESS_UNAVAILABLE, CHECK_FAILED, CNIError, IO_FAILURE,
                           TRY_AGAIN_LATER)
from ..core.record import record
from ..core.types import Interface, IPConfig, Result, Route
from ..core.names import sha256_hex
from . import link, sysctl
from .netlink import rtnl

TYPE_CHECKING = False       # not from typing: importing it costs ~2 ms per plugin exec
if TYPE_CHECKING:
    from typing import Iterable

    from ..core.undo import Undo

HOST_PREFIX = "veth"


def host_veth_name(network: str, container_id: str, ifname: str, prefix: str = HOST_PREFIX) -> str:
    """Deterministic host-side name: ``prefix`` + hex of sha256(network, id, ifname), 15 chars."""
    if len(prefix) > 7:
        raise ValueError("prefix too long for a 15-char interface name")
    digest = sha256_hex(f"{network}\x00{container_id}\x00{ifname}")
    return prefix + digest[: 15 - len(prefix)]


@record
class VethSpec:
    network: str
    container_id: str
    ifname: str
    netns: str
    bridge: str
    mtu: int = 0
    mac: str = ""
    hairpin: bool = False
    isolated: bool = False
    host_name: str = ""
    vlan: int = 0                      # access vlan (needs bridge vlan filtering)
    vlan_trunk: tuple[int, ...] = ()   # tagged vids
    preserve_default_vlan: bool = False
    owner: str = ""                    # ifalias marking the host veth as ours (see gc_ports)

    def __post_init__(self) -> None:
        if not self.host_name:
            self.host_name = host_veth_name(self.network, self.container_id, self.ifname)


@record
class Attached:
    host: Interface
    pod: Interface
    host_index: int
    pod_index: int


def _sysctl_quiet(key: str, value: str | int) -> None:
    """Best effort (the key may be absent, e.g. IPv6 disabled in this netns)."""
    try:
        sysctl.ensure(key, value)
    except OSError:
        pass


# ---- bridge -------------------------------------------------------------------

def ensure_bridge(name: str, *, mtu: int = 0, promisc: bool = False,
                  vlan_filtering: bool = False) -> tuple[Interface, bool]:
    if vlan_filtering:          # bridge vlan filtering stays on pyroute2
        ipr = link.open_iproute()
        try:
            info, created = link.ensure_bridge(ipr, name, mtu=mtu, promisc=promisc,
                                               vlan_filtering=vlan_filtering)
        finally:
            ipr.close()
    else:
        with rtnl.Rtnl() as nl:
            info, created = rtnl.ensure_bridge(nl, name, mtu=mtu, promisc=promisc)
    _sysctl_quiet(f"net/ipv6/conf/{name}/accept_ra", 0)    # we own this link's routes
    return Interface(name=info.name, mac=info.mac), created


def remove_bridge_if_unused(name: str) -> bool:
    """Rollback of a bridge this ADD created: delete it unless something is enslaved to it
    (a parallel ADD may have attached a pod meanwhile). True when deleted."""
    with rtnl.Rtnl() as nl:
        br = rtnl.get_link(nl, name)
        if br is None or br.kind != "bridge":
            return False
        if rtnl.has_ports(nl, br.index):
            return False
        return rtnl.delete_link(nl, name)


def bridge_interface(name: str) -> Interface:
    with rtnl.Rtnl() as nl:
        info = rtnl.get_link(nl, name)
    if info is None:
        raise CNIError(IO_FAILURE, f"bridge {name!r} vanished")
    return Interface(name=info.name, mac=info.mac)


# ---- veth ---------------------------------------------------------------------

def attach(spec: VethSpec, undo: Undo) -> Attached:
    with rtnl.Rtnl() as nl:
        br = rtnl.get_link(nl, spec.bridge)
        if br is None or br.kind != "bridge":
            # e.g. removed by the rollback of a parallel ADD that had created it
            raise CNIError(TRY_AGAIN_LATER, f"bridge {spec.bridge!r} not found",
                           "it may have been removed by a failed parallel ADD; retry")
        fd = nsmod.open_netns(spec.netns)
        try:
            rtnl.add_veth(nl, spec.host_name, spec.ifname, fd, mtu=spec.mtu, peer_mac=spec.mac)
        finally:
            os.close(fd)
        undo.callback(_undo_veth, spec.host_name)
        host = rtnl.get_link(nl, spec.host_name)
        if host is None:
            raise CNIError(IO_FAILURE, f"veth {spec.host_name} vanished right after creation")
        _sysctl_quiet(f"net/ipv6/conf/{spec.host_name}/accept_ra", 0)
        rtnl.set_link(nl, host.index, f"attaching {spec.host_name} to {spec.bridge}",
                      master=br.index, state="up")
        rtnl.set_brport(nl, host.index, hairpin=spec.hairpin,
                        isolated=spec.isolated if spec.isolated else None)
        if spec.owner:      # the kernel takes no alias in the creating request
            rtnl.set_link(nl, host.index, f"marking {spec.host_name}", ifalias=spec.owner)
        pod_index = host.peer
    if spec.vlan or spec.vlan_trunk:        # bridge vlan filtering stays on pyroute2
        ipr = link.open_iproute()
        try:
            link.set_port_vlans(ipr, host.index, vlan=spec.vlan, trunk=list(spec.vlan_trunk),
                                preserve_default=spec.preserve_default_vlan)
        finally:
            ipr.close()
    pod = _pod_link(spec)
    if pod is None:
        raise CNIError(IO_FAILURE, f"{spec.ifname} not found in {spec.netns} after creation")
    return Attached(host=Interface(name=spec.host_name, mac=host.mac),
                    pod=Interface(name=spec.ifname, mac=pod.mac, sandbox=spec.netns),
                    host_index=host.index, pod_index=pod.index or pod_index)


def _undo_veth(host_name: str) -> None:
    """Rollback: deleting the host end removes the pod end too (an Undo step: quiet)."""
    with rtnl.Rtnl() as nl:
        rtnl.delete_link(nl, host_name)


def refresh_macs(att: Attached, spec: VethSpec) -> None:
    with rtnl.Rtnl() as nl:
        host = rtnl.get_link(nl, index=att.host_index)
    if host is not None:
        att.host.mac = host.mac


def settle_and_read(att: Attached, bridge: str, *, wait_up: bool,
                    timeout: float = 2.5) -> Interface:
    """``wait_port_up`` (when ``wait_up``), ``refresh_macs`` and
    ``bridge_interface(bridge)`` on one netlink socket, the host end by its
    known index: the end of a bridge ADD in two lookups instead of four
    lookups and three sockets. Returns the bridge's Interface."""
    with rtnl.Rtnl() as nl:
        host_name = att.host.name
        if wait_up:
            host = rtnl.wait_operstate_up(nl, att.host_index, timeout, host_name)
        else:
            host = rtnl.get_link(nl, index=att.host_index)
        if host is not None:
            att.host.mac = host.mac
        br = rtnl.get_link(nl, bridge)
    if br is None:
        raise CNIError(IO_FAILURE, f"bridge {bridge!r} vanished")
    return Interface(name=br.name, mac=br.mac)


def wait_port_up(host_name: str, timeout: float = 2.5) -> None:
    with rtnl.Rtnl() as nl:
        info = rtnl.get_link(nl, host_name)
        if info is None:
            raise CNIError(IO_FAILURE, f"veth {host_name} vanished")
        rtnl.wait_operstate_up(nl, info.index, timeout, host_name)


# ---- addresses and routes ------------------------------------------------------

def compute_gateways(result: Result, is_gateway: bool,
                     is_default_gateway: bool) -> dict[int, list[str]]:
    gws: dict[int, list[str]] = {4: [], 6: []}
    have_default = {4: False, 6: False}
    for r in result.routes:
        net = ipaddress.ip_network(r.dst, strict=False)
        if net.prefixlen == 0 and r.gw:
            have_default[net.version] = True
    for ip in result.ips:
        ifc = ip.iface
        fam = ifc.version
        if not ip.gateway and is_gateway:
            ip.gateway = str(ifc.network.network_address + 1)
        if is_default_gateway and not have_default[fam]:
            result.routes.append(Route(dst="0.0.0.0/0" if fam == 4 else "::/0",
                                       gw=ip.gateway))
            have_default[fam] = True
        if is_gateway and ip.gateway:
            cidr = f"{ip.gateway}/{ifc.network.prefixlen}"
            if cidr not in gws[fam]:
                gws[fam].append(cidr)
    return gws


def configure_pod(netns_path: str, ifname: str, ips: list[IPConfig], routes: list[Route],
                  *, enable_dad: bool = False) -> None:
    with nsmod.entered(netns_path):
        with rtnl.Rtnl() as nl:
            _configure_here(nl, ifname, ips, routes, enable_dad)


def _configure_here(nl: rtnl.Rtnl, ifname: str, ips: list[IPConfig], routes: list[Route],
                    enable_dad: bool) -> None:
    info = rtnl.get_link(nl, ifname)
    if info is None:
        raise CNIError(IO_FAILURE, f"{ifname} not found in the pod")
    has_v6 = any(ip.family == 6 for ip in ips)
    if has_v6:
        for dev in ("lo", ifname):
            key = f"net/ipv6/conf/{dev}/disable_ipv6"
            try:
                sysctl.ensure(key, 0)
            except OSError as e:
                raise CNIError(IO_FAILURE, f"cannot enable IPv6 on {dev} in the pod", str(e)) from None
        _sysctl_quiet(f"net/ipv6/conf/{ifname}/keep_addr_on_down", 1)
    if enable_dad:
        _sysctl_quiet(f"net/ipv6/conf/{ifname}/enhanced_dad", 1)
        _sysctl_quiet(f"net/ipv6/conf/{ifname}/accept_dad", 1)
    else:
        _sysctl_quiet(f"net/ipv6/conf/{ifname}/accept_dad", 0)
    _sysctl_quiet(f"net/ipv4/conf/{ifname}/arp_notify", 1)
    gw_by_family: dict[int, str] = {}
    for ip in ips:
        rtnl.add_addr(nl, info.index, ip.address, what=f"{ifname} in the pod")
        if ip.gateway and ip.family not in gw_by_family:
            gw_by_family[ip.family] = ip.gateway
    rtnl.set_link(nl, info.index, f"setting {ifname} up in the pod", state="up")
    if has_v6:
        # Even without DAD, IPv6 addresses stay tentative (ignored by neighbour
        # discovery) until the kernel has seen the link's carrier; under load that
        # can take a while, and the pod would miss its first neighbour solicitations.
        rtnl.settle_addrs(nl, info.index, 5.0, f"{ifname} in the pod")
    for r in routes:
        fam = ipaddress.ip_network(r.dst, strict=False).version
        gw = r.gw or gw_by_family.get(fam, "")
        # A route the pod already has (e.g. a default route through another
        # attachment) wins, as with the reference plugins: skip, don't fail.
        rtnl.add_route(nl, dst=r.dst, oif=info.index, gw=gw, priority=r.priority,
                       table=r.table, scope=r.scope, mtu=r.mtu, advmss=r.advmss, exist_ok=True)


def port_owner(kind: str, network: str) -> str:
    """The ifalias a plugin puts on the host veths it makes for ``network``."""
    alias = f"cnilab-{kind}:{network}"
    if len(alias) > 200:      # IFALIASZ is 256; network names are not bounded
        alias = f"cnilab-{kind}:#" + sha256_hex(network)[:32]
    return alias


def gc_ports(bridge: str, owner: str, keep: set[str]) -> list[str]:
    """Delete the veth ports of ``bridge`` marked ``owner`` whose name is not in ``keep``
    (the host names of the attachments still valid); returns the names deleted.

    For GC: an attachment the runtime no longer knows whose pod namespace still
    exists keeps its veth otherwise (a missing namespace takes the veth with it).
    Deleting the host end deletes the pod end too.
    """
    ipr = link.open_iproute()
    try:
        br = link.get_link(ipr, bridge)
        if br is None:
            return []
        gone = []
        for info in link.list_links(ipr):
            if info.master == br.index and info.kind == "veth" and info.alias == owner \
                    and info.name not in keep:
                if link.delete_index(info.index):
                    gone.append(info.name)
        return gone
    finally:
        ipr.close()


def _pod_link(spec: "VethSpec"):
    """The pod end of the veth as the pod's namespace sees it (None if absent)."""
    with nsmod.entered(spec.netns):
        with rtnl.Rtnl() as nl:
            return rtnl.get_link(nl, spec.ifname)


def pod_link_up(netns_path: str, ifname: str) -> None:
    with nsmod.entered(netns_path):
        with rtnl.Rtnl() as nl:
            info = rtnl.get_link(nl, ifname)
            if info is None:
                raise CNIError(IO_FAILURE, f"{ifname} not found in the pod")
            rtnl.set_link(nl, info.index, f"setting {ifname} up in the pod", state="up")


def set_bridge_addrs(bridge: str, cidrs: Iterable[str], *, force: bool = False) -> None:
    cidrs = list(cidrs)
    if not cidrs:
        return
    with rtnl.Rtnl() as nl:
        br = rtnl.get_link(nl, bridge)
        if br is None:
            raise CNIError(IO_FAILURE, f"bridge {bridge!r} vanished")
        for cidr in cidrs:
            want = ipaddress.ip_interface(cidr)
            present = rtnl.list_addrs(nl, br.index, want.version)
            if any(a.iface == want for a in present):
                continue
            for a in present:
                clash = want.version == 4 or a.iface.network.overlaps(want.network)
                if not clash:
                    continue
                if not force:
                    raise CNIError(ADDRESS_UNAVAILABLE,
                                   f"{bridge!r} already has an IP address different from {cidr}",
                                   f"found {a.address}; set forceAddress to replace it")
                rtnl.del_addr(nl, br.index, a.address)
            rtnl.add_addr(nl, br.index, cidr, nodad=True, what=f"bridge {bridge}")
        v6 = [c for c in cidrs if ipaddress.ip_interface(c).version == 6]
        if v6:      # usable only once the bridge is "ready" (has carrier), even without DAD
            rtnl.settle_addrs(nl, br.index, 5.0, f"bridge {bridge}", only=v6)
        rtnl.pin_mac(nl, br.index)


def enable_forwarding(families: Iterable[int]) -> None:
    for fam in set(families):
        key = "net/ipv4/ip_forward" if fam == 4 else "net/ipv6/conf/all/forwarding"
        try:
            sysctl.ensure(key, 1)
        except OSError as e:
            raise CNIError(IO_FAILURE, f"cannot enable IPv{fam} forwarding", str(e)) from None


# ---- DEL ------------------------------------------------------------------------

def detach(network: str, container_id: str, ifname: str, netns_path: str,
           host_name: str = "") -> None:
    """Remove the veth pair of this attachment; everything already gone is success."""
    host_name = host_name or host_veth_name(network, container_id, ifname)
    # stdlib netlink only: a DEL does not need pyroute2.
    if netns_path:
        try:
            with nsmod.entered(netns_path):
                # Only a veth is ours to delete (CNI_IFNAME belongs to this plugin).
                link.delete_by_name(ifname, kind="veth")
        except nsmod.NetnsGone:
            pass
        except OSError as e:
            raise CNIError(IO_FAILURE, f"removing {ifname} from {netns_path} failed", str(e)) from None
    try:
        link.delete_by_name(host_name, kind="veth")
    except OSError as e:
        raise CNIError(IO_FAILURE, f"removing host veth {host_name} failed", str(e)) from None


# ---- CHECK ------------------------------------------------------------------------

def _fail(msg: str, details: str = "") -> CNIError:
    return CNIError(CHECK_FAILED, msg, details)


def check_veth(spec: VethSpec, bridge_index: int, pod_mac: str = "", host_mac: str = "") -> None:
    ipr = link.open_iproute()
    try:
        host = link.get_link(ipr, spec.host_name)
        if host is None:
            raise _fail(f"host veth {spec.host_name} not found")
        if host.kind != "veth":
            raise _fail(f"{spec.host_name} is a {host.kind or 'link'}, not a veth")
        if host.master != bridge_index:
            raise _fail(f"{spec.host_name} is not attached to bridge {spec.bridge}")
        if spec.mtu and host.mtu != spec.mtu:
            raise _fail(f"{spec.host_name} MTU is {host.mtu}, expected {spec.mtu}")
        if host_mac and host.mac != host_mac.lower():
            raise _fail(f"{spec.host_name} MAC is {host.mac}, expected {host_mac}")
        port = link.brport_attrs(ipr, host.index)
        if bool(port.get("IFLA_BRPORT_MODE", 0)) != spec.hairpin:
            raise _fail(f"{spec.host_name} hairpin mode is not {spec.hairpin}")
        if spec.isolated and not port.get("IFLA_BRPORT_ISOLATED", 0):
            raise _fail(f"{spec.host_name} is not an isolated port")
    finally:
        ipr.close()
    pod = _pod_link(spec)
    if pod is None:
        raise _fail(f"{spec.ifname} not found in {spec.netns}")
    if pod.kind != "veth":
        raise _fail(f"{spec.ifname} in the pod is not a veth")
    if pod.peer != host.index or host.peer != pod.index:
        raise _fail(f"{spec.ifname} in the pod is not the peer of {spec.host_name}")
    if pod_mac and pod.mac != pod_mac.lower():
        raise _fail(f"{spec.ifname} MAC is {pod.mac}, expected {pod_mac}")
    if spec.mtu and pod.mtu != spec.mtu:
        raise _fail(f"{spec.ifname} MTU is {pod.mtu}, expected {spec.mtu}")


def check_pod_ips(netns_path: str, ifname: str, ips: list[IPConfig], routes: list[Route]) -> None:
    with nsmod.entered(netns_path):
        ipr = link.open_iproute()
        try:
            info = link.get_link(ipr, ifname)
            if info is None:
                raise _fail(f"{ifname} not found in {netns_path}")
            present = {a.iface for a in link.list_addrs(ipr, info.index)}
            for ip in ips:
                if ip.iface not in present:
                    raise _fail(f"address {ip.address} not found on {ifname}")
            tables: dict[tuple[int, int | None], list] = {}
            for r in routes:
                fam = ipaddress.ip_network(r.dst, strict=False).version
                key = (fam, r.table)
                if key not in tables:
                    tables[key] = link.list_routes(ipr, fam, r.table)
                want = str(ipaddress.ip_network(r.dst, strict=False))
                cands = [k for k in tables[key] if k.dst == want and k.oif == info.index]
                if r.gw:
                    cands = [k for k in cands
                             if k.gw and ipaddress.ip_address(k.gw) == ipaddress.ip_address(r.gw)]
                if not cands:
                    raise _fail(f"route {r.dst}" + (f" via {r.gw}" if r.gw else "")
                                + f" not found on {ifname}")
        finally:
            ipr.close()
