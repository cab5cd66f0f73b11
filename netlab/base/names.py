"""Names of a lab's namespaces, interfaces and containers: pure functions.

Naming (several labs at once never clash; the root namespace is never used):

    nl-<lab>-sw        the underlay switch (bridge ``br0``)
    nl-<lab>-n-<node>  a node            (uplink ``eth0`` on the switch)
    nl-<lab>-p-<pod>   a pod             (attached by the CNI plugins run in its node)
    nl-<lab>-dns       the DNS server    (dnsmasq, on the switch)
    nl-<lab>-ext       a client outside the nodes, on the switch

Imports nothing.
"""
from __future__ import annotations

SWITCH_BRIDGE = "br0"
POD_HOSTS = "pods.hosts"
UPLINK = "eth0"


def ns_prefix(lab: str) -> str:
    return f"nl-{lab}"


def switch_ns(lab: str) -> str:
    return f"nl-{lab}-sw"


def node_ns(lab: str, node: str) -> str:
    return f"nl-{lab}-n-{node}"


def pod_ns(lab: str, pod: str) -> str:
    return f"nl-{lab}-p-{pod}"


def dns_ns(lab: str) -> str:
    return f"nl-{lab}-dns"


def ext_ns(lab: str) -> str:
    return f"nl-{lab}-ext"


def container_id(lab: str, pod: str) -> str:
    return f"netlab-{lab}-{pod}"
