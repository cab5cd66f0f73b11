"""Apply a plan: one small backend per step kind, each recorded in the state
file *before* it touches the system, so ``down`` can always undo it.

Pods are attached by running the CNI plugins through netlab's libcni-style
runtime (``cniruntime.runtime.Runtime``) with the pod's node namespace as the
plugins' host. Our plugin executables are installed into ``<lab dir>/bin``
with ``cninode.install``, or, with ``--plugins reference``, every type is
linked to Debian's reference binary in /usr/lib/cni; a lab the reference
cannot attach (it has no vxlan plugin) is refused before anything is built.
There is no mixing and no fallback: the choice is recorded and printed, and a
green lab on ``ours`` means our plugins ran. Nothing here configures the root namespace: every command runs
with ``ip -n NS`` or inside a namespace.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ..base import namespaces as nsutil
from ..base.namespaces import BuildError, in_ns, ipn, ipn_batch, sh, tx_offload_off
from ..base import state as statemod
from .pods import REFERENCE_CNI, detach, plugin_env, read_cri_cni_cache, runtime_for  # noqa: F401 (build.detach etc. keep working)
from ..base.state import attach_addresses, attach_addresses_all
from ..base.namespaces import tentative_addresses, wait_not_tentative
from .plan import Plan, Step

PLUGIN_TYPES = ("bridge", "host-local", "portmap", "bandwidth", "vxlan")
PAUSE_ENV = "NETLAB_TEST_PAUSE"     # tests only: see Builder._hold_for_a_signal
ATTACH_WORKERS = int(os.environ.get("NETLAB_ATTACH_WORKERS", "0")) or max(2, os.cpu_count() or 2)


# --------------------------------------------------------------------------- plugins

PLUGIN_CHOICES = ("ours", "reference")
CONTAINERD_TOOLS = ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "nsenter")


def refuse_plugins(plan: Plan, choice: str) -> str | None:
    """Why the lab cannot be attached with ``choice``, said before anything is
    built; None when it can. Only the reference set lacks types (vxlan)."""
    if choice not in PLUGIN_CHOICES:
        return f"--plugins must be one of {', '.join(PLUGIN_CHOICES)}, not {choice!r}"
    ctd_nodes = [s.params["node"] for s in plan.steps if s.kind == "containerd"]
    if ctd_nodes:
        missing = [x for x in CONTAINERD_TOOLS if shutil.which(x) is None]
        if missing:
            return (f"node {', '.join(ctd_nodes)} runs containerd, but {', '.join(missing)} "
                    "is not installed (Debian packages containerd, runc, util-linux; make setup)")
    if choice != "reference":
        return None
    problems = []
    for t in sorted(needed_types(plan)):
        if os.access(os.path.join(REFERENCE_CNI, t), os.X_OK):
            continue
        nets = sorted({s.params["network"] for s in plan.steps if s.kind in ("attach", "containerd")
                       and t in _conflist_types(s.params["conflist"] or {})})
        kinds = sorted({plan.topology.networks[n].type for n in nets if n in plan.topology.networks})
        problems.append(f"topology {plan.topology.name} uses network type {'/'.join(kinds) or '?'} "
                        f"(network {', '.join(nets)}), which needs our {t} plugin; the reference "
                        f"plugins ({REFERENCE_CNI}) have none")
    return "; ".join(problems) or None


def prepare_plugins(lab_dir: str, needed: set[str], choice: str = "ours") -> tuple[str, dict[str, str]]:
    """Fill ``<lab dir>/bin`` and return (CNI_PATH, {type: 'ours'|'reference'}).

    choice: ``ours`` (our executables, installed with cninode.install) or
    ``reference`` (Debian's Go plugins, every type; see ``refuse_plugins``).
    """
    if choice not in PLUGIN_CHOICES:
        raise BuildError(f"--plugins must be one of {', '.join(PLUGIN_CHOICES)}, not {choice!r}")
    bindir = os.path.join(lab_dir, "bin")
    os.makedirs(bindir, exist_ok=True)
    which: dict[str, str] = {}
    if choice == "ours":
        from cninode.install import install
        install(bindir)
    for t in sorted(needed | {"host-local"}):
        if choice == "ours":
            if not os.access(os.path.join(bindir, t), os.X_OK):
                raise BuildError(f"cninode.install put no {t} executable in {bindir}: {t} is not one of our plugins")
            which[t] = "ours"
            continue
        ref = os.path.join(REFERENCE_CNI, t)
        if not os.access(ref, os.X_OK):
            raise BuildError(f"the reference plugins have no {t} ({ref} does not exist)")
        dst = os.path.join(bindir, t)
        if os.path.lexists(dst):
            os.unlink(dst)
        os.symlink(ref, dst)
        which[t] = "reference"
    return bindir, which


def common_version(supported: list[list[str]], wanted: str) -> str | None:
    """The highest CNI version every plugin of a chain supports, not above ``wanted``
    (None when they share none)."""
    from plugins.core import version as ver
    shared = set(ver.SUPPORTED)
    for s in supported:
        shared &= set(s)
    ok = [v for v in shared if not ver.at_least(v, wanted) or v == wanted]
    return max(ok, key=ver.parse) if ok else None


def negotiate_generated_versions(plan: Plan, versions_of) -> list[str]:
    """netlab's generated conflists ask for 1.1.0 (GC, STATUS); a plugin set that
    stops below (Debian's reference plugins: 1.0.0) gets the highest version the
    whole chain supports, as a user writing the conflist for them would. A
    user's own conflist is never rewritten. ``versions_of(type)`` is the
    plugin's VERSION supportedVersions. Returns a note per changed network."""
    notes: dict[str, str] = {}
    for s in plan.steps:
        if s.kind != "attach" or not s.params.get("generated"):
            continue
        conf = s.params["conflist"]
        wanted = conf.get("cniVersion", "1.1.0")
        got = common_version([versions_of(t) for t in sorted(_conflist_types(conf))], wanted)
        if got is None:
            raise BuildError(f"network {s.params['network']}: the plugins "
                             f"{', '.join(sorted(_conflist_types(conf)))} share no CNI version")
        if got != wanted:
            conf["cniVersion"] = got
            notes[s.params["network"]] = (f"network {s.params['network']}: cniVersion {got} "
                                          f"(the plugins do not all support {wanted})")
    return sorted(notes.values())


def _conflist_types(conflist: dict) -> set[str]:
    types: set[str] = set()
    for pl in conflist.get("plugins", []):
        types.add(pl.get("type", ""))
        ipam = pl.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type"):
            types.add(ipam["type"])
    return {t for t in types if t}


def needed_types(plan: Plan) -> set[str]:
    types: set[str] = set()
    for s in plan.steps:
        if s.kind == "attach":
            types |= _conflist_types(s.params["conflist"])
        elif s.kind == "containerd":           # containerd runs loopback for every sandbox
            types |= _conflist_types(s.params["conflist"] or {}) | {"loopback"}
    return types


def start_lab_agent(lab_dir: str, record: Callable[..., dict], update: Callable[..., None]) -> str:
    """One resident plugin agent per lab (our plugins' fast path, ADR 0010),
    on a socket in the lab dir; recorded so that down stops exactly it."""
    from cninode.agentctl import start_agent
    sock = os.path.join(lab_dir, "agent.sock")
    res = record("process", name="plugin agent", pid=0, starttime=None, socket=sock)
    pid = start_agent(sock, log_path=os.path.join(lab_dir, "agent.log"), workers=8)
    update(res, pid=pid, starttime=statemod.proc_starttime(pid))
    return sock


# --------------------------------------------------------------------------- builder

class Builder:
    def __init__(self, plan: Plan, st: statemod.State, *, plugins: str = "ours",
                 progress: Callable[[str], None] = print, agent: bool = True) -> None:
        self.agent = agent
        self.agent_socket: str | None = None
        self.plan = plan
        self.st = st
        self.plugins = plugins
        self.progress = progress
        self.lock = threading.Lock()
        self.cni_path = ""
        self.which: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self.containerds: dict[str, tuple] = {}    # node -> (Containerd, its state record)

    def record(self, kind: str, **fields) -> dict:
        with self.lock:
            return self.st.record(kind, **fields)

    def update(self, res: dict, *, flush: bool = True, **fields) -> None:
        with self.lock:
            self.st.update(res, flush=flush, **fields)

    def _timed(self, s: Step) -> None:
        t0 = time.monotonic()
        getattr(self, "do_" + s.kind)(s)
        with self.lock:
            self.timings[s.kind] = self.timings.get(s.kind, 0.0) + time.monotonic() - t0

    def _parallel(self, groups: list[list[Step]], fn: Callable[[Step], None], counter: list[int]) -> None:
        """Run groups in parallel (steps of one group in order); stop at the first error."""
        errors: list[BaseException] = []
        total = len(self.plan.steps)

        def one(group: list[Step]) -> None:
            for s in group:
                if errors:
                    return
                try:
                    fn(s)
                except BaseException as e:  # noqa: BLE001 - re-raised below
                    errors.append(e)
                    return
                with self.lock:
                    counter[0] += 1
                    self.progress(f"[{counter[0]:>3}/{total}] {s.desc}")
        ex = ThreadPoolExecutor(max_workers=max(1, ATTACH_WORKERS))
        try:
            futs = [ex.submit(one, g) for g in groups]
            for f in futs:
                f.result()
        except BaseException as e:  # noqa: BLE001 - Ctrl-C: let running steps finish
            errors.append(e)
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
        if errors:
            raise errors[0]

    def _prepare_attach(self, out: dict) -> None:
        """Plugin executables and the lab's agent (its warm-up is ~1 s of imports):
        on a thread of its own, while the namespaces are made."""
        t0 = time.monotonic()
        try:
            self.cni_path, self.which = prepare_plugins(self.plan.lab_dir, needed_types(self.plan), self.plugins)
            if self.agent and "ours" in self.which.values():
                try:
                    self.agent_socket = start_lab_agent(self.plan.lab_dir, self.record, self.update)
                except (RuntimeError, OSError) as e:   # the agent is only a fast path
                    out["note"] = f"      plugin agent not started ({e}); plugins run in-process"
        except BaseException as e:  # noqa: BLE001 - raised by run()
            out["error"] = e
        out["seconds"] = time.monotonic() - t0

    def run(self) -> None:
        steps = self.plan.steps
        attach = [s for s in steps if s.kind in ("attach", "sandbox", "containerd")]
        prep: dict = {}
        early = threading.Thread(target=self._prepare_attach, args=(prep,), name="prepare-plugins")
        if attach:          # plugins (and the agent) are needed by pods and containerd nodes
            early.start()
        try:
            self._run(attach, early, prep)
        finally:
            if early.is_alive():
                early.join()        # a failed build tears down only after it recorded its agent

    def _run(self, attach: list[Step], early: threading.Thread, prep: dict) -> None:
        steps = self.plan.steps
        total = len(steps)
        counter = [0]
        infra = [s for s in steps if not s.params.get("pod") and s.kind != "containerd"]
        pods = [s for s in steps if s.params.get("pod") and s.kind not in ("attach", "sandbox")]
        attach = [s for s in steps if s.kind in ("attach", "sandbox")]
        ctds = [s for s in steps if s.kind == "containerd"]
        for s in infra:
            self._timed(s)
            counter[0] += 1
            self.progress(f"[{counter[0]:>3}/{total}] {s.desc}")
        # pod namespaces and their /etc/netns files: in parallel, pod by pod;
        # container: pods (aliases of another pod's namespace) after their owners
        by_pod: dict[str, list[Step]] = {}
        for s in pods:
            by_pod.setdefault(s.params["pod"], []).append(s)
        owners = [g for g in by_pod.values() if g[0].kind != "netns_alias"]
        joiners = [g for g in by_pod.values() if g[0].kind == "netns_alias"]
        self._parallel(owners, self._timed, counter)
        self._parallel(joiners, self._timed, counter)
        if attach or ctds:
            t0 = time.monotonic()
            early.join()
            if "error" in prep:
                raise prep["error"]
            if prep.get("note"):
                self.progress(prep["note"])
            self.timings["plugins+agent (overlapped)"] = round(prep["seconds"], 3)
            plain = [s for s in attach if s.kind == "attach"]
            if "reference" in self.which.values() and plain:
                probe = runtime_for(self.plan.lab_dir, plain[0].params["node_ns"], self.cni_path)
                cache: dict[str, list[str]] = {}
                def versions_of(t: str) -> list[str]:
                    if t not in cache:
                        cache[t] = list(probe.version(t).get("supportedVersions") or [])
                    return cache[t]
                for note in negotiate_generated_versions(self.plan, versions_of):
                    self.progress("      " + note)
            self.st.set(cniPath=self.cni_path, plugins=self.which, agentSocket=self.agent_socket)
            self.progress("      plugins: " + ", ".join(f"{k}={v}" for k, v in sorted(self.which.items()))
                          + (f" (agent {self.agent_socket})" if self.agent_socket else ""))
            # containerd nodes (ADR 0025): each node's containerd, in parallel
            t1 = time.monotonic()
            self._parallel([[s] for s in ctds], self.do_containerd, counter)
            if ctds:
                self.timings["containerd"] = time.monotonic() - t1
            if os.environ.get(PAUSE_ENV) == "attach":
                self._parallel([attach[:1]], self._attach_or_sandbox, counter)
                self._hold_for_a_signal()
                attach = attach[1:]
            self._parallel([[s] for s in attach], self._attach_or_sandbox, counter)
            with self.lock:
                self.st.save()            # the ADD results, kept in memory until now
            self.timings["attach"] = time.monotonic() - t0
            self.settle_ipv6()
        self.sync_k8s()
        self.publish_late_records()

    def settle_ipv6(self) -> None:
        """IPv6 addresses the plugins assigned may still be tentative (DAD: ~1-2 s;
        the reference bridge adds its gateway that way): until they are not, the
        kernel answers no neighbour solicitation for them and pods cannot reach
        their gateway. Wait on the kernel state, namespace by namespace; a failed
        DAD (a duplicate) is a build error naming the address."""
        topo = self.plan.topology
        if not any(n.version == 6 for w in topo.networks.values() for n in w.subnets):
            return
        from .plan import node_ns, pod_ns
        names = [node_ns(self.plan.lab, n) for n in topo.nodes]
        names += [pod_ns(self.plan.lab, p.name) for p in topo.pods.values() if p.mode in ("bridge", "overlay")]
        left = wait_not_tentative(names, timeout=10.0)
        bad = [f"{ns}: {a}" for ns, addrs in left.items() for a in addrs if "dadfailed" in a]
        if bad:
            raise BuildError("IPv6 duplicate address detection failed: " + "; ".join(bad))
        if left:
            self.progress("      IPv6 addresses still tentative after 10 s: "
                          + "; ".join(f"{ns}: {', '.join(a)}" for ns, a in left.items()))

    def _hold_for_a_signal(self) -> None:
        """``NETLAB_TEST_PAUSE=attach``: hold the build half-way (namespaces,
        processes, the first pod attached, the others not) until a signal ends
        it, so a test interrupts or kills it at a known point instead of racing
        the build. Never set in normal use."""
        self.progress(f"      paused half-way ({PAUSE_ENV}=attach): waiting for a signal")
        while True:
            signal.pause()          # SIGINT/SIGTERM raise KeyboardInterrupt out of here

    def sync_k8s(self) -> None:
        """Services and NetworkPolicies (netlab/features/k8s.py): our tables in every node."""
        from ..features import k8s
        k8s.sync(self.plan.topology, self.plan.lab, attach_addresses(self.st), st=self.st,
                 record=self.record, progress=self.progress)

    def publish_late_records(self) -> None:
        """DNS records for pods whose address came from IPAM (and host/container pods)."""
        from ..features import dns
        from .plan import POD_HOSTS, late_records
        procs = [r for r in self.st.find("process") if r.get("name") == "dnsmasq"]
        from ..features.k8s import dns_records as service_records
        addrs = attach_addresses_all(self.st)      # every family: AAAA for headless Services too
        recs = late_records(self.plan.topology, addrs) + service_records(self.plan.topology, addrs)
        if not procs or not recs:
            return
        hosts = os.path.join(self.plan.lab_dir, POD_HOSTS)
        dns.write_hosts(hosts, recs)
        if not dns.reload(int(procs[0]["pid"]), procs[0].get("starttime"),
                          log_path=os.path.join(self.plan.lab_dir, "dns.log"), hosts_path=hosts):
            self.progress("      DNS: dnsmasq did not confirm reading the pod records")
        self.progress(f"      DNS: {len(recs)} record(s) for pods addressed by IPAM, host and container pods")

    # ---- step kinds -----------------------------------------------------------
    def do_labdir(self, s: Step) -> None:
        pass   # made (and recorded) by the caller before the state file exists

    def do_netns(self, s: Step) -> None:
        name = s.params["name"]
        if nsutil.exists(name):
            raise BuildError(f"namespace {name} already exists: another lab with this name is up? "
                             f"(netlab down {self.plan.lab})")
        self.record("netns", name=name, role=s.params["role"])
        nsutil.create(name)

    def do_netns_alias(self, s: Step) -> None:
        name, target = s.params["name"], s.params["target"]
        if nsutil.exists(name):
            raise BuildError(f"namespace {name} already exists")
        self.record("netns_alias", name=name, target=target)
        path = nsutil.path(name)
        open(path, "w").close()
        sh(["mount", "--bind", nsutil.path(target), path])

    def do_bridge(self, s: Step) -> None:
        p = s.params
        lines = [f"link add {p['name']} type bridge",
                 f"link set {p['name']} mtu {p['mtu']}", f"link set {p['name']} up"]
        v6 = ":" in (p.get("address") or "")      # an IPv6 switchAddress: IPv6 stays on, no DAD
        if p.get("address"):
            lines.insert(2, f"addr add {p['address']} dev {p['name']}" + (" nodad" if v6 else ""))
        ipn_batch(p["ns"], lines)
        if not v6:
            in_ns(p["ns"], ["sysctl", "-qw", f"net.ipv6.conf.{p['name']}.disable_ipv6=1"], check=False)

    def do_uplink(self, s: Step) -> None:
        p = s.params
        sw, port, ns, ifn = p["switch_ns"], p["port"], p["ns"], p["ifname"]
        # created directly in the switch namespace, the peer directly in the target one
        ipn(sw, "link", "add", port, "mtu", str(p["switch_mtu"]), "type", "veth", "peer", "name", ifn,
            "mtu", str(p["mtu"]), "netns", ns)
        ipn_batch(sw, [f"link set {port} master {p['bridge']}", f"link set {port} up"])
        # IPv6 addresses netlab assigns are its own and unique: nodad, usable at once
        ipn_batch(ns, [f"addr add {a} dev {ifn}" + (" nodad" if ":" in a else "")
                       for a in p.get("addresses") or [p["address"]]] + [f"link set {ifn} up"])
        tx_offload_off(sw, port)
        tx_offload_off(ns, ifn)

    def do_sysctl(self, s: Step) -> None:
        from plugins.core import netns as cns
        from plugins.net import sysctl
        with cns.entered(nsutil.path(s.params["ns"])):
            sysctl.write(s.params["key"], s.params["value"])

    def do_routes(self, s: Step) -> None:
        ipn_batch(s.params["ns"], [f"route replace {r['dst']} via {r['via']}" for r in s.params["routes"]])

    def do_etcnetns(self, s: Step) -> None:
        d = os.path.join("/etc/netns", s.params["netns"])
        parent_made = not os.path.isdir("/etc/netns")
        dir_made = not os.path.isdir(d)
        files = sorted(s.params["files"])
        self.record("etcnetns", path=d, files=files, created_dir=dir_made, created_parent=parent_made)
        if parent_made:
            statemod.make_etc_netns()
        os.makedirs(d, exist_ok=True)
        for fn, text in s.params["files"].items():
            with open(os.path.join(d, fn), "w", encoding="utf-8") as f:
                f.write(text)

    def do_dnsmasq(self, s: Step) -> None:
        from ..features import dns
        from .plan import POD_HOSTS
        dns.write_hosts(os.path.join(self.plan.lab_dir, POD_HOSTS), [])
        pid, start = dns.start(s.params["ns"], s.params["argv"], s.params["address"],
                               os.path.join(self.plan.lab_dir, "dnsmasq.out"),
                               record=lambda **kw: self.record("process", **kw))
        self.progress(f"      dnsmasq pid {pid} answering")

    def do_bgp(self, s: Step) -> None:
        from ..features.bgp import BGPError, start
        try:
            pid = start(s.params["ns"], s.params, self.record)
        except BGPError as e:
            raise BuildError(str(e)) from None
        self.progress(f"      bird pid {pid} (birdc -s {s.params['files']['socket']})")

    def do_dhcp_server(self, s: Step) -> None:
        from ..base.proc import start_recorded
        p = s.params
        start_recorded(p["ns"], p["argv"], "dnsmasq-dhcp", p["log"],
                       lambda pid: os.path.exists(p["pidfile"]),
                       record=lambda **kw: self.record("process", **kw))

    def do_dhcp_daemon(self, s: Step) -> None:
        from ..features import dhcp
        from ..base.proc import code_root, start_recorded
        p = s.params
        start_recorded(p["ns"], dhcp.daemon_argv(self.plugins, p["socket"]), "dhcp daemon",
                       p["log"], lambda pid: os.path.exists(p["socket"]), cwd=code_root(),
                       record=lambda **kw: self.record("process", **kw))

    def _attach_or_sandbox(self, s: Step) -> None:
        (self.do_sandbox if s.kind == "sandbox" else self.do_attach)(s)

    # ---- containerd nodes (ADR 0025) --------------------------------------------
    def do_containerd(self, s: Step) -> None:
        """One containerd in the node's namespace, its CNI bin dir the lab's plugins, its
        CNI conf dir holding the node's network; recorded (as a process) before it starts."""
        from ..cri import Containerd, ContainerdOptions
        from ..cri.api import CRIError
        from ..cri.containerd import ContainerdError
        from ..cri.image import ImageError
        p = s.params
        sock = os.path.join(p["workdir"], "containerd.sock.ttrpc")
        if len(sock) > 107:
            raise BuildError(f"containerd's socket path {sock} is longer than a unix socket "
                             "allows (108 bytes): use a shorter --lab-dir")
        ctd = Containerd(ContainerdOptions(
            netns=p["ns"], workdir=p["workdir"], cni_bin_dir=self.cni_path,
            cgroup_parent=f"/netlab-{self.plan.lab}-{p['node']}",     # one per lab and node
            env=plugin_env(self.plan.lab_dir, self.agent_socket), detached=True))
        res = self.record("process", name=f"containerd ({p['node']})", containerd=ctd.record())
        os.makedirs(ctd.conf_dir, mode=0o700, exist_ok=True)
        if p["conflist"] is not None:
            with open(os.path.join(ctd.conf_dir, f"10-{p['network']}.conflist"), "w",
                      encoding="utf-8") as f:
                json.dump(p["conflist"], f, indent=2)
        def spawned(pid: int) -> None:      # recorded before we wait for it to boot
            rec = ctd.record()
            self.update(res, pid=pid, starttime=rec["starttime"], containerd=rec)
        ctd.on_spawn = spawned
        try:
            ctd.start(wait_network=p["conflist"] is not None)
            ctd.import_pause_image()
        except (ContainerdError, CRIError, ImageError, OSError) as e:
            raise BuildError(f"node {p['node']}: {e}") from None
        with self.lock:
            self.containerds[p["node"]] = (ctd, res)
        self.progress(f"      containerd pid {ctd.pid} in {p['ns']} (log {ctd.paths['log']})")

    def do_sandbox(self, s: Step) -> None:
        """CRI RunPodSandbox: containerd makes the pod's namespace and runs the CNI chain;
        netlab names that namespace like any pod's (a bind mount) and records the
        sandbox, its address (PodSandboxStatus) and the CNI result containerd cached."""
        from ..cri import DNSConfig, PodSpec, PortMapping
        from ..cri.api import CRIError
        p = s.params
        ctd, cres = self.containerds[p["node"]]
        sp = p["spec"]
        spec = PodSpec(sp["name"], namespace=sp["namespace"], uid=sp["uid"], hostname=sp["hostname"],
                       labels=sp["labels"], annotations=sp["annotations"],
                       dns=DNSConfig(tuple(sp["dns"]["servers"]), tuple(sp["dns"]["searches"]),
                                     tuple(sp["dns"]["options"])),
                       port_mappings=[PortMapping(m["container_port"], m["host_port"], m["protocol"])
                                      for m in sp["ports"]])
        res = self.record("attach", pod=p["pod"], netns=p["netns"], node_ns=p["node_ns"],
                          network=p["network"], runtime="containerd", socket=ctd.socket,
                          sandbox_id=None, container_id=None, ifname=p["ifname"],
                          conflist=None, capability_args={}, cni_args="", cni_path=self.cni_path,
                          result=None, spec=sp)
        t0 = time.monotonic()
        cri = ctd.client()
        try:
            sid = cri.run_pod_sandbox(spec)
            with self.lock:
                cres["containerd"]["sandboxes"] = sorted(set(cres["containerd"]["sandboxes"]) | {sid})
                self.st.update(res, sandbox_id=sid, container_id=sid)
            st = cri.pod_sandbox_status(sid, verbose=True)
        except CRIError as e:
            raise BuildError(f"pod {p['pod']}: {e}") from None
        seconds = round(time.monotonic() - t0, 3)
        if st.state != "SANDBOX_READY" or not st.netns_path or not st.ip:
            raise BuildError(f"pod {p['pod']}: containerd reports sandbox {sid[:12]} {st.state}, "
                             f"netns {st.netns_path or '?'}, ip {st.ip or '?'}")
        cache = read_cri_cni_cache(p["network"], sid, p["ifname"])
        result = cache.get("result") or {}
        ips = [a.get("address", "").split("/")[0] for a in result.get("ips", [])]
        if st.ip not in ips:
            raise BuildError(f"pod {p['pod']}: CRI reports {st.ip}, the CNI result containerd "
                             f"cached says {ips or 'nothing'}")
        self.update(res, sandbox_netns=st.netns_path, cri_ip=st.ip, result=result,
                    conflist=cache.get("config") or None,
                    capability_args=cache.get("capabilityArgs") or {}, seconds=seconds)
        # the pod's resolv.conf as `ip netns exec` shows it (netlab exec, the dns check) is
        # the one containerd wrote from the CRI DNSConfig (kubelet's ClusterFirst)
        made = os.path.join(ctd.paths["root"], "io.containerd.grpc.v1.cri", "sandboxes", sid,
                            "resolv.conf")
        etc = os.path.join("/etc/netns", p["netns"])
        if os.path.isdir(etc):
            shutil.copyfile(made, os.path.join(etc, "resolv.conf"))
        self.record("netns_alias", name=p["netns"], target=st.netns_path, pod=p["pod"])
        path = nsutil.path(p["netns"])
        open(path, "w").close()
        sh(["mount", "--bind", st.netns_path, path])
        tx_offload_off(p["netns"], p["ifname"])
        for itf in result.get("interfaces", []):
            if not itf.get("sandbox") and itf.get("name") and itf.get("mac"):
                tx_offload_off(p["node_ns"], itf["name"])

    def do_attach(self, s: Step) -> None:
        p = s.params
        rt = runtime_for(self.plan.lab_dir, p["node_ns"], self.cni_path, self.agent_socket)
        res = self.record("attach", pod=p["pod"], netns=p["netns"], node_ns=p["node_ns"],
                          network=p["network"], container_id=p["container_id"], ifname=p["ifname"],
                          conflist=p["conflist"], capability_args=p["capability_args"],
                          cni_args=p["cni_args"], cni_path=self.cni_path, result=None)
        conf_path = os.path.join(self.plan.lab_dir, "conflists", f"{p['network']}-{p['pod']}.conflist")
        os.makedirs(os.path.dirname(conf_path), exist_ok=True)
        with open(conf_path, "w", encoding="utf-8") as f:
            json.dump(p["conflist"], f, indent=2)
        t0 = time.monotonic()
        result = rt.add(p["conflist"], nsutil.path(p["netns"]), p["container_id"], p["ifname"],
                        capability_args=p["capability_args"], cni_args=p["cni_args"])
        # in memory: the next record (or the end of the build) writes it; down needs
        # only what was recorded before the ADD
        self.update(res, result=result, seconds=round(time.monotonic() - t0, 3), flush=False)
        tx_offload_off(p["netns"], p["ifname"])
        for itf in result.get("interfaces", []):
            if not itf.get("sandbox") and itf.get("name") and itf.get("mac"):
                # host-side veths have a MAC and no sandbox; bridges are fine too
                tx_offload_off(p["node_ns"], itf["name"])
