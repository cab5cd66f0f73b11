"""A libcni-compatible CNI runtime: what containerd/CRI-O do with a conflist.

``Runtime`` runs any CNI plugin executables (ours or the reference ones) with
libcni's semantics:

* configuration: a ``.conflist`` (or an upconverted ``.conf``/``.json``) found
  by network name in a conf dir (files in lexical order, ``.conflist`` first),
  or a conflist dict handed over directly (netlab passes rendered conflists);
* ADD runs the plugins in order, threading each result into the next plugin's
  ``prevResult`` and injecting ``name``, ``cniVersion`` and ``runtimeConfig``
  (the plugin's ``capabilities`` intersected with the capability args offered);
  the final result is cached;
* DEL runs the plugins in reverse with the cached result as ``prevResult``
  (none when nothing is cached), then drops the cache entry;
* CHECK runs the plugins in order with the cached result;
* GC deletes every cached attachment of the network that is not in the valid
  list, then sends GC with ``cni.dev/valid-attachments`` to every plugin;
* STATUS asks every plugin in order and stops at the first error.

The result cache uses libcni's layout and format, so tools that read
``/var/lib/cni/results`` (and libcni itself) understand our entries:
``<cacheDir>/results/<network>-<containerID>-<ifname>`` holding
``{"kind": "cniCacheV1", "containerId", "config" (base64), "ifName",
"networkName", "netns", "cniArgs", "capabilityArgs", "result"}``.

Two netlab extras: ``host_netns`` runs every plugin process inside that
network namespace (the spawning thread enters it, so the child starts there),
which is how a lab "node" hosts its plugins; ``log_path`` appends one JSON
line per plugin exec (read by ``netlab cni log``). With ``agent_direct``
(netlab's own labs) a call for one of our launchers goes straight to the
node agent the launcher would have used, without its process (ADR 0030).
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from plugins.core import names, version as ver
from plugins.core.errors import (CNIError, DECODING_FAILURE, INCOMPATIBLE_VERSION, INTERNAL,
                                 INVALID_NETWORK_CONFIG, IO_FAILURE, UNKNOWN_CONTAINER)
from plugins.core.invoke import find_plugin
from plugins.core.types import Result

from plugins.core.fsutil import write_atomic

CACHE_KIND = "cniCacheV1"
DEFAULT_CACHE_DIR = "/var/lib/cni"
DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_CNI_PATH = ("/opt/cni/bin",)
DEFAULT_TIMEOUT = 120.0
VALID_ATTACHMENTS_KEY = "cni.dev/valid-attachments"
LEGACY_ATTACHMENTS_KEY = "cni.dev/attachments"      # libcni sends both (cni#1101)
_CNI_ENV = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")
_FALLBACK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PluginError(CNIError):
    """A plugin failed; carries its CNI error code plus which plugin and command."""

    def __init__(self, code: int, msg: str, details: str = "", *, plugin: str = "",
                 command: str = "", stderr: str = "") -> None:
        super().__init__(code, msg, details)
        self.plugin = plugin
        self.command = command
        self.stderr = stderr

    def __str__(self) -> str:
        where = f"plugin type={self.plugin!r} failed ({self.command.lower()}): " if self.plugin else ""
        text = f"{where}{self.msg}"
        if self.details:
            text += f": {self.details}"
        return f"{text} (code {self.code})"


class MultiError(CNIError):
    """Several independent failures (GC keeps going past errors)."""

    def __init__(self, errors: Sequence[CNIError]) -> None:
        super().__init__(errors[0].code, "; ".join(str(e) for e in errors))
        self.errors = list(errors)


# ---- configuration -----------------------------------------------------------

@dataclass
class NetworkConfigList:
    name: str
    cni_version: str
    plugins: list[dict]
    raw: dict
    bytes: bytes
    disable_check: bool = False
    disable_gc: bool = False
    source: str = ""           # the file it came from, if any


def _conf_error(msg: str, details: str = "", source: str = "") -> CNIError:
    if source:
        details = f"{source}: {details}" if details else source
    return CNIError(INVALID_NETWORK_CONFIG, msg, details)


def _pick_version(raw: dict, source: str) -> str:
    v = raw.get("cniVersion")
    if v is not None and not isinstance(v, str):
        raise _conf_error("cniVersion must be a string", repr(v), source)
    versions = raw.get("cniVersions")
    if versions is not None:
        if not isinstance(versions, list) or not all(isinstance(x, str) for x in versions):
            raise _conf_error("cniVersions must be a list of strings", repr(versions), source)
        cands = [x for x in versions + ([v] if v else [])
                 if ver.parse(x) <= ver.parse(ver.CURRENT)]
        if cands:
            v = max(cands, key=ver.parse)
    if not v:
        raise _conf_error("cniVersion is required", "", source)
    ver.parse(v)
    if v not in ver.SUPPORTED:
        raise CNIError(INCOMPATIBLE_VERSION, f"unsupported cniVersion {v!r}",
                       f"supported: {', '.join(ver.SUPPORTED)}")
    return v


def _read_bool(raw: dict, key: str, source: str) -> bool:
    v = raw.get(key, False)
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise _conf_error(f"{key} must be true or false", repr(v), source)


def conflist_from_dict(raw: Mapping[str, Any], source: str = "",
                       data: bytes | None = None) -> NetworkConfigList:
    """Validate a conflist (``{"name", "cniVersion", "plugins": [...]}``)."""
    if not isinstance(raw, Mapping):
        raise _conf_error("a network configuration list must be a JSON object",
                          type(raw).__name__, source)
    raw = dict(raw)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _conf_error("the configuration list has no name", "", source)
    names.check_network_name(name)
    v = _pick_version(raw, source)
    plugins = raw.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise _conf_error("the configuration list needs a non-empty plugins list", "", source)
    for i, p in enumerate(plugins):
        if not isinstance(p, dict):
            raise _conf_error(f"plugins[{i}] must be a JSON object", "", source)
        t = p.get("type")
        if not isinstance(t, str) or not t or "/" in t or t in (".", ".."):
            raise _conf_error(f"plugins[{i}].type must be a plugin name", repr(t), source)
        caps = p.get("capabilities")
        if caps is not None and not isinstance(caps, dict):
            raise _conf_error(f"plugins[{i}].capabilities must be a JSON object", "", source)
    if data is None:
        data = json.dumps(raw, separators=(",", ":")).encode()
    return NetworkConfigList(name=name, cni_version=v, plugins=[dict(p) for p in plugins],
                             raw=raw, bytes=data,
                             disable_check=_read_bool(raw, "disableCheck", source),
                             disable_gc=_read_bool(raw, "disableGC", source), source=source)


def conflist_from_conf(raw: Mapping[str, Any], source: str = "") -> NetworkConfigList:
    """Upconvert a single-plugin ``.conf`` into a one-plugin list (as libcni does)."""
    if not isinstance(raw, Mapping):
        raise _conf_error("a network configuration must be a JSON object", "", source)
    return conflist_from_dict({"name": raw.get("name"), "cniVersion": raw.get("cniVersion"),
                               "plugins": [dict(raw)]}, source)


def _load_json(path: str) -> tuple[dict, bytes]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CNIError(IO_FAILURE, f"cannot read {path}", e.strerror or str(e)) from None
    try:
        raw = json.loads(data)
    except ValueError as e:
        raise CNIError(DECODING_FAILURE, f"{path} is not valid JSON", str(e)) from None
    if not isinstance(raw, dict):
        raise CNIError(DECODING_FAILURE, f"{path} must hold a JSON object")
    return raw, data


def conf_files(conf_dir: str, extensions: Iterable[str]) -> list[str]:
    """Regular files in ``conf_dir`` with one of ``extensions``, in lexical order."""
    try:
        entries = sorted(os.listdir(conf_dir))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CNIError(IO_FAILURE, f"cannot list {conf_dir}", e.strerror or str(e)) from None
    exts = tuple(extensions)
    out = []
    for e in entries:
        p = os.path.join(conf_dir, e)
        if os.path.splitext(e)[1] in exts and os.path.isfile(p):
            out.append(p)
    return out


def load_conflist(conf_dir: str, name: str) -> NetworkConfigList:
    """The network ``name`` from ``conf_dir``: .conflist files first, then .conf/.json."""
    for path in conf_files(conf_dir, (".conflist",)):
        raw, data = _load_json(path)
        if raw.get("name") == name:
            return conflist_from_dict(raw, path, data)
    for path in conf_files(conf_dir, (".conf", ".json")):
        raw, _ = _load_json(path)
        if raw.get("name") == name:
            return conflist_from_conf(raw, path)
    raise CNIError(INVALID_NETWORK_CONFIG, f"no network named {name!r} in {conf_dir}",
                   "looked at *.conflist, then *.conf and *.json")


def load_file(path: str) -> NetworkConfigList:
    raw, data = _load_json(path)
    if "plugins" in raw:
        return conflist_from_dict(raw, path, data)
    return conflist_from_conf(raw, path)


# ---- arguments ----------------------------------------------------------------

@dataclass(frozen=True)
class Attachment:
    container_id: str
    ifname: str
    network: str = ""
    netns: str = ""
    cni_args: tuple[tuple[str, str], ...] = ()
    capability_args: dict = field(default_factory=dict, compare=False, hash=False)
    config: bytes = field(default=b"", compare=False, hash=False)


def normalize_cni_args(cni_args: Any) -> list[tuple[str, str]]:
    """Accept ``"K=V;K=V"``, a dict or a list of pairs; return ordered pairs."""
    if cni_args is None or cni_args == "":
        return []
    if isinstance(cni_args, str):
        out = []
        for pair in cni_args.split(";"):
            if not pair:
                continue
            k, sep, v = pair.partition("=")
            if not sep or not k:
                raise CNIError(INVALID_NETWORK_CONFIG, "invalid CNI args",
                               f"pair {pair!r} is not KEY=VALUE")
            out.append((k, v))
        return out
    items = cni_args.items() if isinstance(cni_args, Mapping) else cni_args
    out = []
    for item in items:
        k, v = item
        k, v = str(k), str(v)
        if not k or "=" in k or ";" in k or ";" in v:
            raise CNIError(INVALID_NETWORK_CONFIG, "invalid CNI args", f"{k!r}={v!r}")
        out.append((k, v))
    return out


def format_cni_args(pairs: Sequence[tuple[str, str]]) -> str:
    return ";".join(f"{k}={v}" for k, v in pairs)


def _attachment_key(a: Any) -> tuple[str, str]:
    if isinstance(a, Attachment):
        return a.container_id, a.ifname
    if isinstance(a, Mapping):
        return str(a.get("containerID", "")), str(a.get("ifname", ""))
    cid, ifname = a
    return str(cid), str(ifname)


# ---- the runtime ----------------------------------------------------------------

class Runtime:
    """Run CNI plugin executables the way libcni does.

    ``cni_path``: directories searched for plugin executables (list or
    ``:``-separated string). ``conf_dir``: where networks are looked up by
    name. ``cache_dir``: the libcni cache root (``results/`` lives under it).
    ``host_netns``: a netns path the plugin processes run in (their "host").
    ``log_path``: append one JSON line per plugin exec. ``env``: the base
    environment for plugins (default: this process's, like libcni).
    ``rollback``: on a failed ADD, DEL the plugins already run (what
    containerd does after a failed set-up), so nothing is left behind.
    """

    def __init__(self, cni_path: Sequence[str] | str = DEFAULT_CNI_PATH, *,
                 conf_dir: str = DEFAULT_CONF_DIR, cache_dir: str = DEFAULT_CACHE_DIR,
                 host_netns: str | None = None, log_path: str | None = None,
                 env: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT,
                 rollback: bool = True, agent_direct: bool = False) -> None:
        if isinstance(cni_path, str):
            cni_path = [p for p in cni_path.split(os.pathsep) if p]
        self.cni_path = [os.path.abspath(p) for p in cni_path]
        self.conf_dir = conf_dir
        self.cache_dir = cache_dir
        self.host_netns = host_netns or None
        self.log_path = log_path
        self.base_env = dict(os.environ if env is None else env)
        self.timeout = timeout
        self.rollback = rollback
        self.agent_direct = agent_direct

    # ---- configuration --------------------------------------------------------
    def network(self, network: "str | Mapping | NetworkConfigList") -> NetworkConfigList:
        """A network by name (from conf_dir), by file path, or a conflist dict."""
        if isinstance(network, NetworkConfigList):
            return network
        if isinstance(network, Mapping):
            if "plugins" in network:
                return conflist_from_dict(network)
            return conflist_from_conf(network)
        if isinstance(network, str):
            if os.sep in network and os.path.isfile(network):
                return load_file(network)
            return load_conflist(self.conf_dir, network)
        raise TypeError(f"network must be a name, a path or a dict, not {type(network).__name__}")

    def _network_or_cached(self, network, container_id: str, ifname: str) -> NetworkConfigList:
        try:
            return self.network(network)
        except CNIError as e:
            if not isinstance(network, str) or os.sep in network or not names.valid_id(network):
                raise
            if not (names.valid_id(container_id) and not names.ifname_problem(ifname)):
                raise
            info = self._cache_read_info(network, container_id, ifname)
            if not info or info.get("kind") != CACHE_KIND or info.get("networkName") != network:
                raise
            try:
                data = base64.b64decode(info.get("config") or "")
                raw = json.loads(data)
            except ValueError:
                raise e from None
            if not isinstance(raw, dict):
                raise e from None
            source = f"cached config of {self._cache_path(network, container_id, ifname)}"
            if "plugins" in raw:
                return conflist_from_dict(raw, source, data)
            return conflist_from_conf(raw, source)

    # ---- public commands ---------------------------------------------------------
    def add(self, network, netns: str, container_id: str, ifname: str = "eth0",
            capability_args: Mapping[str, Any] | None = None, cni_args: Any = None) -> dict:
        """Run ADD through the list; returns (and caches) the final result dict."""
        net = self.network(network)
        args = normalize_cni_args(cni_args)
        caps = dict(capability_args or {})
        self._validate(net.name, container_id, ifname)
        result: dict | None = None
        done: list[dict] = []
        for plugin in net.plugins:
            conf = self._build(net, plugin, result, caps)
            try:
                out = self._exec(plugin["type"], "ADD", conf, net=net.name,
                                 container_id=container_id, netns=netns, ifname=ifname,
                                 cni_args=args)
                result = _result_as(self._parse_result(plugin["type"], out), net.cni_version)
            except CNIError as e:
                done.append(plugin)
                if self.rollback:
                    self._rollback(net, done, result, caps, netns, container_id, ifname, args, e)
                raise
            done.append(plugin)
        assert result is not None
        self._cache_write(net, container_id, ifname, netns, args, caps, result)
        return result

    def delete(self, network, netns: str, container_id: str, ifname: str = "eth0",
               capability_args: Mapping[str, Any] | None = None, cni_args: Any = None) -> None:
        """Run DEL in reverse with the cached result; drop the cache entry on success.

        When the caller passes no capability/CNI args, the ones cached by ADD are
        used (so ``netlab cni del`` needs only what identifies the attachment).
        A network given by name whose config file is gone is taken from the
        cache entry (libcni caches the config for this), so DEL still works.
        """
        net = self._network_or_cached(network, container_id, ifname)
        self._validate(net.name, container_id, ifname)
        cached = None
        info = self._cache_read_info(net.name, container_id, ifname)
        if ver.at_least(net.cni_version, "0.4.0"):
            try:
                cached = self._cached_result_from(info, net.cni_version)
            except CNIError:
                self._cache_remove(net.name, container_id, ifname)
                cached = None
        if capability_args is None and info and isinstance(info.get("capabilityArgs"), dict):
            capability_args = info["capabilityArgs"]
        if cni_args is None and info and isinstance(info.get("cniArgs"), list):
            cni_args = [tuple(p) for p in info["cniArgs"] if isinstance(p, list) and len(p) == 2]
        args = normalize_cni_args(cni_args)
        caps = dict(capability_args or {})
        for plugin in reversed(net.plugins):
            conf = self._build(net, plugin, cached, caps)
            self._exec(plugin["type"], "DEL", conf, net=net.name, container_id=container_id,
                       netns=netns, ifname=ifname, cni_args=args)
        self._cache_remove(net.name, container_id, ifname)

    def check(self, network, netns: str, container_id: str, ifname: str = "eth0",
              capability_args: Mapping[str, Any] | None = None, cni_args: Any = None) -> None:
        """Run CHECK in order with the cached result (needs cniVersion >= 0.4.0)."""
        net = self.network(network)
        if not ver.at_least(net.cni_version, "0.4.0"):
            raise CNIError(INCOMPATIBLE_VERSION,
                           f"configuration version {net.cni_version!r} does not support the CHECK command")
        if net.disable_check:
            return
        self._validate(net.name, container_id, ifname)
        info = self._cache_read_info(net.name, container_id, ifname)
        cached = self._cached_result_from(info, net.cni_version)
        if cached is None:
            raise CNIError(UNKNOWN_CONTAINER,
                           f"no cached result for network {net.name!r}, container "
                           f"{container_id!r}, interface {ifname!r}",
                           f"looked in {self._cache_path(net.name, container_id, ifname)}; "
                           "CHECK needs the result of a previous ADD")
        if capability_args is None and info and isinstance(info.get("capabilityArgs"), dict):
            capability_args = info["capabilityArgs"]
        args = normalize_cni_args(cni_args)
        caps = dict(capability_args or {})
        for plugin in net.plugins:
            conf = self._build(net, plugin, cached, caps)
            self._exec(plugin["type"], "CHECK", conf, net=net.name, container_id=container_id,
                       netns=netns, ifname=ifname, cni_args=args)

    def gc(self, network, valid_attachments: Iterable[Any] = ()) -> list[Attachment]:
        """DEL every cached attachment of the network not in ``valid_attachments``,
        then send GC to each plugin (cniVersion >= 1.1.0). Keeps going past
        errors and raises them together at the end. Returns what was deleted."""
        net = self.network(network)
        if net.disable_gc:
            return []
        valid = {_attachment_key(a) for a in valid_attachments}
        errors: list[CNIError] = []
        removed: list[Attachment] = []
        for att in self.cached_attachments():
            if att.network != net.name or (att.container_id, att.ifname) in valid:
                continue
            try:
                self.delete(net, att.netns, att.container_id, att.ifname,
                            capability_args=att.capability_args, cni_args=list(att.cni_args))
                removed.append(att)
            except CNIError as e:
                errors.append(CNIError(e.code, f"failed to delete stale attachment "
                                       f"{att.container_id} {att.ifname}: {e}"))
        if ver.at_least(net.cni_version, "1.1.0"):
            listed = [{"containerID": c, "ifname": i} for c, i in sorted(valid)]
            for plugin in net.plugins:
                conf = dict(plugin, name=net.name, cniVersion=net.cni_version)
                conf[VALID_ATTACHMENTS_KEY] = listed
                conf[LEGACY_ATTACHMENTS_KEY] = listed
                try:
                    self._exec(plugin["type"], "GC", conf, net=net.name)
                except CNIError as e:
                    errors.append(e)
        if errors:
            raise errors[0] if len(errors) == 1 else MultiError(errors)
        return removed

    def status(self, network) -> None:
        """STATUS of each plugin in order; raises the first error (a no-op before 1.1.0)."""
        net = self.network(network)
        if not ver.at_least(net.cni_version, "1.1.0"):
            return
        for plugin in net.plugins:
            conf = dict(plugin, name=net.name, cniVersion=net.cni_version)
            self._exec(plugin["type"], "STATUS", conf, net=net.name)

    def version(self, plugin_type: str) -> dict:
        """A plugin's VERSION reply."""
        out = self._exec(plugin_type, "VERSION", {"cniVersion": ver.CURRENT})
        try:
            reply = json.loads(out)
        except ValueError:
            raise CNIError(DECODING_FAILURE, f"plugin {plugin_type} printed an invalid VERSION reply",
                           out[:300]) from None
        return reply

    def validate(self, network) -> list[str]:
        """libcni's ValidateNetworkList: every plugin exists and supports the list's
        version. Returns the capabilities the list enables; raises every problem at once."""
        net = self.network(network)
        problems: list[CNIError] = []
        caps: set[str] = set()
        for plugin in net.plugins:
            caps.update(k for k, on in (plugin.get("capabilities") or {}).items() if on is True)
            try:
                supported = self.version(plugin["type"]).get("supportedVersions") or []
            except CNIError as e:
                problems.append(e)
                continue
            if net.cni_version not in supported:
                problems.append(CNIError(INCOMPATIBLE_VERSION,
                                         f"plugin {plugin['type']} does not support config "
                                         f"version {net.cni_version!r}",
                                         f"it supports {', '.join(map(str, supported))}"))
        if problems:
            raise problems[0] if len(problems) == 1 else MultiError(problems)
        return sorted(caps)

    # ---- cache -------------------------------------------------------------------
    def cached_result(self, network, container_id: str, ifname: str = "eth0") -> dict | None:
        """The cached ADD result, converted to the network's version (None if absent)."""
        net = self.network(network)
        info = self._cache_read_info(net.name, container_id, ifname)
        return self._cached_result_from(info, net.cni_version)

    def cached_attachments(self, container_id: str | None = None) -> list[Attachment]:
        """Every readable cniCacheV1 entry (optionally for one container), sorted by file."""
        d = os.path.join(self.cache_dir, "results")
        try:
            files = sorted(os.listdir(d))
        except FileNotFoundError:
            return []
        out = []
        for fname in files:
            if container_id and f"-{container_id}-" not in fname:
                continue
            try:
                with open(os.path.join(d, fname), "rb") as f:
                    info = json.loads(f.read())
            except (OSError, ValueError):
                continue
            if not isinstance(info, dict) or info.get("kind") != CACHE_KIND:
                continue
            cid, ifn, netname = info.get("containerId"), info.get("ifName"), info.get("networkName")
            if not (isinstance(cid, str) and isinstance(ifn, str) and isinstance(netname, str)
                    and cid and ifn and netname):
                continue
            if container_id and cid != container_id:
                continue
            pairs = tuple(tuple(p) for p in info.get("cniArgs") or []
                          if isinstance(p, list) and len(p) == 2)
            try:
                config = base64.b64decode(info.get("config") or "")
            except ValueError:
                config = b""
            caps = info.get("capabilityArgs")
            out.append(Attachment(container_id=cid, ifname=ifn, network=netname,
                                  netns=str(info.get("netns") or ""), cni_args=pairs,
                                  capability_args=caps if isinstance(caps, dict) else {},
                                  config=config))
        return out

    def _cache_path(self, net_name: str, container_id: str, ifname: str) -> str:
        if not (net_name and container_id and ifname):
            raise CNIError(INVALID_NETWORK_CONFIG,
                           "the cache path needs a network name, a container ID and an interface name")
        return os.path.join(self.cache_dir, "results", f"{net_name}-{container_id}-{ifname}")

    def _cache_write(self, net: NetworkConfigList, container_id: str, ifname: str, netns: str,
                     args: list[tuple[str, str]], caps: dict, result: dict) -> None:
        info: dict[str, Any] = {
            "kind": CACHE_KIND,
            "containerId": container_id,
            "config": base64.b64encode(net.bytes).decode(),
            "ifName": ifname,
            "networkName": net.name,
        }
        if netns:
            info["netns"] = netns
        if args:
            info["cniArgs"] = [list(p) for p in args]
        if caps:
            info["capabilityArgs"] = caps
        info["result"] = result
        path = self._cache_path(net.name, container_id, ifname)
        write_atomic(path, json.dumps(info).encode(), mode=0o600, dir_mode=0o700)

    def _cache_read_info(self, net_name: str, container_id: str, ifname: str) -> dict | None:
        try:
            with open(self._cache_path(net_name, container_id, ifname), "rb") as f:
                data = f.read()
        except OSError:
            return None
        try:
            info = json.loads(data)
        except ValueError:
            return {"kind": "corrupt"}
        return info if isinstance(info, dict) else {"kind": "corrupt"}

    @staticmethod
    def _cached_result_from(info: dict | None, cni_version: str) -> dict | None:
        if info is None:
            return None
        if info.get("kind") == CACHE_KIND:
            raw = info.get("result")
            if raw is None:
                return None
        elif "cniVersion" in info:          # a legacy cache file: the bare result
            raw = info
        else:
            raise CNIError(DECODING_FAILURE, "unreadable cache entry", repr(info.get("kind")))
        return _result_as(raw, cni_version)

    def _cache_remove(self, net_name: str, container_id: str, ifname: str) -> None:
        try:
            os.unlink(self._cache_path(net_name, container_id, ifname))
        except FileNotFoundError:
            pass

    # ---- plumbing ------------------------------------------------------------------
    @staticmethod
    def _validate(net_name: str, container_id: str, ifname: str) -> None:
        names.check_network_name(net_name)
        names.check_container_id(container_id)
        names.check_ifname(ifname)

    @staticmethod
    def _build(net: NetworkConfigList, plugin: dict, prev: dict | None, caps: Mapping) -> dict:
        conf = dict(plugin)
        conf["name"] = net.name
        conf["cniVersion"] = net.cni_version
        if prev is not None:
            conf["prevResult"] = prev
        rc = {k: caps[k] for k, on in (plugin.get("capabilities") or {}).items()
              if on is True and k in caps}
        if rc:
            conf["runtimeConfig"] = rc
        return conf

    def _parse_result(self, plugin: str, out: str) -> dict:
        try:
            res = json.loads(out)
        except ValueError:
            raise PluginError(DECODING_FAILURE, "the plugin printed an invalid result",
                              out[:300], plugin=plugin, command="ADD") from None
        if not isinstance(res, dict):
            raise PluginError(DECODING_FAILURE, "the plugin printed a result that is not an object",
                              out[:300], plugin=plugin, command="ADD")
        return res

    def _rollback(self, net: NetworkConfigList, done: list[dict], result: dict | None,
                  caps: dict, netns: str, container_id: str, ifname: str,
                  args: list[tuple[str, str]], err: CNIError) -> None:
        problems = []
        for plugin in reversed(done):
            conf = self._build(net, plugin, result, caps)
            try:
                self._exec(plugin["type"], "DEL", conf, net=net.name, container_id=container_id,
                           netns=netns, ifname=ifname, cni_args=args)
            except CNIError as e:
                problems.append(f"{plugin['type']}: {e.msg}")
        if problems:
            extra = "rollback DEL failed: " + "; ".join(problems)
            err.details = f"{err.details}; {extra}" if err.details else extra

    def plugin_env(self, command: str, *, container_id: str = "", netns: str = "",
                   ifname: str = "", cni_args: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
        env = {k: v for k, v in self.base_env.items() if k not in _CNI_ENV}
        env.setdefault("PATH", _FALLBACK_PATH)
        env["CNI_COMMAND"] = command
        env["CNI_PATH"] = os.pathsep.join(self.cni_path)
        if container_id:
            env["CNI_CONTAINERID"] = container_id
        if netns:
            env["CNI_NETNS"] = netns
        if ifname:
            env["CNI_IFNAME"] = ifname
        if cni_args:
            env["CNI_ARGS"] = format_cni_args(cni_args)
        return env

    def _exec(self, plugin: str, command: str, conf: dict, *, net: str = "",
              container_id: str = "", netns: str = "", ifname: str = "",
              cni_args: Sequence[tuple[str, str]] = ()) -> str:
        exe = find_plugin(plugin, self.cni_path)
        env = self.plugin_env(command, container_id=container_id, netns=netns, ifname=ifname,
                              cni_args=cni_args)
        stdin = json.dumps(conf).encode()
        host_fd = None
        if self.host_netns:
            try:
                host_fd = os.open(self.host_netns, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise CNIError(UNKNOWN_CONTAINER, f"host network namespace {self.host_netns} "
                               "cannot be opened", e.strerror or str(e)) from None
        start = time.monotonic()
        status: int | None = None
        out = err = ""
        via_agent = False
        try:
            reply = self._offer_to_agent(exe, plugin, command, env, stdin, host_fd)
            if reply is not None:
                via_agent = True
                status, out, err = reply
                return self._checked(plugin, command, status, out, err)
            try:
                with _thread_in_netns(host_fd):
                    p = subprocess.run([exe], input=stdin, env=env, capture_output=True,
                                       timeout=self.timeout, cwd="/")
            except subprocess.TimeoutExpired as e:
                err = (e.stderr or b"").decode(errors="replace")
                raise PluginError(INTERNAL, f"timed out after {self.timeout:g}s", plugin=plugin,
                                  command=command, stderr=err) from None
            except (OSError, subprocess.SubprocessError) as e:
                raise PluginError(IO_FAILURE, "cannot execute the plugin", str(e),
                                  plugin=plugin, command=command) from None
            status = p.returncode
            out = p.stdout.decode(errors="replace")
            err = p.stderr.decode(errors="replace")
        finally:
            if host_fd is not None:
                os.close(host_fd)
            self._log(plugin=plugin, path=exe, command=command, env=env, stdin=conf,
                      stdout=out, stderr=err, status=status, duration=time.monotonic() - start,
                      network=net, container_id=container_id, ifname=ifname, netns=netns,
                      agent=via_agent)
        return self._checked(plugin, command, status, out, err)

    @staticmethod
    def _checked(plugin: str, command: str, status: int | None, out: str, err: str) -> str:
        if status != 0:
            raise _plugin_failure(plugin, command, status, out, err)
        return out

    def _offer_to_agent(self, exe: str, plugin: str, command: str, env: Mapping[str, str],
                        stdin: bytes, host_fd: int | None) -> tuple[int, str, str] | None:
        """With ``agent_direct``: hand the call to the node agent ourselves, exactly
        as the exec'd launcher would (same env, stdin and netns, same agent), and
        skip its process; None: exec it (agent off, absent, busy, refused, not our
        launcher, VERSION). An ADD the agent accepted and then lost is error 11,
        as from the launcher; the launcher redoes other calls, so does this."""
        from cninode import launcher
        if (not self.agent_direct or command == "VERSION" or host_fd is None
                or not launcher.agent_enabled(env) or not _is_our_launcher(exe)):
            return None
        environb = {k.encode("utf-8", "surrogateescape"): v.encode("utf-8", "surrogateescape")
                    for k, v in env.items()}
        try:
            reply = launcher.call_agent(
                launcher.socket_path(env), plugin, environb, stdin, netns_fd=host_fd,
                ack_timeout=_env_float(env, launcher.ACK_TIMEOUT_ENV, launcher.DEFAULT_ACK_TIMEOUT),
                result_timeout=min(self.timeout, _env_float(env, launcher.RESULT_TIMEOUT_ENV,
                                                            launcher.DEFAULT_RESULT_TIMEOUT)))
        except launcher.AgentLost as e:
            if command in launcher.REDO_SAFE:
                return None
            return 1, launcher.lost_error(plugin, command, stdin, str(e)), ""
        if reply is None:
            return None
        rc, outb, errb = reply
        return rc, outb.decode(errors="replace"), errb.decode(errors="replace")

    def _log(self, **entry: Any) -> None:
        if not self.log_path:
            return
        env = entry.pop("env")
        line = {
            "time": time.time(),
            "plugin": entry["plugin"],
            "path": entry["path"],
            "command": entry["command"],
            "network": entry["network"],
            "container_id": entry["container_id"],
            "ifname": entry["ifname"],
            "netns": entry["netns"],
            "host_netns": self.host_netns or "",
            "env": {k: v for k, v in env.items() if k.startswith("CNI")},
            "stdin": entry["stdin"],
            "stdout": entry["stdout"],
            "stderr": entry["stderr"],
            "exit_status": entry["status"],
            "duration_ms": round(entry["duration"] * 1000, 3),
        }
        if entry.get("agent"):
            line["via"] = "agent"      # handed to the node agent directly, no process
        data = (json.dumps(line) + "\n").encode()
        try:
            parent = os.path.dirname(self.log_path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError:
            pass   # a log must never break the call it records


_OUR_LAUNCHERS: dict[tuple[str, float], bool] = {}


def _is_our_launcher(exe: str) -> bool:
    """Is ``exe`` one of our launcher scripts (cninode.install)? Cached per file version."""
    try:
        key = (exe, os.stat(exe).st_mtime)
    except OSError:
        return False
    if key not in _OUR_LAUNCHERS:
        from cninode.install import is_ours
        _OUR_LAUNCHERS[key] = is_ours(exe)
    return _OUR_LAUNCHERS[key]


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        v = float(env.get(name, ""))
        return v if v > 0 else default
    except ValueError:
        return default


@contextlib.contextmanager
def _thread_in_netns(fd: int | None):
    """Run the block with this thread in the host netns ``fd`` (None: stay).

    setns(2) is per thread, and a child inherits the namespaces of the thread
    that spawns it; so the plugin starts in the host netns without a
    ``preexec_fn``, and subprocess can vfork instead of forking (copying the
    page tables of) this whole process for each plugin exec."""
    if fd is None:
        yield
        return
    from plugins.core import netns as core_netns
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        core_netns.setns(fd)
        try:
            yield
        finally:
            try:
                core_netns.setns(own)
            except OSError:
                os._exit(70)      # a thread left in the wrong namespace would make every later step lie
    finally:
        os.close(own)


def _plugin_failure(plugin: str, command: str, status: int | None, out: str, err: str) -> PluginError:
    try:
        obj = json.loads(out)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and "code" in obj:
        try:
            code = int(obj.get("code"))
        except (TypeError, ValueError):
            code = INTERNAL
        return PluginError(code, str(obj.get("msg", "")), str(obj.get("details", "") or ""),
                           plugin=plugin, command=command, stderr=err)
    text = (out.strip() or err.strip())[-500:]
    return PluginError(INTERNAL, f"exited with status {status} without an error object", text,
                       plugin=plugin, command=command, stderr=err)


def _result_as(raw: Any, cni_version: str) -> dict:
    """A result dict in ``cni_version`` (passed through untouched when already there)."""
    if isinstance(raw, dict) and raw.get("cniVersion") == cni_version:
        return raw
    try:
        return Result.from_dict(raw).to_dict(cni_version)
    except CNIError as e:
        raise CNIError(DECODING_FAILURE, f"cannot convert the result to {cni_version}: {e.msg}",
                       e.details) from None


__all__ = ["Runtime", "NetworkConfigList", "Attachment", "PluginError", "MultiError",
           "conflist_from_dict", "conflist_from_conf", "load_conflist", "load_file",
           "conf_files", "normalize_cni_args", "format_cni_args"]
