"""The lab state file: everything a lab made, recorded *before* it is made.

``<lab dir>/state.json`` holds an ordered list of resources. Each is appended
(and the file atomically rewritten) before the build step creates it, so a
crash at any point leaves a file that names everything that may exist.
``netlab.lab.teardown`` walks the list backwards and removes exactly those things,
tolerating "already gone", so ``netlab down`` is idempotent and works on a
half-built lab. Nothing is ever removed by pattern. Imports nothing of netlab.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any


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

def proc_stat(pid: int | None) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or
    None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            s = f.read()
    except (OSError, TypeError):
        return None
    return s[s.rfind(")") + 2:].split()


def proc_starttime(pid: int | None) -> str | None:
    """Field 22 of /proc/PID/stat: identifies a process across pid reuse."""
    fields = proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def proc_state(pid: int | None) -> str | None:
    """The process's state letter (``Z`` for a zombie), None when it is gone."""
    fields = proc_stat(pid)
    return fields[0] if fields else None


def proc_ppid(pid: int | None) -> int:
    """The parent's PID, 0 when the process is gone."""
    fields = proc_stat(pid)
    try:
        return int(fields[1]) if fields else 0
    except (ValueError, IndexError):
        return 0


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
        st = proc_state(pid)
        if st in ("Z", None):
            return True
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


# --------------------------------------------------------------------------- /etc/netns

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


def run_quiet(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True)


def attach_addresses(st: State) -> dict[str, str]:
    """pod -> its primary address from the recorded ADD results: IPv4 when it has
    one, else IPv6 (an IPv6-only pod)."""
    out = {}
    for pod, addrs in attach_addresses_all(st).items():
        out[pod] = next((a for a in addrs if ":" not in a), addrs[0])
    return out


def attach_addresses_all(st: State) -> dict[str, list[str]]:
    """pod -> every address of its ADD result (IPv4 first), for A and AAAA records."""
    out: dict[str, list[str]] = {}
    for pod, res in st.attachments().items():
        addrs = [ip.get("address", "").split("/")[0] for ip in (res.get("result") or {}).get("ips", [])]
        addrs = [a for a in addrs if a]
        if addrs:
            out[pod] = sorted(addrs, key=lambda a: ":" in a)
    return out
