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
read once), ``judge`` compares check results with ``failing``. It imports
nothing of netlab. Applying the faults is netlab.lab.faults.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

FAULT_KINDS = ("sysctl", "service", "udp-flow", "replace", "wait", "filter", "route-del", "address", "drop-dns", "link-down")
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
                 "udp-flow": ("from", "to", "port", "sport", "interval"), "replace": ("pod",),
                 "link-down": ("node",),
                 "filter": ("in", "hook", "rule"), "route-del": ("in", "dst", "family"),
                 "address": ("in", "dev", "address", "dad", "again"), "drop-dns": ("in", "qtype", "name")}[kind]
        for k in spec:
            if k not in known:
                errs.append((p + (kind, k), f"unknown key (known: {', '.join(known)})"))
        for k in known:
            if k in ("targetPort", "interval", "name", "proto", "family", "dad", "again") or (kind == "udp-flow" and k == "sport"):
                if not (kind == "drop-dns" and k == "name"):
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
        elif kind == "link-down":        # netlab/loadbalancer.py: a node cut off the underlay
            if spec.get("node") is not None and spec["node"] not in nodes:
                errs.append((p + (kind, "node"), f"unknown node {spec['node']!r}"))
        elif kind == "filter":
            tgt("in")
            if spec.get("hook") not in HOOKS:
                errs.append((p + (kind, "hook"), f"must be one of {', '.join(HOOKS)}"))
            if not isinstance(spec.get("rule", ""), str) or ";" in str(spec.get("rule", "")) or "}" in str(spec.get("rule", "")):
                errs.append((p + (kind, "rule"), "must be one nftables rule (no ';' or '}')"))
        elif kind == "route-del":
            tgt("in")
            if spec.get("family", 4) not in (4, 6):
                errs.append((p + (kind, "family"), "must be 4 or 6"))
            if not isinstance(spec.get("dst", ""), str):
                errs.append((p + (kind, "dst"), "must be 'default' or a CIDR"))
        elif kind == "address":
            tgt("in")
            try:
                ipaddress.ip_interface(str(spec.get("address", "")))
            except ValueError:
                errs.append((p + (kind, "address"), f"{spec.get('address')!r} is not an ADDRESS/PREFIX"))
            for k in ("dad", "again"):
                if not isinstance(spec.get(k, True), bool):
                    errs.append((p + (kind, k), "must be true or false"))
        elif kind == "drop-dns":
            tgt("in")
            if spec.get("qtype") not in ("A", "AAAA"):
                errs.append((p + (kind, "qtype"), "must be A or AAAA"))
            if "name" in spec and (not isinstance(spec["name"], str) or not spec["name"].strip(".")):
                errs.append((p + (kind, "name"), "must be the DNS name whose queries are dropped"))
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
