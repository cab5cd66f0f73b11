"""plugins.net.netlink.rtnl (the bridge ADD's stdlib rtnetlink) reads and writes what pyroute2 does.

Each test works in throwaway namespaces; the links are made with `ip` (an
independent tool), then read through both the stdlib socket and pyroute2 and
compared field by field.
"""
from __future__ import annotations

import errno
import json
import os
import threading

import pytest

from plugins.core import netns as nsmod
from plugins.core.errors import CNIError, IO_FAILURE, LINK_EXISTS
from plugins.net import link
from plugins.net.netlink import rtnl

pytestmark = pytest.mark.root

FIELDS = ("index", "name", "kind", "mac", "mtu", "flags", "master", "peer", "operstate",
          "alias", "txqlen")


def _both(ns, **kw):
    with nsmod.entered(ns.path):
        with rtnl.Rtnl() as nl:
            ours = rtnl.get_link(nl, **kw)
        with link.open_iproute() as ipr:
            theirs = link.get_link(ipr, **kw)
    return ours, theirs


def test_get_link_matches_pyroute2(node, pod):
    node.run("ip", "link", "add", "br7", "mtu", "1400", "type", "bridge")
    node.run("ip", "link", "set", "br7", "up", "promisc", "on")
    node.run("ip", "link", "add", "vh7", "mtu", "1400", "type", "veth", "peer", "name", "eth0",
             "netns", pod.name)
    node.run("ip", "link", "set", "vh7", "master", "br7", "alias", "cnilab-test:x", "up")
    pod.run("ip", "link", "set", "eth0", "address", "0a:58:0a:00:00:07", "up")
    for ns, kw in ((node, {"name": "br7"}), (node, {"name": "vh7"}), (pod, {"name": "eth0"}),
                   (node, {"name": "lo"}), (pod, {"index": 1})):
        ours, theirs = _both(ns, **kw)
        assert ours is not None and theirs is not None
        for f in FIELDS:
            assert getattr(ours, f) == getattr(theirs, f), (kw, f)
    ours, _ = _both(pod, name="eth0")
    assert ours.mac == "0a:58:0a:00:00:07" and ours.kind == "veth" and ours.peer > 0
    br, _ = _both(node, name="br7")
    assert br.promisc and br.up and br.mtu == 1400
    assert not br.data.get("IFLA_BR_VLAN_FILTERING")


def test_missing_link_is_none_and_refusals_are_oserrors(node):
    with nsmod.entered(node.path):
        with rtnl.Rtnl() as nl:
            assert rtnl.get_link(nl, "nosuchlink") is None
            assert rtnl.get_link(nl, index=987654) is None
            assert rtnl.delete_link(nl, "nosuchlink") is False
            with pytest.raises(link.NetlinkFailure) as info:
                nl.request(rtnl.RTM_DELLINK, rtnl._IFINFO.pack(0, 0, 987654, 0, 0))
            assert info.value.errno == errno.ENODEV and info.value.code == errno.ENODEV
            with pytest.raises(CNIError) as info2:
                rtnl.set_link(nl, 987654, "setting a missing link up", state="up")
            assert info2.value.code == IO_FAILURE and "setting a missing link up" in info2.value.msg


def test_veth_pair_born_in_two_namespaces(node, pod):
    with nsmod.entered(node.path):
        with rtnl.Rtnl() as nl:
            fd = nsmod.open_netns(pod.path)
            try:
                rtnl.add_veth(nl, "vhA", "eth3", fd, mtu=1450, peer_mac="0a:58:01:02:03:04")
                with pytest.raises(CNIError) as info:
                    rtnl.add_veth(nl, "vhA", "eth3", fd)
            finally:
                os.close(fd)
            assert info.value.code == LINK_EXISTS
            host = rtnl.get_link(nl, "vhA")
    links = {x["ifname"]: x for x in json.loads(pod.run("ip", "-j", "link").stdout)}
    assert links["eth3"]["mtu"] == 1450 and links["eth3"]["address"] == "0a:58:01:02:03:04"
    assert host.kind == "veth" and host.mtu == 1450 and host.peer == links["eth3"]["ifindex"]


def test_bridge_port_addresses_and_routes_as_ip_shows_them(node, pod):
    with nsmod.entered(node.path):
        with rtnl.Rtnl() as nl:
            br, created = rtnl.ensure_bridge(nl, "br8", mtu=1400)
            assert created and br.kind == "bridge" and br.up and br.mtu == 1400
            again, created2 = rtnl.ensure_bridge(nl, "br8", mtu=1400)
            assert not created2 and again.index == br.index
            fd = nsmod.open_netns(pod.path)
            try:
                rtnl.add_veth(nl, "vhB", "eth0", fd)
            finally:
                os.close(fd)
            host = rtnl.get_link(nl, "vhB")
            rtnl.set_link(nl, host.index, "enslaving", master=br.index, state="up")
            rtnl.set_brport(nl, host.index, hairpin=True, isolated=True)
            rtnl.set_link(nl, host.index, "alias", ifalias="cnilab-bridge:net")
            assert rtnl.add_addr(nl, br.index, "10.77.0.1/24") is True
            assert rtnl.add_addr(nl, br.index, "10.77.0.1/24") is False      # EEXIST
            assert rtnl.add_addr(nl, br.index, "fd77::1/64", nodad=True) is True
            assert {a.address for a in rtnl.list_addrs(nl, br.index)} == {"10.77.0.1/24",
                                                                         "fd77::1/64"}
            assert rtnl.has_ports(nl, br.index)
    port = json.loads(node.run("ip", "-j", "-d", "link", "show", "vhB").stdout)[0]
    assert port["master"] == "br8" and port["ifalias"] == "cnilab-bridge:net"
    assert port["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert port["linkinfo"]["info_slave_data"]["isolated"] is True
    with nsmod.entered(pod.path):
        with rtnl.Rtnl() as nl:
            eth0 = rtnl.get_link(nl, "eth0")
            rtnl.add_addr(nl, eth0.index, "10.77.0.5/24")
            rtnl.set_link(nl, eth0.index, "up", state="up")
            assert rtnl.add_route(nl, dst="0.0.0.0/0", oif=eth0.index, gw="10.77.0.1") is True
            assert rtnl.add_route(nl, dst="0.0.0.0/0", oif=eth0.index, gw="10.77.0.1",
                                  exist_ok=True) is False
            rtnl.add_route(nl, dst="10.9.0.0/16", oif=eth0.index, mtu=1300, advmss=1260,
                           priority=7)
    routes = {r["dst"]: r for r in json.loads(pod.run("ip", "-j", "-d", "route").stdout)}
    assert routes["default"]["gateway"] == "10.77.0.1" and routes["default"]["protocol"] == "static"
    r = routes["10.9.0.0/16"]
    assert r["metric"] == 7 and r["metrics"][0] == {"mtu": 1300, "advmss": 1260}


def test_operstate_wait_wakes_on_the_link_event(node, pod):
    """The wait returns once the peer comes up (re-checked on link events), and a link
    that stays down is a clear error after the timeout."""
    node.run("ip", "link", "add", "vhC", "type", "veth", "peer", "name", "eth0",
             "netns", pod.name)
    node.run("ip", "link", "set", "vhC", "up")
    got = {}
    with nsmod.entered(node.path):
        idx = link.ifindex("vhC")

        def wait():
            with nsmod.entered(node.path):
                with rtnl.Rtnl() as nl:
                    got["info"] = rtnl.wait_operstate_up(nl, idx, 30.0, "vhC")
        t = threading.Thread(target=wait)
        t.start()
        pod.run("ip", "link", "set", "eth0", "up")
        t.join(60)
    assert got["info"].operstate == "UP" and got["info"].name == "vhC"
    with nsmod.entered(node.path):
        with rtnl.Rtnl() as nl:
            node.run("ip", "link", "set", "vhC", "down")
            with pytest.raises(CNIError) as info:
                rtnl.wait_operstate_up(nl, idx, 0.05, "vhC")
    assert "is not up" in info.value.msg


@pytest.mark.parametrize("background", [False, True])
def test_link_deletion_in_the_agent_returns_once_unlisted(node, pod, monkeypatch, background):
    """wire.delete_link_index: with RELEASE_LINKS_IN_BACKGROUND (the agent) the
    request runs on a helper thread and the call returns on the kernel's
    RTM_DELLINK notification; either way the veth and its peer are gone, the
    name is free at once, and a refusal is raised."""
    from plugins.net.netlink import wire
    monkeypatch.setattr(wire, "RELEASE_LINKS_IN_BACKGROUND", background)
    node.run("ip", "link", "add", "vd0", "type", "veth", "peer", "name", "eth9", "netns", pod.name)
    with nsmod.entered(node.path):
        index = link.ifindex("vd0")
        wire.delete_link_index(index)
        assert link.ifindex("vd0") is None
        with pytest.raises(OSError) as e:
            wire.delete_link_index(index)                 # gone: the kernel's NACK
        assert e.value.errno in (errno.ENODEV, errno.ENOENT)
        assert link.delete_index(index) is False          # the plugins' wrapper: "already gone"
        with rtnl.Rtnl() as nl:
            rtnl.add_link(nl, "vd0", "ifb")               # the name is free right away
            assert rtnl.delete_link(nl, "vd0") and rtnl.get_link(nl, "vd0") is None
    assert "eth9" not in pod.run("ip", "-o", "link").stdout
