"""dhcp IPAM: bridge + our dhcp plugin + our daemon against dnsmasq, the
reference plugin + daemon on the same segment, release on DEL, bad input."""
from __future__ import annotations

import ipaddress
import os

import pytest

from tests.bridge_lab import call, conf, pod_links, node_veths, ping, routes
from tests.dhcp_lab import RANGE, SERVER, SUBNET_GW, Segment, wait_for

REF = "/usr/lib/cni/dhcp"
pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def seg(make_netns, tmp_path):
    s = Segment(make_netns("node"), make_netns("dsrv"), str(tmp_path))
    try:
        yield s
    finally:
        s.stop()


def dhcp_conf(sock: str, version: str = "1.0.0") -> dict:
    return conf("", version, name="dhcpnet", ipam={"type": "dhcp", "daemonSocketPath": sock})


def in_range(addr: str) -> bool:
    ip = ipaddress.ip_interface(addr)
    return (ip.network.prefixlen == 24 and
            ipaddress.ip_address(RANGE[0]) <= ip.ip <= ipaddress.ip_address(RANGE[1]))


def shape(result: dict) -> dict:
    """The result with leased addresses abstracted: what must match the reference."""
    return {"ips": [{k: (v if k != "address" else in_range(v)) for k, v in ip.items()
                     if k != "interface"} | {"interface": "interface" in ip}
                    for ip in result.get("ips", [])],
            "routes": result.get("routes"), "dns": result.get("dns")}


def test_pod_gets_lease_and_release_on_del(seg, make_netns, installed_plugins):
    seg.start_dnsmasq()
    sock = seg.start_daemon(os.path.join(installed_plugins, "dhcp"))
    pod = make_netns("pod")
    c = dhcp_conf(sock)
    rc, res = call(seg.node, "ADD", c, netns=pod.path, path=installed_plugins)
    assert rc == 0, res
    addr = res["ips"][0]["address"]
    assert in_range(addr) and res["ips"][0]["gateway"] == SUBNET_GW
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": SUBNET_GW}]
    ip = addr.split("/")[0]
    assert ip in seg.leased()
    assert ping(pod, SERVER)
    assert any(r.get("dst") == "default" and r.get("gateway") == SUBNET_GW for r in routes(pod))
    # a second ADD for the same (container, ifname) is the same lease; CHECK passes
    rc, again = call(seg.node, "CHECK", c, netns=pod.path, path=installed_plugins, prev=res)
    assert rc == 0, again
    rc, out = call(seg.node, "DEL", c, netns=pod.path, path=installed_plugins)
    assert rc == 0, out
    wait_for(lambda: ip not in seg.leased(), f"dnsmasq to drop the lease of {ip}")
    assert "DHCPRELEASE" in open(os.path.join(seg.tmp, "dnsmasq.log")).read()
    # bridge deleted the pod's veth before IPAM DEL: the release went from the node
    assert "sending it from the daemon's namespace" in seg.daemon_log(1)
    assert "not sent" not in seg.daemon_log(1)
    # DEL again: idempotent
    rc, out = call(seg.node, "DEL", c, netns=pod.path, path=installed_plugins)
    assert rc == 0, out


@pytest.mark.skipif(not os.access(REF, os.X_OK), reason="reference dhcp plugin not installed")
def test_same_result_format_as_reference(seg, make_netns, installed_plugins):
    seg.start_dnsmasq()
    ours = seg.start_daemon(os.path.join(installed_plugins, "dhcp"))
    theirs = seg.start_daemon(REF)
    got = {}
    for who, sock, path, cid in (("ours", ours, installed_plugins, "c-ours"),
                                 ("ref", theirs, "/usr/lib/cni", "c-ref")):
        pod = make_netns("pod")
        rc, res = call(seg.node, "ADD", dhcp_conf(sock), netns=pod.path, path=path, cid=cid)
        assert rc == 0, (who, res)
        got[who] = res
        assert ping(pod, SERVER), who
        rc, out = call(seg.node, "DEL", dhcp_conf(sock), netns=pod.path, path=path, cid=cid)
        assert rc == 0, (who, out)
    assert shape(got["ours"]) == shape(got["ref"]), got


def test_no_daemon_is_a_clear_error_and_leaves_nothing(seg, make_netns, installed_plugins):
    pod = make_netns("pod")
    before = node_veths(seg.node)
    rc, err = call(seg.node, "ADD", dhcp_conf(os.path.join(seg.tmp, "absent.sock")),
                   netns=pod.path, path=installed_plugins)
    assert rc != 0 and err["code"] == 11, err
    assert "cannot reach the dhcp daemon" in err["msg"]
    assert node_veths(seg.node) == before and pod_links(pod) == set()


def test_silent_server_times_out_and_rolls_back(seg, make_netns, installed_plugins):
    seg.start_dnsmasq(silent=True)
    sock = seg.start_daemon(os.path.join(installed_plugins, "dhcp"), timeout="2s")
    pod = make_netns("pod")
    before = node_veths(seg.node)
    rc, err = call(seg.node, "ADD", dhcp_conf(sock), netns=pod.path, path=installed_plugins)
    assert rc != 0 and err["code"] == 5, err
    assert "no DHCP OFFER" in err["msg"] and "within 2s" in err["msg"], err
    assert node_veths(seg.node) == before and pod_links(pod) == set()
    assert seg.leased() == set()


def test_lease_is_renewed_unicast(seg, make_netns, installed_plugins):
    # dnsmasq's shortest lease is 2 min; the server sets T1 (option 58) to 5 s, as a
    # server may, and the daemon must renew when the server says, not at lease/2
    seg.start_dnsmasq(extra=("--dhcp-option=option:T1,5", "--dhcp-option=option:T2,100"))
    sock = seg.start_daemon(os.path.join(installed_plugins, "dhcp"))
    pod = make_netns("pod")
    c = dhcp_conf(sock)
    rc, res = call(seg.node, "ADD", c, netns=pod.path, path=installed_plugins)
    assert rc == 0, res
    addr = res["ips"][0]["address"]
    wait_for(lambda: f"renewed {addr}" in seg.daemon_log(1), "a renewal at T1", tries=1200)
    log = open(os.path.join(seg.tmp, "dnsmasq.log")).read()
    assert f"DHCPREQUEST(d0) {addr.split('/')[0]}" in log and "DHCPACK" in log
    rc, out = call(seg.node, "DEL", c, netns=pod.path, path=installed_plugins)
    assert rc == 0, out


def test_status_needs_the_daemon_and_gc_is_a_no_op(seg, installed_plugins):
    import json
    import subprocess
    exe = os.path.join(installed_plugins, "dhcp")

    def run(cmd: str, sock: str) -> subprocess.CompletedProcess:
        conf = dict(dhcp_conf(sock, "1.1.0"), validAttachments=[])
        return subprocess.run([exe], input=json.dumps(conf), capture_output=True, text=True,
                              env={"CNI_COMMAND": cmd, "CNI_PATH": installed_plugins,
                                   "CNILAB_AGENT": "off"}, timeout=30)
    absent = os.path.join(seg.tmp, "absent.sock")
    p = run("STATUS", absent)
    assert p.returncode != 0 and json.loads(p.stdout)["code"] == 50, p.stdout
    sock = seg.start_daemon(exe)
    assert run("STATUS", sock).returncode == 0
    assert run("GC", sock).returncode == 0


def test_release_from_the_pod_while_its_interface_exists(seg, make_netns, installed_plugins):
    import json
    import subprocess
    seg.start_dnsmasq()
    exe = os.path.join(installed_plugins, "dhcp")
    sock = seg.start_daemon(exe)
    pod = make_netns("pod")
    c = dhcp_conf(sock)
    rc, res = call(seg.node, "ADD", c, netns=pod.path, path=installed_plugins)
    assert rc == 0, res
    ip = res["ips"][0]["address"].split("/")[0]
    # IPAM DEL alone (as a runtime that releases before deleting the link would)
    p = subprocess.run([exe], input=json.dumps(c), capture_output=True, text=True, timeout=30,
                       env={"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0",
                            "CNI_NETNS": pod.path, "CNI_PATH": installed_plugins,
                            "CNILAB_AGENT": "off"})
    assert p.returncode == 0, p.stdout
    wait_for(lambda: ip not in seg.leased(), f"dnsmasq to drop the lease of {ip}")
    assert "released" in seg.daemon_log(1) and "from the container failed" not in seg.daemon_log(1)
    rc, out = call(seg.node, "DEL", c, netns=pod.path, path=installed_plugins)
    assert rc == 0, out
