"""The CNI call log of a lab: every plugin exec netlab's runtime made.

The runtime (``cniruntime.runtime.Runtime(log_path=...)``) appends one JSON line
per plugin exec to ``<lab dir>/cni.log``: plugin, command, CNI_* env, stdin
(the config the plugin got, with prevResult and runtimeConfig), stdout,
stderr, exit status and duration. This module reads it back, filters it by
pod, and formats it for people.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

LOG_FILE = "cni.log"


@dataclass
class Call:
    raw: dict

    def __getattr__(self, k):
        try:
            return self.raw[k]
        except KeyError:
            raise AttributeError(k) from None

    @property
    def ok(self) -> bool:
        return self.raw.get("exit_status") == 0


def log_path(lab_dir: str) -> str:
    return os.path.join(lab_dir, LOG_FILE)


def read(lab_dir: str) -> list[Call]:
    """Every recorded call, oldest first; a torn last line (a crash) is skipped."""
    out = []
    try:
        with open(log_path(lab_dir), encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(Call(json.loads(line)))
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    out.sort(key=lambda c: c.raw.get("time", 0))
    return out


def for_pod(calls: list[Call], pod: str, attachments: dict[str, dict]) -> list[Call]:
    """Calls of one pod: by the container ID and netns netlab gave it."""
    a = attachments.get(pod)
    ids = {a["container_id"]} if a else set()
    nss = {a["netns"]} if a else set()
    return [c for c in calls if c.raw.get("container_id") in ids
            or os.path.basename(c.raw.get("netns") or "") in nss
            or _pod_of(c) == pod]


def _stamp(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int((t % 1) * 1000):03d}"


def _pod_of(c: Call) -> str:
    args = c.raw.get("env", {}).get("CNI_ARGS", "")
    for kv in args.split(";"):
        if kv.startswith("K8S_POD_NAME="):
            return kv.split("=", 1)[1]
    return c.raw.get("container_id", "")


def headline(c: Call) -> str:
    st = c.raw.get("exit_status")
    status = "ok" if st == 0 else ("not run" if st is None else f"exit {st}")
    return (f"{_stamp(c.raw.get('time', 0))}  {c.raw.get('command', '?'):<6} {c.raw.get('plugin', '?'):<10} "
            f"pod {_pod_of(c):<12} {c.raw.get('network', ''):<10} {status:<8} {c.raw.get('duration_ms', 0):8.1f} ms")


def _indent(text: str, pad: str = "      ") -> str:
    return "\n".join(pad + ln for ln in text.rstrip("\n").splitlines()) or pad + "(empty)"


def _maybe_json(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2)
    except (ValueError, TypeError):
        return text


def full(c: Call) -> str:
    r = c.raw
    lines = [headline(c), f"    exec     {r.get('path', '')}  (host netns {r.get('host_netns') or 'caller'})"]
    lines.append("    env")
    lines += [f"      {k}={v}" for k, v in sorted(r.get("env", {}).items())]
    lines.append("    stdin")
    lines.append(_indent(json.dumps(r.get("stdin"), indent=2)))
    lines.append("    stdout")
    lines.append(_indent(_maybe_json(r.get("stdout") or "")))
    if r.get("stderr"):
        lines.append("    stderr")
        lines.append(_indent(r["stderr"]))
    return "\n".join(lines)


def format_calls(calls: list[Call], *, brief: bool = False) -> str:
    if not calls:
        return "no plugin calls recorded"
    if brief:
        return "\n".join(headline(c) for c in calls)
    return "\n\n".join(full(c) for c in calls)
