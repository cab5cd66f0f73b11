"""reach: FROM reaches TO (icmp, tcp or udp), expected to pass or fail.

Evidence: captures at every point of the path (source, its node, the
underlay, the destination's node, the destination; see checks/path.py). A
pass must show the probe arriving at the destination. A fail must show the
probe leaving the source (or the source's own kernel refusing it: no
route), and says where it stopped: the last point that saw it. A probe that
never left proves nothing, so such a "fail" is a failed check.
"""
from __future__ import annotations

import contextlib

from .common import CheckResult, Context, Server, client, families_between, ping
from .path import PathCapture


def _bpf(proto: str, dst: str, port: int | None) -> str:
    f = f"host {dst}"
    if proto == "icmp":
        return f"{'icmp6' if ':' in dst else 'icmp'} and {f}"
    return f"{proto} port {port} and {f}"


def probe_matcher(proto: str, dst: str, port: int | None):
    """Is this (innermost) IP header the probe's request? Replies do not count."""
    import ipaddress
    want = ipaddress.ip_address(dst)

    def match(ip) -> bool:
        try:
            if ipaddress.ip_address(ip.dst) != want:
                return False
        except ValueError:
            return False
        if proto == "icmp":
            if want.version == 6:
                return ip.haslayer("ICMPv6EchoRequest")
            return ip.haslayer("ICMP") and ip["ICMP"].type == 8
        layer = proto.upper()
        return ip.haslayer(layer) and ip[layer].dport == port
    return match


def judge_fail(ev, observed_ok: bool) -> tuple[bool, str]:
    """(good, why) for a check that expects the probe not to get through."""
    if observed_ok:
        return False, "it got through"
    if ev.left_source or ev.refused_at_source:
        return True, ev.stopped()
    return False, f"{ev.stopped()}: a probe that never left proves nothing"


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    if isinstance(p["expect"], dict):          # expect: {loss, tolerance}: measured on the wire
        from .traffic.loss import run as run_loss
        return run_loss(ctx, check)
    src, dst = ctx.target(p["from"]), ctx.target(p["to"])
    fams = families_between(src, dst, p.get("family"))
    if len(fams) <= 1:
        return _run_family(ctx, check, src.at(fams[0] if fams else None), dst.at(fams[0] if fams else None), "")
    # both families: one probe (and one set of captures) per family; all must hold
    parts = [_run_family(ctx, check, src.at(f), dst.at(f), "" if i == 0 else f"-ipv{f}", f"IPv{f}")
             for i, f in enumerate(fams)]
    return CheckResult(check.name, "reach", all(r.ok for r in parts), p["expect"],
                       "; ".join(f"IPv{f} {r.observed}" for f, r in zip(fams, parts)), parts[0].evidence,
                       [d for f, r in zip(fams, parts) for d in [f"IPv{f}:"] + r.details + [f"evidence {r.evidence}"]])


def _run_family(ctx: Context, check, src, dst, suffix: str, label: str = "") -> CheckResult:
    p = check.params
    if not dst.address:
        fam = f" IPv{p['family']}" if p.get("family") else ""
        return CheckResult(check.name, "reach", p["expect"] == "fail", p["expect"], f"{dst.name} has no{fam} address")
    port = None if p["proto"] == "icmp" else p["port"]
    path = PathCapture(ctx, check, src, dst, _bpf(p["proto"], dst.address, port),
                       probe_matcher(p["proto"], dst.address, port), suffix=suffix)
    if p["proto"] == "icmp":
        def probe():
            r = ping(src.ns, dst.address, count=p["count"], timeout=p["timeout"], size=p.get("size"))
            return r.returncode == 0, (r.stdout.strip().splitlines() or [r.stderr.strip()])[-1]
        with path:
            ok, text = probe()
    else:
        # listen: false probes whatever is (not) there instead of our responder
        with (Server(dst.ns, p["proto"], p["port"], "::" if ":" in dst.address else "0.0.0.0")
              if p.get("listen", True) else contextlib.nullcontext()):
            with path:
                ok, text = client(src.ns, p["proto"], dst.address, p["port"], p["timeout"])
    ev = path.evidence()
    reqs = ev.count(path.dst_label)
    seen = f"{reqs} request(s) seen at {dst.name}"
    observed = "pass" if ok else "fail"
    if p["expect"] == "pass":
        good = ok and reqs > 0
        if ok and not reqs:
            seen += " (a pass the capture cannot confirm)"
    else:
        good, why = judge_fail(ev, ok)
        seen += f"; {why}"
    return CheckResult(check.name, "reach", good, p["expect"],
                       f"{observed}: {text}; {seen}", path.pcaps[path.dst_label],
                       [f"{src.name} ({src.address}) -> {dst.name} ({dst.address}) {p['proto']}"
                        + (f"/{p['port']}" if p['proto'] != 'icmp' else ""),
                        f"path: {ev.describe()}"])
