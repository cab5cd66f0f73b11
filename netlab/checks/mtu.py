"""mtu: the path MTU between a pod and a target by a DF probe sweep.

Binary search for the largest IP packet (DF set) that gets an echo reply.
The capture on the sender is the evidence, and each verdict needs it
positively: the largest size must be seen answered; below the sender's own
interface MTU, either an ICMP "fragmentation needed" came back (a correct
PMTU signal) or it is a black hole, which needs DF probes above the found
size seen *leaving* the sender, none of them answered and no
fragmentation-needed seen coming back. Probes that never left (refused by
the sender's own stack) prove no black hole.

IPv6 (``family: 6``, or a target with IPv6 only): routers never fragment, so
every too-big packet must be answered by an ICMPv6 Packet Too Big (type 2)
carrying the next-hop MTU; the sweep starts at the IPv6 minimum link MTU of
1280 (nothing smaller is ever needed), an echo carries 48 bytes of headers
(40 IPv6 + 8 ICMPv6) instead of 28, and the same black-hole verdict applies
when no Packet Too Big comes back.
"""
from __future__ import annotations

import re

from .common import CheckResult, Context, captured_with_direction, ping, run_in


def iface_mtu(ns: str, iface: str) -> int | None:
    r = run_in(ns, ["ip", "-o", "link", "show", "dev", iface])
    m = re.search(r"\bmtu (\d+)", r.stdout)
    return int(m.group(1)) if m else None


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    src, dst = ctx.target(p["from"]), ctx.target(p["to"])
    if p.get("family"):
        dst = dst.at(p["family"])
        if not dst.address:
            return CheckResult(check.name, "mtu", False, f"path MTU {p['expect']['mtu']}",
                               f"{dst.name} has no IPv{p['family']} address")
    v6 = ":" in (dst.address or "")
    hdr = 48 if v6 else 28          # IP + ICMP echo headers: ping -s is the payload
    p = dict(p, min=p["min"] or (1280 if v6 else 1200))
    local = iface_mtu(src.ns, src.iface) or p["max"]
    hi_limit = min(p["max"], local)
    pcap = ctx.pcap(check)
    probes: list[str] = []

    def sweep():
        run_in(src.ns, ["ip"] + (["-6"] if v6 else []) + ["route", "flush", "cache"])   # forget a learned PMTU
        # first make sure the smallest size passes (and ARP / neighbour discovery is resolved)
        ok = ping(src.ns, dst.address, size=p["min"] - hdr, df=True, timeout=p["timeout"], count=2).returncode == 0
        probes.append(f"{p['min']}: {'ok' if ok else 'lost'}")
        if not ok:
            return None
        lo, hi = p["min"], hi_limit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            r = ping(src.ns, dst.address, size=mid - hdr, df=True, timeout=p["timeout"])
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

    bpf = "icmp6" if v6 else f"icmp and host {dst.address} or icmp[0] = 3"
    found, seen = captured_with_direction(src.ns, src.iface, bpf, pcap, sweep)
    e = p["expect"]
    exp = f"path MTU {e['mtu']}" + (" (black hole)" if e["blackhole"] else "")
    details = [f"{src.name} ({src.iface} mtu {local}) -> {dst.name} {dst.address}", "probes: " + ", ".join(probes)]
    if found is None:
        return CheckResult(check.name, "mtu", False, exp, f"even {p['min']}-byte probes get no reply",
                           pcap, details)
    ev = mtu_evidence6(seen, dst.address, found) if v6 else mtu_evidence(seen, dst.address, found)
    details.append(ev.summary(src.iface))
    if not ev.answered:
        return CheckResult(check.name, "mtu", False, exp,
                           f"path MTU {found} by ping, but the capture shows no answered {found}-byte probe", pcap, details)
    if ev.big_answered:
        return CheckResult(check.name, "mtu", False, exp,
                           f"path MTU {found} by the sweep, but larger probes ({max(ev.big_answered)} bytes) were "
                           "answered too: the path is lossy, not size-limited", pcap, details)
    if found >= hi_limit:
        blackhole, how = False, "limited by the sender's own interface"
    elif ev.frag_needed:
        blackhole, how = False, (f"ICMPv6 Packet Too Big seen (mtu {ev.frag_needed[0]})" if v6 else
                                 f"ICMP fragmentation-needed seen (next-hop mtu {ev.frag_needed[0]})")
    elif ev.big_left:
        blackhole = True
        how = (f"black hole: {len(ev.big_left)} DF probe(s) of {'/'.join(map(str, sorted(set(ev.big_left))))} bytes "
               f"left the sender, none answered, no {'Packet Too Big' if v6 else 'fragmentation-needed'} came back")
    else:
        blackhole, how = False, "the larger probes never left the sender (refused by its own stack): no black hole shown"
    good = found == e["mtu"] and blackhole == e["blackhole"]
    return CheckResult(check.name, "mtu", good, exp, f"path MTU {found}: {how}", pcap, details)


class MtuEvidence:
    """What the sender's capture shows about a sweep that found ``found``."""

    def __init__(self, answered: bool, big_left: list[int], big_answered: list[int], frag_needed: list[int]) -> None:
        self.answered = answered            # a probe of exactly ``found`` bytes left and was answered
        self.big_left = big_left            # sizes of unanswered DF requests above ``found`` seen leaving
        self.big_answered = big_answered    # sizes above ``found`` that were answered (contradiction)
        self.frag_needed = frag_needed      # next-hop MTUs of ICMP frag-needed seen coming in
        self.signal = "fragmentation-needed"   # what the PMTU signal is called (IPv6: Packet Too Big)

    def summary(self, iface: str) -> str:
        return (f"capture on {iface}: a probe of the found size {'answered' if self.answered else 'NOT seen answered'}; "
                f"{len(self.big_left)} larger DF probe(s) left, {len(self.big_answered)} answered; "
                f"{len(self.frag_needed)} {self.signal} received")


def mtu_evidence(seen: list[tuple[object, str]], dst: str, found: int) -> MtuEvidence:
    """Requests and replies are paired by ICMP id and sequence: a reply may come
    back fragmented (the return path may be narrower), so its size says nothing."""
    sent: dict[tuple[int, int], tuple[int, bool]] = {}      # (id, seq) -> (IP length, DF)
    replied: set[tuple[int, int]] = set()
    frag = []
    for x, direction in seen:
        if not x.haslayer("ICMP") or not x.haslayer("IP"):
            continue
        ip, icmp = x["IP"], x["ICMP"]
        if icmp.type == 3 and icmp.code == 4 and direction == "in":
            frag.append(int(icmp.nexthopmtu))
        elif icmp.type == 0 and ip.src == dst and direction == "in":
            replied.add((icmp.id, icmp.seq))
        elif icmp.type == 8 and ip.dst == dst and direction == "out":
            sent[(icmp.id, icmp.seq)] = (ip.len, bool(ip.flags.DF))
    answered = any(n == found and k in replied for k, (n, _) in sent.items())
    big_left = [n for k, (n, df) in sent.items() if n > found and df and k not in replied]
    big_answered = [n for k, (n, _) in sent.items() if n > found and k in replied]
    return MtuEvidence(answered, big_left, big_answered, frag)


def mtu_evidence6(seen: list[tuple[object, str]], dst: str, found: int) -> MtuEvidence:
    """The IPv6 sweep's evidence: echo requests/replies paired by id and sequence,
    sizes as IPv6 packet lengths (payload + 40), ICMPv6 Packet Too Big coming in.
    IPv6 has no DF bit: routers never fragment, so every request counts."""
    import ipaddress
    want = ipaddress.ip_address(dst)
    sent: dict[tuple[int, int], tuple[int, bool]] = {}
    replied: set[tuple[int, int]] = set()
    ptb = []
    for x, direction in seen:
        if not x.haslayer("IPv6"):
            continue
        ip = x["IPv6"]
        if x.haslayer("ICMPv6PacketTooBig") and direction == "in":
            ptb.append(int(x["ICMPv6PacketTooBig"].mtu))
        elif x.haslayer("ICMPv6EchoReply") and direction == "in" and ipaddress.ip_address(ip.src) == want:
            e = x["ICMPv6EchoReply"]
            replied.add((e.id, e.seq))
        elif x.haslayer("ICMPv6EchoRequest") and direction == "out" and ipaddress.ip_address(ip.dst) == want \
                and not x.haslayer("IPv6ExtHdrFragment"):
            e = x["ICMPv6EchoRequest"]
            sent[(e.id, e.seq)] = (ip.plen + 40, True)
    answered = any(n == found and k in replied for k, (n, _) in sent.items())
    big_left = [n for k, (n, _) in sent.items() if n > found and k not in replied]
    big_answered = [n for k, (n, _) in sent.items() if n > found and k in replied]
    ev = MtuEvidence(answered, big_left, big_answered, ptb)
    ev.signal = "Packet Too Big"
    return ev
