"""Typed network-config parsing shared by every plugin.

``NetConf`` holds what every plugin config has (name, cniVersion, type, ipam,
dns, runtimeConfig, args, prevResult). Plugin configs are records (``record``) built by
the ``Fields`` reader (plugins/core/gojson.py: Go's encoding/json rules, so
``HostPort`` and ``hostPort`` both fill ``hostPort``), which raises a code-7
error naming the field. Handlers never index raw config dicts by name.
"""
from __future__ import annotations

from . import names, version as ver
from .errors import CNIError, DECODING_FAILURE, INVALID_NETWORK_CONFIG
from .gojson import Fields, GoObject, as_go_map, loads, pairs
from .record import field, record
from .types import DNS, Result

__all__ = ["Fields", "NetConf", "decode", "parse_netconf", "require_prev_result"]

@record
class NetConf:
    """The part of a network config every plugin shares.

    ``raw`` is the whole config as decoded (a ``GoObject``: read it with
    ``Fields(raw)``); ``ipam``, ``runtime_config``, ``args`` and
    ``capabilities`` are the objects Go would decode into those fields (every
    key that folds to the name, merged in input order), so ``Fields(conf.ipam)``
    sees ``{"Subnet": ...}`` the way the Go plugin does.
    """
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
    def fields(self) -> Fields:
        return Fields(self.raw)

    @property
    def ipam_type(self) -> str:
        return Fields(self.ipam, "ipam").str("type") if self.ipam else ""


def decode(stdin: bytes) -> dict:
    """stdin bytes -> JSON object (pairs kept, Go's rules), or a code-6 error."""
    if not stdin.strip():
        raise CNIError(DECODING_FAILURE, "no network configuration on stdin")
    try:
        data = loads(stdin)
    except (ValueError, RecursionError) as e:   # RecursionError: too deeply nested
        raise CNIError(DECODING_FAILURE, "network configuration is not valid JSON", str(e)[:300]) from None
    if not isinstance(data, dict):
        raise CNIError(DECODING_FAILURE, "network configuration must be a JSON object",
                       f"got {type(data).__name__}")
    return data


def parse_netconf(raw: dict, *, require_name: bool = True) -> NetConf:
    """Validate and type the shared keys; plugins read their own keys with ``Fields(raw)``."""
    f = Fields(raw)
    v = f.str("cniVersion")
    if not v:
        raise CNIError(INVALID_NETWORK_CONFIG, "cniVersion is required")
    ver.check_supported(v)
    name = f.raw("name")
    if require_name or name is not None:
        names.check_network_name(name)
    typ = f.str("type")
    ipam = f.obj("ipam").data
    if ipam:
        ipam_type = Fields(ipam, "ipam").str("type")
        if not ipam_type:
            raise CNIError(INVALID_NETWORK_CONFIG, "ipam.type is required and must be a string")
        if "/" in ipam_type or ipam_type in (".", ".."):
            raise CNIError(INVALID_NETWORK_CONFIG, "ipam.type must be a plugin name, not a path",
                           ipam_type)
    try:
        dns = DNS.from_fields(f.obj("dns"))
    except CNIError as e:
        raise CNIError(INVALID_NETWORK_CONFIG, e.msg, e.details) from None
    rc = f.obj("runtimeConfig").data
    args = f.obj("args").data
    caps = f.obj("capabilities").data
    prev = None
    if f.has("prevResult"):
        # Go keeps prevResult as a map[string]interface{} and re-marshals it
        # (sorted keys) before decoding it as a Result (version.ParsePrevResult).
        pr = as_go_map(f.raw("prevResult"))
        if isinstance(pr, dict) and not Fields(pr).has("cniVersion"):
            pr = GoObject(pairs(pr) + [("cniVersion", v)])   # prevResult is in the config's version
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


# ---- GC input: the attachments the runtime still holds ------------------------------
# Spec 1.1.0 key, and the key older libcni releases sent (libcni sends both).
KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


def valid_attachments(raw: dict) -> set[tuple[str, str]]:
    """(containerID, ifname) pairs of a GC call, read Go-exactly (types.NetConf
    ValidAttachments / types.GCAttachment{containerID, ifname}).

    A GC without the list is refused (code 7): reading "no list" as "nothing is
    valid" would let a runtime bug wipe every attachment on the node. An empty
    list is honoured: the runtime says nothing is valid.
    """
    f = Fields(raw)
    for key in KEYS:
        if f.values(key):
            break
    else:
        raise CNIError(INVALID_NETWORK_CONFIG, "GC needs cni.dev/valid-attachments",
                       "refusing to treat a missing list as 'nothing is valid'")
    out = set()
    for i, a in enumerate(f.objects(key)):
        cid, ifname = a.raw("containerID"), a.raw("ifname")
        if not isinstance(cid, str) or not isinstance(ifname, str):
            raise CNIError(INVALID_NETWORK_CONFIG,
                           f"{key}[{i}] must have string containerID and ifname", repr(a.data)[:100])
        out.add((cid, ifname))
    return out
