"""Topology -> a build plan: every name, address, route, conflist and file as data.

Pure functions only (no system access), so the whole plan is unit-tested
without root. ``build.py`` applies it step by step, recording each step in the
state file before doing it.

Names of namespaces and interfaces: ``netlab.base.names``.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..base.names import (POD_HOSTS, SWITCH_BRIDGE, UPLINK, container_id, dns_ns, ext_ns, node_ns, ns_prefix,
                          pod_ns, switch_ns)       # (plan.node_ns etc. keep working for importers)
from .topology import CRI_CNI_VERSION, Network, Pod, Topology, nth_host
from ..base.units import gateway, node_slice


def containerd_dir(lab_dir: str, node: str) -> str:
    """A containerd node's root, state, socket and CNI conf dir (short: unix socket paths)."""
    return os.path.join(lab_dir, f"ctd-{node}")


def sandbox_spec(topo: Topology, pod: Pod) -> dict:
    """What a kubelet would send in RunPodSandbox for this pod (netlab.cri.PodSpec fields):
    metadata, hostname, DNS config as kubelet's ClusterFirst, host ports, and the
    bandwidth annotations (rates only: containerd picks the burst)."""
    d = topo.dns
    servers = pod.dns.nameservers or ([d.address] if d.enabled and d.address else [])
    search = pod.dns.search if pod.dns.search is not None else \
        [f"{pod.namespace}.svc.{d.domain}", f"svc.{d.domain}", d.domain]
    ann = {}
    if pod.bandwidth and pod.bandwidth.ingress_rate:
        ann["kubernetes.io/ingress-bandwidth"] = str(pod.bandwidth.ingress_rate)
    if pod.bandwidth and pod.bandwidth.egress_rate:
        ann["kubernetes.io/egress-bandwidth"] = str(pod.bandwidth.egress_rate)
    return {"name": pod.name, "namespace": pod.namespace, "hostname": pod.name,
            "uid": f"{topo.name}-{pod.namespace}-{pod.name}",
            "labels": {"netlab.lab": topo.name, "netlab.pod": pod.name, **pod.labels},
            "annotations": ann,
            "dns": {"servers": servers, "searches": search,
                    "options": [f"ndots:{pod.dns.ndots}"] + list(pod.dns.options)},
            "ports": [{"container_port": m.container_port, "host_port": m.host_port,
                       "protocol": m.protocol.upper()} for m in pod.ports]}


@dataclass
class Step:
    """One unit of building. ``kind`` picks the applier in build.py."""
    kind: str
    desc: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Endpoint:
    """Where a check target lives: the namespace to run in and its address."""
    name: str
    netns: str
    address: str | None
    iface: str = UPLINK
    kind: str = "pod"         # pod | node | ext | dns
    addresses: list[str] = field(default_factory=list)   # every family's address, primary first


@dataclass
class Plan:
    lab: str
    lab_dir: str
    steps: list[Step]
    endpoints: dict[str, Endpoint]
    namespaces: list[str]
    topology: Topology

    def to_dict(self) -> dict:
        return {"lab": self.lab, "labDir": self.lab_dir,
                "steps": [{"kind": s.kind, "desc": s.desc, "params": s.params} for s in self.steps]}


# --------------------------------------------------------------------------- conflists

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def render_template(obj: Any, variables: dict[str, Any]) -> Any:
    """Substitute ${var} in every string; a string that is exactly one variable
    takes the variable's value with its type (lists, ints)."""
    if isinstance(obj, dict):
        return {k: render_template(v, variables) for k, v in obj.items()}
    if isinstance(obj, list):
        return [render_template(v, variables) for v in obj]
    if isinstance(obj, str):
        m = _VAR.fullmatch(obj)
        if m and m.group(1) in variables:
            return variables[m.group(1)]
        return _VAR.sub(lambda mm: str(variables.get(mm.group(1), mm.group(0))), obj)
    return obj


def _range_last(sl) -> Any:
    """The last address host-local may hand out in a slice (IPv4: before broadcast)."""
    return sl.broadcast_address - 1 if sl.version == 4 else sl.broadcast_address


def overlay_family(topo: Topology, w: Network) -> int:
    """The underlay family an overlay network's VXLAN runs over."""
    return w.underlay_family or topo.underlay.families[0]


def network_vars(topo: Topology, w: Network, node: str, lab_dir: str) -> dict[str, Any]:
    n = topo.nodes[node]
    sl = node_slice(w, n.index)
    gw = gateway(w, n.index)
    hosts_last = _range_last(sl)
    ufam = overlay_family(topo, w)
    v = {
        "lab": topo.name, "network": w.name, "nodeName": node, "nodeIP": n.address_of(ufam) or n.address,
        "subnet": str(w.subnet), "podCIDR": str(sl), "gateway": str(gw),
        "rangeStart": str(gw + 1), "rangeEnd": str(hosts_last),
        "peers": [m.address_of(ufam) or m.address for m in topo.nodes.values() if m.name != node],
        "mtu": w.mtu or n.mtu, "vni": w.vni, "port": w.port, "bridge": f"cni{w.index}",
        "ipamDir": os.path.join(lab_dir, "ipam", node), "underlayInterface": UPLINK,
        "dhcpSocket": os.path.join(lab_dir, f"dhcp-{w.name}-{node}.sock"),
        # vxlanMode l3: every node (this one too) with its pod slice, as flannel's node
        # annotations give them; each node finds its own entry by localIP
        "vtepPeers": [{"ip": m.address, "subnet": str(node_slice(w, m.index))}
                      for m in topo.nodes.values()],
    }
    # dual-stack: the same variables per family, suffixed 4 and 6 (${podCIDR6}, ${gateway4}...)
    for net in w.subnets:
        f = net.version
        fsl, fgw = node_slice(w, n.index, f), gateway(w, n.index, f)
        v.update({f"subnet{f}": str(net), f"podCIDR{f}": str(fsl), f"gateway{f}": str(fgw),
                  f"rangeStart{f}": str(fgw + 1), f"rangeEnd{f}": str(_range_last(fsl))})
    return v


def _ranges(w: Network, per_node_subnet: bool) -> list:
    """host-local ``ranges``: one range set per family (dual-stack: an address of each)."""
    out = []
    for net in w.subnets:
        f = "" if net == w.subnet else str(net.version)
        if per_node_subnet:
            out.append([{"subnet": f"${{podCIDR{f}}}", "gateway": f"${{gateway{f}}}"}])
        else:
            out.append([{"subnet": f"${{subnet{f}}}", "rangeStart": f"${{rangeStart{f}}}",
                         "rangeEnd": f"${{rangeEnd{f}}}", "gateway": f"${{gateway{f}}}"}])
    return out


def generated_conflist(w: Network) -> dict:
    """The conflist a network gets when the topology gives none (a template)."""
    if w.type in ("bridge", "routed"):   # routed: the bridge plugin, routes come from BGP
        main = {"type": "bridge", "bridge": "${bridge}", "isGateway": True, "isDefaultGateway": True,
                "ipMasq": False, "hairpinMode": True, "mtu": "${mtu}",
                "ipam": {"type": "host-local", "dataDir": "${ipamDir}", "ranges": _ranges(w, True)}}
    elif w.vxlan_mode == "l3":
        # flannel-style: a routed VTEP per node, pods on the node's own slice behind a
        # local bridge, per remote node a route + permanent neighbour + FDB entry
        main = {"type": "vxlan", "mode": "l3", "vni": "${vni}", "port": "${port}",
                "peers": "${vtepPeers}", "localIP": "${nodeIP}",
                "underlayInterface": "${underlayInterface}",
                "isGateway": True, "isDefaultGateway": True, "ipMasq": False,
                "ipam": {"type": "host-local", "dataDir": "${ipamDir}", "ranges": _ranges(w, True)}}
        if w.mtu:
            main["mtu"] = "${mtu}"
    else:
        # Each node owns its own gateway (first address of its slice), so no anycast
        # gateway MAC: with one MAC on every node's bridge, a node's ARP request for a
        # remote pod is answered to a MAC that the pod's own node takes for itself,
        # and a node (or a routed bridge pod) cannot reach pods on other nodes.
        main = {"type": "vxlan", "vni": "${vni}", "port": "${port}", "peers": "${peers}",
                "localIP": "${nodeIP}", "underlayInterface": "${underlayInterface}",
                "isGateway": True, "isDefaultGateway": True, "anycastGateway": False,
                "ipMasq": False,
                "ipam": {"type": "host-local", "dataDir": "${ipamDir}", "ranges": _ranges(w, False)}}
        if w.mtu:
            main["mtu"] = "${mtu}"
    if w.ipam == "dhcp":
        main["ipam"] = {"type": "dhcp", "daemonSocketPath": "${dhcpSocket}"}
    return {"cniVersion": "1.1.0", "name": "${network}", "plugins": [
        main,
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    ]}


def render_conflist(topo: Topology, w: Network, node: str, lab_dir: str, pod: Pod | None = None) -> dict:
    tmpl = w.conflist if w.conflist is not None else generated_conflist(w)
    conf = render_template(tmpl, network_vars(topo, w, node, lab_dir))
    if pod is not None and len(pod.ips) > 1 and conf.get("plugins"):
        # one requested address per family: args.cni.ips of the main plugin (which
        # hands its config to IPAM), the form every host-local reads; CNI_ARGS IP=
        # takes a single address in the reference plugins
        main = conf["plugins"][0]
        if isinstance(main, dict):
            main.setdefault("args", {}).setdefault("cni", {})["ips"] = list(pod.ips)
    conf.setdefault("cniVersion", "1.1.0")
    conf.setdefault("name", w.name)
    # IPAM state always lives in the lab directory, never in /var/lib/cni.
    for pl in conf.get("plugins", []):
        ipam = pl.get("ipam") if isinstance(pl, dict) else None
        if isinstance(ipam, dict) and ipam.get("type") == "host-local" and not ipam.get("dataDir"):
            ipam["dataDir"] = os.path.join(lab_dir, "ipam", node)
    return conf


def capability_args(pod: Pod) -> dict:
    rc: dict[str, Any] = {}
    if pod.ports:
        rc["portMappings"] = [{"hostPort": p.host_port, "containerPort": p.container_port,
                               "protocol": p.protocol} for p in pod.ports]
    if pod.bandwidth:
        b = pod.bandwidth
        bw = {}
        if b.ingress_rate:
            bw.update(ingressRate=b.ingress_rate, ingressBurst=b.ingress_burst)
        if b.egress_rate:
            bw.update(egressRate=b.egress_rate, egressBurst=b.egress_burst)
        rc["bandwidth"] = bw
    return rc


def cni_args(topo: Topology, pod: Pod) -> str:
    parts = ["IgnoreUnknown=1", f"K8S_POD_NAMESPACE={pod.namespace}", f"K8S_POD_NAME={pod.name}",
             f"K8S_POD_INFRA_CONTAINER_ID={container_id(topo.name, pod.name)}"]
    if pod.ip and len(pod.ips) <= 1:
        parts.append(f"IP={pod.ip}")
    elif len(pod.ips) == 1:
        parts.append(f"IP={pod.ips[0]}")
    return ";".join(parts)


# --------------------------------------------------------------------------- files

def resolv_conf(topo: Topology, pod: Pod | None, *, namespace: str | None = None) -> str:
    """resolv.conf the way kubelet writes it for dnsPolicy ClusterFirst."""
    d = topo.dns
    servers = (pod.dns.nameservers if pod and pod.dns.nameservers else
               ([d.address] if d.enabled and d.address else []))
    lines = [f"# written by netlab for lab {topo.name}"]
    lines += [f"nameserver {s}" for s in servers]
    if pod is not None:
        ns = namespace or pod.namespace
        search = pod.dns.search if pod.dns.search is not None else [f"{ns}.svc.{d.domain}", f"svc.{d.domain}", d.domain]
        if search:
            lines.append("search " + " ".join(search))
        opts = [f"ndots:{pod.dns.ndots}"] + list(pod.dns.options)
        lines.append("options " + " ".join(opts))
    else:
        lines.append(f"search {d.domain}")
    return "\n".join(lines) + "\n"


def hosts_file(name: str, address: str | None, more: list[str] | tuple = ()) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    for a in ([address] if address else []) + [m for m in more if m and m != address]:
        lines.append(f"{a}\t{name}")
    return "\n".join(lines) + "\n"


def dns_records(topo: Topology) -> list[tuple[str, str]]:
    """(name, address) served by the lab DNS: explicit records, plus one
    ``<pod>.<namespace>.svc.<domain>`` per pod with a static address, and
    ``<node>.node.<domain>`` per node."""
    recs = [(r.name, r.address) for r in topo.dns.records]
    if topo.dns.pod_records:
        for n in topo.nodes.values():       # A and AAAA: one record per family
            recs += [(f"{n.name}.node.{topo.dns.domain}", a) for a in n.addresses]
        for p in topo.pods.values():
            if _all_requested(topo, p):
                recs += [(f"{p.name}.{p.namespace}.svc.{topo.dns.domain}", a) for a in p.ips]
    return recs


def _all_requested(topo: Topology, p: Pod) -> bool:
    """A pod whose every address is requested (known before ADD)."""
    if not p.ips or p.network not in topo.networks:
        return bool(p.ips)
    return len(p.ips) >= len(topo.networks[p.network].subnets)


def late_records(topo: Topology, addresses: dict[str, str]) -> list[tuple[str, str]]:
    """Records known only once pods are attached: pods without a requested
    address, host-network pods (their node's address) and container: pods
    (the address of the pod whose namespace they share)."""
    if not (topo.dns.enabled and topo.dns.pod_records):
        return []
    out = []
    for p in topo.pods.values():
        if _all_requested(topo, p):
            continue               # already a --host-record
        owner = topo.pods[topo.pod_netns_owner(p.name)]
        if owner.mode == "host":
            addrs = list(topo.nodes[owner.node].addresses)
        else:
            got = addresses.get(owner.name)
            addrs = list(got) if isinstance(got, (list, tuple)) else ([got] if got else [])
            addrs = addrs or ([owner.ip] if owner.ip else [])
        out += [(f"{p.name}.{p.namespace}.svc.{topo.dns.domain}", a) for a in addrs]
    return out


def dnsmasq_argv(topo: Topology, lab_dir: str, records: list[tuple[str, str]] | None = None) -> list[str]:
    """dnsmasq serving only the lab: no upstream, no /etc/hosts, only our records."""
    d = topo.dns
    argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            "--no-poll", "--bind-interfaces", *[f"--listen-address={a}" for a in (d.addresses or [d.address])],
            "--port=53",
            "--user=root", "--group=root",
            f"--pid-file={os.path.join(lab_dir, 'dnsmasq.pid')}",
            f"--local=/{d.domain}/", "--domain-needed", "--log-queries",
            f"--log-facility={os.path.join(lab_dir, 'dns.log')}", "--cache-size=0",
            # records of pods whose address is known only after ADD (re-read on SIGHUP)
            f"--addn-hosts={os.path.join(lab_dir, POD_HOSTS)}"]
    by_name: dict[str, list[str]] = {}
    for name, addr in (records if records is not None else dns_records(topo)):
        by_name.setdefault(name, []).append(addr)
    for name, addrs in by_name.items():   # --host-record=NAME,IPv4,IPv6: A and AAAA
        argv.append(f"--host-record={name},{','.join(addrs)}")
    return argv


# --------------------------------------------------------------------------- plan

def underlay_hosts(topo: Topology) -> list[str]:
    return [str(h) for h in topo.underlay.subnet.hosts()] if topo.underlay.subnet.version == 4 else \
        [a for a in (nth_host(topo.underlay.subnet, k) for k in range(16)) if a]


def ext_address(topo: Topology) -> str:
    return nth_host(topo.underlay.subnet, 2)


def ext_addresses(topo: Topology) -> list[str]:
    return [nth_host(u, 2) for u in topo.underlay.subnets]


def _cidrs(addrs: list[str], topo: Topology) -> list[str]:
    """Addresses -> address/prefix of their underlay subnet."""
    out = []
    for a in addrs:
        u = topo.underlay.subnet_of(ipaddress.ip_address(a).version)
        out.append(f"{a}/{u.prefixlen}")
    return out


def make_plan(topo: Topology, lab_dir: str) -> Plan:
    lab = topo.name
    u = topo.underlay
    plen = u.subnet.prefixlen
    steps: list[Step] = []
    endpoints: dict[str, Endpoint] = {}
    namespaces: list[str] = []

    def ns(name: str, role: str) -> None:
        namespaces.append(name)
        steps.append(Step("netns", f"namespace {name} ({role})", {"name": name, "role": role}))

    steps.append(Step("labdir", f"lab directory {lab_dir}", {"path": lab_dir}))
    sw = switch_ns(lab)
    ns(sw, "underlay switch")
    steps.append(Step("bridge", f"switch bridge {SWITCH_BRIDGE} (mtu {u.mtu})",
                      {"ns": sw, "name": SWITCH_BRIDGE, "mtu": u.mtu,
                       "address": _cidrs([u.switch_address], topo)[0] if u.switch_address else None}))

    # every pod range, for routes from the switch-side namespaces (dns, ext) and between nodes;
    # each family's ranges via the node's underlay address of that family (an overlay's
    # range of a family the underlay lacks is reached from its own nodes only)
    slices: list[tuple[str, str, str]] = []   # (cidr, via node address, node)
    for w in topo.networks.values():
        for n in topo.nodes.values():
            for net in w.subnets:
                via = n.address_of(net.version)
                if via:
                    slices.append((str(node_slice(w, n.index, net.version)), via, n.name))

    def uplink(target_ns: str, port: str, addr: str, mtu: int, role: str, addrs: list[str] | None = None) -> None:
        cidrs = _cidrs(addrs or [addr], topo)
        params = {"switch_ns": sw, "bridge": SWITCH_BRIDGE, "port": port, "ns": target_ns,
                  "ifname": UPLINK, "address": cidrs[0], "mtu": mtu, "switch_mtu": u.mtu}
        if len(cidrs) > 1 or ":" in cidrs[0]:
            params["addresses"] = cidrs      # IPv6: added nodad (netlab's own, never duplicated)
        steps.append(Step("uplink", f"{role} {target_ns}: {UPLINK} {' '.join(cidrs)} on the switch (mtu {mtu})",
                          params))

    for n in topo.nodes.values():
        nn = node_ns(lab, n.name)
        ns(nn, f"node {n.name}")
        uplink(nn, f"n{n.index}", n.address, n.mtu, "node", n.addresses)
        steps.append(Step("sysctl", f"{nn}: ip_forward on", {"ns": nn, "key": "net/ipv4/ip_forward", "value": "1"}))
        if any(net.version == 6 for w in topo.networks.values() for net in w.subnets) or 6 in u.families:
            steps.append(Step("sysctl", f"{nn}: IPv6 forwarding on",
                              {"ns": nn, "key": "net/ipv6/conf/all/forwarding", "value": "1"}))
        routes = [{"dst": c, "via": via} for c, via, owner in slices if owner != n.name
                  and topo.networks[_net_of(topo, c)].type in ("bridge", "routed")
                  and topo.networks[_net_of(topo, c)].routing == "static"]
        if routes:
            steps.append(Step("routes", f"{nn}: routes to the other nodes' pod ranges ({len(routes)})",
                              {"ns": nn, "routes": routes}))
        steps.append(Step("etcnetns", f"/etc/netns/{nn}", {"netns": nn, "files": {
            "resolv.conf": resolv_conf(topo, None), "hosts": hosts_file(n.name, n.address, n.addresses)}}))
        endpoints[n.name] = Endpoint(n.name, nn, n.address, UPLINK, "node", list(n.addresses))

    # containerd nodes: one private containerd each, with the node's one network (ADR 0025)
    for n in topo.nodes.values():
        if n.runtime != "containerd":
            continue
        nets = sorted({p.network for p in topo.pods.values() if p.node == n.name and p.network})
        conf = None
        if nets:
            w = topo.networks[nets[0]]
            conf = render_conflist(topo, w, n.name, lab_dir)
            if w.conflist is None:
                conf["cniVersion"] = CRI_CNI_VERSION   # containerd 1.6 reads results up to 1.0.0
        wd = containerd_dir(lab_dir, n.name)
        steps.append(Step("containerd", f"containerd in {node_ns(lab, n.name)} (CRI socket "
                          f"{wd}/containerd.sock" + (f", CNI network {nets[0]})" if nets else ")"),
                          {"node": n.name, "ns": node_ns(lab, n.name), "workdir": wd,
                           "network": nets[0] if nets else None, "conflist": conf,
                           "generated": bool(nets) and topo.networks[nets[0]].conflist is None}))

    from ..features.bgp import plan_steps as bgp_steps   # routing: bgp networks: BIRD in every node
    steps += bgp_steps(topo, lab_dir, node_ns, Step)
    from ..features import dhcp
    dhcp.add_steps(topo, lab_dir, lambda node: node_ns(lab, node), Step, steps, namespaces)

    side_routes = [{"dst": c, "via": via} for c, via, _ in slices]
    if topo.dns.enabled:
        dn = dns_ns(lab)
        ns(dn, "DNS server")
        uplink(dn, "dns0", topo.dns.address, u.mtu, "dns", topo.dns.addresses)
        if side_routes:
            steps.append(Step("routes", f"{dn}: routes to the pod ranges via their nodes",
                              {"ns": dn, "routes": side_routes}))
        steps.append(Step("etcnetns", f"/etc/netns/{dn}", {"netns": dn, "files": {
            "resolv.conf": resolv_conf(topo, None), "hosts": hosts_file("dns", topo.dns.address, topo.dns.addresses)}}))
        steps.append(Step("dnsmasq", f"dnsmasq in {dn} on {topo.dns.address}:53 (domain {topo.dns.domain}, no upstream)",
                          {"ns": dn, "argv": dnsmasq_argv(topo, lab_dir), "address": topo.dns.address,
                           "pidfile": os.path.join(lab_dir, "dnsmasq.pid")}))
        endpoints["dns"] = Endpoint("dns", dn, topo.dns.address, UPLINK, "dns", list(topo.dns.addresses))
    if topo.external:
        en = ext_ns(lab)
        ea = ext_address(topo)
        ns(en, "external client")
        uplink(en, "ext0", ea, u.mtu, "ext", ext_addresses(topo))
        if side_routes:
            steps.append(Step("routes", f"{en}: routes to the pod ranges via their nodes",
                              {"ns": en, "routes": side_routes}))
        steps.append(Step("etcnetns", f"/etc/netns/{en}", {"netns": en, "files": {
            "resolv.conf": resolv_conf(topo, None), "hosts": hosts_file("ext", ea, ext_addresses(topo))}}))
        endpoints["ext"] = Endpoint("ext", en, ea, UPLINK, "ext", ext_addresses(topo))

    # pods: namespaces first (owners before container: joiners), then attachments
    order = sorted(topo.pods.values(), key=lambda p: (p.mode == "container", p.index))
    for p in order:
        nn = node_ns(lab, p.node)
        if p.mode == "host":
            endpoints[p.name] = Endpoint(p.name, nn, topo.nodes[p.node].address, UPLINK, "pod",
                                         list(topo.nodes[p.node].addresses))
            continue
        pn = pod_ns(lab, p.name)
        if topo.nodes[p.node].runtime == "containerd":
            # containerd makes the pod's namespace; the build names it pn (a bind mount)
            namespaces.append(pn)
        elif p.mode == "container":
            owner = topo.pod_netns_owner(p.name)
            target = pod_ns(lab, owner) if topo.pods[owner].mode != "host" else node_ns(lab, topo.pods[owner].node)
            namespaces.append(pn)
            steps.append(Step("netns_alias", f"namespace name {pn} for pod {p.name} (joins {owner})",
                              {"name": pn, "target": target, "pod": p.name}))
        else:
            ns(pn, f"pod {p.name} ({p.mode})")
            steps[-1].params["pod"] = p.name
        steps.append(Step("etcnetns", f"/etc/netns/{pn}: resolv.conf (ndots:{p.dns.ndots})", {"netns": pn, "pod": p.name, "files": {
            "resolv.conf": resolv_conf(topo, p), "hosts": hosts_file(p.name, p.ip, p.ips)}}))
        endpoints[p.name] = Endpoint(p.name, pn, p.ip, p.ifname, "pod", list(p.ips))
    for p in order:
        if p.mode in ("bridge", "overlay") and topo.nodes[p.node].runtime == "containerd":
            w = topo.networks[p.network]
            spec = sandbox_spec(topo, p)
            steps.append(Step("sandbox", f"pod {p.name}: CRI RunPodSandbox on node {p.node}'s "
                              f"containerd ({w.name})"
                              + (f", ports {','.join(str(m.host_port) for m in p.ports)}" if p.ports else "")
                              + (", bandwidth annotations" if spec["annotations"] else ""),
                              {"pod": p.name, "netns": pod_ns(lab, p.name), "node": p.node,
                               "node_ns": node_ns(lab, p.node), "network": w.name,
                               "workdir": containerd_dir(lab_dir, p.node), "spec": spec,
                               "ifname": "eth0"}))
        elif p.mode in ("bridge", "overlay"):
            w = topo.networks[p.network]
            conf = render_conflist(topo, w, p.node, lab_dir, p)
            steps.append(Step("attach", f"pod {p.name}: {p.mode} on {w.name} via node {p.node}"
                              + (f", ports {','.join(str(m.host_port) for m in p.ports)}" if p.ports else "")
                              + (", shaped" if p.bandwidth else ""),
                              {"pod": p.name, "netns": pod_ns(lab, p.name), "node_ns": node_ns(lab, p.node),
                               "conflist": conf, "container_id": container_id(lab, p.name),
                               "ifname": p.ifname, "cni_args": cni_args(topo, p),
                               "capability_args": capability_args(p), "network": w.name,
                               "generated": w.conflist is None}))
    return Plan(lab, lab_dir, steps, endpoints, namespaces, topo)


def _net_of(topo: Topology, cidr: str) -> str:
    net = ipaddress.ip_network(cidr)
    for w in topo.networks.values():
        if any(net.version == wn.version and net.subnet_of(wn) for wn in w.subnets):
            return w.name
    raise KeyError(cidr)


def summary(plan: Plan) -> str:
    counts: dict[str, int] = {}
    for s in plan.steps:
        counts[s.kind] = counts.get(s.kind, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in counts.items())


def dumps(plan: Plan) -> str:
    return json.dumps(plan.to_dict(), indent=2)
