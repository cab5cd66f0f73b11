"""tuning: sysctls and link attributes of the pod interface, put back at DEL.

A chained plugin (after a main plugin such as bridge). Inside the pod's
network namespace it writes the ``sysctl`` map (``net.*`` keys only, the
reference's optional allow-list honoured) and sets the interface's ``mac``,
``mtu``, ``promisc``, ``allmulti`` and ``txQLen``. The values it changes are
saved first, in a state file keyed by (network, container ID, ifname), and DEL
restores them; GC drops the state of attachments the runtime no longer has.
The result is prevResult with the pod interface's MAC updated.

Sources of each value, later ones winning (as the reference): the config's
top-level fields; ``CNI_ARGS`` ``MAC=``; ``runtimeConfig.mac`` (capability
``mac``); ``args.cni`` {sysctl (merged), mac, promisc, mtu, allmulti, txQLen}.
See docs/plugins/tuning.md.
"""
from __future__ import annotations

import contextlib
import json
import os

from .core import cniargs, names
from .core.config import Fields, require_prev_result
from .core.errors import CHECK_FAILED, CNIError, INVALID_NETWORK_CONFIG, IO_FAILURE, NOT_AVAILABLE
from .core.record import field, record
from .core.types import Result

DEFAULT_RUN_DIR = "/run/cnilab"
# The reference's allow-list: when the file exists, every sysctl key must match
# (regular-expression search) one of its non-empty lines.
ALLOWLIST = "/etc/cni/tuning/allowlist.conf"
MAX_TXQLEN = 2**32 - 1
_SYSCTL_ROOT = "/proc/sys"


@record
class TuningConf:
    network: str
    sysctl: dict[str, str] = field(default_factory=dict)   # key as given -> value
    mac: str = ""
    promisc: bool = False
    mtu: int = 0
    allmulti: bool | None = None
    txqlen: int | None = None
    data_dir: str = ""

    def touches_link(self) -> bool:
        return bool(self.mac or self.mtu or self.promisc or self.allmulti is not None
                    or self.txqlen is not None)

    def is_empty(self) -> bool:
        return not (self.sysctl or self.touches_link())


# ---- config -------------------------------------------------------------------

def _sysctl_map(f: Fields, key: str) -> dict[str, str]:
    obj = f.obj(key)
    out: dict[str, str] = {}
    for k, v in obj.data.items():
        if not isinstance(v, str):
            raise CNIError(INVALID_NETWORK_CONFIG, f"{obj.path(k)} must be a string",
                           f"got {json.dumps(v)[:100]} (sysctl values are strings, as the "
                           "reference's map[string]string)")
        out[k] = v
    return out


def _mtu(f: Fields) -> int:
    mtu = f.int("mtu", 0, lo=0, hi=65535)
    if 0 < mtu < 68:
        raise CNIError(INVALID_NETWORK_CONFIG, f"{f.path('mtu')} must be 0 (unchanged) or "
                       "between 68 and 65535", f"got {mtu}")
    return mtu


def _opt_bool(f: Fields, key: str) -> bool | None:
    return f.bool(key) if f.has(key) else None


def _opt_txqlen(f: Fields) -> int | None:
    return f.int("txQLen", lo=0, hi=MAX_TXQLEN) if f.has("txQLen") else None


def _duplicate_sysctl_keys(stdin: bytes) -> list[str]:
    """Keys given twice in a ``sysctl`` object (the reference refuses those; a
    plain JSON decode would silently keep the last)."""
    dups: list[str] = []

    def hook(items):
        for k, v in items:
            if k == "sysctl" and isinstance(v, _Seen):
                dups.extend(v.repeated)
        keys = [k for k, _ in items]
        return _Seen(items, sorted({k for k in keys if keys.count(k) > 1}))

    try:
        json.loads(stdin, object_pairs_hook=hook)
    except (ValueError, RecursionError):
        return []                 # the core already decoded it: cannot happen
    return dups


class _Seen(dict):
    """A decoded object remembering which of its keys were repeated."""

    def __init__(self, items, repeated: list[str]) -> None:
        super().__init__(items)
        self.repeated = repeated


def parse_config(call) -> TuningConf:
    """The effective settings (all sources merged); code 7 for anything malformed."""
    conf = call.conf
    f = Fields(conf.raw)
    dups = _duplicate_sysctl_keys(call.args.stdin) if call.args.stdin else []
    if dups:
        raise CNIError(INVALID_NETWORK_CONFIG, "duplicated sysctl keys are not allowed",
                       ", ".join(sorted(set(dups)))[:300])
    c = TuningConf(network=conf.name, sysctl=_sysctl_map(f, "sysctl"), promisc=f.bool("promisc"),
                   mtu=_mtu(f), allmulti=_opt_bool(f, "allmulti"), txqlen=_opt_txqlen(f))
    if f.str("mac"):
        c.mac = names.check_mac(f.str("mac"), "mac")
    env_args = cniargs.select(call.args.cni_args, {"MAC", "IP"})   # IP: host-local's
    if env_args.get("MAC"):
        c.mac = names.check_mac(env_args["MAC"], "CNI_ARGS MAC")
    rc = Fields(conf.runtime_config, "runtimeConfig")
    if rc.str("mac"):
        c.mac = names.check_mac(rc.str("mac"), "runtimeConfig.mac")
    cni = Fields(conf.args, "args").obj("cni")
    c.sysctl.update(_sysctl_map(cni, "sysctl"))
    if cni.has("mac"):
        c.mac = names.check_mac(cni.str("mac"), cni.path("mac"))
    if cni.has("promisc"):
        c.promisc = cni.bool("promisc")
    if cni.has("mtu"):
        c.mtu = _mtu(cni)
    if cni.has("allmulti"):
        c.allmulti = cni.bool("allmulti")
    if cni.has("txQLen"):
        c.txqlen = _opt_txqlen(cni)
    data_dir = f.str("dataDir")
    if data_dir and not data_dir.startswith("/"):
        raise CNIError(INVALID_NETWORK_CONFIG, "dataDir must be an absolute path", data_dir[:200])
    c.data_dir = data_dir or os.path.join(_run_dir(call), "tuning")
    return c


def _run_dir(call) -> str:
    # the call's environment first: in the node agent it differs from the process's
    return (call.args.env.get("CNILAB_RUN_DIR") or os.environ.get("CNILAB_RUN_DIR")
            or DEFAULT_RUN_DIR)


# ---- sysctl keys --------------------------------------------------------------

def sysctl_path(key: str, ifname: str) -> str:
    """The path under /proc/sys for ``key`` (dots separate levels; the first
    ``IFNAME`` becomes the interface name, which may itself contain dots).

    Only ``net.*``; no empty, ``.`` or ``..`` level, no ``/`` and no control
    characters: a key can never name a file outside /proc/sys/net.
    """
    if not isinstance(key, str) or not key:
        raise CNIError(INVALID_NETWORK_CONFIG, "sysctl keys must be non-empty strings")
    if "/" in key or any(not ch.isprintable() or ch.isspace() for ch in key):
        raise CNIError(INVALID_NETWORK_CONFIG, f"sysctl key {key[:100]!r} is not valid",
                       "write keys with dots (net.ipv4.conf.IFNAME.forwarding); '/' and "
                       "whitespace are not allowed")
    parts = key.split(".")
    for n, p in enumerate(parts):
        if "IFNAME" in p:
            parts[n] = p.replace("IFNAME", ifname, 1)
            break
    if parts[0] != "net" or len(parts) < 2 or any(p in ("", ".", "..") for p in parts):
        raise CNIError(INVALID_NETWORK_CONFIG, f"invalid net sysctl key {key[:100]!r}",
                       "only keys below net. are allowed, with no empty level")
    return "/".join(parts)


def read_allowlist(path: str | None = None) -> list[str] | None:
    """The allow-list's patterns, or None when there is no allow-list file."""
    path = path or ALLOWLIST
    try:
        with open(path) as fh:
            text = fh.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CNIError(IO_FAILURE, f"cannot read the sysctl allow-list {path}", str(e)) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def check_allowed(keys, allow: list[str] | None) -> None:
    if allow is None:
        return
    import re
    pats = []
    for p in allow:
        try:
            pats.append(re.compile(p))
        except re.error as e:
            raise CNIError(INVALID_NETWORK_CONFIG, f"the sysctl allow-list {ALLOWLIST} has an "
                           f"invalid pattern {p[:100]!r}", str(e)) from None
    for k in keys:
        if not any(p.search(k) for p in pats):
            raise CNIError(INVALID_NETWORK_CONFIG, f"sysctl {k[:100]} is not allowed",
                           f"only keys matching the allow-list {ALLOWLIST} are: {allow}"[:500])


def _resolve_sysctls(c: TuningConf, ifname: str) -> dict[str, str]:
    """{relative path: value}; every key valid and allowed (pure but for the allow-list)."""
    out: dict[str, str] = {}
    for k, v in c.sysctl.items():
        out[sysctl_path(k, ifname)] = v
    check_allowed(c.sysctl, read_allowlist())
    return out


def _read_sysctl(rel: str) -> str:
    with open(os.path.join(_SYSCTL_ROOT, rel)) as fh:
        return fh.read().rstrip("\n")


def _write_sysctl(rel: str, value: str) -> None:
    with open(os.path.join(_SYSCTL_ROOT, rel), "w") as fh:
        fh.write(value)


def _check_sysctls_exist(paths) -> None:
    """In the pod's namespace: every key names a sysctl file there (a per-namespace
    sysctl; keys of the node only, or of another interface, are refused)."""
    for rel in paths:
        if not os.path.isfile(os.path.join(_SYSCTL_ROOT, rel)):
            raise CNIError(INVALID_NETWORK_CONFIG,
                           f"sysctl {rel.replace('/', '.')} does not exist in the pod's network "
                           "namespace", "it is not a per-namespace network sysctl, or names "
                           "an interface the pod does not have")


# ---- state --------------------------------------------------------------------

def state_path(c: TuningConf, container_id: str, ifname: str) -> str:
    # ':' is in neither a container ID nor an interface name: the name is unambiguous
    return os.path.join(c.data_dir, c.network, f"{container_id}:{ifname}.json")


def _load_state(path: str) -> dict | None:
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CNIError(IO_FAILURE, f"tuning state {path} is unreadable", str(e)[:300]) from None
    return data if isinstance(data, dict) else None


def _save_state(path: str, container_id: str, ifname: str, saved: dict) -> None:
    from .core.fsutil import write_atomic
    data = {"containerID": container_id, "ifname": ifname, "saved": saved}
    try:
        write_atomic(path, json.dumps(data, sort_keys=True).encode(), mode=0o600,
                     dir_mode=0o700)
    except OSError as e:
        raise CNIError(IO_FAILURE, f"cannot save the interface's original settings in {path}",
                       str(e)) from None


def _remove_state(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# state-file key -> the LinkInfo attribute holding its current value
_LINK_ATTR = {"mac": "mac", "mtu": "mtu", "promisc": "promisc", "allmulti": "allmulti",
              "txQLen": "txqlen"}


def originals(c: TuningConf, link, sysctls: dict[str, str]) -> dict:
    """What ADD is about to change, as it is now (the values DEL puts back)."""
    saved: dict = {k: getattr(link, _LINK_ATTR[k]) for k in wanted_link_values(c)}
    if sysctls:
        saved["sysctl"] = {rel: _read_sysctl(rel) for rel in sysctls}
    return saved


# ---- link changes (inside the pod namespace; netlink without pyroute2) ------------

def _set(index: int, what: str, **kw) -> None:
    from .net import link as ln
    ln.set_link_basics(index, what, **kw)


def _flag(index: int, flag: int, on: bool, what: str) -> None:
    _set(index, what, flags=flag if on else 0, change=flag)


def apply_link(index: int, ifname: str, values: dict, undo=None, now=None) -> None:
    """Set ``values`` (the keys of the state file: mac, mtu, promisc, allmulti,
    txQLen); with ``undo``, register putting back ``now``'s values for each."""
    from .net import link as ln
    steps = [
        ("mac", lambda v: _set(index, f"setting the MAC of {ifname}", mac=v)),
        ("promisc", lambda v: _flag(index, ln.IFF_PROMISC, v, f"promisc on {ifname}")),
        ("mtu", lambda v: _set(index, f"setting the MTU of {ifname}", mtu=v)),
        ("allmulti", lambda v: _flag(index, ln.IFF_ALLMULTI, v, f"allmulti on {ifname}")),
        ("txQLen", lambda v: _set(index, f"setting txqueuelen of {ifname}", txqlen=v)),
    ]
    for key, fn in steps:
        if key not in values:
            continue
        fn(values[key])
        if undo is not None:
            undo.callback(fn, now[key])


def _pod_link(ifname: str):
    from .net import link as ln
    lk = ln.link_basics(ifname)
    if lk is None:
        raise CNIError(IO_FAILURE, f"interface {ifname} not found in the pod's namespace")
    return lk


def wanted_link_values(c: TuningConf) -> dict:
    out: dict = {}
    if c.mac:
        out["mac"] = c.mac
    if c.promisc:
        out["promisc"] = True
    if c.mtu:
        out["mtu"] = c.mtu
    if c.allmulti is not None:
        out["allmulti"] = c.allmulti
    if c.txqlen is not None:
        out["txQLen"] = c.txqlen
    return out


# ---- handlers -----------------------------------------------------------------

def add(call) -> Result:
    c = parse_config(call)
    prev = require_prev_result(call.conf, "tuning")
    if c.is_empty():
        return prev
    a = call.args
    sysctls = _resolve_sysctls(c, a.ifname)
    path = state_path(c, a.container_id, a.ifname)
    earlier = (_load_state(path) or {}).get("saved") or {}
    from .core import netns
    with netns.entered(a.netns):
        _check_sysctls_exist(sysctls)
        with contextlib.ExitStack() as undo:
            lk = _pod_link(a.ifname)
            now = originals(c, lk, sysctls)
            # an ADD repeated without DEL keeps the first ADD's originals
            saved = dict(now)
            for k, v in earlier.items():
                if k == "sysctl":
                    saved["sysctl"] = dict(saved.get("sysctl", {}), **v)
                elif k in saved:
                    saved[k] = v
            _save_state(path, a.container_id, a.ifname, dict(earlier, **saved))
            if earlier:
                undo.callback(_save_state, path, a.container_id, a.ifname, earlier)
            else:
                undo.callback(_remove_state, path)
            for rel, value in sysctls.items():
                try:
                    _write_sysctl(rel, value)
                except OSError as e:
                    raise CNIError(IO_FAILURE, f"writing sysctl {rel.replace('/', '.')}="
                                   f"{value[:50]!r} failed", str(e)) from None
                undo.callback(_write_sysctl, rel, now["sysctl"][rel])
            apply_link(lk.index, a.ifname, wanted_link_values(c), undo, now)
            undo.pop_all()
    result = prev.copy()
    if c.mac:
        for iface in result.interfaces:
            if iface.name == a.ifname and iface.sandbox:
                iface.mac = c.mac
    return result


def delete(call) -> None:
    """Put back what ADD changed (when the pod and its interface still exist),
    then forget it. Without a state file there is nothing to do."""
    c = parse_config(call)
    a = call.args
    path = state_path(c, a.container_id, a.ifname)
    st = _load_state(path)
    if st is None:
        return None
    saved = st.get("saved") or {}
    from .core import netns
    problems: list[str] = []
    if a.netns and netns.exists(a.netns):
        problems = _restore(a.netns, a.ifname, saved)
    if problems:
        raise CNIError(IO_FAILURE, f"restoring {a.ifname}'s settings failed",
                       "; ".join(problems)[:1000])
    _remove_state(path)
    return None


def _restore(netns_path: str, ifname: str, saved: dict) -> list[str]:
    from .core import netns
    from .net import link as ln
    problems: list[str] = []
    with netns.entered(netns_path):
        for rel, value in (saved.get("sysctl") or {}).items():
            try:
                if os.path.isfile(os.path.join(_SYSCTL_ROOT, rel)):
                    _write_sysctl(rel, value)
            except OSError as e:
                problems.append(f"sysctl {rel.replace('/', '.')}: {e}")
        lk = ln.link_basics(ifname)
        if lk is None:
            return problems           # the interface is gone: nothing to put back
        # MTU first, as the reference restores
        for key in ("mtu", "mac", "promisc", "allmulti", "txQLen"):
            if key in saved:
                try:
                    apply_link(lk.index, ifname, {key: saved[key]})
                except CNIError as e:
                    problems.append(f"{key}: {e.msg} ({e.details})")
    return problems


def check(call) -> None:
    c = parse_config(call)
    require_prev_result(call.conf, "tuning")
    a = call.args
    sysctls = _resolve_sysctls(c, a.ifname)
    from .core import netns
    from .net import link as ln
    problems: list[str] = []
    with netns.entered(a.netns):
        for rel, want in sysctls.items():
            try:
                have = _read_sysctl(rel)
            except OSError as e:
                problems.append(f"sysctl {rel.replace('/', '.')} unreadable: {e}")
                continue
            if have != want:
                problems.append(f"sysctl {rel.replace('/', '.')} is {have!r}, configured "
                                f"{want!r}")
        lk = ln.link_basics(a.ifname)
    if lk is None:
        raise CNIError(CHECK_FAILED, f"interface {a.ifname} not found in the pod's namespace")
    if c.mac and lk.mac != c.mac:
        problems.append(f"MAC is {lk.mac}, configured {c.mac}")
    # as the reference: promisc false means the interface must not be promiscuous
    if lk.promisc != c.promisc:
        problems.append(f"promisc is {lk.promisc}, configured {c.promisc}")
    if c.mtu and lk.mtu != c.mtu:
        problems.append(f"MTU is {lk.mtu}, configured {c.mtu}")
    if c.allmulti is not None and lk.allmulti != c.allmulti:
        problems.append(f"allmulti is {lk.allmulti}, configured {c.allmulti}")
    if c.txqlen is not None and lk.txqlen != c.txqlen:
        problems.append(f"txQLen is {lk.txqlen}, configured {c.txqlen}")
    if problems:
        raise CNIError(CHECK_FAILED, f"tuning of {a.ifname} does not match the config",
                       "; ".join(problems))


def gc(call) -> None:
    """Forget the saved settings of attachments the runtime no longer has (their
    namespaces are unknown, so nothing can be put back; the state must not pile up)."""
    c = parse_config(call)
    from .core.config import valid_attachments
    valid = valid_attachments(call.conf.raw)
    d = os.path.join(c.data_dir, c.network)
    try:
        entries = os.listdir(d)
    except FileNotFoundError:
        return None
    for n in entries:
        if not n.endswith(".json") or n.startswith("."):
            continue
        p = os.path.join(d, n)
        try:
            st = _load_state(p) or {}
        except CNIError:
            continue                      # not ours to judge: leave it
        owner = (st.get("containerID"), st.get("ifname"))
        if isinstance(owner[0], str) and isinstance(owner[1], str) and owner not in valid \
                and n == f"{owner[0]}:{owner[1]}.json":
            _remove_state(p)
    return None


def status(call) -> None:
    """Ready when the state directory can be made and written."""
    c = parse_config(call)
    from .core.fsutil import make_dirs
    try:
        make_dirs(c.data_dir, 0o700)
    except OSError as e:
        raise CNIError(NOT_AVAILABLE, f"tuning state directory {c.data_dir} is not usable",
                       str(e)) from None
    if not os.access(c.data_dir, os.W_OK | os.X_OK):
        raise CNIError(NOT_AVAILABLE, f"tuning state directory {c.data_dir} is not writable")
