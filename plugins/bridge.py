"""The ``bridge`` CNI plugin: a Linux bridge on the node, a veth pair per attachment.

Runs with the node's network namespace as its host. ADD builds everything
under an undo stack released only once the result is complete, so a failure
at any step leaves nothing behind (no veth, no IP reservation, no rule). DEL
is idempotent and needs neither the netns nor prevResult: every host-side
artefact is found from (network, container ID, ifname). See docs/plugins/bridge.md.
"""
from __future__ import annotations

from .core import cniargs, names, netns as nsmod
from .core.config import Fields
from .core.errors import (CNIError, CHECK_FAILED, INVALID_NETWORK_CONFIG, IO_FAILURE)
from .core.invoke import delegate, delegate_add
from .core.record import field, record
from .core.skel import Call
from .core.types import Interface, Result
from .core.undo import Undo
from .net import attach

TYPE_CHECKING = False       # not from typing: importing it costs ~2 ms per plugin exec
if TYPE_CHECKING:
    from typing import Callable

DEFAULT_BRIDGE = "cni0"

# Tests set this to a callable run right after IPAM and pod configuration
# (the failure-injection point); never set in production.
after_ipam_hook: Callable[[], None] | None = None


@record
class BridgeConf:
    bridge: str = DEFAULT_BRIDGE
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    mtu: int = 0
    hairpin: bool = False
    promisc: bool = False
    vlan: int = 0
    vlan_trunk: list[int] = field(default_factory=list)
    preserve_default_vlan: bool = False
    enable_dad: bool = False
    macspoofchk: bool = False
    disable_container_interface: bool = False
    port_isolation: bool = False
    mac: str = ""
    ipam_type: str = ""

    @property
    def wants_vlan_filtering(self) -> bool:
        return bool(self.vlan or self.vlan_trunk)


def _trunk(items: list[Fields]) -> list[int]:
    vids: set[int] = set()
    for f in items:
        lo, hi = f.has("minID"), f.has("maxID")
        if lo != hi:
            raise CNIError(INVALID_NETWORK_CONFIG, f"{f.where}: minID and maxID must be set together")
        if lo:
            a = f.int("minID", lo=1, hi=4094)
            b = f.int("maxID", lo=1, hi=4094)
            if b < a:
                raise CNIError(INVALID_NETWORK_CONFIG, f"{f.where}: minID is greater than maxID",
                               f"{a} > {b}")
            vids.update(range(a, b + 1))
        if f.has("id"):
            vids.add(f.int("id", lo=1, hi=4094))
    return sorted(vids)


def _check_mac(mac: str, where: str) -> str:
    return names.check_mac(mac, where)


def parse_conf(call: Call, *, strict: bool = True) -> BridgeConf:
    """The typed config; ``strict`` adds ADD/CHECK-only rules (conflicts, CNI_ARGS)."""
    raw = call.conf.raw
    f = Fields(raw)
    c = BridgeConf(
        bridge=f.ifname("bridge", DEFAULT_BRIDGE),
        is_gateway=f.bool("isGateway"),
        is_default_gateway=f.bool("isDefaultGateway"),
        force_address=f.bool("forceAddress"),
        ip_masq=f.bool("ipMasq"),
        mtu=f.int("mtu", 0, lo=0, hi=65535),
        hairpin=f.bool("hairpinMode"),
        promisc=f.bool("promiscMode"),
        vlan=f.int("vlan", 0, lo=0, hi=4094),
        vlan_trunk=_trunk(f.objects("vlanTrunk")),
        preserve_default_vlan=f.bool("preserveDefaultVlan"),
        enable_dad=f.bool("enabledad"),
        macspoofchk=f.bool("macspoofchk"),
        disable_container_interface=f.bool("disableContainerInterface"),
        port_isolation=f.bool("portIsolation"),
        ipam_type=call.conf.ipam_type,
    )
    if c.mtu and c.mtu < 68:
        raise CNIError(INVALID_NETWORK_CONFIG, "mtu must be 0 (default) or between 68 and 65535",
                       f"got {c.mtu}")
    backend = f.str("ipMasqBackend", "nftables")
    if backend not in ("nftables", ""):
        raise CNIError(INVALID_NETWORK_CONFIG, "ipMasqBackend must be \"nftables\"",
                       f"got {backend!r}: this implementation masquerades with nftables only")
    if c.is_default_gateway:
        c.is_gateway = True
    if not strict:
        return c
    if c.hairpin and c.promisc:
        raise CNIError(INVALID_NETWORK_CONFIG,
                       "cannot set hairpinMode and promiscMode at the same time")
    if c.ipam_type and c.disable_container_interface:
        raise CNIError(INVALID_NETWORK_CONFIG,
                       "cannot use IPAM when disableContainerInterface is set")
    if c.vlan and c.is_gateway:
        # The reference puts the gateway on a "<bridge>.<vid>" veth in the vlan; we do not
        # (yet): an address on the bridge itself would be unreachable from the vlan.
        raise CNIError(INVALID_NETWORK_CONFIG, "isGateway together with vlan is not supported",
                       "put the gateway on a router port of the vlan instead")
    # MAC: CNI_ARGS MAC=, then args.cni.mac, then runtimeConfig.mac (last wins).
    env_args = cniargs.select(call.args.cni_args, {"MAC", "IP"})
    if env_args.get("MAC"):
        c.mac = _check_mac(env_args["MAC"], "CNI_ARGS MAC")
    cni = Fields(call.conf.args, "args").obj("cni")
    if cni.str("mac"):
        c.mac = _check_mac(cni.str("mac"), "args.cni.mac")
    rc = Fields(call.conf.runtime_config, "runtimeConfig")
    if rc.str("mac"):
        c.mac = _check_mac(rc.str("mac"), "runtimeConfig.mac")
    return c


def _spec(call: Call, c: BridgeConf) -> attach.VethSpec:
    return attach.VethSpec(network=call.conf.name, container_id=call.args.container_id,
                           ifname=call.args.ifname, netns=call.args.netns, bridge=c.bridge,
                           mtu=c.mtu, mac=c.mac, hairpin=c.hairpin, isolated=c.port_isolation,
                           vlan=c.vlan, vlan_trunk=tuple(c.vlan_trunk),
                           preserve_default_vlan=c.preserve_default_vlan,
                           owner=attach.port_owner("bridge", call.conf.name))


# ---- ADD ------------------------------------------------------------------------

def add(call: Call) -> Result:
    c = parse_conf(call)
    a = call.args
    if not nsmod.exists(a.netns):
        raise nsmod.NetnsGone(a.netns)
    spec = _spec(call, c)
    with Undo() as undo:          # every step quiet: the original error is reported
        br_if, created = attach.ensure_bridge(c.bridge, mtu=c.mtu, promisc=c.promisc,
                                              vlan_filtering=c.wants_vlan_filtering)
        if created:     # runs last on rollback, after the veth is gone
            undo.callback(attach.remove_bridge_if_unused, c.bridge)
        att = attach.attach(spec, undo)
        result = Result(cni_version=call.conf.cni_version,
                        interfaces=[br_if, att.host, att.pod])
        if c.macspoofchk:
            from .net import macspoof
            undo.callback(macspoof.teardown, call.conf.name, a.container_id, a.ifname)
            macspoof.setup(call.conf.name, a.container_id, a.ifname, spec.host_name, att.pod.mac)
        if c.ipam_type:
            # Registered before the call: IPAM DEL is idempotent, and this also releases
            # whatever an IPAM plugin might hold after failing half-way.
            undo.callback(delegate, c.ipam_type, "DEL", a.stdin, call.plugin_env, a.path)
            ipam = delegate_add(c.ipam_type, a.stdin, call.plugin_env, a.path)
            if not ipam.ips:
                raise CNIError(IO_FAILURE, f"IPAM plugin {c.ipam_type} returned no IP configuration")
            result.ips, result.routes, result.dns = ipam.ips, ipam.routes, ipam.dns
            for ip in result.ips:
                ip.interface = 2
            gws = attach.compute_gateways(result, c.is_gateway, c.is_default_gateway)
            attach.configure_pod(a.netns, a.ifname, result.ips, result.routes,
                                 enable_dad=c.enable_dad)
            if c.is_gateway:
                attach.set_bridge_addrs(c.bridge, gws[4] + gws[6], force=c.force_address)
                attach.enable_forwarding([f for f in (4, 6) if gws[f]])
            if c.ip_masq:
                from .net import masq
                undo.callback(masq.teardown, call.conf.name, a.container_id, a.ifname)
                masq.setup(call.conf.name, a.container_id, a.ifname,
                           [ip.address for ip in result.ips])
        elif not c.disable_container_interface:
            attach.pod_link_up(a.netns, a.ifname)
        # MACs may follow ports/addresses: read after the port is up
        result.interfaces[0] = attach.settle_and_read(att, c.bridge,
                                                      wait_up=not c.disable_container_interface)
        if after_ipam_hook is not None:
            after_ipam_hook()
        if not call.conf.dns.is_empty():
            result.dns = call.conf.dns
        undo.pop_all()
    return result


# ---- DEL ------------------------------------------------------------------------

def delete(call: Call) -> None:
    c = parse_conf(call, strict=False)
    a = call.args
    errors: list[CNIError] = []

    def step(fn: Callable, *args) -> None:
        try:
            fn(*args)
        except CNIError as e:
            errors.append(e)
        except OSError as e:
            errors.append(CNIError(IO_FAILURE, f"{type(e).__name__}: {e}"))

    step(attach.detach, call.conf.name, a.container_id, a.ifname, a.netns)
    if c.ip_masq:
        from .net import masq
        step(masq.teardown, call.conf.name, a.container_id, a.ifname)
    if c.macspoofchk:
        from .net import macspoof
        step(macspoof.teardown, call.conf.name, a.container_id, a.ifname)
    if c.ipam_type:
        step(delegate, c.ipam_type, "DEL", a.stdin, call.plugin_env, a.path)
    _raise_all(errors, "DEL")


def _raise_all(errors: list[CNIError], what: str) -> None:
    if not errors:
        return
    if len(errors) == 1:
        raise errors[0]
    first = errors[0]
    raise CNIError(first.code, f"{what}: {len(errors)} steps failed; first: {first.msg}",
                   "; ".join(str(e) for e in errors)[:2000])


# ---- CHECK ----------------------------------------------------------------------

def check(call: Call) -> None:
    c = parse_conf(call)
    a = call.args
    if c.ipam_type:
        delegate(c.ipam_type, "CHECK", a.stdin, call.plugin_env, a.path)
    prev = call.conf.prev_result
    if prev is None:
        raise CNIError(INVALID_NETWORK_CONFIG, "CHECK needs prevResult")
    if not nsmod.exists(a.netns):
        raise nsmod.NetnsGone(a.netns)
    spec = _spec(call, c)
    by_name = {i.name: (n, i) for n, i in enumerate(prev.interfaces)}
    br_prev = by_name.get(c.bridge, (None, None))[1]
    pod_idx, pod_prev = next(((n, i) for n, i in enumerate(prev.interfaces)
                              if i.name == a.ifname and i.sandbox), (None, None))
    if pod_prev is None:
        raise CNIError(CHECK_FAILED, f"prevResult has no interface {a.ifname} in a sandbox")
    if pod_prev.sandbox != a.netns:
        raise CNIError(CHECK_FAILED, f"prevResult sandbox {pod_prev.sandbox} differs from "
                       f"CNI_NETNS {a.netns}")
    host_prev = by_name.get(spec.host_name, (None, None))[1]
    ips = [ip for ip in prev.ips if ip.interface in (None, pod_idx)]
    gw_cidrs = ([f"{ip.gateway}/{ip.iface.network.prefixlen}" for ip in ips if ip.gateway]
                if c.is_gateway else [])
    br_index = _check_bridge(c, br_prev, gw_cidrs)
    attach.check_veth(spec, br_index, pod_mac=pod_prev.mac,
                      host_mac=host_prev.mac if host_prev else "")
    attach.check_pod_ips(a.netns, a.ifname, ips, prev.routes)
    if c.ip_masq and ips:
        from .net import masq
        found = masq.rules_for(call.conf.name, a.container_id, a.ifname)
        if len(found) != len(ips):
            raise CNIError(CHECK_FAILED, "masquerade rules missing",
                           f"expected {len(ips)} rules, found {len(found)}")
    if c.macspoofchk:
        from .net import macspoof
        if not macspoof.rules_for(call.conf.name, a.container_id, a.ifname):
            raise CNIError(CHECK_FAILED, "macspoofchk rule missing")


def _check_bridge(c: BridgeConf, br_prev: Interface | None, gw_cidrs: list[str]) -> int:
    import ipaddress
    from .net import link
    ipr = link.open_iproute()
    try:
        br = link.get_link(ipr, c.bridge)
        present = {a.iface for a in link.list_addrs(ipr, br.index)} if br else set()
    finally:
        ipr.close()
    if br is None:
        raise CNIError(CHECK_FAILED, f"bridge {c.bridge} not found")
    if br.kind != "bridge":
        raise CNIError(CHECK_FAILED, f"{c.bridge} is not a bridge")
    if br_prev is not None and br_prev.mac and br_prev.mac.lower() != br.mac:
        raise CNIError(CHECK_FAILED, f"bridge {c.bridge} MAC is {br.mac}, expected {br_prev.mac}")
    if br.promisc != c.promisc:
        raise CNIError(CHECK_FAILED, f"bridge {c.bridge} promiscuous mode is {br.promisc}, "
                       f"expected {c.promisc}")
    if c.mtu and br.mtu != c.mtu:
        raise CNIError(CHECK_FAILED, f"bridge {c.bridge} MTU is {br.mtu}, expected {c.mtu}")
    for cidr in gw_cidrs:
        if ipaddress.ip_interface(cidr) not in present:
            raise CNIError(CHECK_FAILED, f"gateway address {cidr} not found on bridge {c.bridge}")
    return br.index


# ---- GC / STATUS ----------------------------------------------------------------

def gc(call: Call) -> None:
    c = parse_conf(call, strict=False)
    from .core.config import valid_attachments
    valid = valid_attachments(call.conf.raw)
    errors: list[CNIError] = []
    from .net import macspoof, masq
    keep = {attach.host_veth_name(call.conf.name, cid, ifn) for cid, ifn in valid}
    try:      # veths of stale attachments whose pod namespace still exists
        attach.gc_ports(c.bridge, attach.port_owner("bridge", call.conf.name), keep)
    except (CNIError, OSError) as e:
        errors.append(e if isinstance(e, CNIError) else CNIError(IO_FAILURE, "GC of ports", str(e)))
    for fn in (masq.gc, macspoof.gc):
        try:
            fn(call.conf.name, valid)
        except CNIError as e:
            errors.append(e)
    if c.ipam_type:
        try:
            delegate(c.ipam_type, "GC", call.args.stdin, call.plugin_env, call.args.path)
        except CNIError as e:
            errors.append(e)
    _raise_all(errors, "GC")


def status(call: Call) -> None:
    c = parse_conf(call, strict=False)
    if c.ipam_type:
        delegate(c.ipam_type, "STATUS", call.args.stdin, call.plugin_env, call.args.path)
