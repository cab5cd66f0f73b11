"""iperf3 between two lab targets, shared by the ``bandwidth`` and ``throughput``
checks: a one-shot server in the destination's namespace, the client run from the
source while a capture runs at the destination, the receiver's figures parsed."""
from __future__ import annotations

import contextlib
import json
import subprocess
import time
from typing import Callable, Iterator

from ...base import namespaces as nsutil
from ..common import captured, run_in


def listening_tcp(pid: int, port: int) -> bool:
    """Whether the namespace of process ``pid`` has a TCP socket listening on ``port``."""
    try:
        with open(f"/proc/{pid}/net/tcp", encoding="ascii") as f:
            next(f)
            return any(line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A" for line in f)
    except OSError:
        return False


def iface_bytes(pid: int, iface: str, column: int = 0) -> int | None:
    """A ``/proc/<pid>/net/dev`` column of ``iface`` in the namespace ``pid`` lives in:
    0 received bytes, 8 sent bytes (None when unreadable)."""
    try:
        with open(f"/proc/{pid}/net/dev", encoding="ascii") as f:
            for line in f:
                name, sep, rest = line.partition(":")
                if sep and name.strip() == iface:
                    return int(rest.split()[column])
    except (OSError, ValueError, IndexError):
        return None
    return None


@contextlib.contextmanager
def server(dst, port: int, ready_within: float = 5.0) -> Iterator[subprocess.Popen]:
    """``iperf3 -s -1`` bound to ``dst``'s address, yielded once it listens (or the
    wait ran out: the client then reports the refusal); always reaped."""
    srv = subprocess.Popen(nsutil.exec_argv(dst.ns, ["iperf3", "-s", "-1", "-B", dst.address,
                                                     "-p", str(port)]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + ready_within
        while not listening_tcp(srv.pid, port) and time.monotonic() < deadline:
            time.sleep(0.02)
        yield srv
    finally:
        try:
            srv.wait(5)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


def client(src, dst, port: int, seconds: int, pcap: str, streams: int = 1,
           omit: int = 0) -> subprocess.CompletedProcess:
    """Run the client from ``src`` (JSON output) while ``dst``'s interface is captured to
    ``pcap``; ``omit`` more seconds run first and are left out of the figures (``-O``)."""
    argv = ["iperf3", "-c", dst.address, "-p", str(port), "-t", str(seconds + omit), "-J"]
    if omit:
        argv += ["-O", str(omit)]
    if streams != 1:
        argv += ["-P", str(streams)]
    proc, _ = captured(dst.ns, dst.iface, f"tcp port {port}", pcap,
                       lambda: run_in(src.ns, argv, timeout=seconds + omit + 30), count=100)
    return proc


def received(proc: subprocess.CompletedProcess) -> tuple[dict | None, str]:
    """(the receiver's summary, ``{bits_per_second, bytes, mss}``) or (None, why iperf3 failed)."""
    try:
        data = json.loads(proc.stdout)
        end = data["end"]["sum_received"]
        return {"bits_per_second": float(end["bits_per_second"]), "bytes": int(end["bytes"]),
                "mss": data["start"].get("tcp_mss_default")}, ""
    except (ValueError, KeyError, TypeError):
        return None, f"iperf3 failed: {(proc.stderr or proc.stdout)[-200:]}"


def measure(src, dst, port: int, seconds: int, pcap: str, streams: int = 1, omit: int = 0,
            around: Callable[[subprocess.Popen], contextlib.AbstractContextManager] | None = None):
    """Server, client, parse: returns (summary or None, error text, the value ``around`` yielded).
    ``around(server)`` wraps the client run (e.g. a counter sampler on the server's namespace)."""
    with server(dst, port) as srv:
        with (around(srv) if around else contextlib.nullcontext()) as extra:
            proc = client(src, dst, port, seconds, pcap, streams, omit)
    summary, why = received(proc)
    return summary, why, extra
