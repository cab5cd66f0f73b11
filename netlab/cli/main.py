"""`netlab` entry point: verbs only.

Each command module exposes ``register(subparsers)`` and sets ``func`` (a
callable taking the parsed args and returning an exit status from
``netlab.cli.exitcodes``) on its parsers. Every module is imported for real: an
import error is a bug and is never turned into a missing verb.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from . import exitcodes

# Order matters: cmd_cni first, so later modules can add `netlab cni ...` verbs
# through netlab.cli.cmd_cni.add_cni_command (e.g. `cni log` from cmd_debug).
COMMAND_MODULES = ("netlab.cli.cmd_cni", "netlab.cli.cmd_lab", "netlab.cli.cmd_debug", "netlab.cli.cmd_agent")


LAB_EXTRA = ("scapy", "yaml")      # setup.cfg [lab]: captures and topology files


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from plugins.core.version import SUPPORTED
    try:
        v = version("cnilab")
    except PackageNotFoundError:      # run from a checkout that was never installed
        v = "unknown (not installed; run make setup)"
    return f"netlab (cnilab) {v}; CNI spec {SUPPORTED[0]} to {SUPPORTED[-1]}"


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netlab", description="Namespace network labs built on our CNI plugins, "
        "and a libcni-compatible CNI runtime.",
        epilog="Exit status: " + ", ".join(f"{n} {name.lower().replace('_', ' ')}" for n, name in exitcodes.TABLE)
        + " (docs/netlab/commands.md).")
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for modname in modules:
        importlib.import_module(modname).register(sub)
    p = sub.add_parser("completion", help="print a shell completion script (bash or zsh)",
                       description="Print a completion script generated from this parser. "
                       "Load it with: source <(netlab completion bash)")
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(func=lambda a: _completion(parser, a.shell))
    return parser


def _completion(parser: argparse.ArgumentParser, shell: str) -> int:
    from .completion import script
    sys.stdout.write(script(parser, shell))
    return exitcodes.OK


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # a command group without a verb, e.g. `netlab cni`
        parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "--help"])
        sys.exit(exitcodes.USAGE)
    try:
        rc = func(args)
    except KeyboardInterrupt:
        rc = exitcodes.INTERRUPTED
    except ModuleNotFoundError as e:
        if e.name not in LAB_EXTRA:
            raise
        # a node install (no [lab] extra): the agent and cni verbs work, labs do not
        print(f"netlab: this needs {e.name}, which is not installed: labs need the lab extra "
              f"(pip install 'cnilab[lab]', or make setup)", file=sys.stderr)
        rc = exitcodes.FAILED
    sys.exit(rc or exitcodes.OK)


if __name__ == "__main__":
    main()
