"""A layer-2 LoadBalancer speaker for one lab node (netlab/loadbalancer.py, ADR 0026).

Runs inside the node's namespace, one per node, like MetalLB's speaker:

    python -m netlab.features.lbspeaker --config <lab>/lb/config.json --node NODE --status <lab>/lb/status-NODE.json

* heartbeats: every ``interval`` seconds a UDP datagram to every other node's
  underlay address (port 7946) saying whether this speaker is ready; a node
  heard within ``deadAfter`` whose last heartbeat said ready is up. A speaker
  whose own uplink has no carrier is cut off: it counts nobody as up, itself
  included, and announces nothing. When the link is back it listens for
  ``deadAfter`` seconds (not ready) before it elects, so it learns who is up
  first.
* election: for each address, ``loadbalancer.elect`` over the eligible nodes;
  every speaker computes the same answer from the same heartbeats. A ready
  speaker claims an address it wins among all nodes it hears (ready or still
  listening), and keeps one it announces while it still wins among the
  *ready* nodes: a returning node takes its addresses back when it is ready,
  the old speaker lets go when it hears that (within one heartbeat), so an
  address is never without a speaker, and two answer for at most one
  heartbeat period.
* ARP: a packet socket on the uplink; a request (arriving, not our own) for
  an address this node announces gets a reply with the uplink's MAC. An
  address gained is announced with gratuitous ARP (broadcast replies,
  sender = target = the address), twice.
* status: a JSON file rewritten on every change and once a second (up, ready,
  announcing, since, answered, gratuitous) for the build, checks and trace.

The configuration is re-read when its file changes. SIGTERM ends it.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import time

from .loadbalancer import elect

ETH_P_ARP = 0x0806
PACKET_OUTGOING = 4
SIOCGIFFLAGS = 0x8913
SIOCGIFHWADDR = 0x8927
IFF_UP = 0x1
IFF_RUNNING = 0x40
BROADCAST = b"\xff" * 6
HB = b"netlab-lb-heartbeat "


def if_flags(iface: str) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        r = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("16sH14x", iface.encode(), 0))
        return struct.unpack("16sH14x", r)[1]
    except OSError:
        return 0
    finally:
        s.close()


def if_mac(iface: str) -> bytes:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        r = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, struct.pack("16s16x", iface.encode()))
        return r[18:24]
    finally:
        s.close()


def arp_frame(op: int, eth_dst: bytes, sha: bytes, spa: str, tha: bytes, tpa: str) -> bytes:
    eth = eth_dst + sha + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, socket.inet_aton(spa), tha, socket.inet_aton(tpa))
    return (eth + arp).ljust(60, b"\0")


def parse_arp(frame: bytes) -> tuple[int, bytes, str, str] | None:
    """(op, sender MAC, sender IP, target IP) of an Ethernet ARP frame for IPv4."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return None
    htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = struct.unpack("!HHBBH6s4s6s4s", frame[14:42])
    if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4:
        return None
    return op, sha, socket.inet_ntoa(spa), socket.inet_ntoa(tpa)


class Speaker:
    def __init__(self, config: str, node: str, status: str) -> None:
        self.config_path, self.node, self.status_path = config, node, status
        self.cfg: dict = {}
        self.cfg_mtime: float | None = None
        self.load()
        self.iface = self.cfg.get("iface", "eth0")
        self.mac = if_mac(self.iface)
        self.heard: dict[str, float] = {}
        self.ready_peers: set[str] = set()
        self.prev_up: list[str] = []
        self.joined: float | None = None
        self.announcing: set[str] = set()
        self.since: dict[str, float] = {}
        self.answered: dict[str, int] = {}
        self.garps: dict[str, int] = {}
        self.last_status = 0.0
        self.arp = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        self.arp.bind((self.iface, ETH_P_ARP))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.udp.bind((self.cfg["nodes"][node], int(self.cfg.get("port", 7946))))
        self.stop = False

    def load(self) -> bool:
        try:
            m = os.stat(self.config_path).st_mtime
        except OSError:
            return False
        if m == self.cfg_mtime:
            return False
        with open(self.config_path, encoding="utf-8") as f:
            self.cfg = json.load(f)
        self.cfg_mtime = m
        return True

    @property
    def dead_after(self) -> float:
        return float(self.cfg.get("deadAfter", 1.0))

    def running(self) -> bool:
        fl = if_flags(self.iface)
        return bool(fl & IFF_UP and fl & IFF_RUNNING)

    def is_ready(self, now: float) -> bool:
        return self.joined is not None and now - self.joined >= self.dead_after

    def up(self, now: float) -> list[str]:
        if self.joined is None:
            return []
        return sorted(({self.node} if self.is_ready(now) else set())
                      | {n for n, t in self.heard.items() if now - t <= self.dead_after and n in self.ready_peers})

    def alive(self, now: float) -> list[str]:
        """Up or still listening: every node heard lately, and this one."""
        if self.joined is None:
            return []
        return sorted({self.node} | {n for n, t in self.heard.items() if now - t <= self.dead_after})

    def heartbeat(self, now: float) -> None:
        msg = HB + f"{self.node} {int(self.is_ready(now))}".encode()
        for n, addr in self.cfg["nodes"].items():
            if n == self.node:
                continue
            try:
                self.udp.sendto(msg, (addr, int(self.cfg.get("port", 7946))))
            except OSError:
                pass        # no carrier, no route: nobody hears us, which is the point

    def recompute(self, now: float) -> None:
        if self.running():
            if self.joined is None:
                self.joined = now
                self.log(f"uplink {self.iface} is up: listening {self.dead_after}s before electing")
        elif self.joined is not None:
            self.joined = None
            self.log(f"uplink {self.iface} has no carrier: cut off, announcing nothing")
        ready = self.is_ready(now)
        up = self.up(now)
        if up != self.prev_up:
            gone = sorted(set(self.prev_up) - set(up) - {self.node})
            if gone and self.joined is not None:
                self.log(f"{', '.join(gone)}: not heard (ready) for {self.dead_after}s: down")
            self.prev_up = up
            self.status_dirty = True
        new: set[str] = set()
        if ready:
            alive = self.alive(now)
            for a in self.cfg.get("addresses", []):
                addr, el = a["address"], a["eligible"]
                # claim what this node wins among every node heard (ready or still listening);
                # keep what it announces until the winner says it is ready
                if elect(addr, [n for n in el if n in alive]) == self.node or (
                        addr in self.announcing and elect(addr, [n for n in el if n in up]) == self.node):
                    new.add(addr)
        for a in sorted(self.announcing - new):
            self.log(f"{a}: no longer the speaker (up: {', '.join(up) or 'nobody'})")
            self.since.pop(a, None)
        gained = sorted(new - self.announcing)
        self.announcing = new
        for a in gained:
            self.since[a] = time.time()
            self.log(f"{a}: elected speaker (heard: {', '.join(self.alive(now))}; ready: {', '.join(up)}): gratuitous ARP from {self.mac.hex(':')}")
            for _ in range(2):
                self.gratuitous(a)
        if gained or now - self.last_status >= 1.0 or self.status_dirty:
            self.write_status(ready, up)

    status_dirty = True

    def gratuitous(self, addr: str) -> None:
        try:
            self.arp.send(arp_frame(2, BROADCAST, self.mac, addr, BROADCAST, addr))
            self.garps[addr] = self.garps.get(addr, 0) + 1
        except OSError as e:
            self.log(f"{addr}: gratuitous ARP not sent: {e.strerror}")

    def on_arp(self) -> None:
        data, addr = self.arp.recvfrom(2048)
        if addr[2] == PACKET_OUTGOING:
            return
        a = parse_arp(data)
        if a is None or a[0] != 1:
            return
        _op, sha, spa, tpa = a
        if tpa not in self.announcing:
            return
        try:
            self.arp.send(arp_frame(2, sha, self.mac, tpa, sha, spa))
            self.answered[tpa] = self.answered.get(tpa, 0) + 1
            self.status_dirty = True
        except OSError as e:
            self.log(f"{tpa}: ARP reply to {spa} not sent: {e.strerror}")

    def on_udp(self, now: float) -> None:
        data, _peer = self.udp.recvfrom(512)
        if data.startswith(HB):
            n, _, rdy = data[len(HB):].decode(errors="replace").partition(" ")
            if n in self.cfg.get("nodes", {}) and n != self.node:
                if n not in self.heard or now - self.heard[n] > self.dead_after:
                    self.log(f"heard {n}")
                    self.status_dirty = True
                self.heard[n] = now
                if rdy == "1":
                    self.ready_peers.add(n)
                else:
                    self.ready_peers.discard(n)

    def write_status(self, ready: bool, up: list[str]) -> None:
        st = {"node": self.node, "pid": os.getpid(), "mac": self.mac.hex(":"), "ready": ready, "up": up,
              "heard": sorted(n for n, t in self.heard.items() if time.monotonic() - t <= self.dead_after),
              "announcing": sorted(self.announcing), "since": self.since, "answered": self.answered,
              "gratuitous": self.garps, "configMtime": self.cfg_mtime, "updated": time.time()}
        tmp = self.status_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(st, f)
        os.replace(tmp, self.status_path)
        self.last_status = time.monotonic()
        self.status_dirty = False

    def log(self, msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} speaker {self.node}: {msg}", flush=True)

    def run(self) -> None:
        interval = float(self.cfg.get("interval", 0.2))
        nxt = time.monotonic()
        self.log(f"started on {self.iface} ({self.mac.hex(':')}), {len(self.cfg.get('addresses', []))} address(es)")
        while not self.stop:
            now = time.monotonic()
            if now >= nxt:
                if self.load():
                    self.status_dirty = True
                    self.log(f"configuration re-read: {len(self.cfg.get('addresses', []))} address(es)")
                if self.running():
                    self.heartbeat(now)
                self.recompute(now)
                nxt = now + interval
            try:
                r, _, _ = select.select([self.arp, self.udp], [], [], max(0.0, nxt - time.monotonic()))
            except InterruptedError:
                continue
            now = time.monotonic()
            if self.udp in r:
                try:
                    self.on_udp(now)
                except OSError:
                    pass
            if self.arp in r:
                try:
                    self.on_arp()
                except OSError:
                    pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="netlab.features.lbspeaker")
    ap.add_argument("--config", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--status", required=True)
    ap.add_argument("tag", nargs="?", help="ignored (names the lab in ps output)")
    a = ap.parse_args(argv)
    sp = Speaker(a.config, a.node, a.status)

    def term(*_):
        sp.stop = True
    signal.signal(signal.SIGTERM, term)
    signal.signal(signal.SIGINT, term)
    sp.run()
    sp.log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
