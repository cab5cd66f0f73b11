"""Pure rule planning for the firewall plugin: nftables JSON commands as data.

One table, ``inet cnilab-firewall`` (IPv4 and IPv6 together)::

    forward            filter hook forward prio filter, policy accept:
                       jump isolation-stage-1 ; jump pods          (fixed, refilled)
    isolation-stage-1  per attachment with ingressPolicy same-bridge/isolated:
                       iifname B oifname != B jump isolation-stage-2
                       [isolated] iifname B oifname B drop
    isolation-stage-2  per attachment: oifname B drop
    pods               jump <admin chain> (one per admin chain name, first)
                       per attachment and address X:
                       ip[6] daddr X ct state established,related accept
                       ip[6] saddr X accept
    <admin chain>      empty, the node administrator's (default CNI-ADMIN);
                       created, never flushed nor deleted by us

This mirrors the reference's iptables layout (FORWARD -> CNI-FORWARD with
CNI-ADMIN first; CNI-ISOLATION-STAGE-1/2 before it) in a table of our own.
Per-attachment rules carry the attachment comment (network, container ID,
ifname) that DEL and GC select on, so neither needs prevResult or the netns.
Isolation rules are per attachment too (duplicates for one bridge are
harmless): they go away with the last attachment that asked for them, where
the reference leaves its per-bridge rules behind forever.
"""
from __future__ import annotations

import ipaddress

from ..core.record import record
from .nft import base_if_needed, canon as _canon, match as _match
from .portmap_rules import attachment_comment

TYPE_CHECKING = False       # not from typing: importing it costs ~2 ms per plugin exec
if TYPE_CHECKING:
    from typing import Any

TABLE = "cnilab-firewall"
FAMILY = "inet"
CH_FORWARD = "forward"
CH_STAGE1 = "isolation-stage-1"
CH_STAGE2 = "isolation-stage-2"
CH_PODS = "pods"
FIXED_CHAINS = (CH_FORWARD, CH_STAGE1, CH_STAGE2, CH_PODS)
DEFAULT_ADMIN_CHAIN = "CNI-ADMIN"
POLICIES = ("open", "same-bridge", "isolated")


@record
class FirewallPlan:
    network: str
    container_id: str
    ifname: str
    addresses: list[str]               # plain addresses (no prefix), v4 and v6
    ingress_policy: str = "open"
    bridge: str = ""                   # prevResult.interfaces[0] for the isolation rules
    admin_chain: str = DEFAULT_ADMIN_CHAIN

    @property
    def comment(self) -> str:
        return attachment_comment(self.network, self.container_id, self.ifname)


def _meta(key: str) -> dict:
    return {"meta": {"key": key}}


def _rule(chain: str, expr: list[dict], comment: str | None = None) -> dict:
    r: dict[str, Any] = {"family": FAMILY, "table": TABLE, "chain": chain, "expr": expr}
    if comment is not None:
        r["comment"] = comment
    return r


def _proto(addr: str) -> str:
    return "ip6" if ipaddress.ip_address(addr).version == 6 else "ip"


def attachment_rules(p: FirewallPlan) -> list[dict]:
    """Every per-attachment rule, in order (what ADD adds and CHECK expects)."""
    out: list[dict] = []
    if p.ingress_policy in ("same-bridge", "isolated") and p.bridge:
        b = p.bridge
        out.append(_rule(CH_STAGE1, [_match(_meta("iifname"), b),
                                     _match(_meta("oifname"), b, "!="),
                                     {"jump": {"target": CH_STAGE2}}], p.comment))
        if p.ingress_policy == "isolated":
            out.append(_rule(CH_STAGE1, [_match(_meta("iifname"), b),
                                         _match(_meta("oifname"), b), {"drop": None}],
                             p.comment))
        out.append(_rule(CH_STAGE2, [_match(_meta("oifname"), b), {"drop": None}], p.comment))
    for a in p.addresses:
        proto = _proto(a)
        out.append(_rule(CH_PODS, [
            _match({"payload": {"protocol": proto, "field": "daddr"}}, a),
            _match({"ct": {"key": "state"}}, ["established", "related"], "in"),
            {"accept": None}], p.comment))
        out.append(_rule(CH_PODS, [
            _match({"payload": {"protocol": proto, "field": "saddr"}}, a),
            {"accept": None}], p.comment))
    return out


def forward_entry_rules() -> list[dict]:
    return [_rule(CH_FORWARD, [{"jump": {"target": CH_STAGE1}}]),
            _rule(CH_FORWARD, [{"jump": {"target": CH_PODS}}])]


def admin_jump(admin_chain: str) -> dict:
    # shared structure: no comment (comments name attachments, for DEL and GC)
    return _rule(CH_PODS, [{"jump": {"target": admin_chain}}])


def base_commands(admin_chain: str, admin_jumps: list[dict]) -> list[dict]:
    """Idempotent creation of the table, its chains and the fixed jumps.

    ``add`` of an existing table or chain changes nothing; the forward chain is
    flushed and refilled in the same transaction, so however many ADDs run at
    once it always holds exactly its two jumps. The admin jump is inserted at
    the head of ``pods`` when the listing (``admin_jumps``: the live jumps to
    the admin chain) showed none; two first ADDs racing may both insert one,
    and the next ADD deletes the extra (a repeated jump is harmless meanwhile).
    """
    t = {"family": FAMILY, "table": TABLE}
    cmds: list[dict] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    for ch in (CH_STAGE1, CH_STAGE2, CH_PODS, admin_chain):
        cmds.append({"add": {"chain": dict(t, name=ch)}})
    cmds.append({"add": {"chain": dict(t, name=CH_FORWARD, type="filter", hook="forward",
                                       prio=0, policy="accept")}})
    cmds.append({"flush": {"chain": dict(t, name=CH_FORWARD)}})
    cmds += [{"add": {"rule": r}} for r in forward_entry_rules()]
    if not admin_jumps:
        cmds.append({"insert": {"rule": admin_jump(admin_chain)}})
    cmds += delete_handles(admin_jumps[1:])
    return cmds


def admin_jumps(objects: list[dict] | None, admin_chain: str) -> list[dict]:
    """The live rules of ``pods`` that jump to the admin chain, in chain order."""
    want = _canon(admin_jump(admin_chain)["expr"])
    return [o["rule"] for o in objects or []
            if "rule" in o and o["rule"].get("chain") == CH_PODS
            and _canon(_strip(o["rule"])) == want]


def has_admin_jump(objects: list[dict] | None, admin_chain: str) -> bool:
    return bool(admin_jumps(objects, admin_chain))


def _strip(rule: dict) -> list:
    return [e for e in rule.get("expr", []) if "counter" not in e]


def plan_add(p: FirewallPlan, objects: list[dict] | None, stale: list[dict]) -> list[dict]:
    """One transaction: the shared structure (unless the listing shows it in place:
    ``nft.base_in_place``), removal of this attachment's rules from an earlier
    ADD (``stale``, listed), then its rules."""
    cmds = base_if_needed(objects, base_commands(p.admin_chain, admin_jumps(objects, p.admin_chain)))
    cmds += delete_handles(stale)
    cmds += [{"add": {"rule": r}} for r in attachment_rules(p)]
    return cmds


def delete_handles(rules) -> list[dict]:
    return [{"delete": {"rule": {"family": FAMILY, "table": TABLE, "chain": r["chain"],
                                 "handle": r["handle"]}}} for r in rules]


def structure_problems(objects: list[dict], admin_chain: str) -> list[str]:
    """What CHECK requires of the shared part: the chains, the forward chain's
    two jumps in order, and a jump to the admin chain in ``pods``."""
    problems = []
    chains = {o["chain"]["name"]: o["chain"] for o in objects if "chain" in o}
    for ch in FIXED_CHAINS + (admin_chain,):
        if ch not in chains:
            problems.append(f"chain {ch} is missing")
    fwd = chains.get(CH_FORWARD)
    if fwd is not None and (fwd.get("hook") != "forward" or fwd.get("type") != "filter"):
        problems.append(f"chain {CH_FORWARD} is not a filter chain on the forward hook")
    live = [_canon(_strip(o["rule"])) for o in objects
            if "rule" in o and o["rule"]["chain"] == CH_FORWARD]
    if live != [_canon(r["expr"]) for r in forward_entry_rules()]:
        problems.append(f"chain {CH_FORWARD} does not hold exactly the jumps to {CH_STAGE1} "
                        f"and {CH_PODS}")
    if not has_admin_jump(objects, admin_chain):
        problems.append(f"chain {CH_PODS} has no jump to the admin chain {admin_chain}")
    return problems
