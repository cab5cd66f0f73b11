"""One DHCP lease: acquire (DISCOVER/OFFER/REQUEST/ACK), renew, release.

The UDP socket is opened inside the container's network namespace, bound to
the interface (SO_BINDTODEVICE) and port 68; a socket keeps the namespace it
was created in, so every later exchange (renewals, the release) happens in
the container without entering it again. Replies are asked for broadcast
(the interface has no address yet), renewals go unicast to the server once
the runtime configured the address (RFC 2131 4.4.5).
"""
from __future__ import annotations

import fcntl
import os
import select
import socket
import struct
import sys
import threading
import time

from plugins.core import netns as cns

from . import packet as P

SIOCGIFHWADDR = 0x8927
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP, IFF_RUNNING = 0x8913, 0x8914, 0x1, 0x40


class DHCPFailed(Exception):
    """No usable answer from a DHCP server (timeout, NAK, bad reply)."""


def log(msg: str) -> None:
    sys.stderr.write(f"dhcp daemon: {msg}\n")
    sys.stderr.flush()


def open_socket(netns_path: str, ifname: str) -> tuple[socket.socket, bytes]:
    """A UDP socket on ``ifname`` port 68 inside ``netns_path``, and the interface's MAC."""
    with cns.entered(netns_path):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            s.bind(("0.0.0.0", 68))
            req = struct.pack("16s16x", ifname.encode())
            mac = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)[18:24]
            # DHCP needs the link up; a runtime may call IPAM before it sets the
            # link up (our bridge does), so bring it up, as a DHCP client does.
            flags = struct.unpack_from("H", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req), 16)[0]
            if not flags & IFF_UP:
                fcntl.ioctl(s.fileno(), SIOCSIFFLAGS,
                            struct.pack("16sH14x", ifname.encode(), flags | IFF_UP))
        except OSError:
            s.close()
            raise
    return s, mac


class Lease:
    """A lease kept alive by a thread until ``stop()`` (which releases it)."""

    def __init__(self, client_id: str, netns_path: str, ifname: str, *, timeout: float) -> None:
        self.client_id = client_id
        self.ifname = ifname
        self.timeout = timeout
        self.sock, self.mac = open_socket(netns_path, ifname)
        self.ack: P.Reply | None = None
        self.bound_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one exchange -------------------------------------------------------
    def _send(self, data: bytes, dst: str) -> None:
        self.sock.sendto(data, (dst, 67))

    def _exchange(self, build, want: set[int], dst: str, deadline: float) -> P.Reply:
        """Send ``build(xid)``, resend with backoff (1, 2, 4 s...) until ``deadline``."""
        xid = int.from_bytes(os.urandom(4), "big")
        pkt = build(xid)
        wait = 1.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise DHCPFailed(f"no DHCP {'/'.join(P.TYPE_NAMES[t] for t in sorted(want))} "
                                 f"on {self.ifname} within {self.timeout:g}s")
            self._send(pkt, dst)
            resend_at = min(deadline, now + wait)
            wait = min(wait * 2, 16.0)
            while (left := resend_at - time.monotonic()) > 0:
                r, _, _ = select.select([self.sock], [], [], left)
                if not r:
                    break
                data = self.sock.recv(4096)
                try:
                    rep = P.decode(data)
                except P.BadPacket:
                    continue
                if rep.xid != xid or rep.chaddr != self.mac:
                    continue
                if rep.msg_type == P.NAK:
                    msg = rep.options.get(P.OPT_MESSAGE, b"").decode(errors="replace")
                    raise DHCPFailed(f"DHCP server {rep.server_id or '?'} said NAK"
                                     + (f": {msg}" if msg else ""))
                if rep.msg_type in want:
                    return rep

    def _wait_carrier(self, deadline: float) -> None:
        """Until the link has carrier (IFF_RUNNING): a link we just set up drops the
        first replies otherwise (the carrier event reaches the bridge port late)."""
        req = struct.pack("16s16x", self.ifname.encode())
        while time.monotonic() < deadline:
            flags = struct.unpack_from("H", fcntl.ioctl(self.sock.fileno(), SIOCGIFFLAGS, req), 16)[0]
            if flags & IFF_RUNNING:
                return
            time.sleep(0.05)
        raise DHCPFailed(f"{self.ifname} has no carrier after {self.timeout:g}s")

    # -- the lease's life ---------------------------------------------------
    def acquire(self) -> P.Reply:
        deadline = time.monotonic() + self.timeout
        self._wait_carrier(deadline)
        cid = self.client_id.encode()
        offer = self._exchange(lambda x: P.encode(P.DISCOVER, x, self.mac, client_id=cid),
                               {P.OFFER}, "255.255.255.255", deadline)
        ack = self._exchange(lambda x: P.encode(P.REQUEST, x, self.mac, client_id=cid,
                                                requested=offer.yiaddr,
                                                server_id=offer.server_id),
                             {P.ACK}, "255.255.255.255", deadline)
        P.routes(ack)                    # a malformed route option fails the ADD, not later
        self.ack, self.bound_at = ack, time.monotonic()
        return ack

    def start(self) -> None:
        self._thread = threading.Thread(target=self._maintain, daemon=True,
                                        name=f"lease {self.client_id[:40]}")
        self._thread.start()

    def _renew(self, rebind: bool) -> None:
        assert self.ack is not None
        cid = self.client_id.encode()
        ip = self.ack.yiaddr
        dst = "255.255.255.255" if rebind else (self.ack.server_id or "255.255.255.255")
        ack = self._exchange(lambda x: P.encode(P.REQUEST, x, self.mac, client_id=cid,
                                                ciaddr=ip, broadcast=False),
                             {P.ACK}, dst, time.monotonic() + self.timeout)
        if ack.yiaddr != ip:
            raise DHCPFailed(f"renewal gave {ack.yiaddr}, the lease was {ip}")
        self.ack, self.bound_at = ack, time.monotonic()

    def _maintain(self) -> None:
        while not self._stop.is_set():
            assert self.ack is not None
            lease, t1, t2 = self.ack.timers()
            since = time.monotonic() - self.bound_at
            if since < t1:
                self._stop.wait(t1 - since)
                continue
            try:
                self._renew(rebind=since >= t2)
                log(f"renewed {self.ack.address} for {self.client_id}")
            except (DHCPFailed, OSError) as e:
                if since >= lease:
                    log(f"lease {self.ack.address} of {self.client_id} expired: {e}")
                else:
                    log(f"renewal of {self.ack.address} for {self.client_id} failed: {e}")
                self._stop.wait(min(30.0, max(1.0, (lease - since) / 4)))

    def stop(self) -> str:
        """Stop renewing and send DHCPRELEASE; returns '' or why the release was not sent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1)
        why = ""
        if self.ack is not None and self.ack.server_id:
            rel = P.encode(P.RELEASE, int.from_bytes(os.urandom(4), "big"), self.mac,
                           client_id=self.client_id.encode(), ciaddr=self.ack.yiaddr,
                           server_id=self.ack.server_id, broadcast=False)
            try:
                self._send(rel, self.ack.server_id)
            except OSError as e:
                # The runtime deleted the interface before IPAM DEL (the bridge
                # plugin does, in this order, as the reference): the container
                # cannot reach the server any more, the daemon's own namespace may.
                log(f"DHCPRELEASE for {self.ack.yiaddr} from the container failed "
                     f"({e.strerror or e}); sending it from the daemon's namespace")
                why = _release_from_here(rel, self.ack.server_id)
                if why:
                    why = f"DHCPRELEASE for {self.ack.yiaddr} not sent: {why}"
                    log(why)
        self.sock.close()
        return why


def _release_from_here(rel: bytes, server: str) -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", 68))
        except OSError:
            pass                      # port 68 taken here: any source port will do for a release
        s.sendto(rel, (server, 67))
        return ""
    except OSError as e:
        return e.strerror or str(e)
    finally:
        s.close()
