"""netlab `ipam: dhcp` networks: schema, plan (server + daemon per node), and
a lab whose DHCP leases match the pods' addresses and vanish with `down`."""
from __future__ import annotations

import json
import os

import pytest

from netlab.lab import plan as P
from netlab.lab import topology as T
from tests.conftest import unique_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = """
name: d
underlay: {subnet: 192.168.61.0/24}
nodes: {n1: {}, n2: {}}
networks:
  net: {type: %s, ipam: dhcp, subnet: 10.247.0.0/16, nodePrefix: 24%s}
pods:
  a: {node: n1, network: net%s}
"""


def topo(ntype="bridge", extra="", pod_extra="") -> T.Topology:
    return T.loads(BASE % (ntype, extra, pod_extra))


def test_dhcp_needs_a_bridge_network():
    with pytest.raises(T.TopologyError) as e:
        topo("overlay", ", vni: 5")
    assert "ipam dhcp needs a bridge network" in str(e.value)


def test_unknown_ipam_and_static_pod_ip_are_rejected():
    with pytest.raises(T.TopologyError) as e:
        T.loads((BASE % ("bridge", "", "")).replace("ipam: dhcp", "ipam: static"))
    assert "must be one of host-local, dhcp" in str(e.value)
    with pytest.raises(T.TopologyError) as e:
        topo(pod_extra=", ip: 10.247.0.10")
    assert "leases addresses by DHCP" in str(e.value)


def test_plan_runs_a_server_and_a_daemon_on_each_hosting_node(tmp_path):
    pl = P.make_plan(topo(), str(tmp_path))
    kinds = [s.kind for s in pl.steps]
    assert kinds.count("dhcp_server") == 1 and kinds.count("dhcp_daemon") == 1   # only n1 hosts pods
    srv = next(s for s in pl.steps if s.kind == "dhcp_server").params
    assert "--port=0" in srv["argv"] and "--no-resolv" in srv["argv"]
    assert "--dhcp-range=10.247.0.2,10.247.0.253,255.255.255.0,2m" in srv["argv"]
    assert "--dhcp-option=3,10.247.0.1" in srv["argv"]
    assert all(a.split("=", 1)[1].startswith(str(tmp_path)) for a in srv["argv"]
               if a.startswith(("--dhcp-leasefile=", "--pid-file=", "--log-facility=")))
    # the bridge with the gateway exists before the server, the server before the daemon and pods
    assert kinds.index("bridge", 2) < kinds.index("dhcp_server") < kinds.index("dhcp_daemon") < kinds.index("attach")
    att = next(s for s in pl.steps if s.kind == "attach").params["conflist"]
    assert att["plugins"][0]["ipam"] == {"type": "dhcp", "daemonSocketPath":
                                         os.path.join(str(tmp_path), "dhcp-net-n1.sock")}


def running(pid: int) -> bool:
    """Alive and not a zombie (a stopped process waits for its reaper, not for us)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.root
@pytest.mark.slow
def test_lab_leases_match_pod_addresses_and_down_stops_the_processes(tmp_path):
    import netlab as nl
    name = unique_name("t").replace("_", "-")[:20].lower().strip("-")
    lab_dir = str(tmp_path / "lab")
    pids: list[int] = []
    with nl.Lab(os.path.join(REPO, "topologies/dhcp.yaml"), name=name, lab_dir=lab_dir) as lab:
        procs = [r for r in lab.st.find("process") if r.get("name") in ("dnsmasq-dhcp", "dhcp daemon")]
        assert sorted(r["name"] for r in procs) == ["dhcp daemon"] * 2 + ["dnsmasq-dhcp"] * 2
        pids = [int(r["pid"]) for r in procs]
        assert all(running(p) for p in pids)
        leased = set()
        for node in ("node1", "node2"):
            with open(os.path.join(lab_dir, f"dhcp-podnet-{node}.leases")) as fh:
                leased |= {ln.split()[2] for ln in fh if ln.strip()}
        addrs = {}
        for pod in ("a1", "a2", "b1"):
            out = lab.exec(pod, ["ip", "-4", "-j", "addr", "show", "eth0"], check=True)
            addrs[pod] = json.loads(out.stdout)[0]["addr_info"][0]["local"]
            assert lab.address(pod) == addrs[pod]
        assert set(addrs.values()) == leased, (addrs, leased)
    assert not os.path.exists(lab_dir)
    assert not [p for p in pids if running(p)]
