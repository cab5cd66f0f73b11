"""Rates, bursts and per-node address slices: pure functions shared by the
topology schema, the plan and the lab features (impairments, BGP).

Imports nothing of netlab.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any

RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(bit|bps)?\s*$", re.I)
_MULT = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def parse_rate(v: Any) -> int:
    """'10mbit', '1.5Gbit', '500k', 10000000 -> bits per second."""
    if isinstance(v, bool):
        raise ValueError("must be a rate like 10mbit or an integer (bit/s)")
    if isinstance(v, int):
        if v < 0:
            raise ValueError("must not be negative")
        return v
    if isinstance(v, str):
        m = RATE_RE.match(v)
        if m:
            n = float(m.group(1)) * _MULT[m.group(2).lower()]
            if (m.group(3) or "").lower() == "bps":
                n *= 8
            return int(n)
    raise ValueError(f"must be a rate like 10mbit or an integer (bit/s), got {v!r}")


def default_burst(rate: int) -> int:
    """Bits of burst for a rate: 25 ms worth, at least 12000 bytes (bits *8)."""
    if not rate:
        return 0
    return max(rate // 40, 12000 * 8)


def _subnet_of(w, family: int | None):
    if family is None:
        return w.subnet, w.node_prefix
    for n, np_ in zip(w.subnets, w.node_prefixes):
        if n.version == family:
            return n, np_
    raise KeyError(f"network {w.name} has no IPv{family} subnet")


def node_slice(w, node_index: int, family: int | None = None):
    """Node ``node_index``'s slice of the network's subnet of ``family`` (default: the
    primary), computed directly (listing every slice of a /48 would take for ever)."""
    net, prefix = _subnet_of(w, family)
    if prefix <= net.prefixlen:
        return net
    size = 1 << (net.max_prefixlen - prefix)
    return ipaddress.ip_network(f"{net.network_address + node_index * size}/{prefix}")


def gateway(w, node_index: int, family: int | None = None):
    """The node's address on this network (bridge/VXLAN bridge), first of its slice."""
    return node_slice(w, node_index, family).network_address + 1
