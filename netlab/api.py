"""netlab as a Python library: a lab object to bring a topology up, run things
in it, check it, trace and capture, and take it down (docs/netlab/python-api.md).

    import netlab

    with netlab.Lab("topologies/default.yaml", name="demo") as lab:
        print(lab.exec("web", ["ip", "-br", "addr"]).stdout)
        assert all(r.ok for r in lab.check())
        print(lab.trace("ov1", "web").verdict)

The same code paths as the CLI (netlab.lab.lifecycle, netlab.checks,
netlab.debug); everything made is recorded in the lab's state file and removed
by ``down()`` (also when the build fails half-way, and on leaving the ``with``).
"""
from __future__ import annotations

import os
import subprocess
import time
from typing import Callable, Iterable, Sequence

from .base import namespaces as nsutil
from .base import state as statemod
from .lab import lifecycle
from .lab.labs import find_lab, plan_for_state, target as endpoint_target
from .lab.plan import make_plan, switch_ns


class LabError(Exception):
    """A lab could not be built, found, used or removed; the message says why."""


class Lab:
    """One lab from a topology file. ``up()`` builds it (or use ``with``), ``down()``
    removes exactly what was recorded. ``Lab.attach(name)`` uses a lab that is already up."""

    def __init__(self, topology: str, *, name: str | None = None, lab_dir: str | None = None,
                 plugins: str = "ours", progress: Callable[[str], None] | None = None) -> None:
        from .lab.build import refuse_plugins
        from .lab.topology import load
        self.topology_path = os.path.abspath(topology)
        self.topo = load(self.topology_path, name=name)        # TopologyError lists every problem
        self.plan = make_plan(self.topo, os.path.abspath(lab_dir or statemod.lab_dir_for(self.topo.name)))
        why = refuse_plugins(self.plan, plugins)
        if why:
            raise LabError(why)
        self.plugins = plugins
        self.progress = progress or (lambda s: None)
        self.st: statemod.State | None = None
        self.scenario = None

    # ---- life ---------------------------------------------------------------------
    @classmethod
    def attach(cls, name: str | None = None, *, lab_dir: str | None = None) -> "Lab":
        """The lab that is up under this name (or the only one), without building anything."""
        errors: list[str] = []
        st = find_lab(name, lab_dir, err=errors.append)
        if st is None:
            raise LabError(errors[0] if errors else f"lab {name or lab_dir} is not up")
        topo, plan = plan_for_state(st)
        if plan is None:
            raise LabError(f"cannot load the topology of lab {st.lab} ({st.data.get('topology')})")
        lab = cls.__new__(cls)
        lab.topology_path, lab.topo, lab.plan = st.data.get("topology", ""), topo, plan
        lab.plugins, lab.progress, lab.st, lab.scenario = st.data.get("plugins", "ours"), (lambda s: None), st, None
        return lab

    @property
    def name(self) -> str:
        return self.topo.name

    @property
    def lab_dir(self) -> str:
        return self.plan.lab_dir

    def up(self) -> "Lab":
        why = lifecycle.refusal(self.topo, self.plan)
        if why is not None:
            raise LabError(str(why))
        self.st = lifecycle.create_state(self.plan, self.topology_path)
        try:
            _, self.scenario = lifecycle.build(self.plan, self.st, plugins=self.plugins, progress=self.progress)
        except BaseException as e:
            errors = lifecycle.take_down(self.st)
            self.st = None
            if errors:
                raise LabError(f"build failed ({e}); could not remove everything: {'; '.join(errors)}") from e
            raise
        self.st.set(status="up")
        return self

    def down(self) -> None:
        if self.st is None:
            return
        errors = lifecycle.take_down(self.st)
        if errors:
            raise LabError(f"lab {self.name}: could not remove: {'; '.join(errors)} (state kept in {self.st.path})")
        self.st = None

    def __enter__(self) -> "Lab":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def _state(self) -> statemod.State:
        if self.st is None:
            raise LabError(f"lab {self.name} is not up")
        return self.st

    # ---- using it -----------------------------------------------------------------
    def netns(self, name: str) -> str:
        """The namespace of a pod, node, 'ext', 'dns' or 'underlay' (the switch)."""
        if name == "underlay":
            return switch_ns(self.plan.lab)
        if name not in self.plan.endpoints:
            raise LabError(f"no pod or node {name!r} in lab {self.name} (have: {', '.join(self.plan.endpoints)})")
        return self.plan.endpoints[name].netns

    def address(self, name: str) -> str | None:
        """The IPv4 address of a pod (as its ADD result says), node, 'ext' or 'dns'."""
        return endpoint_target(self.topo, self.plan, statemod.attach_addresses(self._state()), name).address

    def exec(self, name: str, argv: Sequence[str], *, check: bool = False, timeout: float = 60,
             input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` in the namespace of ``name`` (like ``netlab exec``: with the
        namespace's /etc/netns files, so DNS is the pod's). Text output, never a shell."""
        self._state()
        return nsutil.run(self.netns(name), list(argv), check=check, timeout=timeout, input=input)

    def check(self, names: Iterable[str] | None = None, *,
              progress: Callable[[object], None] | None = None) -> list:
        """Run the topology's checks (all, or those named); CheckResults with their evidence."""
        from .checks import Context, run_checks
        checks = self.topo.checks
        if names is not None:
            wanted = set(names)
            unknown = wanted - {c.name for c in checks}
            if unknown:
                raise LabError(f"no check named {', '.join(sorted(unknown))} in lab {self.name}")
            checks = [c for c in checks if c.name in wanted]
        return run_checks(Context(self.topo, self.plan, self._state()), checks, progress or (lambda r: None))

    def trace(self, src: str, dst: str, **options):
        """Follow one probe from ``src`` to ``dst`` (a pod, node, 'ext', 'dns' or an
        address) through every namespace; options as netlab.debug.trace.trace
        (proto="udp/53", size=1400, df=True, ...). ``format_trace`` prints it."""
        from .debug.trace import trace
        return trace(self._state(), src, dst, **options)

    @staticmethod
    def format_trace(result) -> str:
        from .debug.trace import format_result
        return format_result(result)

    def capture(self, name: str, *, iface: str | None = None, bpf: str = "", count: int = 0,
                seconds: float = 2.0, during: Callable[[], object] | None = None, pcap: str | None = None) -> list:
        """Frames seen in the namespace of ``name`` (on its pod interface, its uplink or
        ``iface``; 'underlay': every switch port) while ``during()`` runs, else for
        ``seconds`` or until ``count`` frames. Returns scapy packets (``.time`` set)."""
        from .base.capture import Capture
        self._state()
        ns = self.netns(name)
        if iface is None:
            iface = "" if name == "underlay" else endpoint_target(self.topo, self.plan, {}, name).iface
        cap = Capture(ns, iface, bpf, pcap=pcap, count=count, incoming_only=name == "underlay" and not iface)
        with cap:
            if during is not None:
                during()
            elif count:
                cap.wait(seconds)
            else:
                time.sleep(seconds)
        return cap.packets()
