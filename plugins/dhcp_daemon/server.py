"""``dhcp daemon``: the unix-socket server and the lease table.

Wire protocol (ours; the Go reference speaks Go net/rpc, which a Python
client cannot sensibly reuse): one JSON object per connection each way.
Request  {"method": "allocate"|"check"|"release", "containerID", "netns",
          "ifname", "stdin"}   (stdin: the network config as text)
         {"method": "status"}  (is the daemon there: {"leases": N})
Reply    {"result": <CNI 1.0.0 result>} | {} | {"error": {"code", "msg", "details"}}
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import sys
import threading

from plugins.core.errors import CHECK_FAILED, CNIError, INVALID_NETWORK_CONFIG, IO_FAILURE
from plugins.core.config import Fields

from . import packet as P
from .client import DHCPFailed, Lease, log

DEFAULT_SOCKET = "/run/cni/dhcp.sock"
DEFAULT_TIMEOUT = 10.0
MAX_REQUEST = 1 << 20


def client_id(container_id: str, net_name: str, ifname: str) -> str:
    """The reference's client identifier (daemon.go generateClientID), 254 bytes at most."""
    return f"{container_id}/{net_name}/{ifname}"[:254]


def result_of(ack: P.Reply, priority: int) -> dict:
    routes = P.routes(ack)
    if priority:
        for r in routes:
            r["priority"] = priority
    ip = {"address": ack.address}
    if ack.gateway:
        ip["gateway"] = ack.gateway
    return {"cniVersion": "1.0.0", "ips": [ip], "routes": routes}


class Daemon:
    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self.leases: dict[str, Lease] = {}
        self.lock = threading.Lock()
        self.busy: dict[str, threading.Lock] = {}     # one call at a time per client id

    def _key_lock(self, cid: str) -> threading.Lock:
        with self.lock:
            return self.busy.setdefault(cid, threading.Lock())

    def handle(self, req: dict) -> dict:
        f = Fields(req, "request")
        method = f.str("method", required=True)
        if method == "status":
            return {"leases": len(self.leases)}
        conf = json.loads(f.str("stdin", required=True))
        cf = Fields(conf)
        ipam = cf.obj("ipam")
        priority = ipam.int("priority", 0, lo=0)
        cid = client_id(f.str("containerID", required=True), cf.str("name", required=True),
                        f.str("ifname", required=True))
        with self._key_lock(cid):
            lease = self.leases.get(cid)
            if method == "release":
                if lease is not None:
                    del self.leases[cid]
                    lease.stop()
                    log(f"released {lease.ack.address if lease.ack else '?'} of {cid}")
                return {}
            if method == "check":
                if lease is None or lease.ack is None:
                    raise CNIError(CHECK_FAILED, f"dhcp: no lease held for {cid}")
                return {"result": result_of(lease.ack, priority)}
            if method != "allocate":
                raise CNIError(INVALID_NETWORK_CONFIG, f"unknown method {method!r}")
            if lease is not None and lease.ack is not None:
                return {"result": result_of(lease.ack, priority)}
            netns = f.str("netns", required=True)
            try:
                lease = Lease(cid, netns, f.str("ifname"), timeout=self.timeout)
            except OSError as e:
                raise CNIError(IO_FAILURE, f"dhcp: cannot open a DHCP socket on "
                               f"{f.str('ifname')} in {netns}", str(e)) from None
            try:
                ack = lease.acquire()
            except (DHCPFailed, OSError, P.BadPacket) as e:
                lease.sock.close()
                raise CNIError(IO_FAILURE, f"dhcp: no lease for {f.str('ifname')}: {e}") from None
            lease.start()
            self.leases[cid] = lease
            log(f"leased {ack.address} to {cid} from {ack.server_id}")
            return {"result": result_of(ack, priority)}


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        daemon: Daemon = self.server.daemon       # type: ignore[attr-defined]
        try:
            line = self.rfile.readline(MAX_REQUEST)
            reply = daemon.handle(json.loads(line))
        except CNIError as e:
            reply = {"error": {"code": e.code, "msg": e.msg, "details": e.details}}
        except (ValueError, KeyError) as e:
            reply = {"error": {"code": INVALID_NETWORK_CONFIG, "msg": f"dhcp daemon: bad request: {e}",
                               "details": ""}}
        except Exception as e:  # noqa: BLE001 - the caller gets the error, the daemon lives
            reply = {"error": {"code": 999, "msg": f"dhcp daemon: {type(e).__name__}: {e}",
                               "details": ""}}
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


def serve(socket_path: str, timeout: float, pidfile: str = "") -> None:
    os.makedirs(os.path.dirname(os.path.abspath(socket_path)), mode=0o700, exist_ok=True)
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(socket_path)
        raise SystemExit(f"dhcp daemon: another daemon is listening on {socket_path}")
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    finally:
        probe.close()
    if os.path.exists(socket_path):
        os.unlink(socket_path)                  # a stale socket nobody listens on
    old = os.umask(0o077)
    try:
        srv = _Server(socket_path, _Handler)
    finally:
        os.umask(old)
    srv.daemon = Daemon(timeout)                # type: ignore[attr-defined]
    if pidfile:
        with open(pidfile, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    import signal
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.shutdown).start())
    log(f"listening on {socket_path}")
    try:
        srv.serve_forever()
    finally:
        for cid, lease in list(srv.daemon.leases.items()):   # type: ignore[attr-defined]
            lease.stop()
            log(f"released {cid} on exit")
        srv.server_close()
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
        if pidfile:
            try:
                os.unlink(pidfile)
            except FileNotFoundError:
                pass


def main(argv: list[str]) -> None:
    # the reference's flags are single-dash Go flags; accept both spellings
    argv = [("-" + a) if a.startswith("-") and not a.startswith("--") else a for a in argv]
    ap = argparse.ArgumentParser(prog="dhcp daemon")
    ap.add_argument("--socketpath", default=DEFAULT_SOCKET)
    ap.add_argument("--pidfile", default="")
    ap.add_argument("--timeout", default=str(DEFAULT_TIMEOUT),
                    help="seconds (or Go-style '10s') to wait for the DHCP server per call")
    a = ap.parse_args(argv)
    t = a.timeout[:-1] if a.timeout.endswith("s") else a.timeout
    serve(a.socketpath, float(t), a.pidfile)


if __name__ == "__main__":
    main(sys.argv[1:])
