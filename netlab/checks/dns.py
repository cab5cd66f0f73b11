"""dns: a pod resolves a name with the real resolver (glibc, via ``getent
ahostsv4``, reading the pod's resolv.conf); the capture on the pod shows
every query it sent, in order: the search-list expansion under ndots, and
what a trailing dot changes.

``lookup: ahosts`` asks for both families (AF_UNSPEC), as most programs do:
glibc then sends an A and an AAAA query per name. How it sends them is read
off the wire (``sending``): both from one socket before the first answer
(``parallel``, glibc's default, sendmmsg), the AAAA only after the A's answer
from the same socket (``single-request`` in resolv.conf options), or after the
answer from a new socket (``single-request-reopen``). A query that never got
an answer, and the resolver's retransmission of it, are listed with the time
they were sent: the well-known 5-second stall when one family is dropped."""
from __future__ import annotations

import time

from .common import CheckResult, Context, run_in


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


SENDING_LOOKUPS = 20     # at most, with ``sending``: stops once a parallel send is proven
QTYPES = {1: "A", 28: "AAAA", 5: "CNAME", 33: "SRV", 12: "PTR"}
SENDING = ("parallel", "single-request", "single-request-reopen")


def wire_queries(pkts, dedupe: bool = False) -> list[dict]:
    """Every query in the order sent: {type, name, id, sport, t, answered (time or
    None), rcode}, answers matched by (id, source port, name, type)."""
    out: list[dict] = []
    seen = set()
    for x in pkts:
        if not x.haslayer("DNS") or not x.haslayer("UDP"):
            continue
        d = x["DNS"]
        name = _qname(d)
        qd = d.qd[0] if isinstance(d.qd, list) and d.qd else d.qd
        if name is None or qd is None:
            continue
        qtype = QTYPES.get(int(qd.qtype), str(qd.qtype))
        t = float(x.time)
        if d.qr == 0:
            key = (d.id, x["UDP"].sport, name, qtype)
            if dedupe and key in seen:
                continue
            seen.add(key)
            out.append({"type": qtype, "name": name, "id": d.id, "sport": x["UDP"].sport, "t": t,
                        "answered": None, "rcode": None})
        else:
            for q in out:
                if q["answered"] is None and (q["id"], q["sport"], q["name"], q["type"]) == \
                        (d.id, x["UDP"].dport, name, qtype):
                    q["answered"], q["rcode"] = t, RCODES.get(d.rcode, str(d.rcode))
                    break
    return out


def sending_of(qs: list[dict]) -> str | None:
    """How glibc sent its A/AAAA pairs, from the wire (None: no pair seen). A pair
    is an A query and the next AAAA query of the same name.

    An AAAA sent before the A's answer arrived proves parallel sending (a
    sequential resolver cannot: it waits for that answer), and two source
    ports prove a reopened socket. An AAAA after the answer from the same port
    is what single-request does, and what parallel sending shows when the
    answer beats glibc's second send (sendmmsg; the lab DNS is fast): so
    several lookups are judged together, and one proof of parallel sending
    decides."""
    kinds = set()
    for i, a in enumerate(qs):
        if a["type"] != "A":
            continue
        b = next((q for q in qs[i + 1:] if q["name"] == a["name"] and q["type"] == "AAAA"), None)
        if b is None:
            continue
        if a["answered"] is None or b["t"] < a["answered"]:
            kinds.add("parallel" if b["sport"] == a["sport"] else "parallel from two sockets")
        else:
            kinds.add("single-request" if b["sport"] == a["sport"] else "single-request-reopen")
    if not kinds:
        return None
    if "parallel" in kinds and kinds <= {"parallel", "single-request"}:
        return "parallel"
    return kinds.pop() if len(kinds) == 1 else "mixed (" + ", ".join(sorted(kinds)) + ")"


def _runs(items: list[str]) -> list[tuple[str, int]]:
    """['a', 'a', 'b'] -> [('a', 2), ('b', 1)]"""
    out: list[tuple[str, int]] = []
    for x in items:
        if out and out[-1][0] == x:
            out[-1] = (x, out[-1][1] + 1)
        else:
            out.append((x, 1))
    return out


def run(ctx: Context, check) -> CheckResult:
    p = check.params
    pod = ctx.target(p["pod"])
    pcap = ctx.pcap(check)
    iface = "any" if pod.kind == "host" else pod.iface
    lookup = p.get("lookup") or "ahostsv4"
    e = p["expect"]
    extra_at: list[float] = []

    from ..base.capture import Capture
    cap = Capture(pod.ns, "" if iface == "any" else iface, "udp port 53", pcap=pcap)

    def proven() -> bool:
        """A parallel send seen (see sending_of): more lookups cannot change the verdict."""
        from scapy.layers.l2 import Ether
        import scapy.layers.dns  # noqa: F401
        pk = []
        for ts, fr in list(cap.frames):
            x = Ether(fr)
            x.time = ts
            pk.append(x)
        return sending_of(wire_queries(pk, dedupe=iface == "any")) == "parallel"

    cap.start()
    try:
        proc = run_in(pod.ns, ["getent", lookup, p["query"]], timeout=p["timeout"] + 5, etc=True)
        if e.get("sending") is not None:     # more pairs to judge the sending on (see sending_of)
            for _ in range(SENDING_LOOKUPS - 1):
                time.sleep(0.05)
                if proven():
                    break
                extra_at.append(time.time())
                run_in(pod.ns, ["getent", lookup, p["query"]], timeout=p["timeout"] + 5, etc=True)
    finally:
        cap.stop(settle=0.1)
    pkts = cap.packets()
    all_wire = wire_queries(pkts, dedupe=iface == "any")
    if extra_at:          # the first lookup is the one whose queries and answer are judged
        pkts = [x for x in pkts if float(x.time) < extra_at[0]]
    queries, answers = parse_dns(pkts, dedupe=iface == "any")
    wire = wire_queries(pkts, dedupe=iface == "any")
    lines = proc.stdout.split("\n") if proc.returncode == 0 else []
    addrs = [ln.split()[0] for ln in lines if ln.split()]
    got = addrs[0] if addrs else "none"
    problems = []
    if e["queries"] is not None and queries != e["queries"]:
        problems.append(f"queries {queries} != expected {e['queries']}")
    if e["count"] is not None and len(queries) != e["count"]:
        problems.append(f"{len(queries)} queries, expected {e['count']}")
    if e["answer"] is not None and not (got == e["answer"] or (e["answer"] != "none" and e["answer"] in addrs)):
        problems.append(f"answer {', '.join(dict.fromkeys(addrs)) or 'none'}, expected {e['answer']}")
    typed = [f"{q['type']} {q['name']}" for q in wire]
    if e.get("sequence") is not None and typed != e["sequence"]:
        problems.append(f"sequence {typed} != expected {e['sequence']}")
    how = sending_of(all_wire)
    if e.get("sending") is not None and how != e["sending"]:
        problems.append(f"sent {how or 'no A/AAAA pair'}, expected {e['sending']}")
    unanswered = list(dict.fromkeys(f"{q['type']} {q['name']}" for q in wire if q["answered"] is None))
    if e.get("unanswered") is not None and unanswered != e["unanswered"]:
        problems.append(f"unanswered {unanswered or 'none'}, expected {e['unanswered'] or 'none'}")
    exp = ", ".join(f"{k}={v}" for k, v in e.items() if v is not None)
    if wire and (lookup != "ahostsv4" or any(e.get(k) is not None for k in ("sequence", "sending", "unanswered"))):
        t0 = wire[0]["t"]
        details = [f"{i + 1}. +{q['t'] - t0:.3f}s {q['type']} {q['name']} from port {q['sport']} -> "
                   + (f"{q['rcode']} at +{q['answered'] - t0:.3f}s" if q["answered"] is not None else "no answer")
                   for i, q in enumerate(wire)]
        if how and e.get("sending") is not None:
            seen = [sending_of(all_wire[i:i + 2]) or "?" for i in range(0, len(all_wire) - 1, 2)]
            details.append(f"A and AAAA sent: {how}" + (f" (judged on {1 + len(extra_at)} lookups, in order: "
                           + ", ".join(f"{k} x{n}" if n > 1 else k for k, n in _runs(seen)) + ")" if extra_at else ""))
    else:
        details = [f"{i + 1}. {q} -> {answers.get(q, 'no answer')}" for i, q in enumerate(queries)]
    return CheckResult(check.name, "dns", not problems, exp,
                       f"{len(queries)} quer{'y' if len(queries) == 1 else 'ies'}, answer {got}"
                       + (f" ({'; '.join(problems)})" if problems else ""), pcap, details)
