"""Pure rule planning for the portmap plugin: nftables JSON commands as data.

Nothing here touches the system. ``plan_add`` returns the commands of one
atomic transaction; ``expected_rules`` is what CHECK compares the live table
with; ``attachment_comment`` / ``parse_comment`` are the keys DEL and GC use.

Layout (one table per address family, ``ip`` and ``ip6``, both named
``cnilab-portmap``)::

    prerouting  nat hook prerouting prio dstnat : fib daddr type local jump hostports
    output      nat hook output     prio dstnat : fib daddr type local jump hostports
    hostports   per attachment: [mark rules for hairpin/localhost] + dnat rules
    postrouting nat hook postrouting prio srcnat: per attachment: mark & B == B, daddr P -> masquerade

The two entry chains hold one fixed rule each; every transaction re-creates
them with add (idempotent) + flush + add, so parallel ADDs of many
containers serialise inside the kernel's nftables commit and never race.
Per-attachment rules carry a comment naming (network, container id, ifname).
"""
from __future__ import annotations

import ipaddress

from ..core.names import sha256_hex
from ..core.record import field, record
from .nft import base_if_needed, canon as _canon, match as _match

TYPE_CHECKING = False       # not from typing: importing it costs ~2 ms per plugin exec
if TYPE_CHECKING:
    from typing import Any, Iterable

TABLE = "cnilab-portmap"
FAMILIES = {4: "ip", 6: "ip6"}
CH_PREROUTING = "prerouting"
CH_OUTPUT = "output"
CH_HOSTPORTS = "hostports"
CH_POSTROUTING = "postrouting"
PRIO_DSTNAT = -100
PRIO_SRCNAT = 100
PROTOCOLS = ("tcp", "udp", "sctp")
DEFAULT_MARK_BIT = 13

_MAX_NET_IN_CLEAR = 32
_MAX_ID_IN_CLEAR = 64


@record(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    def applies_to(self, family: int) -> bool:
        """A mapping with a hostIP only applies to that address's family."""
        if not self.host_ip:
            return True
        return ipaddress.ip_address(self.host_ip).version == family

    @property
    def host_ip_specific(self) -> bool:
        """True when the mapping matches one destination address (not 0.0.0.0/::)."""
        return bool(self.host_ip) and not ipaddress.ip_address(self.host_ip).is_unspecified

    @property
    def reachable_from_localhost(self) -> bool:
        if not self.host_ip_specific:
            return True
        return ipaddress.ip_address(self.host_ip).is_loopback


@record
class PortMapPlan:
    """Everything the planner needs for one attachment and one address family."""
    network: str
    container_id: str
    ifname: str
    family: int                        # 4 or 6
    pod_ip: str                        # plain address, no prefix
    mappings: list[PortMapping]
    snat: bool = True
    masq_all: bool = False
    mark_bit: int = DEFAULT_MARK_BIT
    conditions: list[dict] = field(default_factory=list)   # JSON match expressions

    @property
    def nft_family(self) -> str:
        return FAMILIES[self.family]

    @property
    def comment(self) -> str:
        return attachment_comment(self.network, self.container_id, self.ifname)


# ---- keys -------------------------------------------------------------------

def _part(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    return "#" + sha256_hex(value)[:24]


def network_tag(network: str) -> str:
    return "n:" + _part(network, _MAX_NET_IN_CLEAR)


def attachment_comment(network: str, container_id: str, ifname: str) -> str:
    """The comment every rule of one attachment carries (<= 120 chars, deterministic).

    Long network names and container IDs are replaced by a hash of themselves,
    so the comment stays under nftables' 128-byte limit and is still exact.
    """
    return f"{network_tag(network)} c:{_part(container_id, _MAX_ID_IN_CLEAR)} i:{ifname}"


def parse_comment(comment: str) -> tuple[str, str, str] | None:
    """(network tag, container part, ifname) of one of our comments, else None."""
    parts = comment.split(" ")
    if len(parts) != 3 or not (parts[0].startswith("n:") and parts[1].startswith("c:")
                               and parts[2].startswith("i:")):
        return None
    return parts[0], parts[1][2:], parts[2][2:]


# ---- expressions ------------------------------------------------------------

def _payload(proto: str, fld: str) -> dict:
    return {"payload": {"protocol": proto, "field": fld}}


def _addr(value: str) -> Any:
    """An address or a prefix, in the form nftables lists it back."""
    net = ipaddress.ip_network(value, strict=False)
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def fib_local() -> dict:
    return _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")


def mark_set(bit: int) -> dict:
    return {"mangle": {"key": {"meta": {"key": "mark"}},
                       "value": {"|": [{"meta": {"key": "mark"}}, 1 << bit]}}}


def mark_is_set(bit: int) -> dict:
    return _match({"&": [{"meta": {"key": "mark"}}, 1 << bit]}, 1 << bit)


# ---- rules ------------------------------------------------------------------

def _rule(fam: str, chain: str, expr: list[dict], comment: str | None = None) -> dict:
    r: dict[str, Any] = {"family": fam, "table": TABLE, "chain": chain, "expr": expr}
    if comment is not None:
        r["comment"] = comment
    return r


def attachment_rules(p: PortMapPlan) -> list[dict]:
    """The per-attachment rules (rule objects, in order) for one family."""
    fam, ipx = p.nft_family, p.nft_family
    out: list[dict] = []
    for m in p.mappings:
        if not m.applies_to(p.family):
            continue
        base = list(p.conditions)
        if m.host_ip_specific:
            base.append(_match(_payload(ipx, "daddr"), _addr(m.host_ip)))
        base.append(_match(_payload(m.protocol, "dport"), m.host_port))
        if p.snat:
            if p.masq_all:
                out.append(_rule(fam, CH_HOSTPORTS, base + [mark_set(p.mark_bit)], p.comment))
            else:
                # hairpin: the pod reaching itself through the host port
                out.append(_rule(fam, CH_HOSTPORTS,
                                 base + [_match(_payload(ipx, "saddr"), _addr(p.pod_ip)),
                                         mark_set(p.mark_bit)], p.comment))
                # IPv4 only: the kernel never routes ::1 off the loopback device
                # (there is no route_localnet for IPv6), so a ::1 rule could never match
                if p.family == 4 and m.reachable_from_localhost:
                    out.append(_rule(fam, CH_HOSTPORTS,
                                     base + [_match(_payload(ipx, "saddr"),
                                                    _addr("127.0.0.0/8")),
                                             mark_set(p.mark_bit)], p.comment))
        out.append(_rule(fam, CH_HOSTPORTS,
                         base + [{"dnat": {"addr": p.pod_ip, "port": m.container_port}}],
                         p.comment))
    if p.snat and out:
        out.append(_rule(fam, CH_POSTROUTING,
                         [mark_is_set(p.mark_bit),
                          _match(_payload(ipx, "daddr"), _addr(p.pod_ip)),
                          {"masquerade": None}], p.comment))
    return out


def base_commands(family: int) -> list[dict]:
    """Idempotent creation of the shared table and chains, with their entry rules.

    ``add`` of an existing table/chain is a no-op; the entry chains are flushed
    and refilled inside the same transaction, so they always hold exactly one
    rule however many transactions run at once.
    """
    fam = FAMILIES[family]
    t = {"family": fam, "table": TABLE}
    cmds: list[dict] = [
        {"add": {"table": {"family": fam, "name": TABLE}}},
        {"add": {"chain": dict(t, name=CH_HOSTPORTS)}},
        {"add": {"chain": dict(t, name=CH_PREROUTING, type="nat", hook="prerouting",
                               prio=PRIO_DSTNAT, policy="accept")}},
        {"add": {"chain": dict(t, name=CH_OUTPUT, type="nat", hook="output",
                               prio=PRIO_DSTNAT, policy="accept")}},
        {"add": {"chain": dict(t, name=CH_POSTROUTING, type="nat", hook="postrouting",
                               prio=PRIO_SRCNAT, policy="accept")}},
    ]
    for ch in (CH_PREROUTING, CH_OUTPUT):
        cmds.append({"flush": {"chain": dict(t, name=ch)}})
        cmds.append({"add": {"rule": _rule(fam, ch, entry_rule_expr())}})
    return cmds


def entry_rule_expr() -> list[dict]:
    return [fib_local(), {"jump": {"target": CH_HOSTPORTS}}]


def delete_handles(family: int, rules: Iterable[dict]) -> list[dict]:
    fam = FAMILIES[family]
    return [{"delete": {"rule": {"family": fam, "table": TABLE, "chain": r["chain"],
                                 "handle": r["handle"]}}} for r in rules]


def plan_add(plans: list[PortMapPlan], listed: dict[int, list[dict] | None]) -> list[dict]:
    """One transaction: the shared structure (unless ``listed``, the family's
    table listing, shows it in place: ``nft.base_in_place``), removal of this
    attachment's old rules (from a previous ADD, found by comment in the
    listing), then the new rules."""
    cmds: list[dict] = []
    for p in plans:
        objects = listed.get(p.family)
        cmds += base_if_needed(objects, base_commands(p.family))
        cmds += delete_handles(p.family, rules_commented(objects, p.comment))
        cmds += [{"add": {"rule": r}} for r in attachment_rules(p)]
    return cmds


def rules_commented(objects: list[dict] | None, comment: str) -> list[dict]:
    """The listed rules carrying ``comment`` (one attachment's)."""
    return [o["rule"] for o in objects or [] if "rule" in o and o["rule"].get("comment") == comment]


# ---- comparing with live rules -----------------------------------------------

def strip_rule(rule: dict) -> tuple[str, tuple]:
    """(chain, expr) of a listed or planned rule, for comparison (counters ignored)."""
    expr = tuple(_canon(e) for e in rule.get("expr", []) if "counter" not in e)
    return rule["chain"], expr


def compare(expected: list[dict], live: list[dict]) -> list[str]:
    """Human-readable differences between planned and live per-attachment rules."""
    want = [strip_rule(r) for r in expected]
    have = [strip_rule(r) for r in live]
    problems = []
    missing = [w for w in want if w not in have]
    extra = [h for h in have if h not in want]
    if missing:
        problems.append(f"{len(missing)} rule(s) missing (first in chain {missing[0][0]})")
    if extra:
        problems.append(f"{len(extra)} unexpected rule(s) (first in chain {extra[0][0]})")
    if not missing and not extra and want != have:
        problems.append("rules are out of order")
    return problems


def entry_rules_ok(objects: list[dict], family: int) -> list[str]:
    """The shared entry chains exist and jump to hostports for local destinations."""
    want = _canon(entry_rule_expr())
    problems = []
    for ch in (CH_PREROUTING, CH_OUTPUT):
        rules = [o["rule"] for o in objects if "rule" in o and o["rule"]["chain"] == ch]
        if not any(_canon([e for e in r.get("expr", []) if "counter" not in e]) == want
                   for r in rules):
            problems.append(f"{FAMILIES[family]} {TABLE} chain {ch} has no entry rule")
    return problems
