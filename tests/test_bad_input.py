"""Every plugin against malformed environments and configurations.

A corpus (built below: env, stdin, shared keys, each plugin's own keys) runs
in-process through ``plugins.core.skel.dispatch`` inside a throwaway node
namespace that already holds a live attachment (bridge + portmap + bandwidth
through the runtime), plus a sample through the installed executables and
hypothesis properties over config shapes and names. Every bad input must
give: a CNI error object on stdout with the expected code and a message
naming what is wrong, a non-zero exit, no traceback on stdout, and no change
on the node (links, addresses, routes, rules, nftables, qdiscs, sysctls) nor
in the IPAM data dir.
"""
from __future__ import annotations

import copy
import json
import os
import random
import subprocess
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from netlab.base import namespaces as nsutil
from cniruntime.runtime import Runtime
from plugins.core import netns as cns
from plugins.core.skel import dispatch
from tests import node_state
from tests.conftest import unique_name

PLUGINS = ("bridge", "host-local", "portmap", "bandwidth", "vxlan", "firewall", "tuning")
NET = "badin"
BR = "cnilab-bad0"
SUBNET = "10.93.0.0/24"
CID = "live0"
KNOWN_CODES = {1, 2, 3, 4, 5, 6, 7, 8, 11, 50, 51, 100, 101, 102, 103, 104, 105}
MAX_REPLY = 8192

# ---- the lab: a node with one live attachment ---------------------------------------


@dataclass
class Lab:
    node: str
    node_path: str
    pod_path: str
    spare_path: str          # an empty pod namespace (a valid CNI_NETNS, nothing in it)
    data_dir: str
    bin_dir: str
    prev: dict = field(default_factory=dict)

    def state(self) -> dict:
        # IPv6 link-local addresses/routes appear on the live veth whenever the kernel
        # gets to it (DAD): not a change any call made
        s = {k: [x for x in v if "fe80:" not in str(x)] if isinstance(v, list) else v
             for k, v in node_state.state(self.node).items()}
        s["files"] = sorted(f"{k} {v}" for k, v in node_state.files(self.data_dir).items()
                            if not k.endswith("/lock"))
        spare = node_state.rootns_guard.snapshot(os.path.basename(self.spare_path))
        s["pod"] = [f"{k} {x}" for k, v in spare.items() for x in v if "fe80:" not in str(x)]
        return s


@pytest.fixture(scope="module")
def lab(tmp_path_factory, installed_plugins):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    made = []
    try:
        names = {}
        for role in ("node", "pod", "spare"):
            names[role] = unique_name("bad" + role[:3])
            nsutil.create(names[role])
            made.append(names[role])
        tmp = tmp_path_factory.mktemp("badinput")
        lab = Lab(node=names["node"], node_path=nsutil.path(names["node"]),
                  pod_path=nsutil.path(names["pod"]), spare_path=nsutil.path(names["spare"]),
                  data_dir=str(tmp / "ipam"), bin_dir=installed_plugins)
        for argv in (("link", "add", "ul0", "type", "veth", "peer", "name", "ul0p"),
                     ("addr", "add", "10.94.0.1/24", "dev", "ul0"), ("link", "set", "ul0", "up")):
            subprocess.run(["ip", "-n", lab.node, *argv], check=True, capture_output=True)
        rt = Runtime([installed_plugins], cache_dir=str(tmp / "cache"),
                     host_netns=lab.node_path, env=dict(os.environ, CNILAB_AGENT="off"))
        net = {"cniVersion": "1.0.0", "name": NET, "plugins": [
            base_conf("bridge", lab), {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}}]}
        for p in net["plugins"][1:]:
            p.pop("name", None)
        net["plugins"][0] = {k: v for k, v in net["plugins"][0].items()
                             if k not in ("name", "cniVersion")}
        lab.prev = rt.add(net, lab.pod_path, CID, "eth0", capability_args={
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 1_000_000,
                          "egressRate": 10_000_000, "egressBurst": 1_000_000}})
        yield lab
        rt.delete(net, lab.pod_path, CID, "eth0")
    finally:
        for n in reversed(made):
            nsutil.delete(n)


def base_conf(plugin: str, lab: Lab) -> dict:
    """A valid config for ``plugin`` (the corpus breaks one thing at a time)."""
    ipam = {"type": "host-local", "dataDir": lab.data_dir, "ranges": [[{"subnet": SUBNET}]]}
    prev = lab.prev or {"cniVersion": "1.0.0", "ips": [{"address": "10.93.0.2/24"}]}
    common = {"cniVersion": "1.0.0", "name": NET, "type": plugin}
    if plugin == "bridge":
        return dict(common, bridge=BR, isGateway=True, ipam=ipam)
    if plugin == "host-local":
        return dict(common, type="bridge", ipam=ipam)
    if plugin == "portmap":
        return dict(common, prevResult=prev, capabilities={"portMappings": True},
                    runtimeConfig={"portMappings": [{"hostPort": 9090, "containerPort": 80}]})
    if plugin == "bandwidth":
        return dict(common, prevResult=prev, capabilities={"bandwidth": True},
                    runtimeConfig={"bandwidth": {"ingressRate": 1000000,
                                                 "ingressBurst": 100000}})
    if plugin == "vxlan":
        return dict(common, vni=4093, underlayInterface="ul0", peers=["10.94.0.2"], ipam=ipam)
    if plugin == "firewall":
        return dict(common, prevResult=prev, backend="", ingressPolicy="same-bridge")
    if plugin == "tuning":
        return dict(common, prevResult=prev, capabilities={"mac": True}, mtu=1400,
                    sysctl={"net.ipv4.conf.IFNAME.arp_notify": "1"})
    raise ValueError(plugin)


def base_env(lab: Lab, command: str = "ADD") -> dict:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": "bad1", "CNI_NETNS": lab.spare_path,
            "CNI_IFNAME": "eth0", "CNI_PATH": lab.bin_dir, "CNILAB_AGENT": "off"}


# ---- the corpus ------------------------------------------------------------------------

DROP = object()


@dataclass
class Case:
    label: str
    code: int
    mention: str = ""                           # must appear in msg or details
    env: dict = field(default_factory=dict)     # overrides; DROP removes
    conf: dict = field(default_factory=dict)    # top-level overrides; DROP removes
    path: tuple = ()                            # set conf[path...] = value (nested)
    value: object = None
    stdin: bytes | None = None                  # raw stdin replaces the config
    plugins: tuple = PLUGINS


def _garbage(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def env_cases() -> list[Case]:
    out = [Case("no CNI_COMMAND", 4, "CNI_COMMAND", env={"CNI_COMMAND": DROP}),
           Case("empty CNI_COMMAND", 4, "CNI_COMMAND", env={"CNI_COMMAND": ""}),
           Case("lowercase command", 4, "CNI_COMMAND", env={"CNI_COMMAND": "add"}),
           Case("bogus command", 4, "CNI_COMMAND", env={"CNI_COMMAND": "EXPLODE"}),
           Case("relative netns", 4, "CNI_NETNS", env={"CNI_NETNS": "var/run/netns/x"}),
           Case("malformed CNI_ARGS", 4, "CNI_ARGS", env={"CNI_ARGS": "novalue"}),
           Case("CNI_ARGS value with '='", 4, "CNI_ARGS", env={"CNI_ARGS": "A=x=y"}),
           Case("CNI_ARGS empty pair", 4, "CNI_ARGS", env={"CNI_ARGS": "IgnoreUnknown=1;"}),
           Case("CNI_ARGS bad IgnoreUnknown", 4, "IgnoreUnknown",
                env={"CNI_ARGS": "IgnoreUnknown=yes;NOPE=1"}, plugins=("bridge", "host-local", "vxlan")),
           # Go's LoadArgs: "=v" is a pair with an empty key, i.e. an unknown key
           Case("CNI_ARGS empty key", 4, "CNI_ARGS", env={"CNI_ARGS": "=v"},
                plugins=("bridge", "host-local", "vxlan"))]
    for var in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"):
        out.append(Case(f"ADD without {var}", 4, var, env={var: DROP}))
    out.append(Case("DEL without CNI_IFNAME", 4, "CNI_IFNAME",
                    env={"CNI_COMMAND": "DEL", "CNI_IFNAME": DROP}))
    out.append(Case("GC without CNI_PATH", 4, "CNI_PATH",
                    env={"CNI_COMMAND": "GC", "CNI_PATH": DROP}, conf={"cniVersion": "1.1.0"}))
    for cid in ("../../etc/passwd", "/etc/cron.d/x", "a/../../b", "..", ".", "-rf",
                "a b", "a;reboot", "$(reboot)", "a\nb", "é", "x" * 100_000 + "/"):
        out.append(Case(f"container id {cid[:20]!r}", 4, "CNI_CONTAINERID",
                        env={"CNI_CONTAINERID": cid}))
        out.append(Case(f"DEL container id {cid[:20]!r}", 4, "CNI_CONTAINERID",
                        env={"CNI_COMMAND": "DEL", "CNI_CONTAINERID": cid}))
    for ifn in ("../x", "a/b", "/", ".", "..", "x" * 16, "eth 0", "eth:0", "eth\t0",
                "eth\x000", "eth0\n"):
        out.append(Case(f"ifname {ifn!r}", 4, "CNI_IFNAME", env={"CNI_IFNAME": ifn}))
    out.append(Case("unknown CNI_ARGS key", 4, "NOPE", env={"CNI_ARGS": "NOPE=1"},
                    plugins=("bridge", "host-local", "vxlan", "tuning")))
    out.append(Case("CNI_NETNS is the plugin's own", 8, "own", env={"CNI_NETNS": "<node>"}))
    out.append(Case("CNI_NETNS missing namespace", 3, "/var/run/netns/cnilab-no-such",
                    env={"CNI_NETNS": "/var/run/netns/cnilab-no-such-ns"},
                    plugins=("bridge", "vxlan")))
    for path in ("/etc/hostname", "/tmp", "/dev/null", "/proc/self/ns/mnt"):
        out.append(Case(f"CNI_NETNS {path} (not a netns)", 3, path, env={"CNI_NETNS": path},
                        plugins=("bridge", "bandwidth", "vxlan")))
    out.append(Case("CHECK with cniVersion 0.3.1", 1, "CHECK",
                    env={"CNI_COMMAND": "CHECK"}, conf={"cniVersion": "0.3.1"}))
    out.append(Case("GC with cniVersion 1.0.0", 1, "GC", env={"CNI_COMMAND": "GC"}))
    out.append(Case("STATUS with cniVersion 1.0.0", 1, "STATUS",
                    env={"CNI_COMMAND": "STATUS"}))
    return out


def stdin_cases() -> list[Case]:
    return [Case("empty stdin", 6, "configuration", stdin=b""),
            Case("blank stdin", 6, "configuration", stdin=b" \n\t "),
            Case("truncated JSON", 6, "JSON", stdin=b'{"cniVersion": "1.0.0", "name": '),
            Case("binary garbage", 6, "JSON", stdin=_garbage(4096, 1)),
            Case("binary garbage 2", 6, "JSON", stdin=b"\xff\xfe\x00{" + _garbage(300, 2)),
            # Go coerces invalid UTF-8 inside strings to U+FFFD and decodes on (gojson rule 6)
            Case("invalid UTF-8 in a string", 7, "cniVersion", stdin=b'{"name": "\xe9\xff"}'),
            Case("invalid UTF-8 outside a string", 6, "JSON", stdin=b'{"name": 1\xff}'),
            Case("JSON array", 6, "object", stdin=b"[1, 2, 3]"),
            Case("JSON string", 6, "object", stdin=b'"bridge"'),
            Case("JSON null", 6, "object", stdin=b"null"),
            Case("deep nesting", 6, "JSON", stdin=b"[" * 200_000),
            Case("deep objects", 6, "JSON", stdin=b'{"a":' * 100_000),
            Case("huge junk (8 MiB)", 6, "JSON", stdin=b"x" * (8 << 20)),
            Case("huge integer", 6, "JSON", stdin=b'{"cniVersion":"1.0.0","mtu":' + b"9" * 6000
                 + b"}"),
            Case("duplicate-key garbage", 6, "JSON", stdin=b'{"a":1,"a":}')]


def shared_cases() -> list[Case]:
    out = [Case("no cniVersion", 7, "cniVersion", conf={"cniVersion": DROP}),
           Case("empty cniVersion", 7, "cniVersion", conf={"cniVersion": ""}),
           Case("numeric cniVersion", 7, "cniVersion", conf={"cniVersion": 1.0}),
           Case("unknown cniVersion", 1, "9.9.9", conf={"cniVersion": "9.9.9"}),
           Case("malformed cniVersion", 1, "1.0.0.0", conf={"cniVersion": "1.0.0.0"}),
           Case("no name", 7, "name", conf={"name": DROP}),
           Case("numeric name", 7, "name", conf={"name": 42}),
           Case("name list", 7, "name", conf={"name": ["a"]}),
           Case("huge name with slash", 7, "name", conf={"name": "a/" * 500_000}),
           Case("type not a string", 7, "type", conf={"type": 5}),
           Case("dns not an object", 7, "dns", conf={"dns": [1]}),
           Case("dns.nameservers wrong", 7, "nameservers", conf={"dns": {"nameservers": "x"}}),
           Case("runtimeConfig a list", 7, "runtimeConfig", conf={"runtimeConfig": []}),
           Case("capabilities a list", 7, "capabilities", conf={"capabilities": []}),
           Case("args a number", 7, "args", conf={"args": 5}),
           Case("prevResult a list", 6, "prevResult", conf={"prevResult": [1]}),
           Case("prevResult ips wrong", 6, "ips", conf={"prevResult": {"ips": "x"}}),
           Case("prevResult bad address", 6, "address",
                conf={"prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "nope"}]}})]
    for name in ("../../etc", "a/b", "..", ".", "/abs", "-x", "a b", "a\x00b", "ne\u0301t"):
        out.append(Case(f"network name {name!r}", 7, "network name", conf={"name": name}))
    for t in ("../../bin/sh", "/bin/sh", "..", ".", "a/b"):
        out.append(Case(f"ipam.type {t!r}", 7, "ipam.type", path=("ipam", "type"), value=t,
                        plugins=("bridge", "host-local", "vxlan")))
    out.append(Case("ipam a string", 7, "ipam", conf={"ipam": "host-local"},
                    plugins=("bridge", "host-local", "vxlan")))
    out.append(Case("ipam.type missing", 7, "ipam.type", path=("ipam", "type"), value=DROP,
                    plugins=("bridge", "host-local", "vxlan")))
    return out


def plugin_cases() -> list[Case]:
    B, H, P, W, V = ("bridge",), ("host-local",), ("portmap",), ("bandwidth",), ("vxlan",)
    out = []
    for v in ("../x", "x" * 16, "a b", "a/b", 5):
        out.append(Case(f"bridge name {v!r}", 7, "bridge", conf={"bridge": v}, plugins=B))
    for v in (-1, 1, 67, 70000, "1500", True, 1.5):
        out.append(Case(f"bridge mtu {v!r}", 7, "mtu", conf={"mtu": v}, plugins=B))
    out += [Case("vlan 5000", 7, "vlan", conf={"vlan": 5000}, plugins=B),
            Case("isGateway a string", 7, "isGateway", conf={"isGateway": "yes"}, plugins=B),
            Case("hairpin and promisc", 7, "hairpinMode",
                 conf={"hairpinMode": True, "promiscMode": True}, plugins=B),
            Case("ipMasqBackend iptables", 7, "ipMasqBackend",
                 conf={"ipMasqBackend": "iptables"}, plugins=B),
            Case("runtimeConfig.mac garbage", 7, "mac", conf={"runtimeConfig": {"mac": "zz"}},
                 plugins=B),
            Case("multicast mac", 7, "mac",
                 conf={"runtimeConfig": {"mac": "01:00:5e:00:00:01"}}, plugins=B),
            Case("CNI_ARGS MAC garbage", 7, "MAC", env={"CNI_ARGS": "MAC=nope"}, plugins=B),
            Case("vlanTrunk min>max", 7, "minID",
                 conf={"vlanTrunk": [{"minID": 10, "maxID": 5}]}, plugins=B)]
    BH = ("bridge", "host-local")
    for key, v, mention in (("subnet", "10.0.0.0/33", "subnet"), ("subnet", "10.0.0.1/32", ""),
                            ("subnet", 5, "subnet"), ("subnet", "nope", "subnet"),
                            ("rangeStart", "10.93.1.5", "rangeStart"),
                            ("gateway", "nope", "gateway"), ("rangeEnd", "::1", "rangeEnd")):
        out.append(Case(f"range {key}={v!r}", 7, mention, path=("ipam", "ranges"),
                        value=[[{"subnet": SUBNET, key: v} if key != "subnet" else {key: v}]],
                        plugins=BH))
    out += [Case("ranges a string", 7, "ranges", path=("ipam", "ranges"), value="x",
                 plugins=BH),
            Case("range set not a list", 7, "ranges", path=("ipam", "ranges"),
                 value=[{"subnet": SUBNET}], plugins=BH),
            Case("overlapping range sets", 7, "overlap", path=("ipam", "ranges"),
                 value=[[{"subnet": SUBNET}], [{"subnet": "10.93.0.128/25"}]], plugins=BH),
            Case("no ranges", 7, "ranges", path=("ipam", "ranges"), value=DROP, plugins=BH),
            Case("route dst garbage", 7, "routes", path=("ipam", "routes"),
                 value=[{"dst": "nope"}], plugins=BH),
            Case("route gw a number", 7, "gw", path=("ipam", "routes"),
                 value=[{"dst": "0.0.0.0/0", "gw": 5}], plugins=BH),
            Case("dataDir relative", 7, "dataDir", path=("ipam", "dataDir"),
                 value="var/lib/x", plugins=BH),
            Case("dataDir a number", 7, "dataDir", path=("ipam", "dataDir"), value=5,
                 plugins=BH),
            Case("resolvConf a number", 7, "resolvConf", path=("ipam", "resolvConf"), value=5,
                 plugins=BH),
            Case("CNI_ARGS IP garbage", 4, "IP", env={"CNI_ARGS": "IP=999.1.1.1"}, plugins=BH),
            Case("args.cni.ips garbage", 7, "ips", conf={"args": {"cni": {"ips": ["x"]}}},
                 plugins=BH),
            Case("runtimeConfig.ips not a list", 7, "ips",
                 conf={"runtimeConfig": {"ips": "10.93.0.9"}}, plugins=H)]
    for v in (0, 65536, -1, "80", None, 80.5):
        m = {"containerPort": 80}
        if v is not None:
            m["hostPort"] = v
        out.append(Case(f"hostPort {v!r}", 7, "hostPort",
                        conf={"runtimeConfig": {"portMappings": [m]}}, plugins=P))
    out += [Case("containerPort missing", 7, "containerPort",
                 conf={"runtimeConfig": {"portMappings": [{"hostPort": 80}]}}, plugins=P),
            Case("protocol icmp", 7, "protocol", conf={"runtimeConfig": {"portMappings": [
                {"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]}}, plugins=P),
            Case("hostIP garbage", 7, "hostIP", conf={"runtimeConfig": {"portMappings": [
                {"hostPort": 80, "containerPort": 80, "hostIP": "nope"}]}}, plugins=P),
            Case("portMappings an object", 7, "portMappings",
                 conf={"runtimeConfig": {"portMappings": {"a": 1}}}, plugins=P),
            Case("duplicate mappings", 7, "duplicates", conf={"runtimeConfig": {"portMappings": [
                {"hostPort": 80, "containerPort": 80}, {"hostPort": 80, "containerPort": 81}]}},
                plugins=P),
            Case("markMasqBit 32", 7, "markMasqBit", conf={"markMasqBit": 32}, plugins=P),
            Case("backend iptables", 7, "backend", conf={"backend": "iptables"}, plugins=P),
            Case("conditions with ;", 7, "conditionsV4",
                 conf={"conditionsV4": ["ip saddr 1.2.3.4; flush ruleset"]}, plugins=P),
            Case("conditions with newline", 7, "conditionsV4",
                 conf={"conditionsV4": ["ip saddr 1.2.3.4\nflush ruleset"]}, plugins=P),
            Case("conditions numbers", 7, "conditionsV4", conf={"conditionsV4": [5]},
                 plugins=P),
            Case("snat a string", 7, "snat", conf={"snat": "yes"}, plugins=P),
            Case("portmap without prevResult", 7, "prevResult", conf={"prevResult": DROP},
                 plugins=P + W)]
    for key, v in (("ingressRate", -1), ("ingressRate", "1000"), ("egressRate", 10 ** 20),
                   ("ingressBurst", True)):
        out.append(Case(f"bandwidth {key}={v!r}", 7, key,
                        conf={"runtimeConfig": {"bandwidth": {key: v}}}, plugins=W))
    out += [Case("rate without burst", 7, "Burst",
                 conf={"runtimeConfig": {"bandwidth": {"egressRate": 1000000}}}, plugins=W),
            Case("bandwidth a list", 7, "bandwidth", conf={"runtimeConfig": {"bandwidth": []}},
                 plugins=W),
            Case("top-level rate without burst", 7, "Burst", conf={"ingressRate": 1000000},
                 plugins=W)]
    for key, v in (("vni", 0), ("vni", 1 << 24), ("vni", "1"), ("vni", DROP), ("port", 0),
                   ("port", 70000), ("peers", "1.2.3.4"), ("peers", ["nope"]),
                   ("peers", ["224.0.0.1"]), ("peers", ["10.0.0.1", "fd00::1"]),
                   ("group", "10.0.0.1"), ("mtu", 10), ("localIP", "127.0.0.1"),
                   ("underlayInterface", "../x"), ("bridge", "vxlan4093"), ("learning", "no")):
        out.append(Case(f"vxlan {key}={v!r}", 7, key, conf={key: v}, plugins=V))
    F, T = ("firewall",), ("tuning",)
    for key, v in (("backend", "firewalld"), ("backend", "pf"), ("ingressPolicy", "closed"),
                   ("ingressPolicy", 1), ("iptablesAdminChainName", "a b"),
                   ("iptablesAdminChainName", "x" * 29), ("firewalldZone", [])):
        out.append(Case(f"firewall {key}={v!r}", 7, key, conf={key: v}, plugins=F))
    out.append(Case("isolation without a bridge", 7, "bridge", conf={"prevResult": {
        "cniVersion": "1.0.0", "ips": [{"address": "10.93.0.2/24"}]}}, plugins=F))
    for key, v in (("mtu", 50), ("mtu", 70000), ("mtu", "1400"), ("txQLen", -1),
                   ("promisc", "yes"), ("allmulti", 1), ("mac", "zz"),
                   ("mac", "01:00:5e:00:00:01"), ("dataDir", "run/x"), ("sysctl", ["x"])):
        out.append(Case(f"tuning {key}={v!r}", 7, key, conf={key: v}, plugins=T))
    for key in ("kernel.hostname", "net..x", "net/ipv4/ip_forward", "net.ipv4.conf.IFNAME.x/..",
                "net.core.netdev_max_backlog", "net.ipv4.conf.nosuch0.forwarding"):
        out.append(Case(f"tuning sysctl {key!r}", 7, "sysctl", conf={"sysctl": {key: "1"}},
                        plugins=T))
    out += [Case("tuning sysctl value a number", 7, "sysctl",
                 conf={"sysctl": {"net.core.somaxconn": 5}}, plugins=T),
            Case("tuning duplicated sysctl", 7, "sysctl", stdin=(
                b'{"cniVersion":"1.0.0","name":"badin","type":"tuning","prevResult":'
                b'{"cniVersion":"1.0.0","ips":[{"address":"10.93.0.2/24"}]},"sysctl":'
                b'{"net.core.somaxconn":"1","net.core.somaxconn":"2"}}'), plugins=T),
            Case("tuning runtimeConfig.mac garbage", 7, "mac",
                 conf={"runtimeConfig": {"mac": "1:2"}}, plugins=T),
            Case("tuning CNI_ARGS MAC garbage", 7, "MAC", env={"CNI_ARGS": "MAC=nope"},
                 plugins=T),
            Case("chained without prevResult", 7, "prevResult", conf={"prevResult": DROP},
                 plugins=F + T)]
    return out


ALL_CASES = env_cases() + stdin_cases() + shared_cases() + plugin_cases()


def _set_path(conf: dict, path: tuple, value: object) -> None:
    d = conf
    for k in path[:-1]:
        d = d.setdefault(k, {})
    if value is DROP:
        d.pop(path[-1], None)
    else:
        d[path[-1]] = value


def build(case: Case, plugin: str, lab: Lab) -> tuple[dict, bytes]:
    env = base_env(lab)
    for k, v in case.env.items():
        if v is DROP:
            env.pop(k, None)
        else:
            env[k] = lab.node_path if v == "<node>" else v
    if case.stdin is not None:
        return env, case.stdin
    conf = copy.deepcopy(base_conf(plugin, lab))
    for k, v in case.conf.items():
        if v is DROP:
            conf.pop(k, None)
        else:
            conf[k] = v
    if case.path:
        _set_path(conf, case.path, case.value)
    return env, json.dumps(conf).encode()


def run_in_node(lab: Lab, plugin: str, env: dict, stdin: bytes) -> tuple[str, int]:
    with cns.entered(lab.node_path):
        return dispatch(plugin, env, stdin)


def check_error(out: str, rc: int, code: int | None = None, mention: str = "") -> dict:
    """The reply is one CNI error object with a useful message."""
    assert rc != 0, out[:500]
    assert "Traceback" not in out
    assert len(out) <= MAX_REPLY, f"{len(out)} bytes of error: {out[:300]}"
    obj = json.loads(out)
    assert set(obj) <= {"cniVersion", "code", "msg", "details"}, obj
    assert isinstance(obj["code"], int) and isinstance(obj["msg"], str) and obj["msg"].strip()
    assert obj["code"] in KNOWN_CODES, obj          # never 999 (an internal error)
    if code is not None:
        assert obj["code"] == code, obj
    if mention:
        text = obj["msg"] + " " + obj.get("details", "")
        assert mention.lower() in text.lower(), obj
    return obj


pytestmark = [pytest.mark.root]


# ---- the tests -------------------------------------------------------------------------

def test_corpus_is_broad():
    assert len(ALL_CASES) >= 150
    assert sum(len(c.plugins) for c in ALL_CASES) >= 450


@pytest.mark.parametrize("plugin", PLUGINS)
def test_corpus_in_process(lab, plugin):
    """Every case for this plugin: the right error, and the node exactly as before."""
    before = lab.state()
    tried = failures = 0
    problems = []
    for case in ALL_CASES:
        if plugin not in case.plugins:
            continue
        env, stdin = build(case, plugin, lab)
        out, rc = run_in_node(lab, plugin, env, stdin)
        tried += 1
        try:
            check_error(out, rc, case.code, case.mention)
        except AssertionError as e:
            failures += 1
            problems.append(f"{case.label}: {e}".splitlines()[0][:400])
    after = lab.state()
    assert not problems, f"{failures}/{tried} cases:\n" + "\n".join(problems)
    assert node_state.diff(before, after) == []
    assert tried >= 90


def _exec(lab: Lab, plugin: str, env: dict, stdin: bytes) -> subprocess.CompletedProcess:
    exe = os.path.join(lab.bin_dir, plugin)
    return subprocess.run(["nsenter", f"--net={lab.node_path}", exe], input=stdin,
                          env=env, capture_output=True, timeout=60, cwd="/")


SAMPLE = ("no CNI_COMMAND", "bogus command", "ADD without CNI_NETNS", "binary garbage",
          "huge junk (8 MiB)", "deep nesting", "unknown cniVersion", "network name '../../etc'",
          "ipam.type '../../bin/sh'", "container id '../../etc/passwd'", "ifname '../x'",
          "CNI_NETNS is the plugin's own", "hostPort 0", "vxlan vni=0", "bridge mtu 70000",
          "bandwidth ingressRate=-1")


def test_sample_through_installed_executables(lab):
    before = lab.state()
    by_label = {c.label: c for c in ALL_CASES}
    tried = 0
    for label in SAMPLE:
        case = by_label[label]
        for plugin in case.plugins[:2]:
            env, stdin = build(case, plugin, lab)
            env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
            p = _exec(lab, plugin, env, stdin)
            out = p.stdout.decode(errors="replace")
            check_error(out, p.returncode, case.code, case.mention)
            assert b"Traceback" not in p.stderr, p.stderr[-1000:]
            tried += 1
    assert tried >= 20
    assert node_state.diff(before, lab.state()) == []


def test_version_ignores_dummy_env(lab):
    """libcni's GetVersionInfo (podman, containerd's validation) sends these."""
    for plugin in PLUGINS:
        env = {"CNI_COMMAND": "VERSION", "CNI_NETNS": "dummy", "CNI_IFNAME": "dummy",
               "CNI_PATH": "dummy", "CNILAB_AGENT": "off"}
        p = _exec(lab, plugin, env, b'{"cniVersion":"1.0.0"}')
        assert p.returncode == 0, p.stdout
        assert "1.1.0" in json.loads(p.stdout)["supportedVersions"]


# ---- properties ------------------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                         st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=20), st.sampled_from(["", "../..", "/etc", "eth0",
                                                                "10.93.0.5", "1.0.0"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)

KEYS = {
    "bridge": ["bridge", "mtu", "isGateway", "isDefaultGateway", "ipMasq", "hairpinMode",
               "promiscMode", "vlan", "vlanTrunk", "enabledad", "macspoofchk", "ipam",
               "runtimeConfig", "args", "dns", "forceAddress", "portIsolation"],
    "host-local": ["ipam", "runtimeConfig", "args"],
    "portmap": ["snat", "masqAll", "markMasqBit", "conditionsV4", "conditionsV6", "backend",
                "runtimeConfig", "prevResult"],
    "bandwidth": ["ingressRate", "ingressBurst", "egressRate", "egressBurst", "runtimeConfig",
                  "prevResult"],
    "vxlan": ["vni", "port", "peers", "group", "localIP", "underlayInterface", "bridge", "mtu",
              "learning", "isGateway", "ipMasq", "ipam"],
    "firewall": ["backend", "ingressPolicy", "iptablesAdminChainName", "firewalldZone",
                 "prevResult"],
    "tuning": ["sysctl", "mac", "mtu", "promisc", "allmulti", "txQLen", "dataDir",
               "runtimeConfig", "args", "prevResult"],
}
SHARED = ["cniVersion", "name", "type", "dns", "capabilities", "prevResult"]
IPAM_KEYS = ["type", "ranges", "subnet", "rangeStart", "gateway", "routes", "dataDir",
             "resolvConf"]


def _shape(plugin: str):
    top = st.dictionaries(st.sampled_from(KEYS[plugin] + SHARED), json_values, min_size=1,
                          max_size=3)
    ipam = st.dictionaries(st.sampled_from(IPAM_KEYS), json_values, max_size=2)
    return st.tuples(top, ipam, st.sampled_from(["ADD", "DEL", "CHECK"]))


def _state_cheap(lab: Lab) -> dict:
    return {"links": node_state.rootns_guard.snapshot(lab.node)["links"],
            "rules": node_state.ruleset(lab.node),
            "files": node_state.files(lab.data_dir),
            "pod": node_state.rootns_guard.snapshot(os.path.basename(lab.spare_path))["links"]}


@pytest.mark.slow
@pytest.mark.parametrize("plugin", PLUGINS)
def test_property_config_shapes(lab, plugin):
    """Random values at the plugin's own keys and the shared keys: a well-formed reply
    (a result, or an error object with a known code: never an internal error) and,
    when the call fails, nothing changed on the node. A call that succeeds is undone
    with DEL, as a runtime would."""
    full_before = lab.state()
    seen = {"ok": 0, "err": 0}

    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(_shape(plugin))
    def prop(shape):
        top, ipam_over, command = shape
        conf = copy.deepcopy(base_conf(plugin, lab))
        conf.update(top)
        if "ipam" in conf and isinstance(conf["ipam"], dict) and ipam_over:
            conf["ipam"] = dict(conf["ipam"], **ipam_over)
        ipam = conf.get("ipam")
        if isinstance(ipam, dict):
            # never the machine's default /var/lib/cni/networks (an empty or missing
            # dataDir means that) nor any absolute path: only invalid values stay
            d = ipam.get("dataDir")
            if not d or (isinstance(d, str) and d.startswith("/")):
                conf["ipam"] = dict(ipam, dataDir=lab.data_dir)
        # never the live attachment's bridge/ports: ours would collide by design
        env = base_env(lab, command)
        stdin = json.dumps(conf).encode()
        before = _state_cheap(lab)
        out, rc = run_in_node(lab, plugin, env, stdin)
        assert "Traceback" not in out
        if rc == 0:
            seen["ok"] += 1
            if command == "ADD":
                json.loads(out)                      # a result
                out2, rc2 = run_in_node(lab, plugin, dict(env, CNI_COMMAND="DEL"), stdin)
                assert rc2 == 0, out2
            return
        seen["err"] += 1
        check_error(out, rc)
        assert _state_cheap(lab) == before, (conf, out)

    prop()
    assert seen["err"] > 0
    # what a successful ADD+DEL may leave by design: a bridge it created, forwarding on
    after = lab.state()
    changes = [c for c in node_state.diff(full_before, after)
               if not _by_design(c)]
    assert changes == [], changes


def _by_design(change: str) -> bool:
    """State that a successful ADD leaves after DEL, as the reference does: the bridge
    (and its addresses/routes/sysctls), the shared nftables tables and chains."""
    if "last_reserved_ip" in change:
        return True                 # ADD records the last address handed out
    if "added" not in change:
        return False
    return any(s in change for s in ("'cni0'", "cni0 ", BR, "cnilab", "vxbr", "vxlan",
                                     "ip_forward", "forwarding", "addrs: added",
                                     "routes: added", "ruleset: added", "last_reserved_ip"))


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(cid=st.text(max_size=30), ifname=st.text(max_size=20), name=st.text(max_size=30))
def test_property_names_never_reach_the_system_unvalidated(cid, ifname, name):
    """Any container ID / ifname / network name: valid per the spec's rules, or a code
    4/7 error naming it, before any plugin module is imported."""
    from plugins.core import names
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": "/nonexistent/ns",
           "CNI_IFNAME": ifname, "CNI_PATH": "/nonexistent"}
    if "\x00" in cid + ifname:
        return                               # cannot be in a real environment
    conf = json.dumps({"cniVersion": "1.0.0", "name": name, "type": "bridge"}).encode()
    out, rc = dispatch("no-such-plugin", env, conf)
    obj = check_error(out, rc)
    if cid == "" or ifname == "":
        assert obj["code"] == 4 and "missing" in obj["msg"]
    elif not names.valid_id(cid):
        assert obj["code"] == 4 and "CNI_CONTAINERID" in obj["msg"]
    elif names.ifname_problem(ifname):
        assert obj["code"] == 4 and "CNI_IFNAME" in obj["msg"]
    elif not names.valid_id(name):
        assert obj["code"] == 7 and "network name" in obj["msg"]
    else:
        # everything valid: only then is the (unknown) plugin looked up
        assert obj["code"] in (3, 105), obj
    for bad in ("/", ".."):
        if bad in cid:
            assert obj["code"] == 4
