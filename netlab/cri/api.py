"""A small CRI ``runtime.v1`` client over gRPC on a unix socket.

The messages come from ``runtime_v1.proto`` (ours: a subset of the CRI API),
compiled in-process at first use with grpcio-tools' protoc into a descriptor
set and turned into message classes by protobuf; no generated files are kept.
Methods take and return plain dataclasses, so callers never touch protobuf.

    with RuntimeClient("/path/containerd.sock") as cri:
        sid = cri.run_pod_sandbox(PodSpec("web", port_mappings=[PortMapping(80, 8080)]))
        print(cri.pod_sandbox_status(sid).ip)
        cri.stop_pod_sandbox(sid); cri.remove_pod_sandbox(sid)

A failed RPC raises ``CRIError`` carrying the gRPC status name and the
runtime's message (for a CNI failure, containerd puts the plugin's error
text there).
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
from dataclasses import dataclass, field

PROTO = "runtime_v1.proto"
SERVICE = "/runtime.v1.RuntimeService/"
PROTOCOLS = ("TCP", "UDP", "SCTP")


class CRIError(RuntimeError):
    """A CRI call failed: ``code`` is the gRPC status name, ``details`` the runtime's text."""

    def __init__(self, method: str, code: str, details: str) -> None:
        super().__init__(f"CRI {method}: {code}: {details}")
        self.method, self.code, self.details = method, code, details


@functools.lru_cache(maxsize=1)
def messages() -> dict[str, type]:
    """Message name -> class, compiled from runtime_v1.proto once per process."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_tools import protoc
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory(prefix="cnilab-cri-") as d:
        out = os.path.join(d, "runtime_v1.pb")
        rc = protoc.main(["protoc", f"-I{here}", f"--descriptor_set_out={out}", PROTO])
        if rc != 0:
            raise RuntimeError(f"protoc could not compile {os.path.join(here, PROTO)} (rc={rc})")
        with open(out, "rb") as f:
            fds = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    out_classes = {}
    for fd in fds.file:
        for name in fd.message_type:
            desc = pool.FindMessageTypeByName(f"{fd.package}.{name.name}")
            out_classes[name.name] = message_factory.GetMessageClass(desc)
    return out_classes


# ---- what callers pass and get ---------------------------------------------------------------

@dataclass(frozen=True)
class PortMapping:
    container_port: int
    host_port: int
    protocol: str = "TCP"          # TCP, UDP or SCTP
    host_ip: str = ""


@dataclass(frozen=True)
class DNSConfig:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass
class PodSpec:
    """What a kubelet would put in a RunPodSandboxRequest (the fields we use)."""
    name: str
    namespace: str = "default"
    uid: str = ""                   # default: derived from namespace/name
    attempt: int = 0
    hostname: str = ""
    dns: DNSConfig | None = None
    port_mappings: list[PortMapping] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    cgroup_parent: str = ""


@dataclass
class SandboxStatus:
    id: str
    name: str
    namespace: str
    state: str                      # SANDBOX_READY / SANDBOX_NOTREADY
    ip: str
    additional_ips: list[str]
    annotations: dict[str, str]
    info: dict                      # verbose only: the runtime's JSON, decoded

    @property
    def netns_path(self) -> str:
        """The sandbox's network namespace (containerd's verbose info), or ''."""
        spec = (self.info.get("info") or {}).get("runtimeSpec") or {}
        for ns in (spec.get("linux") or {}).get("namespaces") or []:
            if ns.get("type") == "network":
                return ns.get("path", "")
        return ""

    @property
    def pid(self) -> int:
        return int((self.info.get("info") or {}).get("pid") or 0)


@dataclass(frozen=True)
class SandboxSummary:
    id: str
    name: str
    namespace: str
    state: str
    labels: dict[str, str]


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str


# ---- the client --------------------------------------------------------------------------------

class RuntimeClient:
    """CRI RuntimeService over ``unix://socket``; one channel, closed by ``close()``."""

    def __init__(self, socket: str, *, timeout: float = 120.0,
                 default_cgroup_parent: str = "") -> None:
        # netlab forks after using CRI (subprocess with preexec_fn, to enter namespaces):
        # grpc's fork handlers then print epoll errors into the children's stderr
        os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
        import grpc
        self._grpc = grpc
        self.socket = socket
        self.timeout = timeout
        self.default_cgroup_parent = default_cgroup_parent
        self._m = messages()
        self.created: set[str] = set()          # sandbox IDs this client got from RunPodSandbox
        self._channel = grpc.insecure_channel(f"unix://{socket}")

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RuntimeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, timeout: float) -> None:
        """Block until the channel connects (the server is listening), or raise CRIError."""
        try:
            self._grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except self._grpc.FutureTimeoutError:
            raise CRIError("connect", "UNAVAILABLE",
                           f"no CRI server on {self.socket} after {timeout:g}s") from None

    def _call(self, method: str, request, timeout: float | None = None):
        resp_cls = self._m[method + "Response"]
        rpc = self._channel.unary_unary(SERVICE + method,
                                        request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=resp_cls.FromString)
        try:
            return rpc(request, timeout=self.timeout if timeout is None else timeout)
        except self._grpc.RpcError as e:
            raise CRIError(method, e.code().name, e.details() or "") from None

    # ---- RPCs -------------------------------------------------------------------------------
    def version(self) -> dict[str, str]:
        r = self._call("Version", self._m["VersionRequest"](version="v1"))
        return {"version": r.version, "runtime_name": r.runtime_name,
                "runtime_version": r.runtime_version,
                "runtime_api_version": r.runtime_api_version}

    def status(self, timeout: float | None = None) -> dict[str, Condition]:
        r = self._call("Status", self._m["StatusRequest"](), timeout)
        return {c.type: Condition(c.type, c.status, c.reason, c.message)
                for c in r.status.conditions}

    def status_info(self) -> dict:
        """The runtime's verbose status info, JSON values decoded (containerd: its CNI
        config as loaded under ``cniconfig``, its CRI config under ``config``)."""
        r = self._call("Status", self._m["StatusRequest"](verbose=True))
        return _decode_info(r.info)

    def run_pod_sandbox(self, spec: PodSpec, runtime_handler: str = "") -> str:
        req = self._m["RunPodSandboxRequest"](config=self._config(spec),
                                              runtime_handler=runtime_handler)
        sid = self._call("RunPodSandbox", req).pod_sandbox_id
        self.created.add(sid)
        return sid

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self._call("StopPodSandbox", self._m["StopPodSandboxRequest"](pod_sandbox_id=sandbox_id))

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self._call("RemovePodSandbox",
                   self._m["RemovePodSandboxRequest"](pod_sandbox_id=sandbox_id))

    def pod_sandbox_status(self, sandbox_id: str, verbose: bool = False) -> SandboxStatus:
        r = self._call("PodSandboxStatus", self._m["PodSandboxStatusRequest"](
            pod_sandbox_id=sandbox_id, verbose=verbose))
        s = r.status
        info = _decode_info(r.info)
        return SandboxStatus(
            id=s.id, name=s.metadata.name, namespace=s.metadata.namespace,
            state=self._m["PodSandboxStatus"].DESCRIPTOR.fields_by_name["state"]
            .enum_type.values_by_number[s.state].name,
            ip=s.network.ip, additional_ips=[p.ip for p in s.network.additional_ips],
            annotations=dict(s.annotations), info=info)

    def list_pod_sandbox(self, labels: dict[str, str] | None = None) -> list[SandboxSummary]:
        flt = self._m["PodSandboxFilter"](label_selector=labels or {})
        r = self._call("ListPodSandbox", self._m["ListPodSandboxRequest"](filter=flt))
        state_enum = self._m["PodSandbox"].DESCRIPTOR.fields_by_name["state"].enum_type
        return [SandboxSummary(p.id, p.metadata.name, p.metadata.namespace,
                               state_enum.values_by_number[p.state].name, dict(p.labels))
                for p in r.items]

    # ---- request building -------------------------------------------------------------------
    def _config(self, spec: PodSpec):
        m = self._m
        for pm in spec.port_mappings:
            if pm.protocol.upper() not in PROTOCOLS:
                raise ValueError(f"port mapping protocol must be one of {PROTOCOLS}: "
                                 f"{pm.protocol!r}")
        meta = m["PodSandboxMetadata"](name=spec.name, namespace=spec.namespace,
                                       uid=spec.uid or f"{spec.namespace}-{spec.name}-uid",
                                       attempt=spec.attempt)
        cfg = m["PodSandboxConfig"](
            metadata=meta, hostname=spec.hostname or spec.name,
            port_mappings=[m["PortMapping"](protocol=PROTOCOLS.index(pm.protocol.upper()),
                                            container_port=pm.container_port,
                                            host_port=pm.host_port, host_ip=pm.host_ip)
                           for pm in spec.port_mappings],
            labels=spec.labels, annotations=spec.annotations,
            linux=m["LinuxPodSandboxConfig"](
                cgroup_parent=spec.cgroup_parent or self.default_cgroup_parent))
        if spec.dns is not None:
            cfg.dns_config.CopyFrom(m["DNSConfig"](servers=spec.dns.servers,
                                                   searches=spec.dns.searches,
                                                   options=spec.dns.options))
        return cfg


def _decode_info(info) -> dict:
    out = {}
    for k, v in info.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out
