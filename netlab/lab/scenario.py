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
        - link-down: {node: node1}   # its switch port down (netlab/loadbalancer.py)
        - filter: {in: node1, hook: output, rule: "icmpv6 type packet-too-big drop"}
        - route-del: {in: client, dst: default, family: 6}
        - address: {in: imposter, dev: eth0, address: "fd00:10:244::10/64", dad: false}
        - address: {in: web, dev: eth0, address: "fd00:10:244::10/64", again: true}
        - drop-dns: {in: node2, qtype: AAAA, name: web.default.svc.cluster.local}
      failing:                # the symptom, as checks that must fail ...
        - {check: "client -> web", reason: "fail: .*timed out"}   # ... and why (a regex on 'got')

Many faults need no fault at all: a conflist with ``hairpinMode: false`` or an
MTU that does not fit is just configuration. ``faults`` covers what a
topology cannot say: state changed after the plugins ran (a sysctl turned
off, a pod replaced), traffic that is already flowing, and a kube-proxy
stand-in (``service``: a DNAT from a virtual IP to a pod, in every node, in
our own table ``ip cnilab-svc``; on ``replace`` it is re-pointed to the new
pod address the way kube-proxy re-syncs, *without* touching conntrack).

This module is the schema and the judge: ``parse`` is called by
``netlab.lab.topology`` for the ``scenario`` section (every error at once,
before anything is built; the result is ``Topology.scenario``, so the file is
read once; ``FAULTS`` is the table of fault kinds: their keys and one small
check each), ``judge`` compares check results with ``failing``. It imports
nothing of netlab. Applying the faults is netlab.lab.faults.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

FAULT_TABLE = "cnilab-fault"     # inet table of the filter / drop-dns faults, in the target namespace
HOOKS = ("input", "forward", "output")
SCENARIO_KEYS = ("symptom", "cause", "fix", "faults", "failing")
SVC_TABLE = "cnilab-svc"


class Fault(NamedTuple):
    """One entry of ``faults``: its kind and its settings as written (``wait``: the seconds)."""
    kind: str
    spec: Any


class Failing(NamedTuple):
    """One entry of ``failing``: a check that must fail, and why (a regex on what it observed)."""
    check: str
    reason: str | None = None


@dataclass
class Scenario:
    symptom: str = ""
    cause: str = ""
    fix: str = ""
    faults: list[Fault] = field(default_factory=list)
    failing: list[Failing] = field(default_factory=list)


# --------------------------------------------------------------------------- validation

class FaultReader:
    """One fault being validated: its kind, settings and place, what it may name, the problems found."""

    def __init__(self, errs: list, p: tuple, kind: str, spec: dict, nodes: dict, pods: dict) -> None:
        self.errs, self.p, self.kind, self.spec, self.nodes, self.pods = errs, p, kind, spec, nodes, pods
        self.targets = set(nodes) | set(pods) | {"ext", "dns"}

    def err(self, key: str, msg: str) -> None:
        self.errs.append((self.p + (self.kind, key), msg))

    def target(self, key: str, only_pods: bool = False) -> None:
        v = self.spec.get(key)
        if v is None:
            return
        pool = set(self.pods) if only_pods else self.targets
        if not isinstance(v, str) or v not in pool:
            self.err(key, f"unknown {'pod' if only_pods else 'target'} {v!r}")

    def port(self, key: str) -> None:
        v = self.spec.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65535):
            self.err(key, "must be a port number 1-65535")

    def ip4(self, key: str) -> None:
        v = self.spec.get(key)
        if v is None:
            return
        try:
            ipaddress.IPv4Address(v)
        except (ValueError, TypeError):
            self.err(key, f"{v!r} is not an IPv4 address")

    def pod(self, key: str) -> Any:
        """The pod named by ``key``, if it exists."""
        v = self.spec.get(key)
        return self.pods.get(v) if isinstance(v, str) else None


def _sysctl(f: FaultReader) -> None:
    f.target("in")
    key = f.spec.get("key")
    if "key" in f.spec and not (isinstance(key, str) and re.fullmatch(r"net[./][A-Za-z0-9_./-]+", key)):
        f.err("key", "must be a net.* sysctl key")


def _service(f: FaultReader) -> None:
    f.ip4("vip")
    f.port("port")
    f.port("targetPort")
    f.target("pod", only_pods=True)
    if f.spec.get("proto", "tcp") not in ("tcp", "udp"):
        f.err("proto", "must be tcp or udp")


def _udp_flow(f: FaultReader) -> None:
    f.target("from")
    v = f.spec.get("to")
    if v is not None and not (isinstance(v, str) and v in f.targets):
        f.ip4("to")
    f.port("port")
    f.port("sport")
    iv = f.spec.get("interval", 0.2)
    if not isinstance(iv, (int, float)) or isinstance(iv, bool) or not 0.01 <= iv <= 10:
        f.err("interval", "must be seconds between 0.01 and 10")


def _replace(f: FaultReader) -> None:
    f.target("pod", only_pods=True)
    pod = f.pod("pod")
    if pod is not None and pod.mode not in ("bridge", "overlay"):
        f.err("pod", "only a pod with its own network attachment can be replaced")
    elif pod is not None and pod.ip:
        f.err("pod", "a pod with a requested ip would get the same address back; drop its ip to see a replacement")


def _link_down(f: FaultReader) -> None:        # netlab/features/loadbalancer.py: a node cut off the underlay
    node = f.spec.get("node")
    if node is not None and not (isinstance(node, str) and node in f.nodes):
        f.err("node", f"unknown node {node!r}")


def _filter(f: FaultReader) -> None:
    f.target("in")
    if f.spec.get("hook") not in HOOKS:
        f.err("hook", f"must be one of {', '.join(HOOKS)}")
    rule = f.spec.get("rule", "")
    if not isinstance(rule, str) or ";" in rule or "}" in rule:
        f.err("rule", "must be one nftables rule (no ';' or '}')")


def _route_del(f: FaultReader) -> None:
    f.target("in")
    if f.spec.get("family", 4) not in (4, 6):
        f.err("family", "must be 4 or 6")
    if not isinstance(f.spec.get("dst", ""), str):
        f.err("dst", "must be 'default' or a CIDR")


def _address(f: FaultReader) -> None:
    f.target("in")
    try:
        ipaddress.ip_interface(str(f.spec.get("address", "")))
    except ValueError:
        f.err("address", f"{f.spec.get('address')!r} is not an ADDRESS/PREFIX")
    for k in ("dad", "again"):
        if not isinstance(f.spec.get(k, True), bool):
            f.err(k, "must be true or false")


def _drop_dns(f: FaultReader) -> None:
    f.target("in")
    if f.spec.get("qtype") not in ("A", "AAAA"):
        f.err("qtype", "must be A or AAAA")
    name = f.spec.get("name")
    if "name" in f.spec and (not isinstance(name, str) or not name.strip(".")):
        f.err("name", "must be the DNS name whose queries are dropped")


@dataclass(frozen=True)
class FaultKind:
    keys: tuple[str, ...]          # the keys of its mapping ...
    optional: tuple[str, ...]      # ... of which these may be left out
    check: Callable[[FaultReader], None]


FAULTS: dict[str, FaultKind] = {
    "sysctl": FaultKind(("in", "key", "value"), (), _sysctl),
    "service": FaultKind(("name", "vip", "port", "proto", "pod", "targetPort"), ("name", "proto", "targetPort"), _service),
    "udp-flow": FaultKind(("from", "to", "port", "sport", "interval"), ("sport", "interval"), _udp_flow),
    "replace": FaultKind(("pod",), (), _replace),
    "wait": FaultKind((), (), lambda f: None),      # not a mapping: seconds (checked in validate)
    "filter": FaultKind(("in", "hook", "rule"), (), _filter),
    "route-del": FaultKind(("in", "dst", "family"), ("family",), _route_del),
    "address": FaultKind(("in", "dev", "address", "dad", "again"), ("dad", "again"), _address),
    "drop-dns": FaultKind(("in", "qtype", "name"), (), _drop_dns),
    "link-down": FaultKind(("node",), (), _link_down),
}
FAULT_KINDS = tuple(FAULTS)


def _fault(errs: list, p: tuple, f: Any, nodes: dict, pods: dict) -> None:
    """One entry of ``faults``: a mapping with one key, the fault's kind."""
    if not isinstance(f, dict) or len(f) != 1:
        errs.append((p, f"each fault is a mapping with one key: {', '.join(FAULT_KINDS)}"))
        return
    kind, spec = next(iter(f.items()))
    if kind not in FAULTS:
        errs.append((p + (kind,), f"unknown fault (known: {', '.join(FAULT_KINDS)})"))
        return
    if kind == "wait":
        if not isinstance(spec, (int, float)) or isinstance(spec, bool) or not 0 <= spec <= 30:
            errs.append((p + (kind,), "must be a number of seconds between 0 and 30"))
        return
    if not isinstance(spec, dict):
        errs.append((p + (kind,), "must be a mapping"))
        return
    fk = FAULTS[kind]
    for k in spec:
        if k not in fk.keys:
            errs.append((p + (kind, k), f"unknown key (known: {', '.join(fk.keys)})"))
    for k in fk.keys:
        if k not in fk.optional and k not in spec:
            errs.append((p + (kind, k), "is required"))
    fk.check(FaultReader(errs, p, kind, spec, nodes, pods))


def _failing(errs: list, p: tuple, f: Any, checks: list[str]) -> None:
    """One entry of ``failing``: {check, reason}."""
    if not isinstance(f, dict) or "check" not in f:
        errs.append((p, "must be a mapping with check (a check name) and reason (a regex)"))
        return
    for k in f:
        if k not in ("check", "reason"):
            errs.append((p + (k,), "unknown key (known: check, reason)"))
    if not isinstance(f["check"], str) or f["check"] not in checks:
        errs.append((p + ("check",), f"no check named {f['check']!r}"))
    if "reason" in f:
        try:
            re.compile(str(f["reason"]))
        except re.error as e:
            errs.append((p + ("reason",), f"not a valid regular expression: {e}"))


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
    faults = data.get("faults") or []
    if not isinstance(faults, list):
        errs.append((("faults",), "must be a list"))
        faults = []
    for i, f in enumerate(faults):
        _fault(errs, ("faults", i), f, nodes, pods)
    failing = data.get("failing") or []
    if not isinstance(failing, list):
        errs.append((("failing",), "must be a list of {check, reason}"))
        failing = []
    for i, f in enumerate(failing):
        _failing(errs, ("failing", i), f, checks)
    return errs


def parse(data: Any, nodes: dict, pods: dict, checks: list[str]) -> tuple[Scenario | None, list[tuple[tuple, str]]]:
    """The ``scenario`` section as typed objects, and its problems (path below 'scenario',
    message); the Scenario is None when there is any problem."""
    errs = validate(data, nodes, pods, checks)
    if errs:
        return None, errs
    faults = [Fault(*next(iter(f.items()))) for f in data.get("faults") or []]
    failing = [Failing(f["check"], f.get("reason")) for f in data.get("failing") or []]
    return Scenario(data.get("symptom", ""), data.get("cause", ""), data.get("fix", ""), faults, failing), []


# --------------------------------------------------------------------------- outcome

def judge(sc: Scenario, results) -> list[str]:
    """Problems with a scenario's outcome: every failing check must fail for its
    stated reason, every other check must pass. Empty = the symptom is as declared."""
    problems = []
    want = {f.check: f.reason for f in sc.failing}
    for r in results:
        if r.name in want:
            if r.ok:
                problems.append(f"{r.name}: expected to fail (the symptom), but it passed: {r.observed}")
            elif want[r.name] and not re.search(want[r.name], r.observed + "\n" + "\n".join(r.details)):
                problems.append(f"{r.name}: failed, but not for the stated reason /{want[r.name]}/: {r.observed}")
        elif not r.ok:
            problems.append(f"{r.name}: should pass in this scenario, failed: {r.observed}")
    return problems
