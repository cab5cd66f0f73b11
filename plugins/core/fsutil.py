"""Directory creation with modes that do not depend on the caller's umask (stdlib only)."""
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
