"""Root tests: netlab capture, trace, graph and `cni log` on a real lab
(topologies/default.yaml: two nodes, a bridge network, a VXLAN overlay with
VNI 42, a host port). One lab for the whole module, always torn down.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import unique_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = [pytest.mark.root, pytest.mark.slow]


def netlab(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netlab", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    name = unique_name("d").replace("_", "-")[:20].lower().strip("-")
    lab_dir = str(tmp_path_factory.mktemp("debuglab") / "lab")
    try:
        up = netlab("up", "topologies/default.yaml", "--name", name, "--lab-dir", lab_dir, "--no-checks", "-q")
        assert up.returncode == 0, up.stderr[-3000:]
        yield {"name": name, "dir": lab_dir, "opts": ["--lab-dir", lab_dir]}
    finally:
        d = netlab("down", "--lab-dir", lab_dir)
        assert d.returncode == 0, d.stderr
        assert not [n for n in os.listdir("/var/run/netns") if n.startswith(f"nl-{name}-")]


def _state(lab):
    with open(os.path.join(lab["dir"], "state.json")) as f:
        return json.load(f)


def _addr(lab, pod):
    for r in _state(lab)["resources"]:
        if r["kind"] == "attach" and r["pod"] == pod:
            return r["result"]["ips"][0]["address"].split("/")[0]
    raise KeyError(pod)


# --------------------------------------------------------------------------- capture

def test_capture_underlay_decodes_vxlan_live_and_writes_pcap(lab, tmp_path):
    pcap = str(tmp_path / "u.pcap")
    ov2 = _addr(lab, "ov2")
    for extra in ([], ["-w", pcap]):
        p = subprocess.Popen([sys.executable, "-m", "netlab", "capture", "underlay", "--filter", "udp port 4789",
                              "--timeout", "4", *extra, *lab["opts"]],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            line = p.stderr.readline()          # printed once the socket is listening
            assert line.startswith("capturing on underlay"), line
            ping = netlab("exec", *lab["opts"], "ov1", "--", "ping", "-c", "2", "-i", "0.2", "-W", "1", ov2)
            assert ping.returncode == 0, ping.stdout + ping.stderr
            out, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
        assert p.returncode == 0, err
        if not extra:
            # each frame once (incoming on a switch port), decoded through the encapsulation
            # (other overlay chatter, e.g. IGMP or IPv6 ND, may be there too)
            echo = [ln for ln in out.splitlines() if re.search(
                r" n[01] +in +VXLAN vni 42 192\.168\.100\.1[12] > 192\.168\.100\.1[12] .*\| "
                r"10\.250\.0\.\d+ > 10\.250\.0\.\d+ ICMP echo (request|reply)", ln)]
            assert len(echo) == 4, out      # 2 requests + 2 replies
        else:
            assert out == "" and "packet(s) captured, written to" in err
            from scapy.utils import rdpcap
            import scapy.layers.vxlan  # noqa: F401  (binds VXLAN to UDP 4789)
            pk = rdpcap(pcap)
            assert all(x.haslayer("VXLAN") and x["VXLAN"].vni == 42 for x in pk)
            assert len([x for x in pk if x.haslayer("ICMP") and x["ICMP"].type in (0, 8)]) == 4


def test_capture_pod_interface_and_bad_filter(lab):
    p = netlab("capture", "web", "--filter", "icmp and", "--timeout", "1", *lab["opts"])
    assert p.returncode == 2 and "bad capture filter" in p.stderr
    p = netlab("capture", "nosuchpod", "--timeout", "1", *lab["opts"])
    assert p.returncode == 2 and "unknown endpoint" in p.stderr
    # a pod: its eth0 by default; --timeout ends it; both directions shown
    web = _addr(lab, "web")
    c = subprocess.Popen([sys.executable, "-m", "netlab", "capture", "web", "-f", "icmp", "-t", "4", *lab["opts"]],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert c.stderr.readline().startswith("capturing on web (nl-")
    netlab("exec", *lab["opts"], "client", "--", "ping", "-c", "1", "-W", "1", web)
    out, _ = c.communicate(timeout=30)
    assert re.search(rf"eth0 +in +10\.244\.1\.10 > {web} ICMP echo request ttl 62", out), out
    assert re.search(rf"eth0 +out +{web} > 10\.244\.1\.10 ICMP echo reply ttl 64", out), out


# --------------------------------------------------------------------------- trace

def test_trace_overlay_shows_every_hop_and_the_encapsulation(lab):
    p = netlab("trace", "ov1", "ov2", "--json", *lab["opts"])
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(p.stdout)
    assert r["arrived"] and r["replied"]
    where = [(h["where"], h["iface"], h["direction"]) for h in r["hops"]]
    assert where[0] == ("pod ov1", "eth0", "out") and where[-1] == ("pod ov2", "eth0", "in")
    assert ("node node1", "vxlan42", "out") in where and ("node node2", "vxlan42", "in") in where
    sw = [w for w in where if w[0] == "underlay switch"]
    assert [w[2] for w in sw] == ["in", "out"]          # in on node1's port, out on node2's
    enc = [h for h in r["hops"] if any("encapsulated: VXLAN VNI 42 to VTEP 192.168.100.12" in c for c in h["changes"])]
    assert len(enc) == 1 and enc[0]["iface"] == "eth0" and enc[0]["size"] - 50 == r["hops"][0]["size"]
    assert any("decapsulated (VNI 42)" in c for h in r["hops"] for c in h["changes"])
    # the answer comes back the same way, reversed
    assert r["replies"][0]["where"] == "pod ov2" and r["replies"][-1]["where"] == "pod ov1"


def test_trace_host_port_shows_dnat_and_the_rule(lab):
    p = netlab("trace", "ext", "node1", "--proto", "tcp/8080", *lab["opts"])
    out = p.stdout
    assert "* DNAT: destination 192.168.100.11:8080 -> 10.244.0.10:80" in out, out
    assert re.search(r"cnilab-portmap hostports: tcp dport 8080 dnat to 10\.244\.0\.10:80", out), out
    assert "NAT undone: source 10.244.0.10:80 -> 192.168.100.11:8080" in out      # the answer
    assert "verdict: delivered to pod web and answered" in out


def test_trace_finds_a_deliberate_drop_and_names_hop_and_rule(lab):
    ns = f"nl-{lab['name']}-n-node1"
    table = f"cnilab-test-{os.getpid()}"
    rules = (f"table ip {table} {{ chain forwarding {{ type filter hook forward priority 0; "
             f"ip daddr 10.244.0.10 tcp dport 80 drop; }}; }}\n")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True)
    try:
        p = netlab("trace", "client", "web", "--proto", "tcp/80", *lab["opts"])
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "ip", table], check=True)
    out = p.stdout
    assert p.returncode == 1, out
    assert "verdict: lost after node node1 eth0 (received)" in out, out
    assert re.search(rf"cause: rule: ip {table} chain forwarding: ip daddr 10\.244\.0\.10 tcp dport 80 drop \(verdict drop\)", out), out
    # the probe never reached the pod; the nft trace names the rule in node1
    assert "pod web" not in out.split("verdict:")[0].split("forward path:")[1]
    # and after the rule is gone, the same trace goes through
    assert "delivered to pod web" in netlab("trace", "client", "web", "--proto", "tcp/80", *lab["opts"]).stdout
    assert subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"], capture_output=True,
                          text=True).stdout.count("cnilab-trace") == 0      # trace tables cleaned up


def test_trace_df_probe_bigger_than_the_pod_mtu(lab):
    p = netlab("trace", "ov1", "ov2", "--size", "1500", "--df", *lab["opts"])
    assert p.returncode == 1
    assert "not sent: the sender's kernel refused it" in p.stdout
    assert "MTU: the probe is 1500 bytes with DF, the route to 10.250.0.70 leaves eth0 (mtu 1450" in p.stdout


# --------------------------------------------------------------------------- cni log and graph

def test_cni_log_of_one_pod(lab):
    p = netlab("cni", "log", "web", "--brief", *lab["opts"])
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert [ln.split()[1:3] for ln in lines] == [["ADD", "bridge"], ["ADD", "portmap"], ["ADD", "bandwidth"]], p.stdout
    assert all("pod web" in ln and " ok " in ln and ln.rstrip().endswith("ms") for ln in lines)
    full = netlab("cni", "log", "web", *lab["opts"]).stdout
    for needle in ("CNI_COMMAND=ADD", "CNI_CONTAINERID=netlab-", "CNI_IFNAME=eth0", '"type": "bridge"',
                   '"prevResult"', '"portMappings"', "stdout", '"ips"'):
        assert needle in full, needle
    raw = [json.loads(x) for x in netlab("cni", "log", "--json", *lab["opts"]).stdout.splitlines()]
    assert {r["container_id"] for r in raw} >= {f"netlab-{lab['name']}-{p}" for p in ("web", "client", "ov1", "ov2")}
    assert all(r["exit_status"] == 0 and r["duration_ms"] > 0 for r in raw)
    assert netlab("cni", "log", "nosuch", *lab["opts"]).returncode == 2


def test_graph_formats(lab, tmp_path):
    dot = netlab("graph", "-T", "dot", *lab["opts"])
    assert dot.returncode == 0, dot.stderr
    d = dot.stdout
    for needle in ("VXLAN VNI 42", "local 192.168.100.11:4789", "10.244.0.10/24", "192.168.100.12/24",
                   "host ports: 8080/tcp->web:80", "pod ov2", "underlay switch", 'label="VNI 42"'):
        assert needle in d, needle
    mm = netlab("graph", "-T", "mermaid", *lab["opts"]).stdout
    assert mm.startswith("flowchart TB") and "VNI 42" in mm and "===" in mm
    svg = tmp_path / "lab.svg"
    assert netlab("graph", "-T", "svg", "-o", str(svg), *lab["opts"]).returncode == 0
    assert b"<svg" in svg.read_bytes()[:400]


def test_lab_veths_have_tx_checksum_offload_off(lab):
    """Captures show valid checksums only if the veths compute them in software."""
    pre = f"nl-{lab['name']}-"
    st = _state(lab)
    web = next(r for r in st["resources"] if r["kind"] == "attach" and r["pod"] == "web")
    host_veth = next(i["name"] for i in web["result"]["interfaces"] if not i.get("sandbox") and i["name"] != "cni0")
    for ns, dev in ((pre + "sw", "n0"), (pre + "n-node1", "eth0"), (pre + "n-node1", host_veth), (pre + "p-web", "eth0")):
        out = subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-k", dev], capture_output=True, text=True).stdout
        assert "tx-checksumming: off" in out, (ns, dev, out[:300])
    # and a captured TCP segment carries a correct checksum
    from scapy.layers.inet import TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import rdpcap
    t = netlab("trace", "client", "web", "--proto", "tcp/80", "--pcap-dir", os.path.join(lab["dir"], "cksum"), *lab["opts"])
    assert t.returncode == 0, t.stdout
    pk = [p for p in rdpcap(os.path.join(lab["dir"], "cksum", pre + "p-web.pcap")) if p.haslayer(TCP)]
    assert pk
    for p in pk:
        got = p[TCP].chksum
        again = Ether(bytes(p))
        del again["IP"].chksum
        del again[TCP].chksum
        assert Ether(bytes(again))[TCP].chksum == got


def test_trace_without_df_shows_the_fragments(lab):
    p = netlab("trace", "client", "web", "--size", "3000", *lab["opts"])
    assert p.returncode == 0, p.stdout
    assert "fragmented: this is the first of 3 fragments seen here (DF not set)" in p.stdout, p.stdout
    assert "verdict: delivered to pod web and answered" in p.stdout
