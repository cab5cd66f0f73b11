"""`netlab up | down | status | exec | verify`: the lab verbs.

``register(subparsers)`` is called by netlab/cli/main.py. Exit statuses are
netlab.cli.exitcodes: FAILED for a build, check or teardown failure, USAGE for an
invalid topology or a refused choice, INTERRUPTED for Ctrl-C during a build.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from ..base import state as statemod
from ..lab.teardown import teardown
from ..lab.labs import (find_lab, labs_up, load_topology, plan_for_state)  # noqa: F401 (cmd_lab.labs_up keeps working)
from .exitcodes import FAILED, INTERRUPTED, OK, USAGE


def register(sub) -> None:
    def common(p, lab_arg=True):
        p.add_argument("--lab-dir", help="the lab's directory (default: $NETLAB_ROOT/<name>, "
                       f"NETLAB_ROOT={statemod.DEFAULT_ROOT})")
        if lab_arg:
            p.add_argument("--name", help="lab name (overrides the file's name)")

    p = sub.add_parser("up", help="validate, build and check a lab from a topology file")
    p.add_argument("file", help="topology YAML (see docs/netlab/topology-reference.md)")
    common(p)
    p.add_argument("--plugins", choices=("ours", "reference"), default="ours",
                   help="which CNI plugin executables attach the pods: ours (default) or Debian's "
                   "reference plugins in /usr/lib/cni (refused for a lab they cannot attach)")
    p.add_argument("--no-checks", action="store_true", help="build only; run the checks later with verify")
    p.add_argument("--dry-run", action="store_true", help="validate and print the plan; build nothing")
    p.add_argument("--json", action="store_true", help="print the check report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-step progress")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="remove everything a lab recorded in its state file")
    p.add_argument("lab", nargs="?", help="lab name or its topology file")
    common(p, lab_arg=False)
    p.add_argument("--json", action="store_true", help="print what was removed (or not) as JSON")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="show the labs that are up, or one lab")
    p.add_argument("lab", nargs="?", help="lab name or its topology file")
    common(p, lab_arg=False)
    p.add_argument("--json", action="store_true", help="print the labs' status as JSON")
    p.add_argument("--cni-check", action="store_true",
                   help="also run CNI CHECK for every pod attachment (through the lab's plugins)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("exec", help="run a command in a pod or node namespace (with the pod's resolv.conf)")
    p.add_argument("target", help="pod, node, 'ext', 'dns' or 'underlay'")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    p.add_argument("--lab", help="lab name (default: the only lab that is up)")
    common(p, lab_arg=False)
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("verify", help="run the checks of a lab that is up (exit 0 when all pass)")
    p.add_argument("file", nargs="?", help="topology file with the checks (default: the one the lab was built from)")
    p.add_argument("--lab", help="lab name (default: the file's name, or the only lab that is up)")
    common(p, lab_arg=False)
    p.add_argument("--json", action="store_true", help="print the check report as JSON")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("validate", help="check a topology file and print its plan (builds nothing)")
    p.add_argument("file", help="topology YAML (see docs/netlab/topology-reference.md)")
    p.add_argument("--plugins", choices=("ours", "reference"), default="ours",
                   help="also check that these plugins can attach the lab (default: ours)")
    p.add_argument("--json", action="store_true", help="print the errors, or the plan, as JSON")
    p.set_defaults(func=cmd_validate)


# --------------------------------------------------------------------------- helpers

def _err(msg: str) -> None:
    print(f"netlab: {msg}", file=sys.stderr)


def _name_from_arg(arg: str) -> str:
    """A lab name, or the name inside a topology file."""
    if os.path.isfile(arg) and arg.endswith((".yaml", ".yml")):
        import yaml
        try:
            with open(arg, encoding="utf-8") as f:
                data = yaml.safe_load(f)
            if isinstance(data, dict) and isinstance(data.get("name"), str):
                return data["name"]
        except (OSError, yaml.YAMLError):
            pass
        return os.path.splitext(os.path.basename(arg))[0]
    return arg


def print_report(lab: str, results, *, as_json: bool = False, out=sys.stdout) -> None:
    if as_json:
        json.dump({"lab": lab, "ok": all(r.ok for r in results), "checks": [r.to_dict() for r in results]},
                  out, indent=2)
        out.write("\n")
        return
    if not results:
        print("no checks", file=out)
        return
    w = max(len(r.name) for r in results)
    print(f"\nChecks for lab {lab}:", file=out)
    for r in results:
        print(f"  {'PASS' if r.ok else 'FAIL'}  {r.name:<{w}}  expected {r.expected}; got {r.observed}  [{r.seconds:.1f}s]", file=out)
        for d in r.details:
            print(f"  {'':4}  {'':<{w}}    {d}", file=out)
        if r.evidence:
            print(f"  {'':4}  {'':<{w}}    evidence: {r.evidence}", file=out)
    n_ok = sum(r.ok for r in results)
    print(f"\n{n_ok}/{len(results)} checks passed", file=out)


def _run_checks(topo, plan, st, as_json: bool, quiet: bool = False):
    from ..checks import Context, run_checks
    ctx = Context(topo, plan, st)

    def prog(r):
        if not quiet and not as_json:
            print(f"  check {'ok  ' if r.ok else 'FAIL'} {r.name} ({r.seconds:.1f}s)", flush=True)
    results = run_checks(ctx, topo.checks, prog)
    with open(os.path.join(plan.lab_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump({"lab": topo.name, "ok": all(r.ok for r in results),
                   "checks": [r.to_dict() for r in results]}, f, indent=2)
    return results


# --------------------------------------------------------------------------- up

def _plan_or_refusal(path: str, name: str | None, lab_dir: str | None, plugins: str, errors: list[str] | None = None):
    """(topology, plan) ready to build, or (None, None) after the reasons were
    printed (or added to ``errors``): an invalid file, or plugins that cannot attach it."""
    from ..lab.build import refuse_plugins
    from ..lab.plan import make_plan
    topo = load_topology(path, name, errors)
    if topo is None:
        return None, None
    plan = make_plan(topo, os.path.abspath(lab_dir or statemod.lab_dir_for(topo.name)))
    why = refuse_plugins(plan, plugins)
    if why:
        if errors is None:
            _err(f"{why}; nothing was built")
        else:
            errors.append(why)
        return None, None
    return topo, plan


def _print_plan(topo, plan) -> None:
    print(f"lab {topo.name}: {len(topo.nodes)} nodes, {len(topo.pods)} pods, {len(topo.networks)} networks, "
          f"{len(topo.checks)} checks; lab dir {plan.lab_dir}")
    for i, s in enumerate(plan.steps, 1):
        print(f"  {i:>3}. {s.desc}")


def cmd_validate(args) -> int:
    errors: list[str] | None = [] if args.json else None
    topo, plan = _plan_or_refusal(args.file, None, None, args.plugins, errors)
    if args.json:
        out = {"file": args.file, "ok": plan is not None, "errors": errors}
        if plan is not None:
            out.update(lab=topo.name, nodes=len(topo.nodes), pods=len(topo.pods), networks=len(topo.networks),
                       checks=[c.name for c in topo.checks], plan=[s.desc for s in plan.steps])
        print(json.dumps(out, indent=2))
    elif plan is not None:
        _print_plan(topo, plan)
    return OK if plan is not None else USAGE


def cmd_up(args) -> int:
    from ..lab import lifecycle
    topo, plan = _plan_or_refusal(args.file, args.name, args.lab_dir, args.plugins)
    if plan is None:
        return USAGE
    lab_dir = plan.lab_dir
    if args.dry_run:
        _print_plan(topo, plan)
        return OK
    if os.geteuid() != 0:
        _err("netlab up needs root (it creates network namespaces); try: sudo netlab up ...")
        return FAILED
    why = lifecycle.refusal(topo, plan)
    if why is not None:
        _err(str(why) + (f" --lab-dir {lab_dir}" if args.lab_dir and str(why).startswith("lab ") else ""))
        return USAGE if why.usage else FAILED
    quiet = args.quiet
    # with --json, stdout carries only the report: progress goes to stderr
    out = sys.stderr if args.json else sys.stdout
    say = (lambda s: None) if quiet else (lambda s: print(s, file=out, flush=True))
    t0 = time.monotonic()
    st = lifecycle.create_state(plan, args.file)
    say(f"netlab: bringing up lab {topo.name} ({len(topo.nodes)} nodes, {len(topo.pods)} pods) in {lab_dir}")
    prev_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        # the plan's steps, then the topology's link impairments and a scenario's faults
        builder, scenario = lifecycle.build(plan, st, plugins=args.plugins, progress=say)
    except BaseException as e:  # noqa: BLE001 - every failure rolls back
        interrupted = isinstance(e, KeyboardInterrupt)
        _err(("interrupted" if interrupted else f"build failed: {e}") + "; removing everything built so far")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        errors = lifecycle.take_down(st)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if errors:
            _err("could not remove everything: " + "; ".join(errors) + f"\n  state kept in {st.path}; retry: netlab down {topo.name}")
        else:
            _err("removed")
        return INTERRUPTED if interrupted else FAILED
    finally:
        signal.signal(signal.SIGTERM, prev_term)
    build_s = time.monotonic() - t0
    st.set(status="up", buildSeconds=round(build_s, 2), timings={k: round(v, 3) for k, v in builder.timings.items()})
    say(f"netlab: lab {topo.name} is up ({build_s:.1f}s)")
    rc = OK
    if not args.no_checks and topo.checks:
        results = _run_checks(topo, plan, st, args.json, quiet or args.json)
        print_report(topo.name, results, as_json=args.json)
        rc = OK if all(r.ok for r in results) else FAILED
        if scenario is not None:
            rc = _judge_scenario(scenario, results, quiet=args.json)
    if not args.json:
        first_pod = next((p for p in topo.pods), None)
        dir_opt = f" --lab-dir {lab_dir}" if args.lab_dir else ""
        nl = _prog()
        print(f"\nThe lab stays up. Use it:\n"
              f"  {nl} status {topo.name}{dir_opt}\n"
              + (f"  {nl} exec --lab {topo.name}{dir_opt} {first_pod} -- ip addr\n" if first_pod else "")
              + f"  {nl} verify --lab {topo.name}{dir_opt}\n"
              f"  evidence (pcaps): {os.path.join(lab_dir, 'evidence')}\n"
              f"Remove it:\n  {nl} down {topo.name}{dir_opt}")
    return rc


def _judge_scenario(scenario, results, *, quiet: bool) -> int:
    """A lab broken on purpose succeeds when its checks fail exactly as declared."""
    from ..lab.scenario import judge
    problems = judge(scenario, results)
    if not quiet:
        if problems:
            print("\nscenario: the symptom is NOT as declared:\n  " + "\n  ".join(problems))
        else:
            print(f"\nscenario: symptom reproduced as declared: {scenario.symptom}")
    return FAILED if problems else OK


def _prog() -> str:
    """How the user can call netlab: on PATH, else this venv's script, else -m."""
    import shutil
    if shutil.which("netlab"):
        return "netlab"
    script = os.path.join(os.path.dirname(sys.executable), "netlab")
    if os.access(script, os.X_OK):
        rel = os.path.relpath(script)
        return rel if not rel.startswith("..") else script
    return f"{sys.executable} -m netlab"


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


# --------------------------------------------------------------------------- down

def cmd_down(args) -> int:
    from ..lab.build import detach
    as_json = getattr(args, "json", False)

    def report(rc: int, lab: str | None, lab_dir: str | None, removed: int, errors: list[str], text: str) -> int:
        if as_json:
            print(json.dumps({"lab": lab, "labDir": lab_dir, "ok": rc == OK, "removed": removed,
                              "errors": errors, "message": text}, indent=2))
        elif rc == OK:
            print(f"netlab: {text}")
        else:
            _err(text)
        return rc

    if args.lab_dir:
        lab_dir = os.path.abspath(args.lab_dir)
    elif args.lab:
        lab_dir = statemod.lab_dir_for(_name_from_arg(args.lab))
    else:
        up = labs_up()
        if len(up) != 1:
            if not up:
                return report(OK, None, None, 0, [], "nothing to remove (no lab is up)")
            return report(USAGE, None, None, 0, [], "name the lab to remove: " + ", ".join(s.lab for s in up))
        lab_dir = up[0].lab_dir
    st = statemod.load(lab_dir)
    if st is None:
        return report(OK, None, lab_dir, 0, [], f"nothing to remove (no lab state in {lab_dir})")
    if os.geteuid() != 0:
        return report(FAILED, st.lab, lab_dir, 0, [], "netlab down needs root")
    t0 = time.monotonic()
    n = sum(1 for r in st.resources if not r.get("removed"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # finish the teardown once started
    try:
        errors = teardown(st, detach, log=lambda s: None)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if errors:
        left = sum(1 for r in st.resources if not r.get("removed"))
        if not as_json:
            _err(f"lab {st.lab}: {len(errors)} thing(s) could not be removed:")
            for e in errors:
                print(f"  {e}", file=sys.stderr)
        return report(FAILED, st.lab, lab_dir, n - left, errors, f"state kept in {st.path}; run netlab down again")
    return report(OK, st.lab, lab_dir, n, [],
                  f"lab {st.lab} removed ({n} recorded resources, {time.monotonic() - t0:.1f}s)")


# --------------------------------------------------------------------------- status

def lab_status(st: statemod.State) -> dict:
    from ..base import namespaces as nsutil
    from ..base.state import attach_addresses
    from ..base.state import proc_starttime
    addrs = attach_addresses(st)
    nss = [{"name": r["name"], "role": r.get("role", "alias of " + r.get("target", "")),
            "exists": nsutil.exists(r["name"])} for r in st.resources
           if r["kind"] in ("netns", "netns_alias") and not r.get("removed")]
    procs = [{"name": r.get("name"), "pid": r.get("pid"),
              "running": bool(r.get("pid")) and proc_starttime(int(r["pid"])) == r.get("starttime")}
             for r in st.find("process") if not r.get("removed")]
    pods = [{"pod": p, "netns": r["netns"], "node_ns": r["node_ns"], "network": r["network"],
             "address": addrs.get(p)} for p, r in st.attachments().items() if not r.get("removed")]
    report = None
    try:
        with open(os.path.join(st.lab_dir, "report.json"), encoding="utf-8") as f:
            rep = json.load(f)
        report = {"ok": rep["ok"], "passed": sum(c["ok"] for c in rep["checks"]), "total": len(rep["checks"])}
    except (OSError, ValueError, KeyError):
        pass
    from ..debug.trace import link_stats      # per-interface counters of every namespace that exists
    for n in nss:
        if n["exists"] and n["role"].split()[0] != "alias":
            n["interfaces"] = {k: v for k, v in link_stats(n["name"]).items() if k != "lo"}
    impairs = [{"target": r["target"], "ns": r["ns"], "dev": r["dev"], "spec": r["spec"]}
               for r in st.find("impair") if not r.get("removed")]
    healthy = all(n["exists"] for n in nss) and all(p["running"] for p in procs)
    from ..features.bgp import peer_status     # BGP sessions and learned prefixes per peer (ADR 0035)
    bgp_peers = peer_status(st)
    return {"lab": st.lab, "labDir": st.lab_dir, "status": st.data.get("status"), "healthy": healthy,
            "topology": st.data.get("topology"), "created": st.data.get("created"),
            "plugins": st.data.get("plugins", {}), "namespaces": nss, "processes": procs,
            "pods": pods, "lastCheck": report, "impairments": impairs, "bgp": bgp_peers}


def _sandbox_state(res: dict) -> str:
    """A containerd node's pod: 'ok' when CRI reports its sandbox READY with the
    recorded address (ADR 0025), else what CRI says."""
    from ..cri import CRIError, RuntimeClient
    try:
        with RuntimeClient(res["socket"], timeout=10) as cri:
            s = cri.pod_sandbox_status(res.get("sandbox_id") or "")
    except CRIError as e:
        return f"FAILED: {e}"
    if s.state != "SANDBOX_READY" or s.ip != res.get("cri_ip"):
        return f"FAILED: CRI reports sandbox {s.id[:12]} {s.state}, ip {s.ip or '-'} (recorded {res.get('cri_ip')})"
    return "ok"


def cni_check(st: statemod.State) -> dict[str, str]:
    """CNI CHECK of every recorded attachment: 'ok' or the plugin's error."""
    from ..base import namespaces as nsutil
    from ..lab.build import runtime_for
    out = {}
    sock = st.data.get("agentSocket")
    for pod, res in st.attachments().items():
        if res.get("removed"):
            continue
        if res.get("runtime") == "containerd":       # containerd never sends CHECK: ask CRI
            out[pod] = _sandbox_state(res)
            continue
        try:
            rt = runtime_for(st.lab_dir, res["node_ns"], res.get("cni_path") or st.data.get("cniPath", ""),
                             sock if sock and os.path.exists(sock) else None)
            rt.check(res["conflist"], nsutil.path(res["netns"]), res["container_id"], res["ifname"])
            out[pod] = "ok"
        except Exception as e:  # noqa: BLE001 - reported per pod
            out[pod] = f"FAILED: {e}"
    return out


def cmd_status(args) -> int:
    if args.lab or args.lab_dir:
        st = statemod.load(os.path.abspath(args.lab_dir) if args.lab_dir else statemod.lab_dir_for(_name_from_arg(args.lab)))
        sts = [st] if st else []
        if not sts:
            if args.json:
                print(json.dumps({"labs": []}))
            else:
                print("netlab: that lab is not up")
            return FAILED
    else:
        sts = labs_up()
    infos = [lab_status(s) for s in sts]
    if getattr(args, "cni_check", False):
        for st, info in zip(sts, infos):
            results = cni_check(st)
            for pod in info["pods"]:
                pod["cniCheck"] = results.get(pod["pod"], "not checked")
            info["healthy"] = info["healthy"] and all(v == "ok" for v in results.values())
    rc = OK if all(i["healthy"] for i in infos) else FAILED
    if args.json:
        print(json.dumps({"labs": infos}, indent=2))
        return rc
    if not infos:
        print("no lab is up")
        return OK
    for i in infos:
        chk = i["lastCheck"]
        print(f"lab {i['lab']}: {i['status']}{'' if i['healthy'] else ' (DEGRADED)'}  dir {i['labDir']}"
              + (f"  checks {chk['passed']}/{chk['total']}" if chk else ""))
        if i["plugins"]:
            print("  plugins: " + ", ".join(f"{k}={v}" for k, v in sorted(i["plugins"].items())))
        for n in i["namespaces"]:
            print(f"  netns {n['name']:<32} {n['role']}{'' if n['exists'] else '  MISSING'}")
            for ifn, c in sorted(n.get("interfaces", {}).items()):
                bad = ", ".join(f"{k} {v}" for k, v in c.items() if v and ("drop" in k or "err" in k))
                print(f"        {ifn:<16} rx {c['rx_packets']:>8} pkts {c['rx_bytes']:>11} B   "
                      f"tx {c['tx_packets']:>8} pkts {c['tx_bytes']:>11} B" + (f"   {bad}" if bad else ""))
        for m in i.get("impairments", []):
            from ..features.impair import Impairment
            print(f"  impair {m['target']} ({m['dev']} in {m['ns']}): {Impairment.from_dict(m['spec']).describe()}")
        for p in i["processes"]:
            print(f"  proc  {p['name']} pid {p['pid']} {'running' if p['running'] else 'NOT RUNNING'}")
        for b in i.get("bgp", []):
            if b["session"] is None:
                print(f"  bgp   {b['node']}: {b['error']}")
            else:
                print(f"  bgp   {b['node']} {b['session']} (IPv{b['family']}) {b['info'] or b['state']}: "
                      f"{len(b['prefixes'])} prefix(es) learned {' '.join(b['prefixes'])}".rstrip())
        for p in i["pods"]:
            print(f"  pod   {p['pod']:<16} {p['address'] or '-':<16} {p['network']:<10} netns {p['netns']}"
                  + (f"  CNI CHECK: {p['cniCheck']}" if "cniCheck" in p else ""))
    return rc


# --------------------------------------------------------------------------- exec / verify

def cmd_exec(args) -> int:
    from ..base import namespaces as nsutil
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        _err("give a command after --, e.g. netlab exec POD -- ip addr")
        return USAGE
    st = find_lab(args.lab, args.lab_dir)
    if st is None:
        return FAILED
    topo, plan = plan_for_state(st)
    if plan is None:
        return USAGE
    if args.target == "underlay":
        from ..lab.plan import switch_ns
        ns = switch_ns(st.lab)
    elif args.target in plan.endpoints:
        ns = plan.endpoints[args.target].netns
    else:
        _err(f"no pod or node {args.target!r} in lab {st.lab} (have: {', '.join(plan.endpoints)})")
        return USAGE
    if not nsutil.exists(ns):
        _err(f"namespace {ns} does not exist (is the lab up?)")
        return FAILED
    sys.stdout.flush()
    os.execvp("ip", nsutil.exec_argv(ns, cmd))
    return FAILED  # not reached


def cmd_verify(args) -> int:
    name = args.lab or (_name_from_arg(args.file) if args.file and not args.lab_dir else None)
    st = find_lab(name, args.lab_dir)
    if st is None:
        if name:
            _err(f"lab {name} is not up")
        return FAILED
    topo, plan = plan_for_state(st, args.file)
    if plan is None:
        return USAGE
    results = _run_checks(topo, plan, st, args.json)
    print_report(st.lab, results, as_json=args.json)
    return OK if all(r.ok for r in results) else FAILED


def main(argv=None) -> int:
    """Stand-alone entry (the real one is netlab/cli/main.py)."""
    ap = argparse.ArgumentParser(prog="netlab")
    sub = ap.add_subparsers(dest="command", required=True)
    register(sub)
    a = ap.parse_args(argv)
    return a.func(a)
