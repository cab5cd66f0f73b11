"""Test helpers for the chained plugins (portmap, bandwidth): a node namespace
with a bridge, pods joined to it by veths, a client namespace outside the
node, prevResults built by hand, and plugin calls in-process or exec'd.

Everything lives in namespaces the tests create (fixtures in conftest.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from plugins.core import netns as cns
from plugins.core.skel import dispatch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BR = "cni0"
NODE_V4, NODE_V6 = "10.77.0.1", "fd77::1"
UP_NODE, UP_CLIENT = "10.78.0.1", "10.78.0.2"
UP6_NODE, UP6_CLIENT = "fd78::1", "fd78::2"


def sh(ns, *argv, check=True):
    return ns.run(*argv, check=check)


def make_node(node, client=None, v6=True):
    """A bridge with the pod gateway addresses; optionally a client netns on an uplink."""
    sh(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    sh(node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    # no multicast snooping: IPv6 neighbour discovery must not wait for MLD reports
    sh(node, "ip", "link", "add", BR, "type", "bridge", "mcast_snooping", "0")
    sh(node, "ip", "addr", "add", f"{NODE_V4}/24", "dev", BR)
    if v6:
        sh(node, "ip", "-6", "addr", "add", f"{NODE_V6}/64", "dev", BR, "nodad")
    sh(node, "ip", "link", "set", BR, "up")
    if client is not None:
        sh(node, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0c",
           "netns", client.name)
        sh(node, "ip", "addr", "add", f"{UP_NODE}/24", "dev", "up0")
        sh(node, "ip", "-6", "addr", "add", f"{UP6_NODE}/64", "dev", "up0", "nodad")
        sh(node, "ip", "link", "set", "up0", "up")
        sh(client, "ip", "addr", "add", f"{UP_CLIENT}/24", "dev", "up0c")
        sh(client, "ip", "-6", "addr", "add", f"{UP6_CLIENT}/64", "dev", "up0c", "nodad")
        sh(client, "ip", "link", "set", "up0c", "up")


@dataclass
class Pod:
    ns: object
    host_veth: str
    ip4: str
    ip6: str | None
    ifname: str = "eth0"

    def prev_result(self, version="1.0.0") -> dict:
        ips = [{"address": f"{self.ip4}/24", "gateway": NODE_V4, "interface": 2}]
        if self.ip6:
            ips.append({"address": f"{self.ip6}/64", "gateway": NODE_V6, "interface": 2})
        r = {"cniVersion": version,
             "interfaces": [{"name": BR}, {"name": self.host_veth},
                            {"name": self.ifname, "sandbox": self.ns.path}],
             "ips": ips}
        if version.startswith("0."):
            for ip in r["ips"]:
                ip["version"] = "6" if ":" in ip["address"] else "4"
        return r


def add_pod(node, pod_ns, n: int, v6=True, host_veth=None) -> Pod:
    host = host_veth or f"vp{n}{pod_ns.name[-4:]}".replace("-", "")[:15]
    sh(node, "ip", "link", "add", host, "type", "veth", "peer", "name", "eth0",
       "netns", pod_ns.name)
    sh(node, "ip", "link", "set", host, "master", BR, "up")
    # as the bridge plugin's hairpinMode: with br_netfilter loaded, a hairpinned
    # DNAT is bridged straight back out of the port it came in on
    sh(node, "bridge", "link", "set", "dev", host, "hairpin", "on")
    ip4 = f"10.77.0.{10 + n}"
    ip6 = f"fd77::{10 + n:x}" if v6 else None
    sh(pod_ns, "ip", "addr", "add", f"{ip4}/24", "dev", "eth0")
    if ip6:
        sh(pod_ns, "ip", "-6", "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
    sh(pod_ns, "ip", "link", "set", "eth0", "up")
    sh(pod_ns, "ip", "route", "add", "default", "via", NODE_V4)
    if ip6:
        sh(pod_ns, "ip", "-6", "route", "add", "default", "via", NODE_V6)
    return Pod(pod_ns, host, ip4, ip6)


def conf(plugin: str, net: str, version="1.0.0", prev=None, runtime=None, **extra) -> dict:
    c = {"cniVersion": version, "name": net, "type": plugin}
    if prev is not None:
        c["prevResult"] = prev
    if runtime is not None:
        c["runtimeConfig"] = runtime
    c.update(extra)
    return c


def env(command, cid="c1", netns="", ifname="eth0") -> dict:
    e = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname,
         "CNI_PATH": "/usr/lib/cni"}
    if netns:
        e["CNI_NETNS"] = netns
    return e


def call(node, plugin, command, config, cid="c1", netns="", ifname="eth0"):
    """Run a plugin in-process with ``node`` as its host namespace -> (parsed out, rc)."""
    with cns.entered(node.path):
        out, rc = dispatch(plugin, env(command, cid, netns, ifname), json.dumps(config).encode())
    return (json.loads(out) if out else None), rc


def exec_plugin(node, plugin, command, config, cid="c1", netns="", ifname="eth0",
                exe=None):
    """Exec a plugin process inside ``node`` (ours via the launcher, or a reference binary)."""
    argv = [exe] if exe else [sys.executable, "-c",
                              f"from cninode.launcher import main; main({plugin!r})"]
    e = dict(os.environ, **env(command, cid, netns, ifname))
    e["PYTHONPATH"] = REPO
    p = subprocess.run(["ip", "netns", "exec", node.name, *argv], input=json.dumps(config),
                       capture_output=True, text=True, env=e, timeout=120)
    return (json.loads(p.stdout) if p.stdout.strip() else None), p.returncode, p.stderr


SERVER = r"""
import socket, sys, threading
port = int(sys.argv[2])
name = sys.argv[3].encode()
def sock(kind):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    return s
def peer(a):
    return a[0].removeprefix("::ffff:").encode()
t = sock(socket.SOCK_STREAM); t.listen(64)
u = sock(socket.SOCK_DGRAM)
def tcp():
    while True:
        c, a = t.accept()
        c.sendall(name + b" " + peer(a)); c.close()
def udp():
    while True:
        d, a = u.recvfrom(100)
        u.sendto(name + b" " + peer(a), a)
threading.Thread(target=tcp, daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

CLIENT = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET
proto, host, port, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
try:
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=wait)
        print(s.recv(100).decode())
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(wait)
        s.sendto(b"hi", (host, port)); print(s.recv(100).decode())
except OSError as e:
    print("ERR", e); sys.exit(1)
"""


class Server:
    """A TCP+UDP responder in a namespace that answers '<name> <peer address>'."""

    def __init__(self, ns, port, name="pod", family=4):
        self.p = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c", SERVER,
                                   str(family), str(port), name], stdout=subprocess.PIPE,
                                  text=True)
        assert self.p.stdout.readline().strip() == "ready"

    def stop(self):
        self.p.kill()
        self.p.wait()


def reach(ns, proto, host, port, wait: float = 5.0) -> str:
    """The server's answer ('<name> <peer address seen>'), or '' when unreachable."""
    p = ns.run(sys.executable, "-c", CLIENT, proto, host, str(port), str(wait), check=False,
               timeout=wait + 20)
    return p.stdout.strip() if p.returncode == 0 else ""


def nft_json(ns, family, table):
    p = ns.run("nft", "-j", "list", "table", family, table, check=False)
    if p.returncode != 0:
        return None
    return [o for o in json.loads(p.stdout)["nftables"] if "metainfo" not in o]


def rules(ns, family, table="cnilab-portmap"):
    return [o["rule"] for o in (nft_json(ns, family, table) or []) if "rule" in o]


def wait_for(pred, timeout=5.0, step=0.05):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()
