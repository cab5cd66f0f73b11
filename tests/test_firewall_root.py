"""firewall in throwaway namespaces: the rules it keeps, what they do to traffic
between pods on two bridges, DEL/GC without prevResult or netns, bad input, and
the same ingress policy through the reference binary (iptables) side by side."""
from __future__ import annotations

import os
import shutil

import pytest

from plugins.net import firewall_rules as fr
from tests import chain_lab as cl
from tests import node_state

pytestmark = pytest.mark.root
REF = "/usr/lib/cni/firewall"
NET = "fwnet"
BR2, BR2_V4 = "cni1", "10.79.0.1"
PORT = 9090


def fw_rules(node) -> list[dict]:
    return cl.rules(node, "inet", fr.TABLE)


def attachment(rules, cid) -> list[dict]:
    return [r for r in rules if r.get("comment") == f"n:{NET} c:{cid} i:eth0"]


def second_bridge(node, pod_ns, n: int) -> cl.Pod:
    """A second bridge with its own subnet and one pod on it."""
    if not node_state.links_of_kind(node.name, "bridge").count(BR2):
        node.run("ip", "link", "add", BR2, "type", "bridge")
        node.run("ip", "addr", "add", f"{BR2_V4}/24", "dev", BR2)
        node.run("ip", "link", "set", BR2, "up")
    host = f"vq{n}{pod_ns.name[-4:]}".replace("-", "")[:15]
    node.run("ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns",
             pod_ns.name)
    node.run("ip", "link", "set", host, "master", BR2, "up")
    ip4 = f"10.79.0.{10 + n}"
    pod_ns.run("ip", "addr", "add", f"{ip4}/24", "dev", "eth0")
    pod_ns.run("ip", "link", "set", "eth0", "up")
    pod_ns.run("ip", "route", "add", "default", "via", BR2_V4)
    p = cl.Pod(pod_ns, host, ip4, None)
    return p


def prev_on(p: cl.Pod, bridge: str, gw: str, version: str = "0.4.0") -> dict:
    r = p.prev_result(version)
    r["interfaces"][0]["name"] = bridge
    r["ips"][0]["gateway"] = gw
    return r


@pytest.fixture
def two_bridges(make_netns, node):
    """Pod a on cni0 (10.77.0.11), pod b on cni1 (10.79.0.12), a server on b."""
    cl.make_node(node, v6=False)
    a = cl.add_pod(node, make_netns("pa"), 1, v6=False)
    b = second_bridge(node, make_netns("pb"), 2)
    srv = cl.Server(b.ns, PORT, "b")
    try:
        yield node, a, b
    finally:
        srv.stop()


def confs(a, b, version="0.4.0", **extra):
    return (cl.conf("firewall", NET, version, prev=prev_on(a, cl.BR, cl.NODE_V4, version),
                    **extra),
            cl.conf("firewall", NET, version, prev=prev_on(b, BR2, BR2_V4, version), **extra))


def test_add_check_del_gc(two_bridges):
    node, a, b = two_bridges
    ca, cb = confs(a, b, "1.1.0")
    out, rc = cl.call(node, "firewall", "ADD", ca, cid="ca", netns=a.ns.path)
    assert rc == 0 and out["ips"] == ca["prevResult"]["ips"]
    assert out["interfaces"] == ca["prevResult"]["interfaces"]
    assert cl.call(node, "firewall", "ADD", cb, cid="cb", netns=b.ns.path)[1] == 0
    rules = fw_rules(node)
    assert len(attachment(rules, "ca")) == 2 and len(attachment(rules, "cb")) == 2
    assert cl.call(node, "firewall", "CHECK", ca, cid="ca", netns=a.ns.path) == (None, 0)
    # a repeated ADD replaces, never duplicates
    assert cl.call(node, "firewall", "ADD", ca, cid="ca", netns=a.ns.path)[1] == 0
    assert len(attachment(fw_rules(node), "ca")) == 2
    # GC: cb is not valid any more
    gc = dict(ca, **{"cni.dev/valid-attachments": [{"containerID": "ca", "ifname": "eth0"}]})
    gc.pop("prevResult")
    assert cl.call(node, "firewall", "GC", gc) == (None, 0)
    assert cl.call(node, "firewall", "STATUS", gc) == (None, 0)
    assert attachment(fw_rules(node), "cb") == [] and len(attachment(fw_rules(node), "ca")) == 2
    # DEL needs neither prevResult nor the netns, and repeats
    bare = {k: v for k, v in ca.items() if k != "prevResult"}
    assert cl.call(node, "firewall", "DEL", bare, cid="ca") == (None, 0)
    assert cl.call(node, "firewall", "DEL", bare, cid="ca") == (None, 0)
    assert node_state.our_rules(node.name) == []
    out, rc = cl.call(node, "firewall", "CHECK", ca, cid="ca", netns=a.ns.path)
    assert rc == 1 and out["code"] == 102


def test_check_notices_a_missing_jump(two_bridges):
    node, a, b = two_bridges
    ca, _ = confs(a, b)
    assert cl.call(node, "firewall", "ADD", ca, cid="ca", netns=a.ns.path)[1] == 0
    node.run("nft", "flush", "chain", "inet", fr.TABLE, fr.CH_FORWARD)
    out, rc = cl.call(node, "firewall", "CHECK", ca, cid="ca", netns=a.ns.path)
    assert rc == 1 and out["code"] == 102 and "forward" in out["details"]
    assert cl.call(node, "firewall", "ADD", ca, cid="ca", netns=a.ns.path)[1] == 0
    assert cl.call(node, "firewall", "CHECK", ca, cid="ca", netns=a.ns.path) == (None, 0)


def _reach(a) -> bool:
    return cl.reach(a.ns, "tcp", "10.79.0.12", PORT, wait=2).startswith("b ")


def test_same_bridge_policy_separates_bridges_until_del(two_bridges):
    node, a, b = two_bridges
    ca, cb = confs(a, b, ingressPolicy="same-bridge")
    assert _reach(a)
    assert cl.call(node, "firewall", "ADD", ca, cid="ca", netns=a.ns.path)[1] == 0
    assert _reach(a)                       # only one bridge isolated: nothing to separate
    assert cl.call(node, "firewall", "ADD", cb, cid="cb", netns=b.ns.path)[1] == 0
    assert not _reach(a)
    # the gateway (the node itself) stays reachable: isolation is about forwarding
    assert node.run("true").returncode == 0
    assert a.ns.run("ping", "-c1", "-W2", cl.NODE_V4, check=False).returncode == 0
    assert cl.call(node, "firewall", "DEL", cb, cid="cb")[1] == 0
    assert _reach(a)                       # gone with the last attachment that asked


def test_open_policy_leaves_bridges_connected(two_bridges):
    node, a, b = two_bridges
    ca, cb = confs(a, b)
    for c, cid, p in ((ca, "ca", a), (cb, "cb", b)):
        assert cl.call(node, "firewall", "ADD", c, cid=cid, netns=p.ns.path)[1] == 0
    assert _reach(a)


@pytest.mark.slow
def test_admin_chain_rules_come_first(two_bridges):
    node, a, b = two_bridges
    ca, cb = confs(a, b, iptablesAdminChainName="MY-ADMIN")
    for c, cid, p in ((ca, "ca", a), (cb, "cb", b)):
        assert cl.call(node, "firewall", "ADD", c, cid=cid, netns=p.ns.path)[1] == 0
    node.run("nft", "add", "rule", "inet", fr.TABLE, "MY-ADMIN", "tcp", "dport", str(PORT),
             "drop")
    assert not _reach(a)
    # our DEL/ADD never touch the administrator's chain
    assert cl.call(node, "firewall", "DEL", ca, cid="ca")[1] == 0
    assert cl.call(node, "firewall", "ADD", ca, cid="ca", netns=a.ns.path)[1] == 0
    admin = [r for r in fw_rules(node) if r["chain"] == "MY-ADMIN"]
    assert len(admin) == 1 and not _reach(a)


def test_an_accept_here_does_not_override_a_drop_in_another_table(two_bridges):
    """The documented limit (docs/adr/0015): nftables runs every base chain of a hook;
    a drop in any of them is final, whatever our table accepted."""
    node, a, b = two_bridges
    ca, cb = confs(a, b)
    for c, cid, p in ((ca, "ca", a), (cb, "cb", b)):
        assert cl.call(node, "firewall", "ADD", c, cid=cid, netns=p.ns.path)[1] == 0
    node.run("nft", "add table inet admin-policy; add chain inet admin-policy filter_fw "
             "{ type filter hook forward priority 10; policy drop; }")
    assert not _reach(a)
    # what the administrator does instead: accept the pods in that table (or jump to it)
    node.run("nft", "add rule inet admin-policy filter_fw ip saddr 10.77.0.0/16 accept; "
             "add rule inet admin-policy filter_fw ct state established,related accept")
    assert _reach(a)


@pytest.mark.parametrize("extra, mention", [
    ({"backend": "firewalld"}, "firewalld"),
    ({"ingressPolicy": "closed"}, "ingressPolicy"),
    ({"iptablesAdminChainName": "a b"}, "iptablesAdminChainName"),
])
def test_bad_config_changes_nothing(two_bridges, extra, mention):
    node, a, b = two_bridges
    ca, _ = confs(a, b, **extra)
    before = node_state.state(node.name)
    out, rc = cl.call(node, "firewall", "ADD", ca, cid="ca", netns=a.ns.path)
    assert rc == 1 and out["code"] == 7 and mention in out["msg"] + out["details"]
    assert node_state.diff(before, node_state.state(node.name)) == []
    assert node_state.ruleset(node.name) == before["ruleset"]


def test_isolated_policy_separates_pods_of_one_bridge(make_netns, node):
    """Bridged traffic reaches the IP forward hook only with bridge netfilter on (the
    reference's isolation relies on the same); skipped where it is off."""
    cl.make_node(node, v6=False)
    on = node.run("cat", "/proc/sys/net/bridge/bridge-nf-call-iptables", check=False)
    if on.returncode != 0 or on.stdout.strip() != "1":
        pytest.skip("bridge netfilter (net.bridge.bridge-nf-call-iptables) is off here")
    a = cl.add_pod(node, make_netns("pa"), 1, v6=False)
    b = cl.add_pod(node, make_netns("pb"), 2, v6=False)
    srv = cl.Server(b.ns, PORT, "b")
    try:
        def reach() -> bool:
            return cl.reach(a.ns, "tcp", b.ip4, PORT, wait=2).startswith("b ")
        assert reach()
        ca = cl.conf("firewall", NET, "0.4.0", prev=a.prev_result("0.4.0"),
                     ingressPolicy="isolated")
        assert cl.call(node, "firewall", "ADD", ca, cid="ca", netns=a.ns.path)[1] == 0
        assert not reach()
        assert cl.call(node, "firewall", "DEL", ca, cid="ca")[1] == 0
        assert reach()
    finally:
        srv.stop()


@pytest.mark.slow
@pytest.mark.skipif(not os.access(REF, os.X_OK) or shutil.which("iptables") is None,
                    reason=f"reference plugin {REF} or iptables not installed")
def test_same_bridge_side_by_side_with_the_reference(two_bridges):
    """The reference (iptables rules) and ours (nftables) give the same traffic
    verdicts and pass prevResult on unchanged. The reference keeps its isolation
    rules after DEL; ours go with the last attachment."""
    node, a, b = two_bridges
    ca, cb = confs(a, b, ingressPolicy="same-bridge", backend="iptables")
    outs = []
    for c, cid, p in ((ca, "ra", a), (cb, "rb", b)):
        out, rc, err = cl.exec_plugin(node, "firewall", "ADD", c, cid=cid, netns=p.ns.path,
                                      exe=REF)
        assert rc == 0, (out, err)
        outs.append(out)
    ref_blocks = not _reach(a)
    for c, cid in ((ca, "ra"), (cb, "rb")):
        assert cl.exec_plugin(node, "firewall", "DEL", c, cid=cid, exe=REF)[1] == 0
    ref_after_del = _reach(a)
    node.run("iptables", "-F", "CNI-ISOLATION-STAGE-1")   # its leftovers, by name
    node.run("iptables", "-F", "CNI-ISOLATION-STAGE-2")
    assert _reach(a)
    for c, cid, p, ref_out in ((ca, "ca", a, outs[0]), (cb, "cb", b, outs[1])):
        out, rc, err = cl.exec_plugin(node, "firewall", "ADD", c, cid=cid, netns=p.ns.path)
        assert rc == 0, (out, err)
        out.pop("dns", None)
        ref_out.pop("dns", None)
        assert out == ref_out
    assert ref_blocks and not _reach(a)
    for c, cid in ((ca, "ca"), (cb, "cb")):
        assert cl.exec_plugin(node, "firewall", "DEL", c, cid=cid)[1] == 0
    assert _reach(a) and not ref_after_del


@pytest.mark.slow
def test_parallel_adds_and_dels_neither_race_nor_duplicate(two_bridges):
    """Sixteen ADDs at once through the installed launcher, then sixteen DELs: every
    attachment gets exactly its rules, the shared chain keeps exactly its two jumps."""
    from concurrent.futures import ThreadPoolExecutor
    node, a, _b = two_bridges
    ca, _ = confs(a, _b)
    cids = [f"par{i}" for i in range(16)]

    def run(command, cid):
        return cl.exec_plugin(node, "firewall", command, ca, cid=cid, netns=a.ns.path)

    with ThreadPoolExecutor(8) as pool:
        adds = list(pool.map(lambda cid: run("ADD", cid), cids))
    assert all(rc == 0 for _, rc, _ in adds), [e for _, rc, e in adds if rc][:2]
    rules = fw_rules(node)
    assert all(len(attachment(rules, cid)) == 2 for cid in cids)
    assert [r["expr"] for r in rules if r["chain"] == fr.CH_FORWARD] == \
        [r["expr"] for r in fr.forward_entry_rules()]
    # first ADDs racing may each insert the admin jump; the next ADD leaves one
    assert run("ADD", cids[0])[1] == 0
    assert len(fr.admin_jumps(cl.nft_json(node, "inet", fr.TABLE), fr.DEFAULT_ADMIN_CHAIN)) == 1
    with ThreadPoolExecutor(8) as pool:
        dels = list(pool.map(lambda cid: run("DEL", cid), cids))
    assert all(rc == 0 for _, rc, _ in dels), [e for _, rc, e in dels if rc][:2]
    assert node_state.our_rules(node.name) == []


def test_a_failing_transaction_changes_nothing(two_bridges, monkeypatch):
    """ADD is one nftables transaction: when the kernel refuses any part (here an
    injected jump to a chain that does not exist), not even the table appears."""
    node, a, b = two_bridges
    ca, _ = confs(a, b)
    before = node_state.ruleset(node.name)
    real = fr.attachment_rules

    def broken(p):
        return real(p) + [fr._rule(fr.CH_PODS, [{"jump": {"target": "no-such-chain"}}],
                                   p.comment)]

    monkeypatch.setattr(fr, "attachment_rules", broken)
    out, rc = cl.call(node, "firewall", "ADD", ca, cid="ca", netns=a.ns.path)
    assert rc == 1 and out["code"] == 5, out
    assert node_state.ruleset(node.name) == before
