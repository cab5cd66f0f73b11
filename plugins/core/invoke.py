"""Delegation to another plugin (IPAM), as the spec says: same env, full config.

Our own IPAM runs in-process through the same dispatcher (identical behaviour,
no second interpreter start); any other plugin is found on CNI_PATH and exec'd.
"""
from __future__ import annotations

import os

from .errors import CNIError, DECODING_FAILURE, INTERNAL, NOT_AVAILABLE, IO_FAILURE
from .types import Result

TYPE_CHECKING = False       # not from typing: importing it costs ~2 ms per plugin exec
if TYPE_CHECKING:
    from typing import Mapping

IN_PROCESS = {"host-local"}


def find_plugin(name: str, path: list[str]) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise CNIError(NOT_AVAILABLE, f"invalid plugin name {name!r}")
    for d in path:
        cand = os.path.join(d, name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise CNIError(NOT_AVAILABLE, f"failed to find plugin {name!r} in path {path}")


def _in_process_allowed(name: str, env: Mapping[str, str]) -> bool:
    return name in IN_PROCESS and env.get("CNILAB_EXEC_DELEGATES", "") != "1"


def exec_plugin(name: str, command: str, stdin: bytes, env: Mapping[str, str],
                path: list[str]) -> str:
    """Run plugin ``name`` for ``command``; returns stdout, raises CNIError."""
    call_env = dict(env)
    call_env["CNI_COMMAND"] = command
    if _in_process_allowed(name, call_env):
        from .skel import dispatch
        out, code = dispatch(name, call_env, stdin)
    else:
        import subprocess       # only for foreign plugins: ~8 ms of imports otherwise
        exe = find_plugin(name, path)
        try:
            p = subprocess.run([exe], input=stdin, env=call_env, capture_output=True,
                               timeout=120)
        except OSError as e:
            raise CNIError(IO_FAILURE, f"failed to run plugin {name}", str(e)) from None
        except subprocess.TimeoutExpired:
            raise CNIError(INTERNAL, f"plugin {name} timed out after 120s") from None
        out, code = p.stdout.decode(errors="replace"), p.returncode
        if code != 0 and not out.strip():
            raise CNIError(INTERNAL, f"plugin {name} failed with status {code}",
                           p.stderr.decode(errors="replace")[-500:])
    if code != 0:
        from .gojson import Fields, loads
        try:      # types.Error {code, msg, details}, keys read Go-exactly
            e = Fields(loads(out), "error")
            err = CNIError(e.int("code", INTERNAL), str(e.raw("msg", "")), str(e.raw("details", "")))
        except (ValueError, RecursionError, CNIError):
            raise CNIError(INTERNAL, f"plugin {name} failed with status {code}", out[-500:]) from None
        raise err
    return out


def delegate_add(name: str, stdin: bytes, env: Mapping[str, str], path: list[str]) -> Result:
    out = exec_plugin(name, "ADD", stdin, env, path)
    try:
        from .gojson import loads
        return Result.from_dict(loads(out))
    except ValueError:
        raise CNIError(DECODING_FAILURE, f"plugin {name} printed an invalid result", out[:300]) from None


def delegate(name: str, command: str, stdin: bytes, env: Mapping[str, str],
             path: list[str]) -> None:
    exec_plugin(name, command, stdin, env, path)
