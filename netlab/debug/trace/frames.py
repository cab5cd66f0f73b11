"""Frames as plain data: decoding a captured Ethernet frame for the trace.

Owns ``decode_frame`` (outer and inner headers: ARP and IPv6 neighbour
discovery in one shape, IPv4/IPv6 with ICMP, ICMPv6, TCP or UDP, the packet an
ICMP error quotes, VXLAN with its inner frame), ``l4_summary`` (one line of
text for those headers), ``flow_tuple`` and ``tcp_dport`` (a frame's TCP
destination port without a decoding library, for the capture's early stop).
ICMPv6 types are given in ICMP's terms (echo 128/129 -> 8/0, unreachable 1 ->
3, Packet Too Big 2 -> 3 code 4 with its mtu, time exceeded 3 -> 11) so that
the correlation and the explanation speak one language for both families.
Pure functions: scapy is the only thing used.
"""
from __future__ import annotations

import struct
from typing import Any

VXLAN_DEFAULT_PORTS = (4789, 8472)

# ICMPv6 type -> (ICMP type, forced ICMP code or None to keep the ICMPv6 code)
V6_TYPES = {128: (8, None), 129: (0, None), 1: (3, None), 2: (3, 4), 3: (11, None), 4: (12, None)}


def _quoted(err_ip) -> dict:
    """The packet an ICMP error quotes (addresses, protocol and ports)."""
    from scapy.layers.inet import TCPerror, UDPerror
    from scapy.layers.inet6 import IPerror6
    q = {"src": err_ip.src, "dst": err_ip.dst, "proto": err_ip.nh if isinstance(err_ip, IPerror6) else err_ip.proto}
    for L in (UDPerror, TCPerror):
        if err_ip.haslayer(L):
            q.update(sport=err_ip[L].sport, dport=err_ip[L].dport)
    return q


def _l4(x: dict, l4) -> None:
    from scapy.layers.inet import TCP, UDP
    if isinstance(l4, TCP):
        x["tcp"] = {"sport": l4.sport, "dport": l4.dport, "flags": str(l4.flags), "seq": l4.seq, "ack": l4.ack}
    elif isinstance(l4, UDP):
        x["udp"] = {"sport": l4.sport, "dport": l4.dport}


def _l3_v6(ip) -> dict:
    from scapy.layers.inet6 import IPerror6, IPv6ExtHdrFragment, _ICMPv6
    frag = ip.getlayer(IPv6ExtHdrFragment)
    x = {"src": ip.src, "dst": ip.dst, "ttl": ip.hlim, "id": frag.id if frag is not None else 0,
         "len": ip.plen + 40, "df": True, "mf": bool(frag is not None and frag.m),
         "frag": frag.offset if frag is not None else 0, "proto": ip.nh, "v6": True}
    ic = ip.payload
    while isinstance(ic, IPv6ExtHdrFragment):
        ic = ic.payload
    if isinstance(ic, _ICMPv6) and ic.type in V6_TYPES:
        t, code = V6_TYPES[ic.type]
        x["proto"] = 58
        x["icmp"] = {"type": t, "code": ic.code if code is None else code, "id": getattr(ic, "id", 0),
                     "seq": getattr(ic, "seq", 0), "type6": ic.type}
        if ic.type == 2:
            x["icmp"]["mtu"] = ic.mtu
        q = ic.getlayer(IPerror6)
        if q is not None:
            x["quoted"] = _quoted(q)
    else:
        _l4(x, ic)
    return x


def _l3_v4(ip) -> dict:
    from scapy.layers.inet import ICMP, IPerror
    x = {"src": ip.src, "dst": ip.dst, "ttl": ip.ttl, "id": ip.id, "len": ip.len, "df": bool(ip.flags.DF),
         "mf": bool(ip.flags.MF), "frag": ip.frag, "proto": ip.proto}
    if isinstance(ip.payload, ICMP):
        ic = ip.payload
        x["icmp"] = {"type": ic.type, "code": ic.code, "id": ic.id, "seq": ic.seq}
        if ic.type == 3 and ic.code == 4:
            x["icmp"]["mtu"] = ic.nexthopmtu
        q = ic.getlayer(IPerror)
        if q is not None:
            x["quoted"] = _quoted(q)
    else:
        _l4(x, ip.payload)
    return x


def _l3(ip) -> dict:
    from scapy.layers.inet6 import IPv6
    return _l3_v6(ip) if isinstance(ip, IPv6) else _l3_v4(ip)


def _neighbour_discovery(e, p) -> dict | None:
    """IPv6 neighbour solicitation/advertisement as IPv6's ARP, in ARP's shape (or None)."""
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, IPv6
    if not isinstance(p, IPv6) or p.haslayer(UDP) or not (p.haslayer(ICMPv6ND_NS) or p.haslayer(ICMPv6ND_NA)):
        return None
    ns_ = p.getlayer(ICMPv6ND_NS)
    na = p.getlayer(ICMPv6ND_NA)
    return ({"op": "request", "psrc": p.src, "pdst": ns_.tgt, "hwsrc": e.src, "nd": True} if ns_ is not None
            else {"op": "reply", "psrc": na.tgt, "pdst": p.dst, "hwsrc": e.src, "nd": True})


def decode_frame(frame: bytes, vxlan_ports=VXLAN_DEFAULT_PORTS) -> dict:
    """Outer and inner headers of a frame, as plain data."""
    from scapy.layers.l2 import ARP, Ether
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
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
    nd = _neighbour_discovery(e, p)
    if nd is not None:
        d["arp"] = nd
        return d
    d["ip"] = _l3(p)
    if p.haslayer(VXLAN) and isinstance(p.payload, UDP):
        v = p[VXLAN]
        d["vxlan"] = {"vni": v.vni}
        inner = v.getlayer(IP)
        if inner is None:
            inner = v.getlayer(IPv6)
        if inner is not None:
            d["inner"] = _l3(inner)
            d["inner_l2"] = {"src": v.payload.src, "dst": v.payload.dst} if hasattr(v.payload, "src") else {}
    return d


def _icmpv6_summary(x: dict) -> str:
    t = x["icmp"]
    name = {128: "echo request", 129: "echo reply", 1: "destination unreachable", 3: "time exceeded",
            4: "parameter problem"}.get(t.get("type6"), f"type {t.get('type6')}")
    if t.get("type6") == 2:
        name = f"Packet Too Big (mtu {t.get('mtu')})"
    elif t.get("type6") == 1:
        name += {0: " (no route)", 1: " (administratively prohibited)", 3: " (address unreachable)",
                 4: " (port unreachable)"}.get(t["code"], f" (code {t['code']})")
    return f"{x['src']} > {x['dst']} ICMPv6 {name}"


def _icmp_summary(x: dict) -> str:
    t = x["icmp"]
    name = {0: "echo reply", 8: "echo request", 3: "unreachable", 11: "time exceeded"}.get(t["type"], f"type {t['type']}")
    codes = {0: "net", 1: "host", 2: "protocol", 3: "port", 4: "fragmentation needed", 9: "net prohibited",
             10: "host prohibited", 13: "administratively prohibited"}
    extra = f" ({codes.get(t['code'], 'code ' + str(t['code']))})" if t["type"] == 3 and t["code"] != 4 else ""
    if t.get("mtu"):
        extra += f" (fragmentation needed, next-hop MTU {t['mtu']})"
    return f"{x['src']} > {x['dst']} ICMP {name}{extra}"


def l4_summary(x: dict) -> str:
    """One line for the headers ``decode_frame`` gave (its "ip", "inner" or "quoted" part)."""
    if "tcp" in x:
        return f"{x['src']}:{x['tcp']['sport']} > {x['dst']}:{x['tcp']['dport']} TCP [{x['tcp']['flags']}]"
    if "udp" in x:
        return f"{x['src']}:{x['udp']['sport']} > {x['dst']}:{x['udp']['dport']} UDP"
    if "sport" in x and x.get("proto") in (6, 17):
        return f"{x['src']}:{x['sport']} > {x['dst']}:{x['dport']} {'TCP' if x['proto'] == 6 else 'UDP'}"
    if "icmp" in x and x.get("v6"):
        return _icmpv6_summary(x)
    if "icmp" in x:
        return _icmp_summary(x)
    names = {2: "IGMP", 47: "GRE", 50: "ESP", 89: "OSPF", 132: "SCTP"}
    return f"{x['src']} > {x['dst']} " + (names[x["proto"]] if x.get("proto") in names else f"proto {x.get('proto')}")


def flow_tuple(x: dict) -> tuple:
    """(source, source port, destination, destination port) of decoded headers (ports None for ICMP)."""
    l4 = x.get("tcp") or x.get("udp") or {}
    return (x["src"], l4.get("sport"), x["dst"], l4.get("dport"))


def tcp_dport(frame: bytes) -> int | None:
    """Destination port of a plain Ethernet/IPv4/TCP (or IPv6/TCP) frame (no decoding library)."""
    if len(frame) >= 58 and frame[12:14] == b"\x86\xdd" and frame[20] == 6:
        return struct.unpack("!H", frame[56:58])[0]
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return None
    off = 14 + (frame[14] & 0x0F) * 4
    if len(frame) < off + 4:
        return None
    return struct.unpack("!H", frame[off + 2:off + 4])[0]
