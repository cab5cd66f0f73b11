"""`netlab cni ...`: what cnitool does, on netlab's libcni-compatible runtime.

    netlab cni add|del|check NETWORK NETNS [--id ID] [--ifname IF] ...
    netlab cni gc NETWORK [--valid ID:IF ...]
    netlab cni status NETWORK
    netlab cni install DIR

NETWORK is a network name looked up in --conf-dir, or a path to a
.conflist/.conf file. NETNS is a path or a name under /var/run/netns. The
defaults follow cnitool's environment variables (NETCONFPATH, CNI_PATH,
CNI_IFNAME, CNI_ARGS, CAP_ARGS); the container ID defaults to a hash of the
netns path, like cnitool's.

Other modules add verbs under `netlab cni` with ``add_cni_command``
(netlab.cli.cmd_debug adds `netlab cni log`, which reads the files written by
``--log``). Exit statuses are netlab.cli.exitcodes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any

from plugins.core.errors import CNIError, INVALID_NETWORK_CONFIG

from .exitcodes import FAILED, OK

NETNS_DIR = "/var/run/netns"
_cni_subparsers: Any = None


def add_cni_command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """Add a verb under `netlab cni` (call from your module's ``register``)."""
    if _cni_subparsers is None:
        raise RuntimeError("netlab.cli.cmd_cni.register() has not run yet")
    return _cni_subparsers.add_parser(name, **kwargs)


def netns_path(value: str) -> str:
    """A netns argument: a path (kept, made absolute) or a name under /var/run/netns."""
    if not value:
        return ""
    if os.sep in value:
        return os.path.abspath(value)
    return os.path.join(NETNS_DIR, value)


def default_container_id(netns: str) -> str:
    return "cnitool-" + hashlib.sha512(netns.encode()).hexdigest()[:20]


def parse_caps(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        caps = json.loads(text)
    except ValueError as e:
        raise CNIError(INVALID_NETWORK_CONFIG, "--cap must be a JSON object", str(e)) from None
    if not isinstance(caps, dict):
        raise CNIError(INVALID_NETWORK_CONFIG, "--cap must be a JSON object", text[:200])
    return caps


def parse_valid(items: list[str] | None) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        cid, sep, ifname = item.rpartition(":")
        if not sep or not cid or not ifname:
            raise CNIError(INVALID_NETWORK_CONFIG, "--valid takes CONTAINERID:IFNAME", item)
        out.append((cid, ifname))
    return out


def make_runtime(args: argparse.Namespace):
    from cniruntime.runtime import Runtime
    return Runtime(args.cni_path, conf_dir=args.conf_dir, cache_dir=args.cache_dir,
                   host_netns=netns_path(args.host_netns) if args.host_netns else None,
                   log_path=args.log, rollback=not getattr(args, "no_rollback", False))


def _common(p: argparse.ArgumentParser) -> None:
    env = os.environ
    p.add_argument("network", metavar="NETWORK",
                   help="network name (looked up in --conf-dir) or a .conflist/.conf file")
    p.add_argument("--conf-dir", default=env.get("NETCONFPATH") or "/etc/cni/net.d",
                   help="where networks are looked up (default: $NETCONFPATH or /etc/cni/net.d)")
    p.add_argument("--cni-path", default=env.get("CNI_PATH") or "/opt/cni/bin",
                   help="':'-separated plugin directories (default: $CNI_PATH or /opt/cni/bin)")
    p.add_argument("--cache-dir", default="/var/lib/cni",
                   help="libcni cache root; results go to DIR/results (default: /var/lib/cni)")
    p.add_argument("--host-netns", metavar="NETNS",
                   help="run the plugins inside this namespace (a lab node), path or name")
    p.add_argument("--log", metavar="FILE", default=env.get("NETLAB_CNI_LOG") or None,
                   help="append one JSON line per plugin exec (default: $NETLAB_CNI_LOG)")


def _attachment(p: argparse.ArgumentParser) -> None:
    env = os.environ
    p.add_argument("netns", metavar="NETNS", help="the pod's netns: a path or a name under "
                   "/var/run/netns")
    p.add_argument("--id", dest="container_id", help="container ID (default: hash of NETNS)")
    p.add_argument("--ifname", default=env.get("CNI_IFNAME") or "eth0",
                   help="interface in the pod (default: $CNI_IFNAME or eth0)")
    p.add_argument("--cap", default=env.get("CAP_ARGS") or None, metavar="JSON",
                   help='capability args, e.g. \'{"portMappings": [...]}\' (default: $CAP_ARGS)')
    p.add_argument("--args", dest="cni_args", default=env.get("CNI_ARGS") or None,
                   metavar="K=V;..", help="CNI_ARGS for the plugins (default: $CNI_ARGS)")


def register(subparsers) -> None:
    global _cni_subparsers
    cni = subparsers.add_parser("cni", help="run CNI plugins like cnitool (libcni semantics)",
                                description="Run CNI plugins like cnitool, on netlab's libcni-compatible runtime.")
    sub = cni.add_subparsers(dest="cni_command", metavar="VERB")
    sub.required = True
    _cni_subparsers = sub
    for verb, help_ in (("add", "attach: run ADD through the network's plugins"),
                        ("del", "detach: run DEL in reverse with the cached result"),
                        ("check", "run CHECK with the cached result")):
        p = sub.add_parser(verb, help=help_)
        _common(p)
        _attachment(p)
        if verb == "add":
            p.add_argument("--no-rollback", action="store_true",
                           help="leave a failed ADD as it is (default: DEL what ran)")
        p.set_defaults(func=run, verb=verb)
    p = sub.add_parser("gc", help="delete cached attachments not listed, then GC the plugins")
    _common(p)
    p.add_argument("--valid", action="append", metavar="ID:IF",
                   help="an attachment to keep (repeatable)")
    p.add_argument("--json", action="store_true", help="print what was deleted (or the error) as JSON")
    p.set_defaults(func=run, verb="gc")
    p = sub.add_parser("status", help="ask every plugin whether it could ADD now")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the answer (or the error) as JSON")
    p.set_defaults(func=run, verb="status")
    p = sub.add_parser("install", help="write our plugin executables into DIR")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--force", action="store_true",
                   help="also replace files that are not our launchers")
    p.add_argument("--systemd", nargs="?", const="/etc/systemd/system", metavar="UNIT_DIR",
                   help="also write the node agent's systemd unit (default dir "
                        "/etc/systemd/system); enable it with systemctl")
    p.set_defaults(func=run_install)
    # `netlab cni log` is added by netlab.cli.cmd_debug via add_cni_command.


def _error_obj(e: BaseException) -> dict:
    if isinstance(e, CNIError):
        obj = e.to_dict("1.1.0")
        obj.pop("cniVersion", None)
        return obj
    return {"msg": str(e)}


def _fail(e: BaseException, as_json: bool = False, **report: Any) -> int:
    if as_json:
        sys.stdout.write(json.dumps(dict(report, ok=False, error=_error_obj(e)), indent=2) + "\n")
        return FAILED
    sys.stderr.write(f"netlab cni: error: {e}\n")
    if isinstance(e, CNIError):
        sys.stderr.write(json.dumps(_error_obj(e)) + "\n")
    return FAILED


def run(args: argparse.Namespace) -> int:
    as_json = getattr(args, "json", False)
    try:
        rt = make_runtime(args)
        if args.verb in ("add", "del", "check"):
            netns = netns_path(args.netns)
            cid = args.container_id or default_container_id(netns)
            caps = parse_caps(args.cap)
            if args.verb == "add":
                res = rt.add(args.network, netns, cid, args.ifname, capability_args=caps,
                             cni_args=args.cni_args)
                sys.stdout.write(json.dumps(res, indent=2) + "\n")
            elif args.verb == "del":
                rt.delete(args.network, netns, cid, args.ifname, capability_args=caps,
                          cni_args=args.cni_args)
            else:
                rt.check(args.network, netns, cid, args.ifname, capability_args=caps,
                         cni_args=args.cni_args)
        elif args.verb == "gc":
            removed = rt.gc(args.network, parse_valid(args.valid))
            if as_json:
                sys.stdout.write(json.dumps({"network": args.network, "ok": True, "deleted": [
                    {"containerID": a.container_id, "ifname": a.ifname} for a in removed]}, indent=2) + "\n")
            for a in [] if as_json else removed:
                sys.stdout.write(f"deleted stale attachment {a.container_id} {a.ifname}\n")
        elif args.verb == "status":
            net = rt.network(args.network)
            rt.status(net)
            if as_json:
                from plugins.core import version as ver
                sys.stdout.write(json.dumps({
                    "network": net.name, "cniVersion": net.cni_version, "ok": True,
                    "plugins": [p["type"] for p in net.plugins],
                    # before 1.1.0 there is no STATUS to send: ready by definition
                    "asked": ver.at_least(net.cni_version, "1.1.0")}, indent=2) + "\n")
        return OK
    except (CNIError, OSError) as e:
        return _fail(e, as_json, network=args.network)


def run_install(args: argparse.Namespace) -> int:
    from cninode.install import install
    try:
        written = install(args.dir, force=args.force)
    except (CNIError, OSError, ValueError) as e:
        return _fail(e)
    for path in written:
        sys.stdout.write(path + "\n")
    if args.systemd:
        from .cmd_agent import install_systemd_unit
        unit = install_systemd_unit(args.systemd, python=sys.executable)
        sys.stdout.write(unit + "\n")
        sys.stderr.write("enable the agent with: systemctl daemon-reload && "
                         "systemctl enable --now cnilab-agent\n")
    return OK
