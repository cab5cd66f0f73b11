"""The Kubernetes node installer: what the cnilab DaemonSet runs on every node.

It does on a real node what flannel's and kindnet's DaemonSets do, for our plugins
(design: docs/adr/0012-kubernetes-deployment.md; use: docs/deploy.md):

1. ``install`` (init container): copy the self-contained runtime from the image
   to the host (``/opt/cnilab/releases/<version>`` + an atomically swapped
   ``current`` link), install the plugin executables into ``/opt/cni/bin``
   through :func:`cninode.install.install` run under that host copy (keeping
   foreign files of the same names in ``/opt/cnilab/replaced``), wait for the
   node's podCIDR and write its conflist atomically into ``/etc/cni/net.d``.
2. ``sync``: watch the node list and rewrite the conflist when nodes join or
   leave (VXLAN ``peers``, pushed into the node's FDB at once) or this node's
   ``spec.podCIDR`` appears; in routed bridge mode optionally keep routes to
   the other nodes' pod ranges and a masquerade for traffic leaving the
   cluster (kindnet style).
3. ``render``: print the conflist for a node from a node-list JSON file
   (``kubectl get nodes -o json``), for checking a template without a cluster.
4. ``install-plugins``, ``uninstall``, ``wrapper``: the pieces, by hand.

Everything that decides something is a pure function over plain data (node
objects as the API returns them, the conflist template as a dict): rendering,
peer diffs, watch-event folding, route and masquerade plans. The world is
touched only by ``write_atomic``, ``install_runtime``, ``KubeAPI`` (plain
``urllib`` with the pod's service-account token and CA, no client library),
``RouteApplier``, ``MasqApplier`` and ``FdbSyncer``.

A conflist template (ConfigMap keys ``vxlan.conflist.json`` and
``bridge.conflist.json``) is an ordinary conflist in which a JSON string that
is *exactly* one of the placeholders below is replaced by a typed value (a
list stays a list, so the file stays valid JSON):

=========================  ==================================================
``{{podRanges}}``          host-local ``ranges`` for this node (``pod_ranges``)
``{{peers}}``              the other nodes' InternalIPs (family of ``nodeIP``)
``{{nodeIP}}``             this node's InternalIP (VXLAN ``localIP``)
``{{podCIDR}}``            this node's first pod CIDR
``{{clusterCIDR}}``        the cluster pod CIDR of that family
``{{nodeName}}``           this node's name
``{{underlayInterface}}``  the node interface that holds ``nodeIP``
=========================  ==================================================

An unknown ``{{...}}`` placeholder is an error, not a silently kept string.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import shutil
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from plugins.core import fsutil

log = logging.getLogger("cnilab.kube")

CONF_DIR = "/etc/cni/net.d"
BIN_DIR = "/opt/cni/bin"
CONFLIST_NAME = "10-cnilab.conflist"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# Routes we add in bridge mode carry this rtnetlink protocol number: it is how we
# find (and only ever remove) our own routes. 0x63 is unassigned in rt_protos.
ROUTE_PROTO = 99

PLACEHOLDERS = ("podRanges", "peers", "nodeIP", "podCIDR", "clusterCIDR", "nodeName",
                "underlayInterface")
MAIN_TYPES = ("bridge", "vxlan")


class InstallError(Exception):
    """A problem the operator must fix (bad template, bad settings, node data)."""


class NotReady(Exception):
    """Not an error yet: e.g. the node has no podCIDR assigned (try again later)."""


# ---------------------------------------------------------------------------
# nodes


@dataclass(frozen=True)
class Node:
    name: str
    internal_ips: tuple[str, ...] = ()
    pod_cidrs: tuple[str, ...] = ()


def _norm_ip(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _norm_net(value: str) -> str | None:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError:
        return None


def node_from_obj(obj: Mapping[str, Any]) -> Node:
    """A Node from a v1 Node object (only name, InternalIPs and pod CIDRs matter).

    ``spec.podCIDRs`` (dual-stack) wins over the older single ``spec.podCIDR``.
    Malformed addresses are dropped (logged), never passed on into a conflist.
    """
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise InstallError("node object without metadata.name")
    spec = obj.get("spec") or {}
    cidrs_raw = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    cidrs = []
    for c in cidrs_raw:
        n = _norm_net(c) if isinstance(c, str) else None
        if n is None:
            log.warning("node %s: ignoring malformed pod CIDR %r", name, c)
        elif n not in cidrs:
            cidrs.append(n)
    ips = []
    for a in (obj.get("status") or {}).get("addresses") or []:
        if isinstance(a, dict) and a.get("type") == "InternalIP":
            ip = _norm_ip(str(a.get("address", "")))
            if ip is None:
                log.warning("node %s: ignoring malformed InternalIP %r", name, a.get("address"))
            elif ip not in ips:
                ips.append(ip)
    return Node(name=name, internal_ips=tuple(ips), pod_cidrs=tuple(cidrs))


def nodes_from_list(obj: Mapping[str, Any]) -> dict[str, Node]:
    """Nodes by name from a NodeList (``kubectl get nodes -o json`` / the API)."""
    items = obj.get("items")
    if not isinstance(items, list):
        raise InstallError("node list has no 'items' array")
    nodes = {}
    for item in items:
        n = node_from_obj(item)
        nodes[n.name] = n
    return nodes


def apply_event(nodes: Mapping[str, Node], event: Mapping[str, Any]) -> dict[str, Node]:
    """Fold one watch event into a new node map (the input is not modified).

    ADDED/MODIFIED upsert, DELETED removes, BOOKMARK changes nothing. ERROR
    events are the caller's business (a 410 means: list again).
    """
    kind = event.get("type")
    out = dict(nodes)
    if kind in ("ADDED", "MODIFIED"):
        n = node_from_obj(event.get("object") or {})
        out[n.name] = n
    elif kind == "DELETED":
        name = ((event.get("object") or {}).get("metadata") or {}).get("name")
        out.pop(name, None)
    elif kind not in ("BOOKMARK",):
        raise InstallError(f"unexpected watch event type {kind!r}")
    return out


def node_ip(node: Node, family: int | None = None) -> str:
    """The node's InternalIP (the first one of ``family`` if given)."""
    for ip in node.internal_ips:
        if family is None or ipaddress.ip_address(ip).version == family:
            return ip
    raise NotReady(f"node {node.name} has no InternalIP"
                   + (f" of IPv{family}" if family else ""))


def peers_for(self_name: str, nodes: Mapping[str, Node], family: int) -> list[str]:
    """The other nodes' InternalIPs of ``family``, sorted (stable output = no churn)."""
    out = set()
    for name, n in nodes.items():
        if name == self_name:
            continue
        for ip in n.internal_ips:
            if ipaddress.ip_address(ip).version == family:
                out.add(ip)
                break
    return sorted(out, key=lambda s: ipaddress.ip_address(s))


# ---------------------------------------------------------------------------
# rendering


def main_plugin(conflist: Mapping[str, Any]) -> Mapping[str, Any]:
    plugins = conflist.get("plugins")
    if not isinstance(plugins, list) or not plugins or not isinstance(plugins[0], dict):
        raise InstallError("template must be a conflist with a non-empty 'plugins' list")
    first = plugins[0]
    if first.get("type") not in MAIN_TYPES:
        raise InstallError(f"the first plugin must be one of {', '.join(MAIN_TYPES)}",)
    return first


def pod_ranges(node: Node, overlay: bool, cluster_cidrs: Iterable[str] = ()) -> list[list[dict]]:
    """host-local range sets for this node: one set per pod CIDR (dual-stack = two).

    Routed bridge mode: the subnet *is* the node's pod CIDR (gateway: its first
    address, host-local's default). Overlay mode: all pods share one L2 segment,
    so the subnet is the cluster CIDR and the node hands out only its own
    slice: gateway = podCIDR+1 (each node's bridge its own gateway address),
    range podCIDR+2 .. last-1. A pod CIDR outside every cluster CIDR is an error.
    """
    if not node.pod_cidrs:
        raise NotReady(f"node {node.name} has no spec.podCIDR yet "
                       "(is the controller manager allocating node CIDRs?)")
    clusters = [ipaddress.ip_network(c, strict=True) for c in cluster_cidrs]
    sets = []
    for c in node.pod_cidrs:
        net = ipaddress.ip_network(c)
        if not overlay:
            sets.append([{"subnet": str(net)}])
            continue
        parent = next((p for p in clusters if p.version == net.version and net.subnet_of(p)), None)
        if parent is None:
            raise InstallError(f"node {node.name}: pod CIDR {net} is not inside any cluster "
                               f"CIDR ({', '.join(map(str, clusters)) or 'none configured'})")
        if net.num_addresses < 4:
            raise InstallError(f"node {node.name}: pod CIDR {net} is too small for a slice")
        first = net.network_address
        sets.append([{
            "subnet": str(parent),
            "rangeStart": str(first + 2),
            "rangeEnd": str(net.broadcast_address - 1),
            "gateway": str(first + 1),
        }])
    return sets


@dataclass(frozen=True)
class Rendered:
    conflist: dict
    peers: tuple[str, ...]


class _Missing(Exception):
    def __init__(self, key: str, where: str) -> None:
        super().__init__(key)
        self.key, self.where = key, where


def _substitute(obj: Any, values: Mapping[str, Any], used: set[str], path: str = "") -> Any:
    if isinstance(obj, dict):
        return {k: _substitute(v, values, used, f"{path}.{k}" if path else k)
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, values, used, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, str) and "{{" in obj:
        s = obj.strip()
        key = s[2:-2].strip() if s.startswith("{{") and s.endswith("}}") else None
        if key not in values:
            raise InstallError(f"template: unknown or misplaced placeholder {obj!r} at {path} "
                               f"(known, as a whole value: {', '.join(PLACEHOLDERS)})")
        if values[key] is None:
            raise _Missing(key, path)
        used.add(key)
        return values[key]
    return obj


def render(template: Mapping[str, Any], self_name: str, nodes: Mapping[str, Node],
           cluster_cidrs: Iterable[str] = (), underlay: str | None = None) -> Rendered:
    """This node's conflist from the template and the node list (pure).

    ``underlay`` is the name of the interface holding the node IP (the caller
    looks it up on the node; only needed when the template uses it).
    Raises NotReady when the node lacks data it will get later (podCIDR,
    InternalIP), InstallError for what the operator must fix.
    """
    if self_name not in nodes:
        raise NotReady(f"node {self_name} is not in the node list")
    first = main_plugin(template)
    overlay = first.get("type") == "vxlan"
    if overlay and first.get("mode", "l2") != "l2":
        raise InstallError("the vxlan template asks for mode "
                           f"{first.get('mode')!r}: the DaemonSet renders mode l2 only "
                           "(mode l3 needs every node's podCIDR in peers, ADR 0027)")
    me = nodes[self_name]
    clusters = list(cluster_cidrs)
    if overlay and not clusters:
        raise InstallError("the vxlan template needs the cluster pod CIDR "
                           "(CNILAB_CLUSTER_CIDR, e.g. 10.244.0.0/16)")
    ranges = pod_ranges(me, overlay, clusters)
    my_ip = node_ip(me) if me.internal_ips else None
    fam = ipaddress.ip_address(my_ip).version if my_ip else 4
    peers = peers_for(self_name, nodes, fam)
    first_cidr = me.pod_cidrs[0]
    cluster_same = next((c for c in clusters
                         if ipaddress.ip_network(c).version == ipaddress.ip_network(first_cidr).version),
                        None)
    values = {"podRanges": ranges, "peers": peers, "nodeIP": my_ip, "podCIDR": first_cidr,
              "clusterCIDR": cluster_same, "nodeName": self_name, "underlayInterface": underlay}
    used: set[str] = set()
    try:
        out = _substitute(dict(template), values, used)
    except _Missing as m:
        if m.key == "nodeIP" or (m.key == "underlayInterface" and my_ip is None):
            raise NotReady(f"node {self_name} has no InternalIP yet (needed at {m.where})") from None
        hint = {"clusterCIDR": "set CNILAB_CLUSTER_CIDR (one per address family)",
                "underlayInterface": f"no interface on this node holds {my_ip}"}.get(m.key, "")
        raise InstallError(f"template: {{{{{m.key}}}}} at {m.where} has no value on this node"
                           + (f": {hint}" if hint else "")) from None
    return Rendered(conflist=out, peers=tuple(peers) if "peers" in used else ())


def dumps(conflist: Mapping[str, Any]) -> bytes:
    """Stable bytes (same input -> same bytes) so unchanged configs are not rewritten."""
    return (json.dumps(conflist, indent=2) + "\n").encode()


def conf_peers(conflist: Mapping[str, Any] | None) -> list[str]:
    """The vxlan peers in a conflist (empty for a bridge conflist or None)."""
    if not conflist:
        return []
    for p in conflist.get("plugins") or []:
        if isinstance(p, dict) and p.get("type") == "vxlan":
            return list(p.get("peers") or [])
    return []


@dataclass(frozen=True)
class PeerDiff:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)


def diff_peers(old: Iterable[str], new: Iterable[str]) -> PeerDiff:
    o, n = set(old), set(new)
    return PeerDiff(tuple(sorted(n - o)), tuple(sorted(o - n)))


# ---------------------------------------------------------------------------
# routes for routed bridge mode (plan pure; apply in RouteApplier)


@dataclass(frozen=True, order=True)
class RoutePlan:
    dst: str
    via: str


def plan_routes(self_name: str, nodes: Mapping[str, Node]) -> list[RoutePlan]:
    """Routes to every other node's pod CIDRs via its InternalIP of the same family.

    Valid when the nodes share an L2 segment (kind, one subnet); otherwise the
    underlay (cloud routes, BGP) must route pod CIDRs and this stays off.
    """
    plans = set()
    for name, n in nodes.items():
        if name == self_name:
            continue
        for c in n.pod_cidrs:
            fam = ipaddress.ip_network(c).version
            via = next((ip for ip in n.internal_ips if ipaddress.ip_address(ip).version == fam), None)
            if via:
                plans.add(RoutePlan(c, via))
    return sorted(plans)


def diff_routes(current: Iterable[RoutePlan], wanted: Iterable[RoutePlan]
                ) -> tuple[list[RoutePlan], list[RoutePlan]]:
    """(to add or replace, to delete). A changed gateway is a replace."""
    cur = {r.dst: r for r in current}
    want = {r.dst: r for r in wanted}
    put = sorted(r for d, r in want.items() if cur.get(d) != r)
    drop = sorted(r for d, r in cur.items() if d not in want)
    return put, drop


class RouteApplier:
    """Keeps our routes (protocol ROUTE_PROTO) in the current netns = the node's."""

    def current(self) -> list[RoutePlan]:
        from pyroute2 import IPRoute
        out = []
        with IPRoute() as ipr:
            for fam in (2, 10):
                for r in ipr.get_routes(family=fam, proto=ROUTE_PROTO, table=254):
                    dst, plen, gw = r.get_attr("RTA_DST"), r["dst_len"], r.get_attr("RTA_GATEWAY")
                    if dst and gw:
                        out.append(RoutePlan(str(ipaddress.ip_network(f"{dst}/{plen}")), gw))
        return out

    def apply(self, put: list[RoutePlan], drop: list[RoutePlan]) -> None:
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            for r in drop:
                try:
                    ipr.route("del", dst=r.dst, gateway=r.via, proto=ROUTE_PROTO)
                except Exception as e:  # already gone is fine
                    log.info("route %s via %s: delete: %s", r.dst, r.via, e)
            for r in put:
                ipr.route("replace", dst=r.dst, gateway=r.via, proto=ROUTE_PROTO)


# ---------------------------------------------------------------------------
# node-level masquerade for routed bridge mode (plan pure; apply via plugins.net.nft)

MASQ_FAMILY = "inet"
MASQ_TABLE = "cnilab_kube"   # ours alone (prefix cnilab); replaced whole, atomically
MASQ_COMMENT = "cnilab-kube: pod egress leaving the cluster"


def plan_masq(pod_cidrs: Iterable[str], cluster_cidrs: Iterable[str]) -> list[dict]:
    """libnftables JSON: masquerade what this node's pods send outside the cluster.

    The bridge plugin's own ``ipMasq`` spares only the pod's subnet, which in
    routed mode is this node's pod CIDR: pod-to-pod traffic to other nodes would
    be NATed (the Kubernetes network model forbids that). This rule spares every
    cluster CIDR (and multicast). One transaction that re-creates our table, so
    applying the same plan twice converges and a changed plan replaces the old.
    """
    fam_proto = {4: "ip", 6: "ip6"}
    clusters = [ipaddress.ip_network(c) for c in cluster_cidrs]
    table = {"family": MASQ_FAMILY, "name": MASQ_TABLE}
    chain = {"family": MASQ_FAMILY, "table": MASQ_TABLE, "name": "postrouting"}
    cmds: list[dict] = [
        {"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}},
        {"add": {"chain": dict(chain, type="nat", hook="postrouting", prio=100,
                               policy="accept")}},
    ]

    def pfx(n):
        return {"prefix": {"addr": str(n.network_address), "len": n.prefixlen}}

    for c in pod_cidrs:
        net = ipaddress.ip_network(c)
        proto = fam_proto[net.version]
        spare = [n for n in clusters if n.version == net.version]
        if not any(net.subnet_of(n) for n in spare):
            raise InstallError(f"pod CIDR {net} is not inside the cluster CIDR(s) "
                               f"{', '.join(map(str, spare)) or '(none of IPv%d)' % net.version}: "
                               "set CNILAB_CLUSTER_CIDR")
        spare.append(ipaddress.ip_network("224.0.0.0/4" if net.version == 4 else "ff00::/8"))
        expr = [
            {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "saddr"}},
                       "right": pfx(net)}},
            {"match": {"op": "!=", "left": {"payload": {"protocol": proto, "field": "daddr"}},
                       "right": {"set": [pfx(n) for n in spare]}}},
            {"masquerade": None},
        ]
        cmds.append({"add": {"rule": {"family": MASQ_FAMILY, "table": MASQ_TABLE,
                                      "chain": chain["name"], "expr": expr,
                                      "comment": MASQ_COMMENT}}})
    return cmds


class MasqApplier:
    """Applies a masquerade plan in the current netns (the node's) when it changes."""

    def __init__(self) -> None:
        self._last: list[dict] | None = None

    def ensure(self, plan: list[dict]) -> bool:
        if plan == self._last:
            return False
        from plugins.net.nft import Nft
        Nft().apply(plan, what=f"node masquerade table {MASQ_TABLE}")
        self._last = plan
        return True


class FdbSyncer:
    """Pushes new VXLAN peers into the node's existing VXLAN device at once.

    The vxlan plugin syncs the FDB on every ADD; without this, a node that
    joined would be unreachable from a node until that node attaches its next
    pod. This uses the plugin's own code (config parser, node lock, ownership
    alias, ``VxlanLinks.sync_fdb``, which touches only all-zero-MAC entries)
    and does nothing when the device does not exist yet (the next ADD creates
    it from the conflist just written) or is not ours.
    """

    def sync(self, conflist: Mapping[str, Any]) -> tuple[list[str], list[str]] | None:
        from plugins import vxlan as vx
        from plugins.net.vxlan_dev import VxlanLinks, owner_alias
        raw = dict(main_plugin(conflist), name=conflist["name"],
                   cniVersion=conflist["cniVersion"])
        conf = vx.parse(raw, conflist["name"])
        if os.environ.get("CNILAB_RUN_DIR"):     # the same lock the plugins on this node take
            from plugins.core import record
            conf = record.replace(conf, run_dir=os.environ["CNILAB_RUN_DIR"])
        if conf.group or conf.mode != "l2":     # all-zero-MAC entries are the L2 mode's
            return None
        with vx.node_lock(conf), VxlanLinks() as links:
            dev = links.observe(conf.device)
            if dev is None or dev.alias != owner_alias(conf.network):
                return None
            peers = [p for p in conf.peers if p not in (dev.local, conf.local_ip)]
            return links.sync_fdb(dev.index, peers)


def interface_with_address(ip: str) -> str | None:
    """The name of the interface in the current netns (the node's) holding ``ip``."""
    from pyroute2 import IPRoute
    fam = 2 if ipaddress.ip_address(ip).version == 4 else 10
    with IPRoute() as ipr:
        for a in ipr.get_addr(family=fam):
            if a.get_attr("IFA_ADDRESS") == ip or a.get_attr("IFA_LOCAL") == ip:
                links = ipr.get_links(a["index"])
                return links[0].get_attr("IFLA_IFNAME") if links else None
    return None


# ---------------------------------------------------------------------------
# files


def write_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> bool:
    """Write ``data`` to ``path`` atomically; False (and no write) when unchanged.

    The temporary file lives in the same directory (same filesystem, so the
    rename is atomic) and its name ends in ``.tmp``: libcni only loads
    ``.conf``/``.conflist``/``.json``, so a runtime never sees a half-written
    file. Data is fsynced before the rename and the directory after it.
    """
    path = Path(path)
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    fsutil.write_atomic(path, data, mode=mode, sync_dir=True)
    return True


def read_conflist(path: str | os.PathLike) -> dict | None:
    try:
        return json.loads(Path(path).read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def load_template_text(text: str, where: str = "template") -> dict:
    """Parse and check a conflist template (the ConfigMap value)."""
    try:
        tpl = json.loads(text)
    except ValueError as e:
        raise InstallError(f"conflist {where} is not valid JSON: {e}") from None
    if not isinstance(tpl, dict):
        raise InstallError(f"conflist {where} must be a JSON object")
    main_plugin(tpl)
    for key in ("name", "cniVersion"):
        if not isinstance(tpl.get(key), str):
            raise InstallError(f"conflist {where}: '{key}' is required")
    return tpl


def load_template(path: str | os.PathLike) -> dict:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise InstallError(f"conflist template {path} not found") from None
    return load_template_text(text, f"template {path}")


# ---------------------------------------------------------------------------
# node sources: the API server, or a file (tests, `render`)


class FileSource:
    """Node list from a JSON file (a NodeList); re-read on each list()."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def list(self) -> tuple[dict[str, Node], str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise InstallError(f"node list {self.path}: {e}") from None
        return nodes_from_list(data), ""

    def watch(self, resource_version: str, timeout: int) -> Iterator[dict]:
        return iter(())  # files are polled: the sync loop lists again every interval


class KubeAPI:
    """The few API calls we need, over urllib with the service-account credentials.

    The token is re-read for every request (bound tokens rotate); the CA is the
    cluster's. ``opener`` is injectable so tests run without a network.
    """

    def __init__(self, server: str | None = None, sa_dir: str = SA_DIR,
                 opener: Callable[..., Any] | None = None, env: Mapping[str, str] = os.environ):
        if server is None:
            host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise InstallError("not in a cluster: KUBERNETES_SERVICE_HOST is unset "
                                   "(use --nodes-file to test without one)")
            if ":" in host:
                host = f"[{host}]"
            server = f"https://{host}:{port}"
        self.server = server.rstrip("/")
        self.sa_dir = Path(sa_dir)
        self._opener = opener
        self._ctx: ssl.SSLContext | None = None

    def _token(self) -> str:
        try:
            return (self.sa_dir / "token").read_text().strip()
        except OSError as e:
            raise InstallError(f"service-account token: {e}") from None

    def _open(self, path: str, params: Mapping[str, str], timeout: float):
        url = f"{self.server}{path}?{urllib.parse.urlencode(params)}" if params else self.server + path
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self._token()}",
                                                   "Accept": "application/json"})
        if self._opener is not None:
            return self._opener(req, timeout=timeout)
        if self._ctx is None:
            self._ctx = ssl.create_default_context(cafile=str(self.sa_dir / "ca.crt"))
        return urllib.request.urlopen(req, timeout=timeout, context=self._ctx)

    def list(self) -> tuple[dict[str, Node], str]:
        try:
            with self._open("/api/v1/nodes", {}, 30) as resp:
                data = json.load(resp)
        except urllib.error.HTTPError as e:
            raise InstallError(f"listing nodes: HTTP {e.code} {e.reason} "
                               "(does the ClusterRole allow list/watch on nodes?)") from None
        return nodes_from_list(data), (data.get("metadata") or {}).get("resourceVersion", "")

    def watch(self, resource_version: str, timeout: int) -> Iterator[dict]:
        params = {"watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout)}
        if resource_version:
            params["resourceVersion"] = resource_version
        with self._open("/api/v1/nodes", params, timeout + 15) as resp:
            for line in resp:
                line = line.strip()
                if line:
                    yield json.loads(line)


# ---------------------------------------------------------------------------
# the two jobs


CONFIG_DIR = "/etc/cnilab"  # where the DaemonSet mounts the ConfigMap


def template_for_mode(mode: str, config_dir: str = CONFIG_DIR) -> str:
    """``bridge`` / ``vxlan`` -> the ConfigMap's template file for that mode."""
    mode = (mode or "vxlan").strip()
    if mode not in MAIN_TYPES:
        raise InstallError(f"CNILAB_MODE must be one of {', '.join(MAIN_TYPES)}, not {mode!r}")
    return f"{config_dir}/{mode}.conflist.json"


@dataclass
class Settings:
    node_name: str
    template_path: str
    conf_dir: str = CONF_DIR
    conflist_name: str = CONFLIST_NAME
    cluster_cidrs: tuple[str, ...] = ()
    routes: bool = False
    masquerade: bool = False
    interval: float = 30.0
    watch_timeout: int = 300

    @property
    def conflist_path(self) -> Path:
        return Path(self.conf_dir) / self.conflist_name

    @classmethod
    def from_env(cls, env: Mapping[str, str], **over: Any) -> "Settings":
        node = over.pop("node_name", None) or env.get("NODE_NAME", "")
        if not node:
            raise InstallError("NODE_NAME is not set (downward API: spec.nodeName)")
        cidrs = tuple(c.strip() for c in env.get("CNILAB_CLUSTER_CIDR", "").split(",") if c.strip())
        kw: dict[str, Any] = dict(
            node_name=node,
            template_path=env.get("CNILAB_TEMPLATE") or template_for_mode(env.get("CNILAB_MODE", "")),
            conf_dir=env.get("CNILAB_CONF_DIR", CONF_DIR),
            conflist_name=env.get("CNILAB_CONFLIST_NAME", CONFLIST_NAME),
            cluster_cidrs=cidrs,
            routes=env.get("CNILAB_ROUTES", "false").lower() in ("1", "true", "yes"),
            masquerade=env.get("CNILAB_MASQUERADE", "false").lower() in ("1", "true", "yes"),
            interval=float(env.get("CNILAB_RESYNC_SECONDS", "30")),
        )
        kw.update({k: v for k, v in over.items() if v is not None})
        for c in kw["cluster_cidrs"]:
            if _norm_net(c) is None:
                raise InstallError(f"cluster CIDR {c!r} is not a network address/prefix "
                                   "(CNILAB_CLUSTER_CIDR / --cluster-cidr)")
        return cls(**kw)


@dataclass
class SyncResult:
    written: bool
    peers: PeerDiff = field(default_factory=PeerDiff)
    routes_put: list[RoutePlan] = field(default_factory=list)
    routes_dropped: list[RoutePlan] = field(default_factory=list)
    masq_changed: bool = False
    fdb: tuple[list[str], list[str]] | None = None
    errors: list[str] = field(default_factory=list)


class Syncer:
    """Holds the node map; ``step(nodes)`` converges the files (and routes) to it."""

    def __init__(self, settings: Settings, template: dict,
                 routes: RouteApplier | None = None,
                 underlay_of: Callable[[str], str | None] | None = None,
                 masq: MasqApplier | None = None, fdb: FdbSyncer | None = None) -> None:
        self.s = settings
        self.template = template
        self.routes = routes
        self.masq = masq
        self.fdb = fdb
        self._fdb_done = False
        self.underlay_of = underlay_of or interface_with_address
        self._wants_underlay = "{{underlayInterface}}" in json.dumps(template)
        self.nodes: dict[str, Node] = {}

    def step(self, nodes: Mapping[str, Node]) -> SyncResult:
        self.nodes = dict(nodes)
        underlay = None
        me = self.nodes.get(self.s.node_name)
        if self._wants_underlay and me is not None and me.internal_ips:
            underlay = self.underlay_of(node_ip(me))
        r = render(self.template, self.s.node_name, self.nodes, self.s.cluster_cidrs, underlay)
        old = read_conflist(self.s.conflist_path)
        diff = diff_peers(conf_peers(old), r.peers)
        written = write_atomic(self.s.conflist_path, dumps(r.conflist))
        if written:
            log.info("wrote %s%s", self.s.conflist_path,
                     f" (peers +{list(diff.added)} -{list(diff.removed)})" if diff else "")
        res = SyncResult(written=written, peers=diff)
        # The conflist is the main job and is done; the node-side jobs below are
        # each retried on the next step when they fail (logged, never fatal).
        if self.fdb is not None and (written or diff or not self._fdb_done):
            self._fdb_done = False
            if self._side_job(res, "vxlan FDB", lambda: setattr(res, "fdb", self.fdb.sync(r.conflist))):
                self._fdb_done = True
                if res.fdb and (res.fdb[0] or res.fdb[1]):
                    log.info("vxlan FDB: added %s, removed %s", *res.fdb)
        if self.routes is not None:
            def routes_job():
                put, drop = diff_routes(self.routes.current(),
                                        plan_routes(self.s.node_name, self.nodes))
                if put or drop:
                    self.routes.apply(put, drop)
                    log.info("routes: put %s, dropped %s", put, drop)
                res.routes_put, res.routes_dropped = put, drop
            self._side_job(res, "routes", routes_job)
        if self.masq is not None and me is not None:
            self._side_job(res, "masquerade", lambda: setattr(
                res, "masq_changed", self.masq.ensure(plan_masq(me.pod_cidrs, self.s.cluster_cidrs))))
        return res

    @staticmethod
    def _side_job(res: "SyncResult", what: str, job: Callable[[], None]) -> bool:
        try:
            job()
            return True
        except Exception as e:  # noqa: BLE001 - netlink/nftables/config errors alike
            log.warning("%s: %s (will retry)", what, e)
            res.errors.append(f"{what}: {e}")
            return False


def sync_loop(syncer: Syncer, source: Any, stop: threading.Event) -> None:
    """List, converge, then follow the watch; list again on errors and every interval.

    A node that lacks its podCIDR yet (NotReady) is retried; the conflist is
    never removed by the loop (a missing conflist would stop pod start-up).
    """
    backoff = 1.0
    while not stop.is_set():
        try:
            nodes, rv = source.list()
            _step(syncer, nodes)
            deadline = time.monotonic() + syncer.s.interval
            for ev in source.watch(rv, syncer.s.watch_timeout):
                if stop.is_set():
                    return
                if ev.get("type") == "ERROR":  # e.g. 410 Gone: resourceVersion too old
                    log.info("watch error %s: listing again", (ev.get("object") or {}).get("code"))
                    break
                nodes = apply_event(nodes, ev)
                if ev.get("type") != "BOOKMARK":
                    _step(syncer, nodes)
            backoff = 1.0
            stop.wait(max(0.0, deadline - time.monotonic()))
        except (InstallError, OSError, ValueError, urllib.error.URLError) as e:
            log.warning("sync: %s (retrying in %.0fs)", e, backoff)
            stop.wait(backoff)
            backoff = min(backoff * 2, 60.0)


def _step(syncer: Syncer, nodes: Mapping[str, Node]) -> SyncResult | None:
    try:
        return syncer.step(nodes)
    except NotReady as e:
        log.info("waiting: %s", e)
        return None


# ---------------------------------------------------------------------------
# installing the runtime and the executables


def install_runtime(src: str | os.PathLike, host_root: str | os.PathLike, version: str) -> Path:
    """Copy the image's runtime tree to ``<host_root>/releases/<version>`` and point
    ``<host_root>/current`` at it with an atomic symlink swap.

    Running plugin calls keep using the release they started with; the previous
    release is kept (a call may still be in flight), older ones are removed.
    Returns the release directory (as seen from here).
    """
    src, root = Path(src), Path(host_root)
    if not src.is_dir():
        raise InstallError(f"runtime tree {src} not found in the image")
    if not version or "/" in version or version.startswith("."):
        raise InstallError(f"bad release name {version!r}")
    rel = root / "releases" / version
    if not rel.exists():
        tmp = root / "releases" / f".{version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, symlinks=True)
        os.replace(tmp, rel)
    link = root / "current"
    prev = os.readlink(link) if link.is_symlink() else None
    new_target = f"releases/{version}"
    if prev != new_target:
        tmp_link = root / ".current.tmp"
        if tmp_link.is_symlink() or tmp_link.exists():
            tmp_link.unlink()
        os.symlink(new_target, tmp_link)
        os.replace(tmp_link, link)
    keep = {version, Path(prev).name if prev else None}
    for d in (root / "releases").iterdir():
        if d.is_dir() and not d.name.startswith(".") and d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)
    return rel


WRAPPER_NAME = "cnilab-python"
NATIVE_LIB_DIR = "lib/cnilab-native"


def wrapper_script(python_name: str = "python3") -> str:
    """The interpreter the launchers name in their ``#!`` line (``bin/cnilab-python``).

    A POSIX shell script next to the runtime's ``python3``: it resolves its own
    directory with builtins only (``cd -P``: the tree works wherever it is
    copied, and ``current`` becomes the concrete release), puts the bundled native libraries (libnftables and what
    it links against) on the loader path, and execs python without user site
    and PYTHON* variables. The runtime that execs a plugin passes a minimal
    environment, so nothing else could set the loader path.
    """
    return "\n".join([
        "#!/bin/sh",
        "# cnilab runtime interpreter: bundled native libraries first, no user site",
        "# (shell builtins only: runtimes exec plugins with an empty PATH)",
        'case "$0" in */*) here=${0%/*} ;; *) here=. ;; esac',
        'here=$(CDPATH= cd -P "$here" && pwd -P) || exit 127',
        f'LD_LIBRARY_PATH="$here/../{NATIVE_LIB_DIR}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"',
        "export LD_LIBRARY_PATH",
        f'exec "$here/{python_name}" -s -E "$@"',
        "",
    ])


def write_wrapper(path: str | os.PathLike, python_name: str = "python3") -> Path:
    path = Path(path)
    write_atomic(path, wrapper_script(python_name).encode(), mode=0o755)
    return path


def install_plugins(bin_dir: str | os.PathLike, python: str | None = None, *,
                    backup_dir: str | os.PathLike | None = None) -> list[str]:
    """Install our executables with cninode.install (the one installer; not duplicated).

    ``python``: the interpreter the launchers' ``#!`` names (the host runtime's
    wrapper). cninode.install binds the launchers to the running interpreter
    and its code/site dirs, so this must run *under* the host runtime copy
    (cmd_install re-executes itself there); ``python`` only swaps the
    interpreter path for the wrapper beside it. Each launcher is verified by
    cninode.install (a VERSION call), which exercises the wrapper too.

    ``backup_dir``: kubeadm's kubernetes-cni package and kind's node image put
    the reference plugins under the same names into /opt/cni/bin. Ours are
    drop-in replacements; with ``backup_dir`` a foreign file is first copied
    there (once: the first backup is the original) and then replaced, so
    ``uninstall`` can put it back. Without it a foreign file is an error.
    """
    from . import install as installer
    if python is not None and (not os.path.isabs(python) or not os.access(python, os.X_OK)):
        raise InstallError(f"launcher interpreter {python} is not an executable absolute path")
    force = False
    if backup_dir is not None:
        backup_foreign(bin_dir, backup_dir)
        force = True
    return installer.install(str(bin_dir), force=force, python=python)


def backup_foreign(bin_dir: str | os.PathLike, backup_dir: str | os.PathLike) -> list[str]:
    """Copy every plugin file of ours' names that is not our launcher into backup_dir."""
    from . import install as installer
    saved = []
    for name in installer.PLUGINS:
        src = Path(bin_dir) / name
        dst = Path(backup_dir) / name
        if not src.exists() or installer.is_ours(str(src)) or dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{name}.tmp")
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
        saved.append(name)
        log.info("kept the original %s as %s", src, dst)
    return saved


def uninstall(bin_dir: str | os.PathLike, conf_path: str | os.PathLike,
              backup_dir: str | os.PathLike | None = None) -> list[str]:
    """Remove our conflist and launchers; put back the files we replaced.

    Only files that are ours are removed (the conflist is checked by name and
    content: it must be a conflist whose first plugin is one of ours).
    Returns what was done, one line per file.
    """
    from . import install as installer
    done = []
    conf = read_conflist(conf_path)
    if conf is not None and isinstance(conf.get("plugins"), list) and conf["plugins"] \
            and isinstance(conf["plugins"][0], dict) and conf["plugins"][0].get("type") in MAIN_TYPES:
        os.unlink(conf_path)
        done.append(f"removed {conf_path}")
    for name in installer.PLUGINS:
        path = Path(bin_dir) / name
        if not installer.is_ours(str(path)):
            continue
        orig = Path(backup_dir) / name if backup_dir else None
        if orig is not None and orig.exists():
            tmp = path.with_name(f".{name}.restore.tmp")
            shutil.copy2(orig, tmp)
            os.replace(tmp, path)
            orig.unlink()
            done.append(f"restored {path}")
        else:
            path.unlink()
            done.append(f"removed {path}")
    return done


# ---------------------------------------------------------------------------
# CLI: python -m cninode.kube_install {install,sync,render}


def _settings(args: argparse.Namespace) -> Settings:
    over = {"node_name": args.node, "template_path": args.template, "conf_dir": args.conf_dir}
    if getattr(args, "cluster_cidr", None):
        over["cluster_cidrs"] = tuple(c.strip() for c in args.cluster_cidr.split(",") if c.strip())
    return Settings.from_env(os.environ, **over)


def _source(args: argparse.Namespace):
    return FileSource(args.nodes_file) if args.nodes_file else KubeAPI()


def cmd_render(args: argparse.Namespace) -> int:
    s = _settings(args)
    nodes, _ = FileSource(args.nodes_file).list()
    r = render(load_template(s.template_path), s.node_name, nodes, s.cluster_cidrs,
               args.underlay)
    sys.stdout.write(dumps(r.conflist).decode())
    return 0


def cmd_install(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Init container: runtime to the host, executables to /opt/cni/bin, first conflist."""
    s = _settings(args)
    template = load_template(s.template_path)
    if args.runtime_src:
        rel = install_runtime(args.runtime_src, args.host_runtime_dir, args.release)
        host_python = str(Path(args.host_runtime_dir) / "current" / "bin" / WRAPPER_NAME)
        log.info("runtime %s installed; installing plugins with %s", rel, host_python)
        # cninode.install binds launchers to the interpreter that runs it: run it
        # under the host copy so the launchers name host paths only.
        import subprocess
        argv = [host_python, "-m", "cninode.kube_install", "install-plugins",
                "--bin-dir", args.bin_dir, "--python", host_python]
        if args.replace_existing:
            argv += ["--backup-dir", str(Path(args.host_runtime_dir) / "replaced")]
        rc = subprocess.call(argv)
        if rc != 0:
            raise InstallError(f"installing the plugins into {args.bin_dir} failed ({rc})")
    else:
        install_plugins(args.bin_dir, backup_dir=(Path(args.host_runtime_dir) / "replaced"
                                                  if args.replace_existing else None))
    log.info("plugins installed in %s", args.bin_dir)
    # wait until the node has its podCIDR, then write the first conflist
    syncer, source, stop = Syncer(s, template), _source(args), stop or threading.Event()
    backoff = 1.0
    while True:
        try:
            nodes, _ = source.list()
            res = syncer.step(nodes)
            log.info("conflist %s %s", s.conflist_path, "written" if res.written else "unchanged")
            return 0
        except (NotReady, OSError, urllib.error.URLError) as e:
            log.info("waiting: %s", e)
        if args.once or stop.wait(backoff):
            return 3
        backoff = min(backoff * 2, 30.0)


def cmd_install_plugins(args: argparse.Namespace) -> int:
    for path in install_plugins(args.bin_dir, args.python, backup_dir=args.backup_dir):
        log.info("installed %s", path)
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    conf = Path(args.conf_dir or os.environ.get("CNILAB_CONF_DIR", CONF_DIR)) / CONFLIST_NAME
    for line in uninstall(args.bin_dir, conf, args.backup_dir):
        print(line)
    return 0


def cmd_wrapper(args: argparse.Namespace) -> int:
    write_wrapper(args.output, args.python_name)
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    s = _settings(args)
    template = load_template(s.template_path)
    routes = masq = None
    bridge_mode = main_plugin(template).get("type") == "bridge"
    if s.routes:
        if not bridge_mode:
            raise InstallError("CNILAB_ROUTES is for the routed bridge mode only")
        routes = RouteApplier()
    if s.masquerade:
        if not bridge_mode:
            raise InstallError("CNILAB_MASQUERADE is for the routed bridge mode only "
                               "(the vxlan plugin's ipMasq already spares the cluster CIDR)")
        if not s.cluster_cidrs:
            raise InstallError("CNILAB_MASQUERADE needs CNILAB_CLUSTER_CIDR")
        masq = MasqApplier()
    stop = threading.Event()
    import signal
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    fdb = FdbSyncer() if main_plugin(template).get("type") == "vxlan" else None
    sync_loop(Syncer(s, template, routes, masq=masq, fdb=fdb), _source(args), stop)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cninode.kube_install",
                                description="install cnilab on a Kubernetes node and keep its conflist in sync")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("install", "sync", "render"):
        sp = sub.add_parser(name)
        sp.add_argument("--node", help="this node's name (default: $NODE_NAME)")
        sp.add_argument("--template", help="conflist template (default: $CNILAB_TEMPLATE, "
                        "else /etc/cnilab/$CNILAB_MODE.conflist.json)")
        sp.add_argument("--conf-dir", help="CNI config dir (default: $CNILAB_CONF_DIR or /etc/cni/net.d)")
        sp.add_argument("--cluster-cidr", help="cluster pod CIDR(s), comma separated (overlay mode)")
        sp.add_argument("--nodes-file", required=(name == "render"),
                        help="read the node list from this JSON file instead of the API server")
        sp.add_argument("-v", "--verbose", action="store_true")
        if name == "render":
            sp.add_argument("--underlay", help="value for {{underlayInterface}}")
        if name == "install":
            sp.add_argument("--bin-dir", default=os.environ.get("CNILAB_BIN_DIR", BIN_DIR))
            sp.add_argument("--runtime-src", default=os.environ.get("CNILAB_RUNTIME_SRC"),
                            help="the self-contained runtime tree in the image; copied to "
                                 "--host-runtime-dir, which must be mounted at the same path "
                                 "as on the host")
            sp.add_argument("--host-runtime-dir",
                            default=os.environ.get("CNILAB_HOST_RUNTIME_DIR", "/opt/cnilab"))
            sp.add_argument("--release", default=os.environ.get("CNILAB_RELEASE", "dev"))
            sp.add_argument("--once", action="store_true", help="do not wait for the podCIDR")
            sp.add_argument("--replace-existing", action="store_true",
                            default=os.environ.get("CNILAB_REPLACE_EXISTING", "false").lower()
                            in ("1", "true", "yes"),
                            help="replace foreign plugins of the same names (e.g. the reference "
                                 "plugins kubeadm/kind install), keeping them in "
                                 "HOST_RUNTIME_DIR/replaced for uninstall")
    sp = sub.add_parser("install-plugins", help="cninode.install with the launchers bound to --python")
    sp.add_argument("--bin-dir", required=True)
    sp.add_argument("--python", help="interpreter for the launchers' #! line")
    sp.add_argument("--backup-dir", help="replace foreign files, keeping them here")
    sp.add_argument("-v", "--verbose", action="store_true")
    sp = sub.add_parser("uninstall", help="remove our conflist and executables, restore replaced ones")
    sp.add_argument("--bin-dir", default=BIN_DIR)
    sp.add_argument("--conf-dir", default=None)
    sp.add_argument("--backup-dir", default="/opt/cnilab/replaced")
    sp.add_argument("-v", "--verbose", action="store_true")
    sp = sub.add_parser("wrapper", help="write the runtime's cnilab-python wrapper (image build)")
    sp.add_argument("--output", required=True)
    sp.add_argument("--python-name", default="python3")
    sp.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return {"install": cmd_install, "sync": cmd_sync, "render": cmd_render,
                "install-plugins": cmd_install_plugins, "wrapper": cmd_wrapper,
                "uninstall": cmd_uninstall}[args.cmd](args)
    except (InstallError, NotReady) as e:
        print(f"kube_install: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
