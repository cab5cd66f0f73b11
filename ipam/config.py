"""The typed host-local configuration, built once from the network config.

Sources merged here (handlers never read raw JSON):
- ``ipam.ranges`` (list of range sets) and the legacy single range at the top
  of ``ipam`` (``subnet``/``rangeStart``/``rangeEnd``/``gateway``), which is
  prepended as range set 0, as the reference does;
- ``runtimeConfig.ipRanges`` (capability ``ipRanges``): when present it
  *replaces* the configured ranges (see ADR 0003);
- requested addresses: ``CNI_ARGS`` ``IP=`` (comma-separated list allowed),
  ``args.cni.ips`` and ``runtimeConfig.ips`` (capability ``ips``);
- ``routes``, ``dataDir``, ``resolvConf``.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from plugins.core.gc import valid_attachments  # noqa: F401  (GC input, re-exported)
from plugins.core import cniargs, version as ver
from plugins.core.config import NetConf
from plugins.core.errors import CNIError, INVALID_ENV, INVALID_NETWORK_CONFIG
from plugins.core.types import DNS, Route

from .ranges import IPAddress, RangeSet, check_sets_disjoint, parse_ip, parse_range_set

DEFAULT_DATA_DIR = "/var/lib/cni/networks"


@dataclass
class IPAMConfig:
    name: str
    cni_version: str
    range_sets: list[RangeSet]
    routes: list[Route] = field(default_factory=list)
    data_dir: str = DEFAULT_DATA_DIR
    resolv_conf: str = ""
    requested: list[IPAddress] = field(default_factory=list)


def _bad(msg: str, details: str = "") -> CNIError:
    return CNIError(INVALID_NETWORK_CONFIG, msg, details)


def parse_routes(value: object) -> list[Route]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("ipam.routes must be a list of {dst, gw} objects")
    out = []
    for i, r in enumerate(value):
        where = f"ipam.routes[{i}]"
        if not isinstance(r, dict) or not isinstance(r.get("dst"), str):
            raise _bad(f"{where}.dst is required (a CIDR)", repr(r)[:100])
        try:
            ipaddress.ip_network(r["dst"], strict=False)
            if "/" not in r["dst"]:
                raise ValueError
        except ValueError:
            raise _bad(f"{where}.dst must be a CIDR", repr(r["dst"])) from None
        gw = ""
        if r.get("gw") not in (None, ""):
            gw = str(parse_ip(r["gw"], f"{where}.gw"))
        ints = {}
        for key in ("mtu", "advmss", "priority", "table", "scope"):
            v = r.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise _bad(f"{where}.{key} must be a non-negative integer", repr(v))
            ints[key] = v
        out.append(Route(dst=r["dst"], gw=gw, mtu=ints["mtu"] or 0,
                         advmss=ints["advmss"] or 0, priority=ints["priority"] or 0,
                         table=ints["table"], scope=ints["scope"]))
    return out


def parse_resolv_conf(path: str) -> DNS:
    """nameserver/domain/search/options lines of a resolv.conf file."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise _bad(f"ipam.resolvConf: cannot read {path}", e.strerror or str(e)) from None
    dns = DNS()
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        words = line.split()
        if len(words) < 2:
            continue
        key, rest = words[0], words[1:]
        if key == "nameserver":
            dns.nameservers.append(rest[0])
        elif key == "domain":
            dns.domain = rest[0]
        elif key == "search":
            dns.search.extend(rest)
        elif key == "options":
            dns.options.extend(rest)
    return dns


def _ip_list(value: object, where: str) -> list[IPAddress]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad(f"{where} must be a list of IP addresses", repr(value)[:100])
    return [parse_ip(v, f"{where}[{i}]") for i, v in enumerate(value)]


def requested_ips(conf: NetConf, cni_args: dict[str, str]) -> list[IPAddress]:
    out: list[IPAddress] = []
    ip_arg = cniargs.select(cni_args, {"IP"}).get("IP", "")
    if ip_arg:
        for part in ip_arg.split(","):
            try:
                out.append(parse_ip(part.strip(), "CNI_ARGS IP"))
            except CNIError as e:
                raise CNIError(INVALID_ENV, e.msg, e.details) from None
    cni = conf.args.get("cni") if isinstance(conf.args, dict) else None
    if cni is not None:
        if not isinstance(cni, dict):
            raise _bad("args.cni must be an object")
        out += _ip_list(cni.get("ips"), "args.cni.ips")
    out += _ip_list(conf.runtime_config.get("ips"), "runtimeConfig.ips")
    seen: set = set()
    uniq = []
    for ip in out:
        if ip not in seen:
            seen.add(ip)
            uniq.append(ip)
    return uniq


def load(conf: NetConf, cni_args: dict[str, str], *, need_ranges: bool = True) -> IPAMConfig:
    ipam = conf.ipam
    if not ipam:
        raise _bad("ipam is required", "IPAM config missing 'ipam' key")
    sets: list[RangeSet] = []
    names: list[str] = []
    rt_ranges = conf.runtime_config.get("ipRanges")
    if rt_ranges:
        if not isinstance(rt_ranges, list):
            raise _bad("runtimeConfig.ipRanges must be a list of range sets")
        for i, s in enumerate(rt_ranges):
            names.append(f"runtimeConfig.ipRanges[{i}]")
            sets.append(parse_range_set(s, names[-1]))
    else:
        if ipam.get("subnet") is not None:
            names.append("ipam")
            sets.append(parse_range_set([{k: ipam.get(k) for k in
                                          ("subnet", "rangeStart", "rangeEnd", "gateway")}],
                                        "ipam")[:1])
        ranges = ipam.get("ranges")
        if ranges is not None and not isinstance(ranges, list):
            raise _bad("ipam.ranges must be a list of range sets (lists of ranges)")
        for i, s in enumerate(ranges or []):
            names.append(f"ipam.ranges[{i}]")
            sets.append(parse_range_set(s, names[-1]))
    if need_ranges and not sets:
        raise _bad("ipam: no IP ranges specified", "set ipam.ranges or ipam.subnet")
    check_sets_disjoint(sets, names)
    if not ver.at_least(conf.cni_version, "0.3.0"):
        for fam in (4, 6):
            if sum(1 for s in sets if s[0].version == fam) > 1:
                raise _bad(f"cniVersion {conf.cni_version} allows one address per family",
                           "use cniVersion 0.3.0 or later for several range sets per family")
    data_dir = ipam.get("dataDir") or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str) or not data_dir.startswith("/"):
        raise _bad("ipam.dataDir must be an absolute path", repr(data_dir)[:100])
    resolv = ipam.get("resolvConf") or ""
    if not isinstance(resolv, str):
        raise _bad("ipam.resolvConf must be a file path", repr(resolv)[:100])
    return IPAMConfig(name=conf.name, cni_version=conf.cni_version, range_sets=sets,
                      routes=parse_routes(ipam.get("routes")), data_dir=data_dir,
                      resolv_conf=resolv, requested=requested_ips(conf, cni_args))


