"""GC input shared by every plugin: the attachments the runtime still holds."""
from __future__ import annotations

from .errors import CNIError, INVALID_NETWORK_CONFIG
from .gojson import Fields

# Spec 1.1.0 key, and the key older libcni releases sent (libcni sends both).
KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


def valid_attachments(raw: dict) -> set[tuple[str, str]]:
    """(containerID, ifname) pairs of a GC call, read Go-exactly (types.NetConf
    ValidAttachments / types.GCAttachment{containerID, ifname}).

    A GC without the list is refused (code 7): reading "no list" as "nothing is
    valid" would let a runtime bug wipe every attachment on the node. An empty
    list is honoured: the runtime says nothing is valid.
    """
    f = Fields(raw)
    for key in KEYS:
        if f.values(key):
            break
    else:
        raise CNIError(INVALID_NETWORK_CONFIG, "GC needs cni.dev/valid-attachments",
                       "refusing to treat a missing list as 'nothing is valid'")
    out = set()
    for i, a in enumerate(f.objects(key)):
        cid, ifname = a.raw("containerID"), a.raw("ifname")
        if not isinstance(cid, str) or not isinstance(ifname, str):
            raise CNIError(INVALID_NETWORK_CONFIG,
                           f"{key}[{i}] must have string containerID and ifname", repr(a.data)[:100])
        out.add((cid, ifname))
    return out
