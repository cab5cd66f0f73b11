"""Directory creation with modes that do not depend on the caller's umask, and atomic
file writes (stdlib only)."""
from __future__ import annotations

import os


def make_dirs(path: str | os.PathLike, mode: int = 0o755) -> None:
    """os.makedirs whose new directories get ``mode`` (missing parents 0755) whatever
    the umask: under umask 0 os.makedirs makes them 0777, and a world-writable data,
    plugin or cache directory lets any local user swap what root executes or reads."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    if parent != os.path.abspath(path):
        make_dirs(parent, 0o755)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return
    os.chmod(path, mode)


def write_atomic(path: str | os.PathLike, data: bytes, *, mode: int = 0o644,
                 dir_mode: int = 0o755, sync_dir: bool = False,
                 verify=None) -> bool:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half.

    ``verify`` (optional) is called with the complete temporary file before the
    rename: when it returns False the temporary file is removed, ``path`` is
    left exactly as it was, and the result is False.

    The temporary file sits in the same directory (same filesystem: the rename
    is atomic) and is named ``.<name>.*.tmp``, which no CNI loader picks up.
    Data is fsynced before the rename; with ``sync_dir`` the directory too.
    """
    import tempfile     # lazy: host-local imports this module on every exec
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
