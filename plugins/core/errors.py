"""One error type carrying a CNI spec error code."""
from __future__ import annotations


# Spec error codes (SPEC.md "Error" section, plus the Go skel's extras).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
NOT_AVAILABLE_DEGRADED = 51
NETNS_IS_OWN = 8            # Go skel: CNI_NETNS is the plugin's own netns
INTERNAL = 999              # Go skel: anything unexpected

# Plugin-specific codes (100+), shared by all our plugins.
LINK_EXISTS = 100           # a link of the wanted name exists and is not ours
NOT_SUPPORTED_BY_KERNEL = 101
CHECK_FAILED = 102          # CHECK found live state that differs from the result
POOL_EXHAUSTED = 103
ADDRESS_UNAVAILABLE = 104   # a requested address is taken, the gateway, or out of range
NOT_IMPLEMENTED = 105


class CNIError(Exception):
    """An error the plugin reports to the runtime as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def to_json(self, cni_version: str) -> str:
        import json      # lazily: json's import (re, enum) costs ~7 ms per plugin exec
        return json.dumps(self.to_dict(cni_version))

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg

    def __repr__(self) -> str:
        return f"CNIError({self.code}, {self.msg!r}, {self.details!r})"


def as_cni_error(exc: BaseException) -> CNIError:
    """Wrap anything into a CNIError exactly once."""
    if isinstance(exc, CNIError):
        return exc
    if isinstance(exc, OSError):
        return CNIError(IO_FAILURE, f"{type(exc).__name__}: {exc.strerror or exc}",
                        str(exc))
    return CNIError(INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
