"""What containerd's go-cni puts on the wire, and whether our plugins read it.

go-cni's capability structs carry no JSON tags, so containerd serialises
``portMappings`` entries and ``bandwidth`` with Go field names (``HostPort``,
``IngressRate``, ...). Go plugins read them because Go's JSON decoder matches
keys case-insensitively; a plugin that reads only the spec's spelling sees
nothing. ``ours_read_go_keys()`` asks our own config parsers (in-process, no
kernel) whether they take these shapes, so tests and benchmarks can say
which containerd cases our suite can serve.
"""
from __future__ import annotations

CONF_VERSION = "1.0.0"


def port_mapping(host_port: int, container_port: int, protocol: str = "tcp",
                 host_ip: str = "") -> dict:
    """One ``portMappings`` entry as containerd 1.6 sends it."""
    return {"HostPort": host_port, "ContainerPort": container_port, "Protocol": protocol,
            "HostIP": host_ip}


def bandwidth(ingress_rate: int, ingress_burst: int, egress_rate: int = 0,
              egress_burst: int = 0) -> dict:
    """The ``bandwidth`` capability as containerd 1.6 sends it (bits/s, bits)."""
    return {"IngressRate": ingress_rate, "IngressBurst": ingress_burst,
            "EgressRate": egress_rate, "EgressBurst": egress_burst}


def ours_read(port_mapping_entry: dict, bandwidth_entry: dict) -> bool:
    """Do our portmap and bandwidth parsers take these capability args (a mapping of
    host port 8080 to 80, and an ingress limit of 8000 bit/s)?"""
    from plugins import bandwidth as bw_plugin, portmap
    from plugins.core.config import parse_netconf

    def conf(kind: str, rc: dict):
        return parse_netconf({"cniVersion": CONF_VERSION, "name": "probe", "type": kind,
                              "runtimeConfig": rc})
    try:
        bw = bw_plugin.parse_config(conf("bandwidth", {"bandwidth": bandwidth_entry}), 15.625)
        pm = portmap.parse_config(conf("portmap", {"portMappings": [port_mapping_entry]}))
    except Exception:       # noqa: BLE001 - any refusal means "not read"
        return False
    return bw.ingress_rate == 8000 and len(pm.mappings) == 1


def ours_read_go_keys() -> bool:
    """Do our plugins take go-cni's untagged keys, as the Go plugins do?"""
    return ours_read(port_mapping(8080, 80), bandwidth(8000, 8000))
