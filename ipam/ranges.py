"""Address ranges and range sets: parsing, defaults, validation, membership.

A *range* is one subnet with an inclusive [start, end] span of allocatable
addresses and a gateway that is never handed out. A *range set* is a list of
ranges of one address family; every range set yields one address per ADD.

Defaults follow the reference plugin: gateway = first address of the subnet,
start = first address, end = last address (minus the broadcast for IPv4).
Validation is stricter where the reference is wrong: a gateway outside the
subnet and start > end are rejected. Every error is code 7 naming the field.

Addresses are handled as ints internally (fast iteration over large pools).
"""
from __future__ import annotations

import ipaddress

from plugins.core.errors import CNIError, INVALID_NETWORK_CONFIG
from plugins.core.gojson import Fields
from plugins.core.record import record

# Type aliases as strings: annotations are not evaluated, and `typing` stays unimported
# (it costs ~3 ms at every exec of the plugin).
IPAddress = "ipaddress.IPv4Address | ipaddress.IPv6Address"
IPNetwork = "ipaddress.IPv4Network | ipaddress.IPv6Network"


def _bad(where: str, msg: str, details: str = "") -> CNIError:
    return CNIError(INVALID_NETWORK_CONFIG, f"{where}: {msg}", details)


def parse_ip(value: object, where: str) -> IPAddress:
    """An address; a CIDR suffix is tolerated and dropped (as the reference's ip.IP)."""
    if not isinstance(value, str) or not value:
        raise _bad(where, "must be an IP address", repr(value)[:100])
    text = value.split("/", 1)[0] if "/" in value else value
    try:
        if "/" in value:
            ipaddress.ip_interface(value)      # the prefix must be valid too
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise _bad(where, "must be an IP address", repr(value)[:100]) from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped                    # Go canonicalises ::ffff:a.b.c.d to v4
    return ip


@record(frozen=True)
class Range:
    subnet: IPNetwork
    start: int
    end: int
    gateway: IPAddress

    @property
    def version(self) -> int:
        return self.subnet.version

    @property
    def gw_int(self) -> int:
        return int(self.gateway)

    def contains(self, ip: IPAddress) -> bool:
        """``ip`` is of our family and within [start, end] (gateway included)."""
        return ip.version == self.version and self.start <= int(ip) <= self.end

    def capacity(self) -> int:
        """How many addresses can be handed out (the gateway never is)."""
        n = self.end - self.start + 1
        return n - 1 if self.start <= self.gw_int <= self.end else n

    def addr(self, value: int) -> IPAddress:
        return ipaddress.ip_address(value) if self.version == 6 or value > 0xFFFFFFFF \
            else ipaddress.IPv4Address(value)

    def cidr(self, ip: IPAddress) -> str:
        return f"{ip}/{self.subnet.prefixlen}"

    def __str__(self) -> str:
        return f"{self.addr(self.start)}-{self.addr(self.end)}"

    def overlaps(self, other: "Range") -> bool:
        return self.version == other.version and self.start <= other.end \
            and other.start <= self.end


RangeSet = tuple  # tuple[Range, ...], all of one family


def set_contains(rs: RangeSet, ip: IPAddress) -> Range | None:
    for r in rs:
        if r.contains(ip):
            return r
    return None


def set_str(rs: RangeSet) -> str:
    return ",".join(str(r) for r in rs)


def set_capacity(rs: RangeSet) -> int:
    return sum(r.capacity() for r in rs)


def parse_range(obj: object, where: str = "range") -> Range:
    """One range ``{subnet, rangeStart, rangeEnd, gateway}`` (a dict, or a
    ``Fields`` view) -> Range. Read Go-exactly: go-cni sends ``Subnet``,
    ``RangeStart``, ``RangeEnd``, ``Gateway``."""
    if isinstance(obj, Fields):
        f, where = obj, obj.where
    elif isinstance(obj, dict):
        f = Fields(obj, where)
    else:
        raise _bad(where, "must be an object with a subnet", repr(obj)[:100])
    raw = f.raw("subnet")
    if not isinstance(raw, str) or not raw:
        raise _bad(f"{where}.subnet", "is required (a CIDR such as 10.1.0.0/24)")
    try:
        if "/" not in raw:
            raise ValueError("no prefix length")
        iface = ipaddress.ip_interface(raw)
    except ValueError:
        raise _bad(f"{where}.subnet", "must be a CIDR such as 10.1.0.0/24", repr(raw)) from None
    net = iface.network
    if net.prefixlen > net.max_prefixlen - 2:
        raise _bad(f"{where}.subnet", f"network {net} is too small to allocate from",
                   f"need a prefix of /{net.max_prefixlen - 2} or shorter")
    if iface.ip != net.network_address:
        raise _bad(f"{where}.subnet", "has host bits set",
                   f"for a /{net.prefixlen} the network address is {net.network_address}")
    first = int(net.network_address) + 1
    last = int(net.broadcast_address) - (1 if net.version == 4 else 0)

    def inside(key: str, default: int) -> int:
        if not f.has(key):
            return default
        ip = parse_ip(f.raw(key), f"{where}.{key}")
        if ip.version != net.version or ip not in net:
            raise _bad(f"{where}.{key}", f"{ip} is not in subnet {net}")
        return int(ip)

    gw = inside("gateway", first)
    start = inside("rangeStart", first)
    end = inside("rangeEnd", last)
    if start > end:
        raise _bad(f"{where}.rangeStart",
                   f"{ipaddress.ip_address(start)} is after rangeEnd {ipaddress.ip_address(end)}")
    gateway = ipaddress.ip_address(gw) if net.version == 6 else ipaddress.IPv4Address(gw)
    return Range(subnet=net, start=start, end=end, gateway=gateway)


def parse_range_set(obj: object, where: str) -> RangeSet:
    """A list of ranges (dicts or ``Fields`` views) -> RangeSet."""
    if not isinstance(obj, list) or not obj:
        raise _bad(where, "must be a non-empty list of ranges", repr(obj)[:100])
    rs = tuple(parse_range(o, f"{where}[{i}]") for i, o in enumerate(obj))
    fam = rs[0].version
    for i, r in enumerate(rs):
        if r.version != fam:
            raise _bad(f"{where}[{i}]", "mixes address families within one range set",
                       "put IPv4 and IPv6 ranges in separate range sets")
    for i, a in enumerate(rs):
        for j in range(i + 1, len(rs)):
            if a.overlaps(rs[j]):
                raise _bad(f"{where}[{j}]", f"range {rs[j]} overlaps with {where}[{i}] ({a})")
    return rs


def check_sets_disjoint(sets: list, names: list[str]) -> None:
    """No range of one set may overlap a range of another."""
    for i, a in enumerate(sets):
        for j in range(i + 1, len(sets)):
            for ra in a:
                for rb in sets[j]:
                    if ra.overlaps(rb):
                        raise _bad(names[j], f"range set overlaps with {names[i]}",
                                   f"{rb} overlaps {ra}")
