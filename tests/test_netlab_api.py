"""The Python API for labs (netlab.Lab): unit tests without root, and one
throwaway lab (its own namespaces, removed even when the test fails) brought
up, used through every method and taken down."""
from __future__ import annotations

import os

import pytest

import netlab
from netlab.lab.topology import TopologyError
from tests.test_netlab_labs import lab_name, leftovers

TOPO = """
name: {name}
underlay: {{subnet: 192.168.141.0/24}}
nodes: {{node1: {{}}}}
networks: {{podnet: {{type: bridge, subnet: 10.241.0.0/16, nodePrefix: 24}}}}
dns: {{enabled: false}}
pods:
  client: {{node: node1, network: podnet}}
  web: {{node: node1, network: podnet}}
checks:
  - {{type: reach, from: client, to: web, name: client-web}}
  - {{type: reach, from: client, to: web, proto: tcp, port: 8080, name: client-web-tcp}}
"""


def _write(tmp_path, name: str = "apitest") -> str:
    path = tmp_path / "topo.yaml"
    path.write_text(TOPO.format(name=name))
    return str(path)


def test_lab_is_the_package_api_and_loads_lazily():
    import subprocess
    import sys
    code = "import sys, netlab; assert 'netlab.api' not in sys.modules; netlab.Lab; assert 'netlab.api' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert netlab.Lab is netlab.api.Lab
    with pytest.raises(AttributeError):
        netlab.NoSuchThing


def test_a_bad_topology_lists_its_errors_and_a_lab_not_up_refuses_use(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes: {n1: {}}\npods: {p: {node: nowhere}}\n")
    with pytest.raises(TopologyError) as e:
        netlab.Lab(str(bad))
    assert any("nowhere" in line for line in e.value.errors), e.value.errors
    lab = netlab.Lab(_write(tmp_path), lab_dir=str(tmp_path / "lab"))
    assert lab.netns("web") == "nl-apitest-p-web" and lab.netns("underlay") == "nl-apitest-sw"
    with pytest.raises(netlab.LabError, match="is not up"):
        lab.exec("web", ["true"])
    with pytest.raises(netlab.LabError, match="no pod or node 'nosuch'"):
        lab.netns("nosuch")
    lab.down()                  # nothing was built: nothing to do
    assert not os.path.exists(tmp_path / "lab")


@pytest.mark.root
@pytest.mark.slow
def test_a_lab_object_builds_runs_checks_traces_captures_and_removes_everything(tmp_path):
    name = lab_name()
    lab_dir = str(tmp_path / "lab")
    try:
        with netlab.Lab(_write(tmp_path, name), lab_dir=lab_dir) as lab:
            web = lab.address("web")
            assert web and web.startswith("10.241.")
            out = lab.exec("client", ["ping", "-c", "1", "-W", "2", web])
            assert out.returncode == 0, out.stdout + out.stderr
            results = lab.check()
            assert [r.name for r in results] == ["client-web", "client-web-tcp"]
            assert all(r.ok for r in results), [(r.name, r.observed) for r in results]
            assert all(os.path.exists(r.evidence) for r in results)    # each verdict has its capture
            assert [r.name for r in lab.check(["client-web"])] == ["client-web"]
            with pytest.raises(netlab.LabError, match="no check named nosuch"):
                lab.check(["nosuch"])
            t = lab.trace("client", "web")
            assert "delivered" in t.verdict, lab.format_trace(t)
            pkts = lab.capture("web", bpf="icmp", during=lambda: lab.exec("client", ["ping", "-c", "2", web]))
            requests = [p for p in pkts if p.haslayer("ICMP") and p["ICMP"].type == 8 and p["IP"].dst == web]
            assert len(requests) == 2, [p.summary() for p in pkts]
            # a second handle on the running lab, as another process would get
            other = netlab.Lab.attach(lab_dir=lab_dir)
            assert other.name == name and other.address("web") == web
            assert other.exec("web", ["ip", "-4", "-br", "addr", "show", "eth0"]).stdout.split()[2].startswith(web)
        assert leftovers(name, lab_dir) == []
    finally:
        if os.path.exists(os.path.join(lab_dir, "state.json")):      # a failed assertion inside the with
            netlab.Lab.attach(lab_dir=lab_dir).down()
    assert leftovers(name, lab_dir) == []
