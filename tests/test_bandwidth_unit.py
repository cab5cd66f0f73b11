"""bandwidth without root: limits, TBF parameter maths, names."""
from __future__ import annotations

import pytest

from plugins import bandwidth
from plugins.core.config import parse_netconf
from plugins.core.errors import CNIError
from plugins.net import tc

TICKS = 1000 / 64          # /proc/net/psched "000003e8 00000040 000f4240 3b9aca00"


def netconf(bw=None, **top):
    raw = {"cniVersion": "1.0.0", "name": "net1", "type": "bandwidth", **top}
    if bw is not None:
        raw["runtimeConfig"] = {"bandwidth": bw}
    return parse_netconf(raw)


def test_tick_factor_is_read_like_tc():
    assert tc.tick_in_usec("000003e8 00000040 000f4240 3b9aca00\n") == TICKS
    assert tc.tick_in_usec("00000001 00000001 000f4240 3b9aca00\n") == 1.0


def test_tbf_params_match_tc_for_10_and_100_mbit():
    p = tc.tbf_params(10_000_000, 1_000_000, TICKS)
    # rate 1.25 MB/s; limit = rate * 25 ms + burst; buffer = burst/rate s in ticks
    assert (p.rate, p.burst, p.limit, p.buffer) == (1_250_000, 125_000, 156_250, 1_562_500)
    p = tc.tbf_params(100_000_000, 800_000, TICKS)
    assert (p.rate, p.burst, p.limit) == (12_500_000, 100_000, 412_500)
    assert p.buffer == int(1_000_000 * (100_000 / 12_500_000) * TICKS)


@pytest.mark.parametrize("rate,burst,what", [
    (7, 1000, "rate"), ((2**32) * 8, 1000, "rate"), (8_000, 4, "burst"),
    (10**9, (2**32) * 8, "burst"),
])
def test_tbf_params_out_of_range(rate, burst, what):
    with pytest.raises(tc.TcParamError, match=what):
        tc.tbf_params(rate, burst, TICKS)


@pytest.mark.parametrize("burst", [2**31 - 1, 2**32 - 1])   # kubelet's / containerd's "unlimited"
def test_unlimited_bursts_are_capped_to_what_the_kernel_holds(burst):
    p = tc.tbf_params(1_000_000, burst, TICKS)
    assert p.buffer <= 2**32 - 1 and p.buffer > 0.999 * (2**32 - 1)
    assert p.burst < burst // 8 and p.limit == 31_250 // 10 + p.burst
    # where the burst fits, nothing is capped
    assert tc.tbf_params(100_000_000, 2**32 - 1, TICKS).burst == (2**32 - 1) // 8


def test_buffer_is_computed_like_tc():
    # tc truncates the microseconds before scaling to ticks
    p = tc.tbf_params(3_333_333, 777_777, TICKS)
    assert p.buffer == int(int(1_000_000 * (97_222 / 416_666)) * TICKS)


def test_ifb_names_are_deterministic_short_and_distinct():
    a = tc.ifb_name("net1", "c1", "eth0")
    assert a == tc.ifb_name("net1", "c1", "eth0") and len(a) == 15 and a.startswith("bwp")
    assert len({a, tc.ifb_name("net1", "c2", "eth0"), tc.ifb_name("net2", "c1", "eth0"),
                tc.ifb_name("net1", "c1", "eth1"), tc.legacy_ifb_name("net1", "c1")}) == 5
    assert tc.parse_alias(tc.ifb_alias("net1", "c1", "eth1")) == ("net1", "c1", "eth1")
    # an alias written by an earlier version: no interface recorded
    assert tc.parse_alias("cnilab-bandwidth n:net1 c:c1") == ("net1", "c1", None)
    assert tc.parse_alias("someone else's") is None


def test_runtime_config_and_top_level_precedence():
    bw = bandwidth.parse_config(netconf({"ingressRate": 1000, "ingressBurst": 800}), TICKS)
    assert bw == bandwidth.Bandwidth(1000, 800, 0, 0) and bw.shapes_ingress
    assert not bw.shapes_egress
    bw = bandwidth.parse_config(netconf({"ingressRate": 1000, "ingressBurst": 800},
                                        egressRate=2000, egressBurst=1600), TICKS)
    assert bw == bandwidth.Bandwidth(0, 0, 2000, 1600)
    assert bandwidth.parse_config(netconf(), TICKS).is_zero()
    assert bandwidth.parse_config(netconf({}), TICKS).is_zero()


@pytest.mark.parametrize("bw", [
    {"ingressRate": 1000}, {"ingressBurst": 1000}, {"egressRate": 1000, "egressBurst": 0},
    {"ingressRate": -1, "ingressBurst": 1}, {"ingressRate": "1M", "ingressBurst": 1},
    {"egressRate": 2**36, "egressBurst": 1000}, {"egressRate": 800, "egressBurst": 2**36},
    {"ingressRate": 4, "ingressBurst": 1000}, {"ingressRate": 1.5, "ingressBurst": 1000},
])
def test_invalid_limits_are_code_7(bw):
    with pytest.raises(CNIError) as e:
        bandwidth.parse_config(netconf(bw), TICKS)
    assert e.value.code == 7


def test_bandwidth_must_be_an_object():
    with pytest.raises(CNIError) as e:
        bandwidth.parse_config(netconf([1, 2]), TICKS)
    assert e.value.code == 7


NOOP_DEL = r"""
import json, sys
from plugins.core.skel import dispatch
env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "nothing-here", "CNI_IFNAME": "eth0"}
conf = {"cniVersion": "1.0.0", "name": "n", "type": "bandwidth"}
out, rc = dispatch("bandwidth", env, json.dumps(conf).encode())
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("pyroute2", "nftables", "scapy"))
print(json.dumps({"rc": rc, "out": out, "heavy": heavy}))
"""


def test_noop_del_imports_no_netlink_library():
    import json
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-c", NOOP_DEL], capture_output=True, text=True,
                       check=True)
    assert json.loads(p.stdout) == {"rc": 0, "out": "", "heavy": []}
