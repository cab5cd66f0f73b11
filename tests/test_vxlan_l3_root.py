"""vxlan mode l3 (flannel-style) between two throwaway node namespaces.

Node A (10.211.0.1) and node B (10.211.0.2) share a veth underlay "ul0". Each
node owns a pod subnet (A 10.221.0.0/26, B 10.221.0.64/26); both run the
plugin with the same ``peers`` list. Pods reach across; the underlay carries
only unicast VXLAN to the known VTEP (no ARP inside); CHECK sees a deleted FDB
entry; DEL of the last pod removes the VTEP, its bridge and every entry.
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
from plugins.core.errors import CHECK_FAILED, INVALID_NETWORK_CONFIG
from plugins.net.vxlan_l3 import vtep_mac

pytestmark = pytest.mark.root

VNI = 4343
DEV = f"vxlan{VNI}"
BR = f"vxbr{VNI}"
UL = {"A": "10.211.0.1", "B": "10.211.0.2"}
SUB = {"A": "10.221.0.0/26", "B": "10.221.0.64/26"}
GW = {"A": "10.221.0.1", "B": "10.221.0.65"}
PEERS = [{"ip": UL[k], "subnet": SUB[k]} for k in ("A", "B")]


class Node:
    def __init__(self, ns, key: str, data_dir: str) -> None:
        self.ns, self.key, self.data_dir = ns, key, data_dir

    def conf(self, **kw) -> dict:
        c = {"cniVersion": "1.1.0", "name": "l3net", "type": "vxlan", "vni": VNI,
             "mode": "l3", "peers": PEERS, "isDefaultGateway": True,
             "ipam": {"type": "host-local", "dataDir": self.data_dir,
                      "ranges": [[{"subnet": SUB[self.key], "gateway": GW[self.key]}]]}}
        c.update(kw)
        return c

    def cni(self, command: str, conf: dict, cid: str, netns: str = "") -> tuple[int, dict | None]:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
               "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
        env = {k: v for k, v in env.items() if v}
        with nsmod.entered(self.ns.path):
            out, rc = skel.dispatch("vxlan", env, json.dumps(conf).encode())
        return rc, (json.loads(out) if out else None)

    def j(self, *argv: str) -> list:
        return json.loads(self.ns.run(*argv).stdout or "[]")

    def links(self) -> set[str]:
        return {ln["ifname"] for ln in self.j("ip", "-j", "link", "show")}


@pytest.fixture
def nodes(make_netns, tmp_path):
    a, b = make_netns("l3a"), make_netns("l3b")
    a.wire(b, "ul0", addrs=(f"{UL['A']}/24",), peer_addrs=(f"{UL['B']}/24",))
    return Node(a, "A", str(tmp_path / "ipam-a")), Node(b, "B", str(tmp_path / "ipam-b"))


SNIFFER = r"""
import json, sys
from scapy.all import AsyncSniffer, ARP, ICMP, IP, UDP
from scapy.layers.vxlan import VXLAN
s = AsyncSniffer(iface="ul0", store=True, lfilter=lambda p: UDP in p and p[UDP].dport == 4789,
                 started_callback=lambda: print("ready", flush=True))
s.start()
sys.stdin.readline()
s.stop()
out = []
for p in s.results or []:
    if VXLAN in p:
        inner = p[VXLAN].payload
        out.append({"outer_dst": p[IP].dst, "vni": p[VXLAN].vni, "dst_mac": inner.dst,
                    "arp": ARP in inner, "icmp": ICMP in inner})
print(json.dumps(out), flush=True)
"""


def sniff(ns, action) -> list[dict]:
    p = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", SNIFFER],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        action()
        time.sleep(0.2)
        out, err = p.communicate("stop\n", timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_l3_pods_reach_across_check_and_del(nodes, make_netns):
    a, b = nodes
    pa, pb = make_netns("l3pa"), make_netns("l3pb")
    rc, ra = a.cni("ADD", a.conf(), "ctr-a", pa.path)
    assert rc == 0, ra
    rc, rb = b.cni("ADD", b.conf(), "ctr-b", pb.path)
    assert rc == 0, rb
    ipa, ipb = (r["ips"][0]["address"] for r in (ra, rb))
    assert ipa == "10.221.0.2/26" and ipb == "10.221.0.66/26"

    # The routed VTEP: no bridge port, the VTEP address and MAC, learning off.
    dev = a.j("ip", "-j", "-d", "addr", "show", DEV)[0]
    assert "master" not in dev and dev["address"] == vtep_mac(VNI, UL["A"])
    assert [f"{x['local']}/{x['prefixlen']}" for x in dev["addr_info"] if x["family"] == "inet"] \
        == ["10.221.0.0/32"]
    assert dev["linkinfo"]["info_data"]["learning"] is False
    # Per remote node: route (onlink via the remote VTEP), permanent neighbour, FDB entry.
    routes = a.j("ip", "-j", "route", "show", "dev", DEV)
    assert [(r["dst"], r["gateway"], "onlink" in r["flags"]) for r in routes] == \
        [("10.221.0.64/26", "10.221.0.64", True)]
    neigh = a.j("ip", "-j", "neigh", "show", "dev", DEV)
    assert [(n["dst"], n["lladdr"], n["state"]) for n in neigh] == \
        [("10.221.0.64", vtep_mac(VNI, UL["B"]), ["PERMANENT"])]
    fdb = [e for e in a.j("bridge", "-j", "fdb", "show", "dev", DEV) if "dst" in e]
    assert [(e["mac"], e["dst"]) for e in fdb] == [(vtep_mac(VNI, UL["B"]), UL["B"])]
    assert not [e for e in fdb if e["mac"] == "00:00:00:00:00:00"]       # nothing floods

    # Pods reach across; the underlay carries only unicast VXLAN to the known VTEP.
    def pings():
        for src, dst in ((pa, ipb), (pb, ipa)):
            pr = src.run("ping", "-c", "2", "-i", "0.2", "-W", "2", dst.split("/")[0], check=False)
            assert pr.returncode == 0, pr.stdout + pr.stderr
    pa.run("ip", "neigh", "flush", "dev", "eth0")
    pkts = sniff(a.ns, pings)
    icmp = [p for p in pkts if p["icmp"]]
    assert len(icmp) >= 8, pkts
    assert not [p for p in pkts if p["arp"]], pkts
    assert {p["dst_mac"] for p in pkts if p["outer_dst"] == UL["B"]} == {vtep_mac(VNI, UL["B"])}
    assert {p["vni"] for p in pkts} == {VNI}
    # The node reaches the remote pod too (source: its own VTEP address).
    assert a.ns.run("ping", "-c", "1", "-W", "2", ipb.split("/")[0], check=False).returncode == 0

    # CHECK passes, then sees a deleted FDB entry, a deleted route.
    conf_a = dict(a.conf(), prevResult=ra)
    rc, err = a.cni("CHECK", conf_a, "ctr-a", pa.path)
    assert rc == 0, err
    a.ns.run("bridge", "fdb", "del", vtep_mac(VNI, UL["B"]), "dev", DEV, "dst", UL["B"])
    rc, err = a.cni("CHECK", conf_a, "ctr-a", pa.path)
    assert rc == 1 and err["code"] == CHECK_FAILED, err
    assert f"FDB entry missing: {vtep_mac(VNI, UL['B'])} dst {UL['B']}" in err["details"], err
    assert pa.run("ping", "-c", "1", "-W", "1", ipb.split("/")[0], check=False).returncode != 0

    # The next ADD converges (like the L2 mode's FDB sync); a route deleted by hand is seen.
    pa2 = make_netns("l3pa2")
    rc, ra2 = a.cni("ADD", a.conf(), "ctr-a2", pa2.path)
    assert rc == 0, ra2
    rc, err = a.cni("CHECK", conf_a, "ctr-a", pa.path)
    assert rc == 0, err
    a.ns.run("ip", "route", "del", "10.221.0.64/26", "dev", DEV)
    rc, err = a.cni("CHECK", conf_a, "ctr-a", pa.path)
    assert rc == 1 and "route missing: 10.221.0.64/26 via 10.221.0.64" in err["details"], err

    # A peer leaves the config: its entries go at the next ADD, not the other way round.
    pa3 = make_netns("l3pa3")
    rc, r3 = a.cni("ADD", a.conf(peers=PEERS[:1], underlayInterface="ul0"), "ctr-a3", pa3.path)
    assert rc == 0, r3
    assert a.j("ip", "-j", "route", "show", "dev", DEV) == []
    assert a.j("ip", "-j", "neigh", "show", "dev", DEV) == []

    # DEL: idempotent; the VTEP and bridge stay while a pod uses them, then go.
    for cid, p in (("ctr-a2", pa2), ("ctr-a3", pa3), ("ctr-a3", pa3)):
        rc, err = a.cni("DEL", a.conf(), cid, p.path)
        assert rc == 0, err
        assert {DEV, BR} <= a.links()
    rc, err = a.cni("DEL", a.conf(), "ctr-a", pa.path)
    assert rc == 0, err
    assert a.links() == {"lo", "ul0"}
    assert a.j("ip", "-j", "route", "show", "table", "main") == \
        [r for r in a.j("ip", "-j", "route", "show", "table", "main") if r.get("dev") == "ul0"]
    rc, err = a.cni("DEL", a.conf(), "ctr-a", "")
    assert rc == 0, err


def test_l3_bad_config_and_failed_add_change_nothing(nodes, make_netns):
    a, _ = nodes
    pod = make_netns("l3bad")
    before = a.links()
    cases = [
        (dict(peers=["10.211.0.1", "10.211.0.2"]), "peers[0] must be a JSON object"),
        (dict(peers=[{"ip": UL["A"], "subnet": "10.221.0.1/26"}]), "peers[0].subnet"),
        (dict(peers=[PEERS[0], {"ip": UL["B"], "subnet": "10.221.0.32/27"}]),
         "peers[1].subnet overlaps peers[0].subnet"),
        (dict(peers=[PEERS[1]]), "peers has no entry for this node"),
        (dict(group="239.1.1.1"), "group is not used in mode l3"),
        (dict(mode="l4"), "mode must be l2"),
        (dict(isGateway=False, isDefaultGateway=False), "isGateway must be true in mode l3"),
        # IPAM hands out from the whole /24: the pod would sit on-link with other nodes' pods
        (dict(ipam={"type": "host-local", "dataDir": a.data_dir,
                    "ranges": [[{"subnet": "10.221.0.0/24"}]]}), "outside this node's subnet"),
    ]
    for kw, msg in cases:
        rc, err = a.cni("ADD", a.conf(**kw), "ctr-bad", pod.path)
        assert rc == 1 and err["code"] == INVALID_NETWORK_CONFIG and msg in err["msg"], (kw, err)
        assert a.links() == before, kw
        assert [x["ifname"] for x in json.loads(pod.run("ip", "-j", "link").stdout)] == ["lo"]
    # the reservation of the failed ADD (the last case got 10.221.0.2/24) was rolled back
    store = os.path.join(a.data_dir, "l3net")
    assert not [f for f in (os.listdir(store) if os.path.isdir(store) else []) if f[0].isdigit()]
    rc, res = a.cni("ADD", a.conf(), "ctr-ok", pod.path)
    assert rc == 0 and res["ips"][0]["address"].endswith("/26"), res


def test_mode_switch_on_a_live_device_is_refused(nodes, make_netns):
    """An L2 device with pods on it is never turned into an L3 one behind their back."""
    a, _ = nodes
    p1, p2 = make_netns("l3sw1"), make_netns("l3sw2")
    l2 = {"cniVersion": "1.1.0", "name": "l3net", "type": "vxlan", "vni": VNI,
          "peers": list(UL.values()),
          "ipam": {"type": "host-local", "dataDir": a.data_dir,
                   "ranges": [[{"subnet": SUB["A"]}]]}}
    rc, res = a.cni("ADD", l2, "ctr-l2", p1.path)
    assert rc == 0, res
    rc, err = a.cni("ADD", a.conf(), "ctr-l3", p2.path)
    assert rc == 1 and err["code"] == INVALID_NETWORK_CONFIG, err
    assert "made for mode l2" in err["details"], err
    rc, err = a.cni("DEL", l2, "ctr-l2", p1.path)
    assert rc == 0 and a.links() == {"lo", "ul0"}, err


def test_l3_gc_and_status(nodes, make_netns):
    a, _ = nodes
    p1, p2 = make_netns("l3gc1"), make_netns("l3gc2")
    for cid, p in (("ctr-1", p1), ("ctr-2", p2)):
        rc, res = a.cni("ADD", a.conf(), cid, p.path)
        assert rc == 0, res
    rc, err = a.cni("STATUS", a.conf(), "")
    assert rc == 0, err
    gc = dict(a.conf(), **{"cni.dev/valid-attachments": [{"containerID": "ctr-2", "ifname": "eth0"}]})
    rc, err = a.cni("GC", gc, "")
    assert rc == 0, err
    assert [x["ifname"] for x in json.loads(p1.run("ip", "-j", "link").stdout)] == ["lo"]
    assert len(a.j("ip", "-j", "link", "show", "master", BR)) == 1       # ctr-2's port only
    assert {DEV, BR} <= a.links()
    rc, err = a.cni("GC", dict(a.conf(), **{"cni.dev/valid-attachments": []}), "")
    assert rc == 0, err
    assert a.links() == {"lo", "ul0"}


@pytest.mark.parametrize("underlay", ["ipv4", "ipv6"])
def test_l3_ipv6_pod_subnets(underlay, make_netns, tmp_path):
    """IPv6 pods over an IPv4 or IPv6 underlay: the VTEP address is the /64's network
    address, the neighbour entries are ND entries, the FDB points at the underlay."""
    a, b = make_netns("l36a"), make_netns("l36b")
    ul = UL if underlay == "ipv4" else {"A": "fd99::1", "B": "fd99::2"}
    plen = 24 if underlay == "ipv4" else 64
    a.wire(b, "ul0", addrs=(f"{ul['A']}/{plen}",), peer_addrs=(f"{ul['B']}/{plen}",))
    sub = {"A": "fd10:0:0:1::/64", "B": "fd10:0:0:2::/64"}
    peers = [{"ip": ul[k], "subnet": sub[k]} for k in ("A", "B")]
    ips = {}
    for ns, key in ((a, "A"), (b, "B")):
        node = Node(ns, key, str(tmp_path / f"ipam-{key}"))
        conf = node.conf(peers=peers, ipam={
            "type": "host-local", "dataDir": node.data_dir,
            "ranges": [[{"subnet": sub[key]}]]})
        pod = make_netns(f"l36p{key.lower()}")
        rc, res = node.cni("ADD", conf, f"ctr-{key}", pod.path)
        assert rc == 0, res
        ips[key] = (pod, res["ips"][0]["address"].split("/")[0])
    fdb = json.loads(a.run("bridge", "-j", "fdb", "show", "dev", DEV).stdout)
    assert [(e["mac"], e["dst"]) for e in fdb if "dst" in e] == [(vtep_mac(VNI, ul["B"]), ul["B"])]
    routes = json.loads(a.run("ip", "-j", "-6", "route", "show", "dev", DEV).stdout)
    assert ("fd10:0:0:2::/64", "fd10:0:0:2::") in [(r["dst"], r.get("gateway")) for r in routes]
    pod_a = ips["A"][0]
    # one answer within 10 s (the first one waits for ND on both sides, slow on a busy machine)
    pr = pod_a.run("ping", "-6", "-c", "1", "-w", "10", ips["B"][1], check=False)
    assert pr.returncode == 0, pr.stdout + pr.stderr + a.run("ip", "-6", "neigh").stdout


def test_l3_failed_add_removes_the_vtep_it_created(nodes, make_netns, monkeypatch):
    """A failure after the VTEP, its address, routes, neighbours and FDB were made
    (here: configuring the pod) rolls all of it back, and the address is released."""
    a, _ = nodes
    pod = make_netns("l3rb")
    from plugins.net import attach

    def broken(*args, **kw):
        raise OSError(5, "injected failure configuring the pod")
    monkeypatch.setattr(attach, "configure_pod", broken)
    rc, err = a.cni("ADD", a.conf(), "ctr-rb", pod.path)
    monkeypatch.undo()
    assert rc == 1 and "injected failure" in json.dumps(err), err
    assert a.links() == {"lo", "ul0"}
    assert [x["ifname"] for x in json.loads(pod.run("ip", "-j", "link").stdout)] == ["lo"]
    store = os.path.join(a.data_dir, "l3net")
    assert not [f for f in (os.listdir(store) if os.path.isdir(store) else []) if f[0].isdigit()]
    rc, res = a.cni("ADD", a.conf(), "ctr-rb", pod.path)        # and the retry works
    assert rc == 0, res
