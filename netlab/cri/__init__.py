"""CRI: talk to a container runtime the way a kubelet does, and run one for tests.

Owns three things, each usable alone:

- ``api``: a small CRI ``runtime.v1`` client over gRPC on a unix socket
  (``RuntimeClient``, ``PodSpec``, ``PortMapping``, ``DNSConfig``), from our
  own subset of the CRI proto (``runtime_v1.proto``), compiled at first use;
- ``image``: the offline pause image (an OCI layout tarball around the static
  busybox) and its import with ``ctr``;
- ``gocni``: the capability args as containerd's go-cni spells them, and a
  probe of whether our plugins read them;
- ``containerd``: ``Containerd(ContainerdOptions(...))``, a private containerd
  started inside a node's network namespace with its own root, state, socket
  and CRI config, stopped by its PID and cleaned up completely.

Imports: the standard library, grpcio, protobuf and grpcio-tools (test
extras); from netlab only ``netlab.base`` (the /proc readers of
``base.state``), nothing of the lab; the plugins only inside
``gocni.ours_read_go_keys()``. Heavy imports happen in
``api.messages()`` and ``RuntimeClient()``, not at package import.
"""
from .api import CRIError, DNSConfig, PodSpec, PortMapping, RuntimeClient, SandboxStatus
from .containerd import Containerd, ContainerdError, ContainerdOptions
from .image import PAUSE_REF, ImageError, build_pause_image, import_image

__all__ = ["CRIError", "Containerd", "ContainerdError", "ContainerdOptions", "DNSConfig",
           "ImageError", "PAUSE_REF", "PodSpec", "PortMapping", "RuntimeClient",
           "SandboxStatus", "build_pause_image", "import_image"]
