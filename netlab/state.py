"""The lab state file: everything a lab made, recorded *before* it is made.

``<lab dir>/state.json`` holds an ordered list of resources. Each is appended
(and the file atomically rewritten) before the build step creates it, so a
crash at any point leaves a file that names everything that may exist.
``teardown`` walks the list backwards and removes exactly those things,
tolerating "already gone", so ``netlab down`` is idempotent and works on a
half-built lab. Nothing is ever removed by pattern.
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
from dataclasses import dataclass, field
from typing import Any, Callable

from . import netns as nsutil

STATE_FILE = "state.json"
DEFAULT_ROOT = os.environ.get("NETLAB_ROOT", "/var/lib/netlab")


def lab_dir_for(name: str, root: str | None = None) -> str:
    return os.path.join(root or DEFAULT_ROOT, name)


@dataclass
class State:
    path: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def lab(self) -> str:
        return self.data.get("lab", "")

    @property
    def lab_dir(self) -> str:
        return self.data.get("labDir", os.path.dirname(self.path))

    @property
    def resources(self) -> list[dict]:
        return self.data.setdefault("resources", [])

    def save(self) -> None:
        tmp = self.path + ".tmp"
        # json.dumps, not json.dump: dump() streams through the pure-Python
        # encoder, ~10x slower than the C one, and a big lab saves hundreds of times
        text = json.dumps(self.data, separators=(",", ":"))
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        # rename is atomic: a crashed netlab always leaves a complete file. (No
        # fsync: surviving a power cut is pointless, the namespaces would not.)
        os.replace(tmp, self.path)

    def record(self, kind: str, **fields: Any) -> dict:
        res = {"kind": kind, **fields}
        self.resources.append(res)
        self.save()
        return res

    def update(self, res: dict, *, flush: bool = True, **fields: Any) -> None:
        """``flush=False``: change it in memory only, the next save writes it (for
        facts that ``down`` does not need, or that it finds out again itself)."""
        res.update(fields)
        if flush:
            self.save()

    def set(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def find(self, kind: str, **match: Any) -> list[dict]:
        return [r for r in self.resources if r["kind"] == kind
                and all(r.get(k) == v for k, v in match.items())]

    def attachments(self) -> dict[str, dict]:
        return {r["pod"]: r for r in self.find("attach")}


def create(lab_dir: str, lab: str, topology_path: str) -> State:
    st = State(os.path.join(lab_dir, STATE_FILE), {
        "lab": lab, "labDir": lab_dir, "topology": os.path.abspath(topology_path),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "status": "building", "resources": []})
    st.save()
    return st


def load(lab_dir: str) -> State | None:
    p = os.path.join(lab_dir, STATE_FILE)
    try:
        with open(p, encoding="utf-8") as f:
            return State(p, json.load(f))
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- processes

def proc_starttime(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: identifies a process across pid reuse."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rfind(")") + 2:].split()[19]


def kill_recorded(pid: int, starttime: str | None, timeout: float = 3.0) -> bool:
    """Stop the process only if it is still the one we started."""
    if not pid or proc_starttime(pid) is None:
        return False
    if starttime and proc_starttime(pid) != starttime:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)   # reaps it if it is our child
            if done:
                return True
        except ChildProcessError:
            pass
        if proc_starttime(pid) != starttime:
            return True
        st = _proc_state(pid)
        if st in ("Z", None):
            return True
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            s = f.read()
        return s[s.rfind(")") + 2]
    except OSError:
        return None


# --------------------------------------------------------------------------- teardown

Detacher = Callable[[dict, State], None]


ETC_NETNS_MARKER = ".made-by-netlab"


def make_etc_netns(parent: str = "/etc/netns") -> None:
    """Create /etc/netns, marked so that any lab's down may remove it once empty."""
    os.makedirs(parent, mode=0o755, exist_ok=True)
    with open(os.path.join(parent, ETC_NETNS_MARKER), "a", encoding="utf-8"):
        pass


def remove_etc_netns_if_ours(parent: str = "/etc/netns") -> None:
    """Remove /etc/netns when netlab made it and nothing but the marker is left."""
    marker = os.path.join(parent, ETC_NETNS_MARKER)
    try:
        if os.listdir(parent) != [ETC_NETNS_MARKER]:
            return
        os.unlink(marker)
    except OSError:
        return     # gone already
    try:
        os.rmdir(parent)
    except OSError:
        # another lab added entries meanwhile: keep the mark so its down removes it
        with open(marker, "a", encoding="utf-8"):
            pass


def teardown(st: State, detach: Detacher, *, log: Callable[[str], None] = lambda s: None,
             keep_dir: bool = False, workers: int = 4) -> list[str]:
    """Remove every recorded resource, newest first. Returns the errors (also kept
    in the state file, which stays so that ``down`` can be run again)."""
    errors: list[str] = []
    if not os.path.exists(st.path):
        return errors          # already removed completely
    st.set(status="removing")
    # pod attachments first, in parallel (each a CNI DEL through its node's plugins)
    lock = threading.Lock()

    # "removed" marks are saved once per phase, not once per resource (each save
    # rewrites the whole file): a crash in between leaves resources marked present
    # that are gone, which a second down tolerates ("already gone")
    def det(res: dict) -> None:
        try:
            detach(res, st)
            with lock:
                st.update(res, removed=True, flush=False)
            log(f"detached pod {res['pod']}")
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(f"attach {res.get('pod')}: {e}")
    pending = [r for r in reversed(st.resources) if r["kind"] == "attach" and not r.get("removed")]
    if pending:
        with ThreadPoolExecutor(max_workers=workers) as ex:
            list(ex.map(det, pending))
        st.save()
    # our nftables tables in node namespaces (Services, NetworkPolicy: netlab/k8s.py)
    for res in reversed(st.resources):
        if res["kind"] == "nft_table" and not res.get("removed"):
            try:
                from .k8s import drop_table
                drop_table(res)
                st.update(res, removed=True)
            except Exception as e:  # noqa: BLE001
                errors.append(f"nft_table {res.get('family')} {res.get('table')} in {res.get('ns')}: {e}")
    # then namespaces, in parallel (deleting one takes the links, routes, rules
    # and qdiscs the plugins made in it)
    def delns(res: dict) -> None:
        try:
            nsutil.delete(res["name"])
            if nsutil.exists(res["name"]):
                raise RuntimeError(f"namespace {res['name']} is still there")
            with lock:
                st.update(res, removed=True, flush=False)
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(f"{res['kind']} {res.get('name')}: {e}")
    nss = [r for r in reversed(st.resources) if r["kind"] in ("netns", "netns_alias") and not r.get("removed")]
    aliases = [r for r in nss if r["kind"] == "netns_alias"]
    with ThreadPoolExecutor(max_workers=workers) as ex:
        list(ex.map(delns, aliases))
        list(ex.map(delns, [r for r in nss if r["kind"] == "netns"]))
    st.save()
    # the lab's processes (DNS, agent, daemons) stop independently of each other:
    # signal and wait for all of them at once instead of one after the other
    def stop(res: dict) -> None:
        try:
            kill_recorded(int(res.get("pid") or 0), res.get("starttime"))
            with lock:
                st.update(res, removed=True, flush=False)
            log(f"stopped {res.get('name', 'process')} (pid {res.get('pid')})")
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(f"process {res.get('name')}: {e}")
    procs = [r for r in reversed(st.resources) if r["kind"] == "process" and not r.get("removed")]
    if procs:
        with ThreadPoolExecutor(max_workers=min(8, len(procs))) as ex:
            list(ex.map(stop, procs))
    for res in list(reversed(st.resources)):
        if res.get("removed") or res["kind"] in ("labdir", "attach"):
            continue   # attachments done above; the lab directory goes last, below
        kind = res["kind"]
        try:
            if kind == "process":
                kill_recorded(int(res.get("pid") or 0), res.get("starttime"))
                log(f"stopped {res.get('name', 'process')} (pid {res.get('pid')})")
            elif kind in ("netns", "netns_alias"):
                nsutil.delete(res["name"])
                if nsutil.exists(res["name"]):
                    raise RuntimeError(f"namespace {res['name']} is still there")
                log(f"deleted namespace {res['name']}")
            elif kind == "etcnetns":
                d = res["path"]
                for fn in res.get("files", []):
                    try:
                        os.unlink(os.path.join(d, fn))
                    except FileNotFoundError:
                        pass
                if res.get("created_dir"):
                    try:
                        os.rmdir(d)
                    except FileNotFoundError:
                        pass
                # /etc/netns itself goes with the last lab's entries if netlab made
                # it, whichever lab that was (labs come and go in any order)
                remove_etc_netns_if_ours(os.path.dirname(d))
            elif kind == "impair":
                from .impair import remove as remove_impairment
                errs = remove_impairment(res)      # its namespaces are usually gone already: nothing to do
                if errs:
                    raise RuntimeError("; ".join(errs))
            elif kind == "nft_table":
                from .k8s import drop_table
                drop_table(res)
            elif kind == "file":
                try:
                    os.unlink(res["path"])
                except FileNotFoundError:
                    pass
            else:
                raise RuntimeError(f"unknown resource kind {kind!r}")
            # files are marked in memory (saved below); processes and the rest at once
            st.update(res, removed=True, flush=kind not in ("etcnetns", "file"))
        except Exception as e:  # keep going: remove everything we can
            errors.append(f"{kind} {res.get('name') or res.get('pod') or res.get('path')}: {e}")
    st.save()
    if errors:
        st.set(status="remove-failed", errors=errors)
        return errors
    ld = st.find("labdir")
    if ld and ld[0].get("created") and not keep_dir:
        shutil.rmtree(ld[0]["path"], ignore_errors=True)
        for parent in ld[0].get("created_parents", []):
            try:
                os.rmdir(parent)       # only when empty: other labs may live there
            except OSError:
                break
    else:
        st.set(status="removed")
        try:
            os.unlink(st.path)
        except FileNotFoundError:
            pass
    return errors


def run_quiet(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)
