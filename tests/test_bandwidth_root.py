"""bandwidth in throwaway namespaces: TBF on the host veth, IFB for egress."""
from __future__ import annotations

import json

import pytest

from plugins.net import tc
from tests.chain_lab import BR, Pod, add_pod, call, conf, make_node

pytestmark = pytest.mark.root

NET = "bwnet"
BW = {"ingressRate": 10_000_000, "ingressBurst": 1_000_000,
      "egressRate": 20_000_000, "egressBurst": 2_000_000}


@pytest.fixture
def lab(make_netns):
    node, pns = make_netns("bwnode"), make_netns("bwpod")
    make_node(node, v6=False)
    return node, add_pod(node, pns, 1, v6=False)


def qdiscs(ns, dev):
    p = ns.run("tc", "-j", "qdisc", "show", "dev", dev, check=False)
    return json.loads(p.stdout) if p.returncode == 0 and p.stdout.strip() else []


def links(ns, kind):
    return [l["ifname"] for l in json.loads(ns.run("ip", "-j", "link", "show", "type", kind).stdout)]


def tbf(ns, dev):
    return [q for q in qdiscs(ns, dev) if q["kind"] == "tbf"]


def test_add_check_del(lab):
    node, pod = lab
    c = conf("bandwidth", NET, prev=pod.prev_result(), runtime={"bandwidth": BW})
    out, rc = call(node, "bandwidth", "ADD", c, netns=pod.ns.path)
    assert rc == 0, out
    ifb = tc.ifb_name(NET, "c1", "eth0")
    assert out["interfaces"][-1]["name"] == ifb and out["interfaces"][:3] == \
        pod.prev_result()["interfaces"]
    # ingress: TBF at 10 Mbit/s on the host veth (tc -j reports bytes/s)
    q = tbf(node, pod.host_veth)
    assert len(q) == 1 and q[0]["options"]["rate"] == 10_000_000 // 8
    assert q[0]["options"]["burst"] == 1_000_000 // 8
    assert any(x["kind"] == "ingress" for x in qdiscs(node, pod.host_veth))
    # egress: IFB with TBF at 20 Mbit/s, veth ingress redirected to it
    assert ifb in links(node, "ifb")
    q = tbf(node, ifb)
    assert len(q) == 1 and q[0]["options"]["rate"] == 20_000_000 // 8
    filt = node.run("tc", "filter", "show", "dev", pod.host_veth, "ingress").stdout
    assert f"Egress Redirect to device {ifb}" in filt
    # CHECK agrees; then disagrees with other limits
    c["prevResult"] = out
    r = call(node, "bandwidth", "CHECK", c, netns=pod.ns.path); assert r[1] == 0, r
    other = dict(c, runtimeConfig={"bandwidth": dict(BW, ingressRate=5_000_000)})
    out2, rc = call(node, "bandwidth", "CHECK", other, netns=pod.ns.path)
    assert rc == 1 and out2["code"] == 102 and "rate" in out2["details"]
    # DEL removes everything; twice is fine; also with the netns gone
    assert call(node, "bandwidth", "DEL", c, netns=pod.ns.path)[1] == 0
    assert ifb not in links(node, "ifb")
    assert tbf(node, pod.host_veth) == []
    assert not any(x["kind"] == "ingress" for x in qdiscs(node, pod.host_veth))
    assert call(node, "bandwidth", "DEL", c, netns=pod.ns.path)[1] == 0
    assert call(node, "bandwidth", "DEL", c, netns="/var/run/netns/no-such-ns")[1] == 0


def test_kubernetes_unlimited_burst_and_odd_values_check_clean(lab):
    node, pod = lab
    bw = {"ingressRate": 1_000_000, "ingressBurst": 2**32 - 1,       # containerd's burst
          "egressRate": 3_333_333, "egressBurst": 777_777}
    c = conf("bandwidth", NET, prev=pod.prev_result(), runtime={"bandwidth": bw})
    out, rc = call(node, "bandwidth", "ADD", c, netns=pod.ns.path)
    assert rc == 0, out
    assert tbf(node, pod.host_veth)[0]["options"]["rate"] == 125_000
    c["prevResult"] = out
    out, rc = call(node, "bandwidth", "CHECK", c, netns=pod.ns.path)
    assert rc == 0, out


def test_top_level_wins_and_zero_is_unshaped(lab):
    node, pod = lab
    c = conf("bandwidth", NET, prev=pod.prev_result(), runtime={"bandwidth": BW},
             ingressRate=8_000_000, ingressBurst=800_000)
    out, rc = call(node, "bandwidth", "ADD", c, netns=pod.ns.path)
    assert rc == 0, out
    assert tbf(node, pod.host_veth)[0]["options"]["rate"] == 1_000_000
    assert links(node, "ifb") == []                  # top level has no egress: unshaped
    assert out == pod.prev_result()
    assert call(node, "bandwidth", "DEL", c, netns=pod.ns.path)[1] == 0
    zero = conf("bandwidth", NET, prev=pod.prev_result(), runtime={"bandwidth": {}})
    out, rc = call(node, "bandwidth", "ADD", zero, netns=pod.ns.path)
    assert rc == 0 and out == pod.prev_result() and tbf(node, pod.host_veth) == []


def test_bad_input_changes_nothing(lab):
    node, pod = lab
    for bad in ({"ingressRate": 1000},                       # burst missing
                {"egressBurst": 1000},                       # rate missing
                {"ingressRate": -1, "ingressBurst": 10},
                {"ingressRate": 2**40, "ingressBurst": 10**6},
                {"ingressRate": 8, "ingressBurst": 2**36}):  # burst beyond 32 bits
        c = conf("bandwidth", NET, prev=pod.prev_result(), runtime={"bandwidth": bad})
        out, rc = call(node, "bandwidth", "ADD", c, netns=pod.ns.path)
        assert rc == 1 and out["code"] == 7, (bad, out)
    out, rc = call(node, "bandwidth", "ADD", conf("bandwidth", NET, runtime={"bandwidth": BW}),
                   netns=pod.ns.path)
    assert rc == 1 and "prevResult" in out["msg"]
    assert tbf(node, pod.host_veth) == [] and links(node, "ifb") == []


def test_pod_link_without_veth_is_a_clear_error(make_netns):
    node, pns = make_netns("bwnode"), make_netns("bwpod")
    make_node(node, v6=False)
    pns.run("ip", "link", "add", "eth0", "type", "bridge")   # any non-veth link
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": pns.path}],
            "ips": [{"address": "10.77.0.9/24", "interface": 0}]}
    out, rc = call(node, "bandwidth", "ADD", conf("bandwidth", NET, prev=prev,
                                                  runtime={"bandwidth": BW}), netns=pns.path)
    assert rc == 1 and "veth" in out["msg"], out


def test_gc_removes_orphan_ifbs_of_this_network_only(lab, make_netns):
    node, pod = lab
    pod2 = add_pod(node, make_netns("bwpod"), 2, v6=False)
    for p, cid in ((pod, "c1"), (pod2, "c2")):
        c = conf("bandwidth", NET, prev=p.prev_result(), runtime={"bandwidth": BW})
        assert call(node, "bandwidth", "ADD", c, cid=cid, netns=p.ns.path)[1] == 0
    # an IFB of another network, which this network's GC must leave alone
    node.run("ip", "link", "add", tc.ifb_name("othernet", "c9", "eth0"), "type", "ifb")
    node.run("ip", "link", "set", tc.ifb_name("othernet", "c9", "eth0"), "alias",
             tc.ifb_alias("othernet", "c9", "eth0"))
    gc = conf("bandwidth", NET, version="1.1.0",
              **{"cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "eth0"}]})
    out, rc = call(node, "bandwidth", "GC", gc)
    assert rc == 0, out
    assert sorted(links(node, "ifb")) == sorted([tc.ifb_name(NET, "c2", "eth0"),
                                                 tc.ifb_name("othernet", "c9", "eth0")])


def test_failed_add_rolls_back(lab, monkeypatch):
    node, pod = lab

    def boom(self, index, target):
        raise OSError(5, "injected failure after the IFB and TBFs")
    monkeypatch.setattr(tc.Tc, "redirect_all", boom)
    c = conf("bandwidth", NET, prev=pod.prev_result(), runtime={"bandwidth": BW})
    out, rc = call(node, "bandwidth", "ADD", c, netns=pod.ns.path)
    assert rc == 1 and "injected" in out["msg"]
    assert links(node, "ifb") == [] and tbf(node, pod.host_veth) == []
    assert not any(x["kind"] == "ingress" for x in qdiscs(node, pod.host_veth))


def test_failing_undo_step_keeps_the_original_error(lab, monkeypatch):
    """An undo step that fails (after doing its work) is logged; the rest of the
    rollback runs and the runtime sees the original error."""
    node, pod = lab
    real_del_ingress = tc.Tc.del_ingress

    def boom(self, index, target):
        raise OSError(5, "injected failure after the IFB and TBFs")

    def del_ingress_then_fail(self, index):
        real_del_ingress(self, index)
        raise RuntimeError("undo step broke")
    monkeypatch.setattr(tc.Tc, "redirect_all", boom)
    monkeypatch.setattr(tc.Tc, "del_ingress", del_ingress_then_fail)
    c = conf("bandwidth", NET, prev=pod.prev_result(), runtime={"bandwidth": BW})
    out, rc = call(node, "bandwidth", "ADD", c, netns=pod.ns.path)
    assert rc == 1 and out["code"] == 5 and "injected failure" in out["msg"], out
    assert links(node, "ifb") == [] and tbf(node, pod.host_veth) == []
    assert not any(x["kind"] == "ingress" for x in qdiscs(node, pod.host_veth))


def test_del_without_prevresult_still_unshapes_the_veth(lab):
    node, pod = lab
    c = conf("bandwidth", NET, prev=pod.prev_result(), runtime={"bandwidth": BW})
    assert call(node, "bandwidth", "ADD", c, netns=pod.ns.path)[1] == 0
    bare = conf("bandwidth", NET, runtime={"bandwidth": BW})
    assert call(node, "bandwidth", "DEL", bare, netns=pod.ns.path)[1] == 0
    assert links(node, "ifb") == [] and tbf(node, pod.host_veth) == []
    assert not any(x["kind"] == "ingress" for x in qdiscs(node, pod.host_veth))
    # the pod's link survives and is unshaped: traffic still flows both ways
    assert pod.ns.run("ping", "-c1", "-W2", "10.77.0.1", check=False).returncode == 0


def add_second_interface(node, pod) -> Pod:
    """eth1 of the same pod namespace, on the node's bridge (as a second network would)."""
    host = f"{pod.host_veth[:13]}b1"
    node.run("ip", "link", "add", host, "type", "veth", "peer", "name", "eth1",
             "netns", pod.ns.name)
    node.run("ip", "link", "set", host, "master", BR, "up")
    pod.ns.run("ip", "addr", "add", "10.77.0.99/24", "dev", "eth1")
    pod.ns.run("ip", "link", "set", "eth1", "up")
    return Pod(pod.ns, host, "10.77.0.99", None, ifname="eth1")


def shaped(node, veth, ifb, rate):
    filt = node.run("tc", "filter", "show", "dev", veth, "ingress").stdout
    q = tbf(node, ifb)
    return (len(q) == 1 and q[0]["options"]["rate"] == rate // 8
            and f"Egress Redirect to device {ifb}" in filt)


def test_two_shaped_interfaces_of_one_pod_keep_their_own_ifb(lab):
    """eth0 and eth1 of one container in one network: each attachment owns its IFB;
    ADD of eth1 and DEL of eth1 leave eth0's egress shaping alone."""
    node, eth0 = lab
    eth1 = add_second_interface(node, eth0)
    bw1 = dict(BW, egressRate=30_000_000)
    for p, bw in ((eth0, BW), (eth1, bw1)):
        c = conf("bandwidth", NET, prev=p.prev_result(), runtime={"bandwidth": bw})
        out, rc = call(node, "bandwidth", "ADD", c, netns=p.ns.path, ifname=p.ifname)
        assert rc == 0, out
    ifb0, ifb1 = tc.ifb_name(NET, "c1", "eth0"), tc.ifb_name(NET, "c1", "eth1")
    assert sorted(links(node, "ifb")) == sorted([ifb0, ifb1])
    assert shaped(node, eth0.host_veth, ifb0, 20_000_000)
    assert shaped(node, eth1.host_veth, ifb1, 30_000_000)
    c1 = conf("bandwidth", NET, prev=eth1.prev_result(), runtime={"bandwidth": bw1})
    assert call(node, "bandwidth", "DEL", c1, netns=eth1.ns.path, ifname="eth1")[1] == 0
    assert links(node, "ifb") == [ifb0] and shaped(node, eth0.host_veth, ifb0, 20_000_000)
    assert tbf(node, eth1.host_veth) == []
    # GC keyed by the full attachment: c1/eth0 valid, c1/eth1 not (already gone)
    gc = conf("bandwidth", NET, version="1.1.0",
              **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]})
    assert call(node, "bandwidth", "GC", gc)[1] == 0
    assert links(node, "ifb") == [ifb0] and shaped(node, eth0.host_veth, ifb0, 20_000_000)


def legacy_shaping(node, pod, cid="c1"):
    """The egress shaping an earlier version made: IFB named from network + container
    ID only, alias without the interface, the veth's ingress redirected to it."""
    name = tc.legacy_ifb_name(NET, cid)
    node.run("ip", "link", "add", name, "type", "ifb")
    node.run("ip", "link", "set", name, "alias", f"cnilab-bandwidth n:{NET} c:{cid}")
    node.run("ip", "link", "set", name, "up")
    node.run("tc", "qdisc", "add", "dev", name, "root", "tbf", "rate", "20mbit",
             "burst", "250000", "latency", "25ms")
    node.run("tc", "qdisc", "add", "dev", pod.host_veth, "handle", "ffff:", "ingress")
    node.run("tc", "filter", "add", "dev", pod.host_veth, "parent", "ffff:", "protocol", "all",
             "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect",
             "dev", name)
    return name


def test_ifb_of_an_earlier_version_is_removed_by_its_owner_only(lab):
    """Upgrade: eth0 was shaped by an earlier version. The DEL of eth1 (same container)
    leaves it; the DEL of eth0, whose veth redirects there, removes it."""
    node, eth0 = lab
    eth1 = add_second_interface(node, eth0)
    old = legacy_shaping(node, eth0)
    c1 = conf("bandwidth", NET, prev=eth1.prev_result(), runtime={"bandwidth": BW})
    assert call(node, "bandwidth", "ADD", c1, netns=eth1.ns.path, ifname="eth1")[1] == 0
    assert call(node, "bandwidth", "DEL", c1, netns=eth1.ns.path, ifname="eth1")[1] == 0
    assert links(node, "ifb") == [old]
    c0 = conf("bandwidth", NET, prev=eth0.prev_result(), runtime={"bandwidth": BW})
    assert call(node, "bandwidth", "DEL", c0, netns=eth0.ns.path)[1] == 0
    assert links(node, "ifb") == []
    assert not any(x["kind"] == "ingress" for x in qdiscs(node, eth0.host_veth))


def test_ifb_of_an_earlier_version_is_removed_by_gc_and_by_del_without_netns(lab):
    node, pod = lab
    legacy_shaping(node, pod, "c1")
    other = tc.legacy_ifb_name(NET, "c7")
    node.run("ip", "link", "add", other, "type", "ifb")
    node.run("ip", "link", "set", other, "alias", f"cnilab-bandwidth n:{NET} c:c7")
    gc = conf("bandwidth", NET, version="1.1.0",
              **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]})
    assert call(node, "bandwidth", "GC", gc)[1] == 0
    assert links(node, "ifb") == [tc.legacy_ifb_name(NET, "c1")]       # c7 had no valid one
    bare = conf("bandwidth", NET, runtime={"bandwidth": BW})
    pod.ns.run("ip", "link", "del", "eth0")                   # pod gone: nothing redirects
    assert call(node, "bandwidth", "DEL", bare, netns="/var/run/netns/no-such-ns")[1] == 0
    assert links(node, "ifb") == []


def test_gc_keeps_going_past_a_netlink_error(lab, make_netns, monkeypatch):
    """Deleting one stale IFB fails in the kernel (a NACK with EBUSY on the RTM_DELLINK
    of that IFB): GC still deletes the other one and reports the failure (code 5)."""
    import errno
    from plugins.net.link import NetlinkFailure
    from plugins.net.netlink import rtnl
    node, pod = lab
    pod2 = add_pod(node, make_netns("bwpod"), 2, v6=False)
    for p, cid in ((pod, "c1"), (pod2, "c2")):
        c = conf("bandwidth", NET, prev=p.prev_result(), runtime={"bandwidth": BW})
        assert call(node, "bandwidth", "ADD", c, cid=cid, netns=p.ns.path)[1] == 0
    stuck = tc.ifb_name(NET, "c1", "eth0")
    stuck_index = json.loads(node.run("ip", "-j", "link", "show", stuck).stdout)[0]["ifindex"]
    real = rtnl.Rtnl.request

    def request(self, mtype, payload, flags=0):
        if mtype == rtnl.RTM_DELLINK and int.from_bytes(payload[4:8], "little") == stuck_index:
            raise NetlinkFailure(errno.EBUSY, "netlink: injected")
        return real(self, mtype, payload, flags)
    monkeypatch.setattr(rtnl.Rtnl, "request", request)
    gc = conf("bandwidth", NET, version="1.1.0", **{"cni.dev/valid-attachments": []})
    out, rc = call(node, "bandwidth", "GC", gc)
    monkeypatch.undo()
    assert rc == 1 and out["code"] == 5 and stuck in out["details"], out
    assert links(node, "ifb") == [stuck]                  # the other one is gone
    assert call(node, "bandwidth", "GC", gc)[1] == 0
    assert links(node, "ifb") == []


def test_tc_backend_reads_back_what_it_wrote(make_netns):
    """The stdlib rtnetlink tc backend (no pyroute2): every write is read back
    both by the backend and by iproute2's tc, and removals are idempotent."""
    from plugins.core import netns
    from plugins.net.netlink.rtnl import Rtnl
    node = make_netns("tcb")
    node.run("ip", "link", "add", "v0", "mtu", "1400", "type", "veth", "peer", "name", "v1")
    node.run("ip", "link", "set", "v0", "up")
    p = tc.tbf_params(10_000_000, 1_000_000, tc.tick_in_usec())
    alias = tc.ifb_alias("n1", "c1", "eth0")
    with netns.entered(node.path), Rtnl() as nl:
        t = tc.Tc(nl)
        idx = t.link("v0").index
        assert t.root_qdisc(idx).kind == "noqueue" and t.ingress_qdisc(idx) is None
        assert t.redirect_targets(idx) == []
        ifb = t.create_ifb("bwptest0", 1400, alias)
        assert (ifb.kind, ifb.mtu, ifb.alias, ifb.up) == ("ifb", 1400, alias, True)
        assert ifb.mac and ifb.mac != "00:00:00:00:00:00"
        t.set_tbf(idx, p)
        t.set_tbf(idx, p)                       # replace: still one TBF
        assert tc.Tc.tbf_of(t.root_qdisc(idx)) == tc.TbfParams(p.rate, 0, p.limit, p.buffer)
        t.add_ingress(idx)
        t.add_ingress(idx)                      # already there: a re-ADD
        assert t.ingress_qdisc(idx).kind == "ingress"
        used = t.redirect_all(idx, ifb.index)
        assert used in ("matchall", "u32")
        assert t.redirect_targets(idx) == [ifb.index] and t.redirected_to(ifb.index)
        assert [link.name for link in t.ifb_links()] == ["bwptest0"]
    live = tbf(node, "v0")
    assert len(live) == 1 and live[0]["options"]["rate"] == p.rate
    assert live[0]["options"]["burst"] == p.burst
    filt = node.run("tc", "filter", "show", "dev", "v0", "ingress").stdout
    assert "Egress Redirect to device bwptest0" in filt and used in filt
    with netns.entered(node.path), Rtnl() as nl:
        t = tc.Tc(nl)
        t.del_ingress(idx)
        t.del_root(idx)
        t.del_ingress(idx)                      # nothing there any more: no error
        t.del_root(idx)
        assert t.root_qdisc(idx).kind == "noqueue" and t.ingress_qdisc(idx) is None
        assert t.delete_link("bwptest0") and not t.delete_link("bwptest0")
    assert qdiscs(node, "v0") == [] or all(q["kind"] == "noqueue" for q in qdiscs(node, "v0"))


def test_u32_redirect_is_what_tc_reads(make_netns):
    """The u32 match-all fallback (kernels without cls_matchall) on its own."""
    from plugins.core import netns
    from plugins.net.netlink.rtnl import Rtnl
    node = make_netns("tcu")
    node.run("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    with netns.entered(node.path), Rtnl() as nl:
        t = tc.Tc(nl)
        idx, ifb = t.link("v0").index, t.create_ifb("bwptest1", 1500, "x")
        t.add_ingress(idx)
        assert t.redirect_all(idx, ifb.index, classifier="u32") == "u32"
        assert t.redirect_targets(idx) == [ifb.index]
    filt = node.run("tc", "filter", "show", "dev", "v0", "ingress").stdout
    assert "u32" in filt and "match 00000000/00000000 at 0" in filt
    assert "Egress Redirect to device bwptest1" in filt
