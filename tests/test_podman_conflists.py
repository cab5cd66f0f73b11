"""The conflists podman writes (CNI backend, cniVersion 0.4.0: bridge, portmap,
firewall, tuning) through our libcni-style runtime and our installed plugins
alone: ADD, CHECK (which podman 4.3 itself never sends), DEL, nothing left.

Two sources: the default network file Debian's podman ships
(/etc/cni/net.d/87-podman-bridge.conflist) and one `podman network create`
writes into a tmp config dir. The only change made to them: host-local's
``dataDir`` points into the test's tmp dir (podman's files leave it to the
default, /var/lib/cni/networks), and the bridge name is made unique.
"""
from __future__ import annotations

import copy
import json
import os
import pathlib
import shutil
import subprocess
import tempfile

import pytest

from cniruntime.runtime import Runtime
from tests import node_state
from tests.conftest import unique_name

pytestmark = [pytest.mark.root, pytest.mark.e2e]
PODMAN_DEFAULT = "/etc/cni/net.d/87-podman-bridge.conflist"
TYPES = ["bridge", "portmap", "firewall", "tuning"]


def created_by_podman(tmp: pathlib.Path, name: str, subnet: str) -> dict:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    for d in ("netd", "root", "runroot"):
        (tmp / d).mkdir()
    conf = tmp / "containers.conf"
    conf.write_text(f'[network]\nnetwork_backend = "cni"\nnetwork_config_dir = "{tmp}/netd"\n')
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "CONTAINERS_CONF": str(conf), "HOME": str(tmp)}
    p = subprocess.run(["podman", "--root", str(tmp / "root"), "--runroot", str(tmp / "runroot"),
                        "--storage-driver", "vfs", "network", "create", "--subnet", subnet, name],
                       env=env, capture_output=True, text=True, timeout=120, cwd="/")
    if p.returncode != 0:
        pytest.skip(f"podman network create failed here: {p.stderr.strip()[-400:]}")
    return json.loads((tmp / "netd" / f"{name}.conflist").read_text())


def localise(conf: dict, name: str, data_dir: str) -> dict:
    conf = copy.deepcopy(conf)
    conf["name"] = name
    conf["plugins"][0]["bridge"] = ("cnp" + name[-10:])[:15]
    conf["plugins"][0]["ipam"]["dataDir"] = data_dir
    return conf


@pytest.fixture
def short_tmp(request):
    d = pathlib.Path(tempfile.mkdtemp(prefix="cnlpc", dir="/tmp"))   # podman: short runroot
    request.addfinalizer(lambda: shutil.rmtree(d, ignore_errors=True))
    return d


def _podman_default() -> dict:
    if not os.path.exists(PODMAN_DEFAULT):
        pytest.skip(f"{PODMAN_DEFAULT} is not installed (Debian package podman)")
    with open(PODMAN_DEFAULT) as f:
        return json.load(f)


@pytest.mark.parametrize("source", ["default", "created"])
def test_podman_conflist_add_check_del(source, node, pod, installed_plugins, tmp_path,
                                       short_tmp):
    name = unique_name("pc").replace("-", "")
    if source == "default":
        raw, subnet = _podman_default(), "10.88.0.0/16"
    else:
        raw, subnet = created_by_podman(short_tmp, name, "10.91.10.0/24"), "10.91.10.0/24"
    assert raw["cniVersion"] == "0.4.0"
    assert [p["type"] for p in raw["plugins"]] == TYPES
    data_dir = str(tmp_path / "ipam")
    conf = localise(raw, name, data_dir)
    rt = Runtime([installed_plugins], cache_dir=str(tmp_path / "cache"), host_netns=node.path,
                 env=dict(os.environ, CNILAB_AGENT="off"))
    caps = {"portMappings": [{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}]}
    result = rt.add(conf, pod.path, "c1", capability_args=caps)
    try:
        assert result["cniVersion"] == "0.4.0"
        import ipaddress
        ip = result["ips"][0]["address"].split("/")[0]
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(subnet)
        rules = node_state.our_rules(node.name)
        assert any("cnilab-firewall" in r and "c:c1" in r for r in rules)
        assert any("cnilab-portmap" in r and "c:c1" in r for r in rules)
        rt.check(conf, pod.path, "c1")
    finally:
        rt.delete(conf, pod.path, "c1")
    left = node_state.leftovers(node.name, data_dir, name)
    assert node_state.nothing_left(left), left


def test_podman_conflist_with_tuning_and_isolation(node, pod, installed_plugins, tmp_path):
    """podman's layout with the tuning and firewall fields a user adds by hand."""
    name = unique_name("pt").replace("-", "")
    conf = localise(_podman_default(), name, str(tmp_path / "ipam"))
    conf["plugins"][2].update(ingressPolicy="same-bridge", backend="iptables")
    conf["plugins"][3].update(sysctl={"net.ipv4.conf.IFNAME.arp_notify": "1"}, mtu=1400,
                              capabilities={"mac": True})
    rt = Runtime([installed_plugins], cache_dir=str(tmp_path / "cache"), host_netns=node.path,
                 env=dict(os.environ, CNILAB_AGENT="off"))
    result = rt.add(conf, pod.path, "c1", capability_args={"mac": "02:11:22:33:44:66"})
    try:
        pod_if = [i for i in result["interfaces"] if i.get("sandbox")][0]
        assert pod_if["mac"] == "02:11:22:33:44:66"
        link = json.loads(pod.run("ip", "-j", "link", "show", "eth0").stdout)[0]
        assert (link["address"], link["mtu"]) == ("02:11:22:33:44:66", 1400)
        assert pod.run("sysctl", "-n", "net.ipv4.conf.eth0.arp_notify").stdout.strip() == "1"
        rt.check(conf, pod.path, "c1")
        pod.run("ip", "link", "set", "eth0", "mtu", "1500")
        with pytest.raises(Exception) as e:
            rt.check(conf, pod.path, "c1")
        assert "MTU" in str(e.value) or "MTU" in getattr(e.value, "details", "")
    finally:
        rt.delete(conf, pod.path, "c1")
    assert node_state.nothing_left(node_state.leftovers(node.name, str(tmp_path / "ipam"), name))
