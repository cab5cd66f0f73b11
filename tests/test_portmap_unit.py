"""portmap without root: config validation and rule planning as data."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from plugins.core.config import parse_netconf
from plugins.core.errors import CNIError
from plugins.core.types import Result
from plugins.net import portmap_rules as pr
from plugins import portmap

POD4, POD6 = "10.1.0.5", "fd00::5"


def netconf(runtime=None, **extra):
    raw = {"cniVersion": "1.0.0", "name": "net1", "type": "portmap", **extra}
    if runtime is not None:
        raw["runtimeConfig"] = {"portMappings": runtime}
    return parse_netconf(raw)


def plan(family=4, mappings=None, **kw):
    return pr.PortMapPlan(network="net1", container_id="cid1", ifname="eth0", family=family,
                          pod_ip=POD4 if family == 4 else POD6,
                          mappings=mappings or [pr.PortMapping(8080, 80, "tcp")], **kw)


def chains(rules):
    return [r["chain"] for r in rules]


def has(rule, fragment):
    return json.dumps(fragment) in json.dumps(rule["expr"])


# ---- config -------------------------------------------------------------------

def test_defaults_and_normalisation():
    cfg = portmap.parse_config(netconf([{"hostPort": 80, "containerPort": 8080,
                                         "protocol": "UDP", "hostIP": "fd00::0001"}]))
    assert cfg.snat is True and cfg.masq_all is False and cfg.mark_bit == 13
    assert cfg.mappings == [pr.PortMapping(80, 8080, "udp", "fd00::1")]
    assert portmap.parse_config(netconf([{"hostPort": 1, "containerPort": 2}])).mappings[0] \
        .protocol == "tcp"


@pytest.mark.parametrize("bad", [
    {"hostPort": 0, "containerPort": 80},
    {"hostPort": 65536, "containerPort": 80},
    {"hostPort": 80, "containerPort": 0},
    {"hostPort": 80},
    {"hostPort": "80", "containerPort": 80},
    {"hostPort": 80, "containerPort": 80, "protocol": "icmp"},
    {"hostPort": 80, "containerPort": 80, "hostIP": "300.1.1.1"},
    "not-an-object",
])
def test_invalid_mappings_are_code_7(bad):
    with pytest.raises(CNIError) as e:
        portmap.parse_config(netconf([bad]))
    assert e.value.code == 7


def test_duplicate_mapping_is_code_7_but_other_protocol_is_fine():
    ok = [{"hostPort": 53, "containerPort": 53, "protocol": "tcp"},
          {"hostPort": 53, "containerPort": 53, "protocol": "udp"}]
    assert len(portmap.parse_config(netconf(ok)).mappings) == 2
    with pytest.raises(CNIError) as e:
        portmap.parse_config(netconf(ok + [{"hostPort": 53, "containerPort": 54}]))
    assert e.value.code == 7 and "duplicates" in e.value.msg


@pytest.mark.parametrize("extra", [
    {"markMasqBit": 32}, {"markMasqBit": -1}, {"backend": "iptables"},
    {"externalSetMarkChain": "KUBE-MARK-MASQ"}, {"snat": "yes"},
    {"conditionsV4": ["ip saddr 1.2.3.4; flush ruleset"]},
    {"conditionsV4": [{"accept": None}]}, {"conditionsV6": [1, 2]},
])
def test_invalid_options_are_code_7(extra):
    with pytest.raises(CNIError) as e:
        portmap.parse_config(netconf([{"hostPort": 80, "containerPort": 80}], **extra))
    assert e.value.code == 7


def test_pod_addresses_come_from_the_pod_interface():
    prev = Result.from_dict({"cniVersion": "1.0.0",
                             "interfaces": [{"name": "br0"}, {"name": "veth1"},
                                            {"name": "eth0", "sandbox": "/x"}],
                             "ips": [{"address": "10.1.0.1/24", "interface": 0},
                                     {"address": "10.1.0.5/24", "interface": 2},
                                     {"address": "fd00::5/64", "interface": 2},
                                     {"address": "10.1.0.6/24", "interface": 2}]})
    assert portmap.pod_addresses(prev, "eth0") == {4: "10.1.0.5", 6: "fd00::5"}
    assert portmap.pod_addresses(prev, "eth1") == {}


# ---- planning -------------------------------------------------------------------

def test_v4_rules_hairpin_localhost_dnat_and_masquerade():
    rules = pr.attachment_rules(plan())
    assert chains(rules) == ["hostports"] * 3 + ["postrouting"]
    hairpin, local, dnat, masq = rules
    assert has(hairpin, {"payload": {"protocol": "ip", "field": "saddr"}}) and POD4 in json.dumps(hairpin)
    assert has(local, {"prefix": {"addr": "127.0.0.0", "len": 8}})
    assert has(hairpin, pr.mark_set(13)) and has(local, pr.mark_set(13))
    assert dnat["expr"][-1] == {"dnat": {"addr": POD4, "port": 80}}
    assert masq["expr"] == [pr.mark_is_set(13),
                            {"match": {"op": "==", "left": {"payload": {"protocol": "ip",
                                                                         "field": "daddr"}},
                                       "right": POD4}}, {"masquerade": None}]
    assert all(r["comment"] == "n:net1 c:cid1 i:eth0" and r["table"] == pr.TABLE for r in rules)
    assert all(r["family"] == "ip" for r in rules)


def test_v6_has_no_localhost_rule():
    rules = pr.attachment_rules(plan(6))
    assert chains(rules) == ["hostports", "hostports", "postrouting"]
    assert rules[1]["expr"][-1] == {"dnat": {"addr": POD6, "port": 80}}
    assert all(r["family"] == "ip6" for r in rules)


def test_masq_all_marks_every_source_and_snat_false_marks_nothing():
    rules = pr.attachment_rules(plan(masq_all=True, mark_bit=5))
    assert chains(rules) == ["hostports", "hostports", "postrouting"]
    assert "saddr" not in json.dumps(rules[0]) and has(rules[0], pr.mark_set(5))
    rules = pr.attachment_rules(plan(snat=False))
    assert chains(rules) == ["hostports"] and "mark" not in json.dumps(rules)


def test_host_ip_restricts_destination_and_family():
    m = [pr.PortMapping(80, 8080, "tcp", "192.0.2.7"), pr.PortMapping(81, 8081, "udp", "::"),
         pr.PortMapping(82, 8082, "sctp", "0.0.0.0")]
    v4 = pr.attachment_rules(plan(4, m, snat=False))
    assert len(v4) == 2 and "192.0.2.7" in json.dumps(v4[0]) and "daddr" not in json.dumps(v4[1])
    assert has(v4[1], {"payload": {"protocol": "sctp", "field": "dport"}})
    v6 = pr.attachment_rules(plan(6, m, snat=False))
    assert len(v6) == 1 and "daddr" not in json.dumps(v6) and "udp" in json.dumps(v6)
    # a specific non-loopback hostIP cannot be reached from 127/8: no localhost rule
    assert len(pr.attachment_rules(plan(4, m[:1]))) == 3


def test_conditions_are_prepended():
    cond = {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}}
    rules = pr.attachment_rules(plan(conditions=[cond]))
    assert all(r["expr"][0] == cond for r in rules if r["chain"] == "hostports")


def test_plan_add_is_one_idempotent_transaction():
    stale = {4: [{"rule": {"chain": "hostports", "handle": 7, "comment": plan(4).comment}},
                 {"rule": {"chain": "hostports", "handle": 8, "comment": "another pod"}}],
             6: None}
    cmds = pr.plan_add([plan(4), plan(6)], stale)
    verbs = [next(iter(c)) for c in cmds]
    assert verbs[:5] == ["add"] * 5
    # entry chains: flushed and refilled in the same transaction, for both families
    flushed = [c["flush"]["chain"]["name"] for c in cmds if "flush" in c]
    assert flushed == ["prerouting", "output", "prerouting", "output"]
    deletes = [c for c in cmds if "delete" in c]
    assert deletes == [{"delete": {"rule": {"family": "ip", "table": pr.TABLE,
                                            "chain": "hostports", "handle": 7}}}]
    hooks = {c["add"]["chain"]["name"]: c["add"]["chain"].get("hook")
             for c in cmds if "add" in c and "chain" in c["add"]}
    assert hooks == {"hostports": None, "prerouting": "prerouting", "output": "output",
                     "postrouting": "postrouting"}


def test_comments_are_short_exact_and_parseable():
    c = pr.attachment_comment("net1", "cid1", "eth0")
    assert pr.parse_comment(c) == ("n:net1", "cid1", "eth0")
    long = pr.attachment_comment("n" * 200, "c" * 200, "e" * 15)
    assert len(long) <= 120 and long == pr.attachment_comment("n" * 200, "c" * 200, "e" * 15)
    assert long != pr.attachment_comment("n" * 200, "c" * 199 + "d", "e" * 15)
    assert pr.parse_comment(long)[0] == pr.network_tag("n" * 200)
    assert pr.parse_comment("something else") is None


def test_compare_reports_missing_extra_and_order():
    want = pr.attachment_rules(plan())
    live = [dict(r, handle=i, expr=r["expr"] + [{"counter": {"packets": 1, "bytes": 2}}])
            for i, r in enumerate(want)]
    assert pr.compare(want, live) == []
    assert "missing" in pr.compare(want, live[1:])[0]
    assert "unexpected" in pr.compare(want[1:], live)[0]
    assert pr.compare(want, list(reversed(live))) == ["rules are out of order"]


# ---- lean imports ---------------------------------------------------------------

LEAN = r"""
import json, sys
from plugins.core.skel import dispatch
env = {"CNI_COMMAND": sys.argv[1], "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0",
       "CNI_NETNS": "/proc/1/ns/net", "CNI_PATH": "/usr/lib/cni"}
conf = {"cniVersion": "1.0.0", "name": "n", "type": sys.argv[2],
        "runtimeConfig": json.loads(sys.argv[3])}
out, rc = dispatch(sys.argv[2], env, json.dumps(conf).encode())
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("pyroute2", "nftables", "scapy"))
print(json.dumps({"rc": rc, "out": out, "heavy": heavy}))
"""


@pytest.mark.parametrize("plugin,command,rc", [
    ("portmap", "VERSION", {}), ("portmap", "ADD", {"portMappings": [{"hostPort": 0}]}),
    ("bandwidth", "VERSION", {}), ("bandwidth", "ADD", {"bandwidth": {"ingressRate": 5}}),
])
def test_version_and_input_errors_import_nothing_heavy(plugin, command, rc):
    p = subprocess.run([sys.executable, "-c", LEAN, command, plugin, json.dumps(rc)],
                       capture_output=True, text=True, check=True)
    res = json.loads(p.stdout)
    assert res["heavy"] == [], res
    if command != "VERSION":
        assert res["rc"] == 1 and json.loads(res["out"])["code"] == 7


def test_gc_without_an_attachment_list_is_refused_not_a_wipe():
    from types import SimpleNamespace
    from plugins import bandwidth
    raw = {"cniVersion": "1.1.0", "name": "net1", "type": "portmap"}
    call = SimpleNamespace(conf=parse_netconf(raw), args=None)
    for plugin in (portmap, bandwidth):
        with pytest.raises(CNIError) as e:
            plugin.gc(call)
        assert e.value.code == 7 and "valid-attachments" in e.value.msg


class FakeNft:
    def __init__(self, errors):
        self.errors = list(errors)
        self.applied = []

    def try_apply(self, cmds):
        self.applied.append(cmds)
        return self.errors.pop(0) if self.errors else None


def test_transactions_are_rebuilt_when_a_parallel_delete_won():
    builds = []
    nft = FakeNft(["Error: Could not process rule: No such file or directory"])
    portmap._apply_retrying(nft, lambda: builds.append(1) or [{"n": len(builds)}])
    assert len(builds) == 2 and nft.applied == [[{"n": 1}], [{"n": 2}]]
    nft = FakeNft(["Error: Could not process rule: Operation not supported"])
    with pytest.raises(CNIError) as e:
        portmap._apply_retrying(nft, lambda: [{}])
    assert e.value.code == 5 and len(nft.applied) == 1 and "not supported" in e.value.details


def _listing(cmds: list[dict]) -> list[dict]:
    """What nft would list after ``cmds`` ran on an empty table (chains, rules)."""
    out = []
    for c in cmds:
        (verb, target), = c.items()
        (kind, obj), = target.items()
        if verb == "add" and kind in ("chain", "rule"):
            out.append({kind: dict(obj, handle=len(out) + 1)})
    return out


def test_second_add_leaves_the_shared_structure_alone():
    """Once the listing shows the table, chains and entry rules, an ADD's
    transaction only adds (and replaces) the attachment's own rules: re-adding
    chains or flushing the entry chains would make the nftables socket's close
    wait for an RCU grace period under the commit mutex."""
    first = pr.plan_add([plan(4)], {4: None})
    listed = _listing(first)
    again = pr.plan_add([plan(4)], {4: listed})
    assert [c for c in again if "add" in c and ("chain" in c["add"] or "table" in c["add"])] == []
    assert not [c for c in again if "flush" in c]
    ours = [c for c in again if "delete" in c]
    assert len(ours) == len(pr.attachment_rules(plan(4)))    # the earlier ADD's rules


@pytest.mark.parametrize("damage", ["entry rule gone", "entry rule twice", "chain gone",
                                    "chain hook changed"])
def test_damaged_structure_is_rewritten(damage):
    listed = _listing(pr.plan_add([plan(4)], {4: None}))
    entry = next(i for i, o in enumerate(listed)
                 if "rule" in o and o["rule"]["chain"] == "prerouting")
    if damage == "entry rule gone":
        del listed[entry]
    elif damage == "entry rule twice":
        listed.append(listed[entry])
    elif damage == "chain gone":
        listed = [o for o in listed if o.get("chain", {}).get("name") != "output"]
    else:
        for o in listed:
            if o.get("chain", {}).get("name") == "prerouting":
                o["chain"] = dict(o["chain"], hook="input")
    again = pr.plan_add([plan(4)], {4: listed})
    assert [c for c in again if "flush" in c], damage
