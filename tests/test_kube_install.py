"""The Kubernetes deployment: manifests and the node installer's logic, no cluster needed.

Pure tests (no root, no network): the manifests parse and have the shape a CNI
DaemonSet needs; conflists render from a node list + podCIDR; peer sync on
join/leave; atomic writes; the API client against a fake opener.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from ipam import config as ipam_config
from cninode import kube_install as ki
from plugins import bridge as br, portmap as pm, vxlan as vx

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


# ---------------------------------------------------------------------------
# helpers


def node_obj(name, ip=None, cidrs=(), ips=None, legacy=False):
    spec = {}
    if cidrs:
        if legacy:
            spec["podCIDR"] = cidrs[0]
        else:
            spec["podCIDR"] = cidrs[0]
            spec["podCIDRs"] = list(cidrs)
    addrs = [{"type": "Hostname", "address": name}]
    for a in (ips if ips is not None else ([ip] if ip else [])):
        addrs.append({"type": "InternalIP", "address": a})
    return {"kind": "Node", "metadata": {"name": name}, "spec": spec, "status": {"addresses": addrs}}


def node_list(*objs, rv="100"):
    return {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": rv},
            "items": list(objs)}


THREE = node_list(
    node_obj("n1", "192.168.10.11", ["10.244.0.0/24"]),
    node_obj("n2", "192.168.10.12", ["10.244.1.0/24"]),
    node_obj("n3", "192.168.10.13", ["10.244.2.0/24"]),
)


def manifests():
    docs = {}
    for f in sorted(DEPLOY.glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                docs.setdefault(d["kind"], []).append(d)
    return docs


def configmap():
    (cm,) = [d for d in manifests()["ConfigMap"] if d["metadata"]["name"] == "cnilab-config"]
    return cm


def template(mode):
    return json.loads(configmap()["data"][f"{mode}.conflist.json"])


def daemonset():
    (ds,) = manifests()["DaemonSet"]
    return ds


def mounts(container):
    return {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}


# ---------------------------------------------------------------------------
# manifests


def test_manifests_parse_and_kinds():
    docs = manifests()
    assert set(docs) >= {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap",
                         "DaemonSet"}
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        assert (DEPLOY / res).is_file(), res
    # the image override applies to the image the DaemonSet names
    spec = daemonset()["spec"]["template"]["spec"]
    names = {c["image"].rsplit(":", 1)[0] for c in [*spec["initContainers"], *spec["containers"]]}
    assert names == {i["name"] for i in kust["images"]}


def test_daemonset_shape():
    ds = daemonset()
    assert ds["apiVersion"] == "apps/v1"
    spec = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= \
        ds["spec"]["template"]["metadata"]["labels"].items()
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    # a node is NotReady (and tainted) until a CNI config exists: we must still run there
    tol = spec["tolerations"]
    assert {"operator": "Exists", "effect": "NoSchedule"} in tol
    assert {"operator": "Exists", "effect": "NoExecute"} in tol

    vols = {v["name"]: v for v in spec["volumes"]}
    host = {v["hostPath"]["path"]: n for n, v in vols.items() if "hostPath" in v}
    assert "/opt/cni/bin" in host and "/etc/cni/net.d" in host and "/opt/cnilab" in host
    assert "/run/cnilab" in host and "/var/lib/cni" in host

    (init,) = spec["initContainers"]
    m = mounts(init)
    assert m[host["/opt/cni/bin"]] == "/host/opt/cni/bin"
    assert m[host["/etc/cni/net.d"]] == "/etc/cni/net.d"
    # paths under /opt/cnilab end up in the launchers: same path inside and outside
    assert m[host["/opt/cnilab"]] == "/opt/cnilab"
    env = {e["name"]: e for e in init["env"]}
    assert env["CNILAB_BIN_DIR"]["value"] == m[host["/opt/cni/bin"]]
    assert env["CNILAB_HOST_RUNTIME_DIR"]["value"] == "/opt/cnilab"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # the image's runtime must not live under a path a host mount hides
    src = env["CNILAB_RUNTIME_SRC"]["value"]
    assert not any(src.startswith(p) for c in [init, *spec["containers"]] for p in mounts(c).values())
    assert init["securityContext"]["privileged"] is False

    conts = {c["name"]: c for c in spec["containers"]}
    assert set(conts) == {"sync", "agent"}
    assert mounts(conts["sync"])[host["/etc/cni/net.d"]] == "/etc/cni/net.d"
    assert conts["sync"]["securityContext"]["privileged"] is False
    assert "NET_ADMIN" in conts["sync"]["securityContext"]["capabilities"]["add"]
    # the agent does the plugins' work: netns entry, links, nftables, /proc/sys
    agent = conts["agent"]
    assert agent["securityContext"]["privileged"] is True
    am = mounts(agent)
    assert am[host["/run/cnilab"]] == "/run/cnilab"
    assert am[host["/var/lib/cni"]] == "/var/lib/cni"  # same IPAM store as fallback calls
    # it runs the host copy (the launchers' code tree, else it refuses their calls)
    assert am[host["/opt/cnilab"]] == "/opt/cnilab"
    assert agent["command"][0] == f"/opt/cnilab/current/bin/{ki.WRAPPER_NAME}"
    assert agent["command"][1:5] == ["-m", "netlab", "agent", "run"]
    from netlab.cli import cmd_agent
    from cninode import launcher
    sock = agent["command"][agent["command"].index("--socket") + 1]
    assert sock == launcher.DEFAULT_SOCKET and sock.startswith(am[host["/run/cnilab"]] + "/")
    agent_cli = __import__("argparse").ArgumentParser()
    cmd_agent.register(agent_cli.add_subparsers())
    agent_cli.parse_args(agent["command"][3:])  # a valid `netlab agent run` command line
    probe = agent["livenessProbe"]["exec"]["command"]
    assert probe[:5] == agent["command"][:4] + ["status"]
    assert probe[probe.index("--socket") + 1] == sock
    agent_cli.parse_args(probe[3:])
    assert "readinessProbe" not in agent  # optional: must not block rollouts
    netns = [vm for vm in agent["volumeMounts"] if vm["mountPath"] == "/run/netns"]
    assert netns and netns[0]["mountPropagation"] == "HostToContainer"
    # one image for all three, and the command runs our module
    images = {c["image"] for c in [init, *conts.values()]}
    assert len(images) == 1
    for c in (init, conts["sync"]):
        assert c["command"][0] == f"{src}/bin/{ki.WRAPPER_NAME}"
        assert c["command"][1:3] == ["-m", "cninode.kube_install"]
        ki.build_parser().parse_args([c["command"][3]])  # a real subcommand


def test_daemonset_config_refs_exist():
    cm = configmap()
    spec = daemonset()["spec"]["template"]["spec"]
    for c in [*spec["initContainers"], *spec["containers"]]:
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
            if ref:
                assert ref["name"] == cm["metadata"]["name"]
                assert ref["key"] in cm["data"], ref
    assert cm["data"]["mode"] in ki.MAIN_TYPES
    assert f"{cm['data']['mode']}.conflist.json" in cm["data"]
    # the sync container finds the template where the ConfigMap is mounted
    (vol,) = [v for v in spec["volumes"] if "configMap" in v]
    assert vol["configMap"]["name"] == cm["metadata"]["name"]
    for c in [*spec["initContainers"], spec["containers"][0]]:
        assert mounts(c)[vol["name"]] == ki.CONFIG_DIR


def test_rbac_allows_only_node_reads():
    docs = manifests()
    (role,) = docs["ClusterRole"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"],
                              "verbs": ["get", "list", "watch"]}]
    (binding,) = docs["ClusterRoleBinding"]
    (sa,) = docs["ServiceAccount"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    assert daemonset()["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_containerfile_consistent_with_manifest():
    text = (DEPLOY / "Containerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
    spec = daemonset()["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    env = {e["name"]: e.get("value") for e in init["env"]}
    src = env["CNILAB_RUNTIME_SRC"]
    # the tree the init container copies is the one the image builds, with the
    # wrapper made by our own code, and the native libraries where it looks
    assert f"tar -xz -C {src} " in text
    assert f"-m cninode.kube_install wrapper \\\n      --output {src}/bin/{ki.WRAPPER_NAME}" in text
    assert f"{src}/{ki.NATIVE_LIB_DIR}/" in text
    assert "libnftables.so.1" in text
    assert f'ENTRYPOINT ["{src}/bin/{ki.WRAPPER_NAME}", "-m", "cninode.kube_install"]' in text


@pytest.mark.parametrize("mode", ["bridge", "vxlan"])
def test_configmap_templates_render(mode):
    tpl = ki.load_template_text(configmap()["data"][f"{mode}.conflist.json"])
    r = ki.render(tpl, "n2", ki.nodes_from_list(THREE), ["10.244.0.0/16"], underlay="eth0")
    text = json.dumps(r.conflist)
    assert "{{" not in text
    first = r.conflist["plugins"][0]
    assert first["type"] == mode
    types = [p["type"] for p in r.conflist["plugins"]]
    assert types == [mode, "portmap", "bandwidth"]
    assert r.conflist["plugins"][1]["capabilities"] == {"portMappings": True}
    assert r.conflist["plugins"][2]["capabilities"] == {"bandwidth": True}
    assert first["ipam"]["type"] == "host-local"
    if mode == "vxlan":
        assert first["peers"] == ["192.168.10.11", "192.168.10.13"]
        assert first["localIP"] == "192.168.10.12"
        assert first["underlayInterface"] == "eth0"


def test_vxlan_template_fields_accepted_by_our_plugin():
    """Field names in the shipped template are the ones plugins/vxlan.py parses."""
    tpl = template("vxlan")
    r = ki.render(tpl, "n1", ki.nodes_from_list(THREE), ["10.244.0.0/16"], underlay="eth0")
    conf = vx.parse(r.conflist["plugins"][0], "cnilab")
    assert conf.peers == ("192.168.10.12", "192.168.10.13")
    assert conf.local_ip == "192.168.10.11" and conf.underlay == "eth0"
    assert conf.is_gateway and conf.ip_masq and conf.vni == 1 and conf.port == 4789
    assert conf.is_default_gateway
    assert conf.bridge == "vxbr1"


def libcni_view(conflist, i):
    """Plugin i's config as libcni hands it over (name and cniVersion injected)."""
    return dict(conflist["plugins"][i], name=conflist["name"], cniVersion=conflist["cniVersion"])


@pytest.mark.parametrize("mode", ["bridge", "vxlan"])
@pytest.mark.parametrize("stack", ["v4", "dual"])
def test_rendered_conflists_pass_our_plugins_parsers(mode, stack):
    """Every field the templates use is one our plugins (and host-local) accept."""
    from plugins.core.config import parse_netconf
    from plugins.core.skel import Call, CmdArgs
    if stack == "v4":
        nodes, clusters = ki.nodes_from_list(THREE), ["10.244.0.0/16"]
    else:
        nodes = ki.nodes_from_list(node_list(
            node_obj("a", ips=["192.168.10.11", "fd00::11"],
                     cidrs=["10.244.0.0/24", "fd00:10:244::/64"]),
            node_obj("b", ips=["192.168.10.12", "fd00::12"],
                     cidrs=["10.244.1.0/24", "fd00:10:244:1::/64"])))
        clusters = ["10.244.0.0/16", "fd00:10:244::/56"]
    r = ki.render(template(mode), sorted(nodes)[0], nodes, clusters, underlay="eth0")
    args = CmdArgs(command="ADD", container_id="c1", netns="/run/netns/x", ifname="eth0",
                   args="", path=["/opt/cni/bin"])
    main = parse_netconf(libcni_view(r.conflist, 0))
    if mode == "bridge":
        c = br.parse_conf(Call(args=args, conf=main), strict=False)
        assert c.bridge == "cni0" and c.is_gateway and c.is_default_gateway
        assert c.ip_masq is False and c.hairpin
    else:
        c = vx.parse(main.raw, main.name)
        assert c.is_gateway and c.is_default_gateway and c.ip_masq and c.bridge == "vxbr1"
    ipc = ipam_config.load(main, {}, need_ranges=True)
    assert len(ipc.ranges if hasattr(ipc, "ranges") else ipc.range_sets) == (1 if stack == "v4" else 2)
    pm.parse_config(parse_netconf(libcni_view(r.conflist, 1)))


# ---------------------------------------------------------------------------
# rendering


def test_node_parsing_prefers_podcidrs_and_drops_garbage():
    n = ki.node_from_obj(node_obj("a", ips=["10.0.0.1", "nonsense", "fd00::1"],
                                  cidrs=["10.244.3.0/24", "fd00:10:244:3::/64"]))
    assert n.internal_ips == ("10.0.0.1", "fd00::1")
    assert n.pod_cidrs == ("10.244.3.0/24", "fd00:10:244:3::/64")
    legacy = ki.node_from_obj(node_obj("b", "10.0.0.2", ["10.244.4.0/24"], legacy=True))
    assert legacy.pod_cidrs == ("10.244.4.0/24",)
    bad = ki.node_from_obj(node_obj("c", "10.0.0.3", ["10.244.5.1/24"]))  # host bits set
    assert bad.pod_cidrs == ()
    with pytest.raises(ki.InstallError):
        ki.node_from_obj({"metadata": {}})


def test_bridge_ranges_are_the_node_pod_cidrs_dual_stack():
    n = ki.Node("a", ("10.0.0.1",), ("10.244.3.0/24", "fd00:10:244:3::/64"))
    assert ki.pod_ranges(n, overlay=False) == [[{"subnet": "10.244.3.0/24"}],
                                               [{"subnet": "fd00:10:244:3::/64"}]]


def test_overlay_ranges_are_a_slice_of_the_cluster_cidr():
    n = ki.Node("a", ("10.0.0.1",), ("10.244.3.0/24",))
    assert ki.pod_ranges(n, True, ["10.244.0.0/16"]) == [[{
        "subnet": "10.244.0.0/16", "rangeStart": "10.244.3.2",
        "rangeEnd": "10.244.3.254", "gateway": "10.244.3.1"}]]
    v6 = ki.Node("b", ("fd00::2",), ("fd00:10:244:3::/64",))
    (rs,) = ki.pod_ranges(v6, True, ["10.244.0.0/16", "fd00:10:244::/56"])
    assert rs == [{"subnet": "fd00:10:244::/56", "rangeStart": "fd00:10:244:3::2",
                   "rangeEnd": "fd00:10:244:3:ffff:ffff:ffff:fffe",
                   "gateway": "fd00:10:244:3::1"}]


def test_overlay_slices_of_different_nodes_never_overlap():
    import ipaddress
    nodes = ki.nodes_from_list(THREE)
    spans = []
    for n in nodes.values():
        (r,) = ki.pod_ranges(n, True, ["10.244.0.0/16"])[0]
        lo, hi = ipaddress.ip_address(r["rangeStart"]), ipaddress.ip_address(r["rangeEnd"])
        gw = ipaddress.ip_address(r["gateway"])
        assert not lo <= gw <= hi
        spans.append((lo, hi, gw))
    spans.sort()
    for (_, hi, _), (lo2, _, _) in zip(spans, spans[1:]):
        assert hi < lo2
    assert len({g for *_, g in spans}) == 3  # each node's bridge its own gateway address


def test_pod_cidr_errors():
    with pytest.raises(ki.NotReady, match="no spec.podCIDR"):
        ki.pod_ranges(ki.Node("a", ("10.0.0.1",), ()), False)
    with pytest.raises(ki.InstallError, match="not inside any cluster CIDR"):
        ki.pod_ranges(ki.Node("a", ("10.0.0.1",), ("10.245.0.0/24",)), True, ["10.244.0.0/16"])
    with pytest.raises(ki.InstallError, match="too small"):
        ki.pod_ranges(ki.Node("a", ("10.0.0.1",), ("10.244.0.0/31",)), True, ["10.244.0.0/16"])


def test_peers_exclude_self_filter_family_and_sort():
    nodes = {
        "a": ki.Node("a", ("10.0.0.9",), ()),
        "b": ki.Node("b", ("fd00::5", "10.0.0.10"), ()),
        "c": ki.Node("c", ("10.0.0.2",), ()),
        "d": ki.Node("d", (), ()),            # no address yet: not a peer
        "e": ki.Node("e", ("fd00::3",), ()),  # v6 only
    }
    assert ki.peers_for("a", nodes, 4) == ["10.0.0.2", "10.0.0.10"]
    assert ki.peers_for("a", nodes, 6) == ["fd00::3", "fd00::5"]


def test_render_substitutes_typed_values_and_keeps_template():
    tpl = {"cniVersion": "1.0.0", "name": "x", "plugins": [
        {"type": "vxlan", "vni": 7, "peers": "{{peers}}", "localIP": "{{ nodeIP }}",
         "ipam": {"type": "host-local", "ranges": "{{podRanges}}"},
         "note": "{{nodeName}}", "cidrs": ["{{podCIDR}}", "{{clusterCIDR}}"]}]}
    before = json.dumps(tpl)
    r = ki.render(tpl, "n3", ki.nodes_from_list(THREE), ["10.244.0.0/16"])
    p = r.conflist["plugins"][0]
    assert p["peers"] == ["192.168.10.11", "192.168.10.12"] and r.peers == tuple(p["peers"])
    assert p["localIP"] == "192.168.10.13" and p["note"] == "n3" and p["vni"] == 7
    assert p["cidrs"] == ["10.244.2.0/24", "10.244.0.0/16"]
    assert p["ipam"]["ranges"][0][0]["rangeStart"] == "10.244.2.2"
    assert json.dumps(tpl) == before


@pytest.mark.parametrize("bad, match", [
    ("{{podRange}}", "unknown or misplaced"),
    ("prefix-{{nodeName}}", "unknown or misplaced"),
    ("{{underlayInterface}}", "no value on this node"),
])
def test_render_rejects_bad_placeholders(bad, match):
    tpl = {"cniVersion": "1.0.0", "name": "x", "plugins": [
        {"type": "bridge", "x": bad, "ipam": {"type": "host-local", "ranges": "{{podRanges}}"}}]}
    with pytest.raises(ki.InstallError, match=match):
        ki.render(tpl, "n1", ki.nodes_from_list(THREE))


def test_render_needs_node_cluster_cidr_and_main_plugin():
    tpl = template("vxlan")
    nodes = ki.nodes_from_list(THREE)
    with pytest.raises(ki.NotReady):
        ki.render(tpl, "ghost", nodes, ["10.244.0.0/16"])
    with pytest.raises(ki.InstallError, match="cluster pod CIDR"):
        ki.render(tpl, "n1", nodes, [])
    with pytest.raises(ki.InstallError, match="first plugin"):
        ki.render({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "portmap"}]},
                  "n1", nodes)
    no_ip = dict(nodes, n1=ki.Node("n1", (), ("10.244.0.0/24",)))
    with pytest.raises(ki.NotReady, match="InternalIP"):
        ki.render(tpl, "n1", no_ip, ["10.244.0.0/16"], underlay="eth0")
    with pytest.raises(ki.NotReady, match="InternalIP"):  # the caller found no underlay either
        ki.render(tpl, "n1", no_ip, ["10.244.0.0/16"])
    v6_only = {"cniVersion": "1.0.0", "name": "x", "plugins": [
        {"type": "bridge", "ipam": {"type": "host-local", "ranges": "{{podRanges}}"},
         "x": "{{clusterCIDR}}"}]}
    with pytest.raises(ki.InstallError, match="one per address family"):
        ki.render(v6_only, "n1", nodes, ["fd00::/56"])
    spaced = json.loads(json.dumps(tpl).replace('"{{peers}}"', '" {{ peers }} "'))
    r = ki.render(spaced, "n1", nodes, ["10.244.0.0/16"], underlay="eth0")
    assert r.peers == ("192.168.10.12", "192.168.10.13")


def test_template_loading_errors(tmp_path):
    p = tmp_path / "t.json"
    with pytest.raises(ki.InstallError, match="not found"):
        ki.load_template(p)
    p.write_text("{nope")
    with pytest.raises(ki.InstallError, match="not valid JSON"):
        ki.load_template(p)
    p.write_text(json.dumps({"name": "x", "plugins": [{"type": "bridge"}]}))
    with pytest.raises(ki.InstallError, match="cniVersion"):
        ki.load_template(p)


def test_mode_selects_template():
    assert ki.template_for_mode("bridge") == "/etc/cnilab/bridge.conflist.json"
    assert ki.template_for_mode("") == "/etc/cnilab/vxlan.conflist.json"
    with pytest.raises(ki.InstallError):
        ki.template_for_mode("calico")
    s = ki.Settings.from_env({"NODE_NAME": "n1", "CNILAB_MODE": "bridge",
                              "CNILAB_CLUSTER_CIDR": "10.244.0.0/16, fd00::/56"})
    assert s.cluster_cidrs == ("10.244.0.0/16", "fd00::/56")
    assert s.template_path.endswith("bridge.conflist.json")
    with pytest.raises(ki.InstallError, match="NODE_NAME"):
        ki.Settings.from_env({})
    with pytest.raises(ki.InstallError, match="CLUSTER_CIDR"):
        ki.Settings.from_env({"NODE_NAME": "n", "CNILAB_CLUSTER_CIDR": "10.244.0.1/16"})
    with pytest.raises(ki.InstallError, match="cluster-cidr"):
        ki.Settings.from_env({"NODE_NAME": "n"}, cluster_cidrs=("nonsense",))


# ---------------------------------------------------------------------------
# atomic write


def test_write_atomic_writes_replaces_and_skips_unchanged(tmp_path):
    p = tmp_path / "net.d" / "10-x.conflist"
    assert ki.write_atomic(p, b"one\n") is True
    assert p.read_bytes() == b"one\n"
    assert oct(p.stat().st_mode & 0o777) == "0o644"
    ino = p.stat().st_ino
    assert ki.write_atomic(p, b"one\n") is False
    assert p.stat().st_ino == ino  # untouched
    assert ki.write_atomic(p, b"two\n") is True
    assert p.read_bytes() == b"two\n" and p.stat().st_ino != ino  # a new file renamed in
    assert sorted(os.listdir(p.parent)) == ["10-x.conflist"]


def test_write_atomic_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "10-x.conflist"
    p.write_bytes(b"old")

    def boom(*a):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ki.os, "replace", boom)
    with pytest.raises(OSError):
        ki.write_atomic(p, b"new")
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["10-x.conflist"]


def test_temp_name_is_not_a_cni_config_name(tmp_path, monkeypatch):
    seen = []
    real = ki.os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        return real(src, dst)
    monkeypatch.setattr(ki.os, "replace", spy)
    ki.write_atomic(tmp_path / "10-x.conflist", b"{}")
    (name,) = seen
    # libcni loads only *.conf, *.conflist, *.json
    assert name.endswith(".tmp") and not name.endswith((".conf", ".conflist", ".json"))


# ---------------------------------------------------------------------------
# peer sync


def settings(tmp_path, **kw):
    tpl = tmp_path / "vxlan.conflist.json"
    tpl.write_text(json.dumps(template("vxlan")))
    return ki.Settings(node_name="n1", template_path=str(tpl), conf_dir=str(tmp_path / "net.d"),
                       cluster_cidrs=("10.244.0.0/16",), **kw)


def test_peer_sync_on_join_and_leave(tmp_path):
    s = settings(tmp_path)
    nodes_file = tmp_path / "nodes.json"
    src = ki.FileSource(nodes_file)
    syncer = ki.Syncer(s, ki.load_template(s.template_path), underlay_of=lambda ip: "eth0")

    nodes_file.write_text(json.dumps(node_list(*THREE["items"][:2])))
    r = syncer.step(src.list()[0])
    assert r.written and r.peers.added == ("192.168.10.12",)
    assert ki.conf_peers(ki.read_conflist(s.conflist_path)) == ["192.168.10.12"]

    # n3 joins
    nodes_file.write_text(json.dumps(THREE))
    r = syncer.step(src.list()[0])
    assert r.written and r.peers == ki.PeerDiff(added=("192.168.10.13",))
    conf = ki.read_conflist(s.conflist_path)
    assert conf["plugins"][0]["peers"] == ["192.168.10.12", "192.168.10.13"]

    # nothing changed: no write
    mtime = s.conflist_path.stat().st_mtime_ns
    r = syncer.step(src.list()[0])
    assert not r.written and not r.peers
    assert s.conflist_path.stat().st_mtime_ns == mtime

    # n2 leaves; the ranges of this node stay the same
    nodes_file.write_text(json.dumps(node_list(THREE["items"][0], THREE["items"][2])))
    r = syncer.step(src.list()[0])
    assert r.written and r.peers == ki.PeerDiff(removed=("192.168.10.12",))
    conf2 = ki.read_conflist(s.conflist_path)
    assert conf2["plugins"][0]["peers"] == ["192.168.10.13"]
    assert conf2["plugins"][0]["ipam"] == conf["plugins"][0]["ipam"]


def test_watch_events_fold():
    nodes = ki.nodes_from_list(node_list(THREE["items"][0]))
    nodes = ki.apply_event(nodes, {"type": "ADDED", "object": THREE["items"][1]})
    assert set(nodes) == {"n1", "n2"}
    moved = node_obj("n2", "192.168.10.99", ["10.244.1.0/24"])
    nodes2 = ki.apply_event(nodes, {"type": "MODIFIED", "object": moved})
    assert nodes2["n2"].internal_ips == ("192.168.10.99",)
    assert nodes["n2"].internal_ips == ("192.168.10.12",)  # input not modified
    nodes3 = ki.apply_event(nodes2, {"type": "DELETED", "object": {"metadata": {"name": "n2"}}})
    assert set(nodes3) == {"n1"}
    assert ki.apply_event(nodes3, {"type": "BOOKMARK", "object": {"metadata": {}}}) == nodes3
    with pytest.raises(ki.InstallError):
        ki.apply_event(nodes3, {"type": "WHAT"})


class ScriptedSource:
    """list() returns the next scripted list; watch() yields the scripted events."""

    def __init__(self, rounds, stop):
        self.rounds = list(rounds)
        self.stop = stop
        self.lists = 0

    def list(self):
        self.lists += 1
        if not self.rounds:
            self.stop.set()
            return {}, ""
        self.current = self.rounds.pop(0)
        return ki.nodes_from_list(self.current[0]), "1"

    def watch(self, rv, timeout):
        yield from self.current[1]


def test_sync_loop_follows_watch_and_relists_after_error(tmp_path):
    s = settings(tmp_path, interval=0)
    stop = threading.Event()
    seen = []

    class Recording(ki.Syncer):
        def step(self, nodes):
            r = super().step(nodes)
            seen.append(ki.conf_peers(ki.read_conflist(self.s.conflist_path)))
            return r

    rounds = [
        (node_list(THREE["items"][0]), [  # only n1, then n2 and n3 join by watch
            {"type": "ADDED", "object": THREE["items"][1]},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "5"}}},
            {"type": "ADDED", "object": THREE["items"][2]},
            {"type": "ERROR", "object": {"code": 410}},  # too old: list again
            {"type": "DELETED", "object": THREE["items"][2]},  # never reached
        ]),
        (node_list(THREE["items"][0], THREE["items"][2]), []),  # n2 gone at relist
    ]
    src = ScriptedSource(rounds, stop)
    syncer = Recording(s, ki.load_template(s.template_path), underlay_of=lambda ip: "eth0")
    t = threading.Thread(target=ki.sync_loop, args=(syncer, src, stop), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive()
    assert seen[:4] == [[], ["192.168.10.12"], ["192.168.10.12", "192.168.10.13"],
                        ["192.168.10.13"]]
    assert src.lists == 3


def test_sync_waits_for_pod_cidr(tmp_path):
    s = settings(tmp_path)
    syncer = ki.Syncer(s, ki.load_template(s.template_path), underlay_of=lambda ip: "eth0")
    nodes = ki.nodes_from_list(node_list(node_obj("n1", "192.168.10.11")))
    assert ki._step(syncer, nodes) is None
    assert not s.conflist_path.exists()  # no half-made config for a node without a range


# ---------------------------------------------------------------------------
# routes (bridge mode)


def test_route_plan_and_diff():
    nodes = {
        "a": ki.Node("a", ("10.0.0.1",), ("10.244.0.0/24",)),
        "b": ki.Node("b", ("10.0.0.2", "fd00::2"), ("10.244.1.0/24", "fd00:0:0:1::/64")),
        "c": ki.Node("c", ("10.0.0.3",), ()),
    }
    plan = ki.plan_routes("a", nodes)
    R = ki.RoutePlan
    assert plan == [R("10.244.1.0/24", "10.0.0.2"), R("fd00:0:0:1::/64", "fd00::2")]
    put, drop = ki.diff_routes([R("10.244.1.0/24", "10.0.0.9"), R("10.244.7.0/24", "10.0.0.7")],
                               plan)
    assert put == [R("10.244.1.0/24", "10.0.0.2"), R("fd00:0:0:1::/64", "fd00::2")]
    assert drop == [R("10.244.7.0/24", "10.0.0.7")]
    assert ki.diff_routes(plan, plan) == ([], [])


def test_syncer_applies_route_diff(tmp_path):
    tpl = tmp_path / "bridge.conflist.json"
    tpl.write_text(json.dumps(template("bridge")))
    s = ki.Settings(node_name="n1", template_path=str(tpl), conf_dir=str(tmp_path / "d"))

    class FakeRoutes:
        def __init__(self):
            self.table = [ki.RoutePlan("10.244.9.0/24", "192.168.10.19")]

        def current(self):
            return list(self.table)

        def apply(self, put, drop):
            self.table = [r for r in self.table if r not in drop] + put
    fr = FakeRoutes()
    syncer = ki.Syncer(s, ki.load_template(tpl), routes=fr)
    r = syncer.step(ki.nodes_from_list(THREE))
    assert r.routes_dropped == [ki.RoutePlan("10.244.9.0/24", "192.168.10.19")]
    assert sorted(fr.table) == [ki.RoutePlan("10.244.1.0/24", "192.168.10.12"),
                                ki.RoutePlan("10.244.2.0/24", "192.168.10.13")]
    conf = ki.read_conflist(s.conflist_path)
    assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.0.0/24"}]]


# ---------------------------------------------------------------------------
# API client (fake opener: no network)


class FakeResp(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def test_kube_api_list_and_watch(tmp_path):
    (tmp_path / "token").write_text("tok-1\n")
    calls = []

    def opener(req, timeout):
        calls.append((req.full_url, req.get_header("Authorization"), timeout))
        if "watch=1" in req.full_url:
            lines = [json.dumps({"type": "ADDED", "object": THREE["items"][2]}), "",
                     json.dumps({"type": "DELETED", "object": THREE["items"][1]})]
            return FakeResp("\n".join(lines).encode() + b"\n")
        return FakeResp(json.dumps(node_list(*THREE["items"][:2], rv="42")).encode())

    api = ki.KubeAPI(env={"KUBERNETES_SERVICE_HOST": "10.96.0.1",
                          "KUBERNETES_SERVICE_PORT": "443"}, sa_dir=str(tmp_path), opener=opener)
    nodes, rv = api.list()
    assert set(nodes) == {"n1", "n2"} and rv == "42"
    (tmp_path / "token").write_text("tok-2")  # rotated: the next request uses it
    evs = list(api.watch(rv, 60))
    assert [e["type"] for e in evs] == ["ADDED", "DELETED"]
    assert calls[0][0] == "https://10.96.0.1:443/api/v1/nodes"
    assert calls[0][1] == "Bearer tok-1" and calls[1][1] == "Bearer tok-2"
    assert "resourceVersion=42" in calls[1][0] and "timeoutSeconds=60" in calls[1][0]
    assert calls[1][2] > 60


def test_kube_api_outside_cluster_and_ipv6_server():
    with pytest.raises(ki.InstallError, match="KUBERNETES_SERVICE_HOST"):
        ki.KubeAPI(env={})
    api = ki.KubeAPI(env={"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"})
    assert api.server == "https://[fd00::1]:6443"


# ---------------------------------------------------------------------------
# runtime copy and the CLI


def test_install_runtime_swaps_current_and_prunes(tmp_path):
    src = tmp_path / "img"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "cnilab-python").write_text("v1")
    root = tmp_path / "host"
    rel1 = ki.install_runtime(src, root, "0.1.0")
    assert os.readlink(root / "current") == "releases/0.1.0"
    assert (root / "current" / "bin" / "cnilab-python").read_text() == "v1"
    (src / "bin" / "cnilab-python").write_text("v2")
    ki.install_runtime(src, root, "0.2.0")
    assert (root / "current" / "bin" / "cnilab-python").read_text() == "v2"
    assert rel1.is_dir()  # the previous release stays for in-flight calls
    ki.install_runtime(src, root, "0.3.0")
    assert sorted(p.name for p in (root / "releases").iterdir()) == ["0.2.0", "0.3.0"]
    assert not (root / ".current.tmp").exists()
    with pytest.raises(ki.InstallError):
        ki.install_runtime(src, root, "../x")


def test_cli_render_from_nodes_file(tmp_path, capsys):
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps(THREE))
    tpl = tmp_path / "t.json"
    tpl.write_text(json.dumps(template("bridge")))
    rc = ki.main(["render", "--node", "n3", "--template", str(tpl), "--nodes-file", str(nodes)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.2.0/24"}]]
    rc = ki.main(["render", "--node", "zz", "--template", str(tpl), "--nodes-file", str(nodes)])
    assert rc == 2
    assert "zz" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# the host runtime: wrapper, launchers bound to it, the whole init-container job


def fake_runtime(tmp_path):
    """A runtime tree like the image's: bin/python3 (here: runs this venv's python,
    which stands in for the relocatable CPython) and bin/cnilab-python."""
    import sys
    rt = tmp_path / "image-runtime"
    (rt / "bin").mkdir(parents=True)
    (rt / ki.NATIVE_LIB_DIR).mkdir(parents=True)
    py = rt / "bin" / "python3"
    py.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    py.chmod(0o755)
    assert ki.main(["wrapper", "--output", str(rt / "bin" / ki.WRAPPER_NAME)]) == 0
    return rt


def test_wrapper_resolves_links_sets_loader_path_without_env(tmp_path):
    import subprocess
    rt = fake_runtime(tmp_path)
    root = tmp_path / "host"
    ki.install_runtime(rt, root, "1.0")
    wrapper = root / "current" / "bin" / ki.WRAPPER_NAME
    assert os.access(wrapper, os.X_OK)
    # a runtime execs plugins with a minimal environment, from anywhere
    out = subprocess.run([str(wrapper), "-c", "import os, sys; print(os.environ['LD_LIBRARY_PATH']);"
                          "print(sys.flags.no_user_site, sys.flags.ignore_environment)"],
                         env={"PYTHONPATH": "/nonexistent"}, cwd="/", capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    ld, flags = out.stdout.split("\n")[:2]
    # resolved through `current` to the release: a call keeps its release
    assert os.path.realpath(ld.split(":")[0]) == str((root / "releases" / "1.0" /
                                                      ki.NATIVE_LIB_DIR).resolve())
    assert flags == "1 1"


def test_install_plugins_binds_launchers_to_the_wrapper(tmp_path):
    import subprocess
    rt = fake_runtime(tmp_path)
    wrapper = str(rt / "bin" / ki.WRAPPER_NAME)
    bin_dir = tmp_path / "cni-bin"
    paths = ki.install_plugins(bin_dir, python=wrapper)  # cninode.install verifies each one
    from cninode.install import PLUGINS
    assert sorted(os.path.basename(p) for p in paths) == sorted(PLUGINS)
    assert {"bridge", "host-local", "portmap", "bandwidth", "vxlan", "loopback"} <= set(PLUGINS)
    for p in paths:
        assert Path(p).read_text().splitlines()[0].startswith(f"#!{wrapper} ")
    r = subprocess.run([str(bin_dir / "vxlan")], env={"CNI_COMMAND": "VERSION", "CNILAB_AGENT": "off"},
                       cwd="/", capture_output=True, timeout=30)
    assert r.returncode == 0 and b"1.1.0" in r.stdout
    with pytest.raises(ki.InstallError):
        ki.install_plugins(bin_dir, python="relative/python")


def test_install_job_end_to_end_without_cluster(tmp_path):
    """The init container's job: runtime copy, launchers via the host copy, conflist."""
    import subprocess
    rt = fake_runtime(tmp_path)
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps(THREE))
    tpl = tmp_path / "bridge.conflist.json"
    tpl.write_text(configmap()["data"]["bridge.conflist.json"])
    host_rt, bin_dir, conf_dir = tmp_path / "opt-cnilab", tmp_path / "bin", tmp_path / "net.d"
    rc = ki.main(["install", "--node", "n2", "--template", str(tpl), "--conf-dir", str(conf_dir),
                  "--nodes-file", str(nodes), "--bin-dir", str(bin_dir), "--runtime-src", str(rt),
                  "--host-runtime-dir", str(host_rt), "--release", "0.9", "--once"])
    assert rc == 0
    host_python = str(host_rt / "current" / "bin" / ki.WRAPPER_NAME)
    assert (bin_dir / "bridge").read_text().startswith(f"#!{host_python} ")
    conf = json.loads((conf_dir / ki.CONFLIST_NAME).read_text())
    assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]
    r = subprocess.run([str(bin_dir / "bridge")], env={"CNI_COMMAND": "VERSION", "CNILAB_AGENT": "off"},
                       cwd="/", capture_output=True, timeout=30)
    assert r.returncode == 0
    # a node without its podCIDR yet: executables installed, no conflist (kubelet waits)
    nodes.write_text(json.dumps(node_list(node_obj("n2", "192.168.10.12"))))
    conf_dir2 = tmp_path / "net.d2"
    rc = ki.main(["install", "--node", "n2", "--template", str(tpl), "--conf-dir", str(conf_dir2),
                  "--nodes-file", str(nodes), "--bin-dir", str(bin_dir), "--once"])
    assert rc == 3 and not (conf_dir2 / ki.CONFLIST_NAME).exists()


# ---------------------------------------------------------------------------
# node masquerade (routed bridge mode)


def test_masq_plan_spares_cluster_and_multicast():
    plan = ki.plan_masq(["10.244.1.0/24", "fd00:10:244:1::/64"],
                        ["10.244.0.0/16", "fd00:10:244::/56"])
    # the table is re-created in the same transaction: converges, replaces
    assert [list(c)[0] + ":" + list(list(c.values())[0])[0] for c in plan[:4]] == [
        "add:table", "delete:table", "add:table", "add:chain"]
    rules = [c["add"]["rule"] for c in plan if "rule" in c.get("add", {})]
    assert len(rules) == 2
    v4 = rules[0]["expr"]
    assert v4[0]["match"]["right"] == {"prefix": {"addr": "10.244.1.0", "len": 24}}
    assert v4[1]["match"]["op"] == "!="
    assert v4[1]["match"]["right"]["set"] == [{"prefix": {"addr": "10.244.0.0", "len": 16}},
                                              {"prefix": {"addr": "224.0.0.0", "len": 4}}]
    assert rules[1]["expr"][0]["match"]["left"]["payload"]["protocol"] == "ip6"
    for c in plan:  # nothing outside our own table
        (obj,) = c.values()
        (kind, body), = obj.items()
        assert (body["name"] if kind == "table" else body["table"]) == ki.MASQ_TABLE
        assert body["family"] == ki.MASQ_FAMILY
    assert rules[0]["chain"] == "postrouting"
    with pytest.raises(ki.InstallError, match="not inside the cluster"):
        ki.plan_masq(["10.245.0.0/24"], ["10.244.0.0/16"])


def test_syncer_masq_applies_only_on_change(tmp_path):
    tpl = tmp_path / "bridge.conflist.json"
    tpl.write_text(json.dumps(template("bridge")))
    s = ki.Settings(node_name="n1", template_path=str(tpl), conf_dir=str(tmp_path / "d"),
                    cluster_cidrs=("10.244.0.0/16",))
    applied = []

    class FakeMasq(ki.MasqApplier):
        def ensure(self, plan):
            if plan == self._last:
                return False
            applied.append(plan)
            self._last = plan
            return True
    syncer = ki.Syncer(s, ki.load_template(tpl), masq=FakeMasq())
    assert syncer.step(ki.nodes_from_list(THREE)).masq_changed
    assert not syncer.step(ki.nodes_from_list(THREE)).masq_changed  # peers etc. irrelevant
    assert len(applied) == 1


@pytest.mark.root
def test_masq_plan_applies_in_a_node_namespace(make_netns):
    from plugins.core import netns
    from plugins.net.nft import Nft
    node = make_netns("kmasq")
    plan = ki.plan_masq(["10.244.1.0/24"], ["10.244.0.0/16"])
    with netns.entered(node.path):
        ki.MasqApplier().ensure(plan)
        ki.MasqApplier().ensure(plan)  # a restarted sync converges (table re-created)
        objs = Nft().list_table(ki.MASQ_FAMILY, ki.MASQ_TABLE)
    rules = [o["rule"] for o in objs if "rule" in o]
    assert len(rules) == 1 and rules[0]["comment"] == ki.MASQ_COMMENT
    text = node.run("nft", "list", "table", "inet", ki.MASQ_TABLE).stdout
    assert "ip saddr 10.244.1.0/24 ip daddr != { 10.244.0.0/16, 224.0.0.0/4 } masquerade" in text


# ---------------------------------------------------------------------------
# new peers reach the node's VXLAN FDB without waiting for the next pod ADD


def test_syncer_pushes_fdb_on_peer_change_only(tmp_path):
    s = settings(tmp_path)
    calls = []

    class FakeFdb:
        def sync(self, conflist):
            calls.append(ki.conf_peers(conflist))
            return ([], [])
    syncer = ki.Syncer(s, ki.load_template(s.template_path), underlay_of=lambda ip: "eth0",
                       fdb=FakeFdb())
    two = ki.nodes_from_list(node_list(*THREE["items"][:2]))
    syncer.step(two)
    syncer.step(two)  # nothing changed: no netlink work
    syncer.step(ki.nodes_from_list(THREE))
    assert calls == [["192.168.10.12"], ["192.168.10.12", "192.168.10.13"]]


@pytest.mark.root
def test_fdb_syncer_in_a_node_namespace(make_netns, tmp_path, monkeypatch):
    from plugins.core import netns
    from plugins.net.vxlan_dev import VxlanLinks, owner_alias
    monkeypatch.setenv("CNILAB_RUN_DIR", str(tmp_path / "run"))
    node = make_netns("kfdb")
    node.run("ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul1")
    node.run("ip", "addr", "add", "192.168.77.1/24", "dev", "ul0")
    node.run("ip", "link", "set", "ul0", "up")
    nodes = ki.nodes_from_list(node_list(
        node_obj("n1", "192.168.77.1", ["10.244.0.0/24"]),
        node_obj("n2", "192.168.77.2", ["10.244.1.0/24"])))
    conf = ki.render(template("vxlan"), "n1", nodes, ["10.244.0.0/16"], underlay="ul0").conflist
    fdb = ki.FdbSyncer()
    with netns.entered(node.path):
        assert fdb.sync(conf) is None  # no device yet: the next ADD creates it
    node.run("ip", "link", "add", "vxlan1", "type", "vxlan", "id", "1", "dstport", "4789",
             "local", "192.168.77.1", "dev", "ul0", "nolearning")
    with netns.entered(node.path):
        assert fdb.sync(conf) is None  # not ours (no alias): untouched
    node.run("ip", "link", "set", "dev", "vxlan1", "alias", owner_alias(conf["name"]))
    node.run("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vxlan1",
             "dst", "192.168.77.9", "self", "permanent")  # a node that left
    node.run("bridge", "fdb", "append", "02:11:22:33:44:55", "dev", "vxlan1",
             "dst", "192.168.77.9", "self", "permanent")  # per-MAC: not ours to manage
    with netns.entered(node.path):
        assert fdb.sync(conf) == (["192.168.77.2"], ["192.168.77.9"])
        nodes["n3"] = ki.Node("n3", ("192.168.77.3",), ("10.244.2.0/24",))
        conf2 = ki.render(template("vxlan"), "n1", nodes, ["10.244.0.0/16"], underlay="ul0").conflist
        assert fdb.sync(conf2) == (["192.168.77.3"], [])
        with VxlanLinks() as links:
            assert links.fdb_peers(links.index_of("vxlan1")) == ["192.168.77.2", "192.168.77.3"]
    out = node.run("bridge", "fdb", "show", "dev", "vxlan1").stdout
    assert "02:11:22:33:44:55 dst 192.168.77.9" in out


def test_foreign_plugins_backed_up_replaced_and_restored(tmp_path):
    """kubeadm/kind nodes have the reference plugins under our names in /opt/cni/bin."""
    import subprocess
    rt = fake_runtime(tmp_path)
    wrapper = str(rt / "bin" / ki.WRAPPER_NAME)
    bin_dir, backup = tmp_path / "bin", tmp_path / "replaced"
    bin_dir.mkdir()
    (bin_dir / "bridge").write_bytes(b"\x7fELF reference bridge")
    (bin_dir / "loopback").write_bytes(b"\x7fELF reference loopback")  # ours replaces it too
    (bin_dir / "host-device").write_bytes(b"\x7fELF reference host-device")  # not one of ours
    with pytest.raises(FileExistsError):
        ki.install_plugins(bin_dir, python=wrapper)  # refuses without a backup dir
    assert (bin_dir / "bridge").read_bytes() == b"\x7fELF reference bridge"
    ki.install_plugins(bin_dir, python=wrapper, backup_dir=backup)
    assert (backup / "bridge").read_bytes() == b"\x7fELF reference bridge"
    assert sorted(os.listdir(backup)) == ["bridge", "loopback"]
    r = subprocess.run([str(bin_dir / "bridge")], env={"CNI_COMMAND": "VERSION", "CNILAB_AGENT": "off"},
                       cwd="/", capture_output=True, timeout=30)
    assert r.returncode == 0
    ki.install_plugins(bin_dir, python=wrapper, backup_dir=backup)  # upgrade: backup kept
    assert (backup / "bridge").read_bytes() == b"\x7fELF reference bridge"

    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    (conf_dir / ki.CONFLIST_NAME).write_text(json.dumps(template("bridge")))
    done = ki.uninstall(bin_dir, conf_dir / ki.CONFLIST_NAME, backup)
    from cninode.install import PLUGINS
    assert f"restored {bin_dir / 'bridge'}" in done and len(done) == 1 + len(PLUGINS), done
    assert f"restored {bin_dir / 'loopback'}" in done
    assert (bin_dir / "bridge").read_bytes() == b"\x7fELF reference bridge"
    assert (bin_dir / "loopback").read_bytes() == b"\x7fELF reference loopback"
    assert sorted(os.listdir(bin_dir)) == ["bridge", "host-device", "loopback"]
    assert not (conf_dir / ki.CONFLIST_NAME).exists() and not os.listdir(backup)
    # a conflist that is not ours stays
    (conf_dir / ki.CONFLIST_NAME).write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "calico"}]}))
    assert ki.uninstall(bin_dir, conf_dir / ki.CONFLIST_NAME, backup) == []


def test_sync_refuses_bridge_only_options_in_vxlan_mode(tmp_path, monkeypatch, capsys):
    nodes = tmp_path / "nodes.json"
    nodes.write_text(json.dumps(THREE))
    tpl = tmp_path / "vxlan.json"
    tpl.write_text(json.dumps(template("vxlan")))
    argv = ["sync", "--node", "n1", "--template", str(tpl), "--nodes-file", str(nodes),
            "--conf-dir", str(tmp_path / "d"), "--cluster-cidr", "10.244.0.0/16"]
    monkeypatch.setenv("CNILAB_ROUTES", "true")
    assert ki.main(argv) == 2
    assert "routed bridge mode only" in capsys.readouterr().err
    monkeypatch.setenv("CNILAB_ROUTES", "false")
    monkeypatch.setenv("CNILAB_MASQUERADE", "true")
    assert ki.main(argv) == 2
    assert "spares the cluster CIDR" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before writing anything


# ---------------------------------------------------------------------------
# the rendered overlay config, run by the real vxlan plugin on two node namespaces


class TwoNodeOverlay:
    """Two node namespaces on one underlay, each with one pod, attached by the
    real vxlan plugin with the conflist rendered for that node."""

    IPS = {"n1": "192.168.77.1", "n2": "192.168.77.2"}

    def __init__(self, make_netns, tmp_path):
        from plugins.core import netns as nsmod
        from plugins.core import skel
        self._nsmod, self._skel = nsmod, skel
        a, b = make_netns("kva"), make_netns("kvb")
        a.wire(b, "ul0", addrs=(f"{self.IPS['n1']}/24",), peer_addrs=(f"{self.IPS['n2']}/24",))
        self.node = {"n1": a, "n2": b}
        nodes = ki.nodes_from_list(node_list(node_obj("n1", self.IPS["n1"], ["10.244.0.0/24"]),
                                             node_obj("n2", self.IPS["n2"], ["10.244.1.0/24"])))
        self.plugin, self.pod, self.pod_ip = {}, {}, {}
        for name, ns in self.node.items():
            conf = ki.render(template("vxlan"), name, nodes, ["10.244.0.0/16"],
                             underlay="ul0").conflist
            plugin = libcni_view(conf, 0)
            plugin["ipam"]["dataDir"] = str(tmp_path / f"ipam-{name}")
            self.plugin[name] = plugin
            self.pod[name] = make_netns(f"kp{name}")
            out, rc = self.call(name, "ADD")
            assert rc == 0, out
            self.pod_ip[name] = json.loads(out)["ips"][0]["address"].split("/")[0]

    def call(self, name, command):
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": f"c-{name}",
               "CNI_NETNS": self.pod[name].path, "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
        with self._nsmod.entered(self.node[name].path):
            return self._skel.dispatch("vxlan", env, json.dumps(self.plugin[name]).encode())

    def ping(self, ns, ip):
        return ns.run("ping", "-c1", "-W2", ip, check=False).returncode == 0

    def teardown(self):
        for name in self.node:
            out, rc = self.call(name, "DEL")
            assert rc == 0, out


@pytest.mark.root
def test_rendered_vxlan_conflist_joins_two_nodes(make_netns, tmp_path):
    """Per-node slices of one cluster CIDR, peers from the node list: pods on two
    nodes reach each other, and each node reaches its own pods."""
    lab = TwoNodeOverlay(make_netns, tmp_path)
    # each node allocates from its own slice, gateway podCIDR+1
    assert lab.pod_ip == {"n1": "10.244.0.2", "n2": "10.244.1.2"}
    pa, pb = lab.pod["n1"], lab.pod["n2"]
    assert lab.ping(pa, lab.pod_ip["n2"]) and lab.ping(pb, lab.pod_ip["n1"])
    assert lab.ping(pa, "10.244.0.1") and lab.ping(pb, "10.244.1.1")  # own node's gateway
    assert lab.ping(lab.node["n1"], lab.pod_ip["n1"])  # node -> its own pod (probes)
    lab.teardown()


@pytest.mark.root
@pytest.mark.slow
def test_rendered_vxlan_node_reaches_pod_on_other_node(make_netns, tmp_path):
    lab = TwoNodeOverlay(make_netns, tmp_path)
    try:
        assert lab.ping(lab.node["n1"], lab.pod_ip["n2"])  # NodePort / apiserver -> remote pod
    finally:
        lab.teardown()


@pytest.mark.root
def test_rendered_bridge_conflist_with_routes_two_nodes(make_netns, tmp_path):
    """Routed bridge mode: each node's pods in its podCIDR, RouteApplier keeps a
    route per other node (protocol 99): pods on two nodes reach each other; a
    leaving node's route goes, routes that are not ours stay."""
    from plugins.core import netns as nsmod
    from plugins.core import skel
    a, b = make_netns("kba"), make_netns("kbb")
    ips = {"n1": "192.168.78.1", "n2": "192.168.78.2"}
    a.wire(b, "ul0", addrs=(f"{ips['n1']}/24",), peer_addrs=(f"{ips['n2']}/24",))
    node = {"n1": a, "n2": b}
    objs = [node_obj("n1", ips["n1"], ["10.245.0.0/24"]), node_obj("n2", ips["n2"], ["10.245.1.0/24"])]
    nodes = ki.nodes_from_list(node_list(*objs))
    pod_ip, plugins, pods = {}, {}, {}
    for name, ns in node.items():
        conf = ki.render(template("bridge"), name, nodes).conflist
        plugin = libcni_view(conf, 0)
        plugin["ipam"]["dataDir"] = str(tmp_path / f"ipam-{name}")
        plugins[name] = plugin
        pods[name] = make_netns(f"kq{name}")
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"c-{name}", "CNI_NETNS": pods[name].path,
               "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
        with nsmod.entered(ns.path):
            out, rc = skel.dispatch("bridge", env, json.dumps(plugin).encode())
            assert rc == 0, out
            pod_ip[name] = json.loads(out)["ips"][0]["address"].split("/")[0]
            ra = ki.RouteApplier()
            put, drop = ki.diff_routes(ra.current(), ki.plan_routes(name, nodes))
            ra.apply(put, drop)
            assert ra.current() == ki.plan_routes(name, nodes)
    assert pod_ip == {"n1": "10.245.0.2", "n2": "10.245.1.2"}
    assert pods["n1"].run("ping", "-c1", "-W2", pod_ip["n2"], check=False).returncode == 0
    assert "10.245.1.0/24 via 192.168.78.2" in a.run("ip", "route", "show", "proto", "99").stdout
    # someone else's route in the node: never ours to remove
    a.run("ip", "route", "add", "10.99.0.0/24", "via", "192.168.78.2")
    with nsmod.entered(a.path):
        ra = ki.RouteApplier()
        alone = ki.nodes_from_list(node_list(objs[0]))
        put, drop = ki.diff_routes(ra.current(), ki.plan_routes("n1", alone))
        assert put == [] and drop == [ki.RoutePlan("10.245.1.0/24", "192.168.78.2")]
        ra.apply(put, drop)
        assert ra.current() == []
    routes = a.run("ip", "route").stdout
    assert "10.245.1.0/24" not in routes and "10.99.0.0/24 via 192.168.78.2" in routes
    for name, ns in node.items():
        env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": f"c-{name}", "CNI_NETNS": pods[name].path,
               "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
        with nsmod.entered(ns.path):
            out, rc = skel.dispatch("bridge", env, json.dumps(plugins[name]).encode())
            assert rc == 0, out


def test_wrapper_makes_ctypes_load_the_bundled_libnftables(tmp_path):
    """What the image bundles in lib/cnilab-native is what the plugins load, so a
    host without libnftables1 (or with another version) still works."""
    import glob
    import shutil as sh
    import subprocess
    found = glob.glob("/usr/lib/*-linux-gnu/libnftables.so.1")
    if not found:
        pytest.skip("libnftables1 is not installed here")
    libdir = os.path.dirname(os.path.realpath(found[0]))
    rt = fake_runtime(tmp_path)
    text = (DEPLOY / "Containerfile").read_text()
    sonames = text.split("for so in ", 1)[1].split(";", 1)[0].split()
    assert "libnftables.so.1" in sonames
    for so in sonames:  # the list the Containerfile copies
        sh.copy(os.path.join(libdir, so), rt / ki.NATIVE_LIB_DIR / so)
    code = ("import nftables, sys; nftables.Nftables(); "
            "print([l.split()[-1] for l in open('/proc/self/maps') if 'libnftables' in l][0])")
    out = subprocess.run([str(rt / "bin" / ki.WRAPPER_NAME), "-c", code], env={}, cwd="/",
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str((rt / ki.NATIVE_LIB_DIR / "libnftables.so.1").resolve())
    # and every library libnftables needs (besides libc) is in the list
    ldd = subprocess.run(["ldd", os.path.join(libdir, "libnftables.so.1")], capture_output=True,
                         text=True).stdout
    needed = {l.split()[0] for l in ldd.splitlines() if "=>" in l}
    assert needed - {"libc.so.6"} <= set(sonames)


def test_side_job_failures_are_logged_and_retried(tmp_path):
    s = settings(tmp_path)
    attempts = []

    class FlakyFdb:
        def sync(self, conflist):
            attempts.append(ki.conf_peers(conflist))
            if len(attempts) == 1:
                raise OSError(16, "Device or resource busy")
            return ([], [])
    syncer = ki.Syncer(s, ki.load_template(s.template_path), underlay_of=lambda ip: "eth0",
                       fdb=FlakyFdb())
    r1 = syncer.step(ki.nodes_from_list(THREE))
    assert r1.written and r1.errors == ["vxlan FDB: [Errno 16] Device or resource busy"]
    r2 = syncer.step(ki.nodes_from_list(THREE))  # config unchanged, but the FDB is retried
    assert not r2.written and r2.errors == [] and len(attempts) == 2
    syncer.step(ki.nodes_from_list(THREE))
    assert len(attempts) == 2  # done: no more netlink work until peers change


@pytest.mark.parametrize("mode", ["vxlan", "bridge"])
def test_shipped_conflists_reach_gc_and_status(mode):
    """libcni >= 1.2 (containerd >= 2.0, CRI-O) negotiates the highest of
    cniVersions it knows: 1.1.0, so GC and STATUS are sent. libcni 1.1.x
    (containerd 1.6/1.7, podman 4) ignores cniVersions and cannot parse a 1.1.0
    result ("unsupported CNI result version"), so cniVersion stays 1.0.0."""
    from cniruntime.runtime import conflist_from_dict
    tpl = ki.load_template_text(configmap()["data"][f"{mode}.conflist.json"])
    assert tpl["cniVersion"] == "1.0.0" and "1.1.0" in tpl["cniVersions"]
    plugins = [{"type": p["type"]} for p in tpl["plugins"]]
    net = conflist_from_dict({"name": "cnilab", "cniVersion": tpl["cniVersion"],
                              "cniVersions": tpl["cniVersions"], "plugins": plugins})
    assert net.cni_version == "1.1.0"


# ---- the node side installs without the lab's dependencies -----------------------------

_BLOCK = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("scapy", "yaml"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name.split(".")[0])
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _without_lab_extra(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK, *argv], capture_output=True, text=True,
                          cwd=str(ROOT), timeout=120)


def test_node_side_runs_without_scapy_and_pyyaml(tmp_path):
    """What the DaemonSet runs works on an install without the [lab] extra."""
    p = _without_lab_extra("cninode.kube_install", "--help")
    assert p.returncode == 0 and "install" in p.stdout, p.stderr
    p = _without_lab_extra("netlab", "agent", "status", "--socket", str(tmp_path / "none.sock"))
    assert p.returncode == 3 and "no agent answers" in p.stdout, p.stderr     # NOT_RUNNING
    p = _without_lab_extra("cninode.agent", "--help")
    assert p.returncode == 0, p.stderr
    # and the blocker really blocks: a lab verb says what is missing, in one line
    p = _without_lab_extra("netlab", "validate", str(ROOT / "topologies" / "default.yaml"))
    assert p.returncode == 1 and "labs need the lab extra" in p.stderr, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr


def test_lab_dependencies_are_an_extra_the_image_does_not_install():
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    required = cfg["options"]["install_requires"].lower()
    lab = cfg["options.extras_require"]["lab"].lower()
    assert "scapy" not in required and "pyyaml" not in required
    assert "scapy" in lab and "pyyaml" in lab
    text = (DEPLOY / "Containerfile").read_text()
    assert "-m pip install --no-cache-dir --no-compile /src " in text and "[lab]" not in text
    assert ".[lab,test]" in (ROOT / "Makefile").read_text()
