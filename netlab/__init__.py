"""netlab: namespace labs built with our CNI plugins.

Owns the lab side of the project, in packages from the bottom up: ``base``
(namespaces, names, the state file), ``features`` (Services, policies, BGP,
DHCP, DNS, impairments), ``lab`` (topology -> plan -> build -> teardown),
``debug`` (capture, trace, drop reasons, graph), ``checks`` (verdicts on
evidence), ``cli`` (the `netlab` command) and ``cri`` (a CRI client and a
private containerd for tests). ``netlab.Lab`` (``api``) is the Python API.

May import: its own packages downward, cniruntime, cninode, plugins, ipam.
Nothing here is imported at package import: ``netlab.Lab`` loads on first use.
"""
from __future__ import annotations

__all__ = ["Lab", "LabError"]


def __getattr__(name: str):
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'netlab' has no attribute {name!r}")
