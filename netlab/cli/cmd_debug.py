"""`netlab capture | trace | graph | cni log`: packet-level debugging of a lab.

``register(subparsers)`` is called by netlab/cli/main.py (after netlab.cli.cmd_cni, so
``cni log`` can be added under the existing ``netlab cni`` group).
Exit statuses are netlab.cli.exitcodes (for trace, FAILED is a probe that got no
answer; USAGE an unknown lab, target or option).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .common import lab_from_args, lab_options
from .exitcodes import FAILED, OK, USAGE as EXIT_USAGE


def register(sub) -> None:
    p = sub.add_parser("capture", help="live decoded packets (or a pcap) on a pod, node or the underlay switch",
                       description="Capture inside a lab namespace. TARGET is a pod, a node, 'ext', 'dns' or "
                       "'underlay' (the switch: every port, each frame once), optionally :IFACE. Several "
                       "targets are captured at once and merged by time (-w writes pcapng, one interface "
                       "per target and interface, named like node1/eth0).")
    p.add_argument("target", metavar="TARGET[:IFACE]", nargs="+")
    p.add_argument("--filter", "-f", default="", metavar="BPF", help="tcpdump filter expression")
    p.add_argument("-w", dest="write", metavar="FILE",
                   help="write a pcap (one target) or pcapng (several targets, or FILE.pcapng) instead of "
                   "printing; '-' streams it to stdout (e.g. | tcpdump -r - or | wireshark -k -i -)")
    p.add_argument("--count", "-c", type=int, default=0, metavar="N", help="stop after N packets (in all)")
    p.add_argument("--timeout", "--duration", "-t", dest="timeout", type=float, default=0, metavar="S",
                   help="stop after S seconds (default: Ctrl-C)")
    p.add_argument("-v", "--verbose", action="store_true", help="also print scapy's layer summary")
    lab_options(p)
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("trace", help="send one probe and follow it through every interface of the lab",
                       description="Send one probe from FROM to TO while capturing in every namespace of the lab "
                       "at once; print where it was seen, how it changed (NAT, VXLAN, TTL), where it "
                       "disappeared and why.")
    p.add_argument("src", metavar="FROM", help="pod, node, 'ext' or 'dns'")
    p.add_argument("dst", metavar="TO", help="pod, node, 'ext', 'dns' or an IPv4 or IPv6 address")
    p.add_argument("--family", type=int, choices=(4, 6),
                   help="probe over IPv4 or IPv6 (default: the destination's primary family)")
    p.add_argument("--proto", default="icmp", help="icmp, tcp/PORT or udp/PORT (default icmp)")
    p.add_argument("--size", type=int, help="IP packet size in bytes (default 84, like ping)")
    p.add_argument("--df", action="store_true", help="set Don't Fragment")
    p.add_argument("--sport", type=int, help="source port for tcp/udp (udp: shared with a running flow, "
                   "to follow that flow's conntrack entry)")
    p.add_argument("--wait", type=float, default=1.0, help="seconds to wait for the probe and its answer (default 1)")
    p.add_argument("--no-nftrace", action="store_true", help="do not trace nftables rules (nft monitor trace)")
    p.add_argument("--no-drop-reasons", action="store_true",
                   help="do not read the kernel's drop reasons (skb:kfree_skb tracepoint)")
    p.add_argument("--pcap-dir", help="save every namespace's capture here (default: <lab dir>/traces/<time>)")
    p.add_argument("--json", action="store_true", help="print the trace as JSON")
    lab_options(p)
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("graph", help="draw the lab: nodes, pods, bridges, VXLAN devices, addresses, host ports")
    p.add_argument("--format", "-T", choices=("svg", "png", "dot", "mermaid"), default="dot")
    p.add_argument("-o", "--output", help="file to write (default: stdout; svg/png need -o or a pipe)")
    lab_options(p)
    p.set_defaults(func=cmd_graph)

    from .cmd_impair import register as register_impair   # impair, watch
    register_impair(sub)

    try:
        from .cmd_cni import add_cni_command
        p = add_cni_command("log", help="every plugin call netlab made for a lab (or one pod)",
                            description="The CNI call log of a lab: command, env, stdin, stdout, stderr, "
                            "exit status and duration of every plugin exec, oldest first.")
    except (ImportError, RuntimeError):
        p = sub.add_parser("cni-log", help="every plugin call netlab made for a lab (or one pod)")
    p.add_argument("pod", nargs="?", help="only this pod's calls")
    p.add_argument("--brief", action="store_true", help="one line per call")
    p.add_argument("--failed", action="store_true", help="only calls that did not exit 0")
    p.add_argument("--json", action="store_true", help="the raw JSON lines")
    lab_options(p)
    p.set_defaults(func=cmd_cni_log)


# --------------------------------------------------------------------------- helpers

def _err(msg: str) -> None:
    print(f"netlab: {msg}", file=sys.stderr)


def resolve_capture_target(st, target: str) -> tuple[str, str, bool]:
    """TARGET[:IFACE] -> (netns, iface or '' for all, incoming_only)."""
    from ..lab.plan import switch_ns
    name, _, iface = target.partition(":")
    if name in ("underlay", "switch"):
        return switch_ns(st.lab), iface, not iface
    from ..debug.trace import resolve
    ns, _, _ = resolve(st, name)
    if not ns:
        raise ValueError(f"{name!r} is an address; capture needs a pod, node, 'ext', 'dns' or 'underlay'")
    if not iface:
        from ..lab.labs import plan_for_state
        topo, plan = plan_for_state(st)
        if name in topo.pods:
            owner = topo.pods[topo.pod_netns_owner(name)]
            iface = owner.ifname if owner.mode in ("bridge", "overlay") else ""
    return ns, iface, False


def frame_line(ts: float, frame: bytes, iface: str, direction: str, verbose: bool = False) -> str:
    from ..debug.trace import decode_frame, l4_summary
    stamp = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int((ts % 1) * 1e6):06d}"
    head = f"{stamp} {iface or '?':<16} {direction:<3} "
    try:
        d = decode_frame(frame)
    except Exception:  # noqa: BLE001 - an undecodable frame is still shown
        return head + f"{len(frame)} bytes (undecoded)"
    if "arp" in d:
        a = d["arp"]
        if a.get("nd"):          # IPv6 neighbour discovery
            body = (f"ICMPv6 neighbour solicitation who-has {a['pdst']} tell {a['psrc']}" if a["op"] == "request"
                    else f"ICMPv6 neighbour advertisement {a['psrc']} is-at {a['hwsrc']}")
        else:
            body = (f"ARP who-has {a['pdst']} tell {a['psrc']}" if a["op"] == "request"
                    else f"ARP reply {a['psrc']} is-at {a['hwsrc']}")
    elif "ip" in d:
        ip = d["ip"]
        if "vxlan" in d and "inner" in d:
            inner = d["inner"]
            body = (f"VXLAN vni {d['vxlan']['vni']} {ip['src']} > {ip['dst']} ttl {ip['ttl']} | "
                    f"{l4_summary(inner)} ttl {inner['ttl']} len {inner['len']}")
        elif "vxlan" in d:
            from scapy.layers.l2 import Ether
            from scapy.layers.vxlan import VXLAN
            p = Ether(frame)
            inner = p[VXLAN].payload.summary() if p.haslayer(VXLAN) else "?"
            body = f"VXLAN vni {d['vxlan']['vni']} {ip['src']} > {ip['dst']} ttl {ip['ttl']} | {inner}"
        else:
            body = (f"{l4_summary(ip)} hlim {ip['ttl']} len {ip['len']}" if ip.get("v6") else
                    f"{l4_summary(ip)} ttl {ip['ttl']} len {ip['len']}" + (" DF" if ip["df"] else ""))
            if ip.get("quoted"):
                body += f" [about {l4_summary(ip['quoted'])}]"
        extra = _dns_text(frame)
        if extra:
            body += " " + extra
    else:
        from scapy.layers.l2 import Ether
        body = Ether(frame).summary()
    line = head + body + f" ({len(frame)} bytes)"
    if verbose:
        from scapy.layers.l2 import Ether
        line += "\n      " + Ether(frame).summary()
    return line


def _dns_text(frame: bytes) -> str:
    if b"\x00\x35" not in frame[34:38] + frame[36:38] + frame[54:58]:      # UDP port 53 (IPv4, IPv6)
        return ""
    try:
        from scapy.layers.dns import DNS
        from scapy.layers.l2 import Ether
        p = Ether(frame)
        if p.haslayer(DNS):
            return p[DNS].mysummary()
    except Exception:  # noqa: BLE001
        pass
    return ""


# --------------------------------------------------------------------------- capture

def cmd_capture(args) -> int:
    from ..base.capture import Capture, CaptureError
    from ..base import namespaces as nsutil
    from ..debug.pcapsink import sink_for
    st = lab_from_args(args)
    if st is None:
        return EXIT_USAGE
    targets = []
    for t in args.target:
        try:
            ns, iface, incoming_only = resolve_capture_target(st, t)
        except (ValueError, Exception) as e:   # TraceError, ValueError
            _err(str(e))
            return EXIT_USAGE
        if not nsutil.exists(ns):
            _err(f"namespace {ns} does not exist (is the lab up?)")
            return FAILED
        targets.append((t.split(":")[0], ns, iface, incoming_only))
    if len({(n, i) for _, n, i, _ in targets}) != len(targets):
        _err("the same namespace and interface is given twice")
        return EXIT_USAGE
    to_stdout = args.write == "-"
    path = None if (args.write is None or to_stdout) else os.path.abspath(args.write)
    caps = [Capture(ns, iface, args.filter, count=args.count,
                    max_seconds=args.timeout if args.timeout else 10 ** 9, incoming_only=inc)
            for _, ns, iface, inc in targets]
    started = []
    try:
        for c in caps:
            c.start()
            started.append(c)
    except CaptureError as e:
        for c in started:
            c.stop(settle=0)
        _err(str(e))
        return EXIT_USAGE if "filter" in str(e) else FAILED
    sink = sink_for(args.write, several=len(caps) > 1, verbose=args.verbose, line=frame_line)
    where = ", ".join(f"{name} ({ns}" + (f", {iface})" if iface else ", every interface)")
                      for name, ns, iface, _ in targets)
    print(f"capturing on {where}" + (f" filter {args.filter!r}" if args.filter else "")
          + (f" -> {'stdout' if to_stdout else path} ({sink.kind})" if args.write else "") + "; Ctrl-C to stop",
          file=sys.stderr, flush=True)
    shown = [0] * len(caps)
    pending: list = []        # frames not yet written: held back a little to merge by time
    total = 0
    try:
        while any(c._thread is not None and c._thread.is_alive() for c in caps):
            total = _drain(caps, targets, shown, pending, sink, total, args.count,
                           hold=REORDER_HOLD if len(caps) > 1 else 0)
            if args.count and total >= args.count:
                break
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        sink.broken = True
    finally:
        for c in caps:
            c.stop(settle=0)
    try:
        total = _drain(caps, targets, shown, pending, sink, total, args.count, hold=0)
        sink.close()
    except BrokenPipeError:
        sink.broken = True
    if sink.broken:
        # the reader went away (e.g. `| head`): not an error, stop quietly
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
    print(f"{total} packet(s) captured" + (f", written to {path}" if path else ""), file=sys.stderr)
    return OK


REORDER_HOLD = 0.25   # seconds a frame waits for an earlier one from another capture's thread


def _drain(caps, targets, shown: list[int], pending: list, sink, total: int, count: int, hold: float) -> int:
    """New frames of every capture, merged by the kernel's timestamps, to the sink. Frames
    younger than ``hold`` seconds wait (another capture's thread may still deliver an
    earlier one); ``hold=0`` writes everything. Returns the total written so far."""
    for k, c in enumerate(caps):
        n = min(len(c.frames), len(c.directions), len(c.ifaces))
        for i in range(shown[k], n):
            ts, fr = c.frames[i]
            pending.append((ts, k, c.ifaces[i], c.directions[i], fr))
        shown[k] = n
    pending.sort(key=lambda x: (x[0], x[1]))
    cut = len(pending)
    if hold:
        limit = time.time() - hold
        cut = next((i for i, x in enumerate(pending) if x[0] > limit), len(pending))
    ready, pending[:] = pending[:cut], pending[cut:]
    for ts, k, ifn, d, fr in ready:
        if count and total >= count:
            break
        sink.add(targets[k][0], ifn or targets[k][2], d, ts, fr)
        total += 1
    return total


# --------------------------------------------------------------------------- trace

def cmd_trace(args) -> int:
    from ..debug.trace import TraceError, format_result, trace
    st = lab_from_args(args)
    if st is None:
        return EXIT_USAGE
    pcap_dir = args.pcap_dir or os.path.join(st.lab_dir, "traces", time.strftime("%Y%m%d-%H%M%S"))
    try:
        r = trace(st, args.src, args.dst, proto=args.proto, size=args.size, df=args.df, wait=args.wait,
                  pcap_dir=pcap_dir, nftrace=not args.no_nftrace, sport=args.sport,
                  drop_reasons=not args.no_drop_reasons, family=args.family)
    except TraceError as e:
        _err(str(e))
        return EXIT_USAGE
    if args.json:
        print(json.dumps(r.to_dict(), indent=2, default=str))
    else:
        print(format_result(r))
    return OK if r.arrived and r.replied else FAILED


# --------------------------------------------------------------------------- graph

def cmd_graph(args) -> int:
    from ..debug.graph import inventory, render
    st = lab_from_args(args)
    if st is None:
        return EXIT_USAGE
    from ..lab.labs import plan_for_state
    topo, _ = plan_for_state(st)
    inv = inventory(st, topo)
    try:
        data = render(inv, args.format)
    except (RuntimeError, OSError) as e:
        _err(str(e))
        return FAILED
    if args.output:
        with open(args.output, "wb") as f:
            f.write(data)
        print(f"wrote {args.output} ({len(data)} bytes, {args.format})", file=sys.stderr)
    elif args.format in ("svg", "png") and sys.stdout.isatty():
        _err(f"{args.format} is binary/large: give -o FILE (or pipe it)")
        return EXIT_USAGE
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return OK


# --------------------------------------------------------------------------- cni log

def cmd_cni_log(args) -> int:
    from cniruntime import cnilog
    st = lab_from_args(args)
    if st is None:
        return EXIT_USAGE
    calls = cnilog.read(st.lab_dir)
    if args.pod:
        pods = set(st.attachments())
        if args.pod not in pods:
            _err(f"no pod {args.pod!r} with a network attachment in lab {st.lab} (have: {', '.join(sorted(pods)) or 'none'})")
            return EXIT_USAGE
        calls = cnilog.for_pod(calls, args.pod, st.attachments())
    if args.failed:
        calls = [c for c in calls if not c.ok]
    if args.json:
        for c in calls:
            print(json.dumps(c.raw))
        return OK
    print(cnilog.format_calls(calls, brief=args.brief))
    return OK
