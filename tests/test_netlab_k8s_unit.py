"""Services and NetworkPolicy in labs: the schema and the rule planning
(pure functions producing nftables JSON). No root needed."""
from __future__ import annotations

import json
import re

import pytest

from netlab.features import k8s
from netlab.features import policy as P
from netlab.features import services as S
from netlab.lab import topology as T

BASE = """
name: k1
nodes: {n1: {}, n2: {}}
networks: {podnet: {type: bridge, subnet: 10.244.0.0/16, nodePrefix: 24}}
pods:
  web1: {node: n1, network: podnet, labels: {app: web}, containerPorts: [{name: http, containerPort: 8080}]}
  web2: {node: n2, network: podnet, labels: {app: web}, containerPorts: [{name: http, containerPort: 9090}]}
  other: {node: n1, network: podnet, namespace: ops, labels: {app: web}}
  client: {node: n1, network: podnet, labels: {role: client}}
"""
ADDRS = {"web1": "10.244.0.2", "web2": "10.244.1.2", "other": "10.244.0.3", "client": "10.244.0.4"}


def load(extra: str) -> T.Topology:
    return T.loads(BASE + extra)


def errors(extra: str) -> list[str]:
    with pytest.raises(T.TopologyError) as e:
        load(extra)
    return e.value.errors


def cmds_text(cmds) -> str:
    return json.dumps(cmds)


# --------------------------------------------------------------------------- schema

def test_cluster_ips_are_allocated_and_explicit_ones_validated():
    t = load("""
services:
  - {name: a, selector: {app: web}, ports: [{port: 80}]}
  - {name: b, clusterIP: 10.96.0.10, selector: {app: web}, ports: [{port: 80}]}
  - {name: h, clusterIP: None, selector: {app: web}}
  - {name: np, type: NodePort, selector: {app: web}, ports: [{port: 80}]}
""")
    svcs = {s.name: s for s in t.k8s.services.services}
    assert svcs["b"].cluster_ip == "10.96.0.10"
    assert svcs["a"].cluster_ip == "10.96.0.11"            # .10 was taken explicitly
    assert svcs["h"].headless and svcs["h"].cluster_ip is None
    assert svcs["np"].ports[0].node_port == 30000


def test_service_errors_name_file_line_and_path():
    errs = errors("""
serviceCIDR: 10.97.0.0/16
services:
  - {name: a, clusterIP: 10.96.0.5, selector: {app: web}, ports: [{port: 80}]}
  - {name: b, selector: {app: web}, ports: [{port: 80, targetPort: nope}], sessionAffinity: Sometimes}
  - {name: c, selector: {app: web}, ports: [{port: 80, nodePort: 30001}], colour: red}
""")
    text = "\n".join(errs)
    assert "services[0].clusterIP: 10.96.0.5 is not in the serviceCIDR 10.97.0.0/16" in text
    assert "services[1].ports[0].targetPort: no pod selected by default/b has a tcp containerPort named 'nope'" in text
    assert "services[1].sessionAffinity: must be None or ClientIP" in text
    assert "services[2].ports[0].nodePort: only a Service of type NodePort" in text
    assert "services[2].colour: unknown key" in text
    assert all(re.match(r"<topology>:\d+: ", e) for e in errs), errs


def test_service_cidr_must_not_overlap_the_pod_network():
    assert any("serviceCIDR: 10.244.0.0/20 overlaps network podnet" in e for e in errors(
        "serviceCIDR: 10.244.0.0/20\nservices: []\n"))


def test_default_service_cidr_claims_nothing_without_services():
    t = T.loads(BASE.replace("10.244.0.0/16", "10.96.0.0/16"))
    assert t.k8s.services.services == []


def test_endpoints_follow_selector_namespace_and_named_ports():
    t = load("services: [{name: web, selector: {app: web}, ports: [{name: h, port: 80, targetPort: http}]}]\n")
    eps = S.endpoints(t.k8s.services, t.pods, ADDRS)[("default/web", "h")]
    # 'other' has the label but lives in namespace ops; each pod's own number for 'http'
    assert [(e.pod, e.address, e.port) for e in eps] == [("web1", "10.244.0.2", 8080), ("web2", "10.244.1.2", 9090)]
    assert S.endpoints(t.k8s.services, t.pods, {"web1": "10.244.0.2"})[("default/web", "h")][0].pod == "web1"


def test_dns_records_clusterip_and_headless():
    t = load("""
services:
  - {name: web, clusterIP: 10.96.0.20, selector: {app: web}, ports: [{port: 80}]}
  - {name: hl, clusterIP: None, selector: {app: web}}
""")
    recs = k8s.dns_records(t, ADDRS)
    assert ("web.default.svc.cluster.local", "10.96.0.20") in recs
    assert [a for n, a in recs if n.startswith("hl.")] == ["10.244.0.2", "10.244.1.2"]


# --------------------------------------------------------------------------- service rules

def _chain_rules(cmds, chain):
    return [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == chain]


def _elements(cmds, name):
    return [e for c in cmds if "element" in c.get("add", {}) and c["add"]["element"]["name"] == name
            for e in c["add"]["element"]["elem"]]


def test_plan_is_one_replace_transaction_with_dispatch_map():
    t = load("services: [{name: web, clusterIP: 10.96.0.20, selector: {app: web}, ports: [{port: 80, targetPort: http}]}]\n")
    eps = S.endpoints(t.k8s.services, t.pods, ADDRS)
    cmds = S.plan_table(t.k8s.services, "n1", eps)
    assert cmds[:3] == [{"add": {"table": {"family": "ip", "name": S.TABLE}}},
                        {"delete": {"table": {"family": "ip", "name": S.TABLE}}},
                        {"add": {"table": {"family": "ip", "name": S.TABLE}}}]
    el = _elements(cmds, "service-ips")
    assert el == [[{"concat": ["10.96.0.20", "tcp", 80]}, {"goto": {"target": "service-default/web/tcp/80"}}]]
    pick = _chain_rules(cmds, "service-default/web/tcp/80")[-1]["expr"][0]["vmap"]
    assert pick["key"] == {"numgen": {"mode": "random", "mod": 2, "offset": 0}}
    assert [x[0] for x in pick["data"]["set"]] == [0, 1]
    ep = _chain_rules(cmds, "endpoint-default/web/tcp/80__10.244.0.2/8080")
    assert ep[0]["expr"][0]["match"]["right"] == "10.244.0.2" and ep[0]["expr"][1] == {"jump": {"target": "mark-for-masquerade"}}
    assert ep[-1]["expr"][-1] == {"dnat": {"addr": "10.244.0.2", "port": 8080}}


def test_affinity_sets_carry_the_timeout_and_are_checked_first():
    t = load("services: [{name: s, selector: {app: web}, sessionAffinity: ClientIP, sessionAffinityTimeout: 3, "
             "ports: [{port: 80, targetPort: 8080}]}]\n")
    cmds = S.plan_table(t.k8s.services, "n1", S.endpoints(t.k8s.services, t.pods, ADDRS))
    sets = [c["add"]["set"] for c in cmds if "set" in c.get("add", {}) and c["add"]["set"]["name"].startswith("affinity-")]
    assert len(sets) == 2 and all(s["timeout"] == 3 and s["flags"] == ["timeout"] for s in sets)
    rules = _chain_rules(cmds, [c for c in (x["add"].get("chain", {}).get("name") for x in cmds if "add" in x) if c and c.startswith("service-")][0])
    assert [r["expr"][-1].get("goto") is not None for r in rules[:2]] == [True, True]
    assert "update" in cmds_text(cmds)


def test_no_endpoints_reject_and_local_nodeport_without_local_endpoint_drops():
    t = load("""
services:
  - {name: none, selector: {app: nothing}, ports: [{port: 80}]}
  - {name: loc, type: NodePort, externalTrafficPolicy: Local, selector: {app: web}, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}
""")
    eps = S.endpoints(t.k8s.services, t.pods, {"web2": "10.244.1.2"})     # the only endpoint is on n2
    n1 = S.plan_table(t.k8s.services, "n1", eps)
    none_ip = t.k8s.services.find("none").cluster_ip
    assert [none_ip, "tcp", 80] in [e[0]["concat"] for e in _elements(n1, "no-endpoint-services")]
    assert _elements(n1, "no-endpoint-nodeports") == [[{"concat": ["tcp", 30080]}, {"goto": {"target": "no-local-endpoints"}}]]
    assert _chain_rules(n1, "no-local-endpoints")[0]["expr"] == [{"counter": None}, {"drop": None}]
    n2 = S.plan_table(t.k8s.services, "n2", eps)
    assert _elements(n2, "service-nodeports") == [[{"concat": ["tcp", 30080]}, {"goto": {"target": "external-default/loc/tcp/80"}}]]
    # Local: no masquerade mark in the external chain
    assert "mark-for-masquerade" not in cmds_text(_chain_rules(n2, "external-default/loc/tcp/80"))
    rej = _chain_rules(n1, "reject-chain")
    assert rej[0]["expr"][-1] == {"reject": {"type": "tcp reset"}}
    assert rej[1]["expr"][-1] == {"reject": {"type": "icmp", "expr": "port-unreachable"}}


def test_cluster_nodeport_marks_for_masquerade():
    t = load("services: [{name: np, type: NodePort, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}]\n")
    cmds = S.plan_table(t.k8s.services, "n1", S.endpoints(t.k8s.services, t.pods, ADDRS))
    ext = _chain_rules(cmds, "external-default/np/tcp/80")
    assert ext[0]["expr"] == [{"jump": {"target": "mark-for-masquerade"}}]
    assert ext[1]["expr"] == [{"goto": {"target": "service-default/np/tcp/80"}}]


# --------------------------------------------------------------------------- policy

POL = """
namespaces:
  ops: {labels: {team: ops}}
networkPolicies:
"""


def test_selector_expressions():
    s = P.Selector({"a": "1"}, [("b", "In", ["x", "y"]), ("c", "DoesNotExist", [])])
    assert s.matches({"a": "1", "b": "x"})
    assert not s.matches({"a": "1", "b": "z"}) and not s.matches({"a": "1", "b": "x", "c": ""})
    assert P.Selector().matches({})


def test_and_versus_or_peers():
    t = load(POL + """
  - name: and
    podSelector: {matchLabels: {app: web}}
    ingress: [{from: [{namespaceSelector: {matchLabels: {team: ops}}, podSelector: {matchLabels: {app: web}}}]}]
  - name: or
    podSelector: {matchLabels: {app: web}}
    ingress: [{from: [{namespaceSelector: {matchLabels: {team: ops}}}, {podSelector: {matchLabels: {role: client}}}]}]
""")
    cfg = t.k8s.policy
    and_, or_ = cfg.policies
    assert P.peer_pods(cfg, and_, and_.ingress[0].peers[0], t.pods) == ["other"]
    assert P.peer_pods(cfg, or_, or_.ingress[0].peers[0], t.pods) == ["other"]
    assert P.peer_pods(cfg, or_, or_.ingress[0].peers[1], t.pods) == ["client"]   # own namespace only
    # the automatic namespace name label
    assert cfg.ns_labels("ops") == {"team": "ops", P.NAME_LABEL: "ops"}


def test_policy_types_default_and_default_deny():
    t = load(POL + """
  - {name: in-only, podSelector: {matchLabels: {app: web}}}
  - {name: eg, podSelector: {matchLabels: {role: client}}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.244.0.0/16]}}]}]}
""")
    cfg = t.k8s.policy
    assert cfg.policies[0].types == ["Ingress"] and cfg.policies[1].types == ["Ingress", "Egress"]
    web1 = P.pod_rules(cfg, t.pods, ADDRS, t.pods["web1"], "ingress")
    assert len(web1) == 1 and web1[0][0] == [{"counter": None}, {"drop": None}]       # deny all ingress
    assert P.pod_rules(cfg, t.pods, ADDRS, t.pods["web1"], "egress") == []             # egress not selected
    eg = P.pod_rules(cfg, t.pods, ADDRS, t.pods["client"], "egress")
    assert eg[0][0][0]["match"]["right"] == {"prefix": {"addr": "10.0.0.0", "len": 8}}
    assert eg[0][0][1]["match"] == {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                                    "right": {"set": [{"prefix": {"addr": "10.244.0.0", "len": 16}}]}}
    # client's ingress is selected too (policyTypes include Ingress, no ingress rules): deny
    assert P.pod_rules(cfg, t.pods, ADDRS, t.pods["client"], "ingress")[-1][1].startswith("default deny ingress")


def test_named_ports_resolve_per_destination_and_endport_is_a_range():
    t = load(POL + """
  - name: in
    podSelector: {matchLabels: {app: web}}
    ingress: [{ports: [{port: http}, {port: 7000, endPort: 7010}]}]
  - name: out
    podSelector: {matchLabels: {role: client}}
    egress: [{to: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: http}]}]
""")
    cfg = t.k8s.policy
    w1 = P.pod_rules(cfg, t.pods, ADDRS, t.pods["web1"], "ingress")[0][0]
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}},
                      "right": {"set": [8080, {"range": [7000, 7010]}]}}} in w1
    w2 = P.pod_rules(cfg, t.pods, ADDRS, t.pods["web2"], "ingress")[0][0]
    assert "9090" in json.dumps(w2) and "8080" not in json.dumps(w2)
    eg = P.pod_rules(cfg, t.pods, ADDRS, t.pods["client"], "egress")
    pairs = [(r[0][0]["match"]["right"], r[0][2]["match"]["right"]) for r in eg[:-1]]
    assert sorted(pairs) == [("10.244.0.2", 8080), ("10.244.1.2", 9090)]


def test_policy_table_only_has_this_nodes_pods():
    t = load(POL + "  - {name: all, podSelector: {}}\n")
    cmds = P.plan_table(t.k8s.policy, t.pods, ADDRS, "n2")
    elems = _elements(cmds, "ingress-pods")
    assert elems == [["10.244.1.2", {"jump": {"target": "ingress-default/web2"}}]]
    fwd = _chain_rules(cmds, "forward")
    assert fwd[0]["expr"][0]["match"]["right"] == ["established", "related"]


def test_policy_errors():
    errs = "\n".join(errors(POL + """
  - name: bad
    podSelector: {matchExpressions: [{key: a, operator: Maybe}]}
    ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}, podSelector: {}}], ports: [{port: 80, endPort: 70}]}]
"""))
    assert "networkPolicies[0].podSelector.matchExpressions[0].operator: must be one of In, NotIn, Exists, DoesNotExist" in errs
    assert "ipBlock cannot be combined with podSelector" in errs
    assert "except[0]: 192.168.0.0/16 is not inside 10.0.0.0/8" in errs
    assert "endPort: must be at least port (80)" in errs


def test_check_schema():
    t = load("""
services: [{name: web, selector: {app: web}, ports: [{port: 80}]}]
checks:
  - {type: service, from: client, service: web}
  - {type: policy, from: client, to: web1, port: 80, expect: deny}
""")
    assert t.checks[0].params["expect"] == "spread" and t.checks[0].params["via"] == "clusterIP"
    assert t.checks[1].params == {"from": "client", "timeout": 2, "to": "web1", "proto": "tcp", "port": 80, "expect": "deny",
                                  "family": None}
    errs = "\n".join(errors("""
services: [{name: web, selector: {app: web}, ports: [{port: 80}]}]
checks:
  - {type: service, from: client, service: nope}
  - {type: service, from: client, service: web, via: n1}
  - {type: policy, from: client, to: web1, expect: maybe}
"""))
    assert "checks[0].service: unknown Service 'nope'" in errs
    assert "checks[1].via: default/web is of type ClusterIP: it has no node port" in errs
    assert "checks[2].expect: must be allow or deny" in errs
