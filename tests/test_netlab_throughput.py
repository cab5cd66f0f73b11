"""throughput check: schema, and a lab where an unreachable `expect.min` fails
while the measured figures (rate, counters, MTU) are still reported."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from netlab.lab import topology as T
from tests.conftest import unique_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = """
name: tp
underlay: {subnet: 192.168.71.0/24}
nodes: {n1: {}, n2: {}}
networks:
  net: {type: bridge, subnet: 10.251.0.0/16, nodePrefix: 24}
pods:
  a: {node: n1, network: net}
  b: {node: n2, network: net}
checks:
  - %s
"""


def test_schema_defaults_and_min_rate():
    t = T.loads(LAB % '{type: throughput, from: a, to: b, streams: 3, expect: {min: "150 Mbit/s"}}')
    c = t.checks[0]
    assert (c.params["streams"], c.params["seconds"], c.params["min"]) == (3, 3, 150_000_000)
    assert c.name == "throughput a -> b x3"
    assert T.loads(LAB % "{type: throughput, from: a, to: b}").checks[0].params["min"] == 0


@pytest.mark.parametrize("bad,msg", [
    ('{type: throughput, from: a, to: b, expect: {min: "fast"}}', "expect.min"),
    ("{type: throughput, from: a, to: b, streams: 0}", "streams"),
    ("{type: throughput, from: a, to: zz}", "unknown pod"),
    ("{type: throughput, from: a, to: b, expect: {max: 1}}", "unknown key"),
])
def test_schema_errors(bad, msg):
    with pytest.raises(T.TopologyError) as e:
        T.loads(LAB % bad)
    assert msg in str(e.value)


def netlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netlab", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=240)


@pytest.mark.root
@pytest.mark.slow
def test_unreachable_minimum_fails_with_figures(tmp_path):
    f = tmp_path / "tp.yaml"
    f.write_text(LAB % '{type: throughput, from: a, to: b, seconds: 1, expect: {min: "5000 Gbit/s"}}')
    name = unique_name("t").replace("_", "-")[:20].lower().strip("-")
    lab_dir = str(tmp_path / "lab")
    try:
        up = netlab("up", str(f), "--name", name, "--lab-dir", lab_dir, "-q", "--no-checks")
        assert up.returncode == 0, up.stderr[-2000:]
        v = netlab("verify", "--lab-dir", lab_dir, "--json")
        c = json.loads(v.stdout)["checks"][0]
        assert v.returncode != 0 and not c["ok"], c
        assert "Mbit/s with 1 stream(s)" in c["observed"] and "do NOT corroborate" not in c["observed"]
        assert c["expected"] == ">= 5000000.00 Mbit/s"
        assert any("mtu 1500" in d and "TCP MSS" in d for d in c["details"]), c
        assert os.path.getsize(c["evidence"]) > 24
    finally:
        d = netlab("down", "--lab-dir", lab_dir)
    assert d.returncode == 0, d.stderr
