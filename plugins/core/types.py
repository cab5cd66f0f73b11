"""Versioned CNI results.

We work in the newest model (1.1.0) and convert exactly once at output. Old
formats chain through 0.4.0 (0.1.0/0.2.0 <-> 0.4.0 <-> 1.x), so there is no
N x N table: each format knows how to go to and from its neighbour.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .errors import CNIError, DECODING_FAILURE
from . import version as ver


@dataclass
class Interface:
    name: str
    mac: str = ""
    mtu: int = 0
    sandbox: str = ""
    socket_path: str = ""
    pci_id: str = ""


@dataclass
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


@dataclass
class Route:
    dst: str
    gw: str = ""
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int | None = None
    scope: int | None = None


@dataclass
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
        return cls(nameservers=_str_list(d, "nameservers"), domain=str(d.get("domain") or ""),
                   search=_str_list(d, "search"), options=_str_list(d, "options"))


def _str_list(d: dict, key: str) -> list[str]:
    v = d.get(key) or []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise CNIError(DECODING_FAILURE, f"dns.{key} must be a list of strings", repr(v))
    return list(v)


@dataclass
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
        """Parse a result (e.g. prevResult) in whatever version it declares."""
        if not isinstance(d, dict):
            raise CNIError(DECODING_FAILURE, "result must be a JSON object", repr(d)[:200])
        v = d.get("cniVersion")
        if not isinstance(v, str):
            raise CNIError(DECODING_FAILURE, "result has no cniVersion")
        ver.check_supported(v)
        if ver.at_least(v, "1.0.0"):
            v1 = d
        elif ver.at_least(v, "0.3.0"):
            v1 = _v04_to_v1(d)
        else:
            v1 = _v04_to_v1(_v02_to_v04(d))
        res = _from_v1(v1)
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


def _int_field(obj: dict, key: str, where: str) -> int | None:
    val = obj.get(key)
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, int):
        raise CNIError(DECODING_FAILURE, f"{where}.{key} must be an integer", repr(val))
    return val


def _from_v1(d: dict) -> Result:
    res = Result()
    for n, i in enumerate(_list(d, "interfaces")):
        if not isinstance(i, dict) or not isinstance(i.get("name"), str):
            raise CNIError(DECODING_FAILURE, f"interfaces[{n}] needs a name")
        res.interfaces.append(Interface(
            name=i["name"], mac=str(i.get("mac") or ""),
            mtu=_int_field(i, "mtu", f"interfaces[{n}]") or 0,
            sandbox=str(i.get("sandbox") or ""), socket_path=str(i.get("socketPath") or ""),
            pci_id=str(i.get("pciID") or "")))
    for n, ip in enumerate(_list(d, "ips")):
        if not isinstance(ip, dict) or not isinstance(ip.get("address"), str):
            raise CNIError(DECODING_FAILURE, f"ips[{n}] needs an address")
        try:
            ipaddress.ip_interface(ip["address"])
            if ip.get("gateway"):
                ipaddress.ip_address(ip["gateway"])
        except ValueError as e:
            raise CNIError(DECODING_FAILURE, f"ips[{n}] is not a valid address", str(e)) from None
        if "/" not in ip["address"]:
            raise CNIError(DECODING_FAILURE, f"ips[{n}].address must be a CIDR", ip["address"])
        res.ips.append(IPConfig(address=ip["address"], gateway=str(ip.get("gateway") or ""),
                                interface=_int_field(ip, "interface", f"ips[{n}]")))
    for n, rt in enumerate(_list(d, "routes")):
        if not isinstance(rt, dict) or not isinstance(rt.get("dst"), str):
            raise CNIError(DECODING_FAILURE, f"routes[{n}] needs a dst")
        try:
            ipaddress.ip_network(rt["dst"], strict=False)
            if rt.get("gw"):
                ipaddress.ip_address(rt["gw"])
        except ValueError as e:
            raise CNIError(DECODING_FAILURE, f"routes[{n}] is not valid", str(e)) from None
        w = f"routes[{n}]"
        res.routes.append(Route(dst=rt["dst"], gw=str(rt.get("gw") or ""),
                                mtu=_int_field(rt, "mtu", w) or 0,
                                advmss=_int_field(rt, "advmss", w) or 0,
                                priority=_int_field(rt, "priority", w) or 0,
                                table=_int_field(rt, "table", w),
                                scope=_int_field(rt, "scope", w)))
    res.dns = DNS.from_dict(d.get("dns"))
    return res


def _list(d: dict, key: str) -> list:
    v = d.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise CNIError(DECODING_FAILURE, f"{key} must be a list", repr(v)[:200])
    return v


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


def _v04_to_v1(d: dict) -> dict:
    out = dict(d)
    ips = []
    for n, ip in enumerate(d.get("ips") or []):
        if not isinstance(ip, dict):
            raise CNIError(DECODING_FAILURE, f"ips[{n}] must be an object")
        e = dict(ip)
        v = e.pop("version", None)
        if v not in (None, "4", "6"):
            raise CNIError(DECODING_FAILURE, f"ips[{n}].version must be '4' or '6'", repr(v))
        ips.append(e)
    out["ips"] = ips
    return out


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


def _v02_to_v04(d: dict) -> dict:
    out: dict = {"ips": [], "routes": []}
    for key, v in (("ip4", "4"), ("ip6", "6")):
        e = d.get(key)
        if not e:
            continue
        if not isinstance(e, dict) or not isinstance(e.get("ip"), str):
            raise CNIError(DECODING_FAILURE, f"{key}.ip is required")
        ip = {"version": v, "address": e["ip"]}
        if e.get("gateway"):
            ip["gateway"] = e["gateway"]
        out["ips"].append(ip)
        out["routes"].extend(e.get("routes") or [])
    if d.get("dns"):
        out["dns"] = d["dns"]
    return out


def convert(d: dict, to_version: str) -> dict:
    """Convert a result dict from its declared version to ``to_version``."""
    return Result.from_dict(d).to_dict(to_version)
