"""`netlab agent run|start|stop|status|unit`: the resident node agent.

    netlab agent run    [--socket P] [--workers N] [--call-timeout S] [--on-code-change M]
    netlab agent start  [--socket P] [--log FILE] [--wait S] [same options as run]
    netlab agent stop   [--socket P] [--timeout S]
    netlab agent status [--socket P] [--json]
    netlab agent unit   [--socket P] [--python PY] [--unit-dir DIR]

The socket defaults to $CNILAB_AGENT_SOCKET, else /run/cnilab/agent.sock.
Labs and tests use a socket of their own (e.g. in the lab directory), so they
never touch a node-wide agent. Plugin executables find the agent through the
same variable (see cninode/launcher.py).

The operations themselves (start, stop, the unit) are cninode.agentctl.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from cninode import launcher

from cninode.agentctl import agent_module, install_systemd_unit, start_agent, stop_agent, unit_text
from .exitcodes import FAILED, NOT_RUNNING, OK

def _socket(args: argparse.Namespace) -> str:
    return os.path.abspath(args.socket or launcher.socket_path())


# ---- verbs ----------------------------------------------------------------------------
def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=64,
                   help="concurrent calls per process (default 64)")
    p.add_argument("--processes", type=int, default=None,
                   help="serving processes (default: CPUs, at most 4)")
    p.add_argument("--call-timeout", type=float, default=120.0,
                   help="seconds one call may run before the agent exits (default 120)")
    p.add_argument("--on-code-change", choices=("exit", "refuse", "ignore"), default="exit",
                   help="when the loaded code changes on disk (default: exit when idle)")


def cmd_run(args: argparse.Namespace) -> int:
    args.socket = _socket(args)
    if args.processes is None:
        args.processes = agent_module().default_processes()
    return agent_module().run_from_args(args)


def cmd_start(args: argparse.Namespace) -> int:
    sock = _socket(args)
    try:
        pid = start_agent(sock, log_path=args.log, wait=args.wait, workers=args.workers,
                          call_timeout=args.call_timeout, on_code_change=args.on_code_change,
                          processes=args.processes)
    except (RuntimeError, OSError) as e:
        print(f"netlab agent start: {e}", file=sys.stderr)
        return FAILED
    print(f"agent pid {pid} serving {sock}")
    return OK


def cmd_stop(args: argparse.Namespace) -> int:
    sock = _socket(args)
    if stop_agent(sock, timeout=args.timeout):
        print(f"agent serving {sock} stopped")
    else:
        print(f"no agent was serving {sock}")
    return OK


def cmd_status(args: argparse.Namespace) -> int:
    sock = _socket(args)
    st = agent_module().ping(sock, timeout=args.timeout)
    if args.json:
        print(json.dumps(st if st is not None else {"socket": sock, "running": False}, indent=2))
    elif st is None:
        print(f"no agent answers on {sock} (plugins run in-process)")
    else:
        state = "healthy" if st.get("healthy") else ("stale code" if st.get("stale") else "stopping")
        print(f"agent pid {st['pid']} on {sock}: {state}; up {st['uptime']:.0f}s, "
              f"{st.get('processes', 1)} serving process(es), "
              f"served {st['served']} calls ({st['failed']} failed, {st['refused']} refused), "
              f"{st.get('in_flight_total', 0)} in flight; code {st['code_root']}")
    if st is None:
        return NOT_RUNNING
    return OK if st.get("healthy") else FAILED


def cmd_unit(args: argparse.Namespace) -> int:
    sock = _socket(args)
    if args.unit_dir:
        print(install_systemd_unit(args.unit_dir, sock=sock, python=args.python))
    else:
        sys.stdout.write(unit_text(sock, args.python))
    return OK


def register(subparsers) -> None:
    p = subparsers.add_parser("agent", help="the resident node agent (fast plugin calls)",
                              description=__doc__.split(" Plugin executables")[0].strip(),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="agent_command", metavar="VERB")

    def verb(name: str, func, help_text: str) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help_text)
        q.add_argument("--socket", default=None,
                       help=f"socket path (default: ${launcher.SOCKET_ENV} or "
                            f"{launcher.DEFAULT_SOCKET})")
        q.set_defaults(func=func)
        return q

    q = verb("run", cmd_run, "serve in the foreground (what the systemd unit runs)")
    _add_run_options(q)
    q = verb("start", cmd_start, "start a detached agent and wait until it answers")
    _add_run_options(q)
    q.add_argument("--log", default=None, help="log file (default: SOCKET.log)")
    q.add_argument("--wait", type=float, default=15.0, help="seconds to wait for it (default 15)")
    q = verb("stop", cmd_stop, "stop the agent serving the socket")
    q.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for calls in flight (default 30)")
    q = verb("status", cmd_status, "health check (exit 0 healthy, 1 unhealthy, 3 not running)")
    q.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
    q.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an answer (default 2)")
    q = verb("unit", cmd_unit, "print (or write into --unit-dir) the systemd unit")
    q.add_argument("--python", default=None, help="interpreter (default: this one)")
    q.add_argument("--unit-dir", default=None, help="write the unit there instead of printing it")
