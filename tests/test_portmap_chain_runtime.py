"""bridge + portmap + bandwidth as one conflist through netlab's libcni runtime:
ours against the reference plugins (same observations), and 30 parallel
ADDs/DELs with nothing left behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from cninode.install import install
from cniruntime.runtime import Runtime
from plugins.core.errors import CNIError
from plugins.net import tc
from tests.chain_lab import Server, reach

pytestmark = [pytest.mark.root, pytest.mark.e2e]

REF = "/usr/lib/cni"
HAVE_REF = all(os.access(os.path.join(REF, p), os.X_OK)
               for p in ("bridge", "host-local", "portmap", "bandwidth"))
BR = "cnilab-pmbr"
GW = "10.66.0.1"
UP_NODE, UP_CLIENT = "10.67.0.1", "10.67.0.2"
BW = {"ingressRate": 40_000_000, "ingressBurst": 4_000_000,
      "egressRate": 30_000_000, "egressBurst": 3_000_000}


def conflist(tmp_path, name="chain"):
    return {"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": BR, "isGateway": True, "hairpinMode": True,
         "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                  "ranges": [[{"subnet": "10.66.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}}]}


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    d = tmp_path_factory.mktemp("bin")
    install(str(d), plugins=("bridge", "host-local", "portmap", "bandwidth"))
    return str(d)


def uplink(node, client):
    node.wire(client, "up0", "up0c", (f"{UP_NODE}/24",), (f"{UP_CLIENT}/24",))


def veth_names(ns):
    out = json.loads(ns.run("ip", "-j", "link", "show", "type", "veth").stdout)
    return sorted(l["ifname"] for l in out if l["ifname"] != "up0")


def ifbs(ns):
    return sorted(l["ifname"] for l in json.loads(ns.run("ip", "-j", "link", "show",
                                                         "type", "ifb").stdout))


def tbf_rate(ns, dev):
    qs = json.loads(ns.run("tc", "-j", "qdisc", "show", "dev", dev).stdout or "[]")
    return [q["options"]["rate"] * 8 for q in qs if q["kind"] == "tbf"]


def nat_rules_for(ns, pod_ip):
    """Every NAT rule (ours in nftables, the reference's in iptables) naming the pod."""
    text = ns.run("nft", "list", "ruleset").stdout
    return [l.strip() for l in text.splitlines() if pod_ip in l]


def observe(node, client, pod, rt, net, cid, caps):
    res = rt.add(net, pod.path, cid, "eth0", capability_args=caps)
    pod_ip = res["ips"][0]["address"].split("/")[0]
    host = [v for v in veth_names(node)]
    assert len(host) == 1
    srv = Server(pod, 80), Server(pod, 53, name="dns")
    try:
        obs = {
            "ips": [ip["address"] for ip in res["ips"]],
            "n_interfaces": len(res["interfaces"]),
            "ifb_in_result": any(i["name"].startswith("bwp") for i in res["interfaces"]),
            "client_tcp": reach(client, "tcp", UP_NODE, 8080),
            "client_udp": reach(client, "udp", UP_NODE, 8053),
            "hairpin_tcp": reach(pod, "tcp", GW, 8080),
            "localhost_tcp": reach(node, "tcp", "127.0.0.1", 8080),
            "veth_tbf_bits": tbf_rate(node, host[0]),
            "ifb_tbf_bits": [tbf_rate(node, i) for i in ifbs(node)],
        }
        try:
            rt.check(net, pod.path, cid, "eth0")
            checked = "ok"
        except CNIError as e:
            checked = str(e)
    finally:
        for s in srv:
            s.stop()
    rt.delete(net, pod.path, cid, "eth0")
    obs["after_del"] = {"veths": veth_names(node), "ifbs": ifbs(node),
                        "nat_rules": nat_rules_for(node, pod_ip),
                        "client_tcp": reach(client, "tcp", UP_NODE, 8080)}
    return obs, checked


def netlab_cli(*argv):
    p = subprocess.run([sys.executable, "-m", "netlab", *argv], capture_output=True, text=True,
                       timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert p.returncode == 0, f"netlab {' '.join(argv)}: {p.stdout}\n{p.stderr}"
    return p.stdout


def test_netlab_cni_add_del_with_the_chain(tmp_path, make_netns, ours):
    """`netlab cni add/del` (the CLI, a subprocess) drives our bridge + portmap + bandwidth."""
    node, client, pod = make_netns("clinode"), make_netns("clicli"), make_netns("clipod")
    uplink(node, client)
    confdir = tmp_path / "net.d"
    confdir.mkdir()
    (confdir / "10-chain.conflist").write_text(json.dumps(conflist(tmp_path)))
    common = ["--conf-dir", str(confdir), "--cni-path", ours, "--cache-dir",
              str(tmp_path / "cache"), "--host-netns", node.name]
    cap = json.dumps({"portMappings": [{"hostPort": 8080, "containerPort": 80}],
                      "bandwidth": BW})
    res = json.loads(netlab_cli("cni", "add", "chain", pod.name, "--id", "cli1", "--cap", cap,
                                *common))
    assert res["ips"][0]["address"] == "10.66.0.2/24"
    srv = Server(pod, 80)
    try:
        assert reach(client, "tcp", UP_NODE, 8080) == f"pod {UP_CLIENT}"
    finally:
        srv.stop()
    host = veth_names(node)
    assert len(host) == 1 and tbf_rate(node, host[0]) == [BW["ingressRate"]]
    assert [tbf_rate(node, i) for i in ifbs(node)] == [[BW["egressRate"]]]
    netlab_cli("cni", "check", "chain", pod.name, "--id", "cli1", *common)
    netlab_cli("cni", "del", "chain", pod.name, "--id", "cli1", *common)
    assert veth_names(node) == [] and ifbs(node) == [] and nat_rules_for(node, "10.66.0.2") == []


@pytest.mark.skipif(not HAVE_REF, reason="reference plugins not in /usr/lib/cni")
def test_same_observable_state_as_reference(tmp_path, make_netns, ours):
    caps = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                             {"hostPort": 8053, "containerPort": 53, "protocol": "udp"}],
            "bandwidth": BW}
    seen, checks = {}, {}
    for label, path in (("ours", ours), ("reference", REF)):
        node, client, pod = make_netns("ch" + label[:3]), make_netns("chcli"), make_netns("chpod")
        uplink(node, client)
        rt = Runtime([path], cache_dir=str(tmp_path / label / "cache"), host_netns=node.path)
        seen[label], checks[label] = observe(node, client, pod, rt, conflist(tmp_path / label),
                                             "pm1", caps)
    o, r = seen["ours"], seen["reference"]
    assert o == r, json.dumps(seen, indent=1)
    # and the state is the one we want, not merely the same
    assert o["client_tcp"] == f"pod {UP_CLIENT}" and o["client_udp"] == f"dns {UP_CLIENT}"
    assert o["hairpin_tcp"] == f"pod {GW}" and o["localhost_tcp"] == f"pod {GW}"
    assert o["veth_tbf_bits"] == [BW["ingressRate"]] and o["ifb_tbf_bits"] == [[BW["egressRate"]]]
    assert o["after_del"] == {"veths": [], "ifbs": [], "nat_rules": [], "client_tcp": ""}
    # CHECK: ours passes on this IPv4-only pod; the reference 1.1.1 portmap fails here
    # ("could not check ipv6 dnat": known pain 5), which is why it is not compared
    assert checks["ours"] == "ok", checks


@pytest.mark.slow
def test_30_parallel_adds_and_dels_leave_nothing(tmp_path, make_netns, ours):
    node = make_netns("chpar")
    pods = [make_netns("chp") for _ in range(30)]
    rt = Runtime([ours], cache_dir=str(tmp_path / "cache"), host_netns=node.path)
    net = conflist(tmp_path, "par")

    def caps(i):
        return {"portMappings": [{"hostPort": 20000 + i, "containerPort": 80},
                                 {"hostPort": 21000 + i, "containerPort": 53,
                                  "protocol": "udp"}],
                "bandwidth": BW}

    def add(i):
        return rt.add(net, pods[i].path, f"par{i}", "eth0", capability_args=caps(i))

    def delete(i):
        rt.delete(net, pods[i].path, f"par{i}", "eth0")

    with ThreadPoolExecutor(30) as ex:
        results = list(ex.map(add, range(30)))
    ips = {r["ips"][0]["address"] for r in results}
    assert len(ips) == 30
    ruleset = node.run("nft", "-j", "list", "table", "ip", "cnilab-portmap").stdout
    comments = {r["rule"]["comment"] for r in json.loads(ruleset)["nftables"]
                if "rule" in r and r["rule"].get("comment")}
    assert len(comments) == 30
    assert len(ifbs(node)) == 30 and len(veth_names(node)) == 30
    # exactly one entry rule in each shared chain despite 30 racing transactions
    text = node.run("nft", "list", "chain", "ip", "cnilab-portmap", "prerouting").stdout
    assert text.count("jump hostports") == 1
    with ThreadPoolExecutor(30) as ex:
        list(ex.map(delete, range(30)))
    ruleset = json.loads(node.run("nft", "-j", "list", "ruleset").stdout)["nftables"]
    assert [r for r in ruleset if "rule" in r and r["rule"].get("comment")] == []
    assert ifbs(node) == [] and veth_names(node) == []
    assert rt.cached_attachments() == []
    leftover = [f for f in os.listdir(tmp_path / "ipam" / "par")
                if f[0].isdigit() or ":" in f]
    assert leftover == []
    assert tc.ifb_name("par", "par0", "eth0") not in ifbs(node)
