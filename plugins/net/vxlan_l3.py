"""The routed (flannel-style, "L3") mode of the vxlan plugin: plan and netlink backend.

One VTEP per node that is *not* a bridge port: local pods sit on a local
bridge routed by the node, and for every remote node the node holds

    route   <remote pod subnet> via <remote VTEP address> dev vxlan<vni> onlink
    neigh   <remote VTEP address> lladdr <remote VTEP MAC> nud permanent
    fdb     <remote VTEP MAC> dst <remote underlay IP> self permanent

so every frame the VTEP sends has a known destination MAC and a known outer
destination: nothing is flooded, no ARP/ND crosses the underlay. The VTEP
address of a node is the network address of its pod subnet (as flannel gives
``flannel.1`` the ``.0`` of the node's lease), and its MAC is derived from the
VNI and the node's underlay address, so every node computes every other
node's entries from the same ``peers`` list.

``plan`` is pure (unit-tested without root); ``L3Links`` reads and writes the
three tables and the VTEP address, only on our own device. On that device
every gateway route of the main table, every permanent neighbour entry and
every non-zero-MAC ``self`` FDB entry is ours: we put them there, the kernel
never makes such entries itself.
"""
from __future__ import annotations

import errno
import ipaddress

from ..core.errors import CNIError, IO_FAILURE
from ..core.names import sha256_digest
from ..core.record import record

TYPE_CHECKING = False       # not from typing: importing it costs ~2 ms per plugin exec
if TYPE_CHECKING:
    from typing import Iterable

NTF_SELF = 0x02
NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 0x04
RTPROT_STATIC = 4
MAIN_TABLE = 254
ZERO_MAC = "00:00:00:00:00:00"


def vtep_mac(vni: int, underlay_ip: str) -> str:
    """The VTEP MAC of the node whose underlay address is ``underlay_ip``: locally
    administered unicast (first byte 0x0e), then 5 bytes of
    sha256("cnilab-vtep/<vni>/<address>"). Every node computes every peer's."""
    ip = str(ipaddress.ip_address(underlay_ip))
    h = sha256_digest(f"cnilab-vtep/{vni}/{ip}")
    return ":".join(f"{b:02x}" for b in (0x0e, *h[:5]))


def vtep_address(subnet: str) -> str:
    """The VTEP address of the node owning pod ``subnet``: its network address."""
    return str(ipaddress.ip_network(subnet).network_address)


@record(frozen=True, order=True)
class Peer:
    ip: str          # underlay address (outer destination)
    subnet: str      # the node's pod subnet
    mac: str = ""    # VTEP MAC; "" -> vtep_mac(vni, ip)


@record(frozen=True, order=True)
class Route:
    dst: str         # remote pod subnet
    via: str         # remote VTEP address (onlink)


@record(frozen=True, order=True)
class Neigh:
    addr: str        # remote VTEP address
    mac: str


@record(frozen=True, order=True)
class Fdb:
    mac: str         # remote VTEP MAC
    dst: str         # remote underlay address


@record(frozen=True)
class Plan:
    address: str                  # "<own VTEP address>/32" (or /128)
    mac: str                      # own VTEP MAC
    routes: tuple[Route, ...]
    neighbours: tuple[Neigh, ...]
    fdb: tuple[Fdb, ...]


def _mac(vni: int, p: Peer) -> str:
    return (p.mac or vtep_mac(vni, p.ip)).lower()


def plan(vni: int, own: Peer, remotes: Iterable[Peer]) -> Plan:
    """Everything the node's VTEP must hold for ``remotes`` (the other nodes)."""
    routes, neigh, fdb = [], [], []
    for p in remotes:
        via = vtep_address(p.subnet)
        mac = _mac(vni, p)
        routes.append(Route(str(ipaddress.ip_network(p.subnet)), via))
        neigh.append(Neigh(via, mac))
        fdb.append(Fdb(mac, str(ipaddress.ip_address(p.ip))))
    own_net = ipaddress.ip_network(own.subnet)
    return Plan(address=f"{own_net.network_address}/{own_net.max_prefixlen}", mac=_mac(vni, own),
                routes=tuple(sorted(set(routes), key=_route_key)),
                neighbours=tuple(sorted(set(neigh), key=lambda n: _ip_key(n.addr))),
                fdb=tuple(sorted(set(fdb), key=lambda f: (_ip_key(f.dst), f.mac))))


def _ip_key(a: str):
    ip = ipaddress.ip_address(a)
    return (ip.version, int(ip))


def _route_key(r: Route):
    n = ipaddress.ip_network(r.dst)
    return (n.version, int(n.network_address), n.prefixlen)


def diff(current: Iterable, wanted: Iterable) -> tuple[list, list]:
    """(to add, to remove) so that ``current`` becomes ``wanted``."""
    cur, want = set(current), set(wanted)
    return sorted(want - cur), sorted(cur - want)


def drift(current: Iterable, wanted: Iterable, what: str) -> list[str]:
    """How ``current`` differs from ``wanted``, for CHECK (empty: equal)."""
    add, remove = diff(current, wanted)
    out = [f"{what} missing: {_show(x)}" for x in add]
    out += [f"{what} not in the config: {_show(x)}" for x in remove]
    return out


def _show(x) -> str:
    if isinstance(x, Route):
        return f"{x.dst} via {x.via} onlink"
    if isinstance(x, Neigh):
        return f"{x.addr} lladdr {x.mac}"
    if isinstance(x, Fdb):
        return f"{x.mac} dst {x.dst}"
    return str(x)


def _norm_mac(m: str) -> str:
    return (m or "").lower()


class L3Links:
    """Routes, neighbours, FDB and address of the VTEP ``index`` (node netns)."""

    def __init__(self, ipr) -> None:
        self.ipr = ipr

    # ---- reading ---------------------------------------------------------------
    def routes(self, index: int) -> list[Route]:
        out = []
        for fam in (2, 10):
            for r in self.ipr.get_routes(family=fam, table=MAIN_TABLE):
                if r.get_attr("RTA_OIF") != index:
                    continue
                gw = r.get_attr("RTA_GATEWAY")
                if not gw:
                    continue
                dst = r.get_attr("RTA_DST") or ("0.0.0.0" if fam == 2 else "::")
                net = ipaddress.ip_network(f"{dst}/{r['dst_len']}")
                out.append(Route(str(net), str(ipaddress.ip_address(gw))))
        return sorted(set(out), key=_route_key)

    def neighbours(self, index: int) -> list[Neigh]:
        out = []
        for fam in (2, 10):
            for n in self.ipr.get_neighbours(family=fam, ifindex=index):
                if n.get("ifindex") != index or not (n["state"] & NUD_PERMANENT):
                    continue
                addr, mac = n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR")
                if addr and mac:
                    out.append(Neigh(str(ipaddress.ip_address(addr)), _norm_mac(mac)))
        return sorted(set(out), key=lambda x: _ip_key(x.addr))

    def fdb(self, index: int) -> list[Fdb]:
        out = []
        for e in self.ipr.fdb("dump", ifindex=index):
            if e.get("ifindex") != index or not (e.get("flags", 0) & NTF_SELF):
                continue
            mac = _norm_mac(e.get_attr("NDA_LLADDR"))
            dst = e.get_attr("NDA_DST")
            if mac and mac != ZERO_MAC and dst and e.get("state", 0) & NUD_PERMANENT:
                out.append(Fdb(mac, str(ipaddress.ip_address(dst))))
        return sorted(set(out), key=lambda f: (_ip_key(f.dst), f.mac))

    def addresses(self, index: int) -> list[str]:
        """Global-scope addresses on the device, as address/prefix."""
        out = []
        for fam in (2, 10):
            for a in self.ipr.get_addr(index=index, family=fam):
                if a["scope"] == 0:
                    out.append(f"{ipaddress.ip_address(a.get_attr('IFA_ADDRESS'))}/{a['prefixlen']}")
        return sorted(out)

    # ---- changing --------------------------------------------------------------
    def _do(self, what: str, fn, *args, ok: tuple = (), **kw) -> None:
        try:
            fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - a NetlinkFailure (OSError) or pyroute2's
            if getattr(e, "code", None) in ok:
                return
            raise CNIError(IO_FAILURE, f"{what} failed", str(e)) from None

    def set_address(self, index: int, address: str) -> None:
        """Make ``address`` the device's only global address (a node whose subnet
        changed loses the old VTEP address)."""
        for a in self.addresses(index):
            if a != address:
                ip, plen = a.split("/")
                self._do(f"removing VTEP address {a}", self.ipr.addr, "del", index=index,
                         address=ip, prefixlen=int(plen), ok=(errno.EADDRNOTAVAIL,))
        if address not in self.addresses(index):
            ip, plen = address.split("/")
            kw = {}
            if ":" in ip:
                kw["flags"] = 0x02          # IFA_F_NODAD: usable at once
            self._do(f"adding VTEP address {address}", self.ipr.addr, "add", index=index,
                     address=ip, prefixlen=int(plen), ok=(errno.EEXIST,), **kw)

    def sync(self, index: int, p: Plan) -> dict[str, tuple[list, list]]:
        """Bring neighbours, FDB and routes in line with ``p`` (device up, address
        set). Removals first: a peer whose subnet or address moved gets its new
        entries after the old ones are gone."""
        done: dict[str, tuple[list, list]] = {}
        add, rem = diff(self.routes(index), p.routes)
        for r in rem:
            self._do(f"removing route {_show(r)}", self.ipr.route, "del", dst=r.dst,
                     gateway=r.via, oif=index, table=MAIN_TABLE, ok=(errno.ESRCH, errno.ENOENT))
        done["routes"] = (add, rem)
        nadd, nrem = diff(self.neighbours(index), p.neighbours)
        for n in nrem:
            self._do(f"removing neighbour {_show(n)}", self.ipr.neigh, "del", ifindex=index,
                     dst=n.addr, lladdr=n.mac, ok=(errno.ENOENT,))
        for n in nadd:
            self._do(f"adding neighbour {_show(n)}", self.ipr.neigh, "replace", ifindex=index,
                     dst=n.addr, lladdr=n.mac, state=NUD_PERMANENT)
        done["neighbours"] = (nadd, nrem)
        fadd, frem = diff(self.fdb(index), p.fdb)
        for f in frem:
            self._do(f"removing FDB entry {_show(f)}", self.ipr.fdb, "del", ifindex=index,
                     lladdr=f.mac, dst=f.dst, ok=(errno.ENOENT,))
        for f in fadd:
            self._do(f"adding FDB entry {_show(f)}", self.ipr.fdb, "append", ifindex=index,
                     lladdr=f.mac, dst=f.dst, state=NUD_PERMANENT, ok=(errno.EEXIST,))
        done["fdb"] = (fadd, frem)
        for r in add:
            self._do(f"adding route {_show(r)}", self.ipr.route, "replace", dst=r.dst,
                     gateway=r.via, oif=index, flags=RTNH_F_ONLINK, proto=RTPROT_STATIC,
                     table=MAIN_TABLE)
        return done

    def drift(self, index: int, p: Plan) -> list[str]:
        """Every way the device's tables and address differ from ``p`` (CHECK)."""
        out = []
        if p.address not in self.addresses(index):
            out.append(f"VTEP address {p.address} missing (have {self.addresses(index)})")
        out += drift(self.routes(index), p.routes, "route")
        out += drift(self.neighbours(index), p.neighbours, "neighbour")
        out += drift(self.fdb(index), p.fdb, "FDB entry")
        return out
