"""Reading YAML against a schema, every problem with its place.

``Context`` collects errors as ``file:line: path: message`` (the line found
from the composed YAML tree); ``Obj`` reads one mapping with typed getters and
reports every key it does not know; ``Section`` is one row of a schema table
(a top-level key, whether it is required, the shape of its value, the
function that parses it) and ``section_value`` checks a value against its
row, so every section's wrong type reads the same. The value checks
(``check_name``, ``check_ip`` ...) return a message or None.

Used by netlab.lab.topology and netlab.lab.topology_checks; the feature
modules get ``Obj`` passed in. Imports nothing of netlab (PyYAML only).
"""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any, Callable

import yaml

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
ITEM_NAME_MAX = 20
RESERVED = ("ext", "dns", "underlay", "sw")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def line_map(text: str) -> dict[tuple, int]:
    """Map key paths to 1-based line numbers, from the composed YAML tree."""
    lines: dict[tuple, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node, path):
        if node is None:
            return
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
                lines[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, path + (i,))
    walk(root, ())
    return lines


class Context:
    """Collects errors with their location."""

    def __init__(self, fname: str, lines: dict[tuple, int]) -> None:
        self.fname = fname
        self.lines = lines
        self.errors: list[str] = []

    def err(self, path: tuple, msg: str) -> None:
        p = path
        line = None
        while p is not None:
            if p in self.lines:
                line = self.lines[p]
                break
            p = p[:-1] if p else None
        where = ".".join(str(x) if not isinstance(x, int) else f"[{x}]" for x in path)
        where = where.replace(".[", "[") or "(top level)"
        loc = f"{self.fname}:{line}" if line else self.fname
        self.errors.append(f"{loc}: {where}: {msg}")


def typename(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false",
            int: "an integer", float: "a number", type(None): "empty"}.get(type(v), type(v).__name__)


def is_a(v: Any, kinds: type | tuple) -> bool:
    """isinstance, except that true/false is no integer."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return isinstance(v, kinds) and not (isinstance(v, bool) and bool not in kinds)


class Obj:
    """Typed reads of one mapping, recording errors and unknown keys."""

    def __init__(self, ctx: Context, data: Any, path: tuple, known: tuple[str, ...]) -> None:
        self.ctx, self.path = ctx, path
        if not isinstance(data, dict):
            if data is not None:
                ctx.err(path, f"must be a mapping, got {typename(data)}")
            data = {}
        self.data = data
        for k in data:
            if k not in known:
                ctx.err(path + (k,), f"unknown key (known: {', '.join(known)})")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str, kind: type | tuple, default: Any = None, *, required: bool = False,
            check: Callable[[Any], str | None] | None = None) -> Any:
        v = self.data.get(key)
        if v is None:
            if required:
                self.ctx.err(self.path + (key,), "is required")
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not is_a(v, kinds):
            want = " or ".join(typename(k()) if k is not type(None) else "empty" for k in kinds)
            self.ctx.err(self.path + (key,), f"must be {want}, got {typename(v)} {json.dumps(v, default=str)[:60]}")
            return default
        if check:
            msg = check(v)
            if msg:
                self.ctx.err(self.path + (key,), msg)
                return default
        return v

    def int(self, key: str, default: int | None = None, lo: int | None = None,
            hi: int | None = None, required: bool = False) -> int | None:
        def rng(v):
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                return f"must be between {lo} and {hi}, got {v}" if hi is not None else f"must be at least {lo}, got {v}"
            return None
        return self.get(key, int, default, required=required, check=rng)

    def one_of(self, key: str, choices: tuple, default: str, what: str | None = None) -> str | None:
        """A string from ``choices``: ``must be one of a, b, got 'x'`` otherwise."""
        return self.get(key, str, default, check=lambda v: None if v in choices else
                        f"must be {what or 'one of ' + ', '.join(choices)}, got {v!r}")


# --------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class Section:
    """One top-level key of a file: the shape of its value and who parses it.

    ``kind``: dict, list, str or bool; None when a feature module checks the
    value itself. ``what`` names the expected value in the error message
    (``must be <what>, got a list``). ``parse(lab, value)`` gets the value
    after the shape check, or ``empty`` (called for a fresh value) when the
    key is absent, empty or of the wrong type. ``also``: more top-level keys
    the same parser reads (a feature module's group). ``then``: cross-section
    checks, ``check(lab)``, run once this section and those above it are
    parsed (they read several sections, so they belong to none)."""
    key: str
    parse: Callable[[Any, Any], None]
    kind: type | None = dict
    required: bool | Callable[[Any], bool] = False     # or a function of the lab being parsed
    what: str = ""
    empty: Any = None
    also: tuple[str, ...] = ()
    then: tuple[Callable[[Any], None], ...] = ()

    def describe(self) -> str:
        return self.what or {dict: "a mapping", list: "a list", str: "a string", bool: "true/false"}.get(
            self.kind, "given")


def section_value(ctx: Context, data: dict, sec: Section, required: bool) -> Any:
    """The value of ``sec.key`` in the top-level mapping, checked against its row:
    ``is required: <what>`` when it must be there, ``must be <what>, got <type>``
    when it has the wrong shape (scalars also show the value). Absent, empty
    (``key:`` alone) and an empty mapping or list are the same. Returns the
    value, or a fresh ``sec.empty`` after an error or when it is absent."""
    v = data.get(sec.key)
    empty = sec.empty() if callable(sec.empty) else sec.empty
    if sec.kind is None:
        return v
    if v is None or (sec.kind in (dict, list) and v in ({}, [])):
        if required:
            ctx.err((sec.key,), "is required" + (f": {sec.what}" if sec.what else ""))
        return empty
    if not is_a(v, sec.kind):
        shown = "" if sec.kind in (dict, list) else f" {json.dumps(v, default=str)[:60]}"
        ctx.err((sec.key,), f"must be {sec.describe()}, got {typename(v)}{shown}")
        return empty
    return v


# --------------------------------------------------------------------------- value checks

def check_name(v: str) -> str | None:
    """A node, network or pod name."""
    if v in RESERVED:
        return f"{v!r} is reserved (used for the lab's own namespaces)"
    if not NAME_RE.match(v) or len(v) > ITEM_NAME_MAX:
        return f"{v!r} is not a valid name (lowercase letters, digits and '-', at most {ITEM_NAME_MAX} chars)"
    return None


def check_ip(v: str) -> str | None:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return f"{v!r} is not an IPv4 or IPv6 address"
    return None


def check_net(v: str) -> str | None:
    try:
        ipaddress.ip_network(v, strict=True)
    except ValueError as e:
        return f"{v!r} is not an IPv4 or IPv6 subnet ({e})"
    return None


def check_dns_name(v: str) -> str | None:
    n = v[:-1] if v.endswith(".") else v
    if not n or len(n) > 253 or not all(re.match(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$", p) for p in n.split(".")):
        return f"{v!r} is not a valid DNS name"
    return None


def subnets(o: Obj, key: str, default: Any = None, required: bool = False) -> list:
    """``key: CIDR`` or ``key: [CIDR, CIDR]`` (dual-stack: one per family, the first
    is the primary family) -> a list of networks; [] after an error."""
    ctx = o.ctx
    v = o.get(key, (str, list), default, required=required)
    if v is None:
        return []
    items = [v] if isinstance(v, str) else v
    path = o.path + (key,)
    if not items or len(items) > 2:
        ctx.err(path, f"give one subnet, or a list of two (one IPv4, one IPv6), got {len(items)}")
        return []
    out = []
    for j, x in enumerate(items):
        where = path + ((j,) if isinstance(v, list) else ())
        msg = check_net(x) if isinstance(x, str) else f"must be a subnet like 10.0.0.0/16 or fd00::/64, got {typename(x)}"
        if msg:
            ctx.err(where, msg)
            return []
        out.append(ipaddress.ip_network(x))
    if len(out) == 2 and out[0].version == out[1].version:
        ctx.err(path, f"two IPv{out[0].version} subnets: a dual-stack list has one IPv4 and one IPv6 subnet")
        return []
    return out


def addresses(o: Obj, key: str) -> list[str] | None:
    """``key: ADDR`` or ``key: [ADDR, ADDR]`` (one per family); None when absent or bad."""
    ctx = o.ctx
    v = o.get(key, (str, list), None)
    if v is None:
        return None
    items = [v] if isinstance(v, str) else v
    path = o.path + (key,)
    if not items or len(items) > 2:
        ctx.err(path, f"give one address, or a list of two (one per family), got {len(items)}")
        return None
    for j, x in enumerate(items):
        msg = check_ip(x) if isinstance(x, str) else f"must be an address, got {typename(x)}"
        if msg:
            ctx.err(path + ((j,) if isinstance(v, list) else ()), msg)
            return None
    if len(items) == 2 and ipaddress.ip_address(items[0]).version == ipaddress.ip_address(items[1]).version:
        ctx.err(path, "two addresses of one family: give one IPv4 and one IPv6 address")
        return None
    return list(items)


def nth_host(net: IPNetwork, k: int) -> str | None:
    """The k-th host address of ``net`` (0 = network address + 1); None past the end.
    Arithmetic, never a list of hosts (an IPv6 /64 has 2**64)."""
    last = net.broadcast_address - (1 if net.version == 4 else 0)
    a = net.network_address + 1 + k
    return str(a) if a <= last else None
