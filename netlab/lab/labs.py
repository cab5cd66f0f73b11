"""Labs that are up: finding them, their topology and plan again, and where
their endpoints live (what the CLI, checks and debugging tools share).

Imports netlab.base.state, netlab.base.names, netlab.lab.topology and netlab.lab.plan.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable

from ..base import state as statemod
from ..base.names import switch_ns


def _err(msg: str) -> None:
    print(f"netlab: {msg}", file=sys.stderr)


def load_topology(path: str, name: str | None = None, errors: list[str] | None = None):
    """The topology, or None after printing its errors (or adding them to ``errors``)."""
    from .topology import TopologyError, load
    try:
        return load(path, name=name)
    except TopologyError as e:
        if errors is not None:
            errors += e.errors
            return None
        print(f"{path}: {len(e.errors)} error(s); nothing was built:", file=sys.stderr)
        for line in e.errors:
            print(f"  {line}", file=sys.stderr)
        return None


def labs_up(root: str | None = None) -> list[statemod.State]:
    root = root or statemod.DEFAULT_ROOT
    out = []
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return out
    for e in entries:
        st = statemod.load(os.path.join(root, e))
        if st is not None:
            out.append(st)
    return out


def find_lab(name: str | None, lab_dir: str | None, err: Callable[[str], None] = _err) -> statemod.State | None:
    """The lab named, or in ``lab_dir``, or the only one up; None after ``err`` says why."""
    if lab_dir:
        return statemod.load(lab_dir)
    if name:
        return statemod.load(statemod.lab_dir_for(name))
    up = labs_up()
    if len(up) == 1:
        return up[0]
    if not up:
        err("no lab is up")
    else:
        err("several labs are up; name one: " + ", ".join(s.lab for s in up))
    return None


def plan_for_state(st: statemod.State, topo_path: str | None = None):
    """(topology, plan) of a lab that is up, from its recorded topology file; (None, None)
    after printing the file's errors."""
    from .plan import make_plan
    topo = load_topology(topo_path or st.data["topology"], name=st.lab)
    if topo is None:
        return None, None
    return topo, make_plan(topo, st.lab_dir)


@dataclass
class Target:
    name: str
    ns: str
    address: str | None
    iface: str
    kind: str


def target(topo, plan, addresses: dict[str, str], name: str) -> Target:
    """Where a lab endpoint (pod, node, 'ext', 'dns', 'underlay') lives and its address;
    ``addresses`` are the pods' recorded ones (netlab.base.state.attach_addresses)."""
    if name == "underlay":
        # all switch ports, incoming frames only (a bridge's own device does
        # not see unicast frames forwarded between its ports)
        return Target("underlay", switch_ns(topo.name), None, "any", "switch")
    ep = plan.endpoints[name]
    addr = ep.address
    if ep.kind == "pod":
        pod = topo.pods[name]
        owner = topo.pods[topo.pod_netns_owner(name)]
        if owner.mode == "host":
            addr = topo.nodes[owner.node].address
        else:
            addr = addresses.get(owner.name, owner.ip)
        iface = owner.ifname if owner.mode in ("bridge", "overlay") else ("lo" if owner.mode == "none" else "eth0")
        return Target(name, ep.netns, addr, iface, "host" if owner.mode == "host" else pod.mode)
    return Target(name, ep.netns, addr, ep.iface, ep.kind)
