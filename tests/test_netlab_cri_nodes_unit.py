"""Nodes that run containerd (``runtime: containerd``, ADR 0025): schema and plan (no root)."""
from __future__ import annotations

import os

import pytest

from netlab.lab import build as B
from netlab.lab import plan as P
from netlab.lab import topology as T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BASE = """
name: c1
nodes:
  n1: {runtime: containerd}
  n2: {}
networks:
  podnet: {type: bridge, subnet: 10.244.0.0/16}
  other: {type: bridge, subnet: 10.245.0.0/16}
pods:
%s
"""


def errors(pods: str, base: str = BASE) -> list[str]:
    with pytest.raises(T.TopologyError) as e:
        T.loads(base % pods)
    return e.value.errors


def test_runtime_defaults_to_netlab_and_takes_containerd():
    t = T.loads(BASE % "  a: {node: n1, network: podnet}\n  b: {node: n2, network: other}")
    assert t.nodes["n1"].runtime == "containerd" and t.nodes["n2"].runtime == "netlab"


def test_unknown_runtime_is_an_error_naming_the_choices():
    errs = errors("  a: {node: n1, network: podnet}", BASE.replace("{runtime: containerd}", "{runtime: crio}"))
    assert any("nodes.n1.runtime: must be one of netlab, containerd, got 'crio'" in e for e in errs), errs


@pytest.mark.parametrize("pod,where,says", [
    ("{node: n1, mode: host}", "pods.a.mode", "mode host would need a sandbox with host networking"),
    ("{node: n1, mode: none}", "pods.a.mode", "its pods are CRI sandboxes"),
    ("{node: n1, network: podnet, ip: 10.244.0.9}", "pods.a.ip", "CRI has no field for a pod's address"),
    ("{node: n1, network: podnet, ifname: net1}", "pods.a.ifname", "always names the pod's interface eth0"),
    ("{node: n1, network: podnet, bandwidth: {rate: 10mbit, burst: 100000}}", "pods.a.bandwidth.burst",
     "carry rates only (containerd sets the burst itself)"),
    ("{node: n1, network: podnet, impair: {delay: 10ms}}", "pods.a.impair", "netlab's own runtime only"),
])
def test_what_cri_cannot_make_is_refused_with_the_reason(pod, where, says):
    errs = errors(f"  a: {pod}")
    assert any(where in e and says in e for e in errs), errs


def test_container_pods_cannot_join_a_sandbox():
    errs = errors("  a: {node: n1, network: podnet}\n  b: {node: n1, mode: 'container:a'}")
    assert any("pods.b.mode" in e and "mode container:a" in e for e in errs), errs


def test_one_network_per_containerd_node():
    errs = errors("  a: {node: n1, network: podnet}\n  b: {node: n1, network: other}")
    assert any("nodes.n1.runtime" in e and "one CNI network per node" in e
               and "other: b; podnet: a" in e for e in errs), errs


def test_a_user_conflist_above_1_0_0_is_refused_for_containerd_1_6():
    base = BASE.replace("podnet: {type: bridge, subnet: 10.244.0.0/16}",
                        "podnet: {type: bridge, subnet: 10.244.0.0/16, conflist: "
                        "{cniVersion: 1.1.0, plugins: [{type: bridge}]}}")
    errs = errors("  a: {node: n1, network: podnet}", base)
    assert any("networks.podnet.conflist" in e and "reads results up to 1.0.0" in e for e in errs), errs
    ok = base.replace("cniVersion: 1.1.0", "cniVersion: 1.0.0")
    T.loads(ok % "  a: {node: n1, network: podnet}")


def test_the_same_pods_on_a_netlab_node_are_fine():
    T.loads(BASE.replace("{runtime: containerd}", "{}") %
            "  a: {node: n1, network: podnet, ip: 10.244.0.9, ifname: net1}")


def test_shipped_containerd_lab_plan():
    topo = T.load(os.path.join(REPO, "topologies", "containerd.yaml"))
    plan = P.make_plan(topo, "/tmp/lab")
    ctd = [s for s in plan.steps if s.kind == "containerd"]
    assert [s.params["node"] for s in ctd] == ["node1"]
    c = ctd[0].params
    assert c["workdir"] == "/tmp/lab/ctd-node1" and c["network"] == "podnet"
    assert c["conflist"]["cniVersion"] == T.CRI_CNI_VERSION            # containerd 1.6's libcni
    assert c["conflist"]["plugins"][0]["ipam"]["dataDir"] == "/tmp/lab/ipam/node1"
    sandboxes = {s.params["pod"]: s.params for s in plan.steps if s.kind == "sandbox"}
    attaches = {s.params["pod"] for s in plan.steps if s.kind == "attach"}
    assert set(sandboxes) == {"web", "slow"} and attaches == {"peer", "client"}
    web, slow = sandboxes["web"]["spec"], sandboxes["slow"]["spec"]
    assert web["ports"] == [{"container_port": 80, "host_port": 8080, "protocol": "TCP"}]
    assert slow["annotations"] == {"kubernetes.io/ingress-bandwidth": "20000000",
                                   "kubernetes.io/egress-bandwidth": "20000000"}
    assert web["namespace"] == "default" and web["dns"]["servers"] == [topo.dns.address]
    assert web["dns"]["options"] == ["ndots:5"]
    assert web["dns"]["searches"][0] == "default.svc.cluster.local"
    # containerd makes the pod namespaces: netlab creates none for them, but names them
    made = {s.params["name"] for s in plan.steps if s.kind == "netns"}
    assert "nl-containerd-p-web" not in made and "nl-containerd-p-peer" in made
    assert plan.endpoints["web"].netns == "nl-containerd-p-web"
    assert "nl-containerd-p-web" in plan.namespaces
    # the plugins containerd needs: loopback for every sandbox, then the chain
    assert {"loopback", "bridge", "host-local", "portmap", "bandwidth"} <= B.needed_types(plan)


def test_reference_plugins_are_refused_for_an_overlay_on_a_containerd_node():
    t = T.loads("""
name: c2
nodes:
  n1: {runtime: containerd}
networks:
  ov: {type: overlay, subnet: 10.244.0.0/16, vni: 7}
pods:
  a: {node: n1, network: ov}
""")
    why = B.refuse_plugins(P.make_plan(t, "/tmp/lab"), "reference")
    assert why and "network ov" in why and "needs our vxlan plugin" in why


def test_a_containerd_node_without_containerd_installed_is_refused_before_building(monkeypatch):
    plan = P.make_plan(T.load(os.path.join(REPO, "topologies", "containerd.yaml")), "/tmp/lab")
    real = B.shutil.which
    monkeypatch.setattr(B.shutil, "which", lambda x: None if x == "runc" else real(x))
    why = B.refuse_plugins(plan, "ours")
    assert why and "node node1 runs containerd, but runc is not installed" in why
