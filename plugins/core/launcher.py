"""The entry point of an installed plugin executable.

Kept to the standard library: it picks the plugin by name and hands over to
the dispatcher, which imports the plugin module (and pyroute2, nftables) only
after the input is known to be valid and the command needs them.
"""
from __future__ import annotations


def main(plugin: str) -> None:
    from .skel import main as skel_main
    skel_main(plugin)
