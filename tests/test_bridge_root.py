"""Root tests of the bridge plugin: handlers run in-process (the dispatcher) with a
throwaway node namespace as their host and pods as separate namespaces."""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

from plugins import bridge
from plugins.core.errors import (ADDRESS_UNAVAILABLE, CHECK_FAILED, INVALID_NETWORK_CONFIG,
                                 LINK_EXISTS, NOT_AVAILABLE, POOL_EXHAUSTED, NOT_SUPPORTED_BY_KERNEL)
from plugins.net import attach, masq
from tests.bridge_lab import (VERSIONS, addrs, call, conf, links, nft_table, node_veths, ok,
                              ping, pod_links, reservations, routes)

pytestmark = pytest.mark.root


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "ipam")


# ---- connectivity, for every result version --------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_two_pods_reach_each_other_and_gateway(node, make_netns, data_dir, version):
    p1, p2 = make_netns("pod"), make_netns("pod")
    c = conf(data_dir, version, v6="fd31::/64", isGateway=True)
    r1 = ok(call(node, "ADD", c, netns=p1.path, cid="c1"))
    r2 = ok(call(node, "ADD", c, netns=p2.path, cid="c2"))
    assert r1["cniVersion"] == version
    names = [i["name"] for i in r1["interfaces"]]
    assert names == ["cni0", attach.host_veth_name("brnet", "c1", "eth0"), "eth0"]
    assert r1["interfaces"][2]["sandbox"] == p1.path
    ip4, ip6 = r1["ips"]
    assert ip4["interface"] == 2 and ip4["gateway"] == "10.31.0.1"
    assert ip6["interface"] == 2 and ip6["gateway"] == "fd31::1"
    if version.startswith("0."):
        assert (ip4["version"], ip6["version"]) == ("4", "6")
    else:
        assert "version" not in ip4
    assert addrs(p1, "eth0") == {ip4["address"], ip6["address"]}
    assert {"10.31.0.1/24", "fd31::1/64"} <= addrs(node, "cni0")
    for me, other in ((p1, r2), (p2, r1)):
        for ip in other["ips"]:
            assert ping(me, ip["address"].split("/")[0]), (me, ip)
    assert ping(p1, "10.31.0.1") and ping(p1, "fd31::1")
    if version not in ("0.3.0", "0.3.1"):
        ok(call(node, "CHECK", c, netns=p1.path, cid="c1", prev=r1))
    ok(call(node, "DEL", c, netns=p1.path, cid="c1", prev=r1))
    ok(call(node, "DEL", c, netns=p2.path, cid="c2", prev=r2))
    assert pod_links(p1) == set() and pod_links(p2) == set()
    assert node_veths(node) == set()
    assert reservations(data_dir) == {}


def test_dual_stack(node, make_netns, data_dir):
    p1, p2 = make_netns("pod"), make_netns("pod")
    c = conf(data_dir, "1.1.0", v6="fd31::/64", isDefaultGateway=True)
    r1 = ok(call(node, "ADD", c, netns=p1.path, cid="c1"))
    r2 = ok(call(node, "ADD", c, netns=p2.path, cid="c2"))
    fams = sorted(ipaddress.ip_interface(i["address"]).version for i in r1["ips"])
    assert fams == [4, 6]
    assert {"10.31.0.1/24", "fd31::1/64"} <= addrs(node, "cni0")
    v6_2 = [i["address"].split("/")[0] for i in r2["ips"] if ":" in i["address"]][0]
    assert ping(p1, v6_2) and ping(p1, "fd31::1")
    d6 = [r for r in routes(p1, "-6") if r["dst"] == "default"]
    assert d6 and d6[0]["gateway"] == "fd31::1"
    assert node.run("sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip() == "1"
    assert node.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    ok(call(node, "CHECK", c, netns=p1.path, cid="c1", prev=r1))
    ok(call(node, "DEL", c, netns=p1.path, cid="c1", prev=r1))
    ok(call(node, "DEL", c, netns=p2.path, cid="c2", prev=r2))
    assert reservations(data_dir) == {}


@pytest.mark.skipif(not os.access("/usr/lib/cni/host-local", os.X_OK),
                    reason="reference host-local not installed")
def test_with_the_reference_host_local_execd(node, pod, data_dir):
    """Delegation by exec (CNI_PATH) works too: the Go host-local as our IPAM."""
    env = {"CNILAB_EXEC_DELEGATES": "1"}
    c = conf(data_dir, "1.0.0", isGateway=True)
    r = ok(call(node, "ADD", c, netns=pod.path, env=env))
    assert list(reservations(data_dir).values()) == ["c1\r\neth0"]
    assert ping(pod, "10.31.0.1")
    ok(call(node, "CHECK", c, netns=pod.path, prev=r, env=env))
    ok(call(node, "DEL", c, netns=pod.path, env=env))
    assert reservations(data_dir) == {}


# ---- variants observed in the kernel -----------------------------------------------

def test_hairpin_mtu_default_gateway_and_route_metrics(node, pod, data_dir):
    ipam = {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.31.0.0/24"}]],
            "routes": [{"dst": "10.40.0.0/16", "mtu": 1300, "advmss": 1260}]}
    c = conf(data_dir, "1.1.0", ipam=ipam, isDefaultGateway=True, hairpinMode=True, mtu=1400)
    r = ok(call(node, "ADD", c, netns=pod.path))
    host = attach.host_veth_name("brnet", "c1", "eth0")
    nl = links(node)
    assert nl["cni0"]["mtu"] == 1400 and nl[host]["mtu"] == 1400
    assert nl[host]["master"] == "cni0"
    assert nl[host]["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert "PROMISC" not in nl["cni0"]["flags"]
    pl = links(pod)
    assert pl["eth0"]["mtu"] == 1400
    rts = {x["dst"]: x for x in routes(pod)}
    assert rts["default"]["gateway"] == "10.31.0.1"
    assert rts["10.40.0.0/16"]["gateway"] == "10.31.0.1"
    assert rts["10.40.0.0/16"]["metrics"] == [{"mtu": 1300, "advmss": 1260}]
    assert pod.run("sysctl", "-n", "net.ipv4.conf.eth0.arp_notify").stdout.strip() == "1"
    ok(call(node, "CHECK", c, netns=pod.path, prev=r))
    ok(call(node, "DEL", c, netns=pod.path, prev=r))


def test_a_route_the_pod_already_has_wins(node, pod, data_dir):
    """Second attachment with isDefaultGateway in a pod that already has a default
    route (another interface): the existing route stays, ADD succeeds (as the
    reference: first route wins)."""
    pod.run("ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1")
    pod.run("ip", "link", "set", "other1", "up")
    pod.run("ip", "addr", "add", "192.0.2.2/24", "dev", "other0")
    pod.run("ip", "link", "set", "other0", "up")
    pod.run("ip", "route", "add", "default", "via", "192.0.2.1")
    c = conf(data_dir, "1.1.0", isDefaultGateway=True)
    r = ok(call(node, "ADD", c, netns=pod.path))
    rts = {x["dst"]: x for x in routes(pod)}
    assert rts["default"]["gateway"] == "192.0.2.1" and rts["default"]["dev"] == "other0"
    assert addrs(pod, "eth0") == {r["ips"][0]["address"]}
    ok(call(node, "DEL", c, netns=pod.path, prev=r))


def test_promisc_and_port_isolation(node, make_netns, data_dir):
    p1, p2 = make_netns("pod"), make_netns("pod")
    c = conf(data_dir, "1.0.0", promiscMode=True, portIsolation=True, isGateway=True)
    r1 = ok(call(node, "ADD", c, netns=p1.path, cid="c1"))
    r2 = ok(call(node, "ADD", c, netns=p2.path, cid="c2"))
    nl = links(node)
    assert "PROMISC" in nl["cni0"]["flags"]
    host = attach.host_veth_name("brnet", "c1", "eth0")
    assert nl[host]["linkinfo"]["info_slave_data"]["isolated"] is True
    # isolated ports reach the bridge (gateway) but not each other
    assert ping(p1, "10.31.0.1")
    assert not ping(p1, r2["ips"][0]["address"].split("/")[0])
    ok(call(node, "CHECK", c, netns=p1.path, cid="c1", prev=r1))
    ok(call(node, "DEL", c, netns=p1.path, cid="c1"))
    ok(call(node, "DEL", c, netns=p2.path, cid="c2"))


def test_raising_an_existing_bridge_mtu(node, pod, data_dir):
    node.run("ip", "link", "add", "cni0", "mtu", "1300", "type", "bridge")
    c = conf(data_dir, "1.0.0", mtu=1450)
    ok(call(node, "ADD", c, netns=pod.path))
    assert links(node)["cni0"]["mtu"] == 1450
    ok(call(node, "DEL", c, netns=pod.path))


def test_l2_only_without_ipam(node, pod, data_dir):
    c = conf(data_dir, "1.0.0", ipam={})
    r = ok(call(node, "ADD", c, netns=pod.path))
    assert "ips" not in r
    assert "UP" in links(pod)["eth0"]["flags"]
    ok(call(node, "DEL", c, netns=pod.path))
    assert pod_links(pod) == set()


def test_disable_container_interface_leaves_pod_link_down(node, pod, data_dir):
    c = conf(data_dir, "1.0.0", ipam={}, disableContainerInterface=True)
    ok(call(node, "ADD", c, netns=pod.path))
    assert "UP" not in links(pod)["eth0"]["flags"]
    ok(call(node, "DEL", c, netns=pod.path))


def test_mac_from_cni_args(node, pod, data_dir):
    c = conf(data_dir, "1.0.0")
    r = ok(call(node, "ADD", c, netns=pod.path, cni_args="IgnoreUnknown=1;MAC=0a:58:0a:1f:00:99"))
    assert r["interfaces"][2]["mac"] == "0a:58:0a:1f:00:99"
    assert links(pod)["eth0"]["address"] == "0a:58:0a:1f:00:99"
    ok(call(node, "DEL", c, netns=pod.path))


# ---- nftables: masquerade and macspoofchk ----------------------------------------

def test_masquerade_rules_appear_work_and_disappear(node, make_netns, data_dir):
    pod, outside = make_netns("pod"), make_netns("out")
    # an "outside" host on an uplink of the node; it has no route back to the pod subnet
    node.wire(outside, "up0", "up0o", ("10.32.0.1/24",), ("10.32.0.2/24",))
    c = conf(data_dir, "1.0.0", v6="fd31::/64", isDefaultGateway=True, ipMasq=True)
    r = ok(call(node, "ADD", c, netns=pod.path))
    table = nft_table(node, "inet", "cnilab_masq")
    key = masq.attachment_key("brnet", "c1", "eth0")
    assert table.count(key) == 2
    assert "ip daddr 224.0.0.0/4 return" in table and "ip6 daddr ff00::/8 return" in table
    assert ping(pod, "10.32.0.2")          # only possible when masqueraded
    ok(call(node, "CHECK", c, netns=pod.path, prev=r))
    ok(call(node, "DEL", c, netns=pod.path, prev=r))
    assert key not in nft_table(node, "inet", "cnilab_masq")
    assert not ping(pod, "10.32.0.2")


def test_del_removes_masquerade_when_the_netns_is_gone(node, make_netns, data_dir):
    from netlab.base import namespaces as nsutil
    pod = make_netns("pod")
    c = conf(data_dir, "1.0.0", ipMasq=True, isGateway=True)
    ok(call(node, "ADD", c, netns=pod.path))
    key = masq.attachment_key("brnet", "c1", "eth0")
    assert key in nft_table(node, "inet", "cnilab_masq")
    nsutil.delete(pod.name)
    ok(call(node, "DEL", c, netns=pod.path))           # path no longer exists
    assert key not in nft_table(node, "inet", "cnilab_masq")
    assert reservations(data_dir) == {}
    ok(call(node, "DEL", c, netns=""))                  # and again, with an empty CNI_NETNS


def test_macspoofchk_drops_spoofed_frames(node, pod, data_dir):
    c = conf(data_dir, "1.0.0", isGateway=True, macspoofchk=True)
    r = ok(call(node, "ADD", c, netns=pod.path))
    mac = r["interfaces"][2]["mac"]
    table = nft_table(node, "bridge", "cnilab_macspoof")
    assert mac in table and attach.host_veth_name("brnet", "c1", "eth0") in table
    assert ping(pod, "10.31.0.1")
    pod.run("ip", "link", "set", "eth0", "address", "0a:58:de:ad:be:ef")
    pod.run("ip", "neigh", "flush", "all")
    node.run("ip", "neigh", "flush", "all")
    assert not ping(pod, "10.31.0.1")
    ok(call(node, "DEL", c, netns=pod.path))
    assert masq.attachment_key("brnet", "c1", "eth0") not in nft_table(node, "bridge", "cnilab_macspoof")


def test_gc_removes_rules_and_reservations_of_stale_attachments(node, make_netns, data_dir):
    p1, p2 = make_netns("pod"), make_netns("pod")
    c = conf(data_dir, "1.1.0", ipMasq=True, isGateway=True, macspoofchk=True)
    ok(call(node, "ADD", c, netns=p1.path, cid="c1"))
    ok(call(node, "ADD", c, netns=p2.path, cid="c2"))
    k1, k2 = (masq.attachment_key("brnet", cid, "eth0") for cid in ("c1", "c2"))
    gc_conf = dict(c, **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]})
    ok(call(node, "GC", gc_conf))
    t = nft_table(node, "inet", "cnilab_masq")
    assert k1 in t and k2 not in t
    t = nft_table(node, "bridge", "cnilab_macspoof")
    assert k1 in t and k2 not in t
    owners = list(reservations(data_dir).values())
    assert len(owners) == 1 and owners[0].startswith("c1")
    # c2's pod namespace still exists: its veth (both ends) goes too, c1's stays
    h1, h2 = (attach.host_veth_name("brnet", cid, "eth0") for cid in ("c1", "c2"))
    nl = links(node)
    assert h1 in nl and h2 not in nl
    assert "eth0" not in links(p2) and "eth0" in links(p1)
    ok(call(node, "DEL", c, netns=p1.path, cid="c1"))


def test_gc_spares_veths_it_did_not_make(node, make_netns, data_dir):
    """A bridge port of another network (or made by hand) is not ours to collect."""
    p1 = make_netns("pod")
    c = conf(data_dir, "1.1.0")
    ok(call(node, "ADD", c, netns=p1.path, cid="c1"))
    node.run("ip", "link", "add", "handmade0", "type", "veth", "peer", "name", "handmade1")
    node.run("ip", "link", "set", "handmade0", "master", "cni0")
    other = dict(c, name="othernet")
    ok(call(node, "ADD", other, netns=make_netns("pod").path, cid="o1"))
    ok(call(node, "GC", dict(c, **{"cni.dev/valid-attachments": []})))
    nl = links(node)
    assert attach.host_veth_name("brnet", "c1", "eth0") not in nl
    assert "handmade0" in nl and attach.host_veth_name("othernet", "o1", "eth0") in nl


def test_status_delegates_to_ipam(node, pod, data_dir):
    c = conf(data_dir, "1.1.0", v4="10.31.0.0/30")
    ok(call(node, "STATUS", c))
    ok(call(node, "ADD", c, netns=pod.path))
    rc, err = call(node, "STATUS", c)            # the only address is taken
    assert rc == 1 and err["code"] in (NOT_AVAILABLE, 51)
    ok(call(node, "DEL", c, netns=pod.path))


# ---- CHECK finds drift ----------------------------------------------------------

def test_check_detects_drift(node, pod, data_dir):
    c = conf(data_dir, "1.0.0", isGateway=True, mtu=1400)
    r = ok(call(node, "ADD", c, netns=pod.path))
    ok(call(node, "CHECK", c, netns=pod.path, prev=r))
    pod.run("ip", "link", "set", "eth0", "mtu", "1300")
    rc, err = call(node, "CHECK", c, netns=pod.path, prev=r)
    assert rc == 1 and err["code"] == CHECK_FAILED and "MTU" in err["msg"]
    pod.run("ip", "link", "set", "eth0", "mtu", "1400")
    pod.run("ip", "addr", "flush", "dev", "eth0")
    rc, err = call(node, "CHECK", c, netns=pod.path, prev=r)
    assert rc == 1 and err["code"] == CHECK_FAILED and "address" in err["msg"]
    rc, err = call(node, "CHECK", c, netns=pod.path)
    assert rc == 1 and err["code"] == INVALID_NETWORK_CONFIG and "prevResult" in err["msg"]
    pod.run("ip", "addr", "add", r["ips"][0]["address"], "dev", "eth0")
    pod.run("ip", "route", "add", "default", "via", "10.31.0.1", "dev", "eth0", check=False)
    ok(call(node, "CHECK", c, netns=pod.path, prev=r))
    node.run("ip", "addr", "del", "10.31.0.1/24", "dev", "cni0")
    rc, err = call(node, "CHECK", c, netns=pod.path, prev=r)
    assert rc == 1 and err["code"] == CHECK_FAILED and "gateway" in err["msg"]
    ok(call(node, "DEL", c, netns=pod.path))


# ---- rollback: a failed ADD leaves nothing behind ---------------------------------

def _assert_nothing_left(node, pod, data_dir, cid="c1", bridge_existed=False):
    if not bridge_existed:
        assert "cni0" not in links(node), "bridge created by the failed ADD left behind"
    assert pod_links(pod) == set(), "veth left in the pod"
    assert node_veths(node) == set(), "veth left on the node"
    assert not any(v.startswith(cid + "\r") for v in reservations(data_dir).values()), \
        "IP left reserved"
    key = masq.attachment_key("brnet", cid, "eth0")
    assert key not in nft_table(node, "inet", "cnilab_masq"), "masquerade rule left"
    assert key not in nft_table(node, "bridge", "cnilab_macspoof"), "macspoofchk rule left"


ROLLBACK_EXTRA = {"ipMasq": True, "macspoofchk": True, "isGateway": True}


def test_rollback_bad_ipam_config(node, pod, data_dir):
    c = conf(data_dir, "1.0.0", ipam={"type": "host-local", "dataDir": data_dir}, **ROLLBACK_EXTRA)
    rc, err = call(node, "ADD", c, netns=pod.path)
    assert rc == 1 and err["code"] == INVALID_NETWORK_CONFIG
    _assert_nothing_left(node, pod, data_dir)
    ok(call(node, "DEL", c, netns=pod.path))            # DEL after a failed ADD


def test_rollback_exhausted_pool(node, make_netns, data_dir):
    p1, p2 = make_netns("pod"), make_netns("pod")
    c = conf(data_dir, "1.0.0", v4="10.31.0.0/30", **ROLLBACK_EXTRA)
    ok(call(node, "ADD", c, netns=p1.path, cid="c1"))
    rc, err = call(node, "ADD", c, netns=p2.path, cid="c2")
    assert rc == 1 and err["code"] == POOL_EXHAUSTED, err
    assert pod_links(p2) == set()
    assert node_veths(node) == {attach.host_veth_name("brnet", "c1", "eth0")}
    assert masq.attachment_key("brnet", "c2", "eth0") not in nft_table(node, "inet", "cnilab_masq")
    ok(call(node, "DEL", c, netns=p2.path, cid="c2"))
    ok(call(node, "DEL", c, netns=p1.path, cid="c1"))
    _assert_nothing_left(node, p1, data_dir, bridge_existed=True)


def test_rollback_missing_ipam_plugin(node, pod, data_dir):
    c = conf(data_dir, "1.0.0", ipam={"type": "no-such-ipam"}, **ROLLBACK_EXTRA)
    rc, err = call(node, "ADD", c, netns=pod.path)
    assert rc == 1 and err["code"] == NOT_AVAILABLE
    _assert_nothing_left(node, pod, data_dir)


def test_rollback_gateway_address_conflict(node, pod, data_dir):
    node.run("ip", "link", "add", "cni0", "type", "bridge")
    node.run("ip", "addr", "add", "10.99.0.1/24", "dev", "cni0")
    c = conf(data_dir, "1.0.0", **ROLLBACK_EXTRA)
    rc, err = call(node, "ADD", c, netns=pod.path)
    assert rc == 1 and err["code"] == ADDRESS_UNAVAILABLE and "forceAddress" in err["details"]
    _assert_nothing_left(node, pod, data_dir, bridge_existed=True)
    assert addrs(node, "cni0") == {"10.99.0.1/24"}
    # forceAddress replaces it
    c["forceAddress"] = True
    ok(call(node, "ADD", c, netns=pod.path))
    assert addrs(node, "cni0") == {"10.31.0.1/24"}
    ok(call(node, "DEL", c, netns=pod.path))


def test_rollback_after_injected_failure_past_ipam(node, pod, data_dir, monkeypatch):
    def boom():
        raise RuntimeError("injected failure after IPAM")
    monkeypatch.setattr(bridge, "after_ipam_hook", boom)
    c = conf(data_dir, "1.0.0", v6="fd31::/64", **ROLLBACK_EXTRA)
    rc, err = call(node, "ADD", c, netns=pod.path)
    assert rc == 1 and "injected" in err["msg"]
    _assert_nothing_left(node, pod, data_dir)


def test_rollback_with_failing_undo_steps_reports_the_original_error(node, pod, data_dir,
                                                                    monkeypatch):
    """Two undo steps fail after doing their work (the masquerade and macspoofchk
    teardowns): both are logged, every other step still runs, and the runtime sees
    the error that started the rollback, code and message unchanged."""
    from plugins.net import macspoof
    from plugins.core.errors import CNIError, IO_FAILURE

    def boom():
        raise CNIError(IO_FAILURE, "injected failure after IPAM", "the original")
    for mod in (masq, macspoof):
        real = mod.teardown

        def teardown_then_fail(*args, _real=real, **kw):
            _real(*args, **kw)
            raise OSError(16, "undo step broke")
        monkeypatch.setattr(mod, "teardown", teardown_then_fail)
    monkeypatch.setattr(bridge, "after_ipam_hook", boom)
    rc, err = call(node, "ADD", conf(data_dir, "1.0.0", **ROLLBACK_EXTRA), netns=pod.path)
    assert rc == 1 and (err["code"], err["msg"], err.get("details")) == \
        (IO_FAILURE, "injected failure after IPAM", "the original"), err
    _assert_nothing_left(node, pod, data_dir)


def test_rollback_keeps_a_new_bridge_that_another_pod_joined(node, pod, data_dir, monkeypatch):
    """A parallel ADD may attach to the bridge this ADD created: rollback must keep it."""
    def join_then_fail():
        node.run("ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1")
        node.run("ip", "link", "set", "other0", "master", "cni0")
        raise RuntimeError("injected failure after another pod joined")
    monkeypatch.setattr(bridge, "after_ipam_hook", join_then_fail)
    rc, err = call(node, "ADD", conf(data_dir, "1.0.0", isGateway=True), netns=pod.path)
    assert rc == 1 and "injected" in err["msg"]
    assert links(node)["other0"]["master"] == "cni0"
    assert pod_links(pod) == set() and reservations(data_dir) == {}


def test_add_twice_fails_and_keeps_the_first(node, pod, data_dir):
    c = conf(data_dir, "1.0.0", isGateway=True)
    r = ok(call(node, "ADD", c, netns=pod.path))
    rc, err = call(node, "ADD", c, netns=pod.path)
    assert rc == 1 and err["code"] == LINK_EXISTS
    ok(call(node, "CHECK", c, netns=pod.path, prev=r))
    assert len(reservations(data_dir)) == 1
    ok(call(node, "DEL", c, netns=pod.path))


# ---- DEL idempotency ------------------------------------------------------------

def test_del_twice_and_without_prev_result(node, pod, data_dir):
    c = conf(data_dir, "1.0.0", ipMasq=True)
    r = ok(call(node, "ADD", c, netns=pod.path))
    ok(call(node, "DEL", c, netns=pod.path, prev=r))
    ok(call(node, "DEL", c, netns=pod.path, prev=r))
    ok(call(node, "DEL", c, netns=pod.path))
    _assert_nothing_left(node, pod, data_dir, bridge_existed=True)


def test_del_with_empty_netns_removes_host_side(node, pod, data_dir):
    c = conf(data_dir, "1.0.0", ipMasq=True)
    ok(call(node, "ADD", c, netns=pod.path))
    ok(call(node, "DEL", c, netns=""))
    _assert_nothing_left(node, pod, data_dir, bridge_existed=True)


# ---- bad input changes nothing ----------------------------------------------------

@pytest.mark.parametrize("extra", [{"mtu": -1}, {"bridge": "x" * 16},
                                   {"hairpinMode": True, "promiscMode": True}])
def test_bad_config_creates_nothing(node, pod, data_dir, extra):
    c = conf(data_dir, "1.0.0", **extra)
    rc, err = call(node, "ADD", c, netns=pod.path)
    assert rc == 1 and err["code"] == INVALID_NETWORK_CONFIG
    assert set(links(node)) == {"lo"} and pod_links(pod) == set()
    assert reservations(data_dir) == {}


def test_existing_non_bridge_link_is_an_error(node, pod, data_dir):
    node.run("ip", "link", "add", "cni0", "type", "veth", "peer", "name", "cni0p")
    rc, err = call(node, "ADD", conf(data_dir, "1.0.0"), netns=pod.path)
    assert rc == 1 and err["code"] == LINK_EXISTS and "not a bridge" in err["msg"]
    assert pod_links(pod) == set() and reservations(data_dir) == {}
    assert node_veths(node) == {"cni0", "cni0p"}


def test_missing_netns_is_code_3(node, data_dir):
    rc, err = call(node, "ADD", conf(data_dir, "1.0.0"), netns="/var/run/netns/does-not-exist-xyz")
    assert rc == 1 and err["code"] == 3
    assert set(links(node)) == {"lo"}


# ---- vlan (needs bridge vlan filtering) ------------------------------------------

def _kernel_has_vlan_filtering(node) -> bool:
    p = node.run("ip", "link", "add", "vfprobe", "type", "bridge", "vlan_filtering", "1", check=False)
    if p.returncode == 0:
        node.run("ip", "link", "del", "vfprobe")
        return True
    return False


@pytest.fixture
def kernel_without_vlan_filtering(monkeypatch):
    """Fake the kernel's answer, on every kernel: a link request that asks for
    bridge vlan filtering fails with EOPNOTSUPP, as on a kernel built without
    CONFIG_BRIDGE_VLAN_FILTERING. Every other request reaches the real kernel."""
    import errno

    from pyroute2.netlink.exceptions import NetlinkError

    from plugins.net import link as netlink
    real_open = netlink.open_iproute
    refused = []

    class NoVlanFiltering:
        def __init__(self, ipr):
            self._ipr = ipr

        def __getattr__(self, name):
            return getattr(self._ipr, name)

        def link(self, command, **kw):
            if kw.get("br_vlan_filtering"):
                refused.append(command)
                raise NetlinkError(errno.EOPNOTSUPP, "Operation not supported")
            return self._ipr.link(command, **kw)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._ipr.__exit__(*exc)
    monkeypatch.setattr(netlink, "open_iproute", lambda: NoVlanFiltering(real_open()))
    yield
    assert refused, "the plugin never asked for vlan filtering: the faked path was not exercised"


@pytest.mark.parametrize("existing_bridge", [False, True])
@pytest.mark.parametrize("extra", [{"vlan": 100}, {"vlanTrunk": [{"minID": 10, "maxID": 12}]}])
def test_vlan_without_kernel_support_is_a_clear_error(node, pod, data_dir, extra, existing_bridge,
                                                      kernel_without_vlan_filtering):
    if existing_bridge:      # the other path: enabling filtering on a bridge that exists
        node.run("ip", "link", "add", "cni0", "type", "bridge")
    rc, err = call(node, "ADD", conf(data_dir, "1.0.0", **extra), netns=pod.path)
    assert rc == 1 and err["code"] == NOT_SUPPORTED_BY_KERNEL
    assert "vlan filtering" in err["msg"]
    assert set(links(node)) == ({"lo", "cni0"} if existing_bridge else {"lo"})
    _assert_nothing_left(node, pod, data_dir, bridge_existed=existing_bridge)


def test_vlan_access_port(node, pod, data_dir):
    if not _kernel_has_vlan_filtering(node):
        pytest.skip("kernel lacks bridge vlan filtering (CONFIG_BRIDGE_VLAN_FILTERING)")
    c = conf(data_dir, "1.0.0", vlan=100)
    ok(call(node, "ADD", c, netns=pod.path))
    host = attach.host_veth_name("brnet", "c1", "eth0")
    out = node.run("bridge", "-j", "vlan", "show", "dev", host).stdout
    assert '"vlan":100' in out.replace(" ", "")
    ok(call(node, "DEL", c, netns=pod.path))


# ---- concurrency and DAD -----------------------------------------------------------

def test_parallel_adds_on_one_node(node, make_netns, data_dir):
    """Bridge creation, gateway address and the masquerade table are race-free."""
    from concurrent.futures import ThreadPoolExecutor
    pods = [make_netns("pod") for _ in range(6)]
    c = conf(data_dir, "1.0.0", v6="fd31::/64", isGateway=True, ipMasq=True)
    with ThreadPoolExecutor(len(pods)) as ex:
        results = list(ex.map(lambda ip: call(node, "ADD", c, netns=ip[1].path, cid=f"c{ip[0]}"),
                              enumerate(pods)))
    assert all(rc == 0 for rc, _ in results), [out for rc, out in results if rc]
    got = {r["ips"][0]["address"] for _, r in results}
    assert len(got) == len(pods)
    table = nft_table(node, "inet", "cnilab_masq")
    assert table.count("masquerade") == 2 * len(pods)
    assert table.count("224.0.0.0/4") == 1
    assert ping(pods[0], results[-1][1]["ips"][0]["address"].split("/")[0])
    with ThreadPoolExecutor(len(pods)) as ex:
        dels = list(ex.map(lambda ip: call(node, "DEL", c, netns=ip[1].path, cid=f"c{ip[0]}"),
                           enumerate(pods)))
    assert all(rc == 0 for rc, _ in dels), dels
    assert "masquerade" not in nft_table(node, "inet", "cnilab_masq")
    assert node_veths(node) == set() and reservations(data_dir) == {}


def test_enabledad_settles_ipv6_before_returning(node, pod, data_dir):
    c = conf(data_dir, "1.0.0", v6="fd31::/64", isDefaultGateway=True, enabledad=True)
    r = ok(call(node, "ADD", c, netns=pod.path))
    assert pod.run("sysctl", "-n", "net.ipv6.conf.eth0.accept_dad").stdout.strip() == "1"
    out = pod.run("ip", "-6", "addr", "show", "dev", "eth0", "scope", "global").stdout
    assert "fd31::" in out and "tentative" not in out      # global addresses settled
    ok(call(node, "CHECK", c, netns=pod.path, prev=r))
    ok(call(node, "DEL", c, netns=pod.path))


# ---- lean DEL ------------------------------------------------------------------------

def test_stdlib_netlink_kind_and_delete(node, pod):
    from plugins.core import netns as cns
    from plugins.net import link
    node.run("ip", "link", "add", "brk", "type", "bridge")
    node.run("ip", "link", "add", "vk0", "type", "veth", "peer", "name", "vk1")
    with cns.entered(node.path):
        assert link.link_kind("brk") == "bridge"
        assert link.link_kind("vk0") == "veth"
        assert link.link_kind("lo") == ""
        assert link.link_kind("nope") is None
        assert link.delete_by_name("brk", kind="veth") is False      # wrong kind: kept
        assert link.delete_by_name("vk0", kind="veth") is True
        assert link.delete_by_name("vk0", kind="veth") is False
    assert set(links(node)) == {"lo", "brk"}


def test_real_del_does_not_import_pyroute2(node, pod, data_dir):
    c = conf(data_dir, "1.0.0", isGateway=True)
    ok(call(node, "ADD", c, netns=pod.path))
    code = f"""
import json, sys
from plugins.core import netns
from plugins.core.skel import dispatch
env = {{"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_PATH": "/x",
        "CNI_NETNS": {pod.path!r}}}
with netns.entered({node.path!r}):
    out, rc = dispatch("bridge", env, {json.dumps(json.dumps(c))}.encode())
assert rc == 0, out
print(sorted(m for m in sys.modules if m.split(".")[0] in ("pyroute2", "nftables")))
"""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
    assert pod_links(pod) == set() and node_veths(node) == set() and reservations(data_dir) == {}
