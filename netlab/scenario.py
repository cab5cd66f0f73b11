"""Broken-on-purpose labs: the ``scenario`` key of a topology file.

A scenario is an ordinary topology plus what is wrong with it::

    scenario:
      symptom: what a user sees
      cause: what is actually wrong
      fix: how to repair it (for the guide)
      faults:                 # applied, in order, once the lab is built
        - sysctl: {in: node2, key: net.ipv4.ip_forward, value: 0}
        - service: {name: dns, vip: 10.96.0.10, port: 53, proto: udp, pod: dnsd}
        - udp-flow: {from: client, to: 10.96.0.10, port: 53, sport: 40053}
        - wait: 1.0
        - replace: {pod: dnsd}
      failing:                # the symptom, as checks that must fail ...
        - {check: "client -> web", reason: "fail: .*timed out"}   # ... and why (a regex on 'got')

Many faults need no fault at all: a conflist with ``hairpinMode: false`` or an
MTU that does not fit is just configuration. ``faults`` covers what a
topology cannot say: state changed after the plugins ran (a sysctl turned
off, a pod replaced), traffic that is already flowing, and a kube-proxy
stand-in (``service``: a DNAT from a virtual IP to a pod, in every node, in
our own table ``ip cnilab-svc``; on ``replace`` it is re-pointed to the new
pod address the way kube-proxy re-syncs, *without* touching conntrack).

Validation is called from ``netlab.topology`` (every error at once, before
anything is built); ``apply`` is called by the builder after the last
attachment. Everything a fault makes lives inside the lab's namespaces and
goes with them, except the ``udp-flow`` process, which is recorded in the
state file like dnsmasq and stopped by ``netlab down``.
"""
from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

FAULT_KINDS = ("sysctl", "service", "udp-flow", "replace", "wait")
SCENARIO_KEYS = ("symptom", "cause", "fix", "faults", "failing")
SVC_TABLE = "cnilab-svc"


@dataclass
class Scenario:
    symptom: str = ""
    cause: str = ""
    fix: str = ""
    faults: list[tuple[str, dict]] = field(default_factory=list)
    failing: list[dict] = field(default_factory=list)     # {check, reason}


# --------------------------------------------------------------------------- validation

def validate(data: Any, nodes: dict, pods: dict, checks: list[str]) -> list[tuple[tuple, str]]:
    """Problems as (path below 'scenario', message)."""
    errs: list[tuple[tuple, str]] = []
    if not isinstance(data, dict):
        return [((), "must be a mapping (symptom, cause, fix, faults, failing)")]
    for k in data:
        if k not in SCENARIO_KEYS:
            errs.append(((k,), f"unknown key (known: {', '.join(SCENARIO_KEYS)})"))
    for k in ("symptom", "cause", "fix"):
        if k in data and not isinstance(data[k], str):
            errs.append(((k,), "must be a string"))
    targets = set(nodes) | set(pods) | {"ext", "dns"}
    faults = data.get("faults") or []
    if not isinstance(faults, list):
        errs.append((("faults",), "must be a list"))
        faults = []
    for i, f in enumerate(faults):
        p = ("faults", i)
        if not isinstance(f, dict) or len(f) != 1:
            errs.append((p, f"each fault is a mapping with one key: {', '.join(FAULT_KINDS)}"))
            continue
        kind, spec = next(iter(f.items()))
        if kind not in FAULT_KINDS:
            errs.append((p + (kind,), f"unknown fault (known: {', '.join(FAULT_KINDS)})"))
            continue
        if kind == "wait":
            if not isinstance(spec, (int, float)) or isinstance(spec, bool) or not 0 <= spec <= 30:
                errs.append((p + (kind,), "must be a number of seconds between 0 and 30"))
            continue
        if not isinstance(spec, dict):
            errs.append((p + (kind,), "must be a mapping"))
            continue
        known = {"sysctl": ("in", "key", "value"), "service": ("name", "vip", "port", "proto", "pod", "targetPort"),
                 "udp-flow": ("from", "to", "port", "sport", "interval"), "replace": ("pod",)}[kind]
        for k in spec:
            if k not in known:
                errs.append((p + (kind, k), f"unknown key (known: {', '.join(known)})"))
        for k in known:
            if k in ("targetPort", "interval", "name", "proto") or (kind == "udp-flow" and k == "sport"):
                continue
            if k not in spec:
                errs.append((p + (kind, k), "is required"))

        def tgt(key: str, only_pods: bool = False) -> None:
            v = spec.get(key)
            if v is None:
                return
            pool = set(pods) if only_pods else targets
            if v not in pool:
                errs.append((p + (kind, key), f"unknown {'pod' if only_pods else 'target'} {v!r}"))

        def port(key: str) -> None:
            v = spec.get(key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65535):
                errs.append((p + (kind, key), "must be a port number 1-65535"))

        def ip(key: str) -> None:
            v = spec.get(key)
            if v is None:
                return
            try:
                ipaddress.IPv4Address(v)
            except (ValueError, TypeError):
                errs.append((p + (kind, key), f"{v!r} is not an IPv4 address"))
        if kind == "sysctl":
            tgt("in")
            if "key" in spec and not (isinstance(spec["key"], str) and re.fullmatch(r"net[./][A-Za-z0-9_./-]+", spec["key"])):
                errs.append((p + (kind, "key"), "must be a net.* sysctl key"))
        elif kind == "service":
            ip("vip")
            port("port")
            port("targetPort")
            tgt("pod", only_pods=True)
            if spec.get("proto", "tcp") not in ("tcp", "udp"):
                errs.append((p + (kind, "proto"), "must be tcp or udp"))
        elif kind == "udp-flow":
            tgt("from")
            v = spec.get("to")
            if v is not None and v not in targets:
                ip("to")
            port("port")
            port("sport")
            iv = spec.get("interval", 0.2)
            if not isinstance(iv, (int, float)) or isinstance(iv, bool) or not 0.01 <= iv <= 10:
                errs.append((p + (kind, "interval"), "must be seconds between 0.01 and 10"))
        elif kind == "replace":
            tgt("pod", only_pods=True)
            if spec.get("pod") in pods and pods[spec["pod"]].mode not in ("bridge", "overlay"):
                errs.append((p + (kind, "pod"), "only a pod with its own network attachment can be replaced"))
            elif spec.get("pod") in pods and pods[spec["pod"]].ip:
                errs.append((p + (kind, "pod"), "a pod with a requested ip would get the same address back; "
                             "drop its ip to see a replacement"))
    failing = data.get("failing") or []
    if not isinstance(failing, list):
        errs.append((("failing",), "must be a list of {check, reason}"))
        failing = []
    for i, f in enumerate(failing):
        p = ("failing", i)
        if not isinstance(f, dict) or "check" not in f:
            errs.append((p, "must be a mapping with check (a check name) and reason (a regex)"))
            continue
        for k in f:
            if k not in ("check", "reason"):
                errs.append((p + (k,), "unknown key (known: check, reason)"))
        if f["check"] not in checks:
            errs.append((p + ("check",), f"no check named {f['check']!r}"))
        if "reason" in f:
            try:
                re.compile(str(f["reason"]))
            except re.error as e:
                errs.append((p + ("reason",), f"not a valid regular expression: {e}"))
    return errs


def load(path: str) -> Scenario | None:
    """The scenario of a topology file (already validated by topology.load), or None."""
    import yaml
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("scenario"), dict):
        return None
    s = data["scenario"]
    faults = []
    for f in s.get("faults") or []:
        kind, spec = next(iter(f.items()))
        faults.append((kind, spec))
    return Scenario(s.get("symptom", ""), s.get("cause", ""), s.get("fix", ""), faults,
                    [dict(x) for x in s.get("failing") or []])


# --------------------------------------------------------------------------- outcome

def judge(sc: Scenario, results) -> list[str]:
    """Problems with a scenario's outcome: every failing check must fail for its
    stated reason, every other check must pass. Empty = the symptom is as declared."""
    problems = []
    want = {f["check"]: f.get("reason") for f in sc.failing}
    for r in results:
        if r.name in want:
            if r.ok:
                problems.append(f"{r.name}: expected to fail (the symptom), but it passed: {r.observed}")
            elif want[r.name] and not re.search(want[r.name], r.observed + "\n" + "\n".join(r.details)):
                problems.append(f"{r.name}: failed, but not for the stated reason /{want[r.name]}/: {r.observed}")
        elif not r.ok:
            problems.append(f"{r.name}: should pass in this scenario, failed: {r.observed}")
    return problems


# --------------------------------------------------------------------------- faults

def _target_ns(plan, name: str) -> str:
    return plan.endpoints[name].netns


def _address(st, plan, name: str) -> str:
    from .build import attach_addresses
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
    from .build import BuildError
    from . import netns as nsutil
    from plugins.core import netns as cns
    fd = os.open(nsutil.path(ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        p = subprocess.run(["nft", "-f", "-"], input=text, capture_output=True, text=True, timeout=30,
                           preexec_fn=lambda: cns.setns(fd))
    finally:
        os.close(fd)
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
        from plugins.core import netns as cns
        from plugins.net import sysctl
        from . import netns as nsutil
        ns = _target_ns(self.plan, spec["in"])
        key = spec["key"].replace(".", "/")
        with cns.entered(nsutil.path(ns)):
            sysctl.write(key, str(spec["value"]))
        self.progress(f"      fault: {spec['in']}: {spec['key']} = {spec['value']}")

    def f_service(self, spec: dict) -> None:
        self.services.append(dict(spec))
        self._sync_services()
        self.progress(f"      fault: service {spec.get('name', spec['vip'])} {spec['vip']}:{spec['port']}/"
                      f"{spec.get('proto', 'tcp')} -> pod {spec['pod']} (DNAT in every node, table ip {SVC_TABLE})")

    def _sync_services(self) -> None:
        from .build import attach_addresses
        from .plan import node_ns
        addrs = attach_addresses(self.st)
        text = _svc_ruleset(self.services, addrs)
        for n in self.plan.topology.nodes:
            ns = node_ns(self.plan.lab, n)
            # a full re-sync, as kube-proxy does: replace our table, never touch conntrack
            _nft_in(ns, f"table ip {SVC_TABLE}\ndelete table ip {SVC_TABLE}\n" + text)

    def f_udp_flow(self, spec: dict) -> None:
        from . import netns as nsutil
        from .state import proc_starttime
        from plugins.core import netns as cns
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
        from .build import detach, runtime_for
        from . import netns as nsutil
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
        from .build import tx_offload_off
        tx_offload_off(res["netns"], res["ifname"])
        for itf in result.get("interfaces", []):
            if not itf.get("sandbox") and itf.get("name") and itf.get("mac"):
                tx_offload_off(res["node_ns"], itf["name"])
        new = (result.get("ips") or [{}])[0].get("address", "?")
        self.progress(f"      fault: pod {pod} replaced (DEL + ADD as {cid}): {old} -> {new}")
        from . import k8s           # Services / NetworkPolicies of the topology follow the new address
        from .build import attach_addresses
        k8s.sync(self.plan.topology, self.plan.lab, attach_addresses(self.st), st=self.st, record=self.record,
                 progress=self.progress)
        if any(s["pod"] == pod for s in self.services):
            self._sync_services()
            self.progress(f"      fault: services re-pointed to {new.split('/')[0]}; conntrack left as it is")


def apply(plan, st, *, record, update, progress=print) -> Scenario | None:
    """Apply the scenario of the plan's topology file, if it has one."""
    path = getattr(plan.topology, "path", "")
    if not path or path.startswith("<"):
        return None
    sc = load(path)
    if sc is None or not sc.faults:
        return sc
    progress(f"      scenario: applying {len(sc.faults)} fault(s)")
    Applier(plan, st, record, update, progress).apply(sc)
    st.set(scenario={"symptom": sc.symptom, "cause": sc.cause, "faults": len(sc.faults)})
    return sc
