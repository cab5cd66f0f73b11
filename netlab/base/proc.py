"""Lab-owned background processes (dnsmasq for DNS and DHCP, the dhcp daemon).

``start_recorded`` starts one in a namespace, records it in the lab state
(pid + start time, so ``down`` stops exactly it) before waiting for it, and
returns once ``ready(pid)`` holds.
"""
from __future__ import annotations

import subprocess
import time
from typing import Callable

from . import namespaces as nsutil
from .state import proc_starttime


def code_root() -> str:
    """The directory holding the ``plugins`` and ``netlab`` packages: the working
    directory of ``python -m ...`` processes a lab starts (dhcp daemon, LB speakers)."""
    import os
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class StartError(RuntimeError):
    pass


def start_recorded(ns: str, argv: list[str], name: str, out_path: str,
                   ready: Callable[[int], bool], *, record: Callable[..., dict],
                   cwd: str | None = None, timeout: float = 10.0, extra: dict | None = None) -> int:
    """Start ``argv`` in ``ns`` (output appended to ``out_path``), record it (with
    ``extra`` fields for whoever reads the record later) and wait for ``ready(pid)``."""
    if not nsutil.exists(ns):
        raise StartError(f"namespace {ns} does not exist")
    out = open(out_path, "ab")
    try:
        proc = subprocess.Popen(nsutil.exec_argv(ns, argv), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                cwd=cwd)
    finally:
        out.close()
    # ip netns exec execs the program in place: the pid (and start time) is the program's
    start_t = None
    deadline = time.monotonic() + 1.0
    while start_t is None and time.monotonic() < deadline:
        start_t = proc_starttime(proc.pid)
        if start_t is None:
            time.sleep(0.01)
    record(name=name, pid=proc.pid, starttime=start_t, ns=ns, argv=argv, **(extra or {}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            try:
                with open(out_path, encoding="utf-8", errors="replace") as f:
                    tail = f.read()[-800:]
            except OSError:
                tail = ""
            raise StartError(f"{name} exited with status {rc}: {tail.strip()}")
        if ready(proc.pid):
            return proc.pid
        time.sleep(0.02)
    raise StartError(f"{name} in {ns} was not ready within {timeout:g}s")
