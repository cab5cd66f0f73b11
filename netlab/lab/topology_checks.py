"""The ``checks`` section of a topology file: one parser per check type.

``CHECK_KINDS`` is the table: a check type -> the keys it accepts (besides
``type``, ``name`` and ``expect``) and the function that reads them. Only keys
a check reads are accepted: anything else is an error, never ignored. Each
parser returns the check's params and its default name; ``parse_check`` does
what is common (the type, unknown keys, targets that exist).

Called by netlab.lab.topology's ``checks`` section. Imports netlab.lab.schema
and the feature modules whose checks these are (k8s, bgp, impair, units).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..base.units import parse_rate
from .schema import Context, Obj, check_dns_name, check_ip, typename

PROTOS = ("icmp", "tcp", "udp")
TARGET_HELP = "a pod name, node name, 'ext' (client outside the nodes) or 'dns'"


@dataclass
class Check:
    type: str
    index: int
    name: str
    params: dict[str, Any]


class CheckReader:
    """One check being read: its mapping (``o``), its ``expect``, and what it may name."""

    def __init__(self, ctx: Context, c: dict, p: tuple, o: Obj, lab: Any, targets: set) -> None:
        self.ctx, self.c, self.p, self.o, self.lab, self.targets = ctx, c, p, o, lab, targets
        self.pods, self.nodes = lab.pods, lab.nodes
        self.exp = c.get("expect")

    def target(self, key: str, required: bool = True, default: str | None = None) -> str | None:
        v = self.o.get(key, str, default, required=required)
        if v is not None and v not in self.targets:
            self.ctx.err(self.p + (key,), f"unknown target {v!r}: {TARGET_HELP}")
        return v

    def podref(self, key: str, required: bool = True, need_ip: bool = False) -> str | None:
        v = self.o.get(key, str, None, required=required)
        if v is not None:
            if v not in self.pods:
                self.ctx.err(self.p + (key,), f"unknown pod {v!r}")
            elif need_ip and self.pods[v].mode in ("none",):
                self.ctx.err(self.p + (key,), f"pod {v} (mode none) has no address")
        return v

    def pass_fail(self, exp: Any, more: str = "") -> Any:
        """``expect: pass`` (the default) or ``fail``."""
        exp = "pass" if exp is None else exp
        if exp not in ("pass", "fail"):
            self.ctx.err(self.p + ("expect",), f"must be pass{', fail' if more else ' or fail'}{more}, got {exp!r}")
        return exp


# --------------------------------------------------------------------------- one parser per type

def _reach(r: CheckReader, params: dict) -> str:
    o, p = r.o, r.p
    params["from"] = r.target("from")
    params["to"] = r.target("to")
    params["proto"] = o.get("proto", str, "icmp", check=lambda v: None if v in PROTOS else f"must be icmp, tcp or udp, got {v!r}")
    params["port"] = o.int("port", 8080 if params["proto"] != "icmp" else None, 1, 65535)
    params["count"] = o.int("count", 1, 1, 1000)
    params["timeout"] = o.int("timeout", 2, 1, 30)
    params["listen"] = o.get("listen", bool, True)
    params["size"] = o.int("size", None, 0, 65000)
    exp = r.exp
    if isinstance(exp, dict):
        exp = _loss_expect(r.ctx, exp, p + ("expect",), params)
    else:
        exp = r.pass_fail(exp, more=" or {loss: PERCENT, tolerance: PERCENT}")
    if params["size"] is not None and params["proto"] != "icmp":
        r.ctx.err(p + ("size",), "size is the ICMP data size (like ping -s): only with proto icmp")
    params["expect"] = exp
    if params["to"] in r.pods and r.pods[params["to"]].mode == "none" and exp == "pass":
        r.ctx.err(p + ("to",), f"pod {params['to']} (mode none) has no address to reach")
    return (f"reach {params['from']} -> {params['to']} {params['proto']}"
            + (f" IPv{params['family']}" if params.get("family") else ""))


def _mtu(r: CheckReader, params: dict) -> str:
    o, p = r.o, r.p
    params["from"] = r.podref("from")
    params["to"] = r.target("to")
    params["min"] = o.int("min", None, 68, 9000)      # default: 1200, or 1280 (the IPv6 minimum) over IPv6
    if params.get("family") == 6 and params["min"] is not None and params["min"] < 1280:
        r.ctx.err(p + ("min",), "IPv6 links have an MTU of at least 1280: min below it probes nothing")
    params["max"] = o.int("max", 1500, 68, 9000)
    params["timeout"] = o.int("timeout", 1, 1, 10)
    eo = Obj(r.ctx, r.exp, p + ("expect",), ("mtu", "blackhole"))
    params["expect"] = {"mtu": eo.int("mtu", None, 1280 if params.get("family") == 6 else 68, 9000,
                                      required=True),
                        "blackhole": eo.get("blackhole", bool, False)}
    return f"mtu {params['from']} -> {params['to']}"


DNS_SENDING = ("parallel", "single-request", "single-request-reopen")


def _dns(r: CheckReader, params: dict) -> str:
    o, p, ctx = r.o, r.p, r.ctx
    params["pod"] = r.podref("pod")
    params["query"] = o.get("query", str, None, required=True, check=check_dns_name)
    params["timeout"] = o.int("timeout", 5, 1, 30)
    params["lookup"] = o.get("lookup", str, "ahostsv4", check=lambda v: None if v in ("ahostsv4", "ahostsv6", "ahosts")
                             else f"must be ahostsv4 (A only), ahostsv6 (AAAA only) or ahosts (both), got {v!r}")
    eo = Obj(ctx, r.exp, p + ("expect",), ("queries", "count", "answer", "sequence", "sending", "unanswered"))
    qs = eo.get("queries", list, None)

    def typed(key):
        v = eo.get(key, list, None)
        if v is None:
            return None
        out = []
        for j, x in enumerate(v):
            parts = str(x).split()
            if len(parts) != 2 or parts[0] not in ("A", "AAAA"):
                ctx.err(p + ("expect", key, j), f"must be 'A NAME' or 'AAAA NAME', got {x!r}")
                continue
            out.append(f"{parts[0]} {parts[1].rstrip('.')}")
        return out
    params["expect"] = {"queries": [str(q).rstrip(".") for q in qs] if qs is not None else None,
                        "count": eo.int("count", None, 0, 50),
                        "answer": eo.get("answer", str, None, check=lambda v: None if v == "none" else check_ip(v)),
                        "sequence": typed("sequence"),
                        "sending": eo.get("sending", str, None, check=lambda v: None if v in DNS_SENDING else
                                          f"must be parallel, single-request or single-request-reopen, got {v!r}"),
                        "unanswered": typed("unanswered")}
    if params["expect"]["sending"] and params["lookup"] != "ahosts":
        ctx.err(p + ("expect", "sending"), "only lookup: ahosts sends A and AAAA queries")
    if all(v is None for v in params["expect"].values()):
        ctx.err(p + ("expect",), "give at least one of queries, count, answer, sequence, sending, unanswered")
    if params["pod"] in r.pods and not r.lab.dns.enabled and not r.pods[params["pod"]].dns.nameservers:
        ctx.err(p + ("pod",), "the lab has no DNS server (dns.enabled is false)")
    return f"dns {params['pod']} {params['query']}"


def _port(r: CheckReader, params: dict) -> str:
    o, p = r.o, r.p
    params["from"] = r.target("from", required=False, default="ext")
    params["pod"] = r.podref("pod")
    params["hostPort"] = o.int("hostPort", None, 1, 65535, required=True)
    params["proto"] = o.get("proto", str, "tcp", check=lambda v: None if v in ("tcp", "udp") else f"must be tcp or udp, got {v!r}")
    params["timeout"] = o.int("timeout", 3, 1, 30)
    pod = r.pods.get(params["pod"])
    if pod and params["hostPort"] and not any(pm.host_port == params["hostPort"] and pm.protocol == params["proto"]
                                              for pm in pod.ports):
        r.ctx.err(p + ("hostPort",), f"pod {pod.name} has no {params['proto']} mapping for host port {params['hostPort']}")
    params["expect"] = r.pass_fail(r.exp)
    return f"port {params['from']} -> {params['pod']} via hostPort {params['hostPort']}/{params['proto']}"


def _bandwidth(r: CheckReader, params: dict) -> str:
    o, p = r.o, r.p
    params["from"] = r.podref("from")
    params["to"] = r.podref("to")
    params["seconds"] = o.int("seconds", 2, 1, 30)
    try:
        params["rate"] = parse_rate(r.c["rate"]) if r.c.get("rate") is not None else None
    except ValueError as e:
        r.ctx.err(p + ("rate",), str(e))
    tol = o.get("tolerance", (float, int), 0.15, check=lambda v: None if 0 < v < 1 else "must be between 0 and 1 (a fraction)")
    params["tolerance"] = float(tol)
    if params.get("rate") is None:
        # the limit of the shaped end: ingress of the receiver, else egress of the sender
        rcv, snd = r.pods.get(params["to"]), r.pods.get(params["from"])
        lim = min([x for x in ((rcv.bandwidth.ingress_rate if rcv and rcv.bandwidth else 0),
                              (snd.bandwidth.egress_rate if snd and snd.bandwidth else 0)) if x] or [0])
        if not lim and rcv and snd:
            r.ctx.err(p + ("rate",), f"neither {snd.name} (egress) nor {rcv.name} (ingress) is shaped: give rate")
        params["rate"] = lim
    return f"bandwidth {params['from']} -> {params['to']}"


def _throughput(r: CheckReader, params: dict) -> str:          # netlab/checks/throughput.py
    o, p = r.o, r.p
    params["from"] = r.podref("from", need_ip=True)
    params["to"] = r.podref("to", need_ip=True)
    params["streams"] = o.int("streams", 1, 1, 32)
    params["seconds"] = o.int("seconds", 3, 1, 60)
    params["min"] = 0
    if r.exp is not None:
        eo = Obj(r.ctx, r.exp, p + ("expect",), ("min",))
        m = eo.get("min", (str, int), None, required=True)
        try:
            params["min"] = parse_rate(m[:-2] if isinstance(m, str) and m.endswith("/s") else m)
        except ValueError as e:
            r.ctx.err(p + ("expect", "min"), str(e).replace("10mbit", "'100 Mbit/s'"))
    params["expect"] = "measured"
    return (f"throughput {params['from']} -> {params['to']}"
            + (f" x{params['streams']}" if params["streams"] > 1 else ""))


def _capture(r: CheckReader, params: dict) -> str:
    o, p, ctx, exp = r.o, r.p, r.ctx, r.exp
    on = o.get("at", str, None, required=True)
    if on is not None:
        tgt = on.split(":", 1)[0]
        if tgt not in r.targets and tgt != "underlay":
            ctx.err(p + ("at",), f"unknown target {tgt!r}: 'underlay', {TARGET_HELP}, optionally :IFACE")
    params["at"] = on
    params["filter"] = o.get("filter", str, "")
    params["in"] = r.target("in", required=False, default=None)
    run = o.get("run", (str, list), None, required=True)
    params["run"] = run.split() if isinstance(run, str) else [str(x) for x in (run or [])]
    if run is not None and params["in"] is None:
        ctx.err(p + ("in",), "is required with run: where the command runs")
    params["timeout"] = o.int("timeout", 10, 1, 60)
    params["count"] = o.int("count", 200, 1, 100000)
    # one expectation, or a list that must all hold: e.g. "VXLAN carried the pings"
    # (min >= 1: the evidence) and "none of it was ARP" (max: 0) in the same capture
    exps = exp if isinstance(exp, list) and exp else [exp]
    params["expect"] = []
    for k, one in enumerate(exps):
        ep = p + (("expect", k) if isinstance(exp, list) else ("expect",))
        eo = Obj(ctx, one, ep, ("layer", "fields", "min", "max"))
        mx = eo.int("max", None, 0)
        e1 = {"layer": eo.get("layer", str, None), "fields": eo.get("fields", dict, {}),
              "min": eo.int("min", 1 if mx is None else 0, 0), "max": mx}   # max alone: 0..max
        if e1["min"] == 0 and e1["max"] is None:
            ctx.err(ep + ("min",), "min: 0 without max accepts any capture, so the check could never "
                    "fail: give min >= 1, or max (e.g. max: 0 for 'no such packet')")
        params["expect"].append(e1)
    if not isinstance(exp, list):
        params["expect"] = params["expect"][0]
    return f"capture at {on}"


def _bgp(r: CheckReader, params: dict) -> str:
    from ..features.bgp import check_params
    params.update(check_params(r.o, r.ctx.err, r.nodes, r.exp))
    return f"bgp on {params['node']}"


@dataclass(frozen=True)
class CheckKind:
    keys: tuple[str, ...]                          # besides type, name and expect
    parse: Callable[[CheckReader, dict], str] | None   # None: a feature module's (netlab.features.k8s)
    expect: bool = True                            # takes an expect key


CHECK_KINDS: dict[str, CheckKind] = {
    "reach": CheckKind(("from", "to", "proto", "port", "count", "timeout", "listen", "size", "family"), _reach),
    "mtu": CheckKind(("from", "to", "min", "max", "timeout", "family"), _mtu),
    "dns": CheckKind(("pod", "query", "timeout", "lookup"), _dns),
    "port": CheckKind(("from", "pod", "hostPort", "proto", "timeout", "family"), _port),
    "bandwidth": CheckKind(("from", "to", "rate", "tolerance", "seconds"), _bandwidth, expect=False),
    "capture": CheckKind(("at", "filter", "run", "in", "timeout", "count"), _capture),
    "service": CheckKind((), None),     # keys: netlab.features.k8s.CHECK_KEYS
    "policy": CheckKind((), None),
    "bgp": CheckKind(("node", "peers", "learned", "timeout"), _bgp),
    "throughput": CheckKind(("from", "to", "streams", "seconds"), _throughput),
}
CHECK_TYPES = tuple(CHECK_KINDS)


def parse_check(ctx: Context, c: Any, p: tuple, j: int, lab: Any) -> Check | None:
    """One entry of ``checks``; ``lab`` has the sections above it (nodes, pods, dns, external, k8s)."""
    if not isinstance(c, dict):
        ctx.err(p, f"a check must be a mapping, got {typename(c)}")
        return None
    ctype = c.get("type")
    if not isinstance(ctype, str) or ctype not in CHECK_KINDS:
        ctx.err(p + ("type",), f"must be one of {', '.join(CHECK_TYPES)}, got {ctype!r}")
        return None
    kind = CHECK_KINDS[ctype]
    common = ("type", "name") + (("expect",) if kind.expect else ())
    targets = (set(lab.nodes) | set(lab.pods) | ({"ext"} if lab.external else set())
               | ({"dns"} if lab.dns.enabled else set()))
    if kind.parse is None:
        from ..features.k8s import CHECK_KEYS, check_params
        params, name = check_params(ctx, c, p, ctype, Obj(ctx, c, p, common + CHECK_KEYS[ctype]),
                                    lab.pods, lab.nodes, targets, lab.k8s)
        return Check(ctype, j, name, params) if params is not None else None
    if not kind.expect and "expect" in c:
        ctx.err(p + ("expect",), "a bandwidth check takes no expect: it passes when the measured rate is "
                "within tolerance of rate (give rate and tolerance)")
        c = {k: v for k, v in c.items() if k != "expect"}
    o = Obj(ctx, c, p, common + kind.keys)
    r = CheckReader(ctx, c, p, o, lab, targets)
    name = o.get("name", str, None)
    params: dict[str, Any] = {}
    if "family" in kind.keys:     # IPv4 or IPv6 (reach: both by default, where both exist)
        params["family"] = o.get("family", int, None, check=lambda v: None if v in (4, 6) else f"must be 4 or 6, got {v!r}")
    default_name = kind.parse(r, params)
    return Check(ctype, j, name or default_name, params)


def _loss_expect(ctx: Context, exp: dict, path: tuple, params: dict) -> dict:
    """reach ``expect: {loss: 5%, tolerance: 3%}``: the share of probes that go unanswered."""
    from ..features.impair import parse_percent
    eo = Obj(ctx, exp, path, ("loss", "tolerance"))
    out: dict[str, float] = {}
    for k in ("loss", "tolerance"):
        if not eo.has(k):
            if k == "loss":
                ctx.err(path + (k,), "is required")
            continue
        try:
            out[k] = parse_percent(eo.data[k])
        except ValueError as e:
            ctx.err(path + (k,), str(e))
    if params.get("proto") != "icmp":
        ctx.err(path, "a loss is measured with ICMP echo: proto must be icmp")
    if "loss" in out and "tolerance" not in out:
        # three standard deviations of the share lost in `count` tries, plus one probe
        n = params.get("count") or 1
        p_ = out["loss"] / 100
        out["tolerance"] = round(100 * (3 * (p_ * (1 - p_) / n) ** 0.5 + 1 / n), 2)
    return out
