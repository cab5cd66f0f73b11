"""CNI_ARGS parsing: ``K=V;K=V`` with IgnoreUnknown."""
from __future__ import annotations

from .errors import CNIError, INVALID_ENV

# Keys every plugin tolerates (kubelet/CRI and the spec's own).
ALWAYS_KNOWN = frozenset({"IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME",
                          "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"})


def parse(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if not raw:
        return out
    for pair in raw.split(";"):
        if pair == "":
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CNIError(INVALID_ENV, "invalid CNI_ARGS", f"pair {pair!r} is not KEY=VALUE")
        out[key] = value
    return out


def ignore_unknown(args: dict[str, str]) -> bool:
    return args.get("IgnoreUnknown", "").lower() in ("1", "true")


def select(args: dict[str, str], known: set[str] | frozenset[str]) -> dict[str, str]:
    """The keys this plugin understands; unknown keys are an error unless IgnoreUnknown."""
    allowed = ALWAYS_KNOWN | set(known)
    unknown = sorted(k for k in args if k not in allowed)
    if unknown and not ignore_unknown(args):
        raise CNIError(INVALID_ENV, "unknown CNI_ARGS keys",
                       f"{', '.join(unknown)} (set IgnoreUnknown=1 to ignore them)")
    return {k: v for k, v in args.items() if k in allowed}
