"""Versioned CNI results.

We work in the newest model (1.1.0) and convert exactly once at output. Old
formats chain through 0.4.0 (0.1.0/0.2.0 <-> 0.4.0 <-> 1.x), so there is no
N x N table: each format knows how to go to and from its neighbour.
"""
from __future__ import annotations

import ipaddress

from .errors import CNIError, DECODING_FAILURE
from .gojson import Fields
from . import version as ver
from .record import field, record


@record
class Interface:
    name: str
    mac: str = ""
    mtu: int = 0
    sandbox: str = ""
    socket_path: str = ""
    pci_id: str = ""


@record
class IPConfig:
    address: str               # CIDR, e.g. "10.1.0.5/24"
    gateway: str = ""
    interface: int | None = None

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    @property
    def iface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(self.address)


@record
class Route:
    dst: str
    gw: str = ""
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int | None = None
    scope: int | None = None


@record
class DNS:
    nameservers: list[str] = field(default_factory=list)
    domain: str = ""
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)

    def to_dict(self) -> dict:
        out: dict = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out

    @classmethod
    def from_dict(cls, d: object) -> "DNS":
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise CNIError(DECODING_FAILURE, "dns must be an object", repr(d))
        return cls.from_fields(Fields(d, "dns", code=DECODING_FAILURE))

    @classmethod
    def from_fields(cls, f: Fields) -> "DNS":
        """Read Go-exactly (types.DNS has tags nameservers/domain/search/options)."""
        return cls(nameservers=_str_list(f, "nameservers"), domain=str(f.raw("domain") or ""),
                   search=_str_list(f, "search"), options=_str_list(f, "options"))


def _str_list(f: Fields, key: str) -> list[str]:
    v = f.list(key)
    if not all(isinstance(x, str) for x in v):
        raise CNIError(DECODING_FAILURE, f"dns.{key} must be a list of strings", repr(v))
    return v


@record
class Result:
    """The 1.1.0 result model; ``cni_version`` is the version to print it in."""
    cni_version: str = ver.CURRENT
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: DNS = field(default_factory=DNS)

    # ---- output -------------------------------------------------------------
    def to_dict(self, version: str | None = None) -> dict:
        v = version or self.cni_version
        ver.check_supported(v)
        d = _to_v1(self)
        if ver.at_least(v, "1.0.0"):
            d = _v1_for(d, v)
        else:
            d = _v1_to_v04(d)
            if not ver.at_least(v, "0.3.0"):
                d = _v04_to_v02(d)
        d["cniVersion"] = v
        return d

    # ---- input --------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: object) -> "Result":
        """Parse a result (e.g. prevResult) in whatever version it declares,
        reading keys as Go's encoding/json does (plugins/core/gojson.py)."""
        if not isinstance(d, dict):
            raise CNIError(DECODING_FAILURE, "result must be a JSON object", repr(d)[:200])
        f = Fields(d, code=DECODING_FAILURE)
        v = f.raw("cniVersion")
        if not isinstance(v, str):
            raise CNIError(DECODING_FAILURE, "result has no cniVersion")
        ver.check_supported(v)
        res = _from_fields(f, v)
        res.cni_version = v
        return res

    def copy(self) -> "Result":
        other = Result.from_dict(self.to_dict(ver.CURRENT))
        other.cni_version = self.cni_version
        return other


# ---- 1.x <-> model -----------------------------------------------------------

def _to_v1(r: Result) -> dict:
    d: dict = {}
    if r.interfaces:
        out = []
        for i in r.interfaces:
            e: dict = {"name": i.name}
            if i.mac:
                e["mac"] = i.mac
            if i.mtu:
                e["mtu"] = i.mtu
            if i.sandbox:
                e["sandbox"] = i.sandbox
            if i.socket_path:
                e["socketPath"] = i.socket_path
            if i.pci_id:
                e["pciID"] = i.pci_id
            out.append(e)
        d["interfaces"] = out
    if r.ips:
        out = []
        for ip in r.ips:
            e = {"address": ip.address}
            if ip.gateway:
                e["gateway"] = ip.gateway
            if ip.interface is not None:
                e["interface"] = ip.interface
            out.append(e)
        d["ips"] = out
    if r.routes:
        out = []
        for rt in r.routes:
            e = {"dst": rt.dst}
            if rt.gw:
                e["gw"] = rt.gw
            for key, val in (("mtu", rt.mtu), ("advmss", rt.advmss), ("priority", rt.priority)):
                if val:
                    e[key] = val
            if rt.table is not None:
                e["table"] = rt.table
            if rt.scope is not None:
                e["scope"] = rt.scope
            out.append(e)
        d["routes"] = out
    dns = r.dns.to_dict()
    if dns:
        d["dns"] = dns
    return d


def _v1_for(d: dict, v: str) -> dict:
    """Drop 1.1.0-only fields when printing 1.0.0."""
    if ver.at_least(v, "1.1.0"):
        return d
    for i in d.get("interfaces", []):
        # interface mtu, socketPath and pciID arrived with spec 1.1.0
        i.pop("mtu", None)
        i.pop("socketPath", None)
        i.pop("pciID", None)
    for r in d.get("routes", []):
        for k in ("mtu", "advmss", "priority", "table", "scope"):
            r.pop(k, None)
    return d


def _int_field(f: Fields, key: str) -> int | None:
    val = f.raw(key)
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, int):
        raise CNIError(DECODING_FAILURE, f"{f.path(key)} must be an integer", repr(val))
    return val


def _ip_config(e: Fields, n: int, addr_key: str) -> IPConfig:
    addr, gw = e.raw(addr_key), e.raw("gateway")
    if not isinstance(addr, str):
        raise CNIError(DECODING_FAILURE, f"ips[{n}] needs an address")
    try:
        ipaddress.ip_interface(addr)
        if gw:
            ipaddress.ip_address(gw)
    except (ValueError, TypeError) as err:
        raise CNIError(DECODING_FAILURE, f"ips[{n}] is not a valid address", str(err)) from None
    if "/" not in addr:
        raise CNIError(DECODING_FAILURE, f"ips[{n}].address must be a CIDR", addr)
    return IPConfig(address=addr, gateway=str(gw or ""), interface=_int_field(e, "interface"))


def _route(rt: Fields, n: int) -> Route:
    dst, gw = rt.raw("dst"), rt.raw("gw")
    if not isinstance(dst, str):
        raise CNIError(DECODING_FAILURE, f"routes[{n}] needs a dst")
    try:
        ipaddress.ip_network(dst, strict=False)
        if gw:
            ipaddress.ip_address(gw)
    except (ValueError, TypeError) as e:
        raise CNIError(DECODING_FAILURE, f"routes[{n}] is not valid", str(e)) from None
    return Route(dst=dst, gw=str(gw or ""), mtu=_int_field(rt, "mtu") or 0,
                 advmss=_int_field(rt, "advmss") or 0, priority=_int_field(rt, "priority") or 0,
                 table=_int_field(rt, "table"), scope=_int_field(rt, "scope"))


def _from_fields(f: Fields, v: str) -> Result:
    """The model from a result of version ``v`` (1.x, 0.3.x/0.4.0 or 0.1.0/0.2.0)."""
    res = Result()
    if not ver.at_least(v, "0.3.0"):          # ip4/ip6 objects, each with its routes
        for key in ("ip4", "ip6"):
            e = f.obj(key)
            if not e.data:
                continue
            if not isinstance(e.raw("ip"), str):
                raise CNIError(DECODING_FAILURE, f"{key}.ip is required")
            res.ips.append(_ip_config(e, len(res.ips), "ip"))
            res.ips[-1].interface = None
            res.routes += [_route(rt, n) for n, rt in enumerate(e.objects("routes"))]
        res.dns = DNS.from_fields(f.obj("dns"))
        return res
    for n, i in enumerate(f.objects("interfaces")):
        if not isinstance(i.raw("name"), str):
            raise CNIError(DECODING_FAILURE, f"interfaces[{n}] needs a name")
        res.interfaces.append(Interface(
            name=i.raw("name"), mac=str(i.raw("mac") or ""), mtu=_int_field(i, "mtu") or 0,
            sandbox=str(i.raw("sandbox") or ""), socket_path=str(i.raw("socketPath") or ""),
            pci_id=str(i.raw("pciID") or "")))
    for n, ip in enumerate(f.objects("ips")):
        if not ver.at_least(v, "1.0.0") and ip.raw("version") not in (None, "4", "6"):
            raise CNIError(DECODING_FAILURE, f"ips[{n}].version must be '4' or '6'",
                           repr(ip.raw("version")))
        res.ips.append(_ip_config(ip, n, "address"))
    res.routes = [_route(rt, n) for n, rt in enumerate(f.objects("routes"))]
    res.dns = DNS.from_fields(f.obj("dns"))
    return res


# ---- 1.x <-> 0.4.0 (also 0.3.0 / 0.3.1) -------------------------------------

def _v1_to_v04(d: dict) -> dict:
    out = dict(d)
    ips = []
    for ip in d.get("ips", []):
        e = dict(ip)
        e["version"] = "6" if ":" in e["address"] else "4"
        ips.append(e)
    if ips:
        out["ips"] = ips
    # 0.4.0 knows only dst/gw for routes and no socketPath/pciID.
    return _v1_for(out, "1.0.0")


# ---- 0.4.0 <-> 0.2.0 / 0.1.0 (ip4/ip6) --------------------------------------

def _v04_to_v02(d: dict) -> dict:
    out: dict = {}
    routes = d.get("routes", [])
    for ip in d.get("ips", []):
        key = "ip6" if ip["version"] == "6" else "ip4"
        if key in out:
            continue  # 0.2.0 holds one address per family
        fam_routes = [{k: v for k, v in r.items() if k in ("dst", "gw")}
                      for r in routes if (":" in r["dst"]) == (key == "ip6")]
        e = {"ip": ip["address"]}
        if ip.get("gateway"):
            e["gateway"] = ip["gateway"]
        if fam_routes:
            e["routes"] = fam_routes
        out[key] = e
    if d.get("dns"):
        out["dns"] = d["dns"]
    return out


def convert(d: dict, to_version: str) -> dict:
    """Convert a result dict from its declared version to ``to_version``."""
    return Result.from_dict(d).to_dict(to_version)
