"""The VXLAN device of an overlay network and its static FDB, over pyroute2.

Plan, then apply: ``DeviceSpec`` (what the device must look like),
``mismatches`` (how an existing device differs) and ``fdb_plan`` (which
entries to add/remove) are pure functions tested without root; ``VxlanLinks``
is the small netlink backend that observes and applies them.

Head-end replication: one permanent all-zero-MAC FDB entry per remote VTEP
(``00:00:00:00:00:00 dst <peer> self permanent``) makes the kernel send every
broadcast / unknown-unicast frame to each peer. We own the device (it carries
our alias), and on it we manage *only* all-zero-MAC entries, so learned or
hand-added per-MAC entries are never touched, and neither is the default
remote the kernel installs for a multicast ``group``.

Every function that talks to the kernel expects to run in the node's network
namespace (the plugin process, or a thread inside ``netns.entered``).
"""
from __future__ import annotations

import errno
import ipaddress

from ..core.errors import (CNIError, IO_FAILURE, INVALID_NETWORK_CONFIG, LINK_EXISTS,
                           NOT_SUPPORTED_BY_KERNEL)
from ..core.record import record

TYPE_CHECKING = False       # not from typing: importing it costs ~2 ms per plugin exec
if TYPE_CHECKING:
    from typing import Any, Iterable

ZERO_MAC = "00:00:00:00:00:00"
# Outer IP + UDP (8) + VXLAN (8) + inner Ethernet (14): 20+8+8+14 and 40+8+8+14.
OVERHEAD = {4: 50, 6: 70}
NTF_SELF = 0x02
NUD_PERMANENT = 0x80
ALIAS_PREFIX = "cnilab-vxlan"
MIN_MTU = {4: 68, 6: 1280}


def device_name(vni: int) -> str:
    """The node's VXLAN device for ``vni`` (one per VNI: the kernel allows no more)."""
    return f"vxlan{vni}"


def staging_name(spec_name: str, alias: str) -> str:
    """The name a new device or bridge is created under, before it is marked as ours.

    The kernel ignores an alias in the creating request, so creation takes two
    steps; a crash between them must not leave a link under the real name that
    nobody owns (an unmarked device makes every later ADD fail; an unmarked
    bridge is never removed by DEL or GC). We create under this name (ours by
    construction: deterministic from the alias and the real name, never used for
    anything else), set the alias, then rename. A leftover under this name is a
    torn creation of ours: the next creation, DEL and GC delete it (under the
    node lock, where no creation is in flight).
    """
    from ..core.names import sha256_hex
    return "vxs" + sha256_hex(f"{alias}\0{spec_name}")[:12]


def owner_alias(network: str) -> str:
    """The ifalias that marks a device/bridge as made by us for ``network``."""
    return f"{ALIAS_PREFIX}:{network}"


def family_of(addr: str) -> int:
    return ipaddress.ip_address(addr).version


def max_mtu(underlay_mtu: int, family: int) -> int:
    """The largest overlay MTU whose encapsulated frames fit the underlay."""
    return underlay_mtu - OVERHEAD[family]


@record(frozen=True)
class DeviceSpec:
    """What the VXLAN device must look like (all values resolved)."""
    name: str
    vni: int
    port: int
    local: str                    # local VTEP address (its family is the underlay's)
    underlay: str                 # underlay interface name
    mtu: int
    learning: bool = False
    group: str = ""               # multicast group, or "" for head-end replication
    alias: str = ""
    routed: bool = False          # mode l3: a routed VTEP, no bridge port (vxlan_l3.py)
    mac: str = ""                 # mode l3: the VTEP MAC every peer expects

    @property
    def family(self) -> int:
        return family_of(self.local)

    def netlink_attrs(self, underlay_index: int) -> dict[str, Any]:
        """Keyword arguments for ``IPRoute.link('add', ...)``."""
        six = self.family == 6
        attrs: dict[str, Any] = {
            "ifname": self.name, "kind": "vxlan", "mtu": self.mtu,
            "vxlan_id": self.vni, "vxlan_port": self.port,
            "vxlan_link": underlay_index,
            "vxlan_learning": 1 if self.learning else 0,
            ("vxlan_local6" if six else "vxlan_local"): self.local,
        }
        if self.group:
            attrs["vxlan_group6" if six else "vxlan_group"] = self.group
        if self.mac:
            attrs["address"] = self.mac
        return attrs


@record
class Observed:
    """An existing link as read back from the kernel (pure data)."""
    name: str
    index: int
    kind: str
    mtu: int
    up: bool
    alias: str = ""
    master: int = 0
    vni: int | None = None
    port: int | None = None
    local: str = ""
    group: str = ""
    link: int = 0                 # underlay ifindex
    learning: bool | None = None
    mac: str = ""


def _norm(addr: str) -> str:
    return str(ipaddress.ip_address(addr)) if addr else ""


def mismatches(spec: DeviceSpec, obs: Observed, underlay_index: int,
               *, check_mtu: bool = True) -> list[str]:
    """Every way ``obs`` differs from ``spec`` (empty: it is our device as configured)."""
    out = []
    if obs.kind != "vxlan":
        return [f"{obs.name} is a {obs.kind or 'non-vxlan'} link, not vxlan"]
    if obs.vni != spec.vni:
        out.append(f"VNI is {obs.vni}, want {spec.vni}")
    if obs.port != spec.port:
        out.append(f"UDP port is {obs.port}, want {spec.port}")
    if _norm(obs.local) != _norm(spec.local):
        out.append(f"local address is {obs.local or 'unset'}, want {spec.local}")
    if _norm(obs.group) != _norm(spec.group):
        out.append(f"group is {obs.group or 'unset'}, want {spec.group or 'unset'}")
    if obs.link and obs.link != underlay_index:
        out.append(f"underlay ifindex is {obs.link}, want {underlay_index} ({spec.underlay})")
    if obs.learning is not None and obs.learning != spec.learning:
        out.append(f"learning is {'on' if obs.learning else 'off'}, want "
                   f"{'on' if spec.learning else 'off'}")
    if check_mtu and obs.mtu != spec.mtu:
        out.append(f"MTU is {obs.mtu}, want {spec.mtu}")
    from .vxlan_l3 import vtep_mac
    have_mac = (obs.mac or "").lower()
    if spec.routed:
        if obs.master:
            out.append("it is a bridge port (made for mode l2), want a routed VTEP (mode l3)")
        if spec.mac and have_mac and have_mac != spec.mac.lower():
            out.append(f"MAC is {have_mac}, want {spec.mac.lower()} (mode l3)")
    elif spec.local and have_mac == vtep_mac(spec.vni, spec.local):
        out.append("it is a routed VTEP (made for mode l3), want a bridge port (mode l2)")
    return out


def fdb_plan(current: Iterable[str], wanted: Iterable[str]) -> tuple[list[str], list[str]]:
    """(to add, to remove) so that the all-zero-MAC entries equal ``wanted``."""
    cur = {_norm(a) for a in current}
    want = {_norm(a) for a in wanted}
    return sorted(want - cur, key=_sort_key), sorted(cur - want, key=_sort_key)


def _sort_key(a: str):
    ip = ipaddress.ip_address(a)
    return (ip.version, int(ip))


@record
class Underlay:
    name: str
    index: int
    mtu: int
    up: bool
    addresses: list[str]          # global-scope addresses, primary first per family


def _nl_errno(exc: BaseException) -> int | None:
    return getattr(exc, "code", None)


class VxlanLinks:
    """The netlink backend. Open it in the node namespace."""

    def __init__(self, ipr=None) -> None:
        if ipr is None:
            from .link import open_iproute
            ipr = open_iproute()
        self.ipr = ipr

    def close(self) -> None:
        self.ipr.close()

    def __enter__(self) -> "VxlanLinks":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- reading ---------------------------------------------------------------
    def index_of(self, name: str) -> int | None:
        found = self.ipr.link_lookup(ifname=name)
        return found[0] if found else None

    def observe(self, name: str) -> Observed | None:
        idx = self.index_of(name)
        if idx is None:
            return None
        return self.observe_index(idx)

    def observe_index(self, idx: int) -> Observed | None:
        try:
            msg = self.ipr.get_links(idx)[0]
        except Exception as e:  # noqa: BLE001 - vanished between lookup and get
            if _nl_errno(e) == errno.ENODEV:
                return None
            raise
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
        obs = Observed(name=msg.get_attr("IFLA_IFNAME"), index=msg["index"], kind=kind or "",
                       mtu=msg.get_attr("IFLA_MTU") or 0, up=bool(msg["flags"] & 1),
                       alias=msg.get_attr("IFLA_IFALIAS") or "",
                       master=msg.get_attr("IFLA_MASTER") or 0,
                       mac=msg.get_attr("IFLA_ADDRESS") or "")
        if kind == "vxlan":
            data = info.get_attr("IFLA_INFO_DATA")
            get = data.get_attr if data is not None else (lambda _k: None)
            obs.vni = get("IFLA_VXLAN_ID")
            obs.port = get("IFLA_VXLAN_PORT")
            obs.local = get("IFLA_VXLAN_LOCAL") or get("IFLA_VXLAN_LOCAL6") or ""
            grp = get("IFLA_VXLAN_GROUP") or get("IFLA_VXLAN_GROUP6") or ""
            obs.group = "" if grp in ("0.0.0.0", "::") else grp
            obs.link = get("IFLA_VXLAN_LINK") or 0
            lrn = get("IFLA_VXLAN_LEARNING")
            obs.learning = None if lrn is None else bool(lrn)
        return obs

    def underlay(self, name: str) -> Underlay | None:
        idx = self.index_of(name)
        if idx is None:
            return None
        msg = self.ipr.get_links(idx)[0]
        addrs: list[str] = []
        for fam in (2, 10):
            for a in self.ipr.get_addr(index=idx, family=fam):
                if a["scope"] == 0:       # global scope only (no link-local)
                    addrs.append(a.get_attr("IFA_ADDRESS"))
        oper = msg.get_attr("IFLA_OPERSTATE") or ""
        up = bool(msg["flags"] & 1) and oper in ("UP", "UNKNOWN")
        return Underlay(name=name, index=idx, mtu=msg.get_attr("IFLA_MTU") or 0, up=up,
                        addresses=addrs)

    def route_dev(self, dst: str) -> str | None:
        """The interface the node would use to reach ``dst`` (None: no route)."""
        try:
            routes = self.ipr.route("get", dst=dst)
        except Exception as e:  # noqa: BLE001
            if _nl_errno(e) in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL):
                return None
            raise
        for r in routes:
            oif = r.get_attr("RTA_OIF")
            if oif:
                msg = self.ipr.get_links(oif)[0]
                return msg.get_attr("IFLA_IFNAME")
        return None

    def fdb_peers(self, index: int) -> list[str]:
        """Destinations of the all-zero-MAC ``self`` entries on the device."""
        out = []
        for e in self.ipr.fdb("dump", ifindex=index):
            if e.get("ifindex") != index or not (e.get("flags", 0) & NTF_SELF):
                continue
            if (e.get_attr("NDA_LLADDR") or "").lower() != ZERO_MAC:
                continue
            dst = e.get_attr("NDA_DST")
            if dst:
                out.append(_norm(dst))
        return sorted(set(out), key=_sort_key)

    # ---- changing --------------------------------------------------------------
    def remove_torn(self, name: str, alias: str) -> bool:
        """Delete the leftover of a creation of ``name`` that a crash cut short (the
        staging name is ours alone); needs the node lock. True when one was there."""
        torn = self.index_of(staging_name(name, alias))
        return torn is not None and self.delete(torn)

    def _mark_and_rename(self, idx: int, name: str, alias: str) -> None:
        """Mark a link created under its staging name, then give it its real name."""
        try:
            self.ipr.link("set", index=idx, ifalias=alias)
            self.ipr.link("set", index=idx, ifname=name)    # down still: rename allowed
        except Exception as e:  # noqa: BLE001 - e.g. the real name was taken meanwhile
            self.delete(idx)
            raise CNIError(IO_FAILURE if _nl_errno(e) != errno.EEXIST else LINK_EXISTS,
                           f"naming {name} after creating it failed", str(e)) from None

    def create_bridge(self, name: str, alias: str, mtu: int) -> int:
        """A new bridge ``name`` (down), marked with ``alias`` before it gets its name."""
        self.remove_torn(name, alias)
        staged = staging_name(name, alias)
        try:
            self.ipr.link("add", ifname=staged, kind="bridge", mtu=mtu)
        except Exception as e:  # noqa: BLE001
            raise CNIError(IO_FAILURE, f"creating bridge {name} failed", str(e)) from None
        idx = self.index_of(staged)
        if idx is None:
            raise CNIError(IO_FAILURE, f"bridge {name} vanished after creation")
        self._mark_and_rename(idx, name, alias)
        return idx

    def create(self, spec: DeviceSpec, underlay_index: int) -> int:
        attrs = spec.netlink_attrs(underlay_index)
        if spec.alias:
            self.remove_torn(spec.name, spec.alias)
            attrs["ifname"] = staging_name(spec.name, spec.alias)
        try:
            self.ipr.link("add", **attrs)
        except Exception as e:  # noqa: BLE001
            code = _nl_errno(e)
            if code == errno.EEXIST:
                raise CNIError(LINK_EXISTS, f"cannot create VXLAN device {spec.name}",
                               f"a device with VNI {spec.vni} on port {spec.port} (or the "
                               f"name {spec.name}) already exists") from None
            if code == errno.EOPNOTSUPP:
                raise CNIError(NOT_SUPPORTED_BY_KERNEL, "the kernel has no vxlan support",
                               str(e)) from None
            raise CNIError(IO_FAILURE, f"creating VXLAN device {spec.name} failed", str(e)) from None
        idx = self.index_of(attrs["ifname"])
        if idx is None:
            raise CNIError(IO_FAILURE, f"VXLAN device {spec.name} vanished after creation")
        if spec.alias:
            self._mark_and_rename(idx, spec.name, spec.alias)
        return idx

    def set_mtu(self, index: int, mtu: int) -> None:
        self.ipr.link("set", index=index, mtu=mtu)

    def set_up(self, index: int) -> None:
        self.ipr.link("set", index=index, state="up")

    def set_master(self, index: int, master: int) -> None:
        self.ipr.link("set", index=index, master=master)

    def set_alias(self, index: int, alias: str) -> None:
        self.ipr.link("set", index=index, ifalias=alias)

    def set_mac(self, index: int, mac: str) -> None:
        self.ipr.link("set", index=index, address=mac)

    def ports(self, master: int) -> list[Observed]:
        """The links enslaved to ``master`` (a bridge)."""
        out = []
        for msg in self.ipr.get_links():
            if msg.get_attr("IFLA_MASTER") == master:
                obs = self.observe_index(msg["index"])
                if obs is not None:
                    out.append(obs)
        return out

    def delete(self, index: int) -> bool:
        """Delete a link; False when it was already gone."""
        try:
            self.ipr.link("del", index=index)
        except Exception as e:  # noqa: BLE001
            if _nl_errno(e) == errno.ENODEV:
                return False
            raise
        return True

    def fdb_add(self, index: int, dst: str) -> None:
        try:
            self.ipr.fdb("append", ifindex=index, lladdr=ZERO_MAC, dst=dst,
                         state=NUD_PERMANENT)
        except Exception as e:  # noqa: BLE001
            if _nl_errno(e) != errno.EEXIST:
                raise CNIError(IO_FAILURE, f"adding FDB entry for peer {dst} failed",
                               str(e)) from None

    def fdb_del(self, index: int, dst: str) -> None:
        try:
            self.ipr.fdb("del", ifindex=index, lladdr=ZERO_MAC, dst=dst)
        except Exception as e:  # noqa: BLE001
            if _nl_errno(e) not in (errno.ENOENT, errno.ENODEV):
                raise CNIError(IO_FAILURE, f"removing FDB entry for peer {dst} failed",
                               str(e)) from None

    def sync_fdb(self, index: int, peers: Iterable[str]) -> tuple[list[str], list[str]]:
        """Make the all-zero-MAC entries equal ``peers``; returns (added, removed)."""
        add, remove = fdb_plan(self.fdb_peers(index), peers)
        for dst in add:
            self.fdb_add(index, dst)
        for dst in remove:
            self.fdb_del(index, dst)
        return add, remove

    # ---- the device as a whole ------------------------------------------------
    def ensure(self, spec: DeviceSpec, underlay_index: int) -> tuple[int, bool]:
        """Create the device or verify an existing one; returns (ifindex, created).

        An existing device that is not ours, or is ours but configured otherwise,
        is an error: recreating it would cut off the pods already using it.
        The MTU of an existing device of ours follows the config (so it can be
        raised after the underlay's MTU was raised).
        """
        obs = self.observe(spec.name)
        if obs is None:
            idx = self.create(spec, underlay_index)
            return idx, True
        if obs.alias != spec.alias:
            raise CNIError(LINK_EXISTS, f"a link named {spec.name} exists and is not ours",
                           f"its alias is {obs.alias!r}, expected {spec.alias!r}")
        bad = mismatches(spec, obs, underlay_index, check_mtu=False)
        if bad:
            raise CNIError(INVALID_NETWORK_CONFIG,
                           f"VXLAN device {spec.name} exists with another configuration",
                           "; ".join(bad) + " (delete the pods of this network or run GC "
                           "to let it be recreated)")
        if obs.mtu != spec.mtu:
            self.set_mtu(obs.index, spec.mtu)
        return obs.index, False
