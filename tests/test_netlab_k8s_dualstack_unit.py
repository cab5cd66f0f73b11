"""Dual-stack Services and NetworkPolicy (ADR 0034): the schema (ipFamilies,
ipFamilyPolicy, clusterIPs, a serviceCIDR per family) and the nftables JSON
planned per family. Pure functions; no root needed."""
from __future__ import annotations

import json

import pytest

from netlab.features import k8s
from netlab.features import policy as P
from netlab.features import services as S
from netlab.lab import topology as T

DUAL = """
name: ds
underlay: {subnet: [192.168.150.0/24, "fd00:150::/64"]}
nodes: {n1: {}, n2: {}}
networks: {podnet: {type: bridge, subnet: [10.244.0.0/16, "fd00:10:244::/56"], nodePrefix: [24, 64]}}
pods:
  web1: {node: n1, network: podnet, labels: {app: web}, containerPorts: [{name: http, containerPort: 8080}]}
  web2: {node: n2, network: podnet, labels: {app: web}, containerPorts: [{name: http, containerPort: 8080}]}
  client: {node: n1, network: podnet, labels: {role: client}}
"""
V4ONLY = """
name: v4
nodes: {n1: {}, n2: {}}
networks: {podnet: {type: bridge, subnet: 10.244.0.0/16, nodePrefix: 24}}
pods:
  web1: {node: n1, network: podnet, labels: {app: web}}
  client: {node: n1, network: podnet}
"""
ADDRS = {"web1": ["10.244.0.2", "fd00:10:244::2"], "web2": ["10.244.1.2", "fd00:10:244:1::2"],
         "client": ["10.244.0.3", "fd00:10:244::3"]}


def load(base: str, extra: str) -> T.Topology:
    return T.loads(base + extra)


def errors(base: str, extra: str) -> str:
    with pytest.raises(T.TopologyError) as e:
        load(base, extra)
    return "\n".join(e.value.errors)


def svcs(t) -> dict:
    return {s.name: s for s in t.k8s.services.services}


# --------------------------------------------------------------------------- schema

def test_families_and_cluster_ips_as_the_apiserver_settles_them():
    t = load(DUAL, """
serviceCIDR: [10.96.0.0/16, "fd00:10:96::/112"]
services:
  - {name: plain, selector: {app: web}, ports: [{port: 80}]}
  - {name: v6, ipFamilies: [IPv6], selector: {app: web}, ports: [{port: 80}]}
  - {name: prefer, ipFamilyPolicy: PreferDualStack, selector: {app: web}, ports: [{port: 80}]}
  - {name: v6first, ipFamilyPolicy: RequireDualStack, ipFamilies: [IPv6, IPv4], selector: {app: web}, ports: [{port: 80}]}
  - {name: given, clusterIPs: [10.96.0.20, "fd00:10:96::20"], selector: {app: web}, ports: [{port: 80}]}
  - {name: head, clusterIP: None, ipFamilyPolicy: RequireDualStack, selector: {app: web}}
""")
    s = svcs(t)
    assert (s["plain"].families, s["plain"].family_policy) == ([4], "SingleStack")
    assert s["plain"].cluster_ips.keys() == {4}
    assert s["v6"].families == [6] and s["v6"].cluster_ip.startswith("fd00:10:96::")
    assert s["prefer"].families == [4, 6] and len(s["prefer"].cluster_ips) == 2
    assert s["v6first"].families == [6, 4] and ":" in s["v6first"].cluster_ip     # clusterIP = clusterIPs[0]
    # two clusterIPs and no policy: RequireDualStack, as the apiserver defaults it
    assert s["given"].family_policy == "RequireDualStack"
    assert s["given"].cluster_ips == {4: "10.96.0.20", 6: "fd00:10:96::20"}
    assert s["head"].headless and s["head"].families == [4, 6] and s["head"].cluster_ips == {}
    # every allocated address is distinct and inside its family's range
    ips = [ip for x in s.values() for ip in x.cluster_ips.values()]
    assert len(ips) == len(set(ips))


def test_service_cidr_defaults_to_the_pod_networks_families():
    t = load(DUAL, "services: [{name: a, ipFamilyPolicy: PreferDualStack, selector: {app: web}, ports: [{port: 80}]}]")
    assert [str(c) for c in t.k8s.services.cidrs] == ["10.96.0.0/16", "fd00:10:96::/112"]
    assert svcs(t)["a"].families == [4, 6]
    # an IPv4 lab keeps the single IPv4 range; PreferDualStack falls back to one family there
    t4 = load(V4ONLY, "services: [{name: a, ipFamilyPolicy: PreferDualStack, selector: {app: web}, ports: [{port: 80}]}]")
    assert [str(c) for c in t4.k8s.services.cidrs] == ["10.96.0.0/16"] and svcs(t4)["a"].families == [4]
    # the apiserver's flag form
    t2 = load(DUAL, 'serviceCIDR: "10.97.0.0/16,fd00:10:97::/112"\nservices: [{name: a, selector: {app: web}, ports: [{port: 80}]}]')
    assert [c.version for c in t2.k8s.services.cidrs] == [4, 6]


def test_ipv6_only_lab_takes_services_and_policies():
    t = T.loads("""
name: v6only
underlay: {subnet: "fd00:151::/64"}
nodes: {n1: {}}
networks: {podnet: {type: bridge, subnet: "fd00:10:245::/56", nodePrefix: 64}}
pods:
  web1: {node: n1, network: podnet, labels: {app: web}}
services: [{name: web, selector: {app: web}, ports: [{port: 80}]}]
networkPolicies: [{name: deny, podSelector: {}}]
""")
    s = svcs(t)["web"]
    assert s.families == [6] and s.cluster_ip.startswith("fd00:10:96::")
    assert k8s.tables(t) == [("ip6", S.TABLE), ("inet", P.TABLE)]


@pytest.mark.parametrize("extra,msg", [
    ("services: [{name: a, ipFamilyPolicy: RequireDualStack, selector: {app: web}, ports: [{port: 80}]}]",
     "RequireDualStack needs a dual-stack serviceCIDR"),
    ("services: [{name: a, ipFamilies: [IPv6], selector: {app: web}, ports: [{port: 80}]}]",
     "IPv6 is not a family of the serviceCIDR (IPv4): add an IPv6 range to serviceCIDR"),
])
def test_v4_cluster_refuses_ipv6_services(extra, msg):
    assert msg in errors(V4ONLY, extra)


@pytest.mark.parametrize("extra,msg", [
    ("services: [{name: a, ipFamilyPolicy: SingleStack, ipFamilies: [IPv4, IPv6], selector: {app: web}, ports: [{port: 80}]}]",
     "services[0].ipFamilyPolicy: SingleStack takes one family"),
    ("services: [{name: a, ipFamilies: [IPv4, IPv4], selector: {app: web}, ports: [{port: 80}]}]",
     "services[0].ipFamilies[1]: IPv4 is listed twice"),
    ("services: [{name: a, ipFamilies: [IPv5], selector: {app: web}, ports: [{port: 80}]}]",
     "must be IPv4 or IPv6, got 'IPv5'"),
    ("services: [{name: a, ipFamilyPolicy: Maybe, selector: {app: web}, ports: [{port: 80}]}]",
     "must be one of SingleStack, PreferDualStack, RequireDualStack"),
    ("services: [{name: a, clusterIPs: [10.96.0.20, 10.96.0.21], ipFamilyPolicy: RequireDualStack, selector: {app: web}, ports: [{port: 80}]}]",
     "two IPv4 clusterIPs"),
    ("services: [{name: a, clusterIPs: [\"fd00:10:96::20\", 10.96.0.20], ipFamilies: [IPv4, IPv6], selector: {app: web}, ports: [{port: 80}]}]",
     "services[0].ipFamilies[0]: is IPv4, but clusterIPs[0] is IPv6"),
    ("services: [{name: a, clusterIP: 10.96.0.20, clusterIPs: [10.96.0.21], selector: {app: web}, ports: [{port: 80}]}]",
     "the first clusterIPs entry must be the clusterIP (10.96.0.20)"),
    ("services: [{name: a, clusterIPs: [\"fd00:99::1\"], selector: {app: web}, ports: [{port: 80}]}]",
     "fd00:99::1 is not in the serviceCIDR fd00:10:96::/112"),
    ("serviceCIDR: [10.96.0.0/16, 10.97.0.0/16]\nservices: [{name: a, selector: {app: web}, ports: [{port: 80}]}]",
     "give one range, or two (one IPv4, one IPv6)"),
    ("serviceCIDR: [10.96.0.0/16, \"fd00:10:244:5::/112\"]\nservices: [{name: a, selector: {app: web}, ports: [{port: 80}]}]",
     "fd00:10:244:5::/112 overlaps network podnet (fd00:10:244::/56)"),
    ("serviceCIDR: [10.96.0.0/16, \"fd00:10:96::/126\"]\nservices: [{name: a, selector: {app: web}, ports: [{port: 80}]}]",
     "fd00:10:96::/126 is too small (at most /124)"),
    ("services: [{name: web, selector: {app: web}, ports: [{port: 80}]}]\n"
     "checks: [{type: service, from: client, service: web, family: 6}]",
     "checks[0].family: default/web is IPv4 only (ipFamilies): it has no IPv6 address"),
])
def test_dual_stack_schema_errors(extra, msg):
    assert msg in errors(DUAL, extra)


def test_policy_ipblock_takes_ipv6_and_except_must_be_of_its_family():
    t = load(DUAL, """
networkPolicies:
  - name: p
    podSelector: {}
    ingress: [{from: [{ipBlock: {cidr: "fd00:150::/64", except: ["fd00:150::c/128"]}}]}]
""")
    assert t.k8s.policy.policies[0].ingress[0].peers[0].excepts == ["fd00:150::c/128"]
    errs = errors(DUAL, """
networkPolicies:
  - name: p
    podSelector: {}
    ingress: [{from: [{ipBlock: {cidr: "fd00:150::/64", except: [10.0.0.0/8]}}, {ipBlock: {cidr: "fd00::zz/64"}}]}]
""")
    assert "except[0]: 10.0.0.0/8 is not inside fd00:150::/64" in errs
    assert "'fd00::zz/64' is not an IPv4 or IPv6 network" in errs


# --------------------------------------------------------------------------- services nft, per family

SVC = """
serviceCIDR: [10.96.0.0/16, "fd00:10:96::/112"]
services:
  - {name: web, type: NodePort, clusterIPs: [10.96.0.20, "fd00:10:96::20"], sessionAffinity: ClientIP,
     selector: {app: web}, ports: [{port: 80, targetPort: http, nodePort: 30080}]}
  - {name: v4, selector: {app: web}, ports: [{port: 81, targetPort: 8080}]}
  - {name: none6, ipFamilies: [IPv6], selector: {app: nothing}, ports: [{port: 82}]}
"""


def test_endpoints_per_family():
    t = load(DUAL, SVC)
    cfg = t.k8s.services
    e4 = S.endpoints(cfg, t.pods, ADDRS, 4)
    e6 = S.endpoints(cfg, t.pods, ADDRS, 6)
    assert [e.address for e in e4[("default/web", "")]] == ["10.244.0.2", "10.244.1.2"]
    assert [e.address for e in e6[("default/web", "")]] == ["fd00:10:244::2", "fd00:10:244:1::2"]
    assert ("default/v4", "") in e4 and ("default/v4", "") not in e6     # IPv4-only: no IPv6 slice
    assert e6[("default/none6", "")] == []


def test_ipv6_table_is_ip6_with_v6_types_payloads_and_rejects():
    t = load(DUAL, SVC)
    cfg = t.k8s.services
    cmds = S.plan_table(cfg, "n1", S.endpoints(cfg, t.pods, ADDRS, 6), 6)
    text = json.dumps(cmds)
    assert cmds[:3] == [{"add": {"table": {"family": "ip6", "name": S.TABLE}}},
                        {"delete": {"table": {"family": "ip6", "name": S.TABLE}}},
                        {"add": {"table": {"family": "ip6", "name": S.TABLE}}}]
    for c in cmds:                       # every table, map, set, chain, rule and element is the ip6 table's
        (body,) = next(iter(c.values())).values()
        assert body["family"] == "ip6", c
    assert '"ipv4_addr"' not in text and '"protocol": "ip"' not in text
    assert not any(a in text for a in ("10.96.", "10.244."))
    maps = {c["add"]["map"]["name"]: c["add"]["map"]["type"] for c in cmds if "map" in c.get("add", {})}
    assert maps["service-ips"] == ["ipv6_addr", "inet_proto", "inet_service"]
    elems = [c["add"]["element"] for c in cmds if "element" in c.get("add", {})]
    assert {"concat": ["fd00:10:96::20", "tcp", 80]} in [e["elem"][0][0] for e in elems if e["name"] == "service-ips"]
    assert [e["elem"][0][0] for e in elems if e["name"] == "service-nodeports"] == [{"concat": ["tcp", 30080]}]
    none6 = svcs(t)["none6"].cluster_ip
    assert [e["elem"][0] for e in elems if e["name"] == "no-endpoint-services"] == \
        [[{"concat": [none6, "tcp", 82]}, {"goto": {"target": "reject-chain"}}]]
    dnats = [x["dnat"] for c in cmds if "rule" in c.get("add", {}) for x in c["add"]["rule"]["expr"] if "dnat" in x]
    assert {"addr": "fd00:10:244:1::2", "port": 8080} in dnats and len(dnats) == 2
    assert '{"reject": {"type": "icmpv6", "expr": "port-unreachable"}}' in text
    assert '{"prefix": {"addr": "::1", "len": 128}}' in text                   # loopback is no NodePort address
    assert '"prefix": {"addr": "fd00:10:96::", "len": 112}' in text          # unallocated VIPs dropped
    sets = [c["add"]["set"] for c in cmds if "set" in c.get("add", {}) and c["add"]["set"]["name"].startswith("affinity-")]
    assert len(sets) == 2 and all(s["type"] == "ipv6_addr" and s["flags"] == ["timeout"] for s in sets)
    assert '"payload": {"protocol": "ip6", "field": "saddr"}' in text      # hairpin and affinity by IPv6 source


def test_ipv4_table_of_a_dual_stack_lab_holds_ipv4_only():
    t = load(DUAL, SVC)
    cfg = t.k8s.services
    text = json.dumps(S.plan_table(cfg, "n1", S.endpoints(cfg, t.pods, ADDRS, 4), 4))
    assert '"family": "ip"' in text and "ip6" not in text and "fd00:" not in text
    assert "10.96.0.20" in text and "none6" not in text


def test_one_transaction_per_node_holds_every_table():
    t = load(DUAL, SVC + """
networkPolicies: [{name: p, podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {matchLabels: {role: client}}}]}]}]
""")
    cmds = k8s.plan_node(t, "n1", ADDRS)
    made = [c["add"]["table"]["family"] for c in cmds if "table" in c.get("add", {})]
    assert made == ["ip", "ip", "ip6", "ip6", "inet", "inet"]          # create-if-absent + recreate, per table
    assert k8s.tables(t) == [("ip", S.TABLE), ("ip6", S.TABLE), ("inet", P.TABLE)]


def test_an_ipv4_lab_gets_no_ipv6_table_or_rule():
    t = load(V4ONLY, """
services: [{name: a, selector: {app: web}, ports: [{port: 80}]}]
networkPolicies: [{name: p, podSelector: {}}]
""")
    assert k8s.tables(t) == [("ip", S.TABLE), ("inet", P.TABLE)]
    text = json.dumps(k8s.plan_node(t, "n1", {"web1": "10.244.0.2", "client": "10.244.0.3"}))
    assert "ip6" not in text and "icmpv6" not in text and "pods6" not in text


def test_dns_records_aaaa_for_v6_cluster_ips_and_headless_pods():
    t = load(DUAL, SVC + """
  - {name: head, clusterIP: None, ipFamilyPolicy: PreferDualStack, selector: {app: web}}
  - {name: head4, clusterIP: None, selector: {app: web}}
""")
    t.dns.enabled = True
    recs = k8s.dns_records(t, ADDRS)
    d = t.dns.domain
    by = {}
    for n, a in recs:
        by.setdefault(n, []).append(a)
    assert by[f"web.default.svc.{d}"] == ["10.96.0.20", "fd00:10:96::20"]
    assert [a for a in by[f"v4.default.svc.{d}"] if ":" in a] == []
    assert by[f"head.default.svc.{d}"] == ["10.244.0.2", "10.244.1.2", "fd00:10:244::2", "fd00:10:244:1::2"]
    assert by[f"head4.default.svc.{d}"] == ["10.244.0.2", "10.244.1.2"]      # SingleStack: the primary family
    # the primary-only map (what ADR 0022's callers pass) still gives the IPv4 records
    prim = k8s.dns_records(t, {k: v[0] for k, v in ADDRS.items()})
    assert ("web." + f"default.svc.{d}", "10.96.0.20") in prim


# --------------------------------------------------------------------------- policy nft, both families

POL = """
networkPolicies:
  - name: web
    podSelector: {matchLabels: {app: web}}
    policyTypes: [Ingress, Egress]
    ingress:
      - from: [{podSelector: {matchLabels: {role: client}}}]
        ports: [{port: http}]
      - from: [{ipBlock: {cidr: "fd00:150::/64", except: ["fd00:150::c/128"]}}]
    egress:
      - to: [{podSelector: {matchLabels: {app: web}}}]
        ports: [{port: http}]
"""


def test_policy_rules_per_family():
    t = load(DUAL, POL)
    cfg = t.k8s.policy
    ing = P.pod_rules(cfg, t.pods, ADDRS, t.pods["web1"], "ingress")
    comments = [c for _, c in ing]
    assert comments == ["allow default/web ingress[0] from podSelector (client) tcp",
                        "allow default/web ingress[0] from podSelector (client) (IPv6) tcp",
                        "allow default/web ingress[1] from ipBlock fd00:150::/64 except fd00:150::c/128",
                        "default deny ingress of default/web1 (policies default/web)"]
    v4, v6, block, _ = (json.dumps(e) for e, _ in ing)
    assert '"protocol": "ip", "field": "saddr"}}, "right": "10.244.0.3"' in v4
    assert '"protocol": "ip6", "field": "saddr"}}, "right": "fd00:10:244::3"' in v6 and '"right": 8080' in v6
    assert '"protocol": "ip6"' in block and '{"prefix": {"addr": "fd00:150::", "len": 64}}' in block
    assert '"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": {"set": ["fd00:150::c"]}' in block
    # egress with a named port: one rule per destination pod and family
    eg = [c for _, c in P.pod_rules(cfg, t.pods, ADDRS, t.pods["web1"], "egress")]
    assert eg.count("allow default/web egress[0] to web2 tcp") == 1
    assert eg.count("allow default/web egress[0] to web2 tcp (IPv6)") == 1


def test_policy_table_maps_both_families_and_accepts_neighbour_discovery():
    t = load(DUAL, POL)
    cmds = P.plan_table(t.k8s.policy, t.pods, ADDRS, "n1")
    text = json.dumps(cmds)
    maps = {c["add"]["map"]["name"]: c["add"]["map"]["type"] for c in cmds if "map" in c.get("add", {})}
    assert maps == {"ingress-pods": "ipv4_addr", "egress-pods": "ipv4_addr",
                    "ingress-pods6": "ipv6_addr", "egress-pods6": "ipv6_addr"}
    elems = {(c["add"]["element"]["name"], c["add"]["element"]["elem"][0][0]) for c in cmds if "element" in c.get("add", {})}
    assert {("ingress-pods", "10.244.0.2"), ("ingress-pods6", "fd00:10:244::2"),
            ("egress-pods", "10.244.0.2"), ("egress-pods6", "fd00:10:244::2")} <= elems
    assert not any(a == "fd00:10:244:1::2" for _, a in elems)       # web2 is n2's
    rules = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    for base in ("forward", "input"):
        chain = [r for r in rules if r["chain"] == base]
        # established first, then neighbour discovery, before any policy verdict
        assert chain[1].get("comment") == P.ND_COMMENT
        assert chain[1]["expr"][0]["match"]["right"] == {"set": P.ND_TYPES}
    assert '"key": {"payload": {"protocol": "ip6", "field": "daddr"}}, "data": "@ingress-pods6"' in text
