"""ipMasq on nftables, in a table of our own, keyed per attachment.

Layout (family ``inet``, table ``cnilab_masq``)::

    chain postrouting { type nat hook postrouting priority srcnat; policy accept;
        ip daddr 224.0.0.0/4 return          # multicast is never masqueraded
        ip6 daddr ff00::/8 return
        jump masq }
    chain masq {
        ip saddr 10.1.0.5 ip daddr != 10.1.0.0/24 masquerade comment "<key> ..."
        ... one rule per pod address ... }

Every per-attachment rule's comment starts with ``attachment_key(network,
container_id, ifname)`` = ``<16 hex of the network>-<16 hex of (id, ifname)>``,
so DEL removes the attachment's rules without its netns or addresses, and GC
removes every rule of a network whose attachment is not in the valid list.

Planning functions (``plan_*``) are pure and return libnftables JSON commands;
``setup``/``teardown``/``gc``/``rules_for`` apply them in the calling thread's
netns (the node). Shared by the bridge and vxlan plugins.
"""
from __future__ import annotations

import ipaddress

from ..core.errors import CNIError, IO_FAILURE
from ..core.names import sha256_hex
from .nft import base_if_needed, plan_delete

TYPE_CHECKING = False       # not from typing: importing it costs ~2 ms per plugin exec
if TYPE_CHECKING:
    from typing import Iterable

FAMILY = "inet"
TABLE = "cnilab_masq"
POSTROUTING = "postrouting"
CHAIN = "masq"
COMMENT_MAX = 127          # nftables allows 128 bytes including the NUL
SRCNAT_PRIORITY = 100


def _h16(text: str) -> str:
    return sha256_hex(text)[:16]


def network_key(network: str) -> str:
    return _h16(network)


def attachment_key(network: str, container_id: str, ifname: str) -> str:
    return f"{network_key(network)}-{_h16(container_id + chr(0) + ifname)}"


def comment_for(network: str, container_id: str, ifname: str) -> str:
    text = (f"{attachment_key(network, container_id, ifname)} net={network} "
            f"if={ifname} id={container_id}").replace('"', "")
    return text[:COMMENT_MAX]


# ---- pure planning -------------------------------------------------------------

def _table() -> dict:
    return {"family": FAMILY, "name": TABLE}


def _chain(name: str, **extra) -> dict:
    return {"family": FAMILY, "table": TABLE, "name": name, **extra}


def _rule(chain: str, expr: list, comment: str = "") -> dict:
    r = {"family": FAMILY, "table": TABLE, "chain": chain, "expr": expr}
    if comment:
        r["comment"] = comment
    return r


def _match(proto: str, field: str, op: str, right) -> dict:
    return {"match": {"op": op, "left": {"payload": {"protocol": proto, "field": field}},
                      "right": right}}


def _prefix(net) -> dict:
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def plan_base() -> list[dict]:
    """Table + chains; the postrouting chain is flushed and rewritten (idempotent, atomic)."""
    return [
        {"add": {"table": _table()}},
        {"add": {"chain": _chain(POSTROUTING, type="nat", hook="postrouting",
                                 prio=SRCNAT_PRIORITY, policy="accept")}},
        {"add": {"chain": _chain(CHAIN)}},
        {"flush": {"chain": _chain(POSTROUTING)}},
        {"add": {"rule": _rule(POSTROUTING, [
            _match("ip", "daddr", "==", _prefix(ipaddress.ip_network("224.0.0.0/4"))),
            {"return": None}])}},
        {"add": {"rule": _rule(POSTROUTING, [
            _match("ip6", "daddr", "==", _prefix(ipaddress.ip_network("ff00::/8"))),
            {"return": None}])}},
        {"add": {"rule": _rule(POSTROUTING, [{"jump": {"target": CHAIN}}])}},
    ]


def plan_rules(network: str, container_id: str, ifname: str, cidrs: Iterable[str]) -> list[dict]:
    """One masquerade rule per pod address: from it, to anything outside its subnet."""
    comment = comment_for(network, container_id, ifname)
    out = []
    for cidr in cidrs:
        ifc = ipaddress.ip_interface(cidr)
        proto = "ip" if ifc.version == 4 else "ip6"
        out.append({"add": {"rule": _rule(CHAIN, [
            _match(proto, "saddr", "==", str(ifc.ip)),
            _match(proto, "daddr", "!=", _prefix(ifc.network)),
            {"masquerade": None}], comment)}})
    return out


def select_rules(objects: list[dict] | None, prefix: str) -> list[dict]:
    """Rules of our masq chain whose comment starts with ``prefix``."""
    out = []
    for o in objects or []:
        r = o.get("rule")
        if r and r.get("chain") == CHAIN and str(r.get("comment", "")).startswith(prefix):
            out.append(r)
    return out


def select_stale(objects: list[dict] | None, network: str,
                 valid: Iterable[tuple[str, str]]) -> list[dict]:
    """GC: rules of ``network`` whose (container id, ifname) is not in ``valid``."""
    keep = {attachment_key(network, cid, ifn) for cid, ifn in valid}
    return [r for r in select_rules(objects, network_key(network) + "-")
            if str(r.get("comment", "")).split(" ", 1)[0] not in keep]


# ---- apply (node netns of the calling thread) ------------------------------------

def _nft():
    from .nft import Nft
    return Nft()


def setup(network: str, container_id: str, ifname: str, cidrs: Iterable[str]) -> None:
    """Install (or replace) the attachment's masquerade rules in one transaction."""
    cidrs = list(cidrs)
    nft = _nft()
    key = attachment_key(network, container_id, ifname)
    last = None
    for _ in range(3):     # a parallel change may delete a stale rule's handle under us
        objects = nft.list_table(FAMILY, TABLE)
        err = nft.try_apply(base_if_needed(objects, plan_base())
                            + plan_delete(select_rules(objects, key))
                            + plan_rules(network, container_id, ifname, cidrs))
        if err is None:
            return
        last = err
    raise CNIError(IO_FAILURE, "installing masquerade rules failed", last or "")


def rules_for(network: str, container_id: str | None = None, ifname: str | None = None) -> list[dict]:
    nft = _nft()
    prefix = (attachment_key(network, container_id, ifname or "") if container_id is not None
              else network_key(network) + "-")
    return select_rules(nft.list_table(FAMILY, TABLE), prefix)


def _delete_selected(select) -> int:
    return _nft().delete_selected(FAMILY, TABLE, select, "masquerade rules")


def teardown(network: str, container_id: str, ifname: str) -> int:
    """Remove the attachment's rules (none is fine); returns how many were removed."""
    key = attachment_key(network, container_id, ifname)
    return _delete_selected(lambda objs: select_rules(objs, key))


def gc(network: str, valid: Iterable[tuple[str, str]]) -> int:
    """Remove the rules of ``network`` for attachments not in ``valid``."""
    valid = list(valid)
    return _delete_selected(lambda objs: select_stale(objs, network, valid))
