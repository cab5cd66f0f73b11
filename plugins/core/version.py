"""CNI spec versions: parsing, comparison and the supported set."""
from __future__ import annotations

from .errors import CNIError, DECODING_FAILURE, INCOMPATIBLE_VERSION

SUPPORTED = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT = "1.1.0"
# Result formats: 0.1.0/0.2.0 use ip4/ip6, 0.3.x-0.4.0 ips with version, 1.x no version.


def parse(v: str) -> tuple[int, int, int]:
    if not isinstance(v, str):
        raise CNIError(DECODING_FAILURE, "cniVersion must be a string", repr(v))
    parts = v.split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise CNIError(INCOMPATIBLE_VERSION, f"invalid cniVersion {v!r}",
                       f"supported versions: {', '.join(SUPPORTED)}")
    nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    return nums[0], nums[1], nums[2]


def at_least(v: str, minimum: str) -> bool:
    return parse(v) >= parse(minimum)


def check_supported(v: str) -> None:
    if v not in SUPPORTED:
        parse(v)  # gives the better message for malformed strings
        raise CNIError(INCOMPATIBLE_VERSION, f"incompatible CNI versions: config is {v!r}",
                       f"plugin supports {', '.join(SUPPORTED)}")


def version_reply(config_version: str | None = None) -> dict:
    return {"cniVersion": config_version if config_version in SUPPORTED else CURRENT,
            "supportedVersions": list(SUPPORTED)}
