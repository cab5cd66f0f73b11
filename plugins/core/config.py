"""Typed network-config parsing shared by every plugin.

``NetConf`` holds what every plugin config has (name, cniVersion, type, ipam,
dns, runtimeConfig, args, prevResult). Plugin configs are dataclasses built by
the ``Fields`` reader, which raises a code-7 error naming the field.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from . import names, version as ver
from .errors import CNIError, DECODING_FAILURE, INVALID_NETWORK_CONFIG
from .types import DNS, Result

_MISSING = object()


class Fields:
    """Typed access to one JSON object; every error names the field's path."""

    def __init__(self, data: object, where: str = "") -> None:
        if not isinstance(data, dict):
            raise CNIError(INVALID_NETWORK_CONFIG, f"{where or 'config'} must be a JSON object",
                           f"got {type(data).__name__}")
        self.data = data
        self.where = where

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _bad(self, key: str, want: str, got: object) -> CNIError:
        return CNIError(INVALID_NETWORK_CONFIG, f"{self.path(key)} must be {want}",
                        f"got {json.dumps(got)[:200]}")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def raw(self, key: str, default: Any = None) -> Any:
        v = self.data.get(key)
        return default if v is None else v

    def str(self, key: str, default: str = "", *, required: bool = False) -> str:
        v = self.data.get(key)
        if v is None:
            if required:
                raise CNIError(INVALID_NETWORK_CONFIG, f"{self.path(key)} is required")
            return default
        if not isinstance(v, str):
            raise self._bad(key, "a string", v)
        return v

    def bool(self, key: str, default: bool = False) -> bool:
        v = self.data.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self._bad(key, "true or false", v)
        return v

    def int(self, key: str, default: int = 0, *, lo: int | None = None,
            hi: int | None = None, required: bool = False) -> int:
        v = self.data.get(key)
        if v is None:
            if required:
                raise CNIError(INVALID_NETWORK_CONFIG, f"{self.path(key)} is required")
            return default
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._bad(key, "an integer", v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            if lo is not None and hi is not None:
                rng = f"between {lo} and {hi}"
            else:
                rng = f"at least {lo}" if lo is not None else f"at most {hi}"
            raise CNIError(INVALID_NETWORK_CONFIG, f"{self.path(key)} must be {rng}", f"got {v}")
        return v

    def list(self, key: str) -> list:
        v = self.data.get(key)
        if v is None:
            return []
        if not isinstance(v, list):
            raise self._bad(key, "a list", v)
        return v

    def obj(self, key: str) -> "Fields":
        v = self.data.get(key)
        return Fields({} if v is None else v, self.path(key))

    def ifname(self, key: str, default: str = "") -> str:
        v = self.str(key, default)
        if v:
            names.check_ifname(v, self.path(key), INVALID_NETWORK_CONFIG)
        return v

    def ip(self, key: str, default: str = "") -> str:
        v = self.str(key, default)
        if v:
            try:
                ipaddress.ip_address(v)
            except ValueError:
                raise self._bad(key, "an IP address", v) from None
        return v


@dataclass
class NetConf:
    """The part of a network config every plugin shares."""
    cni_version: str
    name: str
    type: str
    raw: dict
    ipam: dict = field(default_factory=dict)
    dns: DNS = field(default_factory=DNS)
    runtime_config: dict = field(default_factory=dict)
    args: dict = field(default_factory=dict)           # the "args" key (conventions)
    prev_result: Result | None = None
    capabilities: dict = field(default_factory=dict)

    @property
    def ipam_type(self) -> str:
        return self.ipam.get("type", "") if isinstance(self.ipam, dict) else ""


def decode(stdin: bytes) -> dict:
    """stdin bytes -> JSON object, or a code-6 error."""
    if not stdin.strip():
        raise CNIError(DECODING_FAILURE, "no network configuration on stdin")
    try:
        data = json.loads(stdin)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:   # too deeply nested
        raise CNIError(DECODING_FAILURE, "network configuration is not valid JSON", str(e)[:300]) from None
    if not isinstance(data, dict):
        raise CNIError(DECODING_FAILURE, "network configuration must be a JSON object",
                       f"got {type(data).__name__}")
    return data


def _obj_or_empty(raw: dict, key: str) -> object:
    """The value, or {} when absent/null (not when merely falsy: [] and "" are errors)."""
    v = raw.get(key)
    return {} if v is None else v


def parse_netconf(raw: dict, *, require_name: bool = True) -> NetConf:
    """Validate and type the shared keys; plugins read their own keys from ``raw``."""
    f = Fields(raw)
    v = raw.get("cniVersion")
    if v is None or v == "":
        raise CNIError(INVALID_NETWORK_CONFIG, "cniVersion is required")
    if not isinstance(v, str):
        raise CNIError(INVALID_NETWORK_CONFIG, "cniVersion must be a string", repr(v))
    ver.check_supported(v)
    name = raw.get("name")
    if require_name or name is not None:
        names.check_network_name(name)
    typ = f.str("type")
    ipam = _obj_or_empty(raw, "ipam")
    if not isinstance(ipam, dict):
        raise CNIError(INVALID_NETWORK_CONFIG, "ipam must be a JSON object", repr(ipam)[:200])
    if ipam and not isinstance(ipam.get("type"), str):
        raise CNIError(INVALID_NETWORK_CONFIG, "ipam.type is required and must be a string")
    if ipam and ("/" in ipam["type"] or ipam["type"] in ("", ".", "..")):
        raise CNIError(INVALID_NETWORK_CONFIG, "ipam.type must be a plugin name, not a path",
                       ipam["type"])
    try:
        dns = DNS.from_dict(raw.get("dns"))
    except CNIError as e:
        raise CNIError(INVALID_NETWORK_CONFIG, e.msg, e.details) from None
    rc = _obj_or_empty(raw, "runtimeConfig")
    if not isinstance(rc, dict):
        raise CNIError(INVALID_NETWORK_CONFIG, "runtimeConfig must be a JSON object")
    args = _obj_or_empty(raw, "args")
    if not isinstance(args, dict):
        raise CNIError(INVALID_NETWORK_CONFIG, "args must be a JSON object")
    caps = _obj_or_empty(raw, "capabilities")
    if not isinstance(caps, dict):
        raise CNIError(INVALID_NETWORK_CONFIG, "capabilities must be a JSON object")
    prev = None
    if raw.get("prevResult") is not None:
        pr = raw["prevResult"]
        if isinstance(pr, dict) and "cniVersion" not in pr:
            pr = dict(pr, cniVersion=v)   # the spec: prevResult is in the config's version
        try:
            prev = Result.from_dict(pr)
        except CNIError as e:
            raise CNIError(DECODING_FAILURE, f"prevResult: {e.msg}", e.details) from None
    return NetConf(cni_version=v, name=name or "", type=typ, raw=raw, ipam=ipam, dns=dns,
                   runtime_config=rc, args=args, prev_result=prev, capabilities=caps)


def require_prev_result(conf: NetConf, plugin: str) -> Result:
    """A chained plugin's input: the previous plugin's result, or a clear error."""
    if conf.prev_result is None:
        raise CNIError(INVALID_NETWORK_CONFIG,
                       f"{plugin} must be called as a chained plugin: prevResult is missing",
                       f"put {plugin} after a main plugin (e.g. bridge) in a conflist")
    return conf.prev_result
