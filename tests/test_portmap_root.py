"""portmap in throwaway namespaces: node (bridge) + pods + a client outside the node."""
from __future__ import annotations

import sys

import pytest

from tests.chain_lab import (NODE_V4, NODE_V6, UP6_NODE, UP_NODE, Server, add_pod, call, conf,
                       make_node, reach, rules)

pytestmark = pytest.mark.root

NET = "pmnet"
MAPS = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8053, "containerPort": 53, "protocol": "udp"}]


@pytest.fixture
def lab(make_netns):
    node, client, pns = make_netns("pmnode"), make_netns("pmcli"), make_netns("pmpod")
    make_node(node, client)
    pod = add_pod(node, pns, 1)
    return node, client, pod


def _add(node, pod, maps=MAPS, cid="c1", **extra):
    c = conf("portmap", NET, prev=pod.prev_result(), runtime={"portMappings": maps}, **extra)
    out, rc = call(node, "portmap", "ADD", c, cid=cid, netns=pod.ns.path)
    assert rc == 0, out
    return c, out


def test_hostport_tcp_udp_hairpin_localhost_and_del(lab):
    node, client, pod = lab
    c, out = _add(node, pod)
    assert out == pod.prev_result()           # prevResult passed through unchanged
    srv = Server(pod.ns, 80), Server(pod.ns, 53, name="pod53")
    try:
        # from outside the node, to the node's uplink address
        assert reach(client, "tcp", UP_NODE, 8080) == "pod 10.78.0.2"
        assert reach(client, "udp", UP_NODE, 8053) == "pod53 10.78.0.2"
        # IPv6 from outside
        assert reach(client, "tcp", UP6_NODE, 8080) == "pod fd78::2"
        # hairpin: the pod reaches itself through the node's address; masqueraded
        assert reach(pod.ns, "tcp", NODE_V4, 8080) == f"pod {NODE_V4}"
        assert reach(pod.ns, "udp", UP_NODE, 8053) == f"pod53 {NODE_V4}"
        assert reach(pod.ns, "tcp", NODE_V6, 8080) == f"pod {NODE_V6}"
        # the node itself, through localhost (IPv4) and through its own address
        assert reach(node, "tcp", "127.0.0.1", 8080) == f"pod {NODE_V4}"
        assert reach(node, "udp", "127.0.0.1", 8053) == f"pod53 {NODE_V4}"
        assert reach(node, "tcp", UP_NODE, 8080).startswith("pod ")
        assert reach(node, "tcp", UP6_NODE, 8080).startswith("pod ")   # node, own v6 address
        assert reach(node, "tcp", "::1", 8080, wait=1.5) == ""   # IPv6 localhost: impossible by DNAT
        assert node.run("sysctl", "-n", "net.ipv4.conf.cni0.route_localnet").stdout.strip() == "1"
        # CHECK passes on what ADD made
        out, rc = call(node, "portmap", "CHECK", c, netns=pod.ns.path)
        assert rc == 0, out
        # DEL: rules gone, traffic no longer forwarded
        out, rc = call(node, "portmap", "DEL", c, netns=pod.ns.path)
        assert rc == 0, out
        assert [r for r in rules(node, "ip") if r.get("comment")] == []
        assert [r for r in rules(node, "ip6") if r.get("comment")] == []
        assert reach(client, "tcp", UP_NODE, 8080) == ""
        # CHECK now fails with the plugin-specific code
        out, rc = call(node, "portmap", "CHECK", c, netns=pod.ns.path)
        assert rc == 1 and out["code"] == 102
        # DEL again is fine
        assert call(node, "portmap", "DEL", c)[1] == 0
    finally:
        for s in srv:
            s.stop()


def test_hostip_conditions_and_masqall(lab):
    node, client, pod = lab
    maps = [{"hostPort": 9090, "containerPort": 80, "hostIP": UP_NODE}]
    _add(node, pod, maps, masqAll=True, conditionsV4=["ip saddr", "10.78.0.0/24"])
    srv = Server(pod.ns, 80)
    try:
        # hostIP matches: forwarded, and masqAll masquerades the client
        assert reach(client, "tcp", UP_NODE, 9090) == f"pod {NODE_V4}"
        # IPv6 has no mapping (hostIP is IPv4)
        assert rules(node, "ip6") == [] or not [r for r in rules(node, "ip6") if r.get("comment")]
        # another local address of the node is not forwarded
        assert reach(pod.ns, "tcp", NODE_V4, 9090, wait=1.5) == ""
    finally:
        srv.stop()


def test_readd_replaces_and_gc(lab, make_netns):
    node, client, pod = lab
    pod2 = add_pod(node, make_netns("pmpod"), 2)
    c1, _ = _add(node, pod, cid="c1")
    _add(node, pod, cid="c1")                       # re-ADD: no duplicates
    _add(node, pod2, maps=[{"hostPort": 7070, "containerPort": 80}], cid="c2")
    n1 = len([r for r in rules(node, "ip") if "c:c1 " in r.get("comment", "")])
    assert n1 == 7  # 2 mappings x (hairpin mark, localhost mark, dnat) + 1 masquerade
    gc = conf("portmap", NET, version="1.1.0",
              **{"cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "eth0"}]})
    out, rc = call(node, "portmap", "GC", gc)
    assert rc == 0, out
    left = [r["comment"] for r in rules(node, "ip") + rules(node, "ip6") if r.get("comment")]
    assert left and all("c:c2 " in x for x in left)
    # a GC for another network leaves ours alone
    other = conf("portmap", "othernet", version="1.1.0", **{"cni.dev/valid-attachments": []})
    assert call(node, "portmap", "GC", other)[1] == 0
    assert [r["comment"] for r in rules(node, "ip") + rules(node, "ip6") if r.get("comment")] == left


def test_check_detects_tampering_and_ignores_missing_ip6(make_netns):
    node, pns = make_netns("pmnode"), make_netns("pmpod")
    make_node(node, v6=False)
    pod = add_pod(node, pns, 1, v6=False)
    c, _ = _add(node, pod)
    assert rules(node, "ip6") == []                 # no IPv6 table for a v4-only pod
    assert call(node, "portmap", "CHECK", c, netns=pod.ns.path)[1] == 0
    victim = [r for r in rules(node, "ip") if r.get("comment") and r["chain"] == "hostports"][0]
    node.run("nft", "delete", "rule", "ip", "cnilab-portmap", "hostports",
             "handle", str(victim["handle"]))
    out, rc = call(node, "portmap", "CHECK", c, netns=pod.ns.path)
    assert rc == 1 and out["code"] == 102 and "missing" in out["details"]


def test_invalid_mapping_writes_nothing(lab):
    node, client, pod = lab
    for bad in ({"hostPort": 0, "containerPort": 80}, {"hostPort": 70000, "containerPort": 80},
                {"hostPort": 80, "containerPort": 80, "protocol": "icmp"},
                {"hostPort": 80, "containerPort": 80, "hostIP": "1.2.3"}):
        c = conf("portmap", NET, prev=pod.prev_result(), runtime={"portMappings": [bad]})
        out, rc = call(node, "portmap", "ADD", c, netns=pod.ns.path)
        assert rc == 1 and out["code"] == 7, out
    c = conf("portmap", NET, prev=pod.prev_result(), runtime={"portMappings": MAPS},
             conditionsV4=["ip saddr bogus-thing ~~"])
    out, rc = call(node, "portmap", "ADD", c, netns=pod.ns.path)
    assert rc == 1 and out["code"] == 7, out
    assert node.run("nft", "list", "tables").stdout.strip() == ""


def test_no_prevresult_is_an_error_and_no_mappings_passes_through(lab):
    node, client, pod = lab
    out, rc = call(node, "portmap", "ADD", conf("portmap", NET, runtime={"portMappings": MAPS}),
                   netns=pod.ns.path)
    assert rc == 1 and "prevResult" in out["msg"]
    out, rc = call(node, "portmap", "ADD", conf("portmap", NET, prev=pod.prev_result("0.4.0"),
                                               version="0.4.0"), netns=pod.ns.path)
    assert rc == 0 and out == pod.prev_result("0.4.0")
    assert node.run("nft", "list", "tables").stdout.strip() == ""


def test_failure_after_the_rules_removes_them(lab, monkeypatch):
    node, client, pod = lab
    from plugins import portmap

    def boom(pod_ip, prev):
        raise OSError(5, "injected route_localnet failure")
    monkeypatch.setattr(portmap, "_enable_route_localnet", boom)
    c = conf("portmap", NET, prev=pod.prev_result(), runtime={"portMappings": MAPS})
    out, rc = call(node, "portmap", "ADD", c, netns=pod.ns.path)
    assert rc == 1 and "injected" in out["msg"]
    assert [r for r in rules(node, "ip") + rules(node, "ip6") if r.get("comment")] == []


def test_failing_rollback_keeps_the_original_error(lab, monkeypatch):
    """The undo of the rules fails after removing them: the runtime still sees the
    failure that started the rollback."""
    node, client, pod = lab
    from plugins import portmap

    def boom(pod_ip, prev):
        raise OSError(5, "injected route_localnet failure")
    real_remove = portmap._remove

    def remove_then_fail(*args, **kw):
        real_remove(*args, **kw)
        raise RuntimeError("undo step broke")
    monkeypatch.setattr(portmap, "_enable_route_localnet", boom)
    monkeypatch.setattr(portmap, "_remove", remove_then_fail)
    c = conf("portmap", NET, prev=pod.prev_result(), runtime={"portMappings": MAPS})
    out, rc = call(node, "portmap", "ADD", c, netns=pod.ns.path)
    assert rc == 1 and out["code"] == 5 and "injected route_localnet" in out["msg"], out
    assert [r for r in rules(node, "ip") + rules(node, "ip6") if r.get("comment")] == []


def test_udp_conntrack_entries_for_host_ports_are_flushed(lab):
    node, client, pod = lab
    _add(node, pod, maps=[{"hostPort": 7000, "containerPort": 80}], cid="other")  # NAT active
    # a UDP flow to the node's port 8053 before the mapping exists: conntrack remembers it
    client.run(sys.executable, "-c", "import socket; s=socket.socket(socket.AF_INET, "
               f"socket.SOCK_DGRAM); s.bind(('0.0.0.0', 40053)); "
               f"s.sendto(b'x', ('{UP_NODE}', 8053))")
    listed = node.run("conntrack", "-L", "-p", "udp", "--orig-port-dst", "8053", check=False)
    assert "dport=8053" in listed.stdout
    _add(node, pod)
    listed = node.run("conntrack", "-L", "-p", "udp", "--orig-port-dst", "8053", check=False)
    assert "dport=8053" not in listed.stdout
    srv = Server(pod.ns, 53, name="pod53")
    try:   # the same source port now reaches the pod at once
        assert reach(client, "udp", UP_NODE, 8053) == "pod53 10.78.0.2"
    finally:
        srv.stop()


def test_parallel_adds_and_dels_in_threads(make_netns):
    """12 ADDs then 12 DELs at once (threads, each in the node netns): no failure, one
    entry rule per shared chain, and nothing left."""
    from concurrent.futures import ThreadPoolExecutor
    node, pns = make_netns("pmnode"), make_netns("pmpod")
    make_node(node)
    pod = add_pod(node, pns, 1)

    def run(i, cmd):
        c = conf("portmap", NET, prev=pod.prev_result(),
                 runtime={"portMappings": [{"hostPort": 30000 + i, "containerPort": 80},
                                           {"hostPort": 30000 + i, "containerPort": 53,
                                            "protocol": "udp"}]})
        return call(node, "portmap", cmd, c, cid=f"par{i}", netns=pod.ns.path)

    with ThreadPoolExecutor(12) as ex:
        adds = list(ex.map(lambda i: run(i, "ADD"), range(12)))
    assert [rc for _, rc in adds] == [0] * 12, adds
    for fam in ("ip", "ip6"):
        keyed = {r["comment"] for r in rules(node, fam) if r.get("comment")}
        assert len(keyed) == 12
        text = node.run("nft", "list", "table", fam, "cnilab-portmap").stdout
        assert text.count("jump hostports") == 2        # prerouting + output, once each
    with ThreadPoolExecutor(12) as ex:
        dels = list(ex.map(lambda i: run(i, "DEL"), range(12)))
    assert [rc for _, rc in dels] == [0] * 12, dels
    assert [r for r in rules(node, "ip") + rules(node, "ip6") if r.get("comment")] == []
