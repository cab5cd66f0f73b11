"""Allocation logic over a Store: round robin, requested addresses, replay, GC.

Pure with respect to the system: everything goes through the Store protocol,
so the in-memory fake covers it in unit tests. Callers hold ``store.session()``.
"""
from __future__ import annotations

from plugins.core.errors import ADDRESS_UNAVAILABLE, CNIError, POOL_EXHAUSTED
from plugins.core.undo import quietly

from .ranges import IPAddress, Range, RangeSet, set_capacity, set_contains, set_str
from .store import Owner

TYPE_CHECKING = False      # typing stays out of the plugin's imports (a few ms per exec)
if TYPE_CHECKING:
    from .protocol import Store


PROBES_BEFORE_LISTING = 32


class Allocation:
    """One address handed out for one range set. (A plain class: a frozen
    dataclass costs ~1 ms of import time at every exec of the plugin.)"""
    __slots__ = ("set_index", "ip", "range", "new")

    def __init__(self, set_index: int, ip: IPAddress, range: Range, new: bool) -> None:
        self.set_index = set_index
        self.ip = ip
        self.range = range
        self.new = new           # False when an existing reservation was returned (replay)

    def __repr__(self) -> str:
        return f"Allocation({self.set_index}, {self.ip}, new={self.new})"

    @property
    def cidr(self) -> str:
        return self.range.cidr(self.ip)

    @property
    def gateway(self) -> str:
        return str(self.range.gateway)


def assign_requested(sets: list[RangeSet], requested: list[IPAddress]) -> dict[int, IPAddress]:
    """Map each requested address to the range set containing it; all must fit."""
    out: dict[int, IPAddress] = {}
    leftover = []
    for ip in requested:
        for idx, rs in enumerate(sets):
            if idx not in out and set_contains(rs, ip) is not None:
                out[idx] = ip
                break
        else:
            leftover.append(ip)
    if leftover:
        where = "; ".join(f"set {i}: {set_str(rs)}" for i, rs in enumerate(sets))
        raise CNIError(ADDRESS_UNAVAILABLE,
                       "failed to allocate all requested IPs: "
                       + " ".join(str(ip) for ip in leftover),
                       f"each requested address must lie in a different range set ({where})")
    return out


def _candidates(rs: RangeSet, last: IPAddress | None):
    """Round robin: every allocatable address once, starting after ``last``."""
    start_r, start_v = 0, rs[0].start
    if last is not None:
        for i, r in enumerate(rs):
            if r.contains(last):
                start_r, start_v = i, int(last) + 1
                if start_v > r.end:
                    start_r, start_v = (i + 1) % len(rs), rs[(i + 1) % len(rs)].start
                break
    n = len(rs)
    for k in range(n + 1):
        r = rs[(start_r + k) % n]
        if k == 0:
            lo, hi = start_v, r.end
        elif k == n:                         # wrap around within the first range
            lo, hi = r.start, start_v - 1
        else:
            lo, hi = r.start, r.end
        gw = r.gw_int
        for v in range(lo, hi + 1):
            if v != gw:
                yield r, v


def allocate_set(store: Store, idx: int, rs: RangeSet, owner: Owner,
                 requested: IPAddress | None) -> Allocation:
    held = [ip for ip in store.find(owner) if set_contains(rs, ip) is not None]
    if held:
        ip = held[0]
        if requested is not None and requested not in held:
            raise CNIError(ADDRESS_UNAVAILABLE,
                           f"duplicate allocation: {owner.container_id}/{owner.ifname} already "
                           f"holds {ip} in range set {idx}, requested {requested}",
                           "DEL the attachment before asking for another address")
        if requested is not None:
            ip = requested
        return Allocation(idx, ip, set_contains(rs, ip), new=False)
    if requested is not None:
        r = set_contains(rs, requested)
        if requested == r.gateway:
            raise CNIError(ADDRESS_UNAVAILABLE,
                           f"requested IP {requested} is the gateway of {r.subnet}")
        if not store.reserve(requested, owner, idx):
            holder = store.owner_of(requested)
            by = f" (held by {holder.container_id}/{holder.ifname})" if holder else ""
            raise CNIError(ADDRESS_UNAVAILABLE,
                           f"requested IP {requested} is not available in range set "
                           f"{set_str(rs)}{by}")
        return Allocation(idx, requested, r, new=True)
    taken: set[int] | None = None
    misses = 0
    for r, v in _candidates(rs, store.last_reserved(idx)):
        if taken is not None and v in taken:
            continue
        ip = r.addr(v)
        if store.reserve(ip, owner, idx):
            return Allocation(idx, ip, r, new=True)
        misses += 1
        if misses == PROBES_BEFORE_LISTING:
            # A long run of taken addresses: one directory listing is cheaper than
            # a failed create per address. We hold the lock, so it stays true.
            taken = store.reserved_ints(rs[0].version)
    raise CNIError(POOL_EXHAUSTED, f"no IP addresses available in range set {set_str(rs)}",
                   f"all {set_capacity(rs)} addresses of range set {idx} are reserved")


def allocate(store: Store, sets: list[RangeSet], owner: Owner,
             requested: list[IPAddress]) -> list[Allocation]:
    """One address per range set, all or nothing (new reservations rolled back)."""
    wanted = assign_requested(sets, requested)
    done: list[Allocation] = []
    try:
        for idx, rs in enumerate(sets):
            done.append(allocate_set(store, idx, rs, owner, wanted.get(idx)))
    except BaseException:
        for a in done:
            if a.new:
                quietly(store.release, a.ip)()    # the original error is the one reported
        raise
    return done


def release(store: Store, owner: Owner) -> list[IPAddress]:
    """Release every address of the attachment (in any range); idempotent."""
    ips = store.find(owner)
    for ip in ips:
        store.release(ip)
    return ips


def gc_select(reservations: dict[IPAddress, Owner], valid: set[tuple[str, str]]) -> list[IPAddress]:
    """Reservations whose attachment is not valid. Legacy files (no ifname) stay
    while any valid attachment has their container ID."""
    valid_ids = {cid for cid, _ in valid}
    out = []
    for ip, o in reservations.items():
        if o.ifname == "":
            if o.container_id not in valid_ids:
                out.append(ip)
        elif (o.container_id, o.ifname) not in valid:
            out.append(ip)
    return sorted(out, key=lambda a: (a.version, int(a)))


def free_in_set(rs: RangeSet, reserved: list[IPAddress]) -> int:
    """How many addresses of the set are still free."""
    used = 0
    for ip in reserved:
        r = set_contains(rs, ip)
        if r is not None and ip != r.gateway:
            used += 1
    return set_capacity(rs) - used
