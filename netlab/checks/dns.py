"""dns: a pod resolves a name with the real resolver (glibc, via ``getent
ahostsv4``, reading the pod's resolv.conf); the capture on the pod shows
every query it sent, in order: the search-list expansion under ndots, and
what a trailing dot changes."""
from __future__ import annotations

from .common import CheckResult, Context, captured, run_in


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    pod = ctx.target(p["pod"])
    pcap = ctx.pcap(check)
    proc, pkts = captured(pod.ns, "any" if pod.kind == "host" else pod.iface, "udp port 53", pcap,
                          lambda: run_in(pod.ns, ["getent", "ahostsv4", p["query"]], timeout=p["timeout"] + 5, etc=True))
    queries, answers = [], {}
    seen_ids = set()
    for x in pkts:
        if not x.haslayer("DNS"):
            continue
        d = x["DNS"]
        if d.qr == 0 and d.qd is not None:
            key = (d.id, x["UDP"].sport)
            if key in seen_ids:
                continue      # the same query seen twice ("any" interface)
            seen_ids.add(key)
            qd = d.qd[0] if hasattr(d.qd, "__getitem__") and not hasattr(d.qd, "qname") else d.qd
            queries.append(qd.qname.decode().rstrip("."))
        elif d.qr == 1 and d.qd is not None:
            qd = d.qd[0] if hasattr(d.qd, "__getitem__") and not hasattr(d.qd, "qname") else d.qd
            rc = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}.get(d.rcode, str(d.rcode))
            answers[qd.qname.decode().rstrip(".")] = rc
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
