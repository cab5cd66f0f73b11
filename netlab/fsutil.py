"""Atomic file writes shared by the runtime's cache, the installer and the node installer."""
from __future__ import annotations

import os
import tempfile
from typing import Callable

from plugins.core.fsutil import make_dirs


def write_atomic(path: str | os.PathLike, data: bytes, *, mode: int = 0o644,
                 dir_mode: int = 0o755, sync_dir: bool = False,
                 verify: Callable[[str], bool] | None = None) -> bool:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half.

    The temporary file sits in the same directory (same filesystem: the rename
    is atomic) and is named ``.<name>.*.tmp``, which no CNI loader picks up.
    Data is fsynced before the rename; with ``sync_dir`` the directory too.
    ``verify`` is called with the complete temporary file (mode set) before the
    rename: when it says False the temporary file is removed, ``path`` is left
    exactly as it was, and the result is False.
    """
    path = os.fspath(path)
    d = os.path.dirname(path) or "."
    make_dirs(d, dir_mode)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if verify is not None and not verify(tmp):
            os.unlink(tmp)
            return False
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if sync_dir:
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return True
