"""LoadBalancer Services (netlab/loadbalancer.py, netlab/lbspeaker.py, ADR 0026):
the schema, the election, the nftables entries and the speakers' decisions.
No root needed: the speaker's election logic runs without its sockets."""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from netlab.features import lbspeaker
from netlab.features import loadbalancer as LB
from netlab.features import services as S
from netlab.lab import topology as T

BASE = """
name: lb1
underlay: {subnet: 192.168.150.0/24}
nodes: {n1: {}, n2: {}, n3: {}}
networks: {podnet: {type: bridge, subnet: 10.250.0.0/16, nodePrefix: 24}}
pods:
  web1: {node: n1, network: podnet, labels: {app: web}, containerPorts: [{name: http, containerPort: 8080}]}
  web3: {node: n3, network: podnet, labels: {app: web, tier: edge}, containerPorts: [{name: http, containerPort: 8080}]}
"""
ADDRS = {"web1": "10.250.0.2", "web3": "10.250.2.2"}
POOL = """
loadBalancer:
  pools:
    - {name: default, addresses: [192.168.150.200/30]}
    - {name: spare, addresses: [192.168.150.220-192.168.150.221]}
"""


def load(extra: str) -> T.Topology:
    return T.loads(BASE + extra)


def errors(extra: str) -> str:
    with pytest.raises(T.TopologyError) as e:
        load(extra)
    assert all(re.match(r"<topology>(:\d+)?: ", x) for x in e.value.errors), e.value.errors
    return "\n".join(e.value.errors)


# --------------------------------------------------------------------------- schema

def test_addresses_come_from_the_pools_in_order_and_explicit_ones_are_kept():
    t = load(POOL + """
services:
  - {name: a, type: LoadBalancer, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
  - {name: b, type: LoadBalancer, loadBalancerIP: 192.168.150.200, selector: {app: web}, ports: [{port: 80}]}
  - {name: c, type: LoadBalancer, selector: {app: web}, ports: [{port: 80, nodePort: 31000}]}
""")
    s = {x.name: x for x in t.k8s.services.services}
    assert s["b"].lb_ip == "192.168.150.200" and s["b"].lb_pool == "default"
    assert s["a"].lb_ip == "192.168.150.201"        # .200 was asked for explicitly
    assert s["c"].lb_ip == "192.168.150.202"
    # a LoadBalancer Service also has a ClusterIP and node ports, as in Kubernetes
    assert s["a"].cluster_ip and s["a"].ports[0].node_port == 30000
    assert s["c"].ports[0].node_port == 31000
    assert [p.name for p in t.k8s.lb.pools] == ["default", "spare"]
    assert t.k8s.lb.pools[1].addresses == ["192.168.150.220", "192.168.150.221"]


def test_pool_exhaustion_names_the_service():
    text = errors("""
loadBalancer: {pools: [{name: one, addresses: [192.168.150.200/32]}]}
services:
  - {name: a, type: LoadBalancer, selector: {app: web}, ports: [{port: 80}]}
  - {name: b, type: LoadBalancer, selector: {app: web}, ports: [{port: 80}]}
""")
    assert "services[1].type: no free address left in the loadBalancer pools for default/b" in text


@pytest.mark.parametrize("pool, msg", [
    ("[10.0.0.0/30]", "is not inside the underlay subnet 192.168.150.0/24"),
    ("[192.168.150.8/29]", "holds 192.168.150.11, already used at nodes.n1.address"),
    ("[192.168.150.2/31]", "holds 192.168.150.2, already used at dns.address"),
    ("[192.168.150.3-192.168.150.4]", "holds 192.168.150.3, already used at external"),
    ("[192.168.150.252/30]", "the network or broadcast address of 192.168.150.0/24"),
    ("[192.168.150.210-192.168.150.205]", "the range ends before it starts"),
    ("[192.168.150.200/33]", "is neither a CIDR nor a range"),
    ("[192.168.150.201/30]", "is neither a CIDR nor a range"),      # host bits set
    ("[42]", "must be a CIDR"),
])
def test_pool_validation(pool, msg):
    text = errors(f"""
loadBalancer: {{pools: [{{name: p, addresses: {pool}}}]}}
services:
  - {{name: a, type: LoadBalancer, selector: {{app: web}}, ports: [{{port: 80}}]}}
""")
    assert "loadBalancer.pools[0].addresses[0]: " in text and msg in text, text


def test_pools_must_not_overlap_and_names_are_unique():
    text = errors("""
loadBalancer:
  pools:
    - {name: a, addresses: [192.168.150.200/30]}
    - {name: a, addresses: [192.168.150.202-192.168.150.210]}
services:
  - {name: s, type: LoadBalancer, selector: {app: web}, ports: [{port: 80}]}
""")
    assert "loadBalancer.pools[1].name: pool name 'a' is used twice" in text
    assert "loadBalancer.pools[1].addresses[0]: 192.168.150.202 is already in pool a" in text


def test_service_side_errors():
    text = errors(POOL + """
services:
  - {name: a, type: LoadBalancer, loadBalancerIP: 192.168.150.230, selector: {app: web}, ports: [{port: 80}]}
  - {name: b, type: LoadBalancer, loadBalancerIP: 192.168.150.201, selector: {app: web}, ports: [{port: 80}]}
  - {name: c, type: LoadBalancer, loadBalancerIP: 192.168.150.201, selector: {app: web}, ports: [{port: 80}]}
  - {name: d, loadBalancerIP: 192.168.150.202, selector: {app: web}, ports: [{port: 80}]}
  - {name: e, type: LoadBalancer, loadBalancerIP: not-an-ip, selector: {app: web}, ports: [{port: 80}]}
  - {name: f, type: Balancer, selector: {app: web}, ports: [{port: 80}]}
""")
    assert ("services[0].loadBalancerIP: 192.168.150.230 is in no loadBalancer pool (default: "
            "192.168.150.200-192.168.150.203, spare: 192.168.150.220-192.168.150.221)") in text
    assert "services[2].loadBalancerIP: 192.168.150.201 is already the address of default/b" in text
    assert "services[3].loadBalancerIP: only for type LoadBalancer" in text
    assert "services[4].loadBalancerIP: 'not-an-ip' is not an IPv4 address" in text
    assert "services[5].type: must be ClusterIP, NodePort or LoadBalancer" in text


def test_loadbalancer_needs_pools_and_pools_need_a_loadbalancer():
    text = errors("services: [{name: a, type: LoadBalancer, selector: {app: web}, ports: [{port: 80}]}]\n")
    assert "services[0].type: type LoadBalancer needs addresses: give loadBalancer.pools" in text
    text = errors(POOL)
    assert "loadBalancer: no Service has type LoadBalancer" in text
    text = errors("loadBalancer: {pools: [{name: p}], colour: red}\nservices: [{name: a, type: LoadBalancer, "
                  "selector: {app: web}, ports: [{port: 80}]}]\n")
    assert "loadBalancer.colour: unknown key" in text
    assert "loadBalancer.pools[0].addresses: is required" in text


def test_check_schema_via_loadbalancer():
    svc = POOL + """
services:
  - {name: lb, type: LoadBalancer, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
  - {name: np, type: NodePort, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
"""
    t = load(svc + """
checks:
  - {type: service, from: ext, service: lb, via: loadBalancer, speaker: n2, takeover: true}
  - {type: service, from: ext, service: lb, via: n1}
""")
    c = t.checks[0]
    assert c.params["via"] == "loadBalancer" and c.params["speaker"] == "n2" and c.params["takeover"]
    assert c.name == "service ext -> default/lb via loadBalancer"
    assert t.checks[1].params["via"] == "n1"        # a LoadBalancer has node ports too
    text = errors(svc + """
checks:
  - {type: service, from: ext, service: np, via: loadBalancer}
  - {type: service, from: ext, service: lb, via: loadBalancer, speaker: n9}
  - {type: service, from: ext, service: lb, takeover: true}
  - {type: service, from: web1, service: lb, via: loadBalancer}
  - {type: service, from: ext, service: lb, via: loadBalancer, speaker: n1, expect: fail}
""")
    assert "checks[0].via: default/np is of type NodePort: it has no LoadBalancer address" in text
    assert "checks[1].speaker: unknown node 'n9'" in text
    assert "checks[2].takeover: only with via: loadBalancer" in text
    assert "checks[3].from: a LoadBalancer address is reached over the underlay: from must be ext or dns" in text
    assert "checks[4].expect: speaker and takeover are judged on answered connections" in text


def test_scenario_link_down_fault_is_validated():
    text = errors(POOL + """
services: [{name: lb, type: LoadBalancer, selector: {app: web}, ports: [{port: 80}]}]
checks: [{type: reach, from: ext, to: n1, name: x}]
scenario:
  symptom: s
  faults:
    - link-down: {node: n9}
    - link-down: {nodes: n1}
  failing: [{check: x}]
""")
    assert "scenario.faults[0].link-down.node: unknown node 'n9'" in text
    assert "scenario.faults[1].link-down.nodes: unknown key (known: node)" in text
    assert "scenario.faults[1].link-down.node: is required" in text


# --------------------------------------------------------------------------- election

def test_election_is_the_lowest_sha256_of_node_and_address():
    addr = "192.168.151.201"
    ranks = {n: hashlib.sha256(f"{n}#{addr}".encode()).hexdigest() for n in ("node1", "node2", "node3")}
    assert LB.rank("node2", addr) == ranks["node2"]
    want = min(ranks, key=ranks.get)
    assert LB.elect(addr, ["node1", "node2", "node3"]) == want
    assert LB.elect(addr, ["node3", "node2", "node1", "node1"]) == want     # order and repeats do not matter
    assert LB.elect(addr, []) is None


def test_losing_a_node_moves_only_its_own_addresses():
    nodes = ["node1", "node2", "node3", "node4"]
    addrs = [f"192.168.150.{i}" for i in range(200, 240)]
    before = {a: LB.elect(a, nodes) for a in addrs}
    assert set(before.values()) == set(nodes)          # the addresses spread over the nodes
    after = {a: LB.elect(a, ["node1", "node3", "node4"]) for a in addrs}
    for a in addrs:
        if before[a] != "node2":
            assert after[a] == before[a], a            # not node2's: stays where it was
        else:
            assert after[a] != "node2"
            rest = sorted(["node1", "node3", "node4"], key=lambda n: LB.rank(n, a))
            assert after[a] == rest[0]                 # the next in the ranking takes over


def test_eligible_nodes_follow_external_traffic_policy():
    t = load(POOL + """
services:
  - {name: c, type: LoadBalancer, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
  - {name: l, type: LoadBalancer, externalTrafficPolicy: Local, selector: {tier: edge}, ports: [{port: 80, targetPort: 8080}]}
  - {name: z, type: LoadBalancer, externalTrafficPolicy: Local, selector: {app: none}, ports: [{port: 80}]}
""")
    ann = {a["service"]: a for a in LB.announcements(t, ADDRS)}
    assert ann["default/c"]["eligible"] == ["n1", "n2", "n3"] and ann["default/c"]["policy"] == "Cluster"
    assert ann["default/l"]["eligible"] == ["n3"]            # only the node running web3
    assert ann["default/z"]["eligible"] == []                # no endpoint: nobody may announce
    sp, lines = LB.explain(ann["default/l"]["address"], ["n1", "n2", "n3"], ["n2", "n3"])
    assert sp in ("n2", "n3") and any("(down)" in ln and ln.startswith("n1") for ln in lines)
    assert sum("<- lowest, speaker" in ln for ln in lines) == 1


# --------------------------------------------------------------------------- nftables

def test_lb_address_goes_to_the_external_chain_in_every_node():
    t = load(POOL + """
services:
  - {name: c, type: LoadBalancer, loadBalancerIP: 192.168.150.201, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
""")
    eps = S.endpoints(t.k8s.services, t.pods, ADDRS)
    for node in ("n1", "n2"):
        text = json.dumps(S.plan_table(t.k8s.services, node, eps))
        assert ('{"element": {"family": "ip", "table": "cnilab-services", "name": "service-ips", "elem": '
                '[[{"concat": ["192.168.150.201", "tcp", 80]}, {"goto": {"target": "external-default/c/tcp/http"}}]]}}') in text
        assert '"name": "load-balancer-ips", "elem": ["192.168.150.201"]' in text
        assert "LoadBalancer 192.168.150.201:80 (Cluster)" in text
        assert '"service-nodeports"' in text and '"concat": ["tcp", 30000]' in text    # and its node port
        assert "a LoadBalancer IP on a port it does not serve" in text


def test_lb_without_endpoints_rejects_and_local_without_local_endpoint_drops():
    t = load(POOL + """
services:
  - {name: none, type: LoadBalancer, loadBalancerIP: 192.168.150.200, selector: {app: nothing}, ports: [{port: 80}]}
  - {name: loc, type: LoadBalancer, loadBalancerIP: 192.168.150.201, externalTrafficPolicy: Local, selector: {tier: edge}, ports: [{port: 80, targetPort: 8080}]}
""")
    eps = S.endpoints(t.k8s.services, t.pods, ADDRS)
    n1 = json.dumps(S.plan_table(t.k8s.services, "n1", eps))
    assert ('[[{"concat": ["192.168.150.200", "tcp", 80]}, {"goto": {"target": "reject-chain"}}]]') in n1
    assert ('[[{"concat": ["192.168.150.201", "tcp", 80]}, {"goto": {"target": "no-local-endpoints"}}]]') in n1
    n3 = json.dumps(S.plan_table(t.k8s.services, "n3", eps))
    assert "LoadBalancer 192.168.150.201:80 (Local): 1 local endpoint(s)" in n3


# --------------------------------------------------------------------------- ARP frames

def test_arp_frames_round_trip_and_gratuitous_is_recognised():
    mac = bytes.fromhex("0a0b0c0d0e0f")
    req = lbspeaker.arp_frame(1, lbspeaker.BROADCAST, mac, "192.168.150.3", b"\0" * 6, "192.168.150.200")
    assert len(req) == 60
    assert lbspeaker.parse_arp(req) == (1, mac, "192.168.150.3", "192.168.150.200")
    assert lbspeaker.parse_arp(b"\0" * 12 + b"\x08\x00" + b"\0" * 40) is None
    from scapy.layers.l2 import Ether
    g = lbspeaker.arp_frame(2, lbspeaker.BROADCAST, mac, "192.168.150.200", lbspeaker.BROADCAST, "192.168.150.200")
    frames = LB.arp_frames([Ether(req), Ether(g)])
    assert [f["gratuitous"] for f in frames] == [False, True]
    assert frames[1]["hwsrc"] == "0a:0b:0c:0d:0e:0f" and frames[1]["op"] == 2


# --------------------------------------------------------------------------- the speakers' decisions

class FakeSpeaker(lbspeaker.Speaker):
    """A speaker without sockets: its link state is set by the test and its
    gratuitous ARPs are counted, so the election logic runs as it does live."""

    def __init__(self, node: str, cfg: dict) -> None:
        self.node, self.cfg, self.iface = node, cfg, "eth0"
        self.cfg_mtime = 1.0
        self.mac = b"\x02" + bytes(5)
        self.heard, self.ready_peers, self.prev_up = {}, set(), []
        self.joined = None
        self.announcing, self.since, self.answered, self.garps = set(), {}, {}, {}
        self.last_status = 0.0
        self.link = True
        self.sent: list[str] = []

    def running(self) -> bool:
        return self.link

    def gratuitous(self, addr: str) -> None:
        self.sent.append(addr)

    def write_status(self, ready, up) -> None:
        self.status_dirty = False

    def log(self, msg: str) -> None:
        pass


class Cluster:
    """Three speakers exchanging heartbeats in simulated time (no sockets)."""

    def __init__(self, addrs: list[str]) -> None:
        self.cfg = {"nodes": {"n1": "a", "n2": "b", "n3": "c"}, "deadAfter": 1.0,
                    "addresses": [{"address": a, "eligible": ["n1", "n2", "n3"]} for a in addrs]}
        self.sp = {n: FakeSpeaker(n, self.cfg) for n in ("n1", "n2", "n3")}
        self.now = 100.0

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.now += 0.2
            for s in self.sp.values():
                s.recompute(self.now)
            for s in self.sp.values():
                if not s.link:
                    continue
                for o in self.sp.values():
                    if o is not s and o.link:
                        o.heard[s.node] = self.now
                        (o.ready_peers.add if s.is_ready(self.now) else o.ready_peers.discard)(s.node)

    def owners(self, addr: str) -> list[str]:
        return sorted(n for n, s in self.sp.items() if addr in s.announcing)


def test_speakers_agree_at_start_without_claiming_what_they_do_not_win():
    addrs = [f"192.168.150.{i}" for i in range(200, 212)]
    c = Cluster(addrs)
    c.tick(12)
    for a in addrs:
        assert c.owners(a) == [LB.elect(a, ["n1", "n2", "n3"])], a
        # each address was announced (gratuitous ARP) by its speaker only, once: no flapping at start
        assert [n for n, s in c.sp.items() if a in s.sent] == c.owners(a)
        assert c.sp[c.owners(a)[0]].sent.count(a) == 2


def test_failover_and_hand_back_leave_no_address_without_a_speaker():
    a = "192.168.151.201"
    first = LB.elect(a, ["n1", "n2", "n3"])
    rest = [n for n in ("n1", "n2", "n3") if n != first]
    second = LB.elect(a, rest)
    c = Cluster([a])
    c.tick(10)
    assert c.owners(a) == [first]
    c.sp[first].link = False              # cut off: it lets go at once, the others notice within deadAfter
    history = []
    for _ in range(12):
        c.tick()
        history.append(c.owners(a))
    assert history[0] == []               # the gap: no heartbeat from the cut-off node for deadAfter
    assert history[-1] == [second] and c.sp[second].sent == [a, a]     # one takeover: two gratuitous ARPs
    assert sum(1 for h in history if not h) <= 6    # one deadAfter (1 s = 5 ticks) plus a tick
    c.sp[first].link = True               # back: listens first, then takes the address back
    history = []
    for _ in range(12):
        c.tick()
        history.append(c.owners(a))
    assert all(h for h in history), history           # never without a speaker while it returns
    assert sum(1 for h in history if len(h) > 1) <= 1  # two at once for at most one heartbeat
    assert history[-1] == [first] and c.sp[first].sent.count(a) == 4   # at start, and on its return
