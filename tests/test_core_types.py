"""Versioned results: parsing and converting between every pair of versions."""
from __future__ import annotations

import itertools

import pytest

from plugins.core import version as ver
from plugins.core.errors import CNIError, DECODING_FAILURE, INCOMPATIBLE_VERSION
from plugins.core.types import DNS, Interface, IPConfig, Result, Route, convert

V02 = ("0.1.0", "0.2.0")
V04 = ("0.3.0", "0.3.1", "0.4.0")
V1 = ("1.0.0", "1.1.0")
ALL = V02 + V04 + V1


def full_result() -> Result:
    """Everything the 1.1.0 model can carry."""
    return Result(
        interfaces=[Interface("cni0", mac="aa:bb:cc:dd:ee:01", mtu=1450),
                    Interface("veth1", mac="aa:bb:cc:dd:ee:02"),
                    Interface("eth0", mac="aa:bb:cc:dd:ee:03", mtu=1450, sandbox="/var/run/netns/p",
                              socket_path="/run/vhost.sock", pci_id="0000:00:1f.6")],
        ips=[IPConfig("10.1.0.5/24", "10.1.0.1", 2), IPConfig("fd00::5/64", "fd00::1", 2)],
        routes=[Route("0.0.0.0/0", "10.1.0.1", mtu=1400, advmss=1360, priority=10, table=100,
                      scope=0),
                Route("::/0", "fd00::1")],
        dns=DNS(nameservers=["10.1.0.1"], domain="lab", search=["lab"], options=["ndots:2"]))


def test_110_keeps_everything():
    d = full_result().to_dict("1.1.0")
    assert d["cniVersion"] == "1.1.0"
    assert d["interfaces"][2] == {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "mtu": 1450,
                                  "sandbox": "/var/run/netns/p", "socketPath": "/run/vhost.sock",
                                  "pciID": "0000:00:1f.6"}
    assert d["routes"][0] == {"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400, "advmss": 1360,
                              "priority": 10, "table": 100, "scope": 0}
    assert d["ips"][0] == {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2}
    assert d["dns"] == {"nameservers": ["10.1.0.1"], "domain": "lab", "search": ["lab"],
                        "options": ["ndots:2"]}
    assert Result.from_dict(d) == Result(**{**full_result().__dict__, "cni_version": "1.1.0"})


def test_100_drops_110_only_fields():
    d = full_result().to_dict("1.0.0")
    for i in d["interfaces"]:
        assert set(i) <= {"name", "mac", "sandbox"}
    assert d["routes"][0] == {"dst": "0.0.0.0/0", "gw": "10.1.0.1"}
    assert d["ips"][0] == {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2}
    assert "version" not in d["ips"][0]


@pytest.mark.parametrize("v", V04)
def test_04x_has_ip_versions(v):
    d = full_result().to_dict(v)
    assert [ip["version"] for ip in d["ips"]] == ["4", "6"]
    assert d["ips"][1] == {"version": "6", "address": "fd00::5/64", "gateway": "fd00::1",
                           "interface": 2}
    assert d["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "::/0", "gw": "fd00::1"}]
    assert all(set(i) <= {"name", "mac", "sandbox"} for i in d["interfaces"])


@pytest.mark.parametrize("v", V02)
def test_020_ip4_ip6(v):
    d = full_result().to_dict(v)
    assert set(d) == {"cniVersion", "ip4", "ip6", "dns"}
    assert d["ip4"] == {"ip": "10.1.0.5/24", "gateway": "10.1.0.1",
                        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]}
    assert d["ip6"] == {"ip": "fd00::5/64", "gateway": "fd00::1",
                        "routes": [{"dst": "::/0", "gw": "fd00::1"}]}


def test_020_parse():
    r = Result.from_dict({"cniVersion": "0.2.0",
                          "ip4": {"ip": "10.2.0.3/16", "gateway": "10.2.0.1",
                                  "routes": [{"dst": "0.0.0.0/0"}]},
                          "ip6": {"ip": "fd01::3/64"},
                          "dns": {"nameservers": ["1.1.1.1"]}})
    assert [ip.address for ip in r.ips] == ["10.2.0.3/16", "fd01::3/64"]
    assert r.ips[0].gateway == "10.2.0.1" and r.ips[1].gateway == ""
    assert r.routes == [Route("0.0.0.0/0")]
    assert r.dns.nameservers == ["1.1.1.1"]
    assert r.to_dict("1.0.0")["ips"] == [{"address": "10.2.0.3/16", "gateway": "10.2.0.1"},
                                         {"address": "fd01::3/64"}]


def test_020_one_address_per_family():
    r = Result(ips=[IPConfig("10.0.0.1/24"), IPConfig("10.0.0.2/24")])
    assert r.to_dict("0.2.0")["ip4"] == {"ip": "10.0.0.1/24"}


@pytest.mark.parametrize("src,dst", list(itertools.product(ALL, ALL)))
def test_every_pair_converts(src, dst):
    """Convert src -> dst; what both versions can express survives."""
    d = full_result().to_dict(src)
    out = convert(d, dst)
    assert out["cniVersion"] == dst
    back = Result.from_dict(out)
    # addresses and gateways survive every pair (0.2.0 keeps one per family: we have one)
    assert [(ip.address, ip.gateway) for ip in back.ips] == [
        ("10.1.0.5/24", "10.1.0.1"), ("fd00::5/64", "fd00::1")]
    assert back.dns.nameservers == ["10.1.0.1"]
    assert {(r.dst, r.gw) for r in back.routes} == {("0.0.0.0/0", "10.1.0.1"), ("::/0", "fd00::1")}
    if src not in V02 and dst not in V02:
        # interfaces and ips[].interface survive once both sides are >= 0.3.0
        assert [i.name for i in back.interfaces] == ["cni0", "veth1", "eth0"]
        assert [ip.interface for ip in back.ips] == [2, 2]
        assert back.interfaces[2].sandbox == "/var/run/netns/p"
    if src == "1.1.0" and dst == "1.1.0":
        assert back.interfaces[2].pci_id == "0000:00:1f.6" and back.routes[0].table == 100


@pytest.mark.parametrize("src,dst", list(itertools.product(V04 + V1, V04 + V1)))
def test_round_trip_is_stable(src, dst):
    """src -> dst -> src equals src -> (lowest common) -> src."""
    d = full_result().to_dict(src)
    again = convert(convert(d, dst), src)
    lowest = min(src, dst, key=ver.parse)
    expected = convert(full_result().to_dict(lowest), src)
    assert again == expected


def test_ipam_style_result_without_interfaces():
    d = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1"}]}
    r = Result.from_dict(d)
    assert r.interfaces == [] and r.ips[0].interface is None
    assert r.to_dict("0.4.0") == {"cniVersion": "0.4.0", "ips": [
        {"address": "10.0.0.2/24", "gateway": "10.0.0.1", "version": "4"}]}
    assert r.to_dict("1.0.0") == d


def test_copy_is_deep():
    r = full_result()
    c = r.copy()
    c.ips[0].address = "10.9.9.9/24"
    assert r.ips[0].address == "10.1.0.5/24"


@pytest.mark.parametrize("bad", [
    None, [], "x", {}, {"cniVersion": 1}, {"cniVersion": "1.0.0", "ips": {}},
    {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1"}]},
    {"cniVersion": "1.0.0", "ips": [{"address": "nope/24"}]},
    {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "gateway": "x"}]},
    {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "interface": "2"}]},
    {"cniVersion": "1.0.0", "interfaces": [{"mac": "x"}]},
    {"cniVersion": "1.0.0", "routes": [{"gw": "10.0.0.1"}]},
    {"cniVersion": "1.0.0", "routes": [{"dst": "300.0.0.0/8"}]},
    {"cniVersion": "1.0.0", "dns": {"nameservers": "1.1.1.1"}},
    {"cniVersion": "0.4.0", "ips": [{"version": "5", "address": "10.0.0.1/24"}]},
    {"cniVersion": "0.2.0", "ip4": {"gateway": "10.0.0.1"}},
])
def test_bad_results_are_decoding_errors(bad):
    with pytest.raises(CNIError) as e:
        Result.from_dict(bad)
    assert e.value.code in (DECODING_FAILURE, INCOMPATIBLE_VERSION)


def test_unsupported_result_version():
    with pytest.raises(CNIError) as e:
        Result.from_dict({"cniVersion": "3.0.0"})
    assert e.value.code == INCOMPATIBLE_VERSION
    with pytest.raises(CNIError):
        full_result().to_dict("0.5.0")


def test_version_helpers():
    assert ver.at_least("1.1.0", "1.0.0") and not ver.at_least("0.3.1", "0.4.0")
    assert ver.parse("1.0") == (1, 0, 0)
    assert ver.version_reply("0.4.0")["cniVersion"] == "0.4.0"
    assert ver.version_reply("7.7.7")["cniVersion"] == ver.CURRENT
    with pytest.raises(CNIError):
        ver.parse("a.b")
