"""Pure tests of the bridge plugin's config, names and rule plans (no root needed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from plugins.core.errors import CNIError, INVALID_ENV, INVALID_NETWORK_CONFIG
from plugins.core.config import parse_netconf
from plugins.core.skel import Call, CmdArgs, dispatch
from plugins.core.types import IPConfig, Result, Route
from plugins.net import attach, macspoof, masq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def call_for(conf: dict, cni_args: str = "", command: str = "ADD") -> Call:
    raw = {"cniVersion": "1.0.0", "name": "n1", "type": "bridge", **conf}
    a = CmdArgs(command=command, container_id="c1", netns="/var/run/netns/x", ifname="eth0",
                args=cni_args, path=[], stdin=json.dumps(raw).encode(), env={})
    return Call(a, parse_netconf(raw))


def parse(conf: dict, cni_args: str = ""):
    from plugins import bridge
    return bridge.parse_conf(call_for(conf, cni_args))


# ---- config --------------------------------------------------------------------

def test_defaults():
    c = parse({})
    assert c.bridge == "cni0" and c.mtu == 0 and not c.is_gateway and not c.ip_masq


def test_default_gateway_implies_gateway():
    assert parse({"isDefaultGateway": True}).is_gateway


@pytest.mark.parametrize("conf, field", [
    ({"mtu": -1}, "mtu"),
    ({"mtu": 20}, "mtu"),
    ({"mtu": "1500"}, "mtu"),
    ({"bridge": "a-very-long-bridge-name"}, "bridge"),
    ({"bridge": 5}, "bridge"),
    ({"isGateway": "yes"}, "isGateway"),
    ({"vlan": 4095}, "vlan"),
    ({"vlanTrunk": [{"minID": 10}]}, "minID"),
    ({"vlanTrunk": [{"minID": 20, "maxID": 10}]}, "minID"),
    ({"vlanTrunk": [{"id": 0}]}, "id"),
    ({"hairpinMode": True, "promiscMode": True}, "hairpin"),
    ({"disableContainerInterface": True, "ipam": {"type": "host-local"}}, "IPAM"),
    ({"ipMasqBackend": "iptables"}, "ipMasqBackend"),
    ({"vlan": 10, "isGateway": True, "ipam": {"type": "host-local"}}, "vlan"),
    ({"runtimeConfig": {"mac": "zz:00:00:00:00:00"}}, "runtimeConfig.mac"),
    ({"runtimeConfig": {"mac": "01:00:00:00:00:01"}}, "multicast"),
])
def test_bad_config_is_code_7_naming_the_field(conf, field):
    with pytest.raises(CNIError) as ei:
        parse(conf)
    assert ei.value.code == INVALID_NETWORK_CONFIG
    assert field.lower() in (ei.value.msg + ei.value.details).lower()


def test_vlan_trunk_ranges_merge_and_sort():
    c = parse({"vlanTrunk": [{"minID": 5, "maxID": 7}, {"id": 3}, {"id": 6}]})
    assert c.vlan_trunk == [3, 5, 6, 7]
    assert c.wants_vlan_filtering


def test_mac_precedence_runtime_config_then_args_then_cni_args():
    assert parse({}, "MAC=0a:00:00:00:00:01").mac == "0a:00:00:00:00:01"
    assert parse({"args": {"cni": {"mac": "0a:00:00:00:00:02"}}},
                 "MAC=0a:00:00:00:00:01").mac == "0a:00:00:00:00:02"
    assert parse({"args": {"cni": {"mac": "0a:00:00:00:00:02"}},
                  "runtimeConfig": {"mac": "0A:00:00:00:00:03"}},
                 "MAC=0a:00:00:00:00:01").mac == "0a:00:00:00:00:03"


def test_unknown_cni_args_rejected_unless_ignore_unknown():
    with pytest.raises(CNIError) as ei:
        parse({}, "FOO=1")
    assert ei.value.code == INVALID_ENV
    assert parse({}, "FOO=1;IgnoreUnknown=1").mac == ""


def test_del_parses_leniently():
    from plugins import bridge
    c = bridge.parse_conf(call_for({"hairpinMode": True, "promiscMode": True}, "FOO=1"),
                          strict=False)
    assert c.hairpin and c.promisc


# ---- names ---------------------------------------------------------------------

def test_host_veth_name_deterministic_and_short():
    a = attach.host_veth_name("net", "ctr", "eth0")
    assert a == attach.host_veth_name("net", "ctr", "eth0")
    assert len(a) == 15 and a.startswith("veth")
    others = {attach.host_veth_name("net", "ctr", "eth1"), attach.host_veth_name("net2", "ctr", "eth0"),
              attach.host_veth_name("net", "ctr2", "eth0")}
    assert a not in others and len(others) == 3
    # no ambiguity from concatenation
    assert attach.host_veth_name("ab", "c", "eth0") != attach.host_veth_name("a", "bc", "eth0")


def test_veth_spec_default_host_name():
    s = attach.VethSpec("n", "c", "eth0", "/x", "cni0")
    assert s.host_name == attach.host_veth_name("n", "c", "eth0")


# ---- gateways ------------------------------------------------------------------

def test_compute_gateways_fills_gateway_and_default_routes():
    r = Result(ips=[IPConfig("10.1.0.5/24"), IPConfig("fd01::5/64", gateway="fd01::fe")])
    gws = attach.compute_gateways(r, True, True)
    assert r.ips[0].gateway == "10.1.0.1"
    assert r.ips[1].gateway == "fd01::fe"
    assert gws == {4: ["10.1.0.1/24"], 6: ["fd01::fe/64"]}
    assert [(x.dst, x.gw) for x in r.routes] == [("0.0.0.0/0", "10.1.0.1"), ("::/0", "fd01::fe")]


def test_compute_gateways_keeps_ipam_default_route():
    r = Result(ips=[IPConfig("10.1.0.5/24")], routes=[Route("0.0.0.0/0", gw="10.1.0.254")])
    attach.compute_gateways(r, True, True)
    assert len(r.routes) == 1


def test_compute_gateways_without_gateway_mode():
    r = Result(ips=[IPConfig("10.1.0.5/24")])
    assert attach.compute_gateways(r, False, False) == {4: [], 6: []}
    assert r.ips[0].gateway == "" and r.routes == []


# ---- nftables plans ----------------------------------------------------------------

def test_masq_plan_one_rule_per_address_with_key_comment():
    cmds = masq.plan_rules("n1", "c1", "eth0", ["10.1.0.5/24", "fd01::5/64"])
    assert len(cmds) == 2
    r4 = cmds[0]["add"]["rule"]
    assert r4["table"] == masq.TABLE and r4["chain"] == masq.CHAIN
    assert r4["comment"].startswith(masq.attachment_key("n1", "c1", "eth0") + " ")
    assert r4["expr"][0]["match"]["right"] == "10.1.0.5"
    assert r4["expr"][1]["match"] == {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                                      "right": {"prefix": {"addr": "10.1.0.0", "len": 24}}}
    assert cmds[1]["add"]["rule"]["expr"][0]["match"]["left"]["payload"]["protocol"] == "ip6"


def test_masq_base_never_masquerades_multicast_and_is_in_our_table():
    base = masq.plan_base()
    tables = {c["add"]["table"]["name"] for c in base if "add" in c and "table" in c["add"]}
    assert tables == {"cnilab_masq"}
    returns = [c["add"]["rule"] for c in base if "add" in c and "rule" in c["add"]
               and {"return": None} in c["add"]["rule"]["expr"]]
    nets = {(r["expr"][0]["match"]["right"]["prefix"]["addr"]) for r in returns}
    assert nets == {"224.0.0.0", "ff00::"}
    # the multicast returns come before the jump to the masquerade chain
    rule_cmds = [c["add"]["rule"] for c in base if "add" in c and "rule" in c["add"]]
    assert "jump" in rule_cmds[-1]["expr"][0]


def test_masq_comment_fits_nftables_limit():
    c = masq.comment_for("n" * 100, "c" * 200, "eth0")
    assert len(c) <= 127 and c.startswith(masq.attachment_key("n" * 100, "c" * 200, "eth0"))


def _listed(comments):
    return [{"rule": {"family": "inet", "table": masq.TABLE, "chain": masq.CHAIN, "handle": i,
                      "comment": c}} for i, c in enumerate(comments)]


def test_masq_gc_selection():
    objs = _listed([masq.comment_for("n1", "a", "eth0"), masq.comment_for("n1", "b", "eth0"),
                    masq.comment_for("n1", "b", "eth1"), masq.comment_for("n2", "z", "eth0")])
    stale = masq.select_stale(objs, "n1", [("b", "eth0")])
    assert sorted(r["handle"] for r in stale) == [0, 2]     # n2's rule is never touched
    assert masq.select_stale(objs, "n1", [("a", "eth0"), ("b", "eth0"), ("b", "eth1")]) == []


def test_masq_teardown_selection_is_exact():
    objs = _listed([masq.comment_for("n1", "a", "eth0"), masq.comment_for("n1", "ab", "eth0")])
    sel = masq.select_rules(objs, masq.attachment_key("n1", "a", "eth0"))
    assert [r["handle"] for r in sel] == [0]


def test_macspoof_plan():
    r = macspoof.plan_rule("n1", "c1", "eth0", "vethx", "0A:58:00:00:00:01")["add"]["rule"]
    assert r["family"] == "bridge" and r["table"] == "cnilab_macspoof"
    assert r["expr"][0]["match"]["right"] == "vethx"
    assert r["expr"][1]["match"]["op"] == "!=" and r["expr"][1]["match"]["right"] == "0a:58:00:00:00:01"
    assert r["expr"][2] == {"drop": None}


# ---- dispatcher-level errors (no root needed: they fail before touching anything) --

def test_unknown_version_is_code_1():
    conf = {"cniVersion": "9.9.9", "name": "n", "type": "bridge"}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/nonexistent",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}
    out, rc = dispatch("bridge", env, json.dumps(conf).encode())
    assert rc == 1 and json.loads(out)["code"] == 1


def test_del_noop_and_bad_input_do_not_import_pyroute2_or_nftables():
    """A DEL with nothing to remove (no netns, no IPAM, no masq) stays lean."""
    code = r"""
import json, sys
from plugins.core.skel import dispatch
env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}
out, rc = dispatch("bridge", env, json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "bridge"}).encode())
assert rc == 0, out
env = dict(env, CNI_COMMAND="ADD", CNI_NETNS="/nonexistent")
out, rc = dispatch("bridge", env, json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "bridge", "mtu": -5}).encode())
assert rc == 1 and json.loads(out)["code"] == 7, out
print(sorted(m for m in sys.modules if m.split(".")[0] in ("pyroute2", "nftables", "scapy")))
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
