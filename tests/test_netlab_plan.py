"""Build plans as data, state-file teardown with fakes (no root needed)."""
from __future__ import annotations

import json
import os


from netlab.lab import plan as P
from netlab.base import state as S
from netlab.lab.teardown import teardown
from netlab.lab import topology as T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(fname: str, **kw) -> T.Topology:
    return T.load(os.path.join(REPO, "topologies", fname), **kw)


def test_names_are_scoped_by_lab():
    a = P.make_plan(load("default.yaml"), "/tmp/x")
    b = P.make_plan(load("default.yaml", name="other"), "/tmp/y")
    assert not set(a.namespaces) & set(b.namespaces)
    assert all(n.startswith("nl-default-") for n in a.namespaces)
    assert "nl-default-n-node1" in a.namespaces and "nl-default-p-web" in a.namespaces


def test_step_order_and_kinds():
    plan = P.make_plan(load("default.yaml"), "/tmp/lab")
    kinds = [s.kind for s in plan.steps]
    assert kinds[0] == "labdir" and kinds[1] == "netns"
    # every namespace exists before anything is put in it; attachments come last
    first_attach = kinds.index("attach")
    assert all(k == "attach" for k in kinds[first_attach:])
    assert kinds.index("dnsmasq") < first_attach
    assert kinds.count("attach") == len(plan.topology.pods)


def test_no_step_targets_the_root_namespace():
    plan = P.make_plan(load("default.yaml"), "/tmp/lab")
    for s in plan.steps:
        for key in ("ns", "switch_ns", "node_ns", "netns"):
            if key in s.params:
                assert s.params[key].startswith("nl-default-"), (s.kind, s.params)


def test_bridge_conflist_per_node():
    topo = load("default.yaml")
    w = topo.networks["podnet"]
    c1 = P.render_conflist(topo, w, "node1", "/tmp/lab")
    c2 = P.render_conflist(topo, w, "node2", "/tmp/lab")
    br = c1["plugins"][0]
    assert br["type"] == "bridge" and br["isGateway"] and br["mtu"] == 1500
    assert br["ipam"]["ranges"] == [[{"subnet": "10.244.0.0/24", "gateway": "10.244.0.1"}]]
    assert c2["plugins"][0]["ipam"]["ranges"][0][0]["subnet"] == "10.244.1.0/24"
    assert br["ipam"]["dataDir"] == "/tmp/lab/ipam/node1"
    assert [p["type"] for p in c1["plugins"]] == ["bridge", "portmap", "bandwidth"]
    assert "/var/lib/cni" not in json.dumps(c1)


def test_overlay_conflist_slices_one_subnet():
    topo = load("default.yaml")
    w = topo.networks["overlay"]
    c2 = P.render_conflist(topo, w, "node2", "/tmp/lab")
    vx = c2["plugins"][0]
    assert vx["type"] == "vxlan" and vx["vni"] == 42 and vx["peers"] == ["192.168.100.11"]
    assert vx["localIP"] == "192.168.100.12"
    r = vx["ipam"]["ranges"][0][0]
    assert r == {"subnet": "10.250.0.0/24", "rangeStart": "10.250.0.66", "rangeEnd": "10.250.0.126",
                 "gateway": "10.250.0.65"}
    # a gateway per node, so no anycast gateway MAC (nodes must reach remote pods)
    assert vx["isGateway"] is True and vx["anycastGateway"] is False
    c1 = P.render_conflist(topo, w, "node1", "/tmp/lab")
    assert c1["plugins"][0]["ipam"]["ranges"][0][0]["gateway"] != r["gateway"]


def test_template_rendering_keeps_types():
    out = P.render_template({"a": "${peers}", "b": "x-${nodeName}", "c": ["${mtu}"], "d": "${unknown}"},
                            {"peers": ["1.1.1.1"], "nodeName": "n1", "mtu": 1400})
    assert out == {"a": ["1.1.1.1"], "b": "x-n1", "c": [1400], "d": "${unknown}"}


def test_user_conflist_gets_a_lab_ipam_dir():
    text = """name: t
nodes: {n1: {}}
networks:
  podnet:
    subnet: 10.244.0.0/16
    conflist:
      cniVersion: 0.4.0
      plugins:
        - {type: bridge, bridge: mybr, ipam: {type: host-local, subnet: "${podCIDR}"}}
pods: {a: {node: n1, network: podnet}}
"""
    topo = T.loads(text)
    c = P.render_conflist(topo, topo.networks["podnet"], "n1", "/lab")
    assert c["name"] == "podnet" and c["cniVersion"] == "0.4.0"
    assert c["plugins"][0]["ipam"] == {"type": "host-local", "subnet": "10.244.0.0/24", "dataDir": "/lab/ipam/n1"}


def test_resolv_conf_like_kubelet():
    topo = load("dns-ndots.yaml")
    rc = P.resolv_conf(topo, topo.pods["client"])
    assert "nameserver 192.168.80.2\n" in rc
    assert "search prod.svc.cluster.local svc.cluster.local cluster.local\n" in rc
    assert "options ndots:5\n" in rc
    assert "options ndots:1\n" in P.resolv_conf(topo, topo.pods["lean"])


def test_capability_and_cni_args():
    topo = load("portmap-bandwidth.yaml")
    web, slow = topo.pods["web"], topo.pods["slow"]
    assert P.capability_args(web) == {"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]}
    bw = P.capability_args(slow)["bandwidth"]
    assert bw["ingressRate"] == 20_000_000 and bw["egressRate"] == 20_000_000 and bw["ingressBurst"] > 0
    args = P.cni_args(load("bridge.yaml"), load("bridge.yaml").pods["a1"])
    assert args.startswith("IgnoreUnknown=1;") and "K8S_POD_NAME=a1" in args and args.endswith("IP=10.244.0.10")


def test_dnsmasq_has_no_upstream():
    topo = load("dns-ndots.yaml")
    argv = P.dnsmasq_argv(topo, "/lab")
    assert argv[0] == "dnsmasq" and "--no-resolv" in argv and "--no-hosts" in argv
    assert "--local=/cluster.local/" in argv and "--conf-file=/dev/null" in argv
    assert "--host-record=api.example.org,192.168.80.200" in argv
    assert not any(a.startswith("--server") for a in argv)


def test_routes_between_nodes_and_from_the_switch_side():
    plan = P.make_plan(load("bridge.yaml"), "/lab")
    routes = {s.params["ns"]: s.params["routes"] for s in plan.steps if s.kind == "routes"}
    assert routes["nl-bridge-n-node1"] == [{"dst": "10.244.1.0/24", "via": "192.168.50.12"}]
    assert {"dst": "10.244.0.0/24", "via": "192.168.50.11"} in routes["nl-bridge-dns"]


def test_container_mode_is_an_alias_of_the_owner():
    plan = P.make_plan(load("modes.yaml"), "/lab")
    alias = [s for s in plan.steps if s.kind == "netns_alias"]
    assert len(alias) == 1 and alias[0].params == {"name": "nl-modes-p-sidecar", "target": "nl-modes-p-app", "pod": "sidecar"}
    assert plan.endpoints["hostpod"].netns == "nl-modes-n-node2"
    assert not [s for s in plan.steps if s.kind == "attach" and s.params["pod"] in ("hostpod", "isolated", "sidecar")]


# --------------------------------------------------------------------------- state

def test_state_teardown_is_idempotent_and_keeps_going(tmp_path):
    lab = tmp_path / "lab"
    lab.mkdir()
    st = S.create(str(lab), "t", "x.yaml")
    st.record("labdir", path=str(lab), created=True)
    f1 = tmp_path / "kept-elsewhere.txt"
    f1.write_text("x")
    st.record("file", path=str(f1))
    st.record("attach", pod="a", node_ns="n", netns="p")
    st.record("attach", pod="b", node_ns="n", netns="p")
    calls = []

    def detach(res, _st):
        calls.append(res["pod"])
        if res["pod"] == "b" and calls.count("b") == 1:
            raise RuntimeError("plugin failed")

    errs = teardown(st, detach)
    assert sorted(calls) == ["a", "b"] and len(errs) == 1 and "plugin failed" in errs[0]
    assert not f1.exists()                    # kept going past the error
    st2 = S.load(str(lab))
    assert st2.data["status"] == "remove-failed"
    assert [r.get("removed", False) for r in st2.resources] == [False, True, True, False]
    errs = teardown(st2, detach)            # run again: only what is left
    assert errs == [] and sorted(calls) == ["a", "b", "b"]
    assert not lab.exists()
    assert teardown(st2, detach) == []      # and again: nothing to do


def test_state_records_before_use_survive_a_crash(tmp_path):
    st = S.create(str(tmp_path), "t", "x.yaml")
    st.record("netns", name="nl-t-sw", role="switch")
    again = S.load(str(tmp_path))
    assert again.resources == [{"kind": "netns", "name": "nl-t-sw", "role": "switch"}]
    assert again.data["status"] == "building"


def test_kill_recorded_refuses_a_different_process():
    assert S.kill_recorded(os.getpid(), "0") is False       # wrong start time: not ours
    assert S.proc_starttime(os.getpid()) is not None


def test_late_dns_records_for_pods_known_after_add():
    topo = load("modes.yaml")
    recs = dict(P.late_records(topo, {"other": "10.248.1.2"}))
    assert recs == {"other.default.svc.cluster.local": "10.248.1.2",
                    "sidecar.default.svc.cluster.local": "10.248.0.10",     # shares app's namespace
                    "hostpod.default.svc.cluster.local": "192.168.90.12"}   # its node's address
    assert "--addn-hosts=/lab/pods.hosts" in P.dnsmasq_argv(topo, "/lab")


def test_etc_netns_removed_by_the_last_lab_only_if_netlab_made_it(tmp_path):
    """Labs come and go in any order: /etc/netns goes with the last lab's entries
    when netlab created it (marked), and never when it was already there."""
    parent = str(tmp_path / "netns")
    S.make_etc_netns(parent)
    os.makedirs(os.path.join(parent, "lab-a-pod"))
    os.makedirs(os.path.join(parent, "lab-b-pod"))
    os.rmdir(os.path.join(parent, "lab-a-pod"))        # lab A down first
    S.remove_etc_netns_if_ours(parent)
    assert os.path.isdir(parent)                         # lab B still has entries
    os.rmdir(os.path.join(parent, "lab-b-pod"))          # then lab B (which did not create it)
    S.remove_etc_netns_if_ours(parent)
    assert not os.path.exists(parent)
    theirs = str(tmp_path / "system-netns")              # made by someone else: stays
    os.makedirs(theirs)
    S.remove_etc_netns_if_ours(theirs)
    assert os.path.isdir(theirs)
