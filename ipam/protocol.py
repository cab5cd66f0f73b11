"""The Store protocol the allocator needs (structural: implementations need not
inherit; ``ipam.store.DiskStore`` and ``ipam.store.MemoryStore`` satisfy it).

Kept out of ``ipam.store`` so that the plugin's hot path does not import
``typing`` (a few ms per exec); the allocator names it for type checkers only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ContextManager, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .ranges import IPAddress
    from .store import Owner


@runtime_checkable
class Store(Protocol):
    """Every call except ``writable_problem`` happens inside ``with store.session():``,
    which, on disk, holds the flock."""

    def session(self) -> ContextManager[object]:
        """Context manager: lock + a consistent view. Sessions do not nest."""

    def reserve(self, ip: IPAddress, owner: Owner, set_index: int) -> bool:
        """Create the reservation; False if taken. Records ip as the set's last reserved."""

    def release(self, ip: IPAddress) -> None:
        """Drop a reservation (missing is fine)."""

    def owner_of(self, ip: IPAddress) -> Owner | None:
        """The attachment holding ip, or None."""

    def find(self, owner: Owner) -> list[IPAddress]:
        """Addresses of an attachment (cheap; legacy files of the container ID when no exact match)."""

    def reservations(self) -> dict[IPAddress, Owner]:
        """Every reservation of the network (a scan)."""

    def reserved_addresses(self) -> list[IPAddress]:
        """Every reserved address of the network (a listing)."""

    def reserved_ints(self, version: int) -> set[int]:
        """Reserved addresses of one family as ints (a listing, the fast path)."""

    def last_reserved(self, set_index: int) -> IPAddress | None:
        """The last address reserved in a range set, or None."""

    def writable_problem(self) -> str | None:
        """Why nothing could be stored, or None."""
