"""vxlan plugin end to end: two node namespaces on one underlay, pods on both.

Node A (10.210.0.1) and node B (10.210.0.2) are joined by a veth pair "ul0";
each runs the plugin with itself as the host. Pods share 10.220.0.0/24: node A
hands out .10-.19, node B .20-.29 (host-local, a tmp dataDir per node).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from plugins.core import netns as nsmod
from plugins.core import skel
from plugins.core.errors import (CHECK_FAILED, INVALID_NETWORK_CONFIG, NOT_AVAILABLE)

pytestmark = pytest.mark.root

VNI = 4242
PORT = 8472
SUBNET = "10.220.0.0/24"
UNDERLAY = {"A": "10.210.0.1", "B": "10.210.0.2"}
SLICES = {"A": ("10.220.0.10", "10.220.0.19"), "B": ("10.220.0.20", "10.220.0.29")}


class Node:
    def __init__(self, ns, key: str, data_dir: str) -> None:
        self.ns, self.key, self.data_dir = ns, key, data_dir

    def conf(self, **kw) -> dict:
        start, end = SLICES[self.key]
        c = {"cniVersion": "1.1.0", "name": "overlay", "type": "vxlan", "vni": VNI,
             "port": PORT, "peers": list(UNDERLAY.values()),
             "ipam": {"type": "host-local", "dataDir": self.data_dir,
                      "ranges": [[{"subnet": SUBNET, "rangeStart": start, "rangeEnd": end}]]}}
        c.update(kw)
        return c

    def cni(self, command: str, conf: dict, cid: str = "", netns: str = "",
            ifname: str = "eth0", args: str = "") -> tuple[int, dict | None]:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
               "CNI_IFNAME": ifname, "CNI_PATH": "/usr/lib/cni", "CNI_ARGS": args}
        env = {k: v for k, v in env.items() if v}
        with nsmod.entered(self.ns.path):
            out, rc = skel.dispatch("vxlan", env, json.dumps(conf).encode())
        return rc, (json.loads(out) if out else None)

    def add(self, pod, cid: str, **kw) -> dict:
        rc, res = self.cni("ADD", self.conf(**kw), cid, pod.path)
        assert rc == 0, res
        return res

    def links(self) -> dict[str, dict]:
        out = self.ns.run("ip", "-j", "-d", "link", "show").stdout
        return {l["ifname"]: l for l in json.loads(out)}

    def fdb_peers(self) -> list[str]:
        out = self.ns.run("bridge", "-j", "fdb", "show", "dev", f"vxlan{VNI}").stdout
        return sorted(e["dst"] for e in json.loads(out or "[]")
                      if e.get("mac") == "00:00:00:00:00:00" and "dst" in e)


@pytest.fixture
def nodes(make_netns, tmp_path):
    a, b = make_netns("vxa"), make_netns("vxb")
    a.wire(b, "ul0", addrs=(f"{UNDERLAY['A']}/24",), peer_addrs=(f"{UNDERLAY['B']}/24",))
    return (Node(a, "A", str(tmp_path / "ipam-a")), Node(b, "B", str(tmp_path / "ipam-b")))


def pod_ip(res: dict) -> str:
    return res["ips"][0]["address"].split("/")[0]


SNIFFER = r"""
import json, sys
from scapy.all import AsyncSniffer, ICMP, IP, UDP, bind_layers
from scapy.layers.vxlan import VXLAN
port = int(sys.argv[1])
bind_layers(UDP, VXLAN, dport=port)
s = AsyncSniffer(iface="ul0", store=True, lfilter=lambda p: UDP in p and p[UDP].dport == port,
                 started_callback=lambda: print("ready", flush=True))
s.start()
sys.stdin.readline()
s.stop()
out = []
for p in s.results or []:
    if VXLAN not in p:
        continue
    inner = p[VXLAN].payload
    out.append({"outer_src": p[IP].src, "outer_dst": p[IP].dst, "dport": p[UDP].dport,
                "vni": p[VXLAN].vni,
                "icmp": inner[ICMP].type if ICMP in inner else None,
                "src": inner[IP].src if IP in inner else None,
                "dst": inner[IP].dst if IP in inner else None})
print(json.dumps(out), flush=True)
"""


class Sniffer:
    """scapy in the node namespace (a subprocess: scapy caches interfaces at import)."""

    def __init__(self, ns, port: int) -> None:
        self.p = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c",
                                   SNIFFER, str(port)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()          # blocks until the socket is listening
        assert line.strip() == "ready", self.p.stderr.read()

    def stop(self) -> list[dict]:
        time.sleep(0.2)
        out, err = self.p.communicate("stop\n", timeout=30)
        assert self.p.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])


def test_two_nodes_ping_capture_mtu_fdb(nodes, make_netns):
    a, b = nodes
    pa, pb = make_netns("pa"), make_netns("pb")
    ra = a.add(pa, "ctr-a1")
    rb = b.add(pb, "ctr-b1")
    ipa, ipb = pod_ip(ra), pod_ip(rb)
    assert ipa == "10.220.0.10" and ipb == "10.220.0.20"       # each node its own slice
    assert ra["ips"][0]["address"] == "10.220.0.10/24" and ra["ips"][0]["interface"] == 2
    assert [i["name"] for i in ra["interfaces"]][0] == f"vxbr{VNI}"
    assert ra["interfaces"][2]["sandbox"] == pa.path

    # The shared device: VNI, port, local address, MTU, port of the bridge, FDB = the peer.
    la = a.links()
    vx = la[f"vxlan{VNI}"]
    info = vx["linkinfo"]["info_data"]
    assert (info["id"], info["port"], info["local"]) == (VNI, PORT, "10.210.0.1")
    assert vx["mtu"] == 1450 and vx["master"] == f"vxbr{VNI}"
    assert a.fdb_peers() == ["10.210.0.2"] and b.fdb_peers() == ["10.210.0.1"]

    # Pod MTU = underlay 1500 - 50.
    mtu = json.loads(pa.run("ip", "-j", "link", "show", "eth0").stdout)[0]["mtu"]
    assert mtu == 1450 and ra["interfaces"][2].get("mtu") in (None, 1450)

    # Ping across nodes, captured on A's underlay: UDP/8472, VNI 4242, ICMP inside.
    sn = Sniffer(a.ns, PORT)
    ping = pa.run("ping", "-c", "2", "-i", "0.2", "-W", "2", ipb, check=False)
    pkts = sn.stop()
    assert ping.returncode == 0, ping.stdout + ping.stderr
    icmp = [p for p in pkts if p["icmp"] is not None]
    assert {"outer_src": "10.210.0.1", "outer_dst": "10.210.0.2", "dport": PORT, "vni": VNI,
            "icmp": 8, "src": ipa, "dst": ipb} in icmp, pkts
    assert {"outer_src": "10.210.0.2", "outer_dst": "10.210.0.1", "dport": PORT, "vni": VNI,
            "icmp": 0, "src": ipb, "dst": ipa} in icmp, pkts
    assert all(p["vni"] == VNI and p["dport"] == PORT for p in pkts)

    # DF: 1450 - 28 = 1422 bytes of payload fit; one more does not.
    ok = pa.run("ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", ipb, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    over = pa.run("ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1423", ipb, check=False)
    assert over.returncode != 0

    # CHECK passes on the live attachment, and fails once the FDB drifts.
    conf_a = dict(a.conf(), prevResult=ra)
    rc, err = a.cni("CHECK", conf_a, "ctr-a1", pa.path)
    assert rc == 0, err
    a.ns.run("bridge", "fdb", "del", "00:00:00:00:00:00", "dev", f"vxlan{VNI}",
             "dst", "10.210.0.2")
    rc, err = a.cni("CHECK", conf_a, "ctr-a1", pa.path)
    assert rc == 1 and err["code"] == CHECK_FAILED and "FDB" in err["msg"]
    a.ns.run("ip", "link", "set", f"vxlan{VNI}", "mtu", "1400")
    rc, err = a.cni("CHECK", conf_a, "ctr-a1", pa.path)
    assert rc == 1 and err["code"] == CHECK_FAILED and "MTU is 1400" in err["details"], err
    pa.run("ip", "addr", "flush", "dev", "eth0")
    rc, err = a.cni("CHECK", dict(conf_a, peers=["10.210.0.3"]), "ctr-a1", pa.path)
    assert rc == 1 and err["code"] == CHECK_FAILED, err

    # A node joins (peers grows): the next ADD on A converges the FDB, then it leaves.
    pa2, pa3 = make_netns("pa2"), make_netns("pa3")
    peers3 = [*UNDERLAY.values(), "10.210.0.3"]
    a.add(pa2, "ctr-a2", peers=peers3)
    assert a.fdb_peers() == ["10.210.0.2", "10.210.0.3"]
    a.add(pa3, "ctr-a3", peers=["10.210.0.1", "10.210.0.3"])
    assert a.fdb_peers() == ["10.210.0.3"]
    rc, err = a.cni("CHECK", conf_a, "ctr-a1", pa.path)      # old config: FDB drifted
    assert rc == 1 and err["code"] == CHECK_FAILED

    # DEL: idempotent; the shared device and bridge stay while pods use them.
    for cid, p in (("ctr-a2", pa2), ("ctr-a3", pa3), ("ctr-a3", pa3)):
        rc, err = a.cni("DEL", a.conf(), cid, p.path)
        assert rc == 0, err
    assert f"vxlan{VNI}" in a.links() and f"vxbr{VNI}" in a.links()
    rc, err = a.cni("DEL", a.conf(), "ctr-a1", pa.path)
    assert rc == 0, err
    left = a.links()
    assert f"vxlan{VNI}" not in left and f"vxbr{VNI}" not in left
    assert set(left) == {"lo", "ul0"}
    assert sorted(os.listdir(os.path.join(a.data_dir, "overlay"))) in ([], ["lock"]) or \
        not [f for f in os.listdir(os.path.join(a.data_dir, "overlay"))
             if f.startswith("10.")]
    rc, err = a.cni("DEL", a.conf(), "ctr-a1", "")           # netns gone / empty: fine
    assert rc == 0, err


def test_bad_config_changes_nothing(nodes, make_netns):
    a, _ = nodes
    p = make_netns("pbad")
    before = set(a.links())
    cases = [
        (dict(vni=0), "vni"),
        (dict(vni=16777216), "vni"),
        (dict(peers=["10.210.0.2", "not-an-ip"]), "peers[1]"),
        (dict(mtu=1451), "larger than the underlay allows: 1450"),
        (dict(underlayInterface="eth7"), "'eth7' does not exist"),
        (dict(bridge="b" * 16), "bridge"),
        (dict(peers=[], group="10.1.2.3"), "multicast"),
    ]
    for kw, frag in cases:
        rc, err = a.cni("ADD", a.conf(**kw), "ctr-bad", p.path)
        assert rc == 1 and err["code"] == INVALID_NETWORK_CONFIG, (kw, err)
        assert frag in err["msg"] + err.get("details", ""), (kw, err)
    assert set(a.links()) == before
    assert not os.path.exists(os.path.join(a.data_dir, "overlay")) or not [
        f for f in os.listdir(os.path.join(a.data_dir, "overlay")) if f.startswith("10.")]


def test_failed_add_rolls_back(nodes, make_netns):
    a, _ = nodes
    gone = make_netns("pgone")
    path = gone.path
    from netlab.base import namespaces as nsutil
    nsutil.delete(gone.name)
    rc, err = a.cni("ADD", a.conf(), "ctr-gone", path)
    assert rc == 1, err
    assert set(a.links()) == {"lo", "ul0"}                  # device + bridge rolled back
    reserved = [f for f in os.listdir(os.path.join(a.data_dir, "overlay"))
                if f.startswith("10.")] if os.path.isdir(os.path.join(a.data_dir, "overlay")) else []
    assert reserved == []                                   # address released
    for _ in range(2):                                      # DEL after a failed ADD, netns gone
        rc, err = a.cni("DEL", a.conf(), "ctr-gone", path)
        assert rc == 0, err


def test_gc_and_status(nodes, make_netns):
    a, _ = nodes
    p1, p2 = make_netns("pg1"), make_netns("pg2")
    a.add(p1, "ctr-g1")
    r2 = a.add(p2, "ctr-g2")
    conf = a.conf()
    rc, err = a.cni("STATUS", conf)
    assert rc == 0, err

    gc_conf = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "ctr-g1",
                                                          "ifname": "eth0"}]})
    rc, err = a.cni("GC", gc_conf)
    assert rc == 0, err
    vx_ports = [n for n, l in a.links().items() if l.get("master") == f"vxbr{VNI}"]
    assert len(vx_ports) == 2 and f"vxlan{VNI}" in vx_ports       # g1's veth + the device
    files = os.listdir(os.path.join(a.data_dir, "overlay"))
    assert pod_ip(r2) not in files and "10.220.0.10" in files

    rc, err = a.cni("GC", dict(conf, **{"cni.dev/valid-attachments": []}))
    assert rc == 0, err
    assert set(a.links()) == {"lo", "ul0"}

    a.ns.run("ip", "link", "set", "ul0", "down")
    rc, err = a.cni("STATUS", a.conf(underlayInterface="ul0"))
    assert rc == 1 and err["code"] == NOT_AVAILABLE and "ul0 is down" in err["msg"], err
    rc, err = a.cni("STATUS", conf)            # found by route toward the peers: none now
    assert rc == 1 and err["code"] == NOT_AVAILABLE, err
    rc, err = a.cni("STATUS", a.conf(underlayInterface="nope0"))
    assert rc == 1 and err["code"] == NOT_AVAILABLE


def test_gateway_and_masquerade(nodes, make_netns):
    """isDefaultGateway on every node: the same gateway address and MAC on each bridge
    (answered locally); ipMasq lets a pod reach the other node's underlay address."""
    a, b = nodes
    pa, pb = make_netns("pga"), make_netns("pgb")
    kw = dict(isDefaultGateway=True, ipMasq=True)
    ra = a.add(pa, "ctr-gw-a", **kw)
    b.add(pb, "ctr-gw-b", **kw)
    assert ra["ips"][0]["gateway"] == "10.220.0.1"
    assert {"dst": "0.0.0.0/0", "gw": "10.220.0.1"} in ra["routes"]
    mac_a = a.links()[f"vxbr{VNI}"]["address"]
    assert mac_a == b.links()[f"vxbr{VNI}"]["address"]          # anycast gateway MAC
    for p in (pa, pb):
        r = p.run("ping", "-c", "1", "-W", "2", "10.220.0.1", check=False)
        assert r.returncode == 0, r.stdout + r.stderr
    # Pod on A -> node B's underlay address: routed by node A, masqueraded to 10.210.0.1.
    r = pa.run("ping", "-c", "1", "-W", "2", "10.210.0.2", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    rules = a.ns.run("nft", "list", "table", "inet", "cnilab_masq").stdout
    assert "10.220.0.10" in rules and "masquerade" in rules
    rc, err = a.cni("CHECK", dict(a.conf(**kw), prevResult=ra), "ctr-gw-a", pa.path)
    assert rc == 0, err
    rc, err = a.cni("DEL", a.conf(**kw), "ctr-gw-a", pa.path)
    assert rc == 0, err
    out = a.ns.run("nft", "list", "table", "inet", "cnilab_masq", check=False).stdout
    assert "10.220.0.10" not in out


def test_ipv6_underlay(make_netns, tmp_path):
    a, b = make_netns("vx6a"), make_netns("vx6b")
    a.wire(b, "ul0", addrs=("fd10:210::1/64",), peer_addrs=("fd10:210::2/64",))
    na, nb = Node(a, "A", str(tmp_path / "a")), Node(b, "B", str(tmp_path / "b"))
    peers = ["fd10:210::1", "fd10:210::2"]
    pa, pb = make_netns("p6a"), make_netns("p6b")
    def dual(node, lo, hi):
        ipam = node.conf()["ipam"]
        ipam["ranges"].append([{"subnet": "fd20::/64", "rangeStart": f"fd20::{lo}",
                                "rangeEnd": f"fd20::{hi}"}])
        return dict(peers=peers, learning=True, ipam=ipam)
    ra = na.add(pa, "ctr6-a", **dual(na, "a0", "af"))
    rb = nb.add(pb, "ctr6-b", **dual(nb, "b0", "bf"))
    assert [i["address"] for i in rb["ips"]] == ["10.220.0.20/24", "fd20::b0/64"]
    r = pa.run("ping", "-6", "-c", "1", "-W", "2", "fd20::b0", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    vx = na.links()[f"vxlan{VNI}"]
    assert vx["mtu"] == 1430 and vx["linkinfo"]["info_data"]["local6"] == "fd10:210::1"
    assert json.loads(pa.run("ip", "-j", "link", "show", "eth0").stdout)[0]["mtu"] == 1430
    assert na.fdb_peers() == ["fd10:210::2"]
    r = pa.run("ping", "-c", "1", "-W", "2", pod_ip(rb), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    ok = pa.run("ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1402", pod_ip(rb), check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    over = pa.run("ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1403", pod_ip(rb), check=False)
    assert over.returncode != 0
    assert pod_ip(ra) == "10.220.0.10"
    # learning: after traffic, node A knows pod B's MAC behind node B's VTEP.
    mac_b = rb["interfaces"][2]["mac"]
    fdb = a.run("bridge", "fdb", "show", "dev", f"vxlan{VNI}").stdout
    assert f"{mac_b} dst fd10:210::2" in fdb, fdb


def test_noop_del_is_lean(make_netns, tmp_path):
    """DEL of an attachment that does not exist: success, and no pyroute2/scapy import."""
    n = make_netns("vxlean")
    conf = Node(n, "A", str(tmp_path / "d")).conf()
    code = ("import json, os, sys\n"
            "from plugins.core import skel\n"
            "env = {'CNI_COMMAND': 'DEL', 'CNI_CONTAINERID': 'nothing-here', "
            "'CNI_IFNAME': 'eth0', 'CNI_PATH': '/usr/lib/cni'}\n"
            f"out, rc = skel.dispatch('vxlan', env, {json.dumps(json.dumps(conf))}.encode())\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('pyroute2', 'scapy'))\n"
            "print(json.dumps([rc, out, heavy]))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = n.run(sys.executable, "-c", code, check=False)
    assert r.returncode == 0, r.stderr
    rc, out, heavy = json.loads(r.stdout.strip().splitlines()[-1])
    assert rc == 0 and out == "" and heavy == [], (out, heavy, root)


def test_add_twice_keeps_the_first(nodes, make_netns):
    a, _ = nodes
    p = make_netns("ptwice")
    r1 = a.add(p, "ctr-twice")
    rc, err = a.cni("ADD", a.conf(), "ctr-twice", p.path)
    assert rc == 1 and err["code"] == 100, err
    files = os.listdir(os.path.join(a.data_dir, "overlay"))
    assert pod_ip(r1) in files                               # not released by the failure
    rc, err = a.cni("CHECK", dict(a.conf(), prevResult=r1), "ctr-twice", p.path)
    assert rc == 0, err


def test_multicast_group(nodes, make_netns):
    """group instead of peers: BUM traffic to the group, learning on, no static FDB."""
    a, b = nodes
    pa, pb = make_netns("pma"), make_netns("pmb")
    kw = dict(peers=None, group="239.1.42.42", underlayInterface="ul0")
    a.add(pa, "ctr-m-a", **kw)
    rb = b.add(pb, "ctr-m-b", **kw)
    info = a.links()[f"vxlan{VNI}"]["linkinfo"]["info_data"]
    assert info["group"] == "239.1.42.42" and info["learning"] is True
    r = pa.run("ping", "-c", "1", "-W", "3", pod_ip(rb), check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.e2e
def test_installed_executable(nodes, make_netns, installed_plugins):
    """The installed `vxlan` executable, run by a runtime inside each node namespace."""
    exe = os.path.join(installed_plugins, "vxlan")
    results = {}
    pods = {}
    for node in nodes:
        p = make_netns(f"px{node.key}")
        pods[node.key] = p
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"exe-{node.key}", "CNI_NETNS": p.path,
               "CNI_IFNAME": "eth0", "CNI_PATH": installed_plugins,
               "CNILAB_RUN_DIR": os.environ["CNILAB_RUN_DIR"]}
        r = subprocess.run(["ip", "netns", "exec", node.ns.name, exe], env=env,
                           input=json.dumps(dict(node.conf(), cniVersion="0.4.0")),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        results[node.key] = json.loads(r.stdout)
        assert results[node.key]["cniVersion"] == "0.4.0"
        assert results[node.key]["ips"][0]["version"] == "4"
    ping = pods["A"].run("ping", "-c", "1", "-W", "2", pod_ip(results["B"]), check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    for node in nodes:
        env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": f"exe-{node.key}",
               "CNI_NETNS": pods[node.key].path, "CNI_IFNAME": "eth0",
               "CNI_PATH": installed_plugins, "CNILAB_RUN_DIR": os.environ["CNILAB_RUN_DIR"]}
        r = subprocess.run(["ip", "netns", "exec", node.ns.name, exe], env=env,
                           input=json.dumps(node.conf()), capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert set(node.links()) == {"lo", "ul0"}


def test_parallel_add_and_last_del(nodes, make_netns):
    """The last DEL (which removes the shared links) racing ADDs on the same node."""
    import threading
    a, b = nodes
    first = make_netns("ppar0")
    a.add(first, "par-0")
    pods = [make_netns(f"ppar{i}") for i in range(1, 4)]
    out: dict[str, tuple] = {}

    def run(name, fn):
        out[name] = fn()
    threads = [threading.Thread(target=run, args=("del", lambda: a.cni(
        "DEL", a.conf(), "par-0", first.path)))]
    for i, p in enumerate(pods, 1):
        threads.append(threading.Thread(target=run, args=(f"add{i}", lambda i=i, p=p: a.cni(
            "ADD", a.conf(), f"par-{i}", p.path))))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(rc == 0 for rc, _ in out.values()), out
    links = a.links()
    assert links[f"vxlan{VNI}"]["master"] == f"vxbr{VNI}"
    assert len([n for n, l in links.items() if l.get("master") == f"vxbr{VNI}"]) == 4
    pb = make_netns("pparb")
    rb = b.add(pb, "par-b")
    for p in pods:
        r = p.run("ping", "-c", "1", "-W", "2", pod_ip(rb), check=False)
        assert r.returncode == 0, r.stdout + r.stderr


def test_del_with_a_config_that_no_longer_validates(nodes, make_netns):
    a, _ = nodes
    p = make_netns("pedit")
    r = a.add(p, "ctr-edit")
    rc, err = a.cni("DEL", a.conf(mtu=70000), "ctr-edit", p.path)
    assert rc == 0, err
    assert not [n for n, l in a.links().items() if l.get("master") == f"vxbr{VNI}"
                and n != f"vxlan{VNI}"]
    assert pod_ip(r) not in os.listdir(os.path.join(a.data_dir, "overlay"))
    rc, err = a.cni("DEL", a.conf(), "ctr-edit", p.path)     # the next good DEL tidies up
    assert rc == 0, err
    assert set(a.links()) == {"lo", "ul0"}


def test_gc_keeps_going_past_a_netlink_error(nodes, make_netns, monkeypatch):
    """pyroute2's NetlinkError is no OSError: it used to escape GC's keep-going loop at
    the first step (stale ports), skipping the IPAM GC and the shared device."""
    import errno as errno_mod
    import pyroute2
    from pyroute2.netlink.exceptions import NetlinkError
    a, _ = nodes
    p = make_netns("pnl")
    r = a.add(p, "ctr-nl")
    real = pyroute2.IPRoute

    class FailingDumps:
        """pyroute2's IPRoute, except that a full link dump fails as the kernel would."""
        def __init__(self, *args, **kw):
            self.ipr = real(*args, **kw)

        def get_links(self, *args, **kw):
            if not args and not kw:       # gc_ports' and the bridge's port listing
                raise NetlinkError(errno_mod.EBUSY, "injected")
            return self.ipr.get_links(*args, **kw)

        def __getattr__(self, name):
            return getattr(self.ipr, name)
    monkeypatch.setattr(pyroute2, "IPRoute", FailingDumps)
    rc, err = a.cni("GC", dict(a.conf(), **{"cni.dev/valid-attachments": []}))
    monkeypatch.undo()
    assert rc == 1 and err["code"] == 5, err                  # I/O failure, not internal
    assert "stale ports" in err["details"] and "shared device" in err["details"], err
    assert "Device or resource busy" in err["details"], err
    # the step after the failing one still ran: the stale address is released
    assert pod_ip(r) not in os.listdir(os.path.join(a.data_dir, "overlay"))
    rc, err = a.cni("GC", dict(a.conf(), **{"cni.dev/valid-attachments": []}))
    assert rc == 0, err
    assert set(a.links()) == {"lo", "ul0"}


def _reserved(node) -> list[str]:
    d = os.path.join(node.data_dir, "overlay")
    return [f for f in os.listdir(d) if f.startswith("10.")] if os.path.isdir(d) else []


def test_ipam_add_failing_after_it_reserved_is_released(nodes, make_netns, monkeypatch):
    """The IPAM release is registered before the IPAM ADD: an ADD that reserved an
    address and then failed leaves nothing reserved."""
    import ipam.host_local as hl
    a, _ = nodes
    p = make_netns("pipam")

    def broken(*args, **kw):
        raise RuntimeError("injected failure after the reservation")
    monkeypatch.setattr(hl, "IPConfig", broken)
    rc, err = a.cni("ADD", a.conf(), "ctr-ipam", p.path)
    assert rc == 1 and "injected failure after the reservation" in err["msg"], err
    assert _reserved(a) == []
    assert set(a.links()) == {"lo", "ul0"}


def test_failing_undo_step_keeps_the_original_error(nodes, make_netns, monkeypatch):
    """A failure after IPAM rolls back; an undo step that fails (after doing its work)
    is logged, the others still run, and the runtime sees the original error."""
    from plugins import vxlan
    from plugins.core.errors import IO_FAILURE, CNIError
    from plugins.net import attach
    a, _ = nodes
    p = make_netns("pundo")

    def after_ipam(*args, **kw):
        raise CNIError(IO_FAILURE, "injected after IPAM", "the original")
    real_remove = vxlan._remove_shared_if_unused

    def remove_then_fail(conf):
        real_remove(conf)
        raise RuntimeError("undo step broke")
    monkeypatch.setattr(attach, "configure_pod", after_ipam)
    monkeypatch.setattr(vxlan, "_remove_shared_if_unused", remove_then_fail)
    rc, err = a.cni("ADD", a.conf(), "ctr-undo", p.path)
    assert rc == 1 and (err["code"], err["msg"], err.get("details")) == \
        (IO_FAILURE, "injected after IPAM", "the original"), err
    assert _reserved(a) == []                            # the step after the broken one ran
    assert set(a.links()) == {"lo", "ul0"}
    assert [l for l in json.loads(p.run("ip", "-j", "link", "show").stdout)
            if l["ifname"] != "lo"] == []


def test_node_lock_held_elsewhere_is_try_again_later(nodes, make_netns):
    """A holder that hangs must not hang every later call: after lockTimeout seconds
    ADD fails with code 11 naming the lock file, and rolls back (address released)."""
    import fcntl
    a, _ = nodes
    p = make_netns("plock")
    path = os.path.join(os.environ["CNILAB_RUN_DIR"], f"vxlan-vxbr{VNI}.lock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        rc, err = a.cni("ADD", a.conf(lockTimeout=1), "ctr-lock", p.path)
    finally:
        os.close(fd)
    assert rc == 1 and err["code"] == 11 and path in err["msg"], err
    assert "lockTimeout" in err["details"], err
    assert _reserved(a) == [] and set(a.links()) == {"lo", "ul0"}
    a.add(p, "ctr-lock", lockTimeout=1)                # free again: works
    rc, err = a.cni("DEL", a.conf(), "ctr-lock", p.path)
    assert rc == 0, err

