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

from plugins.core.config import valid_attachments  # noqa: F401  (GC input, re-exported)
from plugins.core import cniargs, version as ver
from plugins.core.config import Fields, NetConf
from plugins.core.gojson import element, slice_layers
from plugins.core.errors import CNIError, INVALID_ENV, INVALID_NETWORK_CONFIG
from plugins.core.record import field, record
from plugins.core.types import DNS, Route

from .ranges import (IPAddress, RangeSet, check_sets_disjoint, parse_ip, parse_range,
                     parse_range_set)

DEFAULT_DATA_DIR = "/var/lib/cni/networks"


@record
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


def parse_routes(f: Fields) -> list[Route]:
    """``ipam.routes`` ([]*types.Route: dst, gw, mtu, advmss, priority, table, scope)."""
    out = []
    for i, r in enumerate(f.objects("routes")):
        where = r.where
        dst = r.raw("dst")
        if not isinstance(dst, str):
            raise _bad(f"{where}.dst is required (a CIDR)", repr(r.data)[:100])
        try:
            ipaddress.ip_network(dst, strict=False)
            if "/" not in dst:
                raise ValueError
        except ValueError:
            raise _bad(f"{where}.dst must be a CIDR", repr(dst)) from None
        gw = ""
        if r.raw("gw") not in (None, ""):
            gw = str(parse_ip(r.raw("gw"), f"{where}.gw"))
        ints = {key: r.int(key, None, lo=0) for key in ("mtu", "advmss", "priority", "table", "scope")}
        out.append(Route(dst=dst, gw=gw, mtu=ints["mtu"] or 0,
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


def _ip_list(f: Fields, key: str) -> list[IPAddress]:
    return [parse_ip(v, f"{f.path(key)}[{i}]") for i, v in enumerate(f.list(key))]


def requested_ips(conf: NetConf, cni_args: dict[str, str]) -> list[IPAddress]:
    out: list[IPAddress] = []
    ip_arg = cniargs.select(cni_args, {"IP"}).get("IP", "")
    if ip_arg:
        for part in ip_arg.split(","):
            try:
                out.append(parse_ip(part.strip(), "CNI_ARGS IP"))
            except CNIError as e:
                raise CNIError(INVALID_ENV, e.msg, e.details) from None
    out += _ip_list(Fields(conf.args, "args").obj("cni"), "ips")
    out += _ip_list(Fields(conf.runtime_config, "runtimeConfig"), "ips")
    seen: set = set()
    uniq = []
    for ip in out:
        if ip not in seen:
            seen.add(ip)
            uniq.append(ip)
    return uniq


def _ranges(set_layers: list, where: str) -> object:
    """One range set of a []RangeSet as Go decodes it (duplicate keys included):
    a list of ``Fields``, or the offending value for parse_range_set's error."""
    if any(v is not None and not isinstance(v, list) for v in set_layers):
        return next(v for v in set_layers if v is not None and not isinstance(v, list))
    return [element(el, f"{where}[{i}]") for i, el in enumerate(slice_layers(set_layers))]


def load(conf: NetConf, cni_args: dict[str, str], *, need_ranges: bool = True) -> IPAMConfig:
    """Read Go-exactly (plugins/core/gojson.py): ``{"Subnet": ..., "RangeStart": ...}``
    from go-cni fills the same fields as ``subnet``/``rangeStart``."""
    if not conf.ipam:
        raise _bad("ipam is required", "IPAM config missing 'ipam' key")
    ipam = Fields(conf.ipam, "ipam")
    rc = Fields(conf.runtime_config, "runtimeConfig")
    sets: list[RangeSet] = []
    names: list[str] = []
    if rc.layers("ipRanges"):
        src = [(rc, "ipRanges")]
    else:
        if ipam.has("subnet"):      # the legacy single range (IPAMConfig embeds *Range)
            names.append("ipam")
            sets.append((parse_range(ipam),))
        src = [(ipam, "ranges")]
    for f, key in src:
        for i, set_layers in enumerate(f.layers(key)):
            names.append(f"{f.path(key)}[{i}]")
            sets.append(parse_range_set(_ranges(set_layers, names[-1]), names[-1]))
    if need_ranges and not sets:
        raise _bad("ipam: no IP ranges specified", "set ipam.ranges or ipam.subnet")
    check_sets_disjoint(sets, names)
    if not ver.at_least(conf.cni_version, "0.3.0"):
        for fam in (4, 6):
            if sum(1 for s in sets if s[0].version == fam) > 1:
                raise _bad(f"cniVersion {conf.cni_version} allows one address per family",
                           "use cniVersion 0.3.0 or later for several range sets per family")
    data_dir = ipam.raw("dataDir") or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str) or not data_dir.startswith("/"):
        raise _bad("ipam.dataDir must be an absolute path", repr(data_dir)[:100])
    resolv = ipam.raw("resolvConf") or ""
    if not isinstance(resolv, str):
        raise _bad("ipam.resolvConf must be a file path", repr(resolv)[:100])
    return IPAMConfig(name=conf.name, cni_version=conf.cni_version, range_sets=sets,
                      routes=parse_routes(ipam), data_dir=data_dir,
                      resolv_conf=resolv, requested=requested_ips(conf, cni_args))
