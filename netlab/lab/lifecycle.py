"""A lab's life: refuse what cannot be built, build it with everything recorded,
take it down. What ``netlab up``/``down`` and the Python API (netlab.Lab) share.

Imports the lab's own modules (plan, build, faults, teardown), netlab.features
(impairments) and netlab.base (the state file).
"""
from __future__ import annotations

import os
from typing import Callable

from ..base import state as statemod
from .build import Builder
from .pods import detach
from .teardown import teardown


class Refused(Exception):
    """The lab cannot be built here or now; nothing was touched. ``usage`` is True
    for a problem of the topology itself (the CLI's exit status USAGE)."""

    def __init__(self, msg: str, *, usage: bool = False) -> None:
        super().__init__(msg)
        self.usage = usage


def refusal(topo, plan) -> Refused | None:
    """Why ``plan`` cannot be built now, or None (checked before anything is made)."""
    from ..features.impair import preflight     # impairments this kernel cannot make
    if os.geteuid() != 0:
        return Refused("building a lab needs root (it creates network namespaces)")
    why = preflight(topo)
    if why:
        return Refused(why, usage=True)
    lab_dir = plan.lab_dir
    if statemod.load(lab_dir) is not None:
        return Refused(f"lab {topo.name} is already up (state in {lab_dir}); remove it first: "
                       f"netlab down {topo.name}")
    if os.path.isdir(lab_dir) and os.listdir(lab_dir):
        return Refused(f"{lab_dir} exists and is not empty (and holds no lab state): refusing to use it")
    return None


def create_state(plan, topology_path: str) -> statemod.State:
    """The lab directory (and the parents we create) and its state file, recorded first."""
    lab_dir = plan.lab_dir
    parents = []          # directories above the lab dir that we create (e.g. /var/lib/netlab)
    d = os.path.dirname(lab_dir)
    while d and d != "/" and not os.path.isdir(d):
        parents.append(d)
        d = os.path.dirname(d)
    os.makedirs(lab_dir, mode=0o755, exist_ok=True)
    st = statemod.create(lab_dir, plan.lab, topology_path)
    # we own the lab dir now (it was absent or empty)
    st.record("labdir", path=lab_dir, created=True, created_parents=parents)
    return st


def build(plan, st: statemod.State, *, plugins: str = "ours", progress: Callable[[str], None] = print):
    """Build every step, then the topology's impairments and a scenario's faults.
    Returns (builder, scenario or None); raises on any failure (the caller tears down)."""
    from ..features.impair import apply_topology
    from .faults import apply as apply_scenario
    builder = Builder(plan, st, plugins=plugins, progress=progress)
    builder.run()
    apply_topology(plan, st, record=builder.record, update=builder.update, progress=progress)
    scenario = apply_scenario(plan, st, record=builder.record, update=builder.update, progress=progress)
    return builder, scenario


def take_down(st: statemod.State, *, log: Callable[[str], None] = lambda s: None) -> list[str]:
    """Remove everything the state file records; the errors (empty: all gone)."""
    return teardown(st, detach, log=log)
