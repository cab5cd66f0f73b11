"""Labs with `ipam: dhcp` networks: a DHCP server and a dhcp daemon per node.

For each node hosting pods of a dhcp network the plan adds, in order:
  the network's bridge (cni<N>) in the node, with the gateway address, made
    before any pod so the server has a segment to serve;
  a server namespace nl-<lab>-dh<N>-<node> on that bridge (veth dhs<N> ->
    eth0, the slice's last host address) running dnsmasq: DHCP only
    (--port=0), no upstream, range = the slice without gateway and server,
    router = the gateway, lease/pid/log files in the lab directory;
  the dhcp daemon in the node namespace (socket <lab>/dhcp-<network>-<node>.sock).
Both processes are recorded in the lab state (pid + start time) when started,
so `netlab down` stops exactly them (after the pods' DELs: state is undone in
reverse order). The bridge and veth die with their namespaces.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Callable

from ..base.units import gateway, node_slice

if TYPE_CHECKING:
    from ..lab.topology import Network, Topology

REFERENCE_DHCP = "/usr/lib/cni/dhcp"


def server_ns(lab: str, w: Network, node_index: int) -> str:
    return f"nl-{lab}-dh{w.index}-{node_index}"


def socket_path(lab_dir: str, w: Network, node: str) -> str:
    return os.path.join(lab_dir, f"dhcp-{w.name}-{node}.sock")


def addresses(w: Network, node_index: int) -> dict[str, str]:
    sl = node_slice(w, node_index)
    gw = gateway(w, node_index)
    server = sl.broadcast_address - 1
    return {"gateway": str(gw), "server": str(server), "first": str(gw + 1),
            "last": str(server - 1), "netmask": str(sl.netmask), "prefix": str(sl.prefixlen)}


def dnsmasq_argv(lab_dir: str, w: Network, node: str, a: dict[str, str]) -> list[str]:
    base = os.path.join(lab_dir, f"dhcp-{w.name}-{node}")
    return ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
            "--no-resolv", "--no-hosts", "--interface=eth0", "--bind-interfaces",
            f"--dhcp-range={a['first']},{a['last']},{a['netmask']},2m",
            f"--dhcp-option=3,{a['gateway']}", "--dhcp-authoritative",
            f"--dhcp-leasefile={base}.leases", f"--pid-file={base}.pid",
            "--log-dhcp", f"--log-facility={base}.log"]


def add_steps(topo: Topology, lab_dir: str, node_ns: Callable[[str], str], Step,
              steps: list, namespaces: list[str]) -> None:
    """Append the steps (and namespaces) of every dhcp network to the plan's lists."""
    for w in topo.networks.values():
        if w.ipam != "dhcp":
            continue
        hosting = sorted({p.node for p in topo.pods.values() if p.network == w.name},
                         key=lambda n: topo.nodes[n].index)
        for node in hosting:
            n = topo.nodes[node]
            nn, sn = node_ns(node), server_ns(topo.name, w, n.index)
            a = addresses(w, n.index)
            mtu = w.mtu or n.mtu
            sock = socket_path(lab_dir, w, node)
            namespaces.append(sn)
            steps += [
                Step("bridge", f"{nn}: bridge cni{w.index} {a['gateway']}/{a['prefix']} "
                     f"(dhcp network {w.name})",
                     {"ns": nn, "name": f"cni{w.index}", "mtu": mtu,
                      "address": f"{a['gateway']}/{a['prefix']}"}),
                Step("netns", f"namespace {sn} (DHCP server of {w.name} on {node})",
                     {"name": sn, "role": f"DHCP server of {w.name} on {node}"}),
                Step("uplink", f"{sn}: eth0 {a['server']}/{a['prefix']} on cni{w.index}",
                     {"switch_ns": nn, "bridge": f"cni{w.index}", "port": f"dhs{w.index}",
                      "ns": sn, "ifname": "eth0", "address": f"{a['server']}/{a['prefix']}",
                      "mtu": mtu, "switch_mtu": mtu}),
                Step("dhcp_server", f"dnsmasq (DHCP only) in {sn}: {a['first']}-{a['last']}, "
                     f"router {a['gateway']}",
                     {"ns": sn, "argv": dnsmasq_argv(lab_dir, w, node, a),
                      "pidfile": os.path.join(lab_dir, f"dhcp-{w.name}-{node}.pid"),
                      "log": os.path.join(lab_dir, f"dhcp-{w.name}-{node}.out")}),
                Step("dhcp_daemon", f"dhcp daemon in {nn} on {sock}",
                     {"ns": nn, "socket": sock,
                      "log": os.path.join(lab_dir, f"dhcp-daemon-{w.name}-{node}.log")}),
            ]


def daemon_argv(plugins_choice: str, sock: str) -> list[str]:
    """Our daemon (the plugin module's `daemon` entry) or, for --plugins reference, the Go one."""
    if plugins_choice == "reference":
        return [REFERENCE_DHCP, "daemon", "-socketpath", sock]
    return [sys.executable, "-m", "plugins.dhcp_daemon.server", "-socketpath", sock]
