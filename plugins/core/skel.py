"""The dispatcher: env table, version gates, validation, error objects.

``dispatch()`` is pure with respect to the process: it takes the environment
and stdin and returns (stdout, exit code). The launcher, the node agent and
in-process IPAM delegation all call it, so they behave identically.
"""
from __future__ import annotations

import os
import sys
TYPE_CHECKING = False       # not from typing: importing typing costs ~4 ms per exec

from . import cniargs, names, version as ver
from .errors import (CNIError, INCOMPATIBLE_VERSION, INTERNAL, INVALID_ENV, NETNS_IS_OWN,
                     NOT_IMPLEMENTED, as_cni_error)
from .record import field, record

if TYPE_CHECKING:   # config/types (ipaddress, JSON decoding) load only past VERSION
    from typing import Callable, Mapping
    from .config import NetConf

# Start-up cost matters (every call is a process start): this module avoids
# heavy imports at load time (typing, ipaddress, json), so VERSION and env errors
# cost little more than the interpreter start. config.py and types.py load
# once a command actually needs the network config.

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

# Which variables each command needs (SPEC.md "Parameters"; CNI_ARGS is never required).
REQUIRED: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}
# The minimum config version that allows a command.
MIN_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

# Plugin name -> module; the module is imported only once input is valid.
PLUGINS: dict[str, str] = {
    "bridge": "plugins.bridge",
    "host-local": "ipam.host_local",
    "portmap": "plugins.portmap",
    "bandwidth": "plugins.bandwidth",
    "vxlan": "plugins.vxlan",
    "loopback": "plugins.loopback",
    "firewall": "plugins.firewall",
    "tuning": "plugins.tuning",
    "dhcp": "plugins.dhcp",
}


@record
class CmdArgs:
    """The call as the runtime made it (env + stdin), validated."""
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: str = ""
    path: list[str] = field(default_factory=list)
    stdin: bytes = b""
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def cni_args(self) -> dict[str, str]:
        return cniargs.parse(self.args)


@record
class Call:
    """What a plugin handler receives: the call and the parsed shared config."""
    args: CmdArgs
    conf: NetConf

    @property
    def plugin_env(self) -> dict[str, str]:
        """The environment to pass to a delegated plugin (same call, same env)."""
        return dict(self.args.env)


Handler = "Callable[[Call], object]"   # a handler: add/delete/check/gc/status


def read_env(env: Mapping[str, str], stdin: bytes) -> CmdArgs:
    cmd = env.get("CNI_COMMAND", "")
    if not cmd:
        raise CNIError(INVALID_ENV, "required env variables [CNI_COMMAND] missing")
    if cmd not in COMMANDS:
        raise CNIError(INVALID_ENV, f"unknown CNI_COMMAND: {cmd[:64]!r}",
                       f"expected one of {', '.join(COMMANDS)}")
    missing = [k for k in REQUIRED[cmd] if not env.get(k)]
    if missing:
        # the Go skel's exact text: runtimes and tests match on it
        raise CNIError(INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    if cmd == "VERSION":
        # VERSION ignores the other variables: libcni's GetVersionInfo (podman's
        # network validation) sends CNI_NETNS=dummy, CNI_IFNAME=dummy, CNI_PATH=dummy.
        return CmdArgs(command=cmd, stdin=stdin, env=env)
    path = [p for p in env.get("CNI_PATH", "").split(os.pathsep) if p]
    a = CmdArgs(command=cmd, container_id=env.get("CNI_CONTAINERID", ""),
                netns=env.get("CNI_NETNS", ""), ifname=env.get("CNI_IFNAME", ""),
                args=env.get("CNI_ARGS", ""), path=path, stdin=stdin, env=env)
    if a.container_id:
        names.check_container_id(a.container_id)
    if a.ifname:
        names.check_ifname(a.ifname)
    if a.netns and not a.netns.startswith("/"):
        raise CNIError(INVALID_ENV, "CNI_NETNS must be an absolute path", a.netns[:200])
    cniargs.parse(a.args)    # malformed CNI_ARGS is an env error for every command
    return a


def _netns_is_own(path: str) -> bool:
    try:
        a = os.stat(path)
        b = os.stat("/proc/thread-self/ns/net")
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def load_handlers(plugin: str, command: str) -> Handler:
    import importlib
    modname = PLUGINS.get(plugin)
    if modname is None:
        raise CNIError(NOT_IMPLEMENTED, f"unknown plugin {plugin!r}")
    mod = importlib.import_module(modname)   # every listed plugin exists: a failing import is a bug
    fn = getattr(mod, {"DEL": "delete"}.get(command, command.lower()), None)
    if fn is None:
        raise CNIError(NOT_IMPLEMENTED, f"the {plugin} plugin does not implement {command}")
    return fn


def run_call(plugin: str, a: CmdArgs) -> "tuple[str, NetConf | None]":
    """Everything after env validation; returns stdout text (may be '')."""
    if a.command == "VERSION":
        return version_json(), None
    from .config import decode, parse_netconf
    raw = decode(a.stdin)
    conf = parse_netconf(raw, require_name=a.command != "STATUS" or "name" in raw)
    minimum = MIN_VERSION.get(a.command)
    if minimum and not ver.at_least(conf.cni_version, minimum):
        raise CNIError(INCOMPATIBLE_VERSION,
                       f"config version {conf.cni_version} does not allow {a.command}",
                       f"{a.command} needs cniVersion {minimum} or later")
    if a.command in ("ADD", "CHECK") and _netns_is_own(a.netns):
        raise CNIError(NETNS_IS_OWN, "CNI_NETNS is the plugin's own network namespace",
                       a.netns)
    handler = load_handlers(plugin, a.command)
    result = handler(Call(a, conf))
    if a.command == "ADD":
        if result is None:
            raise CNIError(INTERNAL, f"{plugin} ADD returned no result")
        import json
        return json.dumps(result.to_dict(conf.cni_version)), conf
    return "", conf


def version_json() -> str:
    """The VERSION reply, formatted without the json module (hot path: every
    runtime asks VERSION; the strings are fixed version numbers)."""
    reply = ver.version_reply()
    listed = ", ".join(f'"{v}"' for v in reply["supportedVersions"])
    return f'{{"cniVersion": "{reply["cniVersion"]}", "supportedVersions": [{listed}]}}'


def error_version(stdin: bytes) -> str:
    """The version to print an error in: the config's when readable."""
    try:
        from .gojson import Fields, loads       # the same key rules as the config itself
        v = Fields(loads(stdin)).raw("cniVersion")
        if v in ver.SUPPORTED:
            return v
    except Exception:
        pass
    return ver.CURRENT


def dispatch(plugin: str, env: Mapping[str, str], stdin: bytes,
             log: Callable[[str], None] | None = None) -> tuple[str, int]:
    """Run one CNI call; returns (stdout, exit status). Never raises."""
    try:
        a = read_env(env, stdin)
        out, _ = run_call(plugin, a)
        return out, 0
    except BaseException as exc:  # noqa: BLE001 - everything becomes a CNI error
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        err = as_cni_error(exc)
        if not isinstance(exc, CNIError) and log is not None:
            import traceback
            log("".join(traceback.format_exception(exc)))
        return err.to_json(error_version(stdin)), 1


def main(plugin: str) -> None:
    """Process entry point: env + stdin in, result or error object out."""
    env = os.environ
    stdin = b"" if env.get("CNI_COMMAND") == "VERSION" else sys.stdin.buffer.read()
    out, code = dispatch(plugin, env, stdin, log=sys.stderr.write)
    if out:
        sys.stdout.write(out + "\n")
    sys.stdout.flush()
    sys.exit(code)
