"""Run a private containerd inside a node's network namespace, and take it all down again.

``Containerd(options)`` owns one containerd process and everything it writes:

- it runs as ``nsenter --net=/var/run/netns/NODE containerd --config C``:
  ``nsenter`` changes only the network namespace, so containerd and runc
  keep the machine's cgroup mounts (``ip netns exec`` remounts /sys and
  hides them, and runc then cannot create the sandbox's cgroup);
- root, state, temp dir, socket, runc root, the ``opt`` plugin's dir and
  the pods' network namespaces (``netns_mounts_under_state_dir``) all live
  under ``options.workdir``; the CRI config names the CNI bin dir and
  conf dir we give it and our offline pause image (netlab.cri.image);
- ``restrict_oom_score_adj = true``: there is no CAP_SYS_RESOURCE here, so
  containerd must not try to lower the sandbox's oom_score_adj;
- the sandboxes' cgroups go under a parent of ours (``cgroup_parent``),
  not containerd's default ``/k8s.io``, so teardown can remove it;
- readiness is an event, not a sleep: the "successfully booted" line on
  containerd's stderr, then the CRI ``Status`` RPC until ``NetworkReady``
  (CNI config loaded);
- ``stop()`` removes every sandbox through CRI, then sends SIGTERM to the
  PID it started (never a pattern), and cleans what a crash can leave: the
  pods' tasks (shim and pause PIDs from the state dir), mounts under the
  workdir, empty ``cni-*`` namespace files under the state dir, our cgroup
  parent, libcni cache entries of sandboxes our clients made (containerd
  1.6 has no setting for libcni's cache dir, /var/lib/cni), and
  /run/containerd/s (shim sockets: a path compiled into containerd) when
  this run created it and left it empty.

The process inherits this process's environment plus ``options.env``: the
CNI plugins containerd execs inherit it in turn.

Two ways to own it:

- attached (tests, benchmarks): containerd's stderr is a pipe read by a
  thread of ours; it lives as long as this Python process;
- ``detached=True`` (netlab labs): stderr goes straight to the log file, so
  containerd outlives the ``netlab up`` that started it; ``record()`` gives
  a JSON-able description (PID, start time, paths, what existed before us)
  and ``Containerd.from_record(rec)`` rebuilds an owner from it, whose
  ``stop()`` stops exactly that PID (checked by its start time) and cleans
  up the same way, also when containerd has died meanwhile.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

from ..base.state import proc_ppid, proc_starttime, proc_state
from .api import CRIError, RuntimeClient
from .image import PAUSE_REF, build_pause_image, import_image

BOOTED = "containerd successfully booted"
SHIM_SOCKET_DIR = "/run/containerd/s"        # compiled into containerd 1.6's shim code
CNI_CACHE = "/var/lib/cni"                   # libcni's default cache dir (results/)
NETNS_DIR = "/var/run/netns"
CRI = 'plugins."io.containerd.grpc.v1.cri"'


class ContainerdError(RuntimeError):
    """containerd could not be started or stopped (the message says why, with its log)."""


@dataclass
class ContainerdOptions:
    netns: str                          # the node: a namespace name under /var/run/netns
    workdir: str                        # everything containerd writes lives under here
    cni_bin_dir: str
    cni_conf_dir: str = ""              # default: <workdir>/net.d
    snapshotter: str = "overlayfs"
    sandbox_image: str = PAUSE_REF
    cgroup_parent: str = ""             # default: /cnilab-<workdir's basename>
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 60.0
    detached: bool = False              # stderr to the log file: outlives this process


def _toml(value: str) -> str:
    return json.dumps(value)            # a JSON string is a valid TOML basic string


def config_toml(o: ContainerdOptions, paths: dict[str, str]) -> str:
    """The whole containerd config: nothing falls back to a machine-wide path."""
    return f"""version = 2
root = {_toml(paths['root'])}
state = {_toml(paths['state'])}
temp = {_toml(paths['tmp'])}

[grpc]
  address = {_toml(paths['socket'])}

[ttrpc]
  address = {_toml(paths['socket'] + '.ttrpc')}

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = {_toml(paths['opt'])}

  [{CRI}]
    sandbox_image = {_toml(o.sandbox_image)}
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    enable_tls_streaming = false
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"

    [{CRI}.containerd]
      snapshotter = {_toml(o.snapshotter)}
      default_runtime_name = "runc"

      [{CRI}.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        [{CRI}.containerd.runtimes.runc.options]
          Root = {_toml(paths['runc'])}

    [{CRI}.cni]
      bin_dir = {_toml(o.cni_bin_dir)}
      conf_dir = {_toml(paths['conf_dir'])}
      max_conf_num = 1
"""


class Containerd:
    """One private containerd in a node namespace: start, client, kill, restart, stop."""

    def __init__(self, options: ContainerdOptions) -> None:
        o = options
        self.options = o
        w = os.path.abspath(o.workdir)
        self.paths = {"root": f"{w}/root", "state": f"{w}/state", "tmp": f"{w}/tmp",
                      "socket": f"{w}/containerd.sock", "opt": f"{w}/opt",
                      "runc": f"{w}/runc", "config": f"{w}/config.toml",
                      "log": f"{w}/containerd.log", "image": f"{w}/pause.tar",
                      "conf_dir": o.cni_conf_dir or f"{w}/net.d"}
        self.workdir = w
        self.cgroup_parent = o.cgroup_parent or f"/cnilab-{os.path.basename(w)}"
        self.proc: subprocess.Popen | None = None
        self._adopted: tuple[int, str | None] | None = None   # (pid, starttime) of from_record
        self._extra_ids: set[str] = set()                     # sandbox IDs named by a record
        self._clients: list[RuntimeClient] = []
        self._booted = threading.Event()
        self._reader: threading.Thread | None = None
        self.on_spawn = None     # called with the PID right after containerd is started
        # what existed before us, so teardown removes only what this run made
        self._had_shim_dir = os.path.isdir(SHIM_SOCKET_DIR)
        self._had_run_containerd = os.path.isdir(os.path.dirname(SHIM_SOCKET_DIR))
        self._had_cni_cache = {d: os.path.isdir(d)
                               for d in (CNI_CACHE, f"{CNI_CACHE}/results")}

    # ---- paths ----------------------------------------------------------------------------
    @property
    def socket(self) -> str:
        return self.paths["socket"]

    @property
    def conf_dir(self) -> str:
        return self.paths["conf_dir"]

    @property
    def netns_path(self) -> str:
        return os.path.join(NETNS_DIR, self.options.netns)

    @property
    def pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid
        return self._adopted[0] if self._adopted else None

    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        if self._adopted:
            pid, start = self._adopted
            return bool(pid) and proc_starttime(pid) is not None and proc_starttime(pid) == start \
                and proc_state(pid) not in ("Z", None)
        return False

    # ---- a record of it, and an owner rebuilt from one ------------------------------------
    def record(self) -> dict:
        """What ``from_record`` needs to stop and clean up this containerd later (JSON)."""
        o = self.options
        return {"pid": self.pid or 0, "starttime": proc_starttime(self.pid) if self.pid else None,
                "netns": o.netns, "workdir": self.workdir, "cniBinDir": o.cni_bin_dir,
                "cniConfDir": self.conf_dir, "snapshotter": o.snapshotter,
                "cgroupParent": self.cgroup_parent, "socket": self.socket,
                "hadShimDir": self._had_shim_dir, "hadRunContainerd": self._had_run_containerd,
                "hadCniCache": self._had_cni_cache,
                "sandboxes": sorted(self._sandbox_ids())}

    @classmethod
    def from_record(cls, rec: dict) -> "Containerd":
        """An owner of the containerd a ``record()`` describes (running or not)."""
        c = cls(ContainerdOptions(netns=rec["netns"], workdir=rec["workdir"],
                                  cni_bin_dir=rec.get("cniBinDir", ""),
                                  cni_conf_dir=rec.get("cniConfDir", ""),
                                  snapshotter=rec.get("snapshotter", "overlayfs"),
                                  cgroup_parent=rec.get("cgroupParent", ""), detached=True))
        c._adopted = (int(rec.get("pid") or 0), rec.get("starttime"))
        c._had_shim_dir = bool(rec.get("hadShimDir", True))
        c._had_run_containerd = bool(rec.get("hadRunContainerd", True))
        c._had_cni_cache = {d: bool((rec.get("hadCniCache") or {}).get(d, True))
                            for d in (CNI_CACHE, f"{CNI_CACHE}/results")}
        c._extra_ids = set(rec.get("sandboxes") or [])
        return c

    # ---- start ------------------------------------------------------------------------------
    def start(self, *, wait_network: bool = True) -> None:
        """Write the config, start containerd in the node, wait until CRI answers."""
        if self.running():
            raise ContainerdError("containerd is already running")
        for exe in ("containerd", "nsenter", "runc", "containerd-shim-runc-v2"):
            if shutil.which(exe) is None:
                raise ContainerdError(f"{exe} is not installed (Debian packages containerd, "
                                      "runc, util-linux)")
        if not os.path.exists(self.netns_path):
            raise ContainerdError(f"node namespace {self.netns_path} does not exist")
        for key in ("root", "state", "tmp", "opt", "runc", "conf_dir"):
            os.makedirs(self.paths[key], mode=0o700, exist_ok=True)
        with open(self.paths["config"], "w") as f:
            f.write(config_toml(self.options, self.paths))
        if os.path.exists(self.socket):
            os.unlink(self.socket)          # a stale socket from a killed run: ours
        self._booted.clear()
        env = dict(os.environ, **self.options.env)
        argv = ["nsenter", f"--net={self.netns_path}", "--", shutil.which("containerd"),
                "--config", self.paths["config"]]
        if self.options.detached:
            # nothing of ours may hold its stderr: a pipe would die with us (EPIPE)
            with open(self.paths["log"], "ab") as log:
                offset = log.tell()
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=log, env=env,
                                             start_new_session=True, close_fds=True)
            self._adopted = None
            if self.on_spawn is not None:
                self.on_spawn(self.proc.pid)
            self._reader = threading.Thread(target=self._follow_log, args=(self.proc, offset),
                                            daemon=True)
        else:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         env=env, start_new_session=True)
            self._reader = threading.Thread(target=self._read_log, args=(self.proc,),
                                            daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.options.start_timeout
        while not self._booted.wait(0.2):
            if self.proc.poll() is not None:
                raise ContainerdError(f"containerd exited with {self.proc.returncode} while "
                                      f"starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ContainerdError(f"containerd did not boot in "
                                      f"{self.options.start_timeout:g}s:\n{self.log_tail()}")
        if wait_network:
            self.wait_network_ready(max(1.0, deadline - time.monotonic()))

    def _read_log(self, proc: subprocess.Popen) -> None:
        with open(self.paths["log"], "ab") as log:
            for line in proc.stderr:
                log.write(line)
                log.flush()
                if BOOTED.encode() in line:
                    self._booted.set()

    def _follow_log(self, proc: subprocess.Popen, offset: int) -> None:
        """Detached mode: watch the log file (from ``offset``) for the boot line."""
        delay = 0.01
        while proc.poll() is None and not self._booted.is_set():
            try:
                with open(self.paths["log"], "rb") as f:
                    f.seek(offset)
                    if BOOTED.encode() in f.read():
                        self._booted.set()
                        return
            except OSError:
                pass
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.paths["log"], errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_network_ready(self, timeout: float) -> None:
        """Poll CRI Status until RuntimeReady and NetworkReady (CNI config loaded)."""
        deadline = time.monotonic() + timeout
        with RuntimeClient(self.socket) as c:
            c.wait_ready(timeout)
            delay, last = 0.02, {}
            while True:
                try:
                    last = c.status(timeout=5)
                except CRIError as e:
                    last = {"error": e}
                ready = [last.get(k) for k in ("RuntimeReady", "NetworkReady")]
                if all(x is not None and getattr(x, "status", False) for x in ready):
                    return
                if time.monotonic() > deadline:
                    raise ContainerdError(f"CRI not ready after {timeout:g}s: {last}\n"
                                          f"{self.log_tail()}")
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def cni_networks(self) -> list[str]:
        """The names of the CNI networks CRI has loaded (loopback first), from verbose Status."""
        with RuntimeClient(self.socket, timeout=10) as c:
            cfg = c.status_info().get("cniconfig") or {}
        return [(n.get("Config") or {}).get("Name", "") for n in cfg.get("Networks") or []]

    def wait_cni_network(self, name: str, timeout: float = 30.0) -> None:
        """Wait until CRI has (re)loaded a conflist named ``name`` (it watches conf_dir)."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while name not in (names := self.cni_networks()):
            if time.monotonic() > deadline:
                raise ContainerdError(f"CRI did not load CNI network {name!r} in {timeout:g}s "
                                      f"(loaded: {names})")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def client(self, timeout: float = 120.0) -> RuntimeClient:
        """A CRI client for this containerd; the sandboxes it creates are remembered."""
        c = RuntimeClient(self.socket, timeout=timeout, default_cgroup_parent=self.cgroup_parent)
        self._clients.append(c)
        return c

    def import_pause_image(self) -> None:
        """Build the offline pause image and import it for CRI (namespace k8s.io)."""
        build_pause_image(self.paths["image"], self.options.sandbox_image)
        import_image(self.paths["image"], self.socket, snapshotter=self.options.snapshotter)

    # ---- crash and restart ----------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL containerd (the PID we started); its shims and sandboxes live on."""
        if self.running():
            os.kill(self.pid, signal.SIGKILL)
        if self.proc is None:
            self._wait_gone(30)
        else:
            self.proc.wait(timeout=30)
            if self._reader is not None:
                self._reader.join(timeout=5)

    def restart(self) -> None:
        self.kill()
        self.start()

    # ---- stop and clean up ------------------------------------------------------------------
    def remove_all_sandboxes(self) -> list[str]:
        """Stop and remove every sandbox this containerd knows (all are ours)."""
        errors = []
        with RuntimeClient(self.socket, timeout=60) as c:
            for sb in c.list_pod_sandbox():
                for step in (c.stop_pod_sandbox, c.remove_pod_sandbox):
                    try:
                        step(sb.id)
                    except CRIError as e:
                        errors.append(str(e))
        return errors

    def stop(self) -> list[str]:
        """Remove sandboxes, stop containerd, clean everything up; returns problems found."""
        problems: list[str] = []
        if self.running():
            try:
                problems += self.remove_all_sandboxes()
            except CRIError as e:
                problems.append(f"removing sandboxes: {e}")
            os.kill(self.pid, signal.SIGTERM)
            try:
                if self.proc is not None:
                    self.proc.wait(timeout=30)
                elif not self._wait_gone(30):
                    raise subprocess.TimeoutExpired("containerd", 30)
            except subprocess.TimeoutExpired:
                problems.append("containerd ignored SIGTERM for 30 s: killed")
                self.kill()
        if self._reader is not None:
            self._reader.join(timeout=5)
        for c in self._clients:
            c.close()
        problems += self._reap_tasks()
        problems += self._unmount_under_workdir()
        self._remove_cgroups()
        self._remove_cni_cache_entries()
        self._remove_if_ours_and_empty()
        return problems

    def _wait_gone(self, timeout: float) -> bool:
        """An adopted containerd (not our child): wait until its PID is gone or a zombie."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while self.running():
            if time.monotonic() > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        return True

    def _task_dirs(self) -> list[str]:
        base = os.path.join(self.paths["state"], "io.containerd.runtime.v2.task")
        out = []
        for ns in _listdir(base):
            out += [os.path.join(base, ns, t) for t in _listdir(os.path.join(base, ns))]
        return out

    def _reap_tasks(self) -> list[str]:
        """Kill the pause process and the shim of any task still recorded in our state dir.

        containerd 1.6 writes no shim.pid: the shim is the pause process's parent, taken
        only when its command line names this task's ID and our socket. A shim killed
        here leaves its socket (named in the task's ``address`` file): removed too."""
        left = []
        killed: list[int] = []
        for d in self._task_dirs():
            tid = os.path.basename(d)
            pids = []
            try:
                init = int(open(os.path.join(d, "init.pid")).read().strip())
                pids.append(("init.pid", init))
                shim = proc_ppid(init)
                if shim and self._is_our_shim(shim, tid):
                    pids.append(("shim", shim))
            except (OSError, ValueError):
                pass
            if not any(w == "shim" for w, _ in pids):
                # the pause process is gone already: the shim is the one process whose
                # command line names this task's ID and our socket
                pids += [("shim", pid) for pid in _all_pids() if self._is_our_shim(pid, tid)]
            try:
                pids.append(("shim.pid", int(open(os.path.join(d, "shim.pid")).read().strip())))
            except (OSError, ValueError):
                pass
            for what, pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    left.append(f"killed {what} {pid} of {tid}")
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            try:
                addr = open(os.path.join(d, "address")).read().strip()
            except OSError:
                addr = ""
            sock = addr[len("unix://"):] if addr.startswith("unix://") else ""
            if sock.startswith(SHIM_SOCKET_DIR + "/") and any(w == "shim" for w, _ in pids):
                try:
                    os.unlink(sock)
                except OSError:
                    pass
        # a killed process stays in its cgroup until it has exited: wait for that
        # (bounded) so the cgroups can be removed next
        deadline = time.monotonic() + 15
        while any(proc_state(pid) not in (None, "Z") for pid in killed) and time.monotonic() < deadline:
            time.sleep(0.02)
        return left

    def _is_our_shim(self, pid: int, task_id: str) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            return False
        return (os.path.basename(argv[0]).startswith("containerd-shim") and task_id in argv
                and self.socket in argv)

    def _unmount_under_workdir(self) -> list[str]:
        """Lazily unmount whatever is mounted below the workdir (rootfs, shm, netns files)."""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        found = []
        with open("/proc/self/mounts") as f:
            for line in f:
                target = line.split()[1].replace("\\040", " ")
                if target.startswith(self.workdir + "/"):
                    found.append(target)
        for target in sorted(found, key=len, reverse=True):
            libc.umount2(target.encode(), 2)          # MNT_DETACH
        return [f"unmounted {t}" for t in found if "/netns/" not in t]

    def _remove_cgroups(self) -> None:
        with open("/proc/self/mounts") as f:
            roots = [line.split()[1] for line in f if line.split()[2] in ("cgroup", "cgroup2")]
        for root in roots:
            d = root + self.cgroup_parent
            if os.path.isdir(d):
                for sub in _listdir(d):           # sandbox cgroups runc could not remove
                    _rmdir_when_empty(os.path.join(d, sub))
                _rmdir_when_empty(d)

    def _sandbox_ids(self) -> set[str]:
        ids: set[str] = set(self._extra_ids)
        for c in self._clients:
            ids |= c.created
        return ids

    def _remove_cni_cache_entries(self) -> None:
        ids = self._sandbox_ids()
        results = f"{CNI_CACHE}/results"
        for name in _listdir(results):
            if any(f"-{sid}-" in name for sid in ids):
                try:
                    os.unlink(os.path.join(results, name))
                except FileNotFoundError:
                    pass
        for d in (f"{CNI_CACHE}/results", CNI_CACHE):
            if not self._had_cni_cache[d]:
                _rmdir(d)

    def _remove_if_ours_and_empty(self) -> None:
        if not self._had_shim_dir:
            _rmdir(SHIM_SOCKET_DIR)
        if not self._had_run_containerd:
            _rmdir(os.path.dirname(SHIM_SOCKET_DIR))

    def __enter__(self) -> "Containerd":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _all_pids() -> list[int]:
    return [int(d) for d in _listdir("/proc") if d.isdigit()]


def _listdir(d: str) -> list[str]:
    try:
        return sorted(os.listdir(d))
    except OSError:
        return []


def _rmdir(d: str) -> None:
    try:
        os.rmdir(d)
    except OSError:
        pass


def _rmdir_when_empty(d: str, timeout: float = 5.0) -> None:
    """rmdir a cgroup, retrying while the kernel still counts an exiting task in it (EBUSY)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(d)
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                return
            time.sleep(0.05)
