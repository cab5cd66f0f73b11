"""The topology parser's section table (ADR 0033): every top-level key has a row,
a wrong shape reads the same for every section, and the scenario section is
parsed once into typed objects (no root needed)."""
from __future__ import annotations

import pytest
import yaml

from netlab.lab import scenario as S
from netlab.lab import topology as T
from netlab.lab.schema import Section

BASE = """
name: t1
nodes:
  n1: {}
networks:
  podnet: {type: bridge, subnet: 10.244.0.0/16}
pods:
  a: {node: n1, network: podnet}
  b: {node: n1, network: podnet}
checks:
  - {type: reach, from: a, to: b, name: ab}
"""


def errors(text: str) -> list[str]:
    with pytest.raises(T.TopologyError) as ei:
        T.loads(text, "t.yaml")
    return ei.value.errors


def test_every_top_level_key_is_a_row_of_the_table():
    assert all(isinstance(s, Section) for s in T.SECTIONS)
    keys = [k for s in T.SECTIONS for k in (s.key,) + s.also]
    assert len(keys) == len(set(keys)) and tuple(keys) == T.TOP_KEYS
    assert {"name", "underlay", "nodes", "networks", "pods", "dns", "checks", "scenario", "bgp", "services",
            "loadBalancer", "networkPolicies"} <= set(keys)
    (err,) = errors(BASE + "colour: red\n")
    assert err.startswith("t.yaml:12: colour: unknown key (known: name, description, external, underlay, nodes,")


@pytest.mark.parametrize("key,value,want", [
    ("networks", "[1]", "networks: must be a mapping of network name -> settings, got a list"),
    ("pods", "7", "pods: must be a mapping of pod name -> settings, got an integer"),
    ("underlay", "x", "underlay: must be a mapping, got a string"),
    ("dns", "[1]", "dns: must be a mapping, got a list"),
    ("checks", "{a: 1}", "checks: must be a list, got a mapping"),
    ("scenario", "broken", "scenario: must be a mapping (symptom, cause, fix, faults, failing), got a string"),
    ("external", "maybe", 'external: must be true/false, got a string "maybe"'),
    ("description", "3", "description: must be a string, got an integer 3"),
])
def test_a_wrong_shape_reads_the_same_for_every_section(key, value, want):
    data = yaml.safe_load(BASE)
    data[key] = yaml.safe_load(value)
    errs = errors(yaml.safe_dump(data, sort_keys=False))
    assert any(e.endswith(": " + want) for e in errs), errs


def test_nodes_missing_empty_or_an_empty_file():
    for text in ("name: t1\n", "name: t1\nnodes: {}\n", ""):
        errs = errors(text)
        assert any(e.endswith("nodes: is required: a mapping of node name -> settings (at least one node)")
                   for e in errs), (text, errs)
    assert any(e.endswith("name: is required") for e in errors(""))


def test_the_scenario_is_parsed_once_into_typed_objects():
    t = T.loads(BASE + """scenario:
  symptom: s
  cause: c
  fix: f
  faults:
    - sysctl: {in: n1, key: net.ipv4.ip_forward, value: 0}
    - wait: 0.5
  failing: [{check: ab, reason: "^fail"}]
""")
    assert t.scenario == S.Scenario("s", "c", "f", [S.Fault("sysctl", {"in": "n1", "key": "net.ipv4.ip_forward",
                                                                         "value": 0}), S.Fault("wait", 0.5)],
                                    [S.Failing("ab", "^fail")])
    assert T.loads(BASE).scenario is None


def test_a_fault_naming_a_mapping_is_an_error_not_a_crash():
    errs = errors(BASE + """scenario:
  faults:
    - sysctl: {in: {x: 1}, key: net.ipv4.ip_forward, value: 0}
    - link-down: {node: [n1]}
    - replace: {pod: {a: 1}}
  failing: [{check: ab}]
""")
    assert "t.yaml:14: scenario.faults[0].sysctl.in: unknown target {'x': 1}" in errs
    assert "t.yaml:15: scenario.faults[1].link-down.node: unknown node ['n1']" in errs
    assert "t.yaml:16: scenario.faults[2].replace.pod: unknown pod {'a': 1}" in errs


def test_a_check_type_that_is_a_list_is_an_error_not_a_crash():
    errs = errors(BASE.replace("{type: reach,", "{type: [reach],"))
    assert any("checks[0].type: must be one of reach, mtu" in e for e in errs), errs
