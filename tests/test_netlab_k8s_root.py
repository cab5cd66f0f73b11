"""Root tests: Services and NetworkPolicies in throwaway labs (their own
namespaces; never the root namespace). Each lab is brought up with
``netlab up`` (which runs its checks: each proven by captures), inspected,
and removed; a failing test still removes its lab."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from netlab.base import namespaces as nsutil
from netlab.checks.common import Server, client
from netlab.features import policy as P
from netlab.features import services as S
from tests.test_netlab_labs import REPO, lab_name, leftovers, netlab

pytestmark = [pytest.mark.root, pytest.mark.slow]

SVC_LAB = """
name: {name}
underlay: {{subnet: 192.168.132.0/24}}
nodes: {{node1: {{}}, node2: {{}}}}
networks: {{podnet: {{type: bridge, subnet: 10.232.0.0/16, nodePrefix: 24}}}}
dns: {{enabled: false}}
pods:
  web1: {{node: node1, network: podnet, labels: {{app: web}}, containerPorts: [{{name: http, containerPort: 8080}}]}}
  web2: {{node: node2, network: podnet, labels: {{app: web}}, containerPorts: [{{name: http, containerPort: 8080}}]}}
  client: {{node: node1, network: podnet}}
services:
  - {{name: web, clusterIP: 10.96.0.20, selector: {{app: web}}, ports: [{{port: 80, targetPort: http}}]}}
  - {{name: np, type: NodePort, selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080, nodePort: 30080}}]}}
  - {{name: sticky, clusterIP: 10.96.0.30, selector: {{app: web}}, sessionAffinity: ClientIP,
     sessionAffinityTimeout: 10, ports: [{{port: 80, targetPort: 8080}}]}}
checks:
  - {{type: service, from: client, service: web, name: spread}}
  - {{type: service, from: node2, service: np, via: node1, name: nodeport-from-node2}}
  - {{type: service, from: ext, service: np, via: node2, name: nodeport-from-ext}}
  - {{type: service, from: client, service: sticky, count: 10, expect: affinity, name: affinity}}
{extra}
"""


def _up(tmp_path, text: str):
    name = lab_name()
    lab_dir = str(tmp_path / "lab")
    path = tmp_path / "topo.yaml"
    path.write_text(text.format(name=name, extra=""))
    up = netlab("up", str(path), "--lab-dir", lab_dir, "--json", "-q")
    return name, lab_dir, up


def _report(up) -> dict:
    return {c["name"]: c for c in json.loads(up.stdout)["checks"]}


def _nft(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], capture_output=True, text=True).stdout


def test_services_spread_nodeport_affinity_and_expiry(tmp_path):
    name, lab_dir, up = _up(tmp_path, SVC_LAB)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-2000:]
        rep = _report(up)
        assert rep["spread"]["ok"] and "web1" in rep["spread"]["observed"] and "web2" in rep["spread"]["observed"]
        assert rep["nodeport-from-node2"]["ok"], rep["nodeport-from-node2"]
        assert rep["nodeport-from-ext"]["ok"], rep["nodeport-from-ext"]
        assert rep["affinity"]["ok"], rep["affinity"]
        # the affinity entry of the client is in node1's set, and it expires (timeout 10s)
        n1 = f"nl-{name}-n-node1"
        st = json.load(open(os.path.join(lab_dir, "state.json")))
        client = next(r for r in st["resources"] if r["kind"] == "attach" and r["pod"] == "client")
        client_ip = client["result"]["ips"][0]["address"].split("/")[0]
        sets = [ln for ln in _nft(n1, "list", "table", "ip", S.TABLE).splitlines() if "set affinity-default/sticky" in ln]
        assert len(sets) == 2

        def with_client() -> list[str]:
            out = []
            for s in sets:
                data = json.loads(_nft(n1, "-j", "list", "set", "ip", S.TABLE, s.split()[1]))["nftables"]
                elems = [o["set"].get("elem", []) for o in data if "set" in o][0]
                if any(f'"{client_ip}"' in json.dumps(e) for e in elems):
                    out.append(s.split()[1])
            return out
        assert len(with_client()) == 1
        deadline = time.monotonic() + 60
        while with_client() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert with_client() == [], "the affinity entry never expired"
        # an unserved port of a ClusterIP is rejected; an unallocated address of the serviceCIDR dropped
        probe = ("import socket,sys\ns=socket.socket(); s.settimeout(2)\n"
                 "try:\n s.connect((sys.argv[1], int(sys.argv[2]))); print('connected')\n"
                 "except OSError as e: print(type(e).__name__)")
        got = {}
        for addr, port in (("10.96.0.20", 81), ("10.96.0.99", 80)):
            r = netlab("exec", "--lab-dir", lab_dir, "client", "--", "python3", "-c", probe, addr, str(port))
            got[addr] = r.stdout.strip()
        assert got == {"10.96.0.20": "ConnectionRefusedError", "10.96.0.99": "TimeoutError"}, got
        listing = _nft(n1, "list", "chain", "ip", S.TABLE, "cluster-ips-check")
        for what in ("a cluster IP on a port it does not serve", "an unallocated address in the serviceCIDR"):
            line = next(ln for ln in listing.splitlines() if what in ln)
            assert "counter packets 0 " not in line, line
        g = netlab("graph", "--lab-dir", lab_dir, "--format", "mermaid")
        assert "Service default/web<br/>10.96.0.20:80/tcp" in g.stdout, g.stdout[-2000:]
        assert "NodePort 30080" in g.stdout
        assert len([ln for ln in g.stdout.splitlines() if ln.startswith("  svc_") and ".->" in ln]) == 6
        tables = [r for r in st["resources"] if r["kind"] == "nft_table"]
        assert {(r["ns"], r["table"]) for r in tables} == {(f"nl-{name}-n-{n}", S.TABLE) for n in ("node1", "node2")}
    finally:
        d = netlab("down", "--lab-dir", lab_dir)
    assert d.returncode == 0, d.stderr
    assert leftovers(name, lab_dir) == []


def test_services_follow_a_replaced_pod(tmp_path):
    extra = """scenario:
  symptom: none (resync test)
  faults:
    - replace: {pod: web2}
"""
    name = lab_name()
    lab_dir = str(tmp_path / "lab")
    path = tmp_path / "topo.yaml"
    path.write_text(SVC_LAB.format(name=name, extra=extra))
    up = netlab("up", str(path), "--lab-dir", lab_dir, "-q", "--no-checks")
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-2000:]
        st = json.load(open(os.path.join(lab_dir, "state.json")))
        web2 = next(r for r in st["resources"] if r["kind"] == "attach" and r["pod"] == "web2")
        new = web2["result"]["ips"][0]["address"].split("/")[0]
        assert web2["replaced"] == 1
        for n in ("node1", "node2"):
            text = _nft(f"nl-{name}-n-{n}", "list", "table", "ip", S.TABLE)
            assert f"dnat to {new}:8080" in text, text
            assert text.count("dnat to") == 6           # 3 Services x 2 endpoints: the old one is gone
        v = netlab("verify", "--lab-dir", lab_dir, "--json")
        assert v.returncode == 0, v.stdout[-3000:]
        assert f"{new}" in json.dumps(_report(v)["spread"])
    finally:
        d = netlab("down", "--lab-dir", lab_dir)
    assert d.returncode == 0, d.stderr
    assert leftovers(name, lab_dir) == []


def test_network_policy_every_selector_kind(tmp_path):
    name = lab_name()
    lab_dir = str(tmp_path / "lab")
    up = netlab("up", os.path.join(REPO, "topologies", "network-policy.yaml"), "--name", name,
                "--lab-dir", lab_dir, "--json", "-q")
    try:
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-2000:]
        rep = _report(up)
        kinds = {"podSelector": "api -> db:5432", "other namespace": "lookalike -> db",
                 "namespaceSelector AND podSelector": "tool -> db", "namespaceSelector": "tool -> web (",
                 "ipBlock": "ext -> web", "ipBlock except": "node2 -> web", "egress": "api -> web"}
        for kind, prefix in kinds.items():
            hits = [r for n, r in rep.items() if n.startswith(prefix)]
            assert hits and all(r["ok"] for r in hits), (kind, hits)
        denied = [r for r in rep.values() if r["expected"] == "deny"]
        assert len(denied) == 4 and all("dropped by 'default deny" in r["observed"] for r in denied)
        # with the lab's policy table gone, a denied probe passes: the rules did the denying
        n1 = f"nl-{name}-n-node1"
        assert nsutil.exists(n1)
        subprocess.run(["ip", "netns", "exec", n1, "nft", "delete", "table", "inet", "cnilab-policy"], check=True)
        v = netlab("verify", "--lab-dir", lab_dir, "--json")
        after = _report(v)
        assert not after["web -> db:5432 (not selected)"]["ok"]
        assert after["web -> db:5432 (not selected)"]["observed"].startswith("allow")
    finally:
        d = netlab("down", "--lab-dir", lab_dir)
    assert d.returncode == 0, d.stderr
    assert leftovers(name, lab_dir) == []


def test_dual_stack_services_and_policy_on_the_wire(tmp_path):
    """topologies/dual-stack-services.yaml (ADR 0034): every check passes on its
    captures (v6 ClusterIP, v6 NodePort from outside, v6 policy allow and deny),
    the node has one Services table per family, and the policy table's ICMPv6
    neighbour-discovery accept is what keeps a default-deny pod reachable over IPv6."""
    name = lab_name()
    lab_dir = str(tmp_path / "lab")
    up = netlab("up", os.path.join(REPO, "topologies", "dual-stack-services.yaml"), "--name", name,
                "--lab-dir", lab_dir, "--json", "-q")
    try:
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-2000:]
        rep = _report(up)
        assert all(c["ok"] for c in rep.values()), [c for c in rep.values() if not c["ok"]]
        for c in rep.values():          # every pass proven by captured packets
            assert c["evidence"] and os.path.getsize(c["evidence"]) > 24, c
        # the IPv6 ClusterIP: connections reached both endpoints at their IPv6 addresses
        web = rep["client -> web: ClusterIP in both families"]
        v6 = "\n".join(web["details"][web["details"].index("IPv6:"):])
        assert "via ClusterIP fd00:10:96::20:80/tcp: 20 connection(s)" in v6
        assert "web1 fd00:10:241::2:8080, web2 fd00:10:241:1::2:8080" in v6
        seen = next(ln for ln in v6.splitlines() if ln.startswith("connections seen"))
        assert "web1 0" not in seen and "web2 0" not in seen, seen
        # the IPv6 NodePort from outside the cluster, on node1's IPv6 address
        np = rep["ext -> node1:30080 in both families (NodePort)"]
        assert "IPv6 20/20 answered" in np["observed"]
        assert any("ext (fd00:141::3) -> default/web-np via node node1 [fd00:141::b]:30080/tcp" in d for d in np["details"])
        # policy in IPv6: allowed by the v6 rule, denied by the default deny, each seen on the wire
        allow = rep["client -> db:5432 in both families (podSelector, named port)"]
        assert "accepted by 'allow default/db ingress[0] from podSelector (client) (IPv6) tcp'" in allow["observed"]
        deny = rep["intruder -> db in both families (default deny)"]["observed"]
        assert deny.count("never the pod; dropped by 'default deny ingress of default/db") == 2, deny
        assert rep["ext -> db over IPv6 (ipBlock fd00:141::/64)"]["observed"].startswith("allow")
        assert rep["ext -> db over IPv4 (no IPv4 ipBlock)"]["observed"].startswith("deny")
        # one table per family in every node, both recorded for down
        st = json.load(open(os.path.join(lab_dir, "state.json")))
        tables = {(r["ns"], r["family"], r["table"]) for r in st["resources"] if r["kind"] == "nft_table"}
        for n in ("node1", "node2"):
            ns = f"nl-{name}-n-{n}"
            assert {(ns, "ip", S.TABLE), (ns, "ip6", S.TABLE), (ns, "inet", "cnilab-policy")} <= tables
            assert "dnat to [fd00:10:241:1::2]:8080" in _nft(ns, "list", "table", "ip6", S.TABLE)
        # graph draws the Service in both families, from both tables
        g = netlab("graph", "--lab-dir", lab_dir, "--format", "mermaid")
        assert g.returncode == 0, g.stderr
        assert "Service default/web<br/>[fd00:10:96::20]:80/tcp" in g.stdout, g.stdout
        assert '"[fd00:10:241:1::2]:8080"' in g.stdout and "Service default/web<br/>10.96.0.20:80/tcp" in g.stdout
        # neighbour discovery under db's default-deny egress: counted by our accept rule;
        # without it db cannot answer its neighbour solicitations and the IPv6 allow fails
        n2 = f"nl-{name}-n-node2"
        rules = json.loads(_nft(n2, "-j", "-a", "list", "table", "inet", "cnilab-policy"))["nftables"]
        nd = [o["rule"] for o in rules if "rule" in o and o["rule"].get("comment", "").startswith("ICMPv6 neighbour")]
        assert len(nd) == 2 and sum(next(e["counter"]["packets"] for e in r["expr"] if "counter" in e) for r in nd) > 0
        for r in nd:
            subprocess.run(["ip", "netns", "exec", n2, "nft", "delete", "rule", "inet", "cnilab-policy", r["chain"],
                            "handle", str(r["handle"])], check=True)
        for ns in (n2, f"nl-{name}-p-db"):
            subprocess.run(["ip", "netns", "exec", ns, "ip", "-6", "neigh", "flush", "all"], check=True)
        db = next(r for r in st["resources"] if r["kind"] == "attach" and r["pod"] == "db")
        db6 = next(i["address"].split("/")[0] for i in db["result"]["ips"] if ":" in i["address"])
        egress_deny = "default deny egress of default/db (policies default/db)"
        before = P.counters(n2, P.FAMILY, P.TABLE)[egress_deny]
        with Server(f"nl-{name}-p-db", "tcp", 5432, "::"):
            ok, text = client(f"nl-{name}-p-client", "tcp", db6, 5432, 2)
        assert not ok, text
        # what the default deny dropped instead: db's own neighbour solicitations / advertisements
        assert P.counters(n2, P.FAMILY, P.TABLE)[egress_deny] > before
    finally:
        d = netlab("down", "--lab-dir", lab_dir)
    assert d.returncode == 0, d.stderr
    assert leftovers(name, lab_dir) == []
