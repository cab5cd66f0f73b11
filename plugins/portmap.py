"""portmap: host ports forwarded to a pod, on nftables tables of our own.

A chained plugin: it reads the pod's addresses from prevResult and the
mappings from ``runtimeConfig.portMappings`` and passes prevResult through.
Rules live in ``ip cnilab-portmap`` and ``ip6 cnilab-portmap`` (see
plugins/net/portmap_rules.py for the layout and docs/adr/0005). Every ADD is
one nftables transaction that also (re)creates the shared table and chains,
so concurrent ADDs/DELs serialise in the kernel and never race.

Config keys: snat (default true), masqAll, markMasqBit (0-31, default 13),
conditionsV4 / conditionsV6 (nftables match expressions: a list of text
tokens joined by spaces, as the reference takes them, or a list of
libnftables JSON expressions), backend (only "nftables").
"""
from __future__ import annotations

import ipaddress
import os
import sys
import threading

from .core.record import field, record
from plugins.core.config import Fields, require_prev_result
from plugins.core.config import valid_attachments
from plugins.core.errors import (CHECK_FAILED, CNIError, INVALID_NETWORK_CONFIG, IO_FAILURE,
                                 NOT_AVAILABLE)
from plugins.core.types import Result
from plugins.core.undo import quietly
from plugins.net import portmap_rules as pr

_RETRIES = 8


# ---- config -----------------------------------------------------------------

@record
class PortMapConfig:
    network: str
    snat: bool = True
    masq_all: bool = False
    mark_bit: int = pr.DEFAULT_MARK_BIT
    conditions: dict[int, list] = field(default_factory=lambda: {4: [], 6: []})
    mappings: list[pr.PortMapping] = field(default_factory=list)


def _mapping(f: Fields) -> pr.PortMapping:
    host_port = f.int("hostPort", lo=1, hi=65535, required=True)
    container_port = f.int("containerPort", lo=1, hi=65535, required=True)
    proto = f.str("protocol", "tcp").lower()
    if proto not in pr.PROTOCOLS:
        raise CNIError(INVALID_NETWORK_CONFIG, f"{f.path('protocol')} must be tcp, udp or sctp",
                       f"got {proto!r}")
    host_ip = f.ip("hostIP")
    if host_ip:
        host_ip = str(ipaddress.ip_address(host_ip))
    return pr.PortMapping(host_port, container_port, proto, host_ip)


def _conditions(f: Fields, key: str) -> list:
    items = f.list(key)
    if not items:
        return []
    if all(isinstance(x, str) for x in items):
        text = " ".join(x.strip() for x in items).strip()
        if any(c in text for c in ";\n\r#"):
            raise CNIError(INVALID_NETWORK_CONFIG, f"{key} must be match expressions only",
                           "';', '#' and newlines are not allowed")
        return [text] if text else []
    if all(isinstance(x, dict) for x in items):
        for n, x in enumerate(items):
            if list(x) != ["match"]:
                raise CNIError(INVALID_NETWORK_CONFIG,
                               f"{key}[{n}] must be a JSON match expression",
                               f"got keys {sorted(x)}")
        return list(items)
    raise CNIError(INVALID_NETWORK_CONFIG,
                   f"{key} must be a list of strings or a list of JSON match expressions")


def parse_config(conf) -> PortMapConfig:
    """The typed config; raises code 7 before anything is touched."""
    f = Fields(conf.raw)
    backend = f.str("backend", "nftables")
    if backend != "nftables":
        raise CNIError(INVALID_NETWORK_CONFIG, "backend must be \"nftables\"",
                       f"got {backend!r}: this portmap implements only nftables")
    if f.has("externalSetMarkChain"):
        raise CNIError(INVALID_NETWORK_CONFIG,
                       "externalSetMarkChain is iptables-only; use markMasqBit")
    cfg = PortMapConfig(network=conf.name, snat=f.bool("snat", True),
                        masq_all=f.bool("masqAll", False),
                        mark_bit=f.int("markMasqBit", pr.DEFAULT_MARK_BIT, lo=0, hi=31))
    cfg.conditions = {4: _conditions(f, "conditionsV4"), 6: _conditions(f, "conditionsV6")}
    rc = Fields(conf.runtime_config, "runtimeConfig")
    seen: set[tuple] = set()
    # Go-exact keys: containerd's go-cni sends HostPort/ContainerPort/Protocol/HostIP.
    for n, item in enumerate(rc.objects("portMappings")):
        m = _mapping(item)
        key = (m.protocol, m.host_port, m.host_ip)
        if key in seen:
            raise CNIError(INVALID_NETWORK_CONFIG,
                           f"runtimeConfig.portMappings[{n}] duplicates an earlier mapping",
                           f"{m.protocol} {m.host_ip or '*'}:{m.host_port}")
        seen.add(key)
        cfg.mappings.append(m)
    return cfg


def pod_addresses(prev: Result, ifname: str) -> dict[int, str]:
    """The first IPv4 and IPv6 address of the pod interface ``ifname``."""
    out: dict[int, str] = {}
    for ip in prev.ips:
        if ip.interface is not None and 0 <= ip.interface < len(prev.interfaces):
            iface = prev.interfaces[ip.interface]
            if iface.name != ifname or not iface.sandbox:
                continue
        out.setdefault(ip.family, str(ip.iface.ip))
    return out


def _require_prev(conf) -> Result:
    return require_prev_result(conf, "portmap")


# ---- conditions: text -> JSON, compiled in a private network namespace -------

def compile_conditions(texts: dict[int, str]) -> dict[int, list[dict]]:
    """Translate nft text conditions into JSON match expressions.

    libnftables parses text only on the way into the kernel, so the text is
    committed to a scratch table inside a network namespace private to one
    short-lived thread (unshare), which vanishes with the thread: the node's
    ruleset is never touched and no name lookup can leave the machine.
    """
    box: dict = {}

    def work() -> None:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(0x40000000) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
            import json
            import nftables
            ctx = nftables.Nftables()
            ctx.set_json_output(True)
            ctx.set_echo_output(True)
            out = {}
            for fam, text in texts.items():
                nf = pr.FAMILIES[fam]
                rc, o, e = ctx.cmd(f"add table {nf} scratch; add chain {nf} scratch c; "
                                   f"add rule {nf} scratch c {text} accept")
                if rc != 0:
                    raise CNIError(INVALID_NETWORK_CONFIG,
                                   f"conditionsV{fam} is not a valid nftables expression",
                                   e.strip()[:500])
                exprs = None
                for obj in json.loads(o).get("nftables", []):
                    rule = obj.get("add", {}).get("rule")
                    if rule:
                        exprs = rule["expr"][:-1]
                if exprs is None or any(list(x) != ["match"] for x in exprs):
                    raise CNIError(INVALID_NETWORK_CONFIG,
                                   f"conditionsV{fam} must contain match expressions only",
                                   text[:300])
                out[fam] = exprs
            box["out"] = out
        except BaseException as exc:  # noqa: BLE001 - carried to the caller
            box["err"] = exc

    t = threading.Thread(target=work, name="nft-compile")
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return box["out"]


def _resolve_conditions(cfg: PortMapConfig, families) -> dict[int, list[dict]]:
    texts = {fam: cfg.conditions[fam][0] for fam in families
             if cfg.conditions[fam] and isinstance(cfg.conditions[fam][0], str)}
    compiled = compile_conditions(texts) if texts else {}
    return {fam: compiled.get(fam, [c for c in cfg.conditions[fam] if isinstance(c, dict)])
            for fam in families}


def build_plans(cfg: PortMapConfig, call, addrs: dict[int, str],
                conds: dict[int, list[dict]]) -> list[pr.PortMapPlan]:
    plans = []
    for fam in sorted(addrs):
        if not any(m.applies_to(fam) for m in cfg.mappings):
            continue
        plans.append(pr.PortMapPlan(
            network=cfg.network, container_id=call.args.container_id, ifname=call.args.ifname,
            family=fam, pod_ip=addrs[fam], mappings=cfg.mappings, snat=cfg.snat,
            masq_all=cfg.masq_all, mark_bit=cfg.mark_bit, conditions=conds.get(fam, [])))
    return plans


# ---- the live side ----------------------------------------------------------

def _our_rules(nft, family: int, comment: str) -> list[dict]:
    return pr.rules_commented(nft.list_table(pr.FAMILIES[family], pr.TABLE), comment)


def _apply_retrying(nft, build) -> None:
    from plugins.net.nft import apply_rebuilding
    apply_rebuilding(nft, build, "nftables transaction for port mappings", _RETRIES)


def route_oif(address: str) -> int:
    """The output interface index the kernel picks for ``address`` (RTM_GETROUTE).

    A dozen lines of rtnetlink instead of importing pyroute2 (~150 ms) for
    one lookup; runs in the calling thread's network namespace.
    """
    import errno
    import socket
    import struct
    addr = ipaddress.ip_address(address)
    fam = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    rta = struct.pack("HH", 4 + len(addr.packed), 1) + addr.packed        # RTA_DST
    rtm = struct.pack("BBBBBBBBI", fam, addr.max_prefixlen, 0, 0, 0, 0, 0, 0, 0)
    body = rtm + rta
    msg = struct.pack("IHHII", 16 + len(body), 26, 1, 1, 0) + body         # RTM_GETROUTE
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.settimeout(5)
        s.send(msg)
        data = s.recv(65536)
    length, mtype = struct.unpack_from("IH", data, 0)
    if mtype == 2:                                                         # NLMSG_ERROR
        code = -struct.unpack_from("i", data, 16)[0]
        raise OSError(code, f"route lookup for {address}: {os.strerror(code)}")
    off = 16 + 12                                                          # nlmsghdr + rtmsg
    while off + 4 <= length:
        alen, atype = struct.unpack_from("HH", data, off)
        if alen < 4:
            break
        if atype == 4:                                                     # RTA_OIF
            return struct.unpack_from("I", data, off + 4)[0]
        off += (alen + 3) & ~3
    raise OSError(errno.ENETUNREACH, f"no output interface for {address}")


def _enable_route_localnet(pod_ip: str, prev: Result) -> None:
    """route_localnet on the node interface that routes to the pod (IPv4 only),
    so 127.0.0.1 -> hostPort can be DNATed out of the node and masqueraded."""
    import socket
    from plugins.net import sysctl
    host_ifaces = {i.name for i in prev.interfaces if not i.sandbox}
    try:
        name = socket.if_indextoname(route_oif(pod_ip))
    except OSError as e:
        raise CNIError(IO_FAILURE, f"no route to the pod address {pod_ip} on the node",
                       str(e)) from None
    if host_ifaces and name not in host_ifaces:
        print(f"portmap: {pod_ip} is routed via {name}, not an interface of prevResult",
              file=sys.stderr)
    sysctl.ensure(f"net/ipv4/conf/{name}/route_localnet", 1)


def _flush_udp_conntrack(cfg: PortMapConfig, families) -> None:
    from plugins.net import conntrack
    for fam in families:
        for m in cfg.mappings:
            if m.protocol == "udp" and m.applies_to(fam):
                try:
                    conntrack.delete_by_dport(m.host_port, "udp", fam)
                except OSError as e:   # informative: the mapping itself is in place
                    print(f"portmap: stale UDP conntrack entries for port {m.host_port} "
                          f"not deleted: {e}", file=sys.stderr)


# ---- handlers ---------------------------------------------------------------

@record
class _Work:
    """What ADD and CHECK act on: the config, the pod's addresses, the rule plans."""
    cfg: PortMapConfig
    prev: Result
    addrs: dict[int, str]
    families: list[int]
    plans: list[pr.PortMapPlan]


def _plan(call) -> tuple[Result, "_Work | None"]:
    """(prevResult, the work) or (prevResult, None) when there is nothing to map."""
    cfg = parse_config(call.conf)
    prev = _require_prev(call.conf)
    if not cfg.mappings:
        return prev, None
    addrs = pod_addresses(prev, call.args.ifname)
    families = [fam for fam in sorted(addrs) if any(m.applies_to(fam) for m in cfg.mappings)]
    if not families:
        return prev, None
    plans = build_plans(cfg, call, addrs, _resolve_conditions(cfg, families))
    return prev, _Work(cfg, prev, addrs, families, plans)


def add(call) -> Result:
    prev, work = _plan(call)
    if work is None:
        return prev
    cfg, addrs, families, plans = work.cfg, work.addrs, work.families, work.plans

    from plugins.net.nft import Nft
    nft = Nft()
    comment = pr.attachment_comment(cfg.network, call.args.container_id, call.args.ifname)

    def build() -> list[dict]:
        return pr.plan_add(plans, {p.family: nft.list_table(p.nft_family, pr.TABLE)
                                   for p in plans})

    _apply_retrying(nft, build)
    try:
        if cfg.snat and 4 in families and any(m.applies_to(4) and m.reachable_from_localhost
                                              for m in cfg.mappings):
            _enable_route_localnet(addrs[4], prev)
    except BaseException:
        quietly(_remove, nft, comment)()      # the original error is the one reported
        raise
    _flush_udp_conntrack(cfg, families)
    return prev


def _remove(nft, comment: str, families=(4, 6)) -> None:
    def build() -> list[dict]:
        cmds: list[dict] = []
        for fam in families:
            cmds += pr.delete_handles(fam, _our_rules(nft, fam, comment))
        return cmds
    _apply_retrying(nft, build)


def delete(call) -> None:
    parse_config(call.conf)
    from plugins.net.nft import Nft
    nft = Nft()
    _remove(nft, pr.attachment_comment(call.conf.name, call.args.container_id,
                                       call.args.ifname))


def check(call) -> None:
    _prev, work = _plan(call)
    if work is None:
        return None
    plans = work.plans
    from plugins.net.nft import Nft
    nft = Nft()
    problems: list[str] = []
    for p in plans:
        # Only the families the pod has addresses in are looked at: a node
        # without IPv6 NAT never needs (nor has) the ip6 table for a v4 pod.
        objs = nft.list_table(p.nft_family, pr.TABLE)
        if objs is None:
            problems.append(f"table {p.nft_family} {pr.TABLE} does not exist")
            continue
        problems += pr.entry_rules_ok(objs, p.family)
        live = [o["rule"] for o in objs if "rule" in o and o["rule"].get("comment") == p.comment]
        problems += [f"{p.nft_family}: {x}" for x in pr.compare(pr.attachment_rules(p), live)]
    if problems:
        raise CNIError(CHECK_FAILED, "portmap rules do not match the config", "; ".join(problems))
    return None


def gc(call) -> None:
    """Delete every rule of this network whose attachment is not listed as valid."""
    parse_config(call.conf)
    valid = {pr.attachment_comment(call.conf.name, cid, ifn)
             for cid, ifn in valid_attachments(call.conf.raw)}
    tag = pr.network_tag(call.conf.name)
    from plugins.net.nft import Nft
    nft = Nft()

    def build() -> list[dict]:
        cmds: list[dict] = []
        for fam in (4, 6):
            objs = nft.list_table(pr.FAMILIES[fam], pr.TABLE) or []
            stale = []
            for o in objs:
                r = o.get("rule")
                if not r:
                    continue
                parsed = pr.parse_comment(r.get("comment", ""))
                if parsed and parsed[0] == tag and r["comment"] not in valid:
                    stale.append(r)
            cmds += pr.delete_handles(fam, stale)
        return cmds

    _apply_retrying(nft, build)


def status(call) -> None:
    try:
        from plugins.net.nft import Nft
        Nft().list_table("ip", pr.TABLE)
    except CNIError as e:
        raise CNIError(NOT_AVAILABLE, "nftables is not usable on this node", str(e)) from None
    except (ImportError, OSError) as e:
        raise CNIError(NOT_AVAILABLE, "nftables is not usable on this node", str(e)) from None
