"""Labs that are up: finding them, their topology and plan again, and where
their endpoints live (what the CLI, checks and debugging tools share).

Imports netlab.base.state, netlab.base.names, netlab.lab.topology and netlab.lab.plan.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
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
    addresses: list[str] = field(default_factory=list)   # every family's address, primary first

    @property
    def families(self) -> list[int]:
        return [family_of(a) for a in self.addresses]

    def address_of(self, family: int) -> str | None:
        return next((a for a in self.addresses if family_of(a) == family), None)

    def at(self, family: int | None) -> "Target":
        """This target seen in one family: ``address`` is that family's (None: it has none)."""
        if family is None:
            return self
        import dataclasses
        return dataclasses.replace(self, address=self.address_of(family))


def family_of(addr: str) -> int:
    return 6 if ":" in addr else 4


def families_between(src: Target, dst: Target, family: int | None) -> list[int]:
    """The families a check runs in: the one asked for, else every family both
    ends have (the destination's primary first); a single-family lab gets one."""
    if family:
        return [family]
    both = [f for f in dst.families if f in src.families] if src.addresses else list(dst.families)
    return both or [family_of(dst.address)] if dst.address else both


def target(topo, plan, addresses: dict[str, str], name: str,
           addresses_all: dict[str, list[str]] | None = None) -> Target:
    """Where a lab endpoint (pod, node, 'ext', 'dns', 'underlay') lives and its address;
    ``addresses`` are the pods' recorded primary ones, ``addresses_all`` every family's
    (netlab.base.state.attach_addresses / attach_addresses_all)."""
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
            addrs = list(topo.nodes[owner.node].addresses)
        else:
            addr = addresses.get(owner.name, owner.ip)
            addrs = list((addresses_all or {}).get(owner.name) or owner.ips)
            if addr and addr in addrs:      # primary first
                addrs = [addr] + [a for a in addrs if a != addr]
        iface = owner.ifname if owner.mode in ("bridge", "overlay") else ("lo" if owner.mode == "none" else "eth0")
        return Target(name, ep.netns, addr, iface, "host" if owner.mode == "host" else pod.mode, addrs)
    return Target(name, ep.netns, addr, ep.iface, ep.kind, list(ep.addresses or ([addr] if addr else [])))
