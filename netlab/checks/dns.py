"""dns: a pod resolves a name with the real resolver (glibc, via ``getent
ahostsv4``, reading the pod's resolv.conf); the capture on the pod shows
every query it sent, in order: the search-list expansion under ndots, and
what a trailing dot changes."""
from __future__ import annotations

from .common import CheckResult, Context, captured, run_in


RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def _qname(d) -> str | None:
    qd = d.qd
    if isinstance(qd, list):      # scapy >= 2.6: a list of questions
        qd = qd[0] if qd else None
    return qd.qname.decode().rstrip(".") if qd is not None else None


def parse_dns(pkts, dedupe: bool = False) -> tuple[list[str], dict[str, str]]:
    """(query names in the order sent, {name: rcode of its answer}). With
    ``dedupe`` (capturing on every interface) a query seen twice counts once;
    otherwise a retransmission counts, as it should."""
    queries: list[str] = []
    answers: dict[str, str] = {}
    seen = set()
    for x in pkts:
        if not x.haslayer("DNS"):
            continue
        d = x["DNS"]
        name = _qname(d)
        if name is None:
            continue
        if d.qr == 0:
            key = (d.id, x["UDP"].sport if x.haslayer("UDP") else 0)
            if dedupe and key in seen:
                continue
            seen.add(key)
            queries.append(name)
        else:
            answers[name] = RCODES.get(d.rcode, str(d.rcode))
    return queries, answers


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    pod = ctx.target(p["pod"])
    pcap = ctx.pcap(check)
    iface = "any" if pod.kind == "host" else pod.iface
    proc, pkts = captured(pod.ns, iface, "udp port 53", pcap,
                          lambda: run_in(pod.ns, ["getent", "ahostsv4", p["query"]], timeout=p["timeout"] + 5, etc=True))
    queries, answers = parse_dns(pkts, dedupe=iface == "any")
    got = proc.stdout.split()[0] if proc.returncode == 0 and proc.stdout.split() else "none"
    e = p["expect"]
    problems = []
    if e["queries"] is not None and queries != e["queries"]:
        problems.append(f"queries {queries} != expected {e['queries']}")
    if e["count"] is not None and len(queries) != e["count"]:
        problems.append(f"{len(queries)} queries, expected {e['count']}")
    if e["answer"] is not None and got != e["answer"]:
        problems.append(f"answer {got}, expected {e['answer']}")
    exp = ", ".join(f"{k}={v}" for k, v in e.items() if v is not None)
    details = [f"{i + 1}. {q} -> {answers.get(q, 'no answer')}" for i, q in enumerate(queries)]
    return CheckResult(check.name, "dns", not problems, exp,
                       f"{len(queries)} quer{'y' if len(queries) == 1 else 'ies'}, answer {got}"
                       + (f" ({'; '.join(problems)})" if problems else ""), pcap, details)
