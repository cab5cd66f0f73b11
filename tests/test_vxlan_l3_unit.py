"""vxlan mode l3 (flannel-style) without root: config, the per-node plan of routes,
neighbours and FDB entries, the kernel-feature probes behind the Geneve/IPVS
refusals, and netlab's vxlanMode/encap/proxyMode and capture-list schema."""
from __future__ import annotations

import gzip

import pytest

from netlab.lab import plan as P
from netlab.lab import topology as T
from plugins import vxlan
from plugins.core.errors import (CNIError, INVALID_NETWORK_CONFIG, NOT_IMPLEMENTED,
                                 NOT_SUPPORTED_BY_KERNEL)
from plugins.net import kmod
from plugins.net import vxlan_dev as vd
from plugins.net import vxlan_l3 as L

PEERS = [{"ip": "192.0.2.1", "subnet": "10.1.0.0/26"},
         {"ip": "192.0.2.2", "subnet": "10.1.0.64/26"},
         {"ip": "192.0.2.3", "subnet": "10.1.0.128/26", "mac": "0E:00:00:00:00:03"}]


def parse(**kw):
    raw = {"cniVersion": "1.1.0", "name": "l3", "type": "vxlan", "vni": 7, "mode": "l3",
           "peers": PEERS}
    raw.update(kw)
    return vxlan.parse(raw, "l3")


def bad(field: str, **kw) -> CNIError:
    with pytest.raises(CNIError) as ei:
        parse(**kw)
    assert ei.value.code == INVALID_NETWORK_CONFIG
    assert ei.value.msg.startswith(field), ei.value
    return ei.value


class FakeLinks:
    def underlay(self, name):
        return vd.Underlay(name=name, index=2, mtu=1500, up=True, addresses=["192.0.2.1"])

    def route_dev(self, dst):
        return "lo" if dst == "192.0.2.1" else "eth0"


# ---- the plan -------------------------------------------------------------------------

def test_vtep_mac_is_deterministic_local_unicast():
    m = L.vtep_mac(7, "192.0.2.2")
    assert m == L.vtep_mac(7, "192.0.2.2") and len(m.split(":")) == 6
    first = int(m[:2], 16)
    assert first & 0x02 and not first & 0x01            # locally administered, unicast
    assert m != L.vtep_mac(7, "192.0.2.3") and m != L.vtep_mac(8, "192.0.2.2")
    assert L.vtep_mac(7, "2001:db8::0002") == L.vtep_mac(7, "2001:db8::2")   # normalised


def test_plan_per_remote_node_route_neigh_fdb():
    c = parse()
    own, *remotes = c.l3_peers
    p = L.plan(7, own, remotes)
    assert p.address == "10.1.0.0/32" and p.mac == L.vtep_mac(7, "192.0.2.1")
    assert p.routes == (L.Route("10.1.0.64/26", "10.1.0.64"), L.Route("10.1.0.128/26", "10.1.0.128"))
    assert p.neighbours == (L.Neigh("10.1.0.64", L.vtep_mac(7, "192.0.2.2")),
                            L.Neigh("10.1.0.128", "0e:00:00:00:00:03"))       # given mac wins
    assert p.fdb == (L.Fdb(L.vtep_mac(7, "192.0.2.2"), "192.0.2.2"),
                     L.Fdb("0e:00:00:00:00:03", "192.0.2.3"))
    # every node computes the same entries for a given peer
    p2 = L.plan(7, c.l3_peers[1], [c.l3_peers[0], c.l3_peers[2]])
    assert L.Neigh("10.1.0.0", p.mac) in p2.neighbours and p2.address == "10.1.0.64/32"
    assert L.Fdb(p.mac, "192.0.2.1") in p2.fdb


def test_plan_ipv6_subnets():
    own = L.Peer("192.0.2.1", "fd00:1::/64")
    p = L.plan(9, own, [L.Peer("192.0.2.2", "fd00:2::/64")])
    assert p.address == "fd00:1::/128"
    assert p.routes == (L.Route("fd00:2::/64", "fd00:2::"),)
    assert p.neighbours[0].addr == "fd00:2::"


def test_diff_and_drift():
    have = [L.Route("10.1.0.64/26", "10.1.0.64"), L.Route("10.9.0.0/26", "10.9.0.0")]
    want = [L.Route("10.1.0.64/26", "10.1.0.64"), L.Route("10.1.0.128/26", "10.1.0.128")]
    assert L.diff(have, want) == ([L.Route("10.1.0.128/26", "10.1.0.128")],
                                  [L.Route("10.9.0.0/26", "10.9.0.0")])
    d = L.drift(have, want, "route")
    assert d == ["route missing: 10.1.0.128/26 via 10.1.0.128 onlink",
                 "route not in the config: 10.9.0.0/26 via 10.9.0.0 onlink"]
    assert L.drift(want, want, "route") == []


# ---- config ---------------------------------------------------------------------------

def test_l3_defaults():
    c = parse()
    assert (c.mode, c.is_gateway, c.anycast_gateway, c.learning, c.group) == ("l3", True, False, False, "")
    assert c.peers == ("192.0.2.1", "192.0.2.2", "192.0.2.3")
    assert parse(mode="l2", peers=["192.0.2.2"]).mode == "l2"
    assert vxlan.parse({"name": "x", "vni": 1}, "x").mode == "l2"      # default unchanged


def test_l3_resolve_finds_own_entry():
    r = vxlan.resolve(parse(), FakeLinks())
    assert r.spec.routed and r.spec.mac == L.vtep_mac(7, "192.0.2.1")
    assert r.spec.netlink_attrs(2)["address"] == r.spec.mac
    assert r.l3.address == "10.1.0.0/32" and len(r.l3.routes) == 2
    assert str(vxlan.own_subnet(r.conf, r)) == "10.1.0.0/26"
    with pytest.raises(CNIError, match="peers has no entry for this node") as ei:
        vxlan.resolve(parse(peers=PEERS[1:]), FakeLinks())
    assert ei.value.code == INVALID_NETWORK_CONFIG


@pytest.mark.parametrize("kw,field", [
    ({"mode": "l4"}, "mode"),
    ({"peers": ["192.0.2.1"]}, "peers[0]"),
    ({"peers": []}, "peers is required in mode l3"),
    ({"peers": "192.0.2.1"}, "peers"),
    ({"peers": [{"ip": "192.0.2.1"}]}, "peers[0].subnet is required"),
    ({"peers": [{"subnet": "10.1.0.0/26"}]}, "peers[0].ip is required"),
    ({"peers": [{"ip": "node-a", "subnet": "10.1.0.0/26"}]}, "peers[0].ip"),
    ({"peers": [{"ip": "224.0.0.1", "subnet": "10.1.0.0/26"}]}, "peers[0].ip"),
    ({"peers": [{"ip": "192.0.2.1", "subnet": "10.1.0.5/26"}]}, "peers[0].subnet"),
    ({"peers": [{"ip": "192.0.2.1", "subnet": "10.1.0.0/31"}]}, "peers[0].subnet is too small"),
    ({"peers": [PEERS[0], {"ip": "192.0.2.1", "subnet": "10.1.1.0/26"}]}, "peers[1].ip is listed twice"),
    ({"peers": [PEERS[0], {"ip": "192.0.2.2", "subnet": "10.1.0.0/25"}]}, "peers[1].subnet overlaps"),
    ({"peers": [PEERS[0], {"ip": "192.0.2.2", "subnet": "fd00::/64"}]}, "peers[1].subnet mixes"),
    ({"peers": [PEERS[0], {"ip": "2001:db8::2", "subnet": "10.1.1.0/26"}]}, "peers mixes"),
    ({"peers": [{"ip": "192.0.2.1", "subnet": "10.1.0.0/26", "mac": "01:00:00:00:00:01"}]},
     "peers[0].mac"),
    ({"peers": [{"ip": "192.0.2.1", "subnet": "10.1.0.0/26", "node": "a"}]}, "peers[0].node"),
    ({"group": "239.1.1.1"}, "group is not used in mode l3"),
    ({"learning": True}, "learning is not used in mode l3"),
    ({"anycastGateway": True}, "anycastGateway applies to mode l2 only"),
    ({"isGateway": False}, "isGateway must be true in mode l3"),
    ({"localIP": "2001:db8::1"}, "peers[0].ip is not an IPv6 address"),
    ({"encap": "gre"}, "encap"),
])
def test_l3_bad_config_names_the_field(kw, field):
    bad(field, **kw)


def test_l2_rejects_l3_peer_objects():
    with pytest.raises(CNIError, match=r"peers\[0\] must be an IP address string in mode l2"):
        parse(mode="l2")


def test_device_mismatch_across_modes():
    spec3 = vd.DeviceSpec(name="vxlan7", vni=7, port=4789, local="192.0.2.1", underlay="eth0",
                          mtu=1450, routed=True, mac=L.vtep_mac(7, "192.0.2.1"))
    spec2 = vd.DeviceSpec(name="vxlan7", vni=7, port=4789, local="192.0.2.1", underlay="eth0",
                          mtu=1450)
    l2dev = vd.Observed(name="vxlan7", index=5, kind="vxlan", mtu=1450, up=True, master=9,
                        vni=7, port=4789, local="192.0.2.1", link=2, learning=False,
                        mac="aa:bb:cc:00:00:01")
    l3dev = vd.Observed(name="vxlan7", index=5, kind="vxlan", mtu=1450, up=True, vni=7,
                        port=4789, local="192.0.2.1", link=2, learning=False,
                        mac=L.vtep_mac(7, "192.0.2.1").upper())
    assert vd.mismatches(spec2, l2dev, 2) == [] and vd.mismatches(spec3, l3dev, 2) == []
    assert any("made for mode l2" in m for m in vd.mismatches(spec3, l2dev, 2))
    assert any("made for mode l3" in m for m in vd.mismatches(spec2, l3dev, 2))


# ---- Geneve / IPVS --------------------------------------------------------------------

def _config_gz(tmp_path, text: str) -> str:
    p = tmp_path / "config.gz"
    with gzip.open(p, "wt") as f:
        f.write(text)
    return str(p)


def test_kmod_probe(tmp_path):
    sysmod = tmp_path / "sys"
    sysmod.mkdir()
    no = _config_gz(tmp_path, "CONFIG_VXLAN=y\n# CONFIG_GENEVE is not set\n")
    assert kmod.has("geneve", sys_module=str(sysmod), config=no) == (False, "CONFIG_GENEVE is not set")
    msg = kmod.missing_message("geneve", "encap geneve", sys_module=str(sysmod), config=no)
    assert msg == "encap geneve needs the kernel module geneve, which this kernel lacks " \
                  "(CONFIG_GENEVE is not set)"
    assert "\n" not in msg
    yes = _config_gz(tmp_path, "CONFIG_IP_VS=m\n")
    assert kmod.has("ipvs", sys_module=str(sysmod), config=yes) == (True, "CONFIG_IP_VS=m")
    (sysmod / "ip_vs").mkdir()
    assert kmod.has("ipvs", sys_module=str(sysmod), config=no)[0] is True
    assert kmod.missing_message("ipvs", "x", sys_module=str(sysmod), config=no) is None


def test_plugin_refuses_geneve_in_one_line(monkeypatch):
    c = vxlan.parse({"name": "g", "vni": 3, "peers": ["192.0.2.2"], "encap": "geneve"}, "g")
    monkeypatch.setattr(kmod, "has", lambda f, **kw: (False, "CONFIG_GENEVE is not set"))
    with pytest.raises(CNIError) as ei:
        vxlan.resolve(c, FakeLinks())
    assert ei.value.code == NOT_SUPPORTED_BY_KERNEL
    assert ei.value.msg == ("encap geneve needs the kernel module geneve, which this kernel "
                            "lacks (CONFIG_GENEVE is not set)")
    monkeypatch.setattr(kmod, "has", lambda f, **kw: (True, "CONFIG_GENEVE=m"))
    with pytest.raises(CNIError) as ei:
        vxlan.resolve(c, FakeLinks())
    assert ei.value.code == NOT_IMPLEMENTED and "VXLAN devices only" in ei.value.msg


LAB = """name: t
nodes: {n1: {}, n2: {}}
networks:
  ov: {type: overlay, subnet: 10.60.0.0/24, nodePrefix: 26, vni: 9%s}
pods:
  p1: {node: n1, network: ov}
%s"""


def test_netlab_vxlan_mode_l3_conflist():
    topo = T.loads(LAB % (", vxlanMode: l3", ""))
    w = topo.networks["ov"]
    assert w.vxlan_mode == "l3"
    c = P.render_conflist(topo, w, "n2", "/lab")["plugins"][0]
    assert c["mode"] == "l3" and c["localIP"] == topo.nodes["n2"].address
    assert c["peers"] == [{"ip": topo.nodes["n1"].address, "subnet": "10.60.0.0/26"},
                          {"ip": topo.nodes["n2"].address, "subnet": "10.60.0.64/26"}]
    assert c["ipam"]["ranges"] == [[{"subnet": "10.60.0.64/26", "gateway": "10.60.0.65"}]]
    assert "anycastGateway" not in c
    parsed = vxlan.parse(c, "ov")                     # the plugin accepts what netlab renders
    assert parsed.mode == "l3" and len(parsed.l3_peers) == 2
    t2 = T.loads(LAB % ("", ""))
    l2 = P.render_conflist(t2, t2.networks["ov"], "n2", "/lab")["plugins"][0]
    assert "mode" not in l2 and l2["peers"] == [topo.nodes["n1"].address]


@pytest.mark.parametrize("extra,top,msg", [
    (", vxlanMode: l4", "", "networks.ov.vxlanMode: must be l2"),
    (", encap: geneve", "", "encap geneve needs the kernel module geneve"),
    (", encap: gre", "", "networks.ov.encap: must be vxlan"),
    ("", "proxyMode: ipvs\n", "proxyMode ipvs needs the kernel module ip_vs"),
    ("", "proxyMode: userspace\n", "proxyMode: must be nftables"),
])
def test_netlab_refusals(extra, top, msg, monkeypatch):
    monkeypatch.setattr(kmod, "has", lambda f, **kw: (False, "not set"))
    with pytest.raises(T.TopologyError) as ei:
        T.loads(LAB % (extra, top))
    assert any(msg in e for e in ei.value.errors), ei.value.errors


def test_capture_expectation_list():
    ok = LAB % ("", "checks:\n  - {type: capture, at: underlay, in: p1, run: [true], expect: "
                "[{layer: ICMP, min: 2}, {layer: ARP, max: 0}]}\n")
    c = T.loads(ok).checks[0]
    assert c.params["expect"] == [{"layer": "ICMP", "fields": {}, "min": 2, "max": None},
                                  {"layer": "ARP", "fields": {}, "min": 0, "max": 0}]
    with pytest.raises(T.TopologyError) as ei:
        T.loads(LAB % ("", "checks:\n  - {type: capture, at: underlay, in: p1, run: [true], "
                       "expect: [{layer: ICMP}, {layer: ARP, min: 0}]}\n"))
    assert any("checks[0].expect[1].min" in e or "expect.1.min" in e for e in ei.value.errors), \
        ei.value.errors


def test_daemonset_refuses_a_mode_l3_template():
    from cninode import kube_install as ki
    nodes = {"a": ki.Node("a", ("10.0.0.1",), ("10.244.0.0/24",))}
    tmpl = {"cniVersion": "1.1.0", "name": "k", "plugins": [
        {"type": "vxlan", "mode": "l3", "vni": 1, "peers": "{{peers}}"}]}
    with pytest.raises(ki.InstallError, match="renders mode l2 only"):
        ki.render(tmpl, "a", nodes, ["10.244.0.0/16"])
