"""capture: on an interface, with a BPF filter, while a command runs, expect
packets with given fields (e.g. ``layer: VXLAN, fields: {vni: 42}`` on the
underlay while one pod pings another across nodes)."""
from __future__ import annotations

from .common import CheckResult, Context, captured, run_in


def _where(ctx: Context, on: str):
    name, _, iface = on.partition(":")
    t = ctx.target(name)
    return t.ns, (iface or t.iface), t.kind == "switch" and not iface


def _matches(pkt, layer: str | None, fields: dict) -> bool:
    if layer:
        if not pkt.haslayer(layer):
            return False
        lay = pkt.getlayer(layer)
    else:
        lay = pkt
    for k, v in fields.items():
        if "." in k:                      # Layer.field, e.g. IP.src
            ln, _, fn = k.partition(".")
            if not pkt.haslayer(ln):
                return False
            got = getattr(pkt.getlayer(ln), fn, None)
        else:
            got = getattr(lay, k, None)
        if got is None or (str(got) != str(v) and not _same_address(got, v)):
            return False
    return True


def _same_address(a, b) -> bool:
    """IPv6 addresses compare as addresses (fd00:0::1 is fd00::1), not as text."""
    import ipaddress
    try:
        return ipaddress.ip_address(str(a)) == ipaddress.ip_address(str(b))
    except ValueError:
        return False


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    ns, iface, incoming = _where(ctx, p["at"])
    src = ctx.target(p["in"])
    argv = ctx.expand(p["run"])
    pcap = ctx.pcap(check)
    proc, pkts = captured(ns, iface, p["filter"], pcap,
                          lambda: run_in(src.ns, argv, timeout=p["timeout"], etc=True), count=p["count"],
                          incoming_only=incoming)
    exps = p["expect"] if isinstance(p["expect"], list) else [p["expect"]]
    wants, gots, goods = [], [], []
    details = [f"ran in {src.name}: {' '.join(argv)} (exit {proc.returncode})",
               f"captured {len(pkts)} packet(s) on {ns}:{iface} filter {p['filter']!r}"]
    for e in exps:
        fields = {k: ctx.expand([str(v)])[0] for k, v in e["fields"].items()}
        hits = [x for x in pkts if _matches(x, e["layer"], fields)]
        if e["max"] == 0:
            want = "no"
        elif e["min"] == 0:
            want = f"at most {e['max']}"
        else:
            want = f"at least {e['min']}" + (f", at most {e['max']}" if e["max"] is not None else "")
        what = (e["layer"] or "packet") + (" " + ", ".join(f"{k}={v}" for k, v in fields.items()) if fields else "")
        wants.append(f"{want} {what}")
        gots.append(f"{len(hits)} matching" + (f" {what}" if len(exps) > 1 else ""))
        goods.append(len(hits) >= e["min"] and (e["max"] is None or len(hits) <= e["max"]))
        details += [f"  {x.summary()}" for x in hits[:3]]
    return CheckResult(check.name, "capture", all(goods), "; ".join(wants),
                       ", ".join(gots) + f" of {len(pkts)} captured", pcap, details)
