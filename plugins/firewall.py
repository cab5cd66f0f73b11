"""firewall: let a pod's traffic through the node's forward path, on nftables.

A chained plugin (after a main plugin such as bridge). For every address of
prevResult it accepts forwarded traffic from the pod and return traffic to
it; ``ingressPolicy`` "same-bridge" drops traffic between the bridge of
prevResult (its first interface) and other isolated bridges, "isolated"
also between the bridge's own ports. The rules live in ``inet
cnilab-firewall`` (layout in plugins/net/firewall_rules.py; why a table of
our own and what that means next to other tables: docs/adr/0015).

Config keys (the reference's): ``backend`` ("" or "iptables": both mean our
nftables table, "firewalld" is refused), ``iptablesAdminChainName`` (default
CNI-ADMIN: a chain of our table evaluated before the accepts, for the node
administrator's own rules), ``firewalldZone`` (accepted, meaningless without
firewalld), ``ingressPolicy`` ("open", "same-bridge", "isolated").
"""
from __future__ import annotations

import sys

from .core.config import Fields, require_prev_result
from .core.errors import CHECK_FAILED, CNIError, INVALID_NETWORK_CONFIG, NOT_AVAILABLE
from .core.record import record
from .core.types import Result
from .net import firewall_rules as fr

BACKENDS = ("", "iptables", "nftables")
_ADMIN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
MAX_ADMIN_CHAIN = 28        # iptables' limit, which configs written for the reference obey


@record
class FirewallConf:
    network: str
    backend: str = ""
    admin_chain: str = fr.DEFAULT_ADMIN_CHAIN
    ingress_policy: str = "open"


def parse_config(conf) -> FirewallConf:
    """The typed config; code 7 before anything is touched."""
    f = Fields(conf.raw)
    backend = f.str("backend")
    if backend == "firewalld":
        raise CNIError(INVALID_NETWORK_CONFIG, "backend \"firewalld\" is not supported",
                       "this firewall plugin keeps its rules in the nftables table inet "
                       f"{fr.TABLE} and never talks to firewalld; use backend \"\" or "
                       "\"iptables\" (both mean that table), and give the pods' traffic a "
                       "firewalld zone yourself if firewalld filters this node")
    if backend not in BACKENDS:
        raise CNIError(INVALID_NETWORK_CONFIG, "backend must be \"\", \"iptables\" or "
                       "\"nftables\"", f"got {backend[:50]!r}")
    admin = f.str("iptablesAdminChainName") or fr.DEFAULT_ADMIN_CHAIN
    if len(admin) > MAX_ADMIN_CHAIN or not set(admin) <= _ADMIN_CHARS \
            or admin in fr.FIXED_CHAINS or admin[0] in "-.":
        raise CNIError(INVALID_NETWORK_CONFIG,
                       f"iptablesAdminChainName must be 1-{MAX_ADMIN_CHAIN} letters, digits, "
                       "'_', '-' or '.' (not starting with '-' or '.') and not one of "
                       f"{', '.join(fr.FIXED_CHAINS)}", f"got {admin[:60]!r}")
    policy = f.str("ingressPolicy") or "open"
    if policy not in fr.POLICIES:
        raise CNIError(INVALID_NETWORK_CONFIG, "ingressPolicy must be \"open\", "
                       "\"same-bridge\" or \"isolated\"", f"got {policy[:50]!r}")
    f.str("firewalldZone")          # type-checked; no firewalld, so no zone to put pods in
    return FirewallConf(network=conf.name, backend=backend, admin_chain=admin,
                        ingress_policy=policy)


def build_plan(c: FirewallConf, call, prev: Result) -> fr.FirewallPlan:
    """The per-attachment plan from prevResult; code 7 when isolation has no bridge."""
    bridge = ""
    if c.ingress_policy != "open":
        bridge = prev.interfaces[0].name if prev.interfaces else ""
        if not bridge:
            raise CNIError(INVALID_NETWORK_CONFIG,
                           f"ingressPolicy {c.ingress_policy!r} needs the bridge as the first "
                           "interface of prevResult", "chain firewall after the bridge plugin")
    addrs: list[str] = []
    for ip in prev.ips:
        a = str(ip.iface.ip)
        if a not in addrs:
            addrs.append(a)
    return fr.FirewallPlan(network=c.network, container_id=call.args.container_id,
                           ifname=call.args.ifname, addresses=addrs,
                           ingress_policy=c.ingress_policy, bridge=bridge,
                           admin_chain=c.admin_chain)


def _nft():
    from .net.nft import Nft
    return Nft()


def _ours(objects, comment: str) -> list[dict]:
    from .net.nft import rules_with_comment
    return rules_with_comment(objects, lambda c: c == comment)


def _note_backend(c: FirewallConf) -> None:
    if c.backend == "iptables":
        # not silent: the rules are not where an iptables user would look
        print(f"firewall: backend \"iptables\" requested; the rules are nftables rules in "
              f"table inet {fr.TABLE}", file=sys.stderr)


# ---- handlers -------------------------------------------------------------------

def add(call) -> Result:
    c = parse_config(call.conf)
    prev = require_prev_result(call.conf, "firewall")
    plan = build_plan(c, call, prev)
    _note_backend(c)
    from .net.nft import apply_rebuilding
    nft = _nft()

    def build() -> list[dict]:
        objects = nft.list_table(fr.FAMILY, fr.TABLE)
        return fr.plan_add(plan, objects, _ours(objects, plan.comment))

    # one transaction: it either lands whole or leaves the table as it was
    apply_rebuilding(nft, build, "nftables transaction for the firewall rules")
    return prev


def _remove(nft, select) -> None:
    """Delete the rules whose comment ``select`` picks, in one transaction."""
    from .net.nft import apply_rebuilding, rules_with_comment

    def build() -> list[dict]:
        return fr.delete_handles(rules_with_comment(nft.list_table(fr.FAMILY, fr.TABLE), select))

    apply_rebuilding(nft, build, "removing firewall rules")


def delete(call) -> None:
    """Remove this attachment's rules; needs neither prevResult nor the netns."""
    parse_config(call.conf)
    comment = fr.attachment_comment(call.conf.name, call.args.container_id, call.args.ifname)
    _remove(_nft(), lambda cm: cm == comment)


def check(call) -> None:
    c = parse_config(call.conf)
    prev = require_prev_result(call.conf, "firewall")
    plan = build_plan(c, call, prev)
    objects = _nft().list_table(fr.FAMILY, fr.TABLE)
    if objects is None:
        raise CNIError(CHECK_FAILED, f"table {fr.FAMILY} {fr.TABLE} does not exist")
    from .net.portmap_rules import compare
    problems = fr.structure_problems(objects, c.admin_chain)
    problems += compare(fr.attachment_rules(plan), _ours(objects, plan.comment))
    if problems:
        raise CNIError(CHECK_FAILED, "firewall rules do not match the config",
                       "; ".join(problems))


def gc(call) -> None:
    """Remove the rules of this network's attachments that are not listed as valid."""
    parse_config(call.conf)
    from .core.config import valid_attachments
    from .net.portmap_rules import network_tag, parse_comment
    valid = {fr.attachment_comment(call.conf.name, cid, ifn)
             for cid, ifn in valid_attachments(call.conf.raw)}
    tag = network_tag(call.conf.name)

    def stale(comment: str) -> bool:
        parsed = parse_comment(comment)
        return parsed is not None and parsed[0] == tag and comment not in valid

    _remove(_nft(), stale)


def status(call) -> None:
    parse_config(call.conf)
    try:
        _nft().list_table(fr.FAMILY, fr.TABLE)
    except (CNIError, ImportError, OSError) as e:
        raise CNIError(NOT_AVAILABLE, "nftables is not usable on this node", str(e)) from None
