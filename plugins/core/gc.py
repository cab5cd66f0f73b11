"""GC input shared by every plugin: the attachments the runtime still holds."""
from __future__ import annotations

from .errors import CNIError, INVALID_NETWORK_CONFIG

# Spec 1.1.0 key, and the key older libcni releases sent.
KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


def valid_attachments(raw: dict) -> set[tuple[str, str]]:
    """(containerID, ifname) pairs of a GC call.

    A GC without the list is refused (code 7): reading "no list" as "nothing is
    valid" would let a runtime bug wipe every attachment on the node. An empty
    list is honoured: the runtime says nothing is valid.
    """
    for key in KEYS:
        if key in raw:
            value = raw[key]
            break
    else:
        raise CNIError(INVALID_NETWORK_CONFIG, "GC needs cni.dev/valid-attachments",
                       "refusing to treat a missing list as 'nothing is valid'")
    if value is None:
        value = []
    if not isinstance(value, list):
        raise CNIError(INVALID_NETWORK_CONFIG, f"{key} must be a list of {{containerID, ifname}}",
                       repr(value)[:100])
    out = set()
    for i, a in enumerate(value):
        if not isinstance(a, dict) or not isinstance(a.get("containerID"), str) \
                or not isinstance(a.get("ifname"), str):
            raise CNIError(INVALID_NETWORK_CONFIG,
                           f"{key}[{i}] must have string containerID and ifname", repr(a)[:100])
        out.add((a["containerID"], a["ifname"]))
    return out
