"""`netlab` entry point: verbs only.

Each command module exposes ``register(subparsers)`` and sets ``func`` (a
callable taking the parsed args and returning an exit status) on its parsers.
Modules written by other issues are optional until they exist; an import
error *inside* an existing module is never hidden.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Order matters: cmd_cni first, so later modules can add `netlab cni ...` verbs
# through netlab.cmd_cni.add_cni_command (e.g. `cni log` from cmd_debug).
COMMAND_MODULES = ("netlab.cmd_cni", "netlab.cmd_lab", "netlab.cmd_debug", "netlab.cmd_agent")


def _load(modname: str):
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name == modname:
            return None          # not written yet
        raise


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netlab", description="Namespace network labs built on our CNI plugins, "
        "and a libcni-compatible CNI runtime.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for modname in modules:
        mod = _load(modname)
        if mod is not None:
            mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # a command group without a verb, e.g. `netlab cni`
        parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "--help"])
        sys.exit(2)
    try:
        rc = func(args)
    except KeyboardInterrupt:
        rc = 130
    sys.exit(rc or 0)


if __name__ == "__main__":
    main()
