"""Apply a plan: one small backend per step kind, each recorded in the state
file *before* it touches the system, so ``down`` can always undo it.

Pods are attached by running the CNI plugins through netlab's libcni-style
runtime (``netlab.runtime.Runtime``) with the pod's node namespace as the
plugins' host. Our plugin executables are installed into ``<lab dir>/bin``
with ``netlab.install``, or, with ``--plugins reference``, every type is
linked to Debian's reference binary in /usr/lib/cni; a lab the reference
cannot attach (it has no vxlan plugin) is refused before anything is built.
There is no mixing and no fallback: the choice is recorded and printed, and a
green lab on ``ours`` means our plugins ran. Nothing here configures the root namespace: every command runs
with ``ip -n NS`` or inside a namespace.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from . import netns as nsutil
from . import state as statemod
from .plan import Plan, Step

REFERENCE_CNI = "/usr/lib/cni"
PLUGIN_TYPES = ("bridge", "host-local", "portmap", "bandwidth", "vxlan")
PAUSE_ENV = "NETLAB_TEST_PAUSE"     # tests only: see Builder._hold_for_a_signal
ATTACH_WORKERS = int(os.environ.get("NETLAB_ATTACH_WORKERS", "0")) or max(2, os.cpu_count() or 2)


class BuildError(Exception):
    pass


def sh(argv: list[str], *, timeout: float = 30) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise BuildError(f"{' '.join(argv)}: {p.stderr.strip() or p.stdout.strip() or 'exit %d' % p.returncode}")
    return p.stdout


def ipn(ns: str, *args: str) -> str:
    """``ip -n NS ...``: never without a namespace."""
    if not ns:
        raise BuildError("refusing to run ip without a namespace")
    return sh(["ip", "-n", ns, *args])


def ipn_batch(ns: str, lines: list[str]) -> None:
    if not lines:
        return
    p = subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n",
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise BuildError(f"ip -n {ns} -batch: {p.stderr.strip()}")


def in_ns(ns: str, argv: list[str], *, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command inside the named namespace (setns in the child, no mount games)."""
    from plugins.core import netns as cns
    fd = os.open(nsutil.path(ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           preexec_fn=lambda: cns._setns(fd))
    finally:
        os.close(fd)
    if check and p.returncode != 0:
        raise BuildError(f"[{ns}] {' '.join(argv)}: {p.stderr.strip() or p.stdout.strip()}")
    return p


SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17


def tx_offload_off(ns: str, dev: str) -> None:
    """Valid checksums in captures: veths otherwise leave them to 'hardware'.

    ``ethtool -K DEV tx off`` as one ioctl from this thread (no process per
    device): ETHTOOL_STXCSUM clears the device's checksum features, and the
    kernel drops the features that need them (TSO, ...), as ethtool does."""
    import ctypes
    import fcntl
    import socket
    import struct
    from plugins.core import netns as cns
    value = ctypes.create_string_buffer(struct.pack("=II", ETHTOOL_STXCSUM, 0), 8)
    ifreq = struct.pack("16sP", dev.encode()[:15], ctypes.addressof(value)).ljust(40, b"\0")
    try:
        with cns.entered(nsutil.path(ns)):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # bound to that namespace
        with s:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
    except (OSError, cns.NetnsGone):
        pass        # as before with ethtool: a device that cannot do it keeps its offloads


# --------------------------------------------------------------------------- plugins

PLUGIN_CHOICES = ("ours", "reference")


def refuse_plugins(plan: Plan, choice: str) -> str | None:
    """Why the lab cannot be attached with ``choice``, said before anything is
    built; None when it can. Only the reference set lacks types (vxlan)."""
    if choice not in PLUGIN_CHOICES:
        return f"--plugins must be one of {', '.join(PLUGIN_CHOICES)}, not {choice!r}"
    if choice != "reference":
        return None
    problems = []
    for t in sorted(needed_types(plan)):
        if os.access(os.path.join(REFERENCE_CNI, t), os.X_OK):
            continue
        nets = sorted({s.params["network"] for s in plan.steps if s.kind == "attach"
                       and t in _conflist_types(s.params["conflist"])})
        kinds = sorted({plan.topology.networks[n].type for n in nets if n in plan.topology.networks})
        problems.append(f"topology {plan.topology.name} uses network type {'/'.join(kinds) or '?'} "
                        f"(network {', '.join(nets)}), which needs our {t} plugin; the reference "
                        f"plugins ({REFERENCE_CNI}) have none")
    return "; ".join(problems) or None


def prepare_plugins(lab_dir: str, needed: set[str], choice: str = "ours") -> tuple[str, dict[str, str]]:
    """Fill ``<lab dir>/bin`` and return (CNI_PATH, {type: 'ours'|'reference'}).

    choice: ``ours`` (our executables, installed with netlab.install) or
    ``reference`` (Debian's Go plugins, every type; see ``refuse_plugins``).
    """
    if choice not in PLUGIN_CHOICES:
        raise BuildError(f"--plugins must be one of {', '.join(PLUGIN_CHOICES)}, not {choice!r}")
    bindir = os.path.join(lab_dir, "bin")
    os.makedirs(bindir, exist_ok=True)
    which: dict[str, str] = {}
    if choice == "ours":
        from .install import install
        install(bindir)
    for t in sorted(needed | {"host-local"}):
        if choice == "ours":
            if not os.access(os.path.join(bindir, t), os.X_OK):
                raise BuildError(f"netlab.install put no {t} executable in {bindir}: {t} is not one of our plugins")
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
    return types


def plugin_env(lab_dir: str, agent_socket: str | None) -> dict[str, str]:
    """The environment plugins run with: never a node-wide agent, only the lab's;
    node lock files in the lab dir (removed with it), not in /run/cnilab."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "CNILAB_RUN_DIR": os.path.join(lab_dir, "run")}
    if agent_socket:
        env.update(CNILAB_AGENT="on", CNILAB_AGENT_SOCKET=agent_socket)
    else:
        env["CNILAB_AGENT"] = "off"
    return env


def runtime_for(lab_dir: str, node_ns: str, cni_path: str, agent_socket: str | None = None):
    from .runtime import Runtime
    return Runtime([cni_path], cache_dir=os.path.join(lab_dir, "cni-cache"),
                   host_netns=nsutil.path(node_ns), log_path=os.path.join(lab_dir, "cni.log"),
                   env=plugin_env(lab_dir, agent_socket), agent_direct=True)


def start_lab_agent(lab_dir: str, record: Callable[..., dict], update: Callable[..., None]) -> str:
    """One resident plugin agent per lab (our plugins' fast path, ADR 0010),
    on a socket in the lab dir; recorded so that down stops exactly it."""
    from .cmd_agent import start_agent
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
        attach = [s for s in steps if s.kind == "attach"]
        prep: dict = {}
        early = threading.Thread(target=self._prepare_attach, args=(prep,), name="prepare-plugins")
        if attach:
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
        infra = [s for s in steps if not s.params.get("pod")]
        pods = [s for s in steps if s.params.get("pod") and s.kind != "attach"]
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
        if attach:
            t0 = time.monotonic()
            early.join()
            if "error" in prep:
                raise prep["error"]
            if prep.get("note"):
                self.progress(prep["note"])
            self.timings["plugins+agent (overlapped)"] = round(prep["seconds"], 3)
            if "reference" in self.which.values():
                probe = runtime_for(self.plan.lab_dir, attach[0].params["node_ns"], self.cni_path)
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
            if os.environ.get(PAUSE_ENV) == "attach":
                self._parallel([attach[:1]], self.do_attach, counter)
                self._hold_for_a_signal()
                attach = attach[1:]
            self._parallel([[s] for s in attach], self.do_attach, counter)
            with self.lock:
                self.st.save()            # the ADD results, kept in memory until now
            self.timings["attach"] = time.monotonic() - t0
        self.sync_k8s()
        self.publish_late_records()

    def _hold_for_a_signal(self) -> None:
        """``NETLAB_TEST_PAUSE=attach``: hold the build half-way (namespaces,
        processes, the first pod attached, the others not) until a signal ends
        it, so a test interrupts or kills it at a known point instead of racing
        the build. Never set in normal use."""
        self.progress(f"      paused half-way ({PAUSE_ENV}=attach): waiting for a signal")
        while True:
            signal.pause()          # SIGINT/SIGTERM raise KeyboardInterrupt out of here

    def sync_k8s(self) -> None:
        """Services and NetworkPolicies (netlab/k8s.py): our tables in every node."""
        from . import k8s
        k8s.sync(self.plan.topology, self.plan.lab, attach_addresses(self.st), st=self.st,
                 record=self.record, progress=self.progress)

    def publish_late_records(self) -> None:
        """DNS records for pods whose address came from IPAM (and host/container pods)."""
        from . import dns
        from .plan import POD_HOSTS, late_records
        procs = [r for r in self.st.find("process") if r.get("name") == "dnsmasq"]
        from .k8s import dns_records as service_records
        addrs = attach_addresses(self.st)
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
        if p.get("address"):
            lines.insert(2, f"addr add {p['address']} dev {p['name']}")
        ipn_batch(p["ns"], lines)
        in_ns(p["ns"], ["sysctl", "-qw", f"net.ipv6.conf.{p['name']}.disable_ipv6=1"], check=False)

    def do_uplink(self, s: Step) -> None:
        p = s.params
        sw, port, ns, ifn = p["switch_ns"], p["port"], p["ns"], p["ifname"]
        # created directly in the switch namespace, the peer directly in the target one
        ipn(sw, "link", "add", port, "mtu", str(p["switch_mtu"]), "type", "veth", "peer", "name", ifn,
            "mtu", str(p["mtu"]), "netns", ns)
        ipn_batch(sw, [f"link set {port} master {p['bridge']}", f"link set {port} up"])
        ipn_batch(ns, [f"addr add {p['address']} dev {ifn}", f"link set {ifn} up"])
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
        from . import dns
        from .plan import POD_HOSTS
        dns.write_hosts(os.path.join(self.plan.lab_dir, POD_HOSTS), [])
        pid, start = dns.start(s.params["ns"], s.params["argv"], s.params["address"],
                               os.path.join(self.plan.lab_dir, "dnsmasq.out"),
                               record=lambda **kw: self.record("process", **kw))
        self.progress(f"      dnsmasq pid {pid} answering")

    def do_bgp(self, s: Step) -> None:
        from .bgp import BGPError, start
        try:
            pid = start(s.params["ns"], s.params, self.record, self.update)
        except BGPError as e:
            raise BuildError(str(e)) from None
        self.progress(f"      bird pid {pid} (birdc -s {s.params['files']['socket']})")

    def do_dhcp_server(self, s: Step) -> None:
        from .proc import start_recorded
        p = s.params
        start_recorded(p["ns"], p["argv"], "dnsmasq-dhcp", p["log"],
                       lambda pid: os.path.exists(p["pidfile"]),
                       record=lambda **kw: self.record("process", **kw))

    def do_dhcp_daemon(self, s: Step) -> None:
        from . import dhcp
        from .proc import start_recorded
        p = s.params
        start_recorded(p["ns"], dhcp.daemon_argv(self.plugins, p["socket"]), "dhcp daemon",
                       p["log"], lambda pid: os.path.exists(p["socket"]), cwd=dhcp.code_root(),
                       record=lambda **kw: self.record("process", **kw))

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


def detach(res: dict, st: statemod.State) -> None:
    """DEL an attachment recorded in the state (also when the pod netns is gone)."""
    from .runtime import Runtime
    if not nsutil.exists(os.path.basename(res["node_ns"]) if "/" in res["node_ns"] else res["node_ns"]):
        return   # the node (and everything the plugins made in it) is already gone
    cni_path = res.get("cni_path") or st.data.get("cniPath") or REFERENCE_CNI
    sock = st.data.get("agentSocket")
    rt = Runtime([cni_path], cache_dir=os.path.join(st.lab_dir, "cni-cache"),
                 host_netns=nsutil.path(res["node_ns"]), log_path=os.path.join(st.lab_dir, "cni.log"),
                 env=plugin_env(st.lab_dir, sock if sock and os.path.exists(sock) else None),
                 agent_direct=True)
    netns_path = nsutil.path(res["netns"]) if nsutil.exists(res["netns"]) else ""
    rt.delete(res["conflist"], netns_path, res["container_id"], res["ifname"],
              capability_args=res.get("capability_args") or {}, cni_args=res.get("cni_args"))


def attach_addresses(st: statemod.State) -> dict[str, str]:
    """pod -> IPv4 address from the recorded ADD results."""
    out = {}
    for pod, res in st.attachments().items():
        for ip in (res.get("result") or {}).get("ips", []):
            addr = ip.get("address", "")
            if ":" not in addr and addr:
                out[pod] = addr.split("/")[0]
                break
    return out
