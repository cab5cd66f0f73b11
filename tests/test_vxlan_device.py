"""vxlan device + FDB backend between two node namespaces joined by a veth underlay."""
from __future__ import annotations

import pytest

from plugins.core import netns
from plugins.core.errors import CNIError, INVALID_NETWORK_CONFIG, LINK_EXISTS
from plugins.net import vxlan_dev as vd

pytestmark = pytest.mark.root


def links_in(ns) -> vd.VxlanLinks:
    with netns.entered(ns.path):
        return vd.VxlanLinks()


@pytest.fixture
def underlay(make_netns):
    """Nodes A and B on one veth underlay: A=10.210.0.1, B=10.210.0.2 (+ fd10:210::1/2)."""
    a, b = make_netns("vxa"), make_netns("vxb")
    a.wire(b, "ul0", addrs=("10.210.0.1/24", "fd10:210::1/64"),
           peer_addrs=("10.210.0.2/24", "fd10:210::2/64"))
    return a, b


def spec(local: str, **kw) -> vd.DeviceSpec:
    base = dict(name="vxlan77", vni=77, port=4789, local=local, underlay="ul0", mtu=1450,
                alias=vd.owner_alias("devtest"))
    base.update(kw)
    return vd.DeviceSpec(**base)


def test_device_fdb_and_traffic(underlay):
    a, b = underlay
    la, lb = links_in(a), links_in(b)
    try:
        ula, ulb = la.underlay("ul0"), lb.underlay("ul0")
        assert ula.mtu == 1500 and ula.up and "10.210.0.1" in ula.addresses
        assert la.route_dev("10.210.0.2") == "ul0"
        assert la.route_dev("198.51.100.1") is None

        ia, created = la.ensure(spec("10.210.0.1"), ula.index)
        assert created
        ib, _ = lb.ensure(spec("10.210.0.2"), ulb.index)
        # Idempotent: a second ensure finds the same device.
        assert la.ensure(spec("10.210.0.1"), ula.index) == (ia, False)
        obs = la.observe("vxlan77")
        assert vd.mismatches(spec("10.210.0.1"), obs, ula.index) == []
        assert obs.alias == "cnilab-vxlan:devtest" and obs.learning is False

        assert la.sync_fdb(ia, ["10.210.0.2", "10.210.0.9"]) == (["10.210.0.2", "10.210.0.9"], [])
        assert la.sync_fdb(ia, ["10.210.0.2", "10.210.0.9"]) == ([], [])
        # A stale peer goes; an entry with a real MAC (not ours to manage) stays.
        a.run("bridge", "fdb", "add", "02:00:00:00:00:01", "dev", "vxlan77", "dst", "10.210.0.7")
        assert la.sync_fdb(ia, ["10.210.0.2"]) == ([], ["10.210.0.9"])
        assert la.fdb_peers(ia) == ["10.210.0.2"]
        fdb = a.run("bridge", "fdb", "show", "dev", "vxlan77").stdout
        assert "02:00:00:00:00:01 dst 10.210.0.7" in fdb
        assert "00:00:00:00:00:00 dst 10.210.0.2" in fdb and "10.210.0.9" not in fdb
        lb.sync_fdb(ib, ["10.210.0.1"])

        # L2 over the overlay: addresses on the VXLAN devices reach each other.
        for ns, n, ln, idx in ((a, 1, la, ia), (b, 2, lb, ib)):
            ns.run("ip", "addr", "add", f"10.211.0.{n}/24", "dev", "vxlan77")
            ln.set_up(idx)
        out = a.run("ping", "-c", "1", "-W", "2", "10.211.0.2", check=False)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        la.close()
        lb.close()


def test_existing_device_conflicts(underlay):
    a, _ = underlay
    la = links_in(a)
    try:
        ul = la.underlay("ul0")
        la.ensure(spec("10.210.0.1"), ul.index)
        with pytest.raises(CNIError) as ei:          # ours, other settings: never recreated
            la.ensure(spec("10.210.0.1", port=8472), ul.index)
        assert ei.value.code == INVALID_NETWORK_CONFIG and "UDP port is 4789" in ei.value.details
        with pytest.raises(CNIError) as ei:          # not ours (other alias)
            la.ensure(spec("10.210.0.1", alias="someone-else"), ul.index)
        assert ei.value.code == LINK_EXISTS
        # Same VNI+port under another name: the kernel refuses, we say so.
        with pytest.raises(CNIError) as ei:
            la.create(spec("10.210.0.1", name="vxother"), ul.index)
        assert ei.value.code == LINK_EXISTS
        # MTU follows the config.
        idx, created = la.ensure(spec("10.210.0.1", mtu=1400), ul.index)
        assert not created and la.observe_index(idx).mtu == 1400
        assert la.delete(idx) and not la.delete(idx)
    finally:
        la.close()


def test_ipv6_underlay(underlay):
    a, b = underlay
    la = links_in(a)
    try:
        ul = la.underlay("ul0")
        s = spec("fd10:210::1", mtu=1430)
        idx, _ = la.ensure(s, ul.index)
        assert vd.mismatches(s, la.observe("vxlan77"), ul.index) == []
        assert la.sync_fdb(idx, ["fd10:210::2"]) == (["fd10:210::2"], [])
        assert la.fdb_peers(idx) == ["fd10:210::2"]
        assert la.sync_fdb(idx, []) == ([], ["fd10:210::2"])
    finally:
        la.close()
