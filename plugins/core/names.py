"""Names: validated by the spec's rules before anything touches the system, and
derived from attachments (SHA-256 digests of their keys).

The digests use CPython's own SHA-256 module, not ``hashlib``: importing
hashlib loads OpenSSL (``_hashlib``), ~4-5 ms of a cold plugin call that
hashes a few names (docs/performance.md); the digests are the same. The
module's name changed in 3.12; any other interpreter gets hashlib's.
"""
from __future__ import annotations

try:
    from _sha256 import sha256          # CPython 3.11
except ImportError:                     # pragma: no cover - depends on the interpreter
    try:
        from _sha2 import sha256        # CPython 3.12+
    except ImportError:
        from hashlib import sha256

from .errors import CNIError, INVALID_ENV, INVALID_NETWORK_CONFIG

# ^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$ checked by hand: importing re costs ~4 ms per exec.
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ID_REST = _ALNUM | frozenset("_.-")
IFNAMSIZ = 15


def _show(value: object) -> str:
    """The offending value for a message, bounded (inputs may be megabytes long)."""
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + f"... ({len(text)} characters)"


def valid_id(value: str) -> bool:
    return (isinstance(value, str) and value != "" and value[0] in _ALNUM
            and all(ch in _ID_REST for ch in value))


def check_container_id(value: str) -> None:
    if not valid_id(value):
        raise CNIError(INVALID_ENV, "invalid CNI_CONTAINERID",
                       f"{_show(value)} must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$")


def check_network_name(value: object) -> None:
    if not isinstance(value, str) or not valid_id(value):
        raise CNIError(INVALID_NETWORK_CONFIG, "invalid network name",
                       f"{_show(value)} must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$")


def ifname_problem(value: object) -> str | None:
    """Why ``value`` is not a valid Linux interface name, or None."""
    if not isinstance(value, str) or value == "":
        return "is empty"
    if len(value) > IFNAMSIZ:
        return f"is longer than {IFNAMSIZ} characters"
    if value in (".", ".."):
        return "is '.' or '..'"
    for ch in value:
        if ch in "/:" or ch.isspace() or not ch.isprintable():
            return f"contains {ch!r}"
    return None


def check_ifname(value: str, what: str = "CNI_IFNAME", code: int = INVALID_ENV) -> None:
    problem = ifname_problem(value)
    if problem:
        raise CNIError(code, f"invalid {what}", f"{_show(value)} {problem}")


_HEX = frozenset("0123456789abcdefABCDEF")


def check_mac(value: object, where: str) -> str:
    """A unicast Ethernet MAC ``aa:bb:cc:dd:ee:ff`` (lower-cased), else a code-7 error."""
    parts = value.split(":") if isinstance(value, str) else []
    if len(parts) != 6 or not all(len(p) == 2 and set(p) <= _HEX for p in parts):
        raise CNIError(INVALID_NETWORK_CONFIG, f"{where} is not a MAC address", _show(value))
    if int(parts[0], 16) & 1:
        raise CNIError(INVALID_NETWORK_CONFIG, f"{where} is a multicast MAC address", value)
    return value.lower()


def sha256_hex(text: str) -> str:
    """Hex SHA-256 of ``text`` (UTF-8): the source of derived names and comments."""
    return sha256(text.encode()).hexdigest()


def sha256_digest(text: str) -> bytes:
    """Raw SHA-256 of ``text`` (UTF-8)."""
    return sha256(text.encode()).digest()
