"""Applying a scenario's faults to a built lab (the schema and the judge are
netlab.lab.scenario): sysctls turned off, a kube-proxy stand-in (a DNAT from a
virtual IP to a pod in our own table ``ip cnilab-svc``, re-pointed on
``replace`` without touching conntrack), a UDP flow that is already running,
a pod replaced (DEL + ADD with a new container ID), waits.

``apply`` is called by ``netlab up`` after the last attachment. Everything a
fault makes lives inside the lab's namespaces and goes with them, except the
``udp-flow`` process, which is recorded in the state file like dnsmasq and
stopped by ``netlab down``. Imports the lab's lower modules (netns, names,
state, pods, k8s), never the builder.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Callable

from plugins.core import netns as cns

from ..features import k8s
from ..base import namespaces as nsutil
from ..base.names import node_ns
from ..base.namespaces import BuildError, tx_offload_off
from .pods import detach, runtime_for
from .scenario import FAULT_TABLE, SVC_TABLE, Scenario
from ..base.state import attach_addresses, proc_starttime


def _target_ns(plan, name: str) -> str:
    return plan.endpoints[name].netns


def _address(st, plan, name: str) -> str:
    addrs = attach_addresses(st)
    if name in addrs:
        return addrs[name]
    if name in plan.endpoints and plan.endpoints[name].address:
        return plan.endpoints[name].address
    return name     # an IPv4 address


def _svc_ruleset(services: list[dict], addrs: dict[str, str]) -> str:
    lines = [f"table ip {SVC_TABLE} {{",
             "  chain pre { type nat hook prerouting priority dstnat; policy accept; }",
             "  chain out { type nat hook output priority -100; policy accept; }", "}"]
    for s in services:
        to = addrs.get(s["pod"])
        if not to:
            continue
        proto = s.get("proto", "tcp")
        tp = s.get("targetPort", s["port"])
        for ch in ("pre", "out"):
            lines.append(f"add rule ip {SVC_TABLE} {ch} ip daddr {s['vip']} {proto} dport {s['port']} "
                         f"dnat to {to}:{tp} comment \"service {s.get('name', s['vip'])} -> {s['pod']}\"")
    return "\n".join(lines) + "\n"


def _nft_in(ns: str, text: str) -> None:
    p = nsutil.nft_in(ns, text)
    if p.returncode != 0:
        raise BuildError(f"[{ns}] nft: {p.stderr.strip()}")


FLOW_CODE = r"""
import socket, sys, time
host, port, sport, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("0.0.0.0", sport))
n = 0
while True:
    n += 1
    try:
        s.sendto(b"netlab-udp-flow %d" % n, (host, port))
    except OSError:
        pass
    time.sleep(interval)
"""


class Applier:
    def __init__(self, plan, st, record: Callable[..., dict], update: Callable[..., None],
                 progress: Callable[[str], None]) -> None:
        self.plan, self.st = plan, st
        self.record, self.update, self.progress = record, update, progress
        self.services: list[dict] = []

    def apply(self, sc: Scenario) -> None:
        for kind, spec in sc.faults:
            getattr(self, "f_" + kind.replace("-", "_"))(spec)

    def f_wait(self, secs) -> None:
        self.progress(f"      fault: wait {secs}s")
        time.sleep(float(secs))

    def f_sysctl(self, spec: dict) -> None:
        from plugins.net import sysctl
        ns = _target_ns(self.plan, spec["in"])
        key = spec["key"].replace(".", "/")
        with cns.entered(nsutil.path(ns)):
            sysctl.write(key, str(spec["value"]))
        self.progress(f"      fault: {spec['in']}: {spec['key']} = {spec['value']}")

    def _fault_rule(self, kind: str, spec: dict) -> None:
        ns = _target_ns(self.plan, spec["in"])
        hook, rule = fault_rule_text(kind, spec)
        _nft_in(ns, f"table inet {FAULT_TABLE} {{\n  chain {hook} {{ type filter hook {hook} priority 0; policy accept; }}\n}}\n"
                    f"add rule inet {FAULT_TABLE} {hook} {rule}\n")
        self.progress(f"      fault: {spec['in']}: {hook} {rule} (table inet {FAULT_TABLE})")

    def f_filter(self, spec: dict) -> None:
        self._fault_rule("filter", spec)

    def f_drop_dns(self, spec: dict) -> None:
        self._fault_rule("drop-dns", spec)

    def f_route_del(self, spec: dict) -> None:
        from ..base.namespaces import ipn
        ns = _target_ns(self.plan, spec["in"])
        fam = int(spec.get("family", 4))
        ipn(ns, f"-{fam}", "route", "del", spec["dst"])
        self.progress(f"      fault: {spec['in']}: IPv{fam} route {spec['dst']} deleted")

    def f_address(self, spec: dict) -> None:
        """Add an address, with DAD (``dad: true``, the default) or without; with
        DAD, wait on the kernel until DAD is over: the address either settled or
        failed (``dadfailed``, stays tentative for ever)."""
        from ..base.namespaces import ipn, tentative_addresses
        ns = _target_ns(self.plan, spec["in"])
        dad = spec.get("dad", True)
        addr = str(spec["address"])
        if dad:
            from plugins.net import sysctl
            with cns.entered(nsutil.path(ns)):
                sysctl.write(f"net/ipv6/conf/{spec['dev']}/accept_dad", "1")
        if spec.get("again"):     # the interface is set up again: the address goes and comes back
            ipn(ns, "addr", "del", addr, "dev", spec["dev"])
        ipn(ns, "addr", "add", addr, "dev", spec["dev"], *([] if dad else ["nodad"]))
        state = "added without DAD"
        if dad:
            bare = addr.split("/")[0]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                mine = [a for a in tentative_addresses(ns) if a.split("/")[0] == bare]
                if not mine or "dadfailed" in mine[0]:
                    break
                time.sleep(0.05)
            state = "DAD failed (tentative dadfailed)" if mine and "dadfailed" in mine[0] else (
                "DAD passed" if not mine else "still tentative after 10 s")
        self.progress(f"      fault: {spec['in']}: address {addr} on {spec['dev']}: {state}")

    def f_link_down(self, spec: dict) -> None:
        """The node's switch port goes down (its uplink loses carrier); a capture on
        the switch records the LoadBalancer speakers taking over (netlab/loadbalancer.py)."""
        from ..features.loadbalancer import fault_link_down
        fault_link_down(self.plan, self.st, spec["node"], self.progress)

    def f_service(self, spec: dict) -> None:
        self.services.append(dict(spec))
        self._sync_services()
        self.progress(f"      fault: service {spec.get('name', spec['vip'])} {spec['vip']}:{spec['port']}/"
                      f"{spec.get('proto', 'tcp')} -> pod {spec['pod']} (DNAT in every node, table ip {SVC_TABLE})")

    def _sync_services(self) -> None:
        addrs = attach_addresses(self.st)
        text = _svc_ruleset(self.services, addrs)
        for n in self.plan.topology.nodes:
            ns = node_ns(self.plan.lab, n)
            # a full re-sync, as kube-proxy does: replace our table, never touch conntrack
            _nft_in(ns, f"table ip {SVC_TABLE}\ndelete table ip {SVC_TABLE}\n" + text)

    def f_udp_flow(self, spec: dict) -> None:
        ns = _target_ns(self.plan, spec["from"])
        host = _address(self.st, self.plan, spec["to"])
        sport = int(spec.get("sport") or 40000 + spec["port"] % 20000)
        argv = [sys.executable, "-c", FLOW_CODE, host, str(spec["port"]), str(sport), str(spec.get("interval", 0.2)),
                f"netlab-flow:{self.plan.lab_dir}"]
        fd = os.open(nsutil.path(ns), os.O_RDONLY | os.O_CLOEXEC)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, preexec_fn=lambda: cns.setns(fd),
                                    start_new_session=True)
        finally:
            os.close(fd)
        self.record("process", name=f"udp-flow {spec['from']}:{sport} -> {host}:{spec['port']}", pid=proc.pid,
                    starttime=proc_starttime(proc.pid))
        self.progress(f"      fault: a UDP flow {spec['from']}:{sport} -> {host}:{spec['port']} every "
                      f"{spec.get('interval', 0.2)}s (pid {proc.pid})")

    def f_replace(self, spec: dict) -> None:
        pod = spec["pod"]
        res = self.st.attachments()[pod]
        old = (res.get("result") or {}).get("ips", [{}])[0].get("address", "?")
        detach(res, self.st)
        n = int(res.get("replaced", 0)) + 1
        first = res.get("first_container_id") or res["container_id"]
        cid = f"{first}-r{n}"     # a new sandbox gets a new container ID
        self.update(res, first_container_id=first, container_id=cid, replaced=n, result=None)
        rt = runtime_for(self.plan.lab_dir, res["node_ns"], res.get("cni_path") or self.st.data.get("cniPath"))
        args = res["cni_args"].replace(res["cni_args"].split("K8S_POD_INFRA_CONTAINER_ID=")[-1].split(";")[0], cid) \
            if "K8S_POD_INFRA_CONTAINER_ID=" in res["cni_args"] else res["cni_args"]
        result = rt.add(res["conflist"], nsutil.path(res["netns"]), cid, res["ifname"],
                        capability_args=res.get("capability_args") or {}, cni_args=args)
        self.update(res, result=result, cni_args=args)
        tx_offload_off(res["netns"], res["ifname"])
        for itf in result.get("interfaces", []):
            if not itf.get("sandbox") and itf.get("name") and itf.get("mac"):
                tx_offload_off(res["node_ns"], itf["name"])
        new = (result.get("ips") or [{}])[0].get("address", "?")
        self.progress(f"      fault: pod {pod} replaced (DEL + ADD as {cid}): {old} -> {new}")
        # Services / NetworkPolicies of the topology follow the new address
        k8s.sync(self.plan.topology, self.plan.lab, attach_addresses(self.st), st=self.st, record=self.record,
                 progress=self.progress)
        if any(s["pod"] == pod for s in self.services):
            self._sync_services()
            self.progress(f"      fault: services re-pointed to {new.split('/')[0]}; conntrack left as it is")


def dns_qtype_offset(name: str) -> int:
    """Bit offset of the QTYPE of a query for ``name`` from the start of the UDP
    header (nftables ``@th``): 8 bytes of UDP, 12 of DNS header, the encoded name."""
    labels = [x for x in name.rstrip(".").split(".") if x]
    return 8 * (8 + 12 + sum(1 + len(x) for x in labels) + 1)


def fault_rule_text(kind: str, spec: dict) -> tuple[str, str]:
    """(hook, nft rule) of a filter or drop-dns fault."""
    if kind == "filter":
        return spec["hook"], spec["rule"]
    qtype = {"A": 1, "AAAA": 28}[spec["qtype"]]
    return "forward", (f"udp dport 53 @th,{dns_qtype_offset(spec['name'])},16 {qtype} counter drop "
                       f"comment \"{spec['qtype']} queries for {spec['name'].rstrip('.')}\"")


def apply(plan, st, *, record, update, progress=print) -> Scenario | None:
    """Apply the scenario of the plan's topology (parsed with it: ``Topology.scenario``), if it has one."""
    sc = plan.topology.scenario
    if sc is None or not sc.faults:
        return sc
    progress(f"      scenario: applying {len(sc.faults)} fault(s)")
    Applier(plan, st, record, update, progress).apply(sc)
    st.set(scenario={"symptom": sc.symptom, "cause": sc.cause, "faults": len(sc.faults)})
    return sc
