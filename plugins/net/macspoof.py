"""macspoofchk: drop frames a pod sends with a source MAC other than its own.

nftables, ``bridge`` family, table ``cnilab_macspoof`` of our own::

    chain prerouting { type filter hook prerouting priority -300; policy accept;
        iifname "veth0123456789a" ether saddr != 0a:58:0a:01:00:05 drop comment "<key> ..." }

One rule per attachment, its comment starting with the attachment key
(``masq.attachment_key``: network + container ID + ifname), so DEL and GC
remove it with no state. Plans are pure; apply runs in the node netns.
"""
from __future__ import annotations

from ..core.errors import CNIError, IO_FAILURE
from .masq import attachment_key, network_key
from .nft import base_if_needed, plan_delete

TYPE_CHECKING = False       # not from typing: importing it costs ~2 ms per plugin exec
if TYPE_CHECKING:
    from typing import Iterable

FAMILY = "bridge"
TABLE = "cnilab_macspoof"
CHAIN = "prerouting"
PRIORITY = -300
COMMENT_MAX = 127


def comment_for(network: str, container_id: str, ifname: str) -> str:
    text = (f"{attachment_key(network, container_id, ifname)} macspoofchk net={network} "
            f"if={ifname} id={container_id}").replace('"', "")
    return text[:COMMENT_MAX]


def plan_base() -> list[dict]:
    return [
        {"add": {"table": {"family": FAMILY, "name": TABLE}}},
        {"add": {"chain": {"family": FAMILY, "table": TABLE, "name": CHAIN, "type": "filter",
                           "hook": "prerouting", "prio": PRIORITY, "policy": "accept"}}},
    ]


def plan_rule(network: str, container_id: str, ifname: str, host_ifname: str, mac: str) -> dict:
    return {"add": {"rule": {
        "family": FAMILY, "table": TABLE, "chain": CHAIN,
        "comment": comment_for(network, container_id, ifname),
        "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": host_ifname}},
            {"match": {"op": "!=", "left": {"payload": {"protocol": "ether", "field": "saddr"}},
                       "right": mac.lower()}},
            {"drop": None},
        ]}}}


def select_rules(objects: list[dict] | None, prefix: str) -> list[dict]:
    return [o["rule"] for o in objects or []
            if "rule" in o and str(o["rule"].get("comment", "")).startswith(prefix)]


def _nft():
    from .nft import Nft
    return Nft()


def setup(network: str, container_id: str, ifname: str, host_ifname: str, mac: str) -> None:
    nft = _nft()
    key = attachment_key(network, container_id, ifname)
    last = None
    for _ in range(3):
        objects = nft.list_table(FAMILY, TABLE)
        err = nft.try_apply(base_if_needed(objects, plan_base())
                            + plan_delete(select_rules(objects, key))
                            + [plan_rule(network, container_id, ifname, host_ifname, mac)])
        if err is None:
            return
        last = err
    raise CNIError(IO_FAILURE, "installing the macspoofchk rule failed", last or "")


def rules_for(network: str, container_id: str, ifname: str) -> list[dict]:
    return select_rules(_nft().list_table(FAMILY, TABLE),
                        attachment_key(network, container_id, ifname))


def _delete(select) -> int:
    return _nft().delete_selected(FAMILY, TABLE, select, "macspoofchk rules")


def teardown(network: str, container_id: str, ifname: str) -> int:
    key = attachment_key(network, container_id, ifname)
    return _delete(lambda objs: select_rules(objs, key))


def gc(network: str, valid: Iterable[tuple[str, str]]) -> int:
    keep = {attachment_key(network, cid, ifn) for cid, ifn in valid}
    prefix = network_key(network) + "-"
    return _delete(lambda objs: [r for r in select_rules(objs, prefix)
                                 if str(r.get("comment", "")).split(" ", 1)[0] not in keep])
