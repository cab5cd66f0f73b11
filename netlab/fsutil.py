"""Atomic file writes shared by the runtime's cache, the installer and the node installer.

The implementation lives in the CNI core (plugins that keep state use it too).
"""
from __future__ import annotations

from plugins.core.fsutil import make_dirs, write_atomic

__all__ = ["make_dirs", "write_atomic"]
