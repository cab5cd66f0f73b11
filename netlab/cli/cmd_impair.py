"""`netlab impair` and `netlab watch`: change a running lab's links, watch its counters.

``register(subparsers)`` is called from netlab/cli/cmd_debug.py. Exit codes: 0
success, 1 a kernel failure, 2 usage (unknown lab or target, a bad value, an
impairment this kernel cannot make: nothing was changed).
"""
from __future__ import annotations

import json
import sys
import time

from .exitcodes import FAILED, OK

EXIT_USAGE = 2


def register(sub) -> None:
    from .common import lab_options
    p = sub.add_parser("impair", help="show, set or clear link impairments (loss, duplicate, rate, delay) of a running lab",
                       description="TARGET is a pod (its interface), a node, 'ext' or 'dns' (the uplink), "
                       "underlay:NODE (the switch port facing NODE), optionally TARGET:IFACE, or 'all' "
                       "(show/clear). set takes KEY VALUE pairs: loss 5%%, duplicate 1%%, minSize 1000, "
                       "rate 10mbit, burst 32kb, delay 20ms, jitter 5ms (netem), direction egress|ingress. "
                       "set replaces what the interface had.")
    p.add_argument("target", metavar="TARGET[:IFACE]")
    p.add_argument("action", choices=("show", "set", "clear"))
    p.add_argument("values", nargs="*", metavar="KEY VALUE")
    p.add_argument("--json", action="store_true", help="show: the recorded impairments as JSON")
    lab_options(p)
    p.set_defaults(func=cmd_impair)

    p = sub.add_parser("watch", help="interface and drop counters of lab namespaces, live",
                       description="Every --interval seconds, per interface: packets and bytes per second "
                       "received and sent, drops and errors; and the namespace's drop counters "
                       "(/proc/net/snmp) that moved. Like containerlab events --interface-stats.")
    p.add_argument("target", metavar="TARGET[:IFACE]", nargs="+",
                   help="pod, node, 'ext', 'dns' or 'underlay' (the switch), optionally :IFACE")
    p.add_argument("--interval", "-i", type=float, default=1.0, metavar="S", help="seconds between samples (default 1)")
    p.add_argument("--count", "-c", type=int, default=0, metavar="N", help="stop after N samples (default: Ctrl-C)")
    p.add_argument("--all", action="store_true", help="also interfaces whose counters did not move")
    lab_options(p)
    p.set_defaults(func=cmd_watch)


def _err(msg: str) -> None:
    print(f"netlab: {msg}", file=sys.stderr)


def _lab_and_plan(args):
    from .common import lab_from_args
    from ..lab.labs import plan_for_state
    st = lab_from_args(args)
    if st is None:
        return None, None
    _, plan = plan_for_state(st)
    return st, plan


# --------------------------------------------------------------------------- impair

def cmd_impair(args) -> int:
    from ..features import impair
    st, plan = _lab_and_plan(args)
    if st is None or plan is None:
        return EXIT_USAGE
    try:
        where = None if args.target == "all" else impair.resolve(plan, args.target)
        if where is None and args.action == "set":
            raise impair.ImpairError("set needs one TARGET, not all")
        if args.action == "show":
            return _show(st, where, args.json)
        if args.action == "clear":
            if args.values:
                raise impair.ImpairError("clear takes no values")
            n = impair.clear(st, where)
            print(f"removed {n} impairment(s)" + (f" of {where.target} ({where.dev} in {where.ns})" if where else ""))
            return OK
        imp = impair.parse_words(args.values)
        if imp.needs_netem() and not impair.kernel_has_netem():
            raise impair.ImpairError(impair.netem_refusal(imp))
    except impair.ImpairError as e:
        _err(str(e))
        return EXIT_USAGE
    had = bool(impair.recorded(st, where))
    try:
        res = impair.set_impairment(st, where, imp)
    except impair.ImpairError as e:
        gone = impair.recorded(st, where) == [] and had
        _err(f"{where.target}: {e}; " + ("its previous impairment was removed, the new one undone"
                                         if gone else "nothing changed"))
        return FAILED
    print(f"{where.target} ({where.dev} in {where.ns}): {imp.describe()}")
    for ln in impair.kernel_view(res):
        print(f"  {ln}")
    return OK


def _show(st, where, as_json: bool) -> int:
    from ..features import impair
    recs = impair.recorded(st, where)
    if as_json:
        print(json.dumps([{"target": r["target"], "ns": r["ns"], "dev": r["dev"], "spec": r["spec"],
                           "parts": r["parts"]} for r in recs], indent=2))
        return OK
    if not recs:
        print("no impairment" + (f" on {where.target} ({where.dev} in {where.ns})" if where else " in this lab"))
        return OK
    for r in recs:
        print(f"{r['target']} ({r['dev']} in {r['ns']}): {impair.Impairment.from_dict(r['spec']).describe()}")
        for ln in impair.kernel_view(r):
            print(f"  {ln}")
    return OK


# --------------------------------------------------------------------------- watch

def watch_targets(st, plan, targets: list[str]) -> list[tuple[str, str, str]]:
    """TARGET[:IFACE] -> (label, namespace, interface or '' for all)."""
    from ..lab.plan import switch_ns
    out = []
    for t in targets:
        name, _, iface = t.partition(":")
        if name in ("underlay", "switch"):
            out.append(("underlay", switch_ns(st.lab), iface))
        elif name in plan.endpoints:
            out.append((name, plan.endpoints[name].netns, iface))
        else:
            raise ValueError(f"unknown target {name!r}: a pod, node, 'ext', 'dns' or 'underlay' "
                             f"(have: {', '.join(plan.endpoints)})")
    return out


def rate_lines(label: str, before: dict, after: dict, secs: float, only: str = "", show_all: bool = False) -> list[str]:
    """One line per interface: what moved between two link_stats samples."""
    out = []
    for ifn in sorted(after):
        if ifn == "lo" or (only and ifn != only):
            continue
        a, b = before.get(ifn, {}), after[ifn]
        d = {k: b.get(k, 0) - a.get(k, 0) for k in b}
        if not show_all and not any(d.values()):
            continue
        bad = ", ".join(f"{k} +{v}" for k, v in d.items() if v and ("drop" in k or "err" in k))
        out.append(f"{label + '/' + ifn:<24} rx {d['rx_packets'] / secs:8.1f} pkt/s {_bytes(d['rx_bytes'] / secs):>10}/s"
                   f"   tx {d['tx_packets'] / secs:8.1f} pkt/s {_bytes(d['tx_bytes'] / secs):>10}/s"
                   + (f"   {bad}" if bad else ""))
    return out


def _bytes(n: float) -> str:
    for unit, k in (("MB", 1e6), ("KB", 1e3)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n:.0f} B"


def cmd_watch(args) -> int:
    from ..debug.trace import SNMP_KEYS, link_stats, snmp
    from ..base import namespaces as nsutil
    st, plan = _lab_and_plan(args)
    if st is None or plan is None:
        return EXIT_USAGE
    try:
        targets = watch_targets(st, plan, args.target)
    except ValueError as e:
        _err(str(e))
        return EXIT_USAGE
    if args.interval <= 0 or args.count < 0:
        _err("--interval must be > 0 and --count >= 0")
        return EXIT_USAGE
    for _, ns, _ in targets:
        if not nsutil.exists(ns):
            _err(f"namespace {ns} does not exist (is the lab up?)")
            return FAILED

    def sample():
        return {ns: (link_stats(ns), snmp(ns)) for _, ns, _ in targets}
    prev, t_prev = sample(), time.monotonic()
    n = 0
    try:
        while not args.count or n < args.count:
            time.sleep(args.interval)
            cur, t_cur = sample(), time.monotonic()
            secs = max(t_cur - t_prev, 1e-6)
            stamp = time.strftime("%H:%M:%S")
            lines = []
            for label, ns, iface in targets:
                lines += rate_lines(label, prev[ns][0], cur[ns][0], secs, iface, args.all)
                moved = {k: cur[ns][1].get(k, 0) - prev[ns][1].get(k, 0) for k in SNMP_KEYS}
                drops = ", ".join(f"{k} +{v}" for k, v in moved.items() if v > 0
                                  and any(w in k for w in ("Discard", "NoRoute", "Err", "Fail", "NoPorts", "Drop")))
                if drops:
                    lines.append(f"{label + ' drops':<24} {drops}")
            print(f"--- {stamp} ({secs:.1f}s)")
            print("\n".join(lines) if lines else "(nothing moved)", flush=True)
            prev, t_prev = cur, t_cur
            n += 1
    except KeyboardInterrupt:
        pass
    return OK
