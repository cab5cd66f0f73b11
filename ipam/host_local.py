"""The host-local IPAM plugin: ADD, DEL, CHECK, GC, STATUS.

Called by the dispatcher (plugins.core.skel) both when exec'd and in-process
by bridge/vxlan. Imports only the standard library and our core.
"""
from __future__ import annotations

import os

from plugins.core.errors import (CHECK_FAILED, CNIError, IO_FAILURE, NOT_AVAILABLE,
                                 UNKNOWN_CONTAINER)
from plugins.core.types import IPConfig, Result

from . import allocator, config
from .ranges import set_contains, set_str
from .store import DiskStore, Owner

TYPE_CHECKING = False      # typing stays out of the plugin's imports (a few ms per exec)
if TYPE_CHECKING:
    from .protocol import Store

# Tests may swap in a store factory (e.g. returning a MemoryStore).
store_factory = DiskStore


def _open(cfg: config.IPAMConfig) -> Store:
    return store_factory(cfg.data_dir, cfg.name)


def _owner(call) -> Owner:
    return Owner(call.args.container_id.strip(), call.args.ifname)


def add(call) -> Result:
    cfg = config.load(call.conf, call.args.cni_args)
    result = Result(cni_version=cfg.cni_version)
    if cfg.resolv_conf:
        result.dns = config.parse_resolv_conf(cfg.resolv_conf)
    store = _open(cfg)
    try:
        with store.session():
            allocs = allocator.allocate(store, cfg.range_sets, _owner(call), cfg.requested)
    except OSError as e:
        raise CNIError(IO_FAILURE, f"host-local: cannot use data dir {cfg.data_dir}",
                       f"{e.strerror or e}: {getattr(e, 'filename', None) or cfg.data_dir}") from None
    result.ips = [IPConfig(address=a.cidr, gateway=a.gateway) for a in allocs]
    result.routes = list(cfg.routes)
    return result


def delete(call) -> None:
    cfg = config.load(call.conf, call.args.cni_args, need_ranges=False)
    store = _open(cfg)
    if not os.path.isdir(getattr(store, "dir", "/")):
        return                       # nothing was ever stored for this network
    try:
        with store.session():
            allocator.release(store, _owner(call))
    except OSError as e:
        raise CNIError(IO_FAILURE, f"host-local: cannot release addresses in {cfg.data_dir}",
                       f"{e.strerror or e}") from None


def check(call) -> None:
    cfg = config.load(call.conf, call.args.cni_args)
    owner = _owner(call)
    store = _open(cfg)
    if not os.path.isdir(getattr(store, "dir", "/")):
        raise CNIError(UNKNOWN_CONTAINER,
                       f"host-local: no address reserved for {owner.container_id}/{owner.ifname}",
                       f"network {cfg.name} has no store yet")
    with store.session():
        held = store.find(owner)
    if not held:
        raise CNIError(UNKNOWN_CONTAINER,
                       f"host-local: no address reserved for {owner.container_id}/{owner.ifname}")
    for idx, rs in enumerate(cfg.range_sets):
        if not any(set_contains(rs, ip) for ip in held):
            raise CNIError(CHECK_FAILED,
                           f"host-local: {owner.container_id}/{owner.ifname} holds no address "
                           f"in range set {idx} ({set_str(rs)})",
                           f"holds {', '.join(map(str, held))}")
    prev = call.conf.prev_result
    if prev is not None:
        mine = {str(ip) for ip in held}
        for ipc in prev.ips:
            ip = ipc.iface.ip
            in_ranges = any(set_contains(rs, ip) for rs in cfg.range_sets)
            if in_ranges and str(ip) not in mine:
                raise CNIError(CHECK_FAILED,
                               f"host-local: prevResult address {ipc.address} is not reserved "
                               f"for {owner.container_id}/{owner.ifname}")


def gc(call) -> None:
    valid = config.valid_attachments(call.conf.raw)
    cfg = config.load(call.conf, call.args.cni_args, need_ranges=False)
    store = _open(cfg)
    if not os.path.isdir(getattr(store, "dir", "/")):
        return
    errors = []
    with store.session():
        current = store.reservations()
        for ip in allocator.gc_select(current, valid):
            try:
                store.release(ip)
                current.pop(ip, None)
            except OSError as e:          # keep going past errors, report them together
                errors.append(f"{ip}: {e.strerror or e}")
        rebuild = getattr(store, "rebuild_index", None)
        if rebuild is not None:
            rebuild(current)
    if errors:
        raise CNIError(IO_FAILURE, "host-local: GC could not release every address",
                       "; ".join(errors))


def status(call) -> None:
    cfg = config.load(call.conf, call.args.cni_args, need_ranges=False)
    if not cfg.name:                  # STATUS without a network name: the data dir only
        problem = DiskStore(cfg.data_dir, "probe").writable_problem()
        if problem:
            raise CNIError(NOT_AVAILABLE, f"host-local: {problem}")
        return
    store = _open(cfg)
    d = getattr(store, "dir", None)
    if d is not None and not os.path.isdir(d):
        problem = store.writable_problem()
        if problem:
            raise CNIError(NOT_AVAILABLE, f"host-local: {problem}")
        return                        # an empty pool: every set has free addresses
    try:
        with store.session():
            problem = store.writable_problem()
            if problem:
                raise CNIError(NOT_AVAILABLE, f"host-local: {problem}")
            reserved = store.reserved_addresses()
    except OSError as e:
        raise CNIError(NOT_AVAILABLE, f"host-local: data dir {cfg.data_dir} is not usable",
                       e.strerror or str(e)) from None
    for idx, rs in enumerate(cfg.range_sets):
        if allocator.free_in_set(rs, reserved) <= 0:
            raise CNIError(NOT_AVAILABLE,
                           f"host-local: address pool exhausted in range set {idx} "
                           f"({set_str(rs)})",
                           f"all {allocator.set_capacity(rs)} addresses are reserved")
