"""firewall without root: config validation and the nftables plan as data."""
from __future__ import annotations

import json

import pytest

from plugins import firewall
from plugins.core.config import parse_netconf
from plugins.core.errors import CNIError
from plugins.core.skel import Call, CmdArgs, dispatch
from plugins.net import firewall_rules as fr

PREV = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "cni-podman1"}, {"name": "veth1"},
                       {"name": "eth0", "sandbox": "/x"}],
        "ips": [{"address": "10.89.0.5/24", "interface": 2},
                {"address": "fd89::5/64", "interface": 2}]}


def netconf(**extra):
    return parse_netconf({"cniVersion": "0.4.0", "name": "net1", "type": "firewall", **extra})


def call(**extra):
    conf = netconf(prevResult=PREV, **extra)
    return Call(CmdArgs("ADD", container_id="cid1", netns="/x", ifname="eth0"), conf)


def plan(**extra):
    c = call(**extra)
    return firewall.build_plan(firewall.parse_config(c.conf), c, c.conf.prev_result)


def text(rule):
    return json.dumps(rule["expr"])


# ---- config ------------------------------------------------------------------------

def test_defaults_match_the_reference():
    c = firewall.parse_config(netconf())
    assert (c.backend, c.admin_chain, c.ingress_policy) == ("", "CNI-ADMIN", "open")


@pytest.mark.parametrize("backend", ["", "iptables", "nftables"])
def test_backends_that_mean_our_table(backend):
    assert firewall.parse_config(netconf(backend=backend)).backend == backend


@pytest.mark.parametrize("extra, mention", [
    ({"backend": "firewalld"}, "firewalld"),
    ({"backend": "pf"}, "backend"),
    ({"backend": 1}, "backend"),
    ({"ingressPolicy": "closed"}, "ingressPolicy"),
    ({"ingressPolicy": True}, "ingressPolicy"),
    ({"iptablesAdminChainName": "has space"}, "iptablesAdminChainName"),
    ({"iptablesAdminChainName": "x" * 29}, "iptablesAdminChainName"),
    ({"iptablesAdminChainName": "pods"}, "iptablesAdminChainName"),
    ({"iptablesAdminChainName": "-x"}, "iptablesAdminChainName"),
    ({"firewalldZone": 5}, "firewalldZone"),
])
def test_bad_fields_are_code_7(extra, mention):
    with pytest.raises(CNIError) as e:
        firewall.parse_config(netconf(**extra))
    assert e.value.code == 7 and mention in e.value.msg + e.value.details


def test_the_isolated_policy_is_named_in_the_error():
    with pytest.raises(CNIError) as e:
        firewall.parse_config(netconf(ingressPolicy="none"))
    assert all(p in e.value.msg for p in ("open", "same-bridge", "isolated"))


def test_isolation_needs_a_bridge_in_prev_result():
    c = Call(CmdArgs("ADD", container_id="c", netns="/x", ifname="eth0"),
             netconf(ingressPolicy="same-bridge",
                     prevResult={"cniVersion": "0.4.0", "ips": [
                         {"version": "4", "address": "10.1.0.2/24"}]}))
    with pytest.raises(CNIError) as e:
        firewall.build_plan(firewall.parse_config(c.conf), c, c.conf.prev_result)
    assert e.value.code == 7 and "bridge" in e.value.msg
    # "open" needs no interface at all
    c2 = Call(c.args, netconf(prevResult=c.conf.raw["prevResult"]))
    p = firewall.build_plan(firewall.parse_config(c2.conf), c2, c2.conf.prev_result)
    assert p.addresses == ["10.1.0.2"] and p.bridge == ""


# ---- the plan ----------------------------------------------------------------------------

def test_open_policy_accepts_both_families_only_in_pods():
    rules = fr.attachment_rules(plan())
    assert [r["chain"] for r in rules] == ["pods"] * 4
    assert all(r["comment"] == "n:net1 c:cid1 i:eth0" for r in rules)
    assert '"protocol": "ip", "field": "daddr"}}, "right": "10.89.0.5"' in text(rules[0])
    assert '"established", "related"' in text(rules[0])
    assert '"protocol": "ip6", "field": "saddr"}}, "right": "fd89::5"' in text(rules[3])
    assert all(r["expr"][-1] == {"accept": None} for r in rules)


def test_same_bridge_and_isolated():
    same = fr.attachment_rules(plan(ingressPolicy="same-bridge"))
    assert [r["chain"] for r in same[:2]] == [fr.CH_STAGE1, fr.CH_STAGE2]
    assert '"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "cni-podman1"' \
        in text(same[0])
    assert same[1]["expr"][-1] == {"drop": None}
    iso = fr.attachment_rules(plan(ingressPolicy="isolated"))
    assert [r["chain"] for r in iso[:3]] == [fr.CH_STAGE1, fr.CH_STAGE1, fr.CH_STAGE2]
    assert iso[1]["expr"][-1] == {"drop": None}
    assert len(iso) == len(same) + 1


def test_plan_add_is_one_idempotent_transaction():
    p = plan(iptablesAdminChainName="MY-ADMIN")
    stale = [{"chain": "pods", "handle": 7}]
    cmds = fr.plan_add(p, None, stale)
    kinds = [next(iter(c)) for c in cmds]
    assert kinds[0] == "add" and "table" in cmds[0]["add"]
    chains = [c["add"]["chain"]["name"] for c in cmds if "add" in c and "chain" in c["add"]]
    assert set(chains) == {"forward", "isolation-stage-1", "isolation-stage-2", "pods",
                           "MY-ADMIN"}
    assert {"flush": {"chain": {"family": "inet", "table": fr.TABLE, "name": "forward"}}} in cmds
    inserts = [c["insert"]["rule"] for c in cmds if "insert" in c]
    assert inserts == [fr.admin_jump("MY-ADMIN")]
    deletes = [c for c in cmds if "delete" in c]
    assert deletes == [{"delete": {"rule": {"family": "inet", "table": fr.TABLE,
                                            "chain": "pods", "handle": 7}}}]
    # deletes of the old rules come before the new ones
    assert kinds.index("delete") < len(kinds) - 4
    # once the table shows the jump, it is not inserted again; extras are deleted
    listed = [{"rule": dict(fr.admin_jump("MY-ADMIN"), handle=3)}]
    assert not [c for c in fr.plan_add(p, listed, []) if "insert" in c]
    listed.append({"rule": dict(fr.admin_jump("MY-ADMIN"), handle=4)})
    cmds = fr.plan_add(p, listed, [])
    assert not [c for c in cmds if "insert" in c]
    assert [c["delete"]["rule"]["handle"] for c in cmds if "delete" in c] == [4]


def test_structure_problems():
    objs = [{"chain": {"name": n, "hook": "forward", "type": "filter"}}
            for n in fr.FIXED_CHAINS + ("CNI-ADMIN",)]
    objs += [{"rule": dict(r, handle=i)} for i, r in enumerate(fr.forward_entry_rules())]
    objs.append({"rule": dict(fr.admin_jump("CNI-ADMIN"), handle=9)})
    assert fr.structure_problems(objs, "CNI-ADMIN") == []
    assert any("OTHER" in p for p in fr.structure_problems(objs, "OTHER"))
    no_jumps = [o for o in objs if not ("rule" in o and o["rule"]["chain"] == "forward")]
    assert any("forward" in p for p in fr.structure_problems(no_jumps, "CNI-ADMIN"))


def test_long_names_keep_comments_short_and_exact():
    p = fr.FirewallPlan(network="n" * 200, container_id="c" * 200, ifname="eth0",
                        addresses=["10.0.0.1"])
    q = fr.FirewallPlan(network="n" * 200, container_id="c" * 199 + "d", ifname="eth0",
                        addresses=["10.0.0.1"])
    assert len(p.comment) <= 127 and p.comment != q.comment


def test_result_is_prev_result_and_version_gates():
    out, rc = dispatch("firewall", {"CNI_COMMAND": "VERSION"}, b"")
    assert rc == 0 and "0.4.0" in json.loads(out)["supportedVersions"]
    raw = {"cniVersion": "1.0.0", "name": "n", "type": "firewall"}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/nonexistent/ns",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}
    out, rc = dispatch("firewall", env, json.dumps(raw).encode())
    assert rc == 1 and json.loads(out)["code"] == 7 and "prevResult" in json.loads(out)["msg"]
    env["CNI_COMMAND"] = "GC"
    out, rc = dispatch("firewall", env, json.dumps(raw).encode())
    assert rc == 1 and json.loads(out)["code"] == 1       # GC needs 1.1.0


def test_second_add_leaves_the_shared_structure_alone():
    """With the table, chains, forward jumps and one admin jump listed, an ADD
    only replaces its own rules (no chain re-adds, no flush: see nft.base_in_place)."""
    p = plan(iptablesAdminChainName="MY-ADMIN")
    listed = []
    for c in fr.plan_add(p, None, []):
        (verb, target), = c.items()
        (kind, obj), = target.items()
        if verb in ("add", "insert") and kind in ("chain", "rule"):
            listed.append({kind: dict(obj, handle=len(listed) + 1)})
    again = fr.plan_add(p, listed, [])
    assert not [c for c in again if "flush" in c or "insert" in c]
    assert not [c for c in again if "add" in c and ("chain" in c["add"] or "table" in c["add"])]
    assert [c for c in again if "add" in c] == [{"add": {"rule": r}} for r in fr.attachment_rules(p)]
