"""Load: 100 pods ADDed concurrently on one node through the runtime (installed
executables, as a container runtime execs them), then DELed concurrently: no
failure, no duplicate address, every pod configured, nothing left afterwards.
Once with bridge + host-local, once with portmap and bandwidth chained in.
"""
from __future__ import annotations

import ipaddress
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cniruntime.runtime import Runtime
from tests import node_state

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.e2e, pytest.mark.serial]

PODS = 100
SUBNET = "10.96.0.0/24"
BW = {"ingressRate": 100_000_000, "ingressBurst": 10_000_000,
      "egressRate": 100_000_000, "egressBurst": 10_000_000}


def conflist(name: str, data_dir: str, chained: bool) -> dict:
    plugins = [{"type": "bridge", "bridge": "cnilab-load0", "isGateway": True, "ipMasq": True,
                "ipam": {"type": "host-local", "dataDir": data_dir,
                         "ranges": [[{"subnet": SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}]}}]
    if chained:
        plugins += [{"type": "portmap", "capabilities": {"portMappings": True}},
                    {"type": "bandwidth", "capabilities": {"bandwidth": True}}]
    return {"cniVersion": "1.1.0", "name": name, "plugins": plugins}


def pod_addrs(ns_name: str) -> list[str]:
    out = []
    for link in json.loads(os.popen(f"ip -n {ns_name} -j addr show dev eth0").read() or "[]"):
        out += [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                if a.get("family") == "inet"]
    return out


@pytest.mark.parametrize("chained", [True], ids=["bridge+portmap+bandwidth"])   # the chain covers bridge alone
def test_100_pods_concurrently(tmp_path, make_netns, installed_plugins, chained):
    node = make_netns("lnode")
    pods = [make_netns("lp") for _ in range(PODS)]
    data_dir = str(tmp_path / "ipam")
    net = conflist("load", data_dir, chained)
    rt = Runtime([installed_plugins], cache_dir=str(tmp_path / "cache"), host_netns=node.path,
                 env=dict(os.environ, CNILAB_AGENT="off"))

    def caps(i: int) -> dict:
        if not chained:
            return {}
        return {"portMappings": [{"hostPort": 40000 + i, "containerPort": 80}],
                "bandwidth": BW}

    def add(i: int):
        return rt.add(net, pods[i].path, f"load{i}", "eth0", capability_args=caps(i))

    def delete(i: int):
        rt.delete(net, pods[i].path, f"load{i}", "eth0")

    t0 = time.monotonic()
    with ThreadPoolExecutor(PODS) as ex:
        results = list(ex.map(add, range(PODS)))       # any failure raises here
    t_add = time.monotonic() - t0

    ips = [r["ips"][0]["address"] for r in results]
    assert len(set(ips)) == PODS, "duplicate addresses"
    assert all(ipaddress.ip_interface(a).ip in ipaddress.ip_network(SUBNET) for a in ips)
    reserved = node_state.reservations(data_dir, "load")
    assert sorted(reserved) == sorted(a.split("/")[0] for a in ips)
    assert sorted(reserved.values()) == sorted(f"load{i}/eth0" for i in range(PODS))
    for i, pod in enumerate(pods):                       # each pod holds its own address
        assert pod_addrs(pod.name) == [ips[i]], (i, ips[i])
    assert len(node_state.links_of_kind(node.name, "veth")) == PODS
    rules = node_state.our_rules(node.name)
    if chained:
        assert len(node_state.links_of_kind(node.name, "ifb")) == PODS
        comments = {json.loads(r)["rule"]["comment"] for r in rules}
        assert all(any(f"c:load{i} " in c for c in comments) for i in range(PODS))

    t0 = time.monotonic()
    with ThreadPoolExecutor(PODS) as ex:
        list(ex.map(delete, range(PODS)))
    t_del = time.monotonic() - t0
    left = node_state.leftovers(node.name, data_dir, "load")
    assert node_state.nothing_left(left), left
    assert os.listdir(tmp_path / "cache" / "results") == []
    print(f"\n{PODS} pods {'chained' if chained else 'bridge'}: ADD {t_add:.1f}s, "
          f"DEL {t_del:.1f}s, {len(rules)} rules while up")
