"""mtu: the path MTU between a pod and a target by a DF probe sweep.

Binary search for the largest IP packet (DF set) that gets an echo reply.
When it is below the sender's own interface MTU, the capture on the sender
tells the two cases apart: an ICMP "fragmentation needed" came back (a
correct PMTU signal) or the oversized probes simply vanished (a black hole).
"""
from __future__ import annotations

import re

from .common import CheckResult, Context, captured, ping, run_in


def iface_mtu(ns: str, iface: str) -> int | None:
    r = run_in(ns, ["ip", "-o", "link", "show", "dev", iface])
    m = re.search(r"\bmtu (\d+)", r.stdout)
    return int(m.group(1)) if m else None


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    src, dst = ctx.target(p["from"]), ctx.target(p["to"])
    local = iface_mtu(src.ns, src.iface) or p["max"]
    hi_limit = min(p["max"], local)
    pcap = ctx.pcap(check)
    probes: list[str] = []

    def sweep():
        run_in(src.ns, ["ip", "route", "flush", "cache"])   # forget a PMTU learned earlier
        # first make sure the smallest size passes (and ARP is resolved)
        ok = ping(src.ns, dst.address, size=p["min"] - 28, df=True, timeout=p["timeout"], count=2).returncode == 0
        probes.append(f"{p['min']}: {'ok' if ok else 'lost'}")
        if not ok:
            return None
        lo, hi = p["min"], hi_limit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            r = ping(src.ns, dst.address, size=mid - 28, df=True, timeout=p["timeout"])
            good = r.returncode == 0
            txt = "ok" if good else ("local: " + r.stderr.strip().splitlines()[-1][:60] if "too long" in (r.stderr + r.stdout) else "lost")
            if not good and "mtu=" in r.stdout + r.stderr:
                txt = "refused by PMTU " + re.search(r"mtu=(\d+)", r.stdout + r.stderr).group(1)
            probes.append(f"{mid}: {txt}")
            if good:
                lo = mid
            else:
                hi = mid - 1
        return lo

    found, pkts = captured(src.ns, src.iface, f"icmp and host {dst.address} or icmp[0] = 3", pcap, sweep)
    frag_needed = [x for x in pkts if x.haslayer("ICMP") and x["ICMP"].type == 3 and x["ICMP"].code == 4]
    e = p["expect"]
    if found is None:
        return CheckResult(check.name, "mtu", False, f"path MTU {e['mtu']}", f"even {p['min']}-byte probes get no reply",
                           pcap, probes)
    blackhole = found < hi_limit and not frag_needed
    how = (f"ICMP fragmentation-needed seen (next-hop mtu {frag_needed[0]['ICMP'].nexthopmtu})" if frag_needed
           else ("probes above it vanished: black hole" if blackhole else "limited by the sender's own interface"))
    good = found == e["mtu"] and blackhole == e["blackhole"]
    exp = f"path MTU {e['mtu']}" + (" (black hole)" if e["blackhole"] else "")
    return CheckResult(check.name, "mtu", good, exp, f"path MTU {found}: {how}", pcap,
                       [f"{src.name} ({src.iface} mtu {local}) -> {dst.name} {dst.address}", "probes: " + ", ".join(probes)])
