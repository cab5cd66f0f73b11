"""vxlan: config parsing, node resolution and the pure device/FDB planning (no root)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from plugins import vxlan
from plugins.core.errors import CNIError, INVALID_NETWORK_CONFIG
from plugins.net import vxlan_dev as vd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def conf(**kw):
    raw = {"cniVersion": "1.1.0", "name": "ov", "type": "vxlan", "vni": 42}
    raw.update(kw)
    return raw


def parse(**kw):
    return vxlan.parse(conf(**kw), "ov")


def bad(match: str, **kw):
    with pytest.raises(CNIError) as ei:
        parse(**kw)
    assert ei.value.code == INVALID_NETWORK_CONFIG
    assert match in str(ei.value), str(ei.value)
    return ei.value


# ---- parse ------------------------------------------------------------------------

def test_defaults():
    c = parse(peers=["192.0.2.2", "192.0.2.3"])
    assert (c.vni, c.port, c.bridge, c.mtu, c.learning) == (42, 4789, "vxbr42", 0, False)
    assert c.peers == ("192.0.2.2", "192.0.2.3")
    assert c.device == "vxlan42"
    assert c.family == 4


def test_group_defaults_to_learning():
    c = parse(group="239.1.1.1")
    assert c.learning is True and c.group == "239.1.1.1"
    assert parse(group="239.1.1.1", learning=False).learning is False


@pytest.mark.parametrize("vni", [0, -1, 16777216, 1 << 30])
def test_vni_out_of_range(vni):
    bad("vni must be between 1 and 16777215", vni=vni)


def test_vni_limits_ok():
    assert parse(vni=1).vni == 1
    assert parse(vni=16777215).vni == 16777215
    assert parse(vni=16777215).device == "vxlan16777215"
    assert len(parse(vni=16777215).bridge) <= 15


def test_vni_required_and_typed():
    raw = conf()
    del raw["vni"]
    with pytest.raises(CNIError, match="vni is required"):
        vxlan.parse(raw, "ov")
    bad("vni must be an integer", vni="42")


@pytest.mark.parametrize("peer", ["10.0.0", "node-b", "10.0.0.1/24", 7, "224.0.0.5",
                                  "0.0.0.0", "127.0.0.1", "fe80::1"])
def test_bad_peer(peer):
    e = bad("peers[1]", peers=["10.0.0.9", peer])
    assert "peers[1]" in e.msg


def test_peers_must_be_a_list():
    bad("peers must be a list", peers="10.0.0.2")


def test_peers_deduplicated_and_normalised():
    c = parse(peers=["fd00:0::2", "fd00::2", "fd00::3"])
    assert c.peers == ("fd00::2", "fd00::3") and c.family == 6


def test_mixed_families():
    bad("mixes IPv4 and IPv6", peers=["10.0.0.2", "fd00::2"])


def test_local_ip_family_must_match():
    bad("like localIP", localIP="10.0.0.1", peers=["fd00::2"])
    bad("localIP is not an IP address", localIP="nope")
    bad("localIP must be a unicast", localIP="239.0.0.1")


def test_group_must_be_multicast_and_exclusive():
    bad("group must be a multicast address", group="10.0.0.1")
    bad("group is not an IP address", group="x")
    bad("peers and group are exclusive", group="239.1.1.1", peers=["10.0.0.2"])
    assert parse(group="ff05::42").group == "ff05::42"


@pytest.mark.parametrize("port", [0, 65536, -5])
def test_port_range(port):
    bad("port must be between 1 and 65535", port=port)


def test_bridge_name():
    bad("bridge", bridge="a-very-long-bridge-name")
    bad("bridge", bridge="has space")
    bad("must not be named like the VXLAN device", bridge="vxlan42")
    assert parse(bridge="ovbr").bridge == "ovbr"


def test_underlay_name_checked():
    bad("underlayInterface", underlayInterface="x" * 16)


def test_mtu_bounds():
    bad("mtu must be between 68 and 65535", mtu=10)
    assert parse(mtu=1400).mtu == 1400


def test_parse_imports_no_netlink():
    code = ("import sys; from plugins import vxlan; "
            "vxlan.parse({'vni': 5, 'peers': ['10.0.0.2']}, 'n'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'scapy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


# ---- resolve against a fake node --------------------------------------------------

class FakeLinks:
    def __init__(self, underlays: dict[str, vd.Underlay], routes: dict[str, str]):
        self.underlays = underlays
        self.routes = routes

    def underlay(self, name):
        return self.underlays.get(name)

    def route_dev(self, dst):
        return self.routes.get(dst)


def node(mtu=1500, addrs=("192.0.2.1", "2001:db8::1")):
    ul = vd.Underlay(name="eth0", index=2, mtu=mtu, up=True, addresses=list(addrs))
    return FakeLinks({"eth0": ul}, {"192.0.2.2": "eth0", "2001:db8::2": "eth0",
                                    "239.1.1.1": "eth0"})


def test_resolve_defaults_ipv4():
    r = vxlan.resolve(parse(peers=["192.0.2.1", "192.0.2.2"]), node())
    assert r.spec.underlay == "eth0" and r.spec.local == "192.0.2.1"
    assert r.mtu == r.spec.mtu == 1450 and r.max_mtu == 1450
    assert r.peers == ("192.0.2.2",)          # our own address is skipped
    assert r.spec.alias == "cnilab-vxlan:ov"


def test_resolve_ipv6_overhead():
    r = vxlan.resolve(parse(peers=["2001:db8::2"]), node())
    assert r.spec.local == "2001:db8::1" and r.mtu == 1430


def test_resolve_jumbo_underlay():
    assert vxlan.resolve(parse(peers=["192.0.2.2"]), node(mtu=9000)).mtu == 8950


def test_resolve_mtu_too_large():
    with pytest.raises(CNIError) as ei:
        vxlan.resolve(parse(peers=["192.0.2.2"], mtu=1451), node())
    assert ei.value.code == INVALID_NETWORK_CONFIG
    assert "1451 is larger than the underlay allows: 1450" in ei.value.msg
    assert vxlan.resolve(parse(peers=["192.0.2.2"], mtu=1450), node()).mtu == 1450
    with pytest.raises(CNIError, match="larger than the underlay allows: 1430"):
        vxlan.resolve(parse(peers=["2001:db8::2"], mtu=1431), node())


def test_resolve_missing_underlay():
    with pytest.raises(CNIError) as ei:
        vxlan.resolve(parse(peers=["192.0.2.2"], underlayInterface="eth9"), node())
    assert ei.value.code == INVALID_NETWORK_CONFIG and "'eth9' does not exist" in ei.value.msg


def test_resolve_no_route_to_peer():
    with pytest.raises(CNIError, match="no route toward 198.51.100.7"):
        vxlan.resolve(parse(peers=["198.51.100.7"]), node())


def test_resolve_needs_underlay_without_peers():
    with pytest.raises(CNIError, match="underlayInterface is required"):
        vxlan.resolve(parse(), node())
    r = vxlan.resolve(parse(underlayInterface="eth0"), node())
    assert r.peers == () and r.spec.local == "192.0.2.1"


def test_resolve_local_ip_must_be_on_underlay():
    with pytest.raises(CNIError, match="not an address of the underlay"):
        vxlan.resolve(parse(peers=["192.0.2.2"], localIP="192.0.2.99"), node())


def test_resolve_no_address_of_family():
    with pytest.raises(CNIError, match="no global IPv6 address"):
        vxlan.resolve(parse(peers=["2001:db8::2"]), node(addrs=("192.0.2.1",)))


def test_resolve_group():
    r = vxlan.resolve(parse(group="239.1.1.1"), node())
    assert r.spec.group == "239.1.1.1" and r.spec.learning and r.peers == ()


# ---- device spec / mismatches / fdb plan -----------------------------------------

def spec(**kw):
    base = dict(name="vxlan42", vni=42, port=4789, local="192.0.2.1", underlay="eth0",
                mtu=1450, alias="cnilab-vxlan:ov")
    base.update(kw)
    return vd.DeviceSpec(**base)


def test_netlink_attrs_v4_v6():
    a = spec().netlink_attrs(2)
    assert a["vxlan_id"] == 42 and a["vxlan_local"] == "192.0.2.1" and a["vxlan_link"] == 2
    assert a["vxlan_learning"] == 0 and a["mtu"] == 1450 and "vxlan_group" not in a
    b = spec(local="2001:db8::1", group="ff05::1", learning=True).netlink_attrs(3)
    assert b["vxlan_local6"] == "2001:db8::1" and b["vxlan_group6"] == "ff05::1"
    assert "vxlan_local" not in b and b["vxlan_learning"] == 1


def observed(**kw):
    base = dict(name="vxlan42", index=9, kind="vxlan", mtu=1450, up=True,
                alias="cnilab-vxlan:ov", vni=42, port=4789, local="192.0.2.1", link=2,
                learning=False)
    base.update(kw)
    return vd.Observed(**base)


def test_mismatches():
    assert vd.mismatches(spec(), observed(), 2) == []
    got = vd.mismatches(spec(), observed(vni=7, port=8472, local="192.0.2.9", mtu=1400,
                                         link=5, learning=True), 2)
    text = "; ".join(got)
    for frag in ("VNI is 7, want 42", "UDP port is 8472", "local address is 192.0.2.9",
                 "MTU is 1400, want 1450", "underlay ifindex is 5", "learning is on"):
        assert frag in text
    assert vd.mismatches(spec(), observed(mtu=1400), 2, check_mtu=False) == []
    assert "not vxlan" in vd.mismatches(spec(), observed(kind="bridge"), 2)[0]
    assert vd.mismatches(spec(local="2001:db8::1"), observed(local="2001:db8:0::1"), 2) == []


def test_fdb_plan():
    add, rm = vd.fdb_plan(["192.0.2.3", "192.0.2.4"], ["192.0.2.2", "192.0.2.3"])
    assert add == ["192.0.2.2"] and rm == ["192.0.2.4"]
    assert vd.fdb_plan([], []) == ([], [])
    assert vd.fdb_plan(["2001:db8::2"], ["2001:db8:0::2"]) == ([], [])
    add, rm = vd.fdb_plan([], ["192.0.2.10", "192.0.2.9"])
    assert add == ["192.0.2.9", "192.0.2.10"] and rm == []


def test_overhead_and_names():
    assert vd.max_mtu(1500, 4) == 1450 and vd.max_mtu(1500, 6) == 1430
    assert vd.device_name(16777215) == "vxlan16777215"
    assert vd.owner_alias("net1") == "cnilab-vxlan:net1"


# ---- small helpers ------------------------------------------------------------------

def test_valid_attachments_both_keys():
    from plugins.core.config import valid_attachments
    new = {"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}
    old = {"cni.dev/attachments": [{"containerID": "c2", "ifname": "net1"}]}
    assert valid_attachments(new) == {("c1", "eth0")}
    assert valid_attachments(old) == {("c2", "net1")}
    with pytest.raises(CNIError, match="GC needs"):       # never "nothing is valid"
        valid_attachments({})
    with pytest.raises(CNIError, match="string containerID and ifname"):
        valid_attachments({"cni.dev/valid-attachments": [{"containerID": 1}]})


def test_anycast_mac_is_local_unicast_and_stable():
    m = vxlan._anycast_mac("net", 42)
    first = int(m[:2], 16)
    assert first & 0x02 and not first & 0x01 and len(m) == 17
    assert m == vxlan._anycast_mac("net", 42) != vxlan._anycast_mac("net", 43)


def test_cni_args_mac():
    vxlan._check_mac("02:00:00:00:00:01")
    for bad_mac in ("01:00:5e:00:00:01", "02:00:00:00:00", "zz:00:00:00:00:01"):
        with pytest.raises(CNIError):
            vxlan._check_mac(bad_mac)


def test_anycast_gateway_default_and_off():
    assert parse().anycast_gateway is True
    assert parse(anycastGateway=False).anycast_gateway is False
    bad("anycastGateway must be true or false", anycastGateway="no")


def test_lock_timeout_default_and_validation():
    assert vxlan.parse({"vni": 1}, "n").lock_timeout == vxlan.DEFAULT_LOCK_TIMEOUT
    assert vxlan.parse({"vni": 1, "lockTimeout": 5}, "n").lock_timeout == 5
    with pytest.raises(CNIError) as info:
        vxlan.parse({"vni": 1, "lockTimeout": 0}, "n")
    assert info.value.code == INVALID_NETWORK_CONFIG and "lockTimeout" in info.value.msg


def test_node_lock_gives_up_with_code_11_naming_the_file(tmp_path):
    import fcntl

    from plugins.core import record
    conf = record.replace(vxlan.parse({"vni": 7, "lockTimeout": 1}, "n"),
                          run_dir=str(tmp_path))
    path = str(tmp_path / "vxlan-vxbr7.lock")
    with vxlan.node_lock(conf):                  # free: taken at once
        pass
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)           # held elsewhere (another open file)
        with pytest.raises(CNIError) as info:
            with vxlan.node_lock(conf):
                pytest.fail("the lock was taken while held")
    finally:
        os.close(fd)
    assert info.value.code == 11 and path in info.value.msg
