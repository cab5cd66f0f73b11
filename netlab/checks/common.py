"""What every check needs: where targets live, how to run things in them,
small TCP/UDP servers and clients in a namespace, and the result type."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..base import namespaces as nsutil
from ..base.namespaces import in_thread, run_in
from ..base.capture import Capture
from ..lab.labs import Target, families_between, family_of, target

REPLY = b"netlab-ok"


@dataclass
class CheckResult:
    name: str
    type: str
    ok: bool
    expected: str = ""
    observed: str = ""
    evidence: str = ""            # pcap path
    details: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "ok": self.ok, "expected": self.expected,
                "observed": self.observed, "evidence": self.evidence, "details": self.details,
                "seconds": self.seconds}


class Context:
    """A lab as the checks see it: built from the plan and the recorded state."""

    def __init__(self, topo, plan, st, *, evidence: bool = True) -> None:
        """``evidence=False``: only resolve targets (no evidence directory is made)."""
        from ..base.state import attach_addresses, attach_addresses_all
        self.topo, self.plan, self.st = topo, plan, st
        self.lab_dir = plan.lab_dir
        self.addresses = attach_addresses(st) if st is not None else {}
        self.addresses_all = attach_addresses_all(st) if st is not None else {}
        self.evidence_dir = os.path.join(self.lab_dir, "evidence")
        if evidence:
            os.makedirs(self.evidence_dir, exist_ok=True)

    def target(self, name: str) -> Target:
        return target(self.topo, self.plan, self.addresses, name, self.addresses_all)

    def pcap(self, check, suffix: str = "") -> str:
        slug = re.sub(r"[^a-zA-Z0-9]+", "-", check.name).strip("-")[:60]
        return os.path.join(self.evidence_dir, f"{check.index:02d}-{check.type}-{slug}{suffix}.pcap")

    def expand(self, argv: list[str]) -> list[str]:
        """${name} -> the address of pod/node/ext/dns ``name``."""
        def sub(m):
            return self.target(m.group(1)).address or m.group(0)
        return [re.sub(r"\$\{([a-z0-9-]+)\}", sub, a) for a in argv]


# --------------------------------------------------------------------------- running things

class Server:
    """A tiny TCP/UDP responder bound inside a namespace (runs in a setns'd thread)."""

    def __init__(self, ns: str, proto: str, port: int, address: str = "0.0.0.0") -> None:
        # address "::" (or any IPv6 one): an IPv6 socket (IPV6_V6ONLY: it answers IPv6 alone)
        self.ns, self.proto, self.port, self.address = ns, proto, port, address
        self.peers: list[tuple[str, int]] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._err: BaseException | None = None
        self._t = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Server":
        self._t.start()
        if not self._ready.wait(5) or self._err:
            raise RuntimeError(f"server {self.proto}/{self.port} in {self.ns} did not start: {self._err}")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(3)

    def _run(self) -> None:
        from plugins.core import netns as cns
        try:
            fd = os.open(nsutil.path(self.ns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                cns.setns(fd)
            finally:
                os.close(fd)
            kind = socket.SOCK_STREAM if self.proto == "tcp" else socket.SOCK_DGRAM
            v6 = ":" in self.address
            s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, kind)
            if v6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.address, self.port))
            if self.proto == "tcp":
                s.listen(16)
            s.settimeout(0.05)
        except BaseException as e:  # noqa: BLE001
            self._err = e
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    if self.proto == "tcp":
                        c, peer = s.accept()
                        self.peers.append(peer)
                        with c:
                            c.settimeout(1)
                            try:
                                c.recv(256)
                            except OSError:
                                pass
                            c.sendall(REPLY + f" {peer[0]}:{peer[1]}".encode())
                    else:
                        data, peer = s.recvfrom(2048)
                        self.peers.append(peer)
                        s.sendto(REPLY + f" {peer[0]}:{peer[1]}".encode(), peer)
                except socket.timeout:
                    continue
                except OSError:
                    continue
        finally:
            s.close()


def client(ns: str, proto: str, host: str, port: int, timeout: float = 2) -> tuple[bool, str]:
    """Connect/send from inside ``ns``; (got the server's reply, text or error)."""
    def go():
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
        s.settimeout(timeout)
        try:
            if proto == "tcp":
                s.connect((host, port))
                s.sendall(b"netlab-probe")
                data = s.recv(256)
            else:
                data = b""
                for _ in range(3):          # UDP: a few tries (first may wait on ARP)
                    s.sendto(b"netlab-probe", (host, port))
                    try:
                        data, _ = s.recvfrom(256)
                        break
                    except socket.timeout:
                        continue
            return (data.startswith(REPLY), data.decode(errors="replace"))
        except OSError as e:
            return (False, f"{type(e).__name__}: {e.strerror or e}")
        finally:
            s.close()
    return in_thread(ns, go, timeout * 4 + 2)


def ping(ns: str, addr: str, *, count: int = 1, timeout: float = 2, size: int | None = None,
         df: bool = False, interval: float = 0.2) -> subprocess.CompletedProcess:
    argv = ["ping", "-n", "-c", str(count), "-W", str(timeout), "-i", str(interval)]
    if size is not None:
        argv += ["-s", str(size)]
    if df:
        argv += ["-M", "do"]
    return run_in(ns, argv + [addr], timeout=count * (timeout + 1) + 5)


def captured(ns: str, iface: str, bpf: str, pcap: str, fn: Callable[[], Any], *, count: int = 0,
             settle: float = 0.1, incoming_only: bool = False) -> tuple[Any, list]:
    """Run ``fn`` while capturing; returns (fn's value, decoded packets); pcap saved."""
    value, seen = captured_with_direction(ns, iface, bpf, pcap, fn, count=count, settle=settle,
                                          incoming_only=incoming_only)
    return value, [x for x, _ in seen]


def captured_with_direction(ns: str, iface: str, bpf: str, pcap: str, fn: Callable[[], Any], *,
                            count: int = 0, settle: float = 0.1,
                            incoming_only: bool = False) -> tuple[Any, list[tuple[Any, str]]]:
    """Like ``captured``, each packet with the direction it was seen in ("in"/"out")."""
    cap = Capture(ns, "" if iface == "any" else iface, bpf, pcap=pcap, count=count,
                  incoming_only=incoming_only)
    cap.start()
    try:
        value = fn()
    finally:
        time.sleep(settle)
        cap.stop()
    return value, list(zip(cap.packets(), cap.directions))
