"""What a trace found, as data and as the text the CLI prints.

Owns ``TraceResult`` (the probe, the forward path and the answer as ``Hop``
lists, the ICMP errors about the probe, the verdict, its causes and the
evidence behind them, the nft rules met, the kernel's drop reasons) and
``format_result``, its text form. Filled by the correlation (hops) and the
explanation (verdict, causes, evidence); nothing here looks at packets.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .probe import Probe


@dataclass
class Hop:
    ns: str
    where: str                 # human label of the namespace
    iface: str
    role: str                  # what the interface is
    direction: str
    header: str                # L3/L4 text of the (inner) probe
    ttl: int
    size: int                  # frame bytes
    changes: list[str] = field(default_factory=list)
    encap: str = ""


@dataclass
class TraceResult:
    probe: Probe
    src_name: str
    dst_name: str
    src_ns: str
    hops: list[Hop] = field(default_factory=list)
    replies: list[Hop] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)     # ICMP errors about the probe
    arrived: bool = False
    replied: bool = False
    verdict: str = ""
    causes: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    pcaps: list[str] = field(default_factory=list)
    captured_in: list[str] = field(default_factory=list)
    rules: dict[str, list[str]] = field(default_factory=dict)   # ns -> nft rules the probe hit
    kernel: str = ""           # what the kernel's skb:kfree_skb said about the lost probe (one line)
    kernel_drops: list[dict] = field(default_factory=list)      # every drop of the protocol meanwhile
    kernel_note: str = ""      # why drop reasons are not available, when they are not
    ipv6_counters: dict[str, dict[str, int]] = field(default_factory=dict)  # IPv6 probe: ns -> snmp6 counters that moved

    def to_dict(self) -> dict:
        import dataclasses
        d = dataclasses.asdict(self)
        d["probe"]["token"] = self.probe.token.decode(errors="replace")
        return d



def format_result(r: TraceResult) -> str:
    pr = r.probe
    out = [f"trace {r.src_name} ({pr.src}) -> {r.dst_name} ({pr.dst}): {pr.describe()}"
           + (f", source port {pr.sport}" if pr.proto != "icmp" else f", id {pr.icmp_id}"),
           f"captured in {len(r.captured_in)} namespaces at once; probe marked with token {pr.token.decode()}"]
    if r.kernel_note:
        out.append(r.kernel_note)
    out.append("")
    if r.hops:
        out.append("forward path:")
        for i, h in enumerate(r.hops, 1):
            out.append(f"  {i:>2}. {h.where:<18} {h.iface:<16} {h.direction:<3} {h.role}")
            out.append(f"      {h.header}  ttl {h.ttl}  {h.size} bytes")
            if h.encap:
                out.append(f"      {h.encap}")
            for c in h.changes:
                out.append(f"      * {c}")
    if r.replies:
        out.append("answer:")
        for i, h in enumerate(r.replies, 1):
            out.append(f"  {i:>2}. {h.where:<18} {h.iface:<16} {h.direction:<3} {h.header}  ttl {h.ttl}"
                       + (f"  [{h.encap}]" if h.encap else "") + ("  (" + "; ".join(h.changes) + ")" if h.changes else ""))
    if r.rules:
        out.append("nftables rules the probe and its answer went through (nft trace):")
        for ns, lines in r.rules.items():
            for ln in lines:
                out.append(f"  {ns}: {ln}")
    if r.errors:
        out.append("ICMP errors about the probe (as they travelled back):")
        out += [f"  {e}" for e in r.errors]
    out.append("")
    out.append(f"verdict: {r.verdict}")
    if r.kernel:
        out.append("  kernel: " + r.kernel)
    for c in r.causes:
        if c.startswith("note: "):
            out.append("  note:  " + c[6:])
        else:
            out.append("  cause: " + c.replace("\n", "\n    "))
    for e in r.evidence:
        out.append("  seen:  " + e)
    if r.pcaps:
        out.append(f"pcaps: {os.path.dirname(r.pcaps[0])}/ ({len(r.pcaps)} files)")
    return "\n".join(out)

