"""`netlab trace`: one probe, captured everywhere at once, explained hop by hop.

How it works (see docs/adr/0009-namespace-and-capture-mechanics.md):

1. The lab is read from the kernel (``graph.inventory``): every namespace,
   interface, veth peer, bridge port and VXLAN device.
2. One capture socket per lab namespace (``netlab.base.capture.Capture`` with no
   interface: an unbound AF_PACKET socket, so the frames of one namespace
   come out in the kernel's order, each with the interface it was seen on).
   All are listening before anything is sent.
3. Counters are read before and after: link counters (drops), the
   namespace's SNMP counters (/proc/net/snmp: no route, forwarding, frag
   failures) and the packet counters of our nftables tables.
4. One probe is sent from FROM's namespace through an ordinary kernel socket
   (ICMP echo, UDP datagram or TCP SYN) whose payload carries a random
   token. The token survives NAT and encapsulation (a VXLAN frame carries
   the inner frame verbatim), so every copy of the probe is found by a byte
   search, whatever happened to its headers; ICMP errors quoting it are
   found the same way.
5. Observations are ordered along the path (namespaces by their distance
   from the sender over veth links; within one namespace, kernel order) and
   compared hop to hop: TTL, addresses and ports (NAT), encapsulation (VNI,
   outer addresses). Where the probe was last seen, the kernel state of that
   place is read (route lookup with the real input interface, forwarding
   sysctl, neighbour entry and ARP seen on the wire, MTUs, counter deltas,
   rules of our tables) to name the likely cause.
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from ..base import namespaces as nsutil
from ..base.capture import Capture
from .graph import Inventory, inventory

VXLAN_DEFAULT_PORTS = (4789, 8472)


class TraceError(Exception):
    pass


# --------------------------------------------------------------------------- probe

@dataclass
class Probe:
    proto: str                 # icmp | tcp | udp
    dst: str
    port: int | None
    size: int                  # IP packet length
    df: bool
    token: bytes = b""
    src: str = ""
    sport: int = 0
    icmp_id: int = 0
    seq: int = 0               # TCP ISN
    sent: bool = False
    send_error: str = ""

    @property
    def l4_header(self) -> int:
        return {"icmp": 8, "udp": 8, "tcp": 20}[self.proto]

    @property
    def v6(self) -> bool:
        return ":" in self.dst

    @property
    def ip_header(self) -> int:
        return 40 if self.v6 else 20

    def payload(self) -> bytes:
        n = max(len(self.token), self.size - self.ip_header - self.l4_header)
        return self.token + bytes(n - len(self.token))

    def describe(self) -> str:
        what = {"icmp": "ICMPv6 echo request" if self.v6 else "ICMP echo request", "udp": f"UDP to port {self.port}", "tcp": f"TCP SYN to port {self.port}"}[self.proto]
        return f"{what}, {self.size} bytes{' DF' if self.df else ''}"


def parse_proto(text: str) -> tuple[str, int | None]:
    m = re.fullmatch(r"(icmp)|(tcp|udp)/(\d{1,5})", text.strip().lower())
    if not m:
        raise TraceError(f"--proto must be icmp, tcp/PORT or udp/PORT, not {text!r}")
    if m.group(1):
        return "icmp", None
    port = int(m.group(3))
    if not 1 <= port <= 65535:
        raise TraceError(f"port {port} is out of range")
    return m.group(2), port


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _in_ns(ns: str, fn, timeout: float = 10):
    from ..base.namespaces import in_thread
    return in_thread(ns, fn, timeout)


def run_ns(ns: str, argv: list[str], timeout: float = 10) -> subprocess.CompletedProcess:
    from ..base.namespaces import run_in
    return run_in(ns, argv, timeout=timeout)


def route_get(ns: str, dst: str, *, src: str | None = None, iif: str | None = None,
              mark: int | None = None) -> dict:
    """``ip route get`` in a namespace: {'dev','gateway','prefsrc','type'} or {'error': ...}."""
    argv = ["ip", "-n", ns, "-j", "route", "get", dst]
    if src:
        argv += ["from", src]
    if iif:
        argv += ["iif", iif]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        return {"error": (p.stderr.strip() or "failed").replace("RTNETLINK answers: ", "")}
    try:
        r = json.loads(p.stdout)[0]
    except (ValueError, IndexError):
        return {"error": p.stdout.strip()}
    return r


def send_probe(ns: str, pr: Probe) -> None:
    """Send one probe from inside ``ns`` with a plain kernel socket."""
    IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_PMTUDISC_DONT = 10, 2, 0
    IPV6_MTU_DISCOVER = 23

    def go6():
        # IPv6: the kernel fills the ICMPv6 checksum of a raw socket itself; the TCP
        # one is ours (pseudo header of source, destination, length, next header)
        if pr.proto == "icmp":
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            pkt = struct.pack("!BBHHH", 128, 0, 0, pr.icmp_id, 1) + pr.payload()
        elif pr.proto == "udp":
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("::", pr.sport))
            pkt = pr.payload()
        else:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP)
            body = pr.payload()
            off = 5 << 12 | 0x002
            hdr = struct.pack("!HHIIHHHH", pr.sport, pr.port, pr.seq, 0, off, 64240, 0, 0)
            pseudo = (socket.inet_pton(socket.AF_INET6, pr.src) + socket.inet_pton(socket.AF_INET6, pr.dst)
                      + struct.pack("!I3xB", len(hdr) + len(body), 6))
            c = _csum(pseudo + hdr + body)
            pkt = struct.pack("!HHIIHHHH", pr.sport, pr.port, pr.seq, 0, off, 64240, c, 0) + body
        try:
            # IPv6 has no DF bit: "DF" means the sender itself never fragments (routers never do)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IP_PMTUDISC_DO if pr.df else IP_PMTUDISC_DONT)
            s.sendto(pkt, (pr.dst, pr.port if pr.proto == "udp" else 0, 0, 0))   # raw: port 0 (or EINVAL)
            pr.sent = True
        except OSError as e:
            pr.send_error = f"{e.strerror or e} (errno {e.errno})"
            if e.errno == 90:
                pr.send_error = "the sender's kernel refused it: Message too long (EMSGSIZE)"
        finally:
            s.close()

    def go():
        pmtu = IP_PMTUDISC_DO if pr.df else IP_PMTUDISC_DONT
        if pr.proto == "icmp":
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            body = pr.payload()
            hdr = struct.pack("!BBHHH", 8, 0, 0, pr.icmp_id, 1)
            c = _csum(hdr + body)
            pkt = struct.pack("!BBHHH", 8, 0, c, pr.icmp_id, 1) + body
        elif pr.proto == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            # SO_REUSEPORT: share a source port with a running flow (--sport), to test *its* conntrack entry
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("0.0.0.0", pr.sport))
            pkt = pr.payload()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
            body = pr.payload()
            off = 5 << 12 | 0x002            # header 20 bytes, SYN
            hdr = struct.pack("!HHIIHHHH", pr.sport, pr.port, pr.seq, 0, off, 64240, 0, 0)
            pseudo = socket.inet_aton(pr.src) + socket.inet_aton(pr.dst) + struct.pack("!BBH", 0, 6, len(hdr) + len(body))
            c = _csum(pseudo + hdr + body)
            pkt = struct.pack("!HHIIHHHH", pr.sport, pr.port, pr.seq, 0, off, 64240, c, 0) + body
        try:
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, pmtu)
            s.sendto(pkt, (pr.dst, pr.port or 0))
            pr.sent = True
        except OSError as e:
            pr.send_error = f"{e.strerror or e} (errno {e.errno})"
            if e.errno == 90:   # EMSGSIZE
                pr.send_error = "the sender's kernel refused it: Message too long (EMSGSIZE)"
        finally:
            s.close()
    _in_ns(ns, go6 if pr.v6 else go)


# --------------------------------------------------------------------------- counters

SNMP_KEYS = ("Ip:InReceives", "Ip:ForwDatagrams", "Ip:InAddrErrors", "Ip:InDiscards", "Ip:OutNoRoutes",
             "Ip:OutDiscards", "Ip:FragFails", "Ip:InHdrErrors", "Ip:InNoRoutes", "Icmp:OutDestUnreachs",
             "Icmp:InDestUnreachs", "Icmp:OutTimeExcds", "Udp:NoPorts", "Udp:InErrors", "Udp:RcvbufErrors",
             "IpExt:InNoRoutes", "TcpExt:TCPReqQFullDrop")


def snmp(ns: str) -> dict[str, int]:
    p = run_ns(ns, ["cat", "/proc/net/snmp", "/proc/net/netstat"])
    out: dict[str, int] = {}
    lines = p.stdout.splitlines()
    for i in range(0, len(lines) - 1, 2):
        h, v = lines[i].split(), lines[i + 1].split()
        if not h or h[0] != v[0]:
            continue
        pre = h[0].rstrip(":")
        for k, x in zip(h[1:], v[1:]):
            try:
                out[f"{pre}:{k}"] = int(x)
            except ValueError:
                pass
    return out


def link_stats(ns: str) -> dict[str, dict[str, int]]:
    p = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show"], capture_output=True, text=True, timeout=30)
    out = {}
    try:
        for d in json.loads(p.stdout or "[]"):
            st = d.get("stats64") or d.get("stats") or {}
            rx, tx = st.get("rx", {}), st.get("tx", {})
            out[d["ifname"]] = {"rx_packets": rx.get("packets", 0), "rx_dropped": rx.get("dropped", 0),
                                "rx_errors": rx.get("errors", 0), "tx_packets": tx.get("packets", 0),
                                "tx_dropped": tx.get("dropped", 0), "tx_errors": tx.get("errors", 0),
                                "rx_bytes": rx.get("bytes", 0), "tx_bytes": tx.get("bytes", 0)}
    except ValueError:
        pass
    return out


class NfTrace:
    """nftables rule tracing of the probe in every namespace.

    A table of our own (``ip cnilab-trace-<token>``, hooks at priority -310,
    before conntrack and NAT) sets ``meta nftrace`` on packets whose payload
    starts with the probe's token; ``nft monitor trace`` then prints every
    rule of every table they traverse, with its verdict. The tables are
    deleted by name afterwards, always."""

    def __init__(self, nss: list[str], probe: Probe) -> None:
        self.nss = nss
        self.probe = probe
        self.table = "cnilab-trace-" + probe.token.decode()[-8:]
        self.made: list[str] = []
        self.monitors: dict[str, subprocess.Popen] = {}
        self.lines: dict[str, list[str]] = {}

    def rule(self) -> str:
        off = {"icmp": 64, "udp": 64, "tcp": 160}[self.probe.proto]
        return f"@th,{off},{len(self.probe.token) * 8} 0x{self.probe.token.hex()} meta nftrace set 1"

    def ruleset(self) -> str:
        r = self.rule()
        return (f"table inet {self.table} {{\n"
                f"  chain pre {{ type filter hook prerouting priority -310; {r}; }}\n"
                f"  chain out {{ type filter hook output priority -310; {r}; }}\n}}\n")

    def start(self) -> None:
        from plugins.core import netns as cns
        text = self.ruleset()
        for ns in self.nss:
            fd = os.open(nsutil.path(ns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                self.made.append(ns)
                p = subprocess.run(["nft", "-f", "-"], input=text, capture_output=True, text=True, timeout=30,
                                   preexec_fn=lambda: cns.setns(fd))
                if p.returncode != 0:
                    self.made.remove(ns)
                    continue
                self.monitors[ns] = subprocess.Popen(["nft", "monitor", "trace"], stdout=subprocess.PIPE,
                                                     stderr=subprocess.DEVNULL, text=True,
                                                     preexec_fn=lambda: cns.setns(fd))
            finally:
                os.close(fd)

    def stop(self) -> None:
        for ns, m in self.monitors.items():
            m.terminate()
            try:
                out, _ = m.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                m.kill()
                out, _ = m.communicate()
            self.lines[ns] = out.splitlines()
        for ns in self.made:
            run_ns(ns, ["nft", "delete", "table", "inet", self.table], timeout=30)
        self.made = []

    def verdicts(self) -> dict[str, list[dict]]:
        """ns -> the rules (of other tables) the probe and its answer hit, in order."""
        out: dict[str, list[dict]] = {}
        for ns, lines in self.lines.items():
            for ln in lines:
                m = re.match(r"trace id (\S+) (\S+) (\S+) (\S+) (.*)$", ln)
                if not m or m.group(3) == self.table:
                    continue
                tid, fam, table, chain, rest = m.groups()
                if rest.startswith("packet:"):
                    continue
                v = re.search(r"\(verdict ([^)]+)\)$", rest)
                if rest.startswith("rule "):
                    text = re.sub(r"\s*\(verdict [^)]+\)$", "", rest[5:])
                    text = re.sub(r' comment "[^"]*"', "", text)
                    out.setdefault(ns, []).append({"id": tid, "table": f"{fam} {table}", "chain": chain,
                                                   "rule": text, "verdict": v.group(1) if v else ""})
                elif rest.startswith("policy ") or rest.startswith("verdict "):
                    out.setdefault(ns, []).append({"id": tid, "table": f"{fam} {table}", "chain": chain,
                                                   "rule": rest.strip(), "verdict": rest.split()[-1]})
        return out


def netdev_drop_rules(ns: str) -> list[str]:
    """Rules of netdev-family tables (ingress/egress hooks) that drop, with their counters;
    netlab's own impairment tables are named as such."""
    return parse_netdev_drops(run_ns(ns, ["nft", "list", "ruleset", "netdev"]).stdout)


def parse_netdev_drops(text: str) -> list[str]:
    """`nft list ruleset netdev` -> 'netdev TABLE CHAIN: RULE' for each rule that drops."""
    out, table, chain = [], "", ""
    for ln in text.splitlines():
        t = ln.strip()
        m = re.match(r"table netdev (\S+) \{", t)
        if m:
            table = m.group(1)
            continue
        m = re.match(r"chain (\S+) \{", t)
        if m:
            chain = m.group(1)
            continue
        if re.search(r"\bdrop\b", t) and not t.startswith("type "):
            rule = re.sub(r' comment "[^"]*"', "", t)
            who = " (a netlab impairment: netlab impair all show)" if table.startswith("cnilab-impair-") else ""
            out.append(f"netdev {table} {chain}: {rule}{who}")
    return out


def chain_policies(ns: str) -> list[dict]:
    """Base chains with a drop policy in *any* table of the namespace (a common silent drop)."""
    p = run_ns(ns, ["nft", "-j", "list", "chains"])
    out = []
    try:
        for it in json.loads(p.stdout or "{}").get("nftables", []):
            c = it.get("chain")
            if c and c.get("policy") == "drop":
                out.append({"table": f"{c['family']} {c['table']}", "chain": c["name"], "hook": c.get("hook")})
    except ValueError:
        pass
    return out


def snapshot(nss: list[str]) -> dict[str, dict]:
    from concurrent.futures import ThreadPoolExecutor

    def one(ns):
        out: dict[str, Any] = {"snmp": {}, "links": {}}
        for k, fn in (("snmp", snmp), ("links", link_stats)):
            try:
                out[k] = fn(ns)
            except (subprocess.SubprocessError, OSError):
                pass   # a busy machine: the diagnosis has less to go on, the trace still works
        return ns, out
    with ThreadPoolExecutor(max_workers=8) as ex:
        return dict(ex.map(one, nss))


def _delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b[k] - a.get(k, 0) for k in b if b[k] - a.get(k, 0) > 0}


# --------------------------------------------------------------------------- decoding

@dataclass
class Obs:
    ns: str
    iface: str
    direction: str             # in | out
    order: int                 # position in its namespace's capture
    frame: bytes
    kind: str = ""             # probe | reply | icmp-error | arp | related
    info: dict = field(default_factory=dict)
    ts: float = 0.0            # the kernel's capture time (wall clock)


def decode_frame(frame: bytes, vxlan_ports=VXLAN_DEFAULT_PORTS) -> dict:
    """Outer and inner headers of a frame, as plain data."""
    from scapy.layers.l2 import ARP, Ether
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
    from scapy.layers.inet6 import (ICMPv6ND_NA, ICMPv6ND_NS, IPerror6, IPv6, IPv6ExtHdrFragment,
                                    _ICMPv6)
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import bind_layers
    for port in vxlan_ports:
        bind_layers(UDP, VXLAN, dport=port)
    e = Ether(frame)
    d: dict[str, Any] = {"len": len(frame), "l2": {"src": e.src, "dst": e.dst}}
    if e.haslayer(ARP):
        a = e[ARP]
        d["arp"] = {"op": "request" if a.op == 1 else "reply", "psrc": a.psrc, "pdst": a.pdst, "hwsrc": a.hwsrc}
        return d
    p = e.getlayer(IP)
    if p is None:
        p = e.getlayer(IPv6)
    if p is None:
        return d
    if isinstance(p, IPv6) and not p.haslayer(UDP) and (p.haslayer(ICMPv6ND_NS) or p.haslayer(ICMPv6ND_NA)):
        # neighbour discovery: IPv6's ARP, reported in the same shape
        ns_ = p.getlayer(ICMPv6ND_NS)
        na = p.getlayer(ICMPv6ND_NA)
        d["arp"] = ({"op": "request", "psrc": p.src, "pdst": ns_.tgt, "hwsrc": e.src, "nd": True} if ns_ is not None
                    else {"op": "reply", "psrc": na.tgt, "pdst": p.dst, "hwsrc": e.src, "nd": True})
        return d

    # ICMPv6 types in ICMP's terms (the analysis speaks ICMP): echo 128/129 -> 8/0,
    # unreachable 1 -> 3, Packet Too Big 2 -> 3 code 4 (with its mtu), time exceeded 3 -> 11
    v6types = {128: (8, None), 129: (0, None), 1: (3, None), 2: (3, 4), 3: (11, None), 4: (12, None)}

    def l3(ip) -> dict:
        if isinstance(ip, IPv6):
            frag = ip.getlayer(IPv6ExtHdrFragment)
            x = {"src": ip.src, "dst": ip.dst, "ttl": ip.hlim, "id": frag.id if frag is not None else 0,
                 "len": ip.plen + 40, "df": True, "mf": bool(frag is not None and frag.m),
                 "frag": frag.offset if frag is not None else 0, "proto": ip.nh, "v6": True}
            ic = ip.payload
            while isinstance(ic, IPv6ExtHdrFragment):
                ic = ic.payload
            if isinstance(ic, _ICMPv6) and ic.type in v6types:
                t, code = v6types[ic.type]
                x["proto"] = 58
                x["icmp"] = {"type": t, "code": ic.code if code is None else code, "id": getattr(ic, "id", 0),
                             "seq": getattr(ic, "seq", 0), "type6": ic.type}
                if ic.type == 2:
                    x["icmp"]["mtu"] = ic.mtu
                q = ic.getlayer(IPerror6)
                if q is not None:
                    x["quoted"] = {"src": q.src, "dst": q.dst, "proto": q.nh}
                    for L in (UDPerror, TCPerror):
                        if q.haslayer(L):
                            x["quoted"].update(sport=q[L].sport, dport=q[L].dport)
            elif isinstance(ic, TCP):
                x["tcp"] = {"sport": ic.sport, "dport": ic.dport, "flags": str(ic.flags), "seq": ic.seq, "ack": ic.ack}
            elif isinstance(ic, UDP):
                x["udp"] = {"sport": ic.sport, "dport": ic.dport}
            return x
        x = {"src": ip.src, "dst": ip.dst, "ttl": ip.ttl, "id": ip.id, "len": ip.len, "df": bool(ip.flags.DF),
             "mf": bool(ip.flags.MF), "frag": ip.frag, "proto": ip.proto}
        if isinstance(ip.payload, ICMP):
            ic = ip.payload
            x["icmp"] = {"type": ic.type, "code": ic.code, "id": ic.id, "seq": ic.seq}
            if ic.type == 3 and ic.code == 4:
                x["icmp"]["mtu"] = ic.nexthopmtu
            q = ic.getlayer(IPerror)
            if q is not None:
                x["quoted"] = {"src": q.src, "dst": q.dst, "proto": q.proto}
                for L in (UDPerror, TCPerror):
                    if q.haslayer(L):
                        x["quoted"].update(sport=q[L].sport, dport=q[L].dport)
        elif isinstance(ip.payload, TCP):
            t = ip[TCP]
            x["tcp"] = {"sport": t.sport, "dport": t.dport, "flags": str(t.flags), "seq": t.seq, "ack": t.ack}
        elif isinstance(ip.payload, UDP):
            u = ip[UDP]
            x["udp"] = {"sport": u.sport, "dport": u.dport}
        return x
    d["ip"] = l3(p)
    if p.haslayer(VXLAN) and isinstance(p.payload, UDP):
        v = p[VXLAN]
        d["vxlan"] = {"vni": v.vni}
        inner = v.getlayer(IP)
        if inner is None:
            inner = v.getlayer(IPv6)
        if inner is not None:
            d["inner"] = l3(inner)
            d["inner_l2"] = {"src": v.payload.src, "dst": v.payload.dst} if hasattr(v.payload, "src") else {}
    return d


def l4_summary(x: dict) -> str:
    if "tcp" in x:
        return f"{x['src']}:{x['tcp']['sport']} > {x['dst']}:{x['tcp']['dport']} TCP [{x['tcp']['flags']}]"
    if "udp" in x:
        return f"{x['src']}:{x['udp']['sport']} > {x['dst']}:{x['udp']['dport']} UDP"
    if "sport" in x and x.get("proto") in (6, 17):
        return f"{x['src']}:{x['sport']} > {x['dst']}:{x['dport']} {'TCP' if x['proto'] == 6 else 'UDP'}"
    if "icmp" in x and x.get("v6"):
        t = x["icmp"]
        name = {128: "echo request", 129: "echo reply", 1: "destination unreachable", 3: "time exceeded",
                4: "parameter problem"}.get(t.get("type6"), f"type {t.get('type6')}")
        if t.get("type6") == 2:
            name = f"Packet Too Big (mtu {t.get('mtu')})"
        elif t.get("type6") == 1:
            name += {0: " (no route)", 1: " (administratively prohibited)", 3: " (address unreachable)",
                     4: " (port unreachable)"}.get(t["code"], f" (code {t['code']})")
        return f"{x['src']} > {x['dst']} ICMPv6 {name}"
    if "icmp" in x:
        t = x["icmp"]
        name = {0: "echo reply", 8: "echo request", 3: "unreachable", 11: "time exceeded"}.get(t["type"], f"type {t['type']}")
        codes = {0: "net", 1: "host", 2: "protocol", 3: "port", 4: "fragmentation needed", 9: "net prohibited",
                 10: "host prohibited", 13: "administratively prohibited"}
        extra = f" ({codes.get(t['code'], 'code ' + str(t['code']))})" if t["type"] == 3 and t["code"] != 4 else ""
        if t.get("mtu"):
            extra += f" (fragmentation needed, next-hop MTU {t['mtu']})"
        return f"{x['src']} > {x['dst']} ICMP {name}{extra}"
    names = {2: "IGMP", 47: "GRE", 50: "ESP", 89: "OSPF", 132: "SCTP"}
    return f"{x['src']} > {x['dst']} " + (names[x["proto"]] if x.get("proto") in names else f"proto {x.get('proto')}")


def _tuple(x: dict) -> tuple:
    l4 = x.get("tcp") or x.get("udp") or {}
    return (x["src"], l4.get("sport"), x["dst"], l4.get("dport"))


# --------------------------------------------------------------------------- the trace

@dataclass
class Hop:
    ns: str
    where: str                 # human label of the namespace
    iface: str
    role: str                  # what the interface is
    direction: str
    header: str                # L3/L4 text of the (inner) probe
    ttl: int
    size: int                  # frame bytes
    changes: list[str] = field(default_factory=list)
    encap: str = ""


@dataclass
class TraceResult:
    probe: Probe
    src_name: str
    dst_name: str
    src_ns: str
    hops: list[Hop] = field(default_factory=list)
    replies: list[Hop] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)     # ICMP errors about the probe
    arrived: bool = False
    replied: bool = False
    verdict: str = ""
    causes: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    pcaps: list[str] = field(default_factory=list)
    captured_in: list[str] = field(default_factory=list)
    rules: dict[str, list[str]] = field(default_factory=dict)   # ns -> nft rules the probe hit
    kernel: str = ""           # what the kernel's skb:kfree_skb said about the lost probe (one line)
    kernel_drops: list[dict] = field(default_factory=list)      # every drop of the protocol meanwhile
    kernel_note: str = ""      # why drop reasons are not available, when they are not

    def to_dict(self) -> dict:
        import dataclasses
        d = dataclasses.asdict(self)
        d["probe"]["token"] = self.probe.token.decode(errors="replace")
        return d


def iface_role(inv: Inventory, ns: str, name: str) -> str:
    n = inv.namespaces.get(ns)
    l = n.links.get(name) if n else None
    if l is None:
        return "interface"
    if l.kind == "vxlan":
        return f"VXLAN device (VNI {l.vni})"
    if l.kind == "bridge":
        return "bridge"
    if l.kind == "veth" and l.peer:
        pn = inv.namespaces.get(l.peer[0])
        other = f"{pn.role} {pn.label}" if pn else l.peer[0]
        if n.role == "switch":
            return f"switch port to {other}"
        if n.role == "pod":
            return "pod interface"
        if pn and pn.role == "pod":
            return f"veth of pod {pn.label}" + (f" on {l.master}" if l.master else "")
        if pn and pn.role == "switch":
            return "uplink to the switch"
        return f"veth to {other}"
    return l.kind


def _ns_distances(inv: Inventory, start: str) -> dict[str, int]:
    adj: dict[str, set[str]] = {n: set() for n in inv.namespaces}
    for n in inv.namespaces.values():
        for l in n.links.values():
            if l.peer and l.peer[0] in adj:
                adj[n.name].add(l.peer[0])
                adj[l.peer[0]].add(n.name)
    dist = {start: 0}
    todo = [start]
    while todo:
        cur = todo.pop(0)
        for o in sorted(adj.get(cur, ())):
            if o not in dist:
                dist[o] = dist[cur] + 1
                todo.append(o)
    return dist


def _owner_of(inv: Inventory, addr: str) -> str | None:
    for n in inv.namespaces.values():
        for l in n.links.values():
            # an address that failed DAD is nobody's: the kernel neither uses nor answers for it
            if any(a.split("/")[0] == addr and "dadfailed" not in l.addr_flags.get(a, ()) for a in l.addrs):
                if n.role == "node" and l.kind == "bridge" and any(
                        any(a.split("/")[0] == addr for a in m.addrs) for o in inv.namespaces.values()
                        if o.name != n.name and o.role == "node" for m in o.links.values()):
                    continue    # an anycast gateway (the same on every node) is nobody's destination
                return n.name
    return None


def _bgp_causes(st, ns: str, dst: str) -> list[str]:
    """A BGP node's missing route, explained (netlab/features/bgp.py); nothing otherwise."""
    from ..features.bgp import missing_route_cause
    return missing_route_cause(st, ns, dst)


class Tracer:
    def __init__(self, st, inv: Inventory, src_ns: str, dst_addr: str, probe: Probe, *,
                 src_name: str, dst_name: str, wait: float = 1.0, pcap_dir: str | None = None,
                 nftrace: bool = True, dst_ns: str = "", drop_reasons: bool = True) -> None:
        self.nftrace = nftrace
        self.drop_reasons = drop_reasons
        self.drops: list = []
        self.sent_at = 0.0
        self.dst_ns = dst_ns
        self.nat_points: list[tuple[str, tuple, tuple]] = []
        self.frag_counts: dict[tuple, int] = {}
        self.rules: dict[str, list[dict]] = {}
        self.st, self.inv = st, inv
        self.src_ns, self.dst = src_ns, dst_addr
        self.probe = probe
        self.wait = wait
        self.pcap_dir = pcap_dir
        self.res = TraceResult(probe, src_name, dst_name, src_ns)

    def label(self, ns: str) -> str:
        n = self.inv.namespaces.get(ns)
        return f"{n.role} {n.label}" if n and n.role not in ("switch",) else ("underlay switch" if n else ns)

    # ---- run ---------------------------------------------------------------------
    def run(self) -> TraceResult:
        pr, res = self.probe, self.res
        r = route_get(self.src_ns, self.dst)
        if "error" in r:
            res.verdict = f"not sent: {self.label(self.src_ns)} has no route to {self.dst}"
            res.causes.append(f"no route: `ip route get {self.dst}` in {self.src_ns} says: {r['error']}")
            res.causes += _bgp_causes(self.st, self.src_ns, self.dst)
            res.evidence.append(f"routes in {self.src_ns}:\n" + _indent(_ip(self.src_ns, *(["-6"] if pr.v6 else []),
                                                                          "route", "show")))
            if pr.v6 and "unreachable" in r["error"].lower():
                res.causes.append(f"{self.label(self.src_ns)} has no IPv6 default route (nor a route to "
                                  f"{self.dst}'s subnet): the kernel refuses the packet before it leaves")
            return res
        pr.src = r.get("prefsrc") or pr.src
        nss = list(self.inv.namespaces)
        res.captured_in = nss
        caps: dict[str, Capture] = {}
        nft = NfTrace(nss, pr) if self.nftrace else None
        mon = self._drop_monitor()
        before = snapshot(nss)
        try:
            if nft:
                nft.start()
            if mon is not None:
                mon = self._start_monitor(mon)
            for ns in nss:
                pcap = os.path.join(self.pcap_dir, f"{ns}.pcap") if self.pcap_dir else None
                caps[ns] = Capture(ns, "", "ip or ip6 or arp", pcap=pcap, max_seconds=self.wait + 30)
            for c in caps.values():
                c.start(timeout=30)
            if nft:
                time.sleep(0.3)     # nft monitor has no "ready" signal
            self.sent_at = time.time()
            send_probe(self.src_ns, pr)
            if pr.sent:
                self._wait_for_answer(caps.get(self.src_ns))
            else:
                time.sleep(0.1)
        finally:
            for c in caps.values():
                try:
                    c.stop(settle=0)
                except Exception:  # noqa: BLE001
                    pass
            if nft:
                nft.stop()
            if mon is not None:
                self.drops = mon.stop()
                if mon.error:
                    res.kernel_note = f"kernel drop reasons: {mon.error}"
        self.rules = nft.verdicts() if nft else {}
        self.nft_lines = nft.lines if nft else {}
        res.rules = {ns: [f"{r['table']} {r['chain']}: {r['rule']}" + (f"  -> {r['verdict']}" if r['verdict'] and not r['rule'].endswith(r['verdict']) else "")
                          for r in rs] for ns, rs in self.rules.items()}
        after = snapshot(nss)
        if self.pcap_dir:
            res.pcaps = [c.pcap for c in caps.values() if c.pcap and c.frames]
        self.analyse(caps, before, after)
        if pr.v6:
            self._dad_causes()
        k8s = k8s_notes(self.nft_lines, self.label)     # Services / NetworkPolicy: drops first
        res.causes[:0] = [c for c in k8s if not c.startswith("note: ")]
        res.causes += [c for c in k8s if c.startswith("note: ")]
        from ..features.loadbalancer import trace_notes   # a LoadBalancer address: its speaker and why
        from ..lab.labs import plan_for_state
        try:
            lb_topo = plan_for_state(self.st)[0] if self.st is not None else None
        except Exception:  # noqa: BLE001 - a trace explains what it can
            lb_topo = None
        lb = trace_notes(self.st, lb_topo, self.dst)
        res.causes[:0] = [c for c in lb if not c.startswith("note: ")]
        res.causes += [c for c in lb if c.startswith("note: ")]
        return res

    def _drop_monitor(self):
        """A DropMonitor for this trace, or None (with a one-line note saying why not)."""
        if not self.drop_reasons:
            return None
        from . import dropmon
        why = dropmon.support()
        if why:
            self.res.kernel_note = f"kernel drop reasons unavailable: {why}"
            return None
        return dropmon.DropMonitor(self.probe.token.decode()[-8:], protocol=0x86DD if self.probe.v6 else dropmon.ETH_P_IP)

    def _start_monitor(self, mon):
        from . import dropmon
        try:
            mon.start()
            return mon
        except dropmon.DropMonError as e:
            self.res.kernel_note = f"kernel drop reasons unavailable: {e}"
            return None

    def _kernel_verdict(self, fwd: list[Obs], back: list[Obs]) -> None:
        """For a probe (or answer) that got lost: the kernel's drop right after it was last seen."""
        from . import dropmon
        res = self.res
        if not self.drop_reasons or (res.kernel_note and not self.drops):
            return      # unavailable, or reading them failed (the note says which)
        res.kernel_drops = [d.to_dict() for d in self.drops]
        if (res.arrived and res.replied) or not self.probe.sent:
            return
        seq = back if back else fwd
        last = max((o.ts for o in seq), default=0.0) or self.sent_at
        v = dropmon.correlate(self.drops, last)
        res.kernel = v.line("IPv6" if self.probe.v6 else "IPv4")
        if v.drop is not None and v.drop.reason == "NETFILTER_DROP" and seq:
            ns = max(seq, key=lambda o: o.ts).ns
            if not any(d["verdict"].split()[0] in ("drop", "reject") for d in self.rules.get(ns, []) if d["verdict"]):
                rules = netdev_drop_rules(ns)
                if rules:
                    res.causes.insert(0, f"netdev rules in {self.label(ns)} that drop (the nft trace starts after the "
                                      "netdev hooks, so it cannot show them): " + "; ".join(rules))
        for d, dd in zip(self.drops, res.kernel_drops):
            dd["probe"] = d is v.drop

    def _wait_for_answer(self, cap: Capture | None) -> None:
        """Up to ``wait`` seconds; stop early once an answer (or an ICMP error quoting the
        probe) is back in the sender's namespace, plus a little time for the stragglers."""
        pr = self.probe
        deadline = time.monotonic() + self.wait
        seen = 0
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if cap is None:
                continue
            n = min(len(cap.frames), len(cap.directions))
            for i in range(seen, n):
                if cap.directions[i] != "in":
                    continue
                fr = cap.frames[i][1]
                if pr.token in fr or (pr.proto == "tcp" and _tcp_dport(fr) == pr.sport):
                    time.sleep(0.15)
                    return
            seen = n

    # ---- analysis ----------------------------------------------------------------
    def analyse(self, caps: dict[str, Capture], before: dict, after: dict) -> None:
        pr, res, inv = self.probe, self.res, self.inv
        dist = _ns_distances(inv, self.src_ns)
        obs: list[Obs] = []
        arps: list[Obs] = []
        frag_ids: set = set()
        for ns, c in caps.items():
            for i, ((ts, fr), d, ifn) in enumerate(zip(c.frames, c.directions, c.ifaces)):
                if ifn == "lo":
                    continue
                o = Obs(ns, ifn, d, i, fr, ts=ts)
                if pr.token in fr:
                    o.info = decode_frame(fr)
                    top = o.info.get("inner") or o.info.get("ip") or {}
                    ic = top.get("icmp")
                    if ic and ic["type"] in (3, 11, 4, 5, 12):
                        o.kind = "icmp-error"
                    elif ic and ic["type"] == 0:
                        o.kind = "reply"
                        if top.get("mf"):
                            frag_ids.add((top["src"], top["id"]))
                    else:
                        o.kind = "probe"
                        if top.get("mf"):
                            frag_ids.add((top["src"], top["id"]))
                    obs.append(o)
                    continue
                info = decode_frame(fr)
                top = info.get("inner") or info.get("ip") or {}
                if "arp" in info:
                    o.kind, o.info = "arp", info
                    arps.append(o)
                elif top and (top.get("src"), top.get("id")) in frag_ids:
                    # a later fragment of the probe: counted where it was seen, not listed
                    k = (top["src"], top["id"], ns, ifn, d)
                    self.frag_counts[k] = self.frag_counts.get(k, 0) + 1
                elif top.get("tcp") and pr.proto == "tcp" and top["tcp"]["ack"] == (pr.seq + 1 + len(pr.payload())) % 2**32:
                    o.kind, o.info = "reply", info
                    obs.append(o)
                elif top.get("tcp") and pr.proto == "tcp" and top["tcp"]["ack"] == (pr.seq + 1) % 2**32:
                    o.kind, o.info = "reply", info
                    obs.append(o)
        far = max(dist.values(), default=0) + 1
        fwd = self._walk([o for o in obs if o.kind == "probe"], self.src_ns,
                         key=lambda o: (dist.get(o.ns, far), o.ns, o.order))
        replies = [o for o in obs if o.kind == "reply"]
        origin = next((o.ns for o in sorted(replies, key=lambda o: o.order) if o.direction == "out"
                       and _owner_of(inv, (o.info.get("inner") or o.info["ip"])["src"]) == o.ns), None)
        back = self._walk(replies, origin, key=lambda o: (-dist.get(o.ns, far), o.ns, o.order))
        res.hops = self._hops(fwd)
        res.replies = self._hops(back, reply=True)
        for o in sorted([o for o in obs if o.kind == "icmp-error"], key=lambda o: (-dist.get(o.ns, far), o.ns, o.order)):
            top = o.info.get("inner") or o.info["ip"]
            res.errors.append(f"{self.label(o.ns)} {o.iface} {o.direction}: {l4_summary(top)}"
                              + (f" about {l4_summary(top['quoted'])}" if top.get("quoted") else ""))
        # where did it end?
        final = fwd[-1] if fwd else None
        if final is not None:
            top = final.info.get("inner") or final.info.get("ip")
            owner = _owner_of(inv, top["dst"])
            res.arrived = any(o.ns == owner and o.direction == "in" for o in fwd
                              if (o.info.get("inner") or o.info.get("ip"))["dst"] == top["dst"])
        res.replied = bool(back) and any(o.ns == self.src_ns for o in back)
        # a DNAT the nft trace saw, whose result never showed up on the wire
        self.dnat_lost = None
        for ns, rs in self.rules.items():
            for r in rs:
                m = re.search(r"\bdnat to ([0-9.]+)(?::(\d+))?", r["rule"])
                if m and not any((o.info.get("inner") or o.info["ip"])["dst"] == m.group(1) for o in fwd):
                    res.arrived = False
                    self.dnat_lost = (ns, m.group(1), m.group(2), r)
        self._diagnose(fwd, back, arps, before, after)
        self._kernel_verdict(fwd, back)

    def _walk(self, items: list[Obs], start: str | None, key) -> list[Obs]:
        """Order copies along the path: in a namespace, kernel order; leave it where a copy
        goes out of a veth whose peer saw it come in, and continue there. A packet that
        returns to a namespace (a hairpin) is followed too. What the walk cannot place is
        appended in distance order."""
        by_ns: dict[str, list[Obs]] = {}
        for o in sorted(items, key=lambda o: o.order):
            by_ns.setdefault(o.ns, []).append(o)
        used: set[int] = set()
        seq: list[Obs] = []
        cur = start
        while cur in by_ns:
            nxt = None
            for o in by_ns[cur]:
                if id(o) in used:
                    continue
                used.add(id(o))
                seq.append(o)
                link = self.inv.link(o.ns, o.iface)
                if o.direction == "out" and link is not None and link.peer:
                    pns, pif = link.peer
                    cand = next((x for x in by_ns.get(pns, []) if id(x) not in used and x.iface == pif
                                 and x.direction == "in"), None)
                    if cand is not None:
                        nxt = pns
                        break
            if nxt is None:
                break
            cur = nxt
        rest = sorted([o for o in items if id(o) not in used], key=key)
        return seq + rest

    def _hops(self, seq: list[Obs], reply: bool = False) -> list[Hop]:
        hops: list[Hop] = []
        prev = None
        for o in seq:
            d = o.info
            top = d.get("inner") or d["ip"]
            h = Hop(o.ns, self.label(o.ns), o.iface, iface_role(self.inv, o.ns, o.iface), o.direction,
                    l4_summary(top), top["ttl"], d["len"])
            if "vxlan" in d:
                ip = d["ip"]
                h.encap = (f"VXLAN VNI {d['vxlan']['vni']}: outer {ip['src']}:{ip['udp']['sport']} > "
                           f"{ip['dst']}:{ip['udp']['dport']} ttl {ip['ttl']}{' DF' if ip['df'] else ''}")
            if prev is not None:
                pd = prev.info
                ptop = pd.get("inner") or pd["ip"]
                a, b = _tuple(ptop), _tuple(top)
                if (a[2:] != b[2:] or a[:2] != b[:2]) and not reply:
                    self.nat_points.append((o.ns, a, b))
                dn, sn = ("NAT undone: destination", "NAT undone: source") if reply else ("DNAT: destination", "SNAT: source")
                if a[2:] != b[2:]:
                    h.changes.append(f"{dn} {a[2]}{':' + str(a[3]) if a[3] else ''} -> "
                                     f"{b[2]}{':' + str(b[3]) if b[3] else ''}")
                if a[:2] != b[:2]:
                    h.changes.append(f"{sn} {a[0]}{':' + str(a[1]) if a[1] else ''} -> "
                                     f"{b[0]}{':' + str(b[1]) if b[1] else ''}")
                if top["ttl"] != ptop["ttl"]:
                    h.changes.append(f"TTL {ptop['ttl']} -> {top['ttl']} (routed)")
                if "vxlan" in d and "vxlan" not in pd:
                    h.changes.append(f"encapsulated: VXLAN VNI {d['vxlan']['vni']} to VTEP {d['ip']['dst']} (+{d['len'] - pd['len']} bytes)")
                if "vxlan" in pd and "vxlan" not in d:
                    h.changes.append(f"decapsulated (VNI {pd['vxlan']['vni']})")
            was_frag = prev is not None and bool(((prev.info.get("inner") or prev.info["ip"]) or {}).get("mf"))
            if top.get("mf") and not was_frag:
                n = 1 + self.frag_counts.get((top["src"], top["id"], o.ns, o.iface, o.direction), 0)
                h.changes.append(f"fragmented: this is the first of {n} fragments seen here (DF not set)")
            hops.append(h)
            prev = o
        return hops

    # ---- diagnosis -----------------------------------------------------------------
    def _diagnose(self, fwd: list[Obs], back: list[Obs], arps: list[Obs], before: dict, after: dict) -> None:
        pr, res, inv = self.probe, self.res, self.inv
        deltas = {ns: {"snmp": _delta(before[ns]["snmp"], after[ns]["snmp"]),
                       "links": {ifn: _delta(before[ns]["links"].get(ifn, {}), v)
                                 for ifn, v in after[ns]["links"].items()}}
                  for ns in after if ns in before}
        if not pr.sent:
            res.verdict = f"not sent: {pr.send_error}"
            if "EMSGSIZE" in pr.send_error:
                r = route_get(self.src_ns, self.dst)
                l = inv.link(self.src_ns, r.get("dev", ""))
                res.causes.append(f"MTU: the probe is {pr.size} bytes with DF, the route to {self.dst} "
                                  f"leaves {r.get('dev')} (mtu {l.mtu if l else '?'}"
                                  + (f", path mtu {r['mtu']}" if r.get("mtu") else "") + ")")
            return
        if not fwd:
            res.verdict = "the probe was not seen anywhere (not even leaving the sender)"
            return
        self._conntrack_notes(fwd)
        last = fwd[-1]
        top = last.info.get("inner") or last.info["ip"]
        if self.dnat_lost is not None:
            ns, a, port, rule = self.dnat_lost
            res.verdict = f"lost in {self.label(ns)} right after a DNAT to {a}" + (f":{port}" if port else "")
            res.causes.append(f"{self.label(ns)} rewrote the destination to {a}" + (f":{port}" if port else "")
                              + f" ({rule['table']} chain {rule['chain']}: {rule['rule']}) and no copy with that "
                              "destination was seen anywhere")
            came_in = next((o for o in fwd if o.ns == ns and o.direction == "in"), None)
            pl = inv.link(ns, came_in.iface) if came_in else None
            if a == pr.src and pl is not None and pl.master and pl.hairpin is False:
                res.causes.append(f"hairpin: {a} is the sender itself; the bridge {pl.master} must send the packet "
                                  f"back out of the port it came in on ({pl.name}), and hairpin mode is off on "
                                  f"{pl.name} (`bridge link show dev {pl.name}`), so the bridge drops it")
            else:
                r = route_get(ns, a)
                res.causes.append(f"route to {a} in {self.label(ns)}: " + (r.get("error") or f"dev {r.get('dev')}"
                                  + (f" via {r['gateway']}" if r.get("gateway") else "")))
            return
        if res.arrived:
            where = self.label(_owner_of(inv, top["dst"]) or last.ns)
            owner = _owner_of(inv, top["dst"]) or last.ns
            if self.dst_ns and owner != self.dst_ns and self.nat_points:
                ns0, a, b = self.nat_points[0]
                rule = next((r for r in self.rules.get(ns0, []) if "dnat" in r["rule"]), None)
                res.causes.append(f"note: addressed to {res.dst_name} ({a[2]}{':' + str(a[3]) if a[3] else ''}) but "
                                  f"delivered to {where} ({b[2]}{':' + str(b[3]) if b[3] else ''}): {self.label(ns0)} "
                                  "rewrote the destination" + (f" ({rule['table']} chain {rule['chain']}: {rule['rule']})"
                                                               if rule else ""))
            if res.replied:
                rtop = back[-1].info.get("inner") or back[-1].info["ip"]
                res.verdict = f"delivered to {where} and answered ({l4_summary(rtop)})"
                return
            err_home = [e for e in res.errors if e.startswith(self.label(self.src_ns) + " ")]
            res.verdict = f"delivered to {where}; " + ("the answer was lost on the way back" if back else
                                                      ("the answer was an ICMP error" if err_home else "no answer came back"))
            if back:
                self._lost_after(back[-1], back, arps, deltas, reply=True)
            else:
                self._no_answer(last, top, deltas)
            return
        res.verdict = f"lost after {self.label(last.ns)} {last.iface} ({'received' if last.direction == 'in' else 'sent'})"
        self._lost_after(last, fwd, arps, deltas, reply=False)

    def _conntrack_notes(self, fwd: list[Obs]) -> None:
        """A NAT rewrite with no NAT rule hit in the nft trace: an existing conntrack
        entry decided it. Show that entry; flag it when its target is gone."""
        pr, res = self.probe, self.res
        seen = set()
        for ns, a, b in self.nat_points:
            if (ns, a) in seen or ns not in self.inv.namespaces:
                continue
            seen.add((ns, a))
            if any(re.search(r"\b[ds]nat to|masquerade", r["rule"]) for r in self.rules.get(ns, [])):
                continue    # a rule made this NAT now: a new connection
            argv = ["conntrack", "-L", "-p", pr.proto if pr.proto != "icmp" else "icmp",
                    "--orig-src", a[0], "--orig-dst", a[2]]
            if a[1]:
                argv += ["--orig-port-src", str(a[1]), "--orig-port-dst", str(a[3])]
            p = run_ns(ns, argv)
            entries = [ln.strip() for ln in p.stdout.splitlines() if ln.strip()]
            if not entries:
                continue
            res.evidence.append(f"conntrack in {self.label(ns)}: {entries[0]}")
            if self.nftrace:
                target = b[2] if a[2:] != b[2:] else b[0]
                if _owner_of(self.inv, target) is None:
                    res.causes.insert(0, f"stale conntrack entry: in {self.label(ns)} this flow's NAT was decided "
                                      f"when it started and still points at {target}, an address no namespace of the "
                                      "lab has any more (the pod behind it was replaced); no NAT rule was consulted "
                                      f"for this packet. Delete it: conntrack -D -p {pr.proto} --orig-src {a[0]} "
                                      f"--orig-dst {a[2]}" + (f" --orig-port-src {a[1]}" if a[1] else ""))

    def _no_answer(self, last: Obs, top: dict, deltas: dict) -> None:
        res, pr = self.res, self.probe
        ns = _owner_of(self.inv, top["dst"]) or last.ns
        r = route_get(ns, top["src"], src=top["dst"])
        if "error" in r:
            res.causes.append(f"no route back: {self.label(ns)} has no route to {top['src']} "
                              f"(`ip route get {top['src']}`: {r['error']})")
            if top["src"] != pr.src:
                pass
            else:
                res.causes.append(f"the probe arrived with the sender's own address {pr.src} as source: "
                                  "nothing rewrote it (no masquerade/SNAT on the way out of the sender's node)")
            return
        sn = deltas.get(ns, {}).get("snmp", {})
        if pr.proto == "udp" and sn.get("Udp:NoPorts"):
            res.causes.append(f"nothing listens on UDP port {top['udp']['dport']} in {self.label(ns)} "
                              "(Udp:NoPorts +1; an ICMP port unreachable is the answer)")
        for d in self.rules.get(ns, []):
            if d["verdict"].split()[0] in ("drop", "reject"):
                res.causes.append(f"rule: {d['table']} chain {d['chain']}: {d['rule']} (verdict {d['verdict']})")
        if res.errors:
            res.causes.append("an ICMP error came back instead: " + res.errors[0])
        if not res.causes:
            res.causes.append(f"{self.label(ns)} got it and a route back exists (via {r.get('gateway') or r.get('dev')}); "
                              "no answer was sent: no listener, or a rule in the destination")
        res.evidence += self._counter_lines(ns, deltas)

    def _lost_after(self, last: Obs, seq: list[Obs], arps: list[Obs], deltas: dict, reply: bool) -> None:
        res, inv = self.res, self.inv
        top = last.info.get("inner") or last.info["ip"]
        ns, ifn = last.ns, last.iface
        link = inv.link(ns, ifn)
        frame_len = last.info["len"]
        causes = res.causes
        if last.direction == "out" and link is not None and link.kind == "veth" and link.peer:
            pns, pif = link.peer
            peer = inv.link(pns, pif)
            ip_len = frame_len - 14
            causes.append(f"it left {self.label(ns)} on {ifn} and never arrived at {self.label(pns)} {pif}")
            if peer and ip_len > peer.mtu:
                causes.append(f"MTU: the frame carries a {ip_len}-byte packet; {pif} in {self.label(pns)} has MTU "
                              f"{peer.mtu} (sender side {ifn}: {link.mtu}). A veth drops a frame bigger than the "
                              "receiver's MTU without any ICMP: a black hole")
            ld = deltas.get(pns, {}).get("links", {}).get(pif, {})
            sd = deltas.get(ns, {}).get("links", {}).get(ifn, {})
            if ld.get("rx_dropped") or sd.get("tx_dropped"):
                causes.append(f"counters: {pif} rx_dropped +{ld.get('rx_dropped', 0)}, {ifn} tx_dropped +{sd.get('tx_dropped', 0)}")
            if peer and not peer.up:
                causes.append(f"{pif} in {self.label(pns)} is down")
            return
        if last.direction == "out" and link is not None and link.kind == "vxlan":
            causes.append(f"it entered the VXLAN device {ifn} (VNI {link.vni}) and no encapsulated copy left {self.label(ns)}")
            dmac = last.info["l2"]["dst"]
            fdb = subprocess.run(["ip", "netns", "exec", ns, "bridge", "fdb", "show", "dev", ifn],
                                 capture_output=True, text=True).stdout
            ent = [ln for ln in fdb.splitlines() if ln.startswith(dmac) and " dst " in ln]
            if not ent:
                causes.append(f"no VXLAN FDB entry for the inner destination MAC {dmac} on {ifn} (bridge fdb show dev {ifn})")
            else:
                vtep = re.search(r" dst (\S+)", ent[0]).group(1)
                rr = route_get(ns, vtep)
                causes.append(f"FDB: {dmac} -> VTEP {vtep}; route to it: " + (rr.get("error") or f"dev {rr.get('dev')}"))
            return
        n = inv.namespaces.get(ns)
        if last.direction == "out" and link is not None and link.kind == "bridge":
            # handed to the bridge for delivery: which port should have sent it?
            dmac = last.info["l2"]["dst"]
            port = _fdb_port(ns, ifn, dmac)
            came_in = next((o.iface for o in seq if o.ns == ns and o.direction == "in"
                            and (inv.link(ns, o.iface) or link).master == ifn), None)
            pl = inv.link(ns, port) if port else None
            if port and port == came_in and pl is not None and pl.hairpin is False:
                causes.append(f"hairpin: after the DNAT the packet is for {top['dst']}, the sender itself; the bridge "
                              f"{ifn} must send it back out of the port it came in on ({port}), and hairpin mode is "
                              f"off on {port} (`bridge link show dev {port}`), so the bridge drops it")
                return
            if port is None:
                causes.append(f"the bridge {ifn} does not know the destination MAC {dmac} (bridge fdb show br {ifn})")
            else:
                causes.append(f"the bridge {ifn} should have sent it out of {port} (MAC {dmac}); nothing left there")
                if pl is not None and frame_len - 14 > pl.mtu:
                    causes.append(f"MTU: {frame_len - 14}-byte packet, {port} has MTU {pl.mtu}")
            return
        # received here (or sent on another device) and not forwarded on
        in_if = ifn
        if link is not None and link.master and link.master in (n.links if n else {}):
            br = link.master
            # a frame in on a bridge port: forwarded to another port (L2) or up to the host (routed)
            if n and n.role == "switch" or not any(o.ns == ns and o.iface == br for o in seq):
                dmac = last.info["l2"]["dst"]
                out_port = _fdb_port(ns, br, dmac)
                if out_port == ifn and link.hairpin is False:
                    causes.append(f"hairpin: the bridge {br} would send it back out of the port it came in on "
                                  f"({ifn}, towards the sender itself), and hairpin mode is off on {ifn}")
                    causes.append(f"`bridge link show dev {ifn}` shows hairpin off; the DNAT turned a packet for "
                                  f"a host port into one for the sender's own address")
                    return
                if n and n.role == "switch":
                    causes.append(f"the switch bridge {br} did not forward it to any port"
                                  + (f" (MAC {dmac} is learned on {out_port})" if out_port else f" (MAC {dmac} unknown)"))
                    return
            in_if = br if any(o.ns == ns and o.iface == br for o in seq) else ifn
        cur_dst = top["dst"]
        owner = _owner_of(inv, cur_dst)
        if owner == ns:
            causes.append(f"it reached {self.label(ns)}, which owns {cur_dst}, and was not delivered to a socket")
            res.evidence += self._counter_lines(ns, deltas)
            return
        r = route_get(ns, cur_dst, src=top["src"], iif=in_if)
        fwd_key = "net/ipv6/conf/all/forwarding" if top.get("v6") else "net/ipv4/ip_forward"
        fwd_name = "IPv6 forwarding" if top.get("v6") else "ip_forward"
        fwd_on = _sysctl(ns, fwd_key)
        if "error" in r:
            if fwd_on == "0":
                causes.append(f"{fwd_name} is off in {self.label(ns)} ({fwd_key.replace('/', '.')} = 0): it is not a router, "
                              f"packets for other hosts are dropped (`ip route get {cur_dst} from {top['src']} iif {in_if}`: {r['error']})")
            else:
                causes.append(f"no route: {self.label(ns)} cannot forward to {cur_dst} "
                              f"(`ip route get {cur_dst} from {top['src']} iif {in_if}`: {r['error']})")
                causes += _bgp_causes(self.st, ns, cur_dst)
                causes.append(f"routes in {ns}:\n" + _indent(_ip(ns, "route", "show")))
            res.evidence += self._counter_lines(ns, deltas)
            return
        out_dev = r.get("dev")
        nh = r.get("gateway") or cur_dst
        out_link = inv.link(ns, out_dev)
        if fwd_on == "0":
            causes.append(f"{fwd_name} is off in {self.label(ns)} ({fwd_key.replace('/', '.')} = 0): the route exists "
                          f"(via {nh} dev {out_dev}) but the namespace does not forward")
            res.evidence += self._counter_lines(ns, deltas)
            return
        if out_link is not None and (frame_len - 14 if "vxlan" not in last.info else top["len"]) > out_link.mtu:
            size = top["len"]
            causes.append(f"MTU: a {size}-byte packet{' with DF' if top.get('df') else ''} must leave on {out_dev} "
                          f"(mtu {out_link.mtu})" + (": an ICMP fragmentation-needed goes back" if top.get("df")
                                                     and not top.get("v6") else ""))
            if top.get("v6"):
                self._ptb_causes(ns, top, out_link.mtu)
        nb = _neigh(ns, nh, out_dev)
        asked = [a for a in arps if a.ns == ns and a.info["arp"]["op"] == "request" and a.info["arp"]["pdst"] == nh]
        answered = [a for a in arps if a.ns == ns and a.info["arp"]["op"] == "reply" and a.info["arp"]["psrc"] == nh]
        if nb in ("FAILED", "INCOMPLETE") or (asked and not answered):
            if top.get("v6"):
                causes.append(f"no NA answer: {self.label(ns)} sent {len(asked)} neighbour solicitation(s) for {nh} "
                              f"on {out_dev} in the capture, no neighbour advertisement came back (neighbour state "
                              f"{nb or 'none'})")
            else:
                causes.append(f"no ARP answer: {self.label(ns)} asked who has {nh} on {out_dev} "
                              f"{len(asked)} time(s) in the capture, nobody answered (neighbour state {nb or 'none'})")
            if _owner_of(inv, nh) is None:
                causes.append(f"no namespace of the lab has the address {nh} any more (a stale route or endpoint?)")
        sn = deltas.get(ns, {}).get("snmp", {})
        for d in self.rules.get(ns, []):
            if d["verdict"].split()[0] in ("drop", "reject"):
                causes.insert(0, f"rule: {d['table']} chain {d['chain']}: {d['rule']} (verdict {d['verdict']})")
        pol = chain_policies(ns)
        if not causes and pol:
            causes.append("base chains with policy drop: " + ", ".join(f"{p['table']} {p['chain']} ({p['hook']})" for p in pol))
        if not causes:
            causes.append(f"{self.label(ns)} routes it via {nh} dev {out_dev}, but no copy left on {out_dev}")
        if sn:
            res.evidence += self._counter_lines(ns, deltas)

    def _ptb_causes(self, ns: str, top: dict, mtu: int) -> None:
        """IPv6 routers never fragment: ``ns`` must have sent an ICMPv6 Packet Too Big.
        Seen on the way back, or not; and the rules in ``ns`` that drop it."""
        res = self.res
        ptb = [e for e in res.errors if "Packet Too Big" in e]
        if ptb:
            res.causes.append(f"ICMPv6 Packet Too Big (mtu {mtu}) went back: {ptb[0]}")
            return
        res.causes.append(f"an IPv6 router never fragments: {self.label(ns)} must answer with an ICMPv6 Packet Too "
                          f"Big (mtu {mtu}), and none was seen anywhere: the sender never learns the path MTU "
                          "(a black hole)")
        rules = [ln.strip() for ln in run_ns(ns, ["nft", "list", "ruleset"]).stdout.splitlines()
                 if ("packet-too-big" in ln or "icmpv6" in ln) and ("drop" in ln or "reject" in ln)]
        if rules:
            res.causes.insert(0, f"ICMPv6 Packet Too Big is filtered in {self.label(ns)}: " + "; ".join(rules))

    def _dad_causes(self) -> None:
        """Duplicate address detection: an IPv6 address the probe is for (or comes
        from) that is still tentative, or failed DAD, answers no neighbour
        solicitation; find who else holds it."""
        pr, res, inv = self.probe, self.res, self.inv
        for addr, role in ((pr.dst, "destination"), (pr.src, "source")):
            for n in inv.namespaces.values():
                for l in n.links.values():
                    for a, fl in l.addr_flags.items():
                        if a.split("/")[0] != addr:
                            continue
                        others = [self.label(o.name) for o in inv.namespaces.values() if o.name != n.name
                                  for m in o.links.values() if any(x.split("/")[0] == addr for x in m.addrs)]
                        if "dadfailed" in fl:
                            res.causes.insert(0, f"DAD failed: the {role} address {a} on {l.name} in {self.label(n.name)} "
                                              "is 'tentative dadfailed': another host answered its duplicate address "
                                              "detection, so the kernel neither uses nor answers for it"
                                              + (f"; {', '.join(sorted(set(others)))} holds it too and answers the "
                                                 "neighbour solicitations instead" if others else ""))
                        else:
                            res.causes.insert(0, f"DAD not finished: the {role} address {a} on {l.name} in "
                                              f"{self.label(n.name)} is still tentative: until duplicate address "
                                              "detection is over (about 1-2 s) the kernel answers no neighbour "
                                              "solicitation for it")

    def _counter_lines(self, ns: str, deltas: dict) -> list[str]:
        sn = {k: v for k, v in deltas.get(ns, {}).get("snmp", {}).items() if k in SNMP_KEYS}
        out = []
        if sn:
            out.append(f"{self.label(ns)} counters during the probe: " + ", ".join(f"{k} +{v}" for k, v in sorted(sn.items())))
        for ifn, d in deltas.get(ns, {}).get("links", {}).items():
            dd = {k: v for k, v in d.items() if "drop" in k or "err" in k}
            if dd:
                out.append(f"{self.label(ns)} {ifn}: " + ", ".join(f"{k} +{v}" for k, v in dd.items()))
        return out


def _tcp_dport(frame: bytes) -> int | None:
    """Destination port of a plain Ethernet/IPv4/TCP (or IPv6/TCP) frame (no decoding library)."""
    if len(frame) >= 58 and frame[12:14] == b"\x86\xdd" and frame[20] == 6:
        return struct.unpack("!H", frame[56:58])[0]
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return None
    off = 14 + (frame[14] & 0x0F) * 4
    if len(frame) < off + 4:
        return None
    return struct.unpack("!H", frame[off + 2:off + 4])[0]


def _fdb_port(ns: str, br: str, mac: str) -> str | None:
    p = subprocess.run(["ip", "netns", "exec", ns, "bridge", "fdb", "show", "br", br], capture_output=True, text=True)
    for ln in p.stdout.splitlines():
        parts = ln.split()
        if parts and parts[0].lower() == mac.lower() and "dev" in parts:
            return parts[parts.index("dev") + 1]
    return None


def _neigh(ns: str, addr: str, dev: str | None) -> str | None:
    argv = ["ip", "-n", ns, "-j", "neigh", "show", addr] + (["dev", dev] if dev else [])
    p = subprocess.run(argv, capture_output=True, text=True)
    try:
        e = json.loads(p.stdout or "[]")
    except ValueError:
        return None
    return e[0].get("state", [None])[0] if e else None


def _sysctl(ns: str, key: str) -> str:
    p = run_ns(ns, ["cat", f"/proc/sys/{key}"])
    return p.stdout.strip()


def _ip(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True).stdout.rstrip()


def _indent(text: str, pad: str = "    ") -> str:
    return "\n".join(pad + ln for ln in text.splitlines())


# --------------------------------------------------------------------------- entry

def resolve(st, name: str, family: int | None = None) -> tuple[str, str | None, str]:
    """A lab endpoint name (pod, node, ext, dns) or an address -> (netns, address, label)."""
    from ..lab.labs import plan_for_state, target
    from ..base.state import attach_addresses, attach_addresses_all
    topo, plan = plan_for_state(st)
    if plan is None:
        raise TraceError("cannot load the lab's topology")
    if name in plan.endpoints:
        tg = target(topo, plan, attach_addresses(st), name, attach_addresses_all(st))
        if family:
            if not tg.address_of(family):
                raise TraceError(f"{name} has no IPv{family} address")
            return tg.ns, tg.address_of(family), name
        return tg.ns, tg.address, name
    try:
        a = ipaddress.ip_address(name)
    except ValueError:
        raise TraceError(f"unknown endpoint {name!r}: a pod, node, 'ext', 'dns' or an IPv4 or IPv6 address "
                         f"(have: {', '.join(plan.endpoints)})") from None
    if family and a.version != family:
        raise TraceError(f"{name} is not an IPv{family} address")
    return "", str(a), name


def trace(st, src: str, dst: str, *, proto: str = "icmp", size: int | None = None, df: bool = False,
          wait: float = 1.0, pcap_dir: str | None = None, nftrace: bool = True,
          sport: int | None = None, drop_reasons: bool = True, family: int | None = None) -> TraceResult:
    p, port = parse_proto(proto)
    dst_ns, dst_addr, dst_label = resolve(st, dst, family)
    if not dst_addr:
        raise TraceError(f"{dst} has no address")
    fam = family or (6 if ":" in dst_addr else 4)
    src_ns, src_addr, src_label = resolve(st, src)
    if src_addr and (":" in src_addr) != (fam == 6):      # the source's address of the probe's family
        src_ns, src_addr, src_label = resolve(st, src, fam)
    if not src_ns:
        raise TraceError("FROM must be a pod, node, 'ext' or 'dns' of the lab (the probe is sent from its namespace)")
    inv = inventory(st)
    hdr = {"icmp": 8, "udp": 8, "tcp": 20}[p]
    tok = b"NLTRACE-" + os.urandom(4).hex().encode()
    min_size = (40 if fam == 6 else 20) + hdr + len(tok)
    if size is not None and size < min_size:
        raise TraceError(f"--size must be at least {min_size} (IP + {p.upper()} headers + the {len(tok)}-byte trace token)")
    pr = Probe(p, dst_addr, port, size or max(104 if fam == 6 else 84, min_size), df, tok, src=src_addr or "",
               sport=sport or random.randint(33000, 60999), icmp_id=random.randint(1, 65535),
               seq=random.randint(1, 2**32 - 1))
    t = Tracer(st, inv, src_ns, dst_addr, pr, src_name=src_label, dst_name=dst_label, wait=wait, pcap_dir=pcap_dir,
               dst_ns=dst_ns,
               nftrace=nftrace, drop_reasons=drop_reasons)
    res = t.run()
    return res


def format_result(r: TraceResult) -> str:
    pr = r.probe
    out = [f"trace {r.src_name} ({pr.src}) -> {r.dst_name} ({pr.dst}): {pr.describe()}"
           + (f", source port {pr.sport}" if pr.proto != "icmp" else f", id {pr.icmp_id}"),
           f"captured in {len(r.captured_in)} namespaces at once; probe marked with token {pr.token.decode()}"]
    if r.kernel_note:
        out.append(r.kernel_note)
    out.append("")
    if r.hops:
        out.append("forward path:")
        for i, h in enumerate(r.hops, 1):
            out.append(f"  {i:>2}. {h.where:<18} {h.iface:<16} {h.direction:<3} {h.role}")
            out.append(f"      {h.header}  ttl {h.ttl}  {h.size} bytes")
            if h.encap:
                out.append(f"      {h.encap}")
            for c in h.changes:
                out.append(f"      * {c}")
    if r.replies:
        out.append("answer:")
        for i, h in enumerate(r.replies, 1):
            out.append(f"  {i:>2}. {h.where:<18} {h.iface:<16} {h.direction:<3} {h.header}  ttl {h.ttl}"
                       + (f"  [{h.encap}]" if h.encap else "") + ("  (" + "; ".join(h.changes) + ")" if h.changes else ""))
    if r.rules:
        out.append("nftables rules the probe and its answer went through (nft trace):")
        for ns, lines in r.rules.items():
            for ln in lines:
                out.append(f"  {ns}: {ln}")
    if r.errors:
        out.append("ICMP errors about the probe (as they travelled back):")
        out += [f"  {e}" for e in r.errors]
    out.append("")
    out.append(f"verdict: {r.verdict}")
    if r.kernel:
        out.append("  kernel: " + r.kernel)
    for c in r.causes:
        if c.startswith("note: "):
            out.append("  note:  " + c[6:])
        else:
            out.append("  cause: " + c.replace("\n", "\n    "))
    for e in r.evidence:
        out.append("  seen:  " + e)
    if r.pcaps:
        out.append(f"pcaps: {os.path.dirname(r.pcaps[0])}/ ({len(r.pcaps)} files)")
    return "\n".join(out)


# --------------------------------------------------------------------------- Services and NetworkPolicy

_K8S_RULE = re.compile(r'trace id \S+ (\S+) (\S+) (\S+) rule (.*?)(?: comment "([^"]*)")? \(verdict ([^)]+)\)$')


def k8s_notes(lines: dict[str, list[str]], label) -> list[str]:
    """What our Services and NetworkPolicy tables (netlab/features/k8s.py) did to the probe,
    from the nft trace: the Service DNAT (VIP -> endpoint), the masquerade, a
    reject for a Service without endpoints, and the policy rule that allowed or
    dropped it (rules carry their meaning in their comments). A drop or reject
    is a cause; the rest are notes (``note: `` prefix)."""
    from ..features.policy import TABLE as POLICY_TABLE
    from ..features.services import TABLE as SERVICES_TABLE
    out: list[str] = []
    for ns, lns in lines.items():
        for ln in lns:
            m = _K8S_RULE.match(ln)
            if not m:
                continue
            fam, table, chain, rule, comment, verdict = m.groups()
            where = label(ns)
            if table == SERVICES_TABLE:
                if " dnat to " in rule:
                    note = f"Service DNAT in {where}: {comment or rule} (chain {chain})"
                elif chain == "masquerading" and " masquerade" in rule:
                    note = f"masquerade in {where}: {comment or rule} (the source becomes {where}'s address)"
                elif "mark-for-masquerade" in rule and comment:
                    note = f"{comment} (marked for masquerade in {where})"
                elif chain in ("reject-chain", "cluster-ips-check", "no-local-endpoints") and verdict == "drop":
                    note = f"Service rule in {where}: {comment or rule} -> {'rejected' if 'reject' in rule else 'dropped'}"
                    if note not in out:
                        out.append(note)
                    continue
                else:
                    continue
            elif table == POLICY_TABLE and comment:
                if verdict == "drop":
                    note = f"NetworkPolicy in {where}: dropped by {chain}: {comment!r}"
                    if note not in out:
                        out.append(note)
                    continue
                note = f"NetworkPolicy in {where}: allowed by {chain}: {comment!r}"
            else:
                continue
            if "note: " + note not in out:
                out.append("note: " + note)
    return out
