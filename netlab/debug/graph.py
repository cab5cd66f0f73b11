"""What a lab is made of, read from the kernel, and drawn.

``inventory(st)`` reads every namespace a lab recorded in its state file
(``ip -j -d addr`` and ``ip -j netns list-id`` inside each, with ``ip -n``:
nothing is configured) and joins veth pairs across namespaces through the
peer's netns id, so the result is the lab as it *is*, not as it was planned.
``netlab trace`` uses the same inventory to know which interfaces to capture
on. ``render_dot`` / ``render_mermaid`` draw it: nodes, pods, bridges,
VXLAN devices (VNI, local VTEP), addresses and host ports; Graphviz ``dot``
turns the DOT text into svg/png.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from typing import Any

from ..base import namespaces as nsutil


@dataclass
class Link:
    ns: str
    name: str
    ifindex: int
    kind: str                    # veth | bridge | vxlan | loopback | other
    mtu: int
    mac: str = ""
    master: str | None = None
    addrs: list[str] = field(default_factory=list)        # "a.b.c.d/len"
    peer: tuple[str, str] | None = None                   # (ns, ifname) of a veth peer
    vni: int | None = None
    vtep: str | None = None                               # local VXLAN address
    vxlan_port: int | None = None
    hairpin: bool | None = None                           # as a bridge port
    up: bool = True
    addr_flags: dict = field(default_factory=dict)        # IPv6 "addr/len" -> ["tentative", "dadfailed"]
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.ns, self.name)


@dataclass
class NSInfo:
    name: str
    role: str                    # switch | node | pod | dns | ext
    label: str                   # the lab's name for it: node1, web, underlay, ...
    links: dict[str, Link] = field(default_factory=dict)
    node: str | None = None      # for pods: their node's namespace

    def by_index(self, ifindex: int) -> Link | None:
        return next((l for l in self.links.values() if l.ifindex == ifindex), None)


@dataclass
class Inventory:
    lab: str
    namespaces: dict[str, NSInfo]
    host_ports: list[dict] = field(default_factory=list)  # {node_ns, pod, hostPort, containerPort, protocol}
    sharing: dict[str, list[str]] = field(default_factory=dict)  # netns -> pods without their own (host, container:)
    services: list[dict] = field(default_factory=list)    # read from our Services table (read_services)

    def link(self, ns: str, name: str) -> Link | None:
        n = self.namespaces.get(ns)
        return n.links.get(name) if n else None

    def ports_of(self, ns: str, bridge: str) -> list[Link]:
        n = self.namespaces.get(ns)
        return [l for l in n.links.values() if l.master == bridge] if n else []


def _ipj(ns: str, *args: str) -> Any:
    p = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True, timeout=10)
    if p.returncode != 0 or not p.stdout.strip():
        return []
    try:
        return json.loads(p.stdout)
    except ValueError:
        return []


def read_links(ns: str) -> tuple[dict[str, Link], dict[int, str]]:
    links: dict[str, Link] = {}
    for d in _ipj(ns, "-d", "addr", "show"):
        li = d.get("linkinfo") or {}
        kind = li.get("info_kind") or ("loopback" if d.get("link_type") == "loopback" else "other")
        data = li.get("info_data") or {}
        slave = li.get("info_slave_data") or {}
        link = Link(ns=ns, name=d["ifname"], ifindex=d["ifindex"], kind=kind, mtu=d.get("mtu", 0),
                    mac=d.get("address", ""), master=d.get("master"),
                    addrs=[f"{a['local']}/{a['prefixlen']}" for a in d.get("addr_info", [])
                           if a.get("family") == "inet"
                           or (a.get("family") == "inet6" and a.get("scope") == "global")],
                    up="UP" in d.get("flags", []), raw=d)
        for a in d.get("addr_info", []):        # DAD state of IPv6 addresses (ip -j: "tentative": true)
            fl = [f for f in ("tentative", "dadfailed") if a.get(f)]
            if a.get("family") == "inet6" and a.get("scope") == "global" and fl:
                link.addr_flags[f"{a['local']}/{a['prefixlen']}"] = fl
        if kind == "vxlan":
            link.vni, link.vtep, link.vxlan_port = data.get("id"), data.get("local"), data.get("port")
        if li.get("info_slave_kind") == "bridge":
            link.hairpin = bool(slave.get("hairpin"))
        links[link.name] = link
    ids = {e["nsid"]: e["name"] for e in _ipj(ns, "netns", "list-id") if "name" in e}
    return links, ids


def lab_namespaces(st) -> dict[str, tuple[str, str, str | None]]:
    """netns name -> (role, label, node netns) from the state file and the plan names."""
    from ..lab.plan import ns_prefix
    pre = ns_prefix(st.lab)
    out: dict[str, tuple[str, str, str | None]] = {}
    att = {r["netns"]: r for r in st.find("attach") if not r.get("removed")}
    for r in st.resources:
        if r["kind"] not in ("netns", "netns_alias") or r.get("removed"):
            continue
        name = r["name"]
        if r["kind"] == "netns_alias" and not r.get("target", "").startswith("/"):
            continue    # the same namespace as its target, under another name
        # (an alias of a path is the only name of a namespace containerd made: ADR 0025)
        rest = name[len(pre) + 1:] if name.startswith(pre + "-") else name
        if rest == "sw":
            out[name] = ("switch", "underlay", None)
        elif rest.startswith("n-"):
            out[name] = ("node", rest[2:], None)
        elif rest.startswith("p-"):
            a = att.get(name)
            out[name] = ("pod", rest[2:], a["node_ns"] if a else None)
        elif rest in ("dns", "ext"):
            out[name] = (rest, rest, None)
        else:
            out[name] = ("other", rest, None)
    return out


def inventory(st, topo=None) -> Inventory:
    names = lab_namespaces(st)
    nss: dict[str, NSInfo] = {}
    nsids: dict[str, dict[int, str]] = {}
    for name, (role, label, node) in names.items():
        if not nsutil.exists(name):
            continue
        links, ids = read_links(name)
        nss[name] = NSInfo(name, role, label, links, node)
        nsids[name] = ids
    # veth peers: the peer lives in the namespace the netns id names, at link_index
    for n in nss.values():
        for l in n.links.values():
            if l.kind != "veth":
                continue
            li = l.raw.get("link_index")
            if "link_netnsid" in l.raw:
                other = nsids[n.name].get(l.raw["link_netnsid"])
            else:
                other = n.name if li else None
            if other in nss and li:
                pl = nss[other].by_index(li)
                if pl is not None:
                    l.peer = (other, pl.name)
    ports = []
    for r in st.find("attach"):
        if r.get("removed"):
            continue
        for pm in (r.get("capability_args") or {}).get("portMappings", []):
            # netlab records the spec's keys, containerd's go-cni sends Go's (HostPort, ...)
            lower = {k.lower(): v for k, v in pm.items()}
            ports.append({"node_ns": r["node_ns"], "pod": r["pod"], "hostPort": lower.get("hostport"),
                          "containerPort": lower.get("containerport"),
                          "protocol": str(lower.get("protocol") or "tcp").lower()})
    sharing: dict[str, list[str]] = {}
    if topo is not None:
        from ..lab.plan import node_ns, pod_ns
        for p in topo.pods.values():
            if p.mode == "host":
                sharing.setdefault(node_ns(st.lab, p.node), []).append(f"{p.name} (host network)")
            elif p.mode == "container":
                owner = topo.pods[topo.pod_netns_owner(p.name)]
                where = node_ns(st.lab, owner.node) if owner.mode == "host" else pod_ns(st.lab, owner.name)
                sharing.setdefault(where, []).append(f"{p.name} (container:{p.container_of})")
    inv = Inventory(st.lab, nss, ports, sharing)
    inv.services = read_services(inv)
    return inv


# --------------------------------------------------------------------------- rendering

def _id(*parts: str) -> str:
    return "_".join(p.replace("-", "_").replace(".", "_").replace(":", "_") for p in parts)


def _label(l: Link) -> str:
    s = l.name
    if l.kind == "vxlan":
        s += f"\\nVXLAN VNI {l.vni}\\nlocal {l.vtep}:{l.vxlan_port}"
    elif l.kind in ("bridge", "ifb"):
        s += f"\\n{l.kind}"
    s += "".join(f"\\n{a}" + (f" ({' '.join(l.addr_flags[a])})" if a in l.addr_flags else "") for a in l.addrs)
    s += f"\\nmtu {l.mtu}"
    if l.hairpin is not None and l.kind == "veth" and not l.ns.endswith("-sw"):
        s += "\\nhairpin " + ("on" if l.hairpin else "off")
    return s


ROLE_COLOR = {"switch": "#dddddd", "node": "#dbe9f6", "pod": "#e6f4e1", "dns": "#fcefd4", "ext": "#f6dede"}


def _title(inv: Inventory, n, sep: str, arrow: str) -> str:
    """A namespace's caption: its role, who else lives in it, its host ports."""
    title = {"switch": "underlay switch", "node": f"node {n.label}", "pod": f"pod {n.label}",
             "dns": "DNS server", "ext": "external client"}.get(n.role, n.label)
    if inv.sharing.get(n.name):
        title += f"{sep}also here: " + ", ".join(inv.sharing[n.name])
    hp = [p for p in inv.host_ports if p["node_ns"] == n.name]
    if hp:
        title += f"{sep}host ports: " + ", ".join(
            f"{p['hostPort']}/{p.get('protocol', 'tcp')}{arrow}{p['pod']}:{p['containerPort']}" for p in hp)
    return title


def _edges(inv: Inventory):
    """("master", port, bridge), ("veth", end, peer) once per pair, ("vni", vtep, vtep)."""
    done: set = set()
    for n in inv.namespaces.values():
        for l in n.links.values():
            if l.master and l.master in n.links:
                yield "master", (n.name, l.name), (n.name, l.master), None
            if l.peer and (l.peer, l.key) not in done:
                done.add((l.key, l.peer))
                yield "veth", (n.name, l.name), l.peer, None
    vx = [l for n in inv.namespaces.values() for l in n.links.values() if l.kind == "vxlan"]
    for i, a in enumerate(vx):
        for b in vx[i + 1:]:
            if a.vni == b.vni:
                yield "vni", (a.ns, a.name), (b.ns, b.name), a.vni


def render_dot(inv: Inventory) -> str:
    out = [f'digraph "{inv.lab}" {{', "  graph [rankdir=TB, fontname=Helvetica, compound=true];",
           "  node [shape=box, fontname=Helvetica, fontsize=10, style=\"rounded,filled\", fillcolor=white];",
           "  edge [dir=none, fontname=Helvetica, fontsize=9];",
           f'  label="netlab lab {inv.lab}"; labelloc=t;']
    for n in sorted(inv.namespaces.values(), key=lambda x: (list(ROLE_COLOR).index(x.role) if x.role in ROLE_COLOR else 9, x.name)):
        title = _title(inv, n, "\\n", "->")
        out.append(f"  subgraph cluster_{_id(n.name)} {{")
        out.append(f'    label="{title}\\n({n.name})"; style=filled; fillcolor="{ROLE_COLOR.get(n.role, "#ffffff")}";')
        for l in n.links.values():
            if l.kind == "loopback":
                continue
            shape = "ellipse" if l.kind == "bridge" else ("hexagon" if l.kind == "vxlan" else "box")
            out.append(f'    {_id(n.name, l.name)} [label="{_label(l)}", shape={shape}];')
        if all(l.kind == "loopback" for l in n.links.values()):
            out.append(f'    {_id(n.name, "lo")} [label="lo only (no network)", style=dashed];')
        out.append("  }")
    style = {"master": "[style=dashed]", "veth": '[penwidth=2, label="veth"]'}
    for kind, a, b, vni in _edges(inv):
        attrs = style.get(kind) or f'[style=dotted, color=blue, label="VNI {vni}", constraint=false]'
        out.append(f"  {_id(*a)} -> {_id(*b)} {attrs};")
    out += _services_dot(inv)
    out.append("}")
    return "\n".join(out) + "\n"


def render_mermaid(inv: Inventory) -> str:
    out = ["flowchart TB"]
    for n in inv.namespaces.values():
        title = _title(inv, n, " · ", "→")
        out.append(f'  subgraph {_id(n.name)}["{title}"]')
        for l in n.links.values():
            if l.kind == "loopback":
                continue
            lab = _label(l).replace("\\n", "<br/>")
            o, c = {"bridge": ("([", "])"), "vxlan": ("{{", "}}")}.get(l.kind, ("[", "]"))
            out.append(f'    {_id(n.name, l.name)}{o}"{lab}"{c}')
        if all(l.kind == "loopback" for l in n.links.values()):
            out.append(f'    {_id(n.name, "lo")}["lo only (no network)"]')
        out.append("  end")
    for kind, a, b, vni in _edges(inv):
        link = {"master": "-.-", "veth": "==="}.get(kind) or f"-. VNI {vni} .-"
        out.append(f"  {_id(*a)} {link} {_id(*b)}")
    out += _services_mermaid(inv)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- Services

def read_services(inv: Inventory) -> list[dict]:
    """Services and their endpoints as the first node's ``ip`` and ``ip6
    cnilab-services`` tables have them (netlab/features/services.py; a
    dual-stack Service appears once per family): [{name, vip, proto, port,
    nodePort, loadBalancer, endpoints: [(pod netns | None, ifname | None, address, port)]}]."""
    from ..features.services import FAMILY, FAMILY6, TABLE
    by_addr = {a.split("/")[0]: (ns.name, l.name) for ns in inv.namespaces.values() if ns.role == "pod"
               for l in ns.links.values() for a in l.addrs}
    for n in sorted(inv.namespaces.values(), key=lambda x: x.name):
        if n.role != "node":
            continue
        tables = []
        for family in (FAMILY, FAMILY6):
            p = subprocess.run(["ip", "netns", "exec", n.name, "nft", "-j", "list", "table", family, TABLE],
                               capture_output=True, text=True, timeout=10)
            if p.returncode == 0:
                tables.append(json.loads(p.stdout or "{}").get("nftables", []))
        if tables:
            return [s for objs in tables for s in services_in_table(objs, by_addr)]
    return []


def services_in_table(objs: list[dict], by_addr: dict[str, tuple[str, str]]) -> list[dict]:
    """The Services one ``cnilab-services`` table (nft -j objects) holds;
    ``by_addr`` maps a pod address to its (netns, interface)."""
    dnat: dict[str, list] = {}
    for o in objs:
        r = o.get("rule")
        if r and r["chain"].startswith("endpoint-"):
            for e in r.get("expr", []):
                if isinstance(e, dict) and "dnat" in e:
                    svc_chain = "service-" + r["chain"][len("endpoint-"):].split("__")[0]
                    a = e["dnat"].get("addr")
                    dnat.setdefault(svc_chain, []).append((*by_addr.get(a, (None, None)), a, e["dnat"].get("port")))
    nodeports = {}
    maps = {o["map"]["name"]: o["map"].get("elem", []) for o in objs if "map" in o}
    for key, verdict in maps.get("service-nodeports", []):
        tgt = (verdict.get("goto") or {}).get("target", "")
        nodeports["service-" + tgt[len("external-"):]] = key["concat"][1]
    out = []
    lbs = {}            # a LoadBalancer address goes to the external chain (netlab/loadbalancer.py)
    for key, verdict in maps.get("service-ips", []):
        tgt = (verdict.get("goto") or {}).get("target", "")
        if tgt.startswith("external-"):
            lbs["service-" + tgt[len("external-"):]] = key["concat"][0]
    for key, verdict in maps.get("service-ips", []):
        vip, proto, port = key["concat"]
        chain = (verdict.get("goto") or {}).get("target", "")
        if not chain.startswith("service-"):
            continue
        name = chain[len("service-"):].rsplit("/", 2)[0]
        out.append({"name": name, "vip": vip, "proto": proto, "port": port, "nodePort": nodeports.get(chain),
                    "loadBalancer": lbs.get(chain), "endpoints": dnat.get(chain, [])})
    for key, v in maps.get("no-endpoint-services", []):
        if (v.get("goto") or {}).get("target") != "reject-chain":
            continue        # a Local LoadBalancer address without an endpoint on this node
        vip, proto, port = key["concat"]
        out.append({"name": f"{vip} (no endpoints)", "vip": vip, "proto": proto, "port": port,
                    "nodePort": None, "endpoints": []})
    return out


def _hostport(addr: str, port) -> str:
    return f"[{addr}]:{port}" if ":" in str(addr) else f"{addr}:{port}"


def _svc_label(s: dict, sep: str) -> str:
    return (f"Service {s['name']}{sep}{_hostport(s['vip'], s['port'])}/{s['proto']}"
            + (f"{sep}NodePort {s['nodePort']}" if s.get("nodePort") else "")
            + (f"{sep}LoadBalancer {s['loadBalancer']}" if s.get("loadBalancer") else "")
            + ("" if s["endpoints"] else f"{sep}no endpoints: rejected"))


def _services_dot(inv: Inventory) -> list[str]:
    if not inv.services:
        return []
    out = ['  subgraph cluster_services {', '    label="Services (ip / ip6 cnilab-services)"; style=dashed;']
    for i, s in enumerate(inv.services):
        out.append(f'    svc_{i} [label="{_svc_label(s, chr(92) + "n")}", shape=component, fillcolor="#fff7cc"];')
    out.append("  }")
    for i, s in enumerate(inv.services):
        for ns, ifn, addr, port in s["endpoints"]:
            if ns:
                out.append(f'  svc_{i} -> {_id(ns, ifn)} [dir=forward, style=dotted, color=darkgreen, '
                           f'label="{_hostport(addr, port)}", constraint=false];')
    return out


def _services_mermaid(inv: Inventory) -> list[str]:
    out = []
    for i, s in enumerate(inv.services):
        out.append(f'  svc_{i}[/"{_svc_label(s, "<br/>")}"/]')
        for ns, ifn, addr, port in s["endpoints"]:
            if ns:
                out.append(f'  svc_{i} -. "{_hostport(addr, port)}" .-> {_id(ns, ifn)}')
    return out


def render(inv: Inventory, fmt: str) -> bytes:
    if fmt == "mermaid":
        return render_mermaid(inv).encode()
    dot = render_dot(inv)
    if fmt == "dot":
        return dot.encode()
    p = subprocess.run(["dot", f"-T{fmt}"], input=dot.encode(), capture_output=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"graphviz dot -T{fmt} failed: {p.stderr.decode(errors='replace').strip()}")
    return p.stdout
