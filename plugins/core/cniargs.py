"""CNI_ARGS parsing, as libcni's Go plugins do it (containernetworking/cni
pkg/types/args.go ``LoadArgs``):

- ``K=V;K=V``: split on ``;``, each pair split on ``=`` must give exactly two
  parts, so a value holding ``=`` and an empty pair (``A=1;``) are errors;
  ``=V`` is a pair with an empty key, i.e. an unknown key.
- Keys match a field name exactly (``reflect`` ``FieldByName``: case matters,
  unlike JSON keys): ``ip=...`` is not ``IP``. A repeated key: the last wins.
- ``IgnoreUnknown`` is a ``types.UnmarshallableBool``: ``1``/``true`` and
  ``0``/``false`` in any case; any other value is an error.
- Unknown keys are an error unless IgnoreUnknown is true. Deliberately more
  tolerant than the reference (docs/adr/0014): the keys kubelet/CRI always
  send (``K8S_POD_*``) are known to every plugin.
"""
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
        kv = pair.split("=")
        if len(kv) != 2:
            raise CNIError(INVALID_ENV, "invalid CNI_ARGS",
                           f"pair {pair!r} is not KEY=VALUE with exactly one '='")
        out[kv[0]] = kv[1]
    return out


def ignore_unknown(args: dict[str, str]) -> bool:
    v = args.get("IgnoreUnknown")
    if v is None:
        return False
    low = v.lower()
    if low in ("1", "true"):
        return True
    if low in ("0", "false"):
        return False
    raise CNIError(INVALID_ENV, "invalid CNI_ARGS",
                   f"IgnoreUnknown={v!r}: must be 1, true, 0 or false")


def select(args: dict[str, str], known: set[str] | frozenset[str]) -> dict[str, str]:
    """The keys this plugin understands; unknown keys are an error unless IgnoreUnknown."""
    allowed = ALWAYS_KNOWN | set(known)
    unknown = sorted(k for k in args if k not in allowed)
    if not ignore_unknown(args) and unknown:
        raise CNIError(INVALID_ENV, "unknown CNI_ARGS keys",
                       f"{', '.join(repr(k) if not k else k for k in unknown)} "
                       "(set IgnoreUnknown=1 to ignore them)")
    return {k: v for k, v in args.items() if k in allowed}
