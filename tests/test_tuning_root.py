"""tuning in throwaway namespaces: what ADD sets, what DEL puts back, what bad
input and failures leave (nothing), side by side with the reference binary."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from plugins import tuning
from plugins.core.errors import CNIError
from tests import chain_lab as cl

pytestmark = pytest.mark.root
REF = "/usr/lib/cni/tuning"
NET = "tnet"
SYSCTLS = ("net.ipv4.conf.eth0.arp_notify", "net.core.somaxconn",
           "net.ipv4.ping_group_range")
FULL = {"sysctl": {"net.ipv4.conf.IFNAME.arp_notify": "1", "net.core.somaxconn": "512"},
        "mac": "c2:11:22:33:44:55", "mtu": 1400, "promisc": True, "allmulti": True}


def link_state(ns, ifname="eth0") -> dict:
    info = json.loads(ns.run("ip", "-j", "-d", "link", "show", ifname).stdout)[0]
    flags = set(info.get("flags", []))
    state = {"mac": info["address"], "mtu": info["mtu"], "promisc": "PROMISC" in flags,
             "allmulti": "ALLMULTI" in flags, "txqlen": info.get("txqlen")}
    for key in SYSCTLS:
        state[key] = ns.run("sysctl", "-n", key.replace("eth0", ifname)).stdout.strip()
    return state


def state_files(run_dir: str) -> list[str]:
    root = os.path.join(run_dir, "tuning")
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(root) for f in fs)


@pytest.fixture
def run_dir():
    return os.environ["CNILAB_RUN_DIR"]


@pytest.fixture
def lab(node, pod):
    cl.make_node(node)
    return node, cl.add_pod(node, pod, 1)


def test_add_check_del_puts_everything_back(lab, run_dir):
    node, p = lab
    before = link_state(p.ns)
    c = cl.conf("tuning", NET, "1.0.0", prev=p.prev_result(), txQLen=321, **FULL)
    out, rc = cl.call(node, "tuning", "ADD", c, netns=p.ns.path)
    assert rc == 0, out
    pod_iface = out["interfaces"][2]
    assert pod_iface == {"name": "eth0", "mac": "c2:11:22:33:44:55", "sandbox": p.ns.path}
    assert out["ips"] == c["prevResult"]["ips"]
    now = link_state(p.ns)
    assert now == dict(before, mac="c2:11:22:33:44:55", mtu=1400, promisc=True,
                       allmulti=True, txqlen=321,
                       **{"net.ipv4.conf.eth0.arp_notify": "1", "net.core.somaxconn": "512"})
    assert state_files(run_dir) == [f"{NET}/c1:eth0.json"]
    path = os.path.join(run_dir, "tuning", NET, "c1:eth0.json")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert cl.call(node, "tuning", "CHECK", c, netns=p.ns.path) == (None, 0)
    # a second ADD without DEL keeps the first ADD's originals
    assert cl.call(node, "tuning", "ADD", c, netns=p.ns.path)[1] == 0
    assert cl.call(node, "tuning", "DEL", c, netns=p.ns.path) == (None, 0)
    assert link_state(p.ns) == before
    assert state_files(run_dir) == []
    assert cl.call(node, "tuning", "DEL", c, netns=p.ns.path) == (None, 0)
    out, rc = cl.call(node, "tuning", "CHECK", c, netns=p.ns.path)
    assert rc == 1 and out["code"] == 102
    for what in ("MAC", "MTU", "promisc", "allmulti", "txQLen", "somaxconn"):
        assert what in out["details"], out


def test_check_sees_promisc_switched_on_behind_its_back(lab):
    node, p = lab
    c = cl.conf("tuning", NET, "0.4.0", prev=p.prev_result("0.4.0"), mtu=1450)
    assert cl.call(node, "tuning", "ADD", c, netns=p.ns.path)[1] == 0
    assert cl.call(node, "tuning", "CHECK", c, netns=p.ns.path) == (None, 0)
    p.ns.run("ip", "link", "set", "eth0", "promisc", "on")
    out, rc = cl.call(node, "tuning", "CHECK", c, netns=p.ns.path)
    assert rc == 1 and out["code"] == 102 and "promisc" in out["details"]
    assert cl.call(node, "tuning", "DEL", c, netns=p.ns.path)[1] == 0


def test_runtime_config_mac_and_cni_args(lab):
    node, p = lab
    c = cl.conf("tuning", NET, "1.0.0", prev=p.prev_result(),
                runtime={"mac": "02:aa:bb:cc:dd:01"})
    out, rc = cl.call(node, "tuning", "ADD", c, netns=p.ns.path)
    assert rc == 0 and out["interfaces"][2]["mac"] == "02:aa:bb:cc:dd:01"
    assert link_state(p.ns)["mac"] == "02:aa:bb:cc:dd:01"
    assert cl.call(node, "tuning", "DEL", c, netns=p.ns.path)[1] == 0


@pytest.mark.parametrize("sysctl, mention", [
    ({"net.ipv4.conf.nosuch0.forwarding": "1"}, "does not exist"),
    ({"net.core.netdev_max_backlog": "2000"}, "does not exist"),   # the node's, not per-netns
    ({"kernel.hostname": "x"}, "net"),
    ({"net.ipv4.conf.IFNAME.arp_notify": "1", "net.core.somaxconn": "not-a-number"},
     "somaxconn"),                                                 # the kernel says no
])
def test_bad_sysctls_change_nothing(lab, run_dir, sysctl, mention):
    node, p = lab
    before = link_state(p.ns)
    c = cl.conf("tuning", NET, "1.0.0", prev=p.prev_result(), sysctl=sysctl, mtu=1300,
                mac="c2:00:00:00:00:09")
    out, rc = cl.call(node, "tuning", "ADD", c, netns=p.ns.path)
    assert rc == 1 and out["code"] in (5, 7) and mention in out["msg"] + out["details"], out
    assert link_state(p.ns) == before
    assert state_files(run_dir) == []


def test_a_failure_half_way_rolls_everything_back(lab, run_dir, monkeypatch):
    node, p = lab
    before = link_state(p.ns)
    real = tuning._set

    def failing(index, what, **kw):
        if "txqlen" in kw:
            raise CNIError(5, "injected failure", what)
        return real(index, what, **kw)

    monkeypatch.setattr(tuning, "_set", failing)
    c = cl.conf("tuning", NET, "1.0.0", prev=p.prev_result(), txQLen=10, **FULL)
    out, rc = cl.call(node, "tuning", "ADD", c, netns=p.ns.path)
    assert rc == 1 and out["msg"] == "injected failure"
    assert link_state(p.ns) == before
    assert state_files(run_dir) == []


def test_del_after_the_pod_is_gone_forgets_the_state(make_netns, node, run_dir):
    cl.make_node(node)
    gone = make_netns("gone")
    p = cl.add_pod(node, gone, 2)
    c = cl.conf("tuning", NET, "1.0.0", prev=p.prev_result(), mtu=1400)
    assert cl.call(node, "tuning", "ADD", c, netns=gone.path)[1] == 0
    path = gone.path
    from netlab.base import namespaces as nsutil
    nsutil.delete(gone.name)
    assert cl.call(node, "tuning", "DEL", c, netns=path) == (None, 0)
    assert cl.call(node, "tuning", "DEL", c, netns="") == (None, 0)
    assert state_files(run_dir) == []


@pytest.mark.skipif(not os.access(REF, os.X_OK), reason=f"reference plugin {REF} not installed")
def test_side_by_side_with_the_reference(make_netns, node, tmp_path):
    """The same config through the reference binary and ours, each on its own pod:
    the same interface state after ADD, the same result, the originals back after DEL.
    (txQLen is left out: the reference 1.1.1 predates it.)"""
    cl.make_node(node)
    pods = [cl.add_pod(node, make_netns("pod"), n) for n in (1, 2)]
    originals = [link_state(p.ns) for p in pods]
    # the literal interface name: the reference 1.1.1's CHECK does not expand IFNAME
    full = dict(FULL, sysctl={"net.ipv4.conf.eth0.arp_notify": "1", "net.core.somaxconn": "512"})
    conf = cl.conf("tuning", NET, "0.4.0", dataDir=str(tmp_path / "ref"), **full)
    results, states = [], []
    for p, exe in zip(pods, (None, REF)):
        c = dict(conf, prevResult=p.prev_result("0.4.0"))
        out, rc, err = cl.exec_plugin(node, "tuning", "ADD", c, netns=p.ns.path, exe=exe)
        assert rc == 0, (exe, out, err)
        results.append(out)
        states.append(link_state(p.ns))
        out, rc, err = cl.exec_plugin(node, "tuning", "CHECK", c, netns=p.ns.path, exe=exe)
        assert rc == 0, (exe, out, err)
    assert states[0] == states[1]
    for r, p in zip(results, pods):
        r.pop("dns", None)
        assert r["interfaces"][2]["mac"] == FULL["mac"]
        assert r["ips"] == p.prev_result("0.4.0")["ips"]
    for p, exe in zip(pods, (None, REF)):
        c = dict(conf, prevResult=p.prev_result("0.4.0"))
        out, rc, err = cl.exec_plugin(node, "tuning", "DEL", c, netns=p.ns.path, exe=exe)
        assert rc == 0, (exe, out, err)
    after = [link_state(p.ns) for p in pods]
    # the reference leaves sysctls as set (it restores link attributes only); we put
    # them back too
    link_keys = ("mac", "mtu", "promisc", "allmulti")
    assert [{k: s[k] for k in link_keys} for s in after] == \
        [{k: s[k] for k in link_keys} for s in originals]
    assert after[0] == originals[0]
    assert after[1]["net.core.somaxconn"] == "512"
    shutil.rmtree(tmp_path / "ref", ignore_errors=True)
