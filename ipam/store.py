"""Reservation stores: the disk store and an in-memory fake (the protocol
both satisfy is ``ipam.protocol.Store``).

Disk layout (byte-compatible with the reference host-local, so a node can
switch between the two plugins in either direction):

    <dataDir>/<network>/                  0700 when we create it
        <ip>                              "<containerID>\\r\\n<ifname>", 0600
        last_reserved_ip.<set index>      "<ip>", 0600
        lock                              flock()ed for every operation
        .cnilab/                          ours only: attachment index (a hint)
            idx-00 .. idx-ff              JSON {"<cid>\\r\\n<ifname>": [ip, ...]}
            stamp                         "mtime=<ns> buckets=<bitmap>": the directory
                                          mtime the index matches, non-empty buckets

The reference finds an attachment's addresses by reading every file of the
directory (O(n) per ADD). We keep an index sharded in 256 buckets by a hash of
the attachment, so the duplicate check and DEL read one small bucket. The
index is only trusted when the network directory's mtime equals the value
recorded in ``stamp``; after each of our changes we set the directory mtime
to a value two seconds in the past and record it, so any later change by
another writer (the reference plugin, an admin) moves the mtime to "now",
which can never equal ours: the next operation then rebuilds the index with
one scan. Entries are verified against the address files before use. See
docs/adr/0003-ipam-store-and-gc.md.
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import time
import zlib
from collections import namedtuple

from plugins.core.errors import CNIError, TRY_AGAIN_LATER
from plugins.core.fsutil import make_dirs

from .ranges import IPAddress

LINE_BREAK = "\r\n"
LAST_PREFIX = "last_reserved_ip."
LOCK_NAME = "lock"
INDEX_DIR = ".cnilab"
# A reservation is written here first and linked into place complete, so a crash
# never leaves an address file without its owner (which no DEL could find). Not
# an address name: every reader (ours and the reference's) skips it.
STAGING_NAME = ".cnilab-reserving"
BUCKETS = 256
LOCK_TIMEOUT = 60.0
_MTIME_BACKDATE_NS = 2_000_000_000
_BUCKET_NAMES = frozenset(f"{b:02x}" for b in range(BUCKETS))


class Owner(namedtuple("Owner", "container_id ifname")):
    """An attachment; ``ifname`` is "" for files written by very old versions."""
    __slots__ = ()

    def content(self) -> bytes:
        return (self.container_id.strip() + LINE_BREAK + self.ifname).encode()

    @property
    def key(self) -> str:
        return self.container_id + LINE_BREAK + self.ifname


def parse_owner(data: bytes) -> Owner:
    text = data.decode("utf-8", errors="surrogateescape").strip()
    cid, sep, ifname = text.partition(LINE_BREAK)
    return Owner(cid.strip(), ifname if sep else "")


def parse_ip_name(name: str) -> IPAddress | None:
    """The address an entry of the directory is named after, or None."""
    if not name or not (name[0].isdigit() or ":" in name or name[0] in "abcdefABCDEF"):
        return None
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _match(found: dict, owner: Owner) -> list:
    """Exact (cid, ifname) matches; else, like the reference, legacy files of the cid."""
    exact = found.get(owner.key)
    if exact:
        return list(exact)
    return list(found.get(Owner(owner.container_id, "").key) or [])


class MemoryStore:
    """The in-memory fake: same semantics, no files, no lock."""

    def __init__(self) -> None:
        self.ips: dict[IPAddress, Owner] = {}
        self.last: dict[int, IPAddress] = {}
        self.unwritable = ""
        self.reserve_calls = 0
        self.in_session = False

    def session(self) -> "MemoryStore":
        return self

    def __enter__(self) -> None:
        assert not self.in_session, "sessions do not nest"
        self.in_session = True

    def __exit__(self, *exc) -> None:
        self.in_session = False

    def reserve(self, ip: IPAddress, owner: Owner, set_index: int) -> bool:
        assert self.in_session
        self.reserve_calls += 1
        if ip in self.ips:
            return False
        self.ips[ip] = Owner(owner.container_id.strip(), owner.ifname)
        self.last[set_index] = ip
        return True

    def release(self, ip: IPAddress) -> None:
        self.ips.pop(ip, None)

    def owner_of(self, ip: IPAddress) -> Owner | None:
        return self.ips.get(ip)

    def find(self, owner: Owner) -> list[IPAddress]:
        by_key: dict[str, list] = {}
        for ip, o in self.ips.items():
            by_key.setdefault(o.key, []).append(ip)
        return _match(by_key, owner)

    def reservations(self) -> dict[IPAddress, Owner]:
        return dict(self.ips)

    def reserved_addresses(self) -> list[IPAddress]:
        return list(self.ips)

    def reserved_ints(self, version: int) -> set[int]:
        return {int(a) for a in self.ips if a.version == version}

    def last_reserved(self, set_index: int) -> IPAddress | None:
        return self.last.get(set_index)

    def writable_problem(self) -> str | None:
        return self.unwritable or None


def _bucket_of(key: str) -> int:
    return zlib.crc32(key.encode("utf-8", errors="surrogateescape")) % BUCKETS


class DiskStore:
    """The reference's on-disk format, plus our attachment index."""

    def __init__(self, data_dir: str, network: str) -> None:
        self.root = data_dir
        self.dir = os.path.join(data_dir, network)
        self.idx_dir = os.path.join(self.dir, INDEX_DIR)
        self._lock_fd: int | None = None
        self._buckets: dict[int, dict[str, list[str]]] = {}
        self._dirty: set[int] = set()
        self._index_ok = False
        self._dir_changed = False
        self._present: set[int] = set()
        self.rebuilds = 0            # observability for tests and the benchmark

    # ---- session: lock + index validity -----------------------------------
    def session(self) -> "DiskStore":
        return self

    def __enter__(self) -> None:
        make_dirs(self.dir, 0o700)
        fd = os.open(os.path.join(self.dir, LOCK_NAME), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        try:
            self._flock(fd)
            self._buckets, self._dirty = {}, set()
            self._dir_changed = False
            self._index_ok = self._stamp_matches()
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def __exit__(self, exc_type, exc, tb) -> None:
        fd, self._lock_fd = self._lock_fd, None
        try:
            self._finish()
        finally:
            os.close(fd)            # closing drops the flock

    @staticmethod
    def _flock(fd: int) -> None:
        deadline = time.monotonic() + LOCK_TIMEOUT
        delay = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                    raise
            if time.monotonic() > deadline:
                raise CNIError(TRY_AGAIN_LATER, "host-local: timed out waiting for the store lock",
                               f"another process holds the lock for {LOCK_TIMEOUT:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def _stamp_matches(self) -> bool:
        """The index matches the directory; also loads which buckets are non-empty."""
        self._present = set()
        try:
            fd = os.open(os.path.join(self.idx_dir, "stamp"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                text = os.read(fd, 4096).decode()
            finally:
                os.close(fd)
            fields = dict(kv.partition("=")[::2] for kv in text.split())
            stamp = int(fields["mtime"])
            bitmap = int(fields["buckets"], 16)
        except (OSError, ValueError, KeyError, UnicodeDecodeError):
            return False
        if stamp != os.stat(self.dir).st_mtime_ns:
            return False
        self._present = {b for b in range(BUCKETS) if bitmap >> b & 1}
        return True

    def _finish(self) -> None:
        if not self._index_ok:
            return                   # the index stays invalid; the next find() rebuilds it
        try:
            self._save_index()
        except OSError:
            # The reservations are already on disk; never fail the operation for the
            # index. Without a matching stamp the next call rebuilds it.
            try:
                os.unlink(os.path.join(self.idx_dir, "stamp"))
            except OSError:
                pass

    def _save_index(self) -> None:
        for b in sorted(self._dirty):
            self._write_bucket(b, self._buckets[b])
        if self._dir_changed or self._dirty:
            self._dirty.clear()
            st = os.stat(self.dir)
            mtime = st.st_mtime_ns
            if self._dir_changed or not self._stamped_mtime_ok(mtime):
                os.utime(self.dir, ns=(st.st_atime_ns, time.time_ns() - _MTIME_BACKDATE_NS))
                mtime = os.stat(self.dir).st_mtime_ns   # as stored (coarse filesystems round)
            bitmap = sum(1 << b for b in self._present)
            self._write_file(os.path.join(self.idx_dir, "stamp"),
                             f"mtime={mtime} buckets={bitmap:064x}\n".encode())

    @staticmethod
    def _stamped_mtime_ok(mtime: int) -> bool:
        """An mtime we set ourselves is always >= 2 s old; a fresh one may be foreign."""
        return mtime < time.time_ns() - _MTIME_BACKDATE_NS // 2

    # ---- small file helpers ---------------------------------------------------
    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    @staticmethod
    def _write_file(path: str, data: bytes) -> None:
        """Truncate + write in place (creating a new inode per write costs ~0.7 ms on
        ext4 here). A torn write leaves invalid JSON / stamp text, which the
        readers detect and answer with a rebuild."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _read_owner(self, ip: IPAddress) -> Owner | None:
        try:
            fd = os.open(os.path.join(self.dir, str(ip)), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            return parse_owner(os.read(fd, 4096))
        except IsADirectoryError:
            return None
        finally:
            os.close(fd)

    # ---- the index --------------------------------------------------------------
    def _bucket(self, b: int) -> dict[str, list[str]]:
        got = self._buckets.get(b)
        if got is None:
            got = {}
            if b in self._present:
                try:
                    fd = os.open(os.path.join(self.idx_dir, f"idx-{b:02x}"),
                                 os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        chunks = []
                        while True:
                            chunk = os.read(fd, 1 << 16)
                            if not chunk:
                                break
                            chunks.append(chunk)
                    finally:
                        os.close(fd)
                    got = json.loads(b"".join(chunks))
                    if not isinstance(got, dict):
                        raise ValueError("not an object")
                except (OSError, ValueError):
                    self._index_ok = False   # listed in the stamp but missing or damaged
                    got = {}
            self._buckets[b] = got
        return got

    def _write_bucket(self, b: int, content: dict) -> None:
        path = os.path.join(self.idx_dir, f"idx-{b:02x}")
        if content:
            self._write_file(path, json.dumps(content, separators=(",", ":")).encode())
            self._present.add(b)
        elif b in self._present:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            self._present.discard(b)

    def _index_add(self, owner: Owner, ip: IPAddress) -> None:
        if not self._index_ok:
            return
        b = _bucket_of(owner.key)
        entry = self._bucket(b).setdefault(owner.key, [])
        if str(ip) not in entry:
            entry.append(str(ip))
        self._dirty.add(b)

    def _index_remove(self, owner: Owner, ip: IPAddress) -> None:
        if not self._index_ok:
            return
        b = _bucket_of(owner.key)
        bucket = self._bucket(b)
        entry = bucket.get(owner.key)
        if entry and str(ip) in entry:
            entry.remove(str(ip))
            if not entry:
                del bucket[owner.key]
            self._dirty.add(b)

    def _scan(self) -> dict[str, Owner]:
        """{address file name: Owner} of the whole directory: one listing plus one
        openat/read per address file, no ipaddress objects (the rebuild's hot loop)."""
        import socket
        pton, v4, v6 = socket.inet_pton, socket.AF_INET, socket.AF_INET6
        out: dict[str, Owner] = {}
        dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name in os.listdir(dfd):
                try:
                    pton(v6 if ":" in name else v4, name)
                except OSError:
                    continue
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
                except FileNotFoundError:
                    continue
                try:
                    out[name] = parse_owner(os.read(fd, 4096))
                except IsADirectoryError:
                    pass
                finally:
                    os.close(fd)
        finally:
            os.close(dfd)
        return out

    def rebuild_index(self, reservations: dict | None = None) -> None:
        """Rewrite the whole index from the address files (one scan), or from
        ``reservations`` ({ip or name: Owner}) when the caller just scanned."""
        if reservations is None:
            reservations = self._scan()
        self.rebuilds += 1
        buckets: dict[int, dict[str, list[str]]] = {}
        for ip, owner in reservations.items():
            buckets.setdefault(_bucket_of(owner.key), {}).setdefault(owner.key, []).append(str(ip))
        os.makedirs(self.idx_dir, mode=0o700, exist_ok=True)
        for name in os.listdir(self.idx_dir):        # drop buckets that are now empty
            if name.startswith("idx-") and not (len(name) == 6 and name[4:] in _BUCKET_NAMES
                                                and int(name[4:], 16) in buckets):
                os.unlink(os.path.join(self.idx_dir, name))
        self._present = set()
        for b, content in buckets.items():
            self._write_bucket(b, content)
        self._buckets = {b: buckets.get(b, {}) for b in range(BUCKETS)}
        self._dirty.clear()
        self._index_ok = True
        self._dir_changed = True      # forces a fresh stamp in _finish

    # ---- the Store protocol -------------------------------------------------------
    def reserve(self, ip: IPAddress, owner: Owner, set_index: int) -> bool:
        path = self._path(str(ip))
        if os.path.lexists(path):
            return False
        # Under the lock one staging file is enough. One a crash left behind may be
        # a second link of a live reservation: unlink it, never write through it.
        # link() is atomic and fails if the address is taken.
        staging = self._path(STAGING_NAME)
        try:
            os.unlink(staging)
        except FileNotFoundError:
            pass
        self._dir_changed = True
        try:
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, owner.content())
            finally:
                os.close(fd)
            os.link(staging, path)
        except FileExistsError:
            return False
        finally:
            try:
                os.unlink(staging)
            except FileNotFoundError:
                pass
        self._write_file_inplace(self._path(f"{LAST_PREFIX}{set_index}"), str(ip).encode())
        self._index_add(Owner(owner.container_id.strip(), owner.ifname), ip)
        return True

    @staticmethod
    def _write_file_inplace(path: str, data: bytes) -> None:
        """Like the reference (truncate + write): no new directory entry once it exists."""
        DiskStore._write_file(path, data)

    def release(self, ip: IPAddress) -> None:
        owner = self._read_owner(ip)
        try:
            os.unlink(self._path(str(ip)))
            self._dir_changed = True
        except FileNotFoundError:
            pass
        if owner is not None:
            self._index_remove(owner, ip)

    def owner_of(self, ip: IPAddress) -> Owner | None:
        return self._read_owner(ip)

    def find(self, owner: Owner) -> list[IPAddress]:
        owner = Owner(owner.container_id.strip(), owner.ifname)
        for _ in range(2):
            if not self._index_ok:
                scan = self._scan()
                try:
                    self.rebuild_index(scan)
                except OSError:          # cannot write the index: answer from the scan
                    self._index_ok = False
                    by_key: dict[str, list] = {}
                    for name, o in scan.items():
                        by_key.setdefault(o.key, []).append(ipaddress.ip_address(name))
                    return _match(by_key, owner)
            out = self._find_indexed(owner)
            if self._index_ok:            # no bucket turned out unreadable meanwhile
                return out
        return out

    def _find_indexed(self, owner: Owner) -> list[IPAddress]:
        out: list[IPAddress] = []
        for o in (owner, Owner(owner.container_id, "")):
            bucket = self._bucket(_bucket_of(o.key))
            for text in list(bucket.get(o.key, [])):
                try:
                    ip = ipaddress.ip_address(text)
                except ValueError:
                    self._index_ok = False
                    continue
                if self._read_owner(ip) == o:
                    out.append(ip)
                else:                     # stale hint (file gone or re-owned)
                    self._index_remove(o, ip)
            if out:
                break
        return out

    def reserved_addresses(self) -> list[IPAddress]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return [ip for ip in map(parse_ip_name, names) if ip is not None]

    def reserved_ints(self, version: int) -> set[int]:
        """Reserved addresses of one family as ints, from one listing (no file reads)."""
        import socket                   # only on this rare path: ~2 ms to import
        fam = socket.AF_INET if version == 4 else socket.AF_INET6
        pton, from_bytes = socket.inet_pton, int.from_bytes
        out = set()
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return out
        for name in names:
            try:
                out.add(from_bytes(pton(fam, name), "big"))
            except OSError:
                pass                        # another family, or not an address at all
        return out

    def reservations(self) -> dict[IPAddress, Owner]:
        out = {}
        for ip in self.reserved_addresses():
            owner = self._read_owner(ip)
            if owner is not None:
                out[ip] = owner
        return out

    def last_reserved(self, set_index: int) -> IPAddress | None:
        try:
            with open(self._path(f"{LAST_PREFIX}{set_index}"), "rb") as f:
                return ipaddress.ip_address(f.read().decode().strip())
        except (OSError, ValueError, UnicodeDecodeError):
            return None

    def writable_problem(self) -> str | None:
        """Why nothing could be stored now, or None; probes with a real write."""
        probe_dir = self.dir
        while not os.path.isdir(probe_dir):
            parent = os.path.dirname(probe_dir)
            if parent == probe_dir:
                break
            if os.path.exists(probe_dir):
                return f"{probe_dir} exists and is not a directory"
            probe_dir = parent
        probe = os.path.join(probe_dir, f".cnilab-probe.{os.getpid()}")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            return f"data dir {self.dir} is not writable: {e.strerror or e}"
        if probe_dir == self.dir:
            self._dir_changed = True    # our probe moved the mtime; restamp if we hold the lock
        return None

