"""vxlan: pods on different nodes share one L2 segment over a VXLAN overlay.

Per node: one VXLAN device (``vxlan<vni>``) enslaved to a per-VNI bridge
(``vxbr<vni>`` by default); pods attach to the bridge with a veth exactly as
with the bridge plugin (plugins/net/attach.py does that work for both).
Remote VTEPs come from ``peers`` (head-end replication through static
all-zero-MAC FDB entries, kept in sync on every ADD) or a multicast ``group``.

Config parsing and validation here are pure (no netlink) and run before
anything is created; ``resolve`` then checks the config against the node
(underlay interface, its address and MTU) still without changing anything.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .core.config import Fields
from .core.errors import CNIError, INVALID_NETWORK_CONFIG
from .core.types import DNS

DEFAULT_PORT = 4789
MAX_VNI = (1 << 24) - 1


@dataclass(frozen=True)
class VxlanConf:
    network: str
    vni: int
    port: int = DEFAULT_PORT
    underlay: str = ""            # "" -> the interface of the route toward the first peer
    local_ip: str = ""            # "" -> the underlay's primary address of the peers' family
    peers: tuple[str, ...] = ()
    group: str = ""
    learning: bool = False
    bridge: str = ""
    mtu: int = 0                  # 0 -> underlay MTU minus the encapsulation overhead
    is_gateway: bool = False
    ip_masq: bool = False
    ipam: dict = field(default_factory=dict)
    dns: DNS = field(default_factory=DNS)

    @property
    def device(self) -> str:
        from .net.vxlan_dev import device_name
        return device_name(self.vni)

    @property
    def family(self) -> int | None:
        """The underlay family the config implies (None: decided by the node)."""
        for a in (self.local_ip, self.group, *self.peers):
            if a:
                return ipaddress.ip_address(a).version
        return None


def _bad(field_: str, msg: str, got: object = None) -> CNIError:
    return CNIError(INVALID_NETWORK_CONFIG, f"{field_} {msg}",
                    "" if got is None else f"got {got!r}"[:200])


def _address(value: object, where: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(value, str):
        raise _bad(where, "must be an IP address string", value)
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise _bad(where, "is not an IP address", value) from None


def parse(raw: dict, network: str, dns: DNS | None = None) -> VxlanConf:
    """The typed config; raises code 7 naming the field. Pure: touches nothing."""
    f = Fields(raw)
    vni = f.int("vni", lo=1, hi=MAX_VNI, required=True)
    port = f.int("port", DEFAULT_PORT, lo=1, hi=65535)
    underlay = f.ifname("underlayInterface")
    local = f.str("localIP")
    local_ip = ""
    if local:
        a = _address(local, "localIP")
        if a.is_multicast or a.is_unspecified or a.is_loopback:
            raise _bad("localIP", "must be a unicast address of the node", local)
        local_ip = str(a)

    peers: list[str] = []
    for n, p in enumerate(f.list("peers")):
        a = _address(p, f"peers[{n}]")
        if a.is_multicast or a.is_unspecified or a.is_loopback or \
                (a.version == 6 and a.is_link_local):
            raise _bad(f"peers[{n}]", "must be a unicast VTEP address", p)
        if str(a) not in peers:
            peers.append(str(a))
    families = {ipaddress.ip_address(p).version for p in peers}
    if len(families) > 1:
        raise _bad("peers", "mixes IPv4 and IPv6 addresses (one underlay family per network)",
                   f.raw("peers"))

    group = ""
    if f.has("group"):
        g = _address(f.raw("group"), "group")
        if not g.is_multicast:
            raise _bad("group", "must be a multicast address", str(g))
        group = str(g)
    if group and peers:
        raise _bad("peers", "and group are exclusive: use static peers or a multicast group")

    want_family = ipaddress.ip_address(local_ip).version if local_ip else None
    for what, addr in (("group", group), *((f"peers[{i}]", p) for i, p in enumerate(peers))):
        if addr and want_family and ipaddress.ip_address(addr).version != want_family:
            raise _bad(what, f"is not an IPv{want_family} address like localIP", addr)

    learning = f.bool("learning", bool(group))
    bridge = f.ifname("bridge", f"vxbr{vni}")
    from .net.vxlan_dev import device_name
    if bridge == device_name(vni):
        raise _bad("bridge", f"must not be named like the VXLAN device {device_name(vni)}")
    mtu = f.int("mtu", 0, lo=68, hi=65535)
    ipam = raw.get("ipam") or {}
    return VxlanConf(network=network, vni=vni, port=port, underlay=underlay, local_ip=local_ip,
                     peers=tuple(peers), group=group, learning=learning, bridge=bridge,
                     mtu=mtu, is_gateway=f.bool("isGateway"), ip_masq=f.bool("ipMasq"),
                     ipam=dict(ipam), dns=dns or DNS())


# ---- the config against the node (reads netlink, changes nothing) -------------------

@dataclass(frozen=True)
class Resolved:
    conf: VxlanConf
    spec: "DeviceSpec"
    underlay: "Underlay"
    peers: tuple[str, ...]        # the configured peers minus this node's own address
    mtu: int
    max_mtu: int


def resolve(conf: VxlanConf, links) -> Resolved:
    """Check ``conf`` against the node (``links``: a VxlanLinks in the node netns)."""
    from .net.vxlan_dev import DeviceSpec, MIN_MTU, OVERHEAD, max_mtu, owner_alias
    name = conf.underlay
    if not name:
        targets = list(conf.peers) or ([conf.group] if conf.group else [])
        if not targets:
            raise _bad("underlayInterface", "is required when neither peers nor group is set")
        # The first peer the node routes to through a real interface (a conflist shared
        # by all nodes lists this node too: the route to our own address is via lo).
        for target in targets:
            name = links.route_dev(target) or ""
            if name and name != "lo":
                break
        else:
            raise _bad("underlayInterface", f"is not set and the node has no route toward "
                       f"{targets[0]}; set it or add a route", targets[0])
    ul = links.underlay(name)
    if ul is None:
        raise _bad("underlayInterface", f"{name!r} does not exist on this node", name)
    fam = conf.family
    if fam is None:
        fams = [ipaddress.ip_address(a).version for a in ul.addresses]
        fam = 4 if 4 in fams else 6 if 6 in fams else None
    local = conf.local_ip
    addrs = [str(ipaddress.ip_address(a)) for a in ul.addresses]
    if local:
        if local not in addrs:
            raise _bad("localIP", f"is not an address of the underlay interface {name}",
                       f"{local} not in {addrs}")
    else:
        local = next((a for a in addrs if ipaddress.ip_address(a).version == fam), "")
        if not local:
            raise _bad("localIP", f"is not set and {name} has no global IPv{fam or 4} address "
                       "to use as the local VTEP address")
    fam = ipaddress.ip_address(local).version
    peers = tuple(p for p in conf.peers if p != local)
    limit = max_mtu(ul.mtu, fam)
    if conf.mtu and conf.mtu > limit:
        raise _bad("mtu", f"{conf.mtu} is larger than the underlay allows: {limit} "
                   f"({name} MTU {ul.mtu} minus {OVERHEAD[fam]} bytes of VXLAN over "
                   f"IPv{fam})", conf.mtu)
    mtu = conf.mtu or limit
    if mtu < MIN_MTU[4]:
        raise _bad("underlayInterface", f"{name} MTU {ul.mtu} leaves no room for VXLAN", ul.mtu)
    spec = DeviceSpec(name=conf.device, vni=conf.vni, port=conf.port, local=local,
                      underlay=name, mtu=mtu, learning=conf.learning, group=conf.group,
                      alias=owner_alias(conf.network))
    return Resolved(conf=conf, spec=spec, underlay=ul, peers=peers, mtu=mtu, max_mtu=limit)
