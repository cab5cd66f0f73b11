"""The offline pause image: an OCI image tarball built here, imported with ``ctr``.

A CRI sandbox needs an image for its "pause" container, and there is no
network to pull one. We build it: one uncompressed layer holding the static
``/bin/busybox`` (Debian's busybox-static) with ``/bin/sleep`` linked to it,
an image config whose entrypoint is ``/bin/sleep inf``, a manifest, an index
naming the image, and the ``oci-layout`` marker, all in one tar (the OCI
image layout). ``ctr images import`` takes that tar and unpacks it into the
snapshotter containerd's CRI uses.

``sleep inf`` serves as pause: the sandbox's process only has to hold the
namespaces open; containerd stops a sandbox with SIGKILL, so it needs no
signal handling. The build is deterministic (fixed mtimes, sorted JSON), so
the same busybox gives the same digests.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile

PAUSE_REF = "cnilab.local/pause:busybox"
BUSYBOX = "/bin/busybox"
ENTRYPOINT = ["/bin/sleep", "inf"]
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}


class ImageError(RuntimeError):
    """The pause image could not be built or imported (the message says why)."""


def oci_arch() -> str:
    m = platform.machine()
    if m not in _ARCH:
        raise ImageError(f"no OCI architecture name for machine {m!r}")
    return _ARCH[m]


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, *, mode: int = 0o644,
         kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, 0, link
    info.uname = info.gname = "root"
    if data is not None:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def layer_tar(busybox: str = BUSYBOX) -> bytes:
    """The single layer: /bin/busybox and /bin/sleep -> busybox."""
    try:
        with open(busybox, "rb") as f:
            binary = f.read()
    except OSError as e:
        raise ImageError(f"cannot read {busybox} (Debian package busybox-static): "
                         f"{e.strerror}") from None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "bin", kind=tarfile.DIRTYPE, mode=0o755)
        _add(tar, "bin/busybox", binary, mode=0o755)
        _add(tar, "bin/sleep", kind=tarfile.SYMTYPE, mode=0o777, link="busybox")
    return buf.getvalue()


def build_pause_image(dest: str, ref: str = PAUSE_REF, busybox: str = BUSYBOX) -> str:
    """Write the OCI image layout tarball to ``dest``; returns the manifest digest."""
    layer = layer_tar(busybox)
    config = _json({
        "architecture": oci_arch(), "os": "linux",
        "config": {"Entrypoint": ENTRYPOINT, "WorkingDir": "/",
                   "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
    })
    manifest = _json({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": MT_LAYER, "digest": _digest(layer), "size": len(layer)}],
    })
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
    index = _json({
        "schemaVersion": 2, "mediaType": MT_INDEX,
        "manifests": [{"mediaType": MT_MANIFEST, "digest": _digest(manifest),
                       "size": len(manifest),
                       "platform": {"architecture": oci_arch(), "os": "linux"},
                       # containerd's importer names the image from this annotation
                       "annotations": {"io.containerd.image.name": ref,
                                       "org.opencontainers.image.ref.name": tag}}],
    })
    tmp = dest + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        _add(tar, "index.json", index)
        _add(tar, "blobs", kind=tarfile.DIRTYPE, mode=0o755)
        _add(tar, "blobs/sha256", kind=tarfile.DIRTYPE, mode=0o755)
        for blob in (layer, config, manifest):
            _add(tar, "blobs/sha256/" + _digest(blob).split(":", 1)[1], blob)
    os.replace(tmp, dest)
    return _digest(manifest)


def ctr_path() -> str:
    path = shutil.which("ctr")
    if path is None:
        raise ImageError("ctr is not installed (it comes with the Debian package containerd)")
    return path


def import_image(tarball: str, socket: str, *, snapshotter: str,
                 namespace: str = "k8s.io", timeout: float = 120) -> None:
    """``ctr images import`` into the containerd at ``socket``, unpacked for ``snapshotter``."""
    argv = [ctr_path(), "--address", socket, "--namespace", namespace, "images", "import",
            "--snapshotter", snapshotter, tarball]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise ImageError(f"ctr images import {tarball} failed: "
                         f"{(p.stderr or p.stdout).strip()[-800:]}")
