"""vxlan: pods on different nodes share one L2 segment over a VXLAN overlay.

Per node: one VXLAN device (``vxlan<vni>``) enslaved to a per-VNI bridge
(``vxbr<vni>`` by default); pods attach to the bridge with a veth exactly as
with the bridge plugin (plugins/net/attach.py does that work for both).
Remote VTEPs come from ``peers`` (head-end replication through static
all-zero-MAC FDB entries, kept in sync on every ADD) or a multicast ``group``.

``mode: l3`` is flannel's model instead (plugins/net/vxlan_l3.py): the VTEP is
no bridge port, pods sit on a local bridge routed by the node, and ``peers``
lists every node as ``{ip, subnet}``; per remote node a route, a permanent
neighbour and a permanent FDB entry replace all flooding across nodes.

Config parsing and validation here are pure (no netlink) and run before
anything is created; ``resolve`` then checks the config against the node
(underlay interface, its address and MTU) still without changing anything.
"""
from __future__ import annotations

import contextlib
import ipaddress
TYPE_CHECKING = False       # not from typing: importing typing costs ~4 ms per exec

from .core.config import Fields
from .core.errors import (CHECK_FAILED, CNIError, INVALID_ENV, INVALID_NETWORK_CONFIG,
                          IO_FAILURE, LINK_EXISTS, NOT_AVAILABLE, NOT_IMPLEMENTED,
                          NOT_SUPPORTED_BY_KERNEL, TRY_AGAIN_LATER)
from .core.record import field, record, replace
from .core.types import DNS, IPConfig, Result

if TYPE_CHECKING:                        # netlink types, imported lazily at run time
    from .net.vxlan_dev import DeviceSpec, Underlay

MODES = ("l2", "l3")
ENCAPS = ("vxlan", "geneve")
DEFAULT_PORT = 4789
DEFAULT_LOCK_TIMEOUT = 30     # s: the lock is held for well under a second per call
MAX_VNI = (1 << 24) - 1


@record(frozen=True)
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
    is_default_gateway: bool = False
    anycast_gateway: bool = True  # one gateway MAC on every node (same gateway address everywhere)
    ip_masq: bool = False
    ipam: dict = field(default_factory=dict)
    dns: DNS = field(default_factory=DNS)
    run_dir: str = "/run/cnilab"  # node lock files; the call's CNILAB_RUN_DIR overrides
    lock_timeout: int = DEFAULT_LOCK_TIMEOUT    # seconds to wait for the node lock
    mode: str = "l2"              # l2: shared segment (bridge port) | l3: routed VTEP
    l3_peers: tuple = ()          # mode l3: vxlan_l3.Peer per node (this one included)
    encap: str = "vxlan"          # vxlan | geneve (refused: see resolve)

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

    mode = f.str("mode", "l2")
    if mode not in MODES:
        raise _bad("mode", "must be l2 (one shared segment) or l3 (routed, flannel-style)", mode)
    encap = f.str("encap", "vxlan")
    if encap not in ENCAPS:
        raise _bad("encap", "must be vxlan (or geneve, where the kernel has it)", encap)
    peers: list[str] = []
    l3_peers: list = []
    if mode == "l3":
        for key, why in (("group", "a routed VTEP floods nothing: peers list every node"),
                         ("learning", "every remote MAC is programmed from peers")):
            if f.has(key) and f.raw(key) not in (False, ""):
                raise _bad(key, f"is not used in mode l3 ({why})", f.raw(key))
        if f.has("anycastGateway"):
            raise _bad("anycastGateway", "applies to mode l2 only (in mode l3 each node's "
                       "bridge is local and routed)", f.raw("anycastGateway"))
        if f.has("isGateway") and not f.bool("isGateway") and not f.bool("isDefaultGateway"):
            raise _bad("isGateway", "must be true in mode l3: pods reach other nodes through "
                       "their node's bridge address", False)
        l3_peers = _l3_peers(f)
        peers = [p.ip for p in l3_peers]
    for n, p in enumerate(f.list("peers") if mode == "l2" else ()):
        if isinstance(p, dict):
            raise _bad(f"peers[{n}]", "must be an IP address string in mode l2 (objects "
                       "{ip, subnet} are for mode l3)", p)
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
    pfx = ".ip" if mode == "l3" else ""
    for what, addr in (("group", group), *((f"peers[{i}]{pfx}", p) for i, p in enumerate(peers))):
        if addr and want_family and ipaddress.ip_address(addr).version != want_family:
            raise _bad(what, f"is not an IPv{want_family} address like localIP", addr)

    learning = f.bool("learning", bool(group))
    is_gateway = f.bool("isGateway") or f.bool("isDefaultGateway")
    if mode == "l3":
        is_gateway = True
    bridge = f.ifname("bridge", f"vxbr{vni}")
    from .net.vxlan_dev import device_name
    if bridge == device_name(vni):
        raise _bad("bridge", f"must not be named like the VXLAN device {device_name(vni)}")
    mtu = f.int("mtu", 0, lo=68, hi=65535)
    ipam = f.obj("ipam").data
    return VxlanConf(network=network, vni=vni, port=port, underlay=underlay, local_ip=local_ip,
                     peers=tuple(peers), group=group, learning=learning, bridge=bridge,
                     mtu=mtu, is_gateway=is_gateway,
                     is_default_gateway=f.bool("isDefaultGateway"),
                     anycast_gateway=f.bool("anycastGateway", mode == "l2"),
                     ip_masq=f.bool("ipMasq"), ipam=dict(ipam), dns=dns or DNS(),
                     lock_timeout=f.int("lockTimeout", DEFAULT_LOCK_TIMEOUT, lo=1, hi=3600),
                     mode=mode, l3_peers=tuple(l3_peers), encap=encap)


def _l3_peers(f: Fields) -> list:
    """``peers`` in mode l3: every node as {ip, subnet[, mac]} (code 7 naming the field)."""
    from .net.vxlan_l3 import Peer
    out: list = []
    raw = f.raw("peers")
    if raw is not None and not isinstance(raw, list):
        raise _bad("peers", "must be a list of {ip, subnet} objects in mode l3", raw)
    if not raw:
        raise _bad("peers", "is required in mode l3: every node as {\"ip\": underlay address, "
                   "\"subnet\": its pod subnet}, this node included")
    seen_ip: dict[str, int] = {}
    nets: list = []
    for n, el in enumerate(f.objects("peers", ("ip", "subnet", "mac"))):
        where = f"peers[{n}]"
        for key in el.data:
            if key.lower() not in ("ip", "subnet", "mac"):    # a typo never passes silently
                raise _bad(f"{where}.{key}", "is not a peer field (ip, subnet, mac)")
        ip_s = el.str("ip", required=True)
        a = _address(ip_s, f"{where}.ip")
        if a.is_multicast or a.is_unspecified or a.is_loopback or \
                (a.version == 6 and a.is_link_local):
            raise _bad(f"{where}.ip", "must be a unicast underlay address", ip_s)
        if str(a) in seen_ip:
            raise _bad(f"{where}.ip", f"is listed twice (also peers[{seen_ip[str(a)]}])", ip_s)
        seen_ip[str(a)] = n
        sub_s = el.str("subnet", required=True)
        try:
            net = ipaddress.ip_network(sub_s, strict=True)
        except ValueError as e:
            raise _bad(f"{where}.subnet", f"is not a network address/prefix ({e})", sub_s) from None
        if net.prefixlen > net.max_prefixlen - 2:
            raise _bad(f"{where}.subnet", "is too small: the node needs its VTEP address (the "
                       "network address), a gateway and pods", sub_s)
        for m, other in nets:
            if other.version == net.version and other.overlaps(net):
                raise _bad(f"{where}.subnet", f"overlaps peers[{m}].subnet {other}", sub_s)
        if nets and nets[0][1].version != net.version:
            raise _bad(f"{where}.subnet", "mixes IPv4 and IPv6 pod subnets", sub_s)
        nets.append((n, net))
        mac = el.str("mac")
        if mac:
            import re
            if not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", mac) or int(mac[:2], 16) & 1:
                raise _bad(f"{where}.mac", "must be a unicast MAC address", mac)
        out.append(Peer(ip=str(a), subnet=str(net), mac=mac.lower()))
    if len({ipaddress.ip_address(p.ip).version for p in out}) > 1:
        raise _bad("peers", "mixes IPv4 and IPv6 underlay addresses (one underlay family "
                   "per network)", raw)
    return out


# ---- the config against the node (reads netlink, changes nothing) -------------------

@record(frozen=True)
class Resolved:
    conf: VxlanConf
    spec: DeviceSpec
    underlay: Underlay
    peers: tuple[str, ...]        # the configured peers minus this node's own address
    mtu: int
    max_mtu: int
    l3: object = None             # mode l3: the vxlan_l3.Plan of this node


def _encap_supported(conf: VxlanConf) -> None:
    """Geneve is refused in one line: naming the missing module where the kernel
    lacks it (this machine's does), else saying this plugin speaks VXLAN only."""
    if conf.encap == "vxlan":
        return
    from .net import kmod
    msg = kmod.missing_message("geneve", "encap geneve")
    if msg:
        raise CNIError(NOT_SUPPORTED_BY_KERNEL, msg)
    raise CNIError(NOT_IMPLEMENTED, "encap geneve is not implemented: this plugin makes "
                   "VXLAN devices only (encap vxlan)")


def resolve(conf: VxlanConf, links) -> Resolved:
    """Check ``conf`` against the node (``links``: a VxlanLinks in the node netns)."""
    from .net.vxlan_dev import DeviceSpec, MIN_MTU, OVERHEAD, max_mtu, owner_alias
    _encap_supported(conf)
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
    l3 = None
    mac = ""
    if conf.mode == "l3":
        from .net import vxlan_l3
        own = [p for p in conf.l3_peers if p.ip == local]
        if not own:
            raise _bad("peers", f"has no entry for this node (its VTEP address {local}): list "
                       "every node, this one included, as {ip, subnet}",
                       [p.ip for p in conf.l3_peers])
        l3 = vxlan_l3.plan(conf.vni, own[0], [p for p in conf.l3_peers if p.ip != local])
        mac = l3.mac
    spec = DeviceSpec(name=conf.device, vni=conf.vni, port=conf.port, local=local,
                      underlay=name, mtu=mtu, learning=conf.learning, group=conf.group,
                      alias=owner_alias(conf.network), routed=conf.mode == "l3", mac=mac)
    return Resolved(conf=conf, spec=spec, underlay=ul, peers=peers, mtu=mtu, max_mtu=limit,
                    l3=l3)


def own_subnet(conf: VxlanConf, res: Resolved) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Mode l3: this node's pod subnet (from its own entry in peers)."""
    return next(ipaddress.ip_network(p.subnet) for p in conf.l3_peers
                if p.ip == res.spec.local)


# ---- shared helpers ------------------------------------------------------------------

CNI_ARGS_KEYS = frozenset({"MAC", "IP"})       # MAC: ours; IP: host-local's


def _conf(call) -> VxlanConf:
    conf = parse(call.conf.raw, call.conf.name, call.conf.dns)
    # The call's environment first: in the node agent it differs from the process's.
    import os
    run_dir = call.args.env.get("CNILAB_RUN_DIR") or os.environ.get("CNILAB_RUN_DIR")
    return replace(conf, run_dir=run_dir) if run_dir else conf


def _anycast_mac(network: str, vni: int) -> str:
    """The bridge MAC used for the gateway on every node (locally administered)."""
    from .core.names import sha256_digest
    h = sha256_digest(f"{network}\0{vni}")
    return ":".join(f"{b:02x}" for b in (0x0a, *h[:5]))


@contextlib.contextmanager
def node_lock(conf: VxlanConf):
    """Serialise creating/removing the shared device and bridge on one node.

    Keyed by the bridge name only: lab nodes on one machine then share a lock,
    which costs a little parallelism but keeps the number of lock files bounded
    (a lock file cannot be removed safely). flock is released if the process dies.
    Waits at most ``lockTimeout`` seconds (a holder that hangs must not hang every
    later call): then code 11, "try again later", naming the lock file.
    """
    import fcntl
    import os
    import time
    d = conf.run_dir
    os.makedirs(d, mode=0o700, exist_ok=True)
    path = os.path.join(d, f"vxlan-{conf.bridge}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + conf.lock_timeout
        pause = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise CNIError(TRY_AGAIN_LATER, f"node lock {path} is busy",
                                   f"another call has held it for more than "
                                   f"{conf.lock_timeout}s (lockTimeout); retry later") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
        yield
    finally:
        os.close(fd)


def _ipam(conf: VxlanConf, call, command: str):
    from .core import invoke
    a = call.args
    if command == "ADD":
        return invoke.delegate_add(call.conf.ipam_type, a.stdin, call.plugin_env, a.path)
    invoke.delegate(call.conf.ipam_type, command, a.stdin, call.plugin_env, a.path)
    return None


def _ensure_shared(conf: VxlanConf, res: Resolved, links, undo):
    """The VXLAN device, the bridge, the device as a bridge port, the FDB. Needs node_lock."""
    from .net import attach
    from .net.vxlan_dev import ALIAS_PREFIX, owner_alias
    alias = owner_alias(conf.network)
    vx_index, vx_created = links.ensure(res.spec, res.underlay.index)
    if vx_created:
        undo.callback(_remove_shared_if_unused, conf)
    br_obs = links.observe(conf.bridge)
    if br_obs is not None and br_obs.alias.startswith(ALIAS_PREFIX + ":") \
            and br_obs.alias != alias:
        raise CNIError(LINK_EXISTS, f"bridge {conf.bridge} belongs to another network",
                       f"its alias is {br_obs.alias!r}")
    if br_obs is None:              # marked before it has its name: a kill leaves no
        links.create_bridge(conf.bridge, alias, res.mtu)   # unmarked bridge behind
        if not vx_created:
            undo.callback(_remove_shared_if_unused, conf)
    br, _ = attach.ensure_bridge(conf.bridge, mtu=res.mtu)   # MTU, up, accept_ra
    br_index = links.index_of(conf.bridge)
    vx = links.observe_index(vx_index)
    if res.l3 is not None:           # a routed VTEP: address, up, then its three tables
        from .net.vxlan_l3 import L3Links
        l3 = L3Links(links.ipr)
        l3.set_address(vx_index, res.l3.address)
        if not vx.up:
            links.set_up(vx_index)
        l3.sync(vx_index, res.l3)
        return br, br_index
    if vx.master != br_index:
        if vx.master:
            raise CNIError(LINK_EXISTS, f"{res.spec.name} is a port of another bridge",
                           f"master ifindex {vx.master}, want {conf.bridge}")
        links.set_master(vx_index, br_index)
    if not vx.up:
        links.set_up(vx_index)
    if not conf.group:
        links.sync_fdb(vx_index, res.peers)
    return br, br_index


def _remove_shared_if_unused(conf: VxlanConf) -> bool:
    """Delete our VXLAN device and bridge when no pod port is left on the bridge.

    Only links carrying our alias are deleted; a bridge the operator made stays.
    Leftovers under a staging name (a creation a kill cut short) always go.
    """
    from .net.vxlan_dev import VxlanLinks, owner_alias, staging_name
    alias = owner_alias(conf.network)
    names = (conf.bridge, conf.device)
    if not any(link_exists(n) for n in (*names, *(staging_name(n, alias) for n in names))):
        return False            # nothing to do: no netlink socket (no pyroute2 import)
    with node_lock(conf), VxlanLinks() as links:
        torn = [links.remove_torn(n, alias) for n in names]     # creations a kill cut short
        br = links.observe(conf.bridge)
        vx = links.observe(conf.device)
        if br is not None:
            others = [p for p in links.ports(br.index) if vx is None or p.index != vx.index]
            if others:
                return False
        removed = any(torn)
        if vx is not None and vx.alias == alias and (br is None or vx.master in (0, br.index)):
            removed |= links.delete(vx.index)
        if br is not None and br.alias == alias:
            removed |= links.delete(br.index)
        return removed


# ---- ADD ------------------------------------------------------------------------------

def add(call) -> Result:
    from .core import cniargs
    conf = _conf(call)
    a = call.args
    extra = cniargs.select(a.cni_args, CNI_ARGS_KEYS)
    mac = extra.get("MAC", "")
    from .net import attach
    from .net.vxlan_dev import VxlanLinks, owner_alias
    with VxlanLinks() as links:
        res = resolve(conf, links)              # every config error before any change
    if mac:
        _check_mac(mac)
    host_name = attach.host_veth_name(conf.network, a.container_id, a.ifname)
    if link_exists(host_name):
        # Before IPAM: a rollback's IPAM DEL would release the live attachment's address.
        raise CNIError(LINK_EXISTS, f"attachment {a.container_id}/{a.ifname} already exists",
                       f"host veth {host_name} is present (ADD twice without DEL?)")
    result = Result(cni_version=call.conf.cni_version)
    from .core.undo import Undo
    with Undo() as undo:          # every step quiet: the original error is reported
        ipam_res = None
        if conf.ipam:
            # Before the call: an IPAM ADD that reserved and then failed is released too.
            undo.callback(_ipam, conf, call, "DEL")
            ipam_res = _ipam(conf, call, "ADD")
            if not ipam_res.ips:
                raise CNIError(INVALID_NETWORK_CONFIG, "IPAM returned no IP addresses",
                               f"ipam type {call.conf.ipam_type}")
            if res.l3 is not None:
                _check_l3_addresses(conf, res, ipam_res.ips)
        spec = attach.VethSpec(network=conf.network, container_id=a.container_id,
                               ifname=a.ifname, netns=a.netns, bridge=conf.bridge,
                               mtu=res.mtu, mac=mac, owner=owner_alias(conf.network))
        with node_lock(conf), VxlanLinks() as links:
            _, br_index = _ensure_shared(conf, res, links, undo)
            att = attach.attach(spec, undo)
        if ipam_res is not None:
            result.ips = [IPConfig(address=ip.address, gateway=ip.gateway, interface=2)
                          for ip in ipam_res.ips]
            result.routes = list(ipam_res.routes)
            result.dns = ipam_res.dns
            gws = attach.compute_gateways(result, conf.is_gateway, conf.is_default_gateway)
            attach.configure_pod(a.netns, a.ifname, result.ips, result.routes)
            cidrs = gws[4] + gws[6]
            if cidrs:
                if conf.anycast_gateway:
                    with VxlanLinks() as links:
                        links.set_mac(br_index, _anycast_mac(conf.network, conf.vni))
                attach.set_bridge_addrs(conf.bridge, cidrs)
                attach.enable_forwarding(attach_families(cidrs))
            if conf.ip_masq:
                from .net import masq
                undo.callback(masq.teardown, conf.network, a.container_id, a.ifname)
                masq.setup(conf.network, a.container_id, a.ifname,
                           [ip.address for ip in result.ips])
        else:
            attach.pod_link_up(a.netns, a.ifname)
        if not conf.dns.is_empty():
            result.dns = conf.dns
        attach.refresh_macs(att, spec)
        result.interfaces = [attach.bridge_interface(conf.bridge), att.host, att.pod]
        undo.pop_all()
    return result


def _check_l3_addresses(conf: VxlanConf, res: Resolved, ips) -> None:
    """Mode l3: a pod's addresses lie in this node's subnet (the others route it here)."""
    sub = own_subnet(conf, res)
    for ip in ips:
        net = ipaddress.ip_interface(ip.address).network
        if net.version != sub.version:
            continue
        if not net.subnet_of(sub):
            raise CNIError(INVALID_NETWORK_CONFIG, f"ipam gave {ip.address}, outside this node's "
                           f"subnet {sub} (its peers entry): in mode l3 every pod address and "
                           "its prefix must lie in the node's own subnet",
                           f"node {res.spec.local}")


def link_exists(name: str) -> bool:
    import socket
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def attach_families(cidrs) -> set[int]:
    return {ipaddress.ip_interface(c).version for c in cidrs}


def _check_mac(mac: str) -> None:
    import re
    if not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", mac) or int(mac[:2], 16) & 1:
        raise CNIError(INVALID_ENV, "CNI_ARGS MAC must be a unicast MAC address", mac)


# ---- DEL ------------------------------------------------------------------------------

def delete(call) -> None:
    """Detach the pod, release its addresses; drop the shared device when unused.

    Best effort and idempotent: every step runs, errors are reported together.
    A config that no longer validates (edited since ADD) still lets DEL remove
    the attachment, its masquerade rules and its addresses.
    """
    a = call.args
    try:
        conf: VxlanConf | None = _conf(call)
    except CNIError as e:
        if e.code != INVALID_NETWORK_CONFIG:
            raise
        conf = None
    ip_masq = conf.ip_masq if conf is not None else call.conf.fields.raw("ipMasq") is True
    errors: list[str] = []

    def step(what: str, fn, *args) -> None:
        try:
            fn(*args)
        except (CNIError, OSError) as e:
            errors.append(f"{what}: {e}")

    from .net import attach
    step("detach", attach.detach, call.conf.name, a.container_id, a.ifname, a.netns)
    if ip_masq:
        from .net import masq
        step("masquerade", masq.teardown, call.conf.name, a.container_id, a.ifname)
    if call.conf.ipam_type:
        from .core import invoke
        step("ipam", invoke.delegate, call.conf.ipam_type, "DEL", a.stdin, call.plugin_env,
             a.path)
    if conf is not None:
        step("shared device", _remove_shared_if_unused, conf)
    if errors:
        raise CNIError(IO_FAILURE, "vxlan DEL failed in part", "; ".join(errors))


# ---- CHECK ------------------------------------------------------------------------

def _check_failed(msg: str, details: str = "") -> CNIError:
    return CNIError(CHECK_FAILED, msg, details)


def check(call) -> None:
    """The device (VNI, port, local address, MTU), the FDB against peers, the pod."""
    conf = _conf(call)
    a = call.args
    prev = call.conf.prev_result
    if prev is None:
        raise CNIError(INVALID_NETWORK_CONFIG, "CHECK needs prevResult (the ADD result)")
    from .net import attach
    from .net.vxlan_dev import VxlanLinks, mismatches, owner_alias
    with VxlanLinks() as links:
        res = resolve(conf, links)
        vx = links.observe(conf.device)
        if vx is None:
            raise _check_failed(f"VXLAN device {conf.device} not found")
        if vx.alias != owner_alias(conf.network):
            raise _check_failed(f"{conf.device} is not ours", f"alias {vx.alias!r}")
        bad = mismatches(res.spec, vx, res.underlay.index)
        if bad:
            raise _check_failed(f"VXLAN device {conf.device} differs from the config",
                                "; ".join(bad))
        if not vx.up:
            raise _check_failed(f"VXLAN device {conf.device} is down")
        br = links.observe(conf.bridge)
        if br is None or br.kind != "bridge":
            raise _check_failed(f"bridge {conf.bridge} not found")
        if res.l3 is not None:
            from .net.vxlan_l3 import L3Links
            drift = L3Links(links.ipr).drift(vx.index, res.l3)
            if drift:
                raise _check_failed(f"routes, neighbours or FDB of {conf.device} do not match "
                                    "peers (mode l3)", "; ".join(drift))
        elif vx.master != br.index:
            raise _check_failed(f"{conf.device} is not a port of bridge {conf.bridge}")
        elif not conf.group:
            have = links.fdb_peers(vx.index)
            want = sorted(res.peers, key=lambda p: (ipaddress.ip_address(p).version,
                                                     int(ipaddress.ip_address(p))))
            if have != want:
                raise _check_failed(f"FDB of {conf.device} does not match peers",
                                    f"have {have}, want {want}")
    pod_if = host_if = None
    for i in prev.interfaces:
        if i.name == a.ifname and i.sandbox:
            pod_if = i
        elif not i.sandbox and i.name not in (conf.bridge,):
            host_if = i
    if pod_if is None:
        raise _check_failed(f"prevResult has no interface {a.ifname} in a sandbox")
    spec = attach.VethSpec(network=conf.network, container_id=a.container_id,
                           ifname=a.ifname, netns=a.netns, bridge=conf.bridge, mtu=res.mtu)
    attach.check_veth(spec, br.index, pod_mac=pod_if.mac,
                      host_mac=host_if.mac if host_if is not None else "")
    idx = prev.interfaces.index(pod_if)
    ips = [ip for ip in prev.ips if ip.interface in (None, idx)]
    attach.check_pod_ips(a.netns, a.ifname, ips, prev.routes)
    if conf.ip_masq and ips:
        from .net import masq
        if not masq.rules_for(conf.network, a.container_id, a.ifname):
            raise _check_failed("masquerade rules of this attachment are missing")
    if conf.ipam:
        _ipam(conf, call, "CHECK")


# ---- GC -----------------------------------------------------------------------------

def gc(call) -> None:
    """Remove pod ports, masquerade rules and addresses of attachments not listed;
    then the shared device and bridge when no attachment is left. Keeps going past
    errors and reports them together."""
    conf = _conf(call)
    from .core.config import valid_attachments
    valid = valid_attachments(call.conf.raw)
    errors: list[str] = []
    from .net import attach
    from .net.vxlan_dev import owner_alias
    keep = {attach.host_veth_name(conf.network, cid, ifn) for cid, ifn in valid}
    try:
        with node_lock(conf):
            attach.gc_ports(conf.bridge, owner_alias(conf.network), keep)
    except (CNIError, OSError) as e:
        errors.append(f"stale ports: {e}")
    try:            # whatever ipMasq says now: it may have been on when pods were added
        from .net import masq
        masq.gc(conf.network, valid)
    except (CNIError, OSError) as e:
        errors.append(f"masquerade: {e}")
    if conf.ipam:
        try:
            _ipam(conf, call, "GC")
        except CNIError as e:
            errors.append(f"ipam: {e}")
    try:
        _remove_shared_if_unused(conf)
    except (CNIError, OSError) as e:
        errors.append(f"shared device: {e}")
    if errors:
        raise CNIError(IO_FAILURE, "vxlan GC failed in part", "; ".join(errors))


# ---- STATUS -------------------------------------------------------------------------

def status(call) -> None:
    """Ready when the underlay interface exists, is up and has the VTEP address."""
    conf = _conf(call)
    from .net.vxlan_dev import VxlanLinks
    with VxlanLinks() as links:
        try:
            res = resolve(conf, links)
        except CNIError as e:
            if e.code == INVALID_NETWORK_CONFIG and ("underlayInterface" in e.msg
                                                     or "localIP" in e.msg):
                raise CNIError(NOT_AVAILABLE, f"underlay not ready: {e.msg}", e.details) from None
            raise
    if not res.underlay.up:
        raise CNIError(NOT_AVAILABLE, f"underlay interface {res.underlay.name} is down")
    if conf.ipam:
        _ipam(conf, call, "STATUS")
