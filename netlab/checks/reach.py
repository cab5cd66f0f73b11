"""reach: FROM reaches TO (icmp, tcp or udp), expected to pass or fail.

Evidence: a capture at the destination; a pass must show the probe arriving
there, a fail is explained by what the capture saw (nothing, or requests
without answers)."""
from __future__ import annotations

from .common import CheckResult, Context, Server, captured, client, ping


def _bpf(proto: str, src: str | None, dst: str, port: int | None) -> str:
    f = f"host {dst}"
    if proto == "icmp":
        return f"icmp and {f}"
    return f"{proto} port {port} and {f}"


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    if isinstance(p["expect"], dict):          # expect: {loss, tolerance}: measured on the wire
        from .loss import run as run_loss
        return run_loss(ctx, check)
    src, dst = ctx.target(p["from"]), ctx.target(p["to"])
    if not dst.address:
        return CheckResult(check.name, "reach", p["expect"] == "fail", p["expect"], f"{dst.name} has no address")
    pcap = ctx.pcap(check)
    cap_iface = "any" if dst.kind in ("node", "host", "ext", "dns") else dst.iface
    if p["proto"] == "icmp":
        def probe():
            r = ping(src.ns, dst.address, count=p["count"], timeout=p["timeout"], size=p.get("size"))
            return r.returncode == 0, (r.stdout.strip().splitlines() or [r.stderr.strip()])[-1]
        (ok, text), pkts = captured(dst.ns, cap_iface, _bpf("icmp", None, dst.address, None), pcap, probe)
        reqs = [x for x in pkts if x.haslayer("ICMP") and x["ICMP"].type == 8 and x["IP"].dst == dst.address]
    else:
        import contextlib
        # listen: false probes whatever is (not) there instead of our responder
        with (Server(dst.ns, p["proto"], p["port"]) if p.get("listen", True) else contextlib.nullcontext()):
            (ok, text), pkts = captured(dst.ns, cap_iface, _bpf(p["proto"], None, dst.address, p["port"]), pcap,
                                        lambda: client(src.ns, p["proto"], dst.address, p["port"], p["timeout"]))
        layer = p["proto"].upper()
        reqs = [x for x in pkts if x.haslayer(layer) and x["IP"].dst == dst.address and x[layer].dport == p["port"]]
    seen = f"{len(reqs)} request(s) seen at {dst.name}"
    observed = ("pass" if ok else "fail")
    good = observed == p["expect"]
    if ok and not reqs:
        good = False
        seen += " (a pass the capture cannot confirm)"
    return CheckResult(check.name, "reach", good, p["expect"],
                       f"{observed}: {text}; {seen}", pcap,
                       [f"{src.name} ({src.address}) -> {dst.name} ({dst.address}) {p['proto']}"
                        + (f"/{p['port']}" if p['proto'] != 'icmp' else "")])
