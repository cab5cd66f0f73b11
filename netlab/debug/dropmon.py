"""Kernel drop reasons: the ``skb:kfree_skb`` tracepoint, read for one trace.

Since Linux 5.17 every dropped packet passes ``kfree_skb_reason()``, whose
tracepoint carries the reason (``enum skb_drop_reason``: NETFILTER_DROP,
OTHERHOST, PKT_TOO_BIG, ...) and ``location``, the kernel code that freed it.
The event has no namespace and no device (see its ``format`` file: skbaddr,
location, rx_sk, protocol, reason), so a drop is tied to a probe by time and
protocol only (``correlate``). See docs/adr/0019-kernel-drop-reasons.md.

The machine's tracing is left exactly as it was:

* tracefs is used where it is mounted; when it is not, it is mounted on a
  private temporary directory for the trace and unmounted afterwards (only
  that mount: never one that was there before);
* the events are recorded in a tracing *instance* of our own
  (``instances/netlab-<token>``), so the global buffer, tracer, event
  enables and filters are never touched; the instance is removed afterwards;
* its filter keeps only the probe's protocol (``protocol == 0x0800``).
"""
from __future__ import annotations

import bisect
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

EVENT = os.path.join("events", "skb", "kfree_skb")
ETH_P_IP = 0x0800
# an unrelated copy of the probe (a bridge floods it to every port): the least interesting reason
NOISE_REASONS = ("OTHERHOST",)


class DropMonError(Exception):
    pass


@dataclass
class Drop:
    ts: float                  # wall clock (time.time() scale)
    reason: str
    location: str              # as the kernel printed it (symbol+off/size) or an address
    function: str              # the kernel function that freed the packet
    protocol: int
    cpu: int = -1

    def to_dict(self) -> dict:
        return {"ts": self.ts, "reason": self.reason, "location": self.location, "function": self.function,
                "protocol": self.protocol, "cpu": self.cpu}


@dataclass
class Verdict:
    """What the kernel says about one lost probe."""
    drop: Drop | None
    after_us: int = 0                               # microseconds after the probe was last seen
    others: list[Drop] = field(default_factory=list)  # other drops of the protocol in the window

    def line(self, proto_name: str = "IPv4") -> str:
        if self.drop is None:
            return f"no {proto_name} drop reported (skb:kfree_skb) right after the probe was last seen"
        d = self.drop
        extra = f"; {len(self.others)} other {proto_name} drop(s) in the window" if self.others else ""
        return (f"drop reason {d.reason} in {d.function} (skb:kfree_skb, "
                f"{self.after_us} µs after the probe was last seen{extra})")


# --------------------------------------------------------------------------- parsing (pure)

_LINE = re.compile(r"\[(?P<cpu>\d+)\]\s+\S*\s+(?P<ts>\d+\.\d+):\s+kfree_skb:\s+(?P<body>.*)$")


def parse_trace(text: str, kallsyms: "Kallsyms | None" = None) -> list[tuple[float, Drop]]:
    """Lines of an instance's ``trace`` file -> (tracer timestamp, Drop)."""
    out = []
    for ln in text.splitlines():
        if ln.startswith("#"):
            continue
        m = _LINE.search(ln)
        if not m:
            continue
        body = m.group("body")
        reason = re.search(r"reason:\s*(\S+)", body)
        loc = re.search(r"location=(\S+)", body)
        proto = re.search(r"protocol=(\d+)", body)
        location = loc.group(1) if loc else "?"
        out.append((float(m.group("ts")), Drop(0.0, reason.group(1) if reason else "?", location,
                                               function_of(location, kallsyms),
                                               int(proto.group(1)) if proto else 0, int(m.group("cpu")))))
    return out


class Kallsyms:
    """Address -> function, from /proc/kallsyms (text symbols only)."""

    def __init__(self, text: str) -> None:
        syms = []
        for ln in text.splitlines():
            parts = ln.split()
            if len(parts) >= 3 and parts[1] in "tTwW":
                try:
                    syms.append((int(parts[0], 16), parts[2]))
                except ValueError:
                    continue
        syms.sort()
        self.addrs = [a for a, _ in syms]
        self.names = [n for _, n in syms]

    @classmethod
    def load(cls, path: str = "/proc/kallsyms") -> "Kallsyms":
        with open(path, encoding="ascii", errors="replace") as f:
            return cls(f.read())

    def resolve(self, addr: int) -> str | None:
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0 or self.addrs[i] == 0:
            return None          # kptr_restrict hides addresses: no symbol is trustworthy
        return f"{self.names[i]}+{addr - self.addrs[i]:#x}"


def function_of(location: str, kallsyms: Kallsyms | None = None) -> str:
    """``nft_do_chain+0x4a4/0x610`` -> ``nft_do_chain``; a bare address goes through kallsyms."""
    loc = location.strip()
    if re.fullmatch(r"(0x)?[0-9a-fA-F]{8,16}", loc):
        if kallsyms is not None:
            sym = kallsyms.resolve(int(loc, 16))
            if sym:
                return sym.split("+")[0]
        return loc
    return re.split(r"[+/ ]", loc)[0] or loc


def correlate(drops: list[Drop], last_seen: float, window: float = 0.05, slack: float = 0.001) -> Verdict:
    """The drop that is the probe's: the first one of the protocol at or after the
    moment it was last seen (a little slack for clock reading), within ``window``
    seconds; a flooded copy's OTHERHOST counts only when nothing else is there."""
    cand = sorted((d for d in drops if last_seen - slack <= d.ts <= last_seen + window), key=lambda d: d.ts)
    if not cand:
        return Verdict(None)
    real = [d for d in cand if d.reason not in NOISE_REASONS]
    best = (real or cand)[0]
    return Verdict(best, max(0, int(round((best.ts - last_seen) * 1e6))), [d for d in cand if d is not best])


# --------------------------------------------------------------------------- tracefs

def tracefs_mounts(mounts_file: str = "/proc/self/mounts") -> list[str]:
    """Where tracefs is mounted now (a debugfs mount has it under tracing/)."""
    out = []
    try:
        with open(mounts_file, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for ln in lines:
        parts = ln.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if parts[2] == "tracefs":
            out.append(mnt)
        elif parts[2] == "debugfs" and os.path.isdir(os.path.join(mnt, "tracing", "instances")):
            out.append(os.path.join(mnt, "tracing"))
    return out


PRIVATE_MOUNT_PREFIX = "netlab-tracefs-"


def shared_tracefs_mounts(mounts_file: str = "/proc/self/mounts") -> list[str]:
    """The tracefs mounts a monitor may use: not another monitor's private
    mount (``netlab-tracefs-<tag>-*``), which its owner unmounts when its trace
    ends, whatever other traces still read through it."""
    return [m for m in tracefs_mounts(mounts_file)
            if not os.path.basename(m).startswith(PRIVATE_MOUNT_PREFIX)]


def kernel_has_tracefs(filesystems: str = "/proc/filesystems") -> bool:
    try:
        with open(filesystems, encoding="utf-8") as f:
            return any(ln.split()[-1] == "tracefs" for ln in f if ln.strip())
    except OSError:
        return False


def support(root: str | None = None) -> str | None:
    """None when drop reasons can be read here; else why not (one line)."""
    if root is not None:
        if not os.path.isdir(os.path.join(root, EVENT)):
            return "the kernel has no skb:kfree_skb tracepoint with drop reasons (Linux 5.17+)"
        return None
    if not tracefs_mounts() and not kernel_has_tracefs():
        return "the kernel has no tracefs"
    return None


class DropMonitor:
    """``start()`` before the probe, ``stop()`` after; ``drops`` then holds the
    drops of ``protocol`` seen meanwhile, with wall-clock times."""

    # how instances are made and removed (tracefs fills/empties them itself; tests stand in)
    _mkdir = staticmethod(os.mkdir)
    _rmdir = staticmethod(os.rmdir)

    def __init__(self, tag: str, protocol: int = ETH_P_IP, *, root: str | None = None) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", tag):
            raise DropMonError(f"bad instance tag {tag!r}")
        self.tag = tag
        self.protocol = protocol
        self.root = root                 # a tracefs mount to use (tests); else found or mounted
        self.mounted: str | None = None  # a mount point we made (and must remove)
        self.instance: str | None = None
        self.offset = 0.0                # wall clock - the instance's trace clock
        self.drops: list[Drop] = []
        self.error = ""

    # ---- life cycle --------------------------------------------------------------
    def start(self) -> None:
        """Raises DropMonError (nothing left behind) when drop reasons cannot be read."""
        why = support(self.root)
        if why:
            raise DropMonError(why)
        try:
            root = self.root or self._tracefs()
            if not os.path.isdir(os.path.join(root, EVENT)):
                raise DropMonError("the kernel has no skb:kfree_skb tracepoint with drop reasons (Linux 5.17+)")
            inst = os.path.join(root, "instances", f"netlab-{self.tag}")
            self._mkdir(inst)
            self.instance = inst
            ev = os.path.join(inst, EVENT)
            _write(os.path.join(inst, "trace_clock"), "mono")
            _write(os.path.join(ev, "filter"), f"protocol == {self.protocol:#06x}")
            _write(os.path.join(ev, "enable"), "1")
            self.offset = _clock_offset()
        except BaseException as e:
            self._cleanup()
            if isinstance(e, DropMonError):
                raise
            if isinstance(e, OSError):
                raise DropMonError(f"cannot set up a tracing instance: {e.strerror or e}") from None
            raise

    def stop(self) -> list[Drop]:
        try:
            if self.instance:
                _write(os.path.join(self.instance, EVENT, "enable"), "0")
                with open(os.path.join(self.instance, "trace"), encoding="utf-8", errors="replace") as f:
                    text = f.read()
                ks = None
                if re.search(r"location=(0x)?[0-9a-f]{8,16}\b", text):
                    try:
                        ks = Kallsyms.load()
                    except OSError:
                        ks = None
                self.drops = []
                for ts, d in parse_trace(text, ks):
                    d.ts = ts + self.offset
                    self.drops.append(d)
        except OSError as e:
            self.error = f"reading the drops failed: {e.strerror or e}"
        finally:
            self._cleanup()
        return self.drops

    def __enter__(self) -> "DropMonitor":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- helpers -----------------------------------------------------------------
    def _tracefs(self) -> str:
        have = shared_tracefs_mounts()
        if have:
            return have[0]
        d = tempfile.mkdtemp(prefix=f"{PRIVATE_MOUNT_PREFIX}{self.tag}-")
        p = subprocess.run(["mount", "-t", "tracefs", "nodev", d], capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            os.rmdir(d)
            raise DropMonError(f"cannot mount tracefs: {p.stderr.strip() or 'mount failed'}")
        self.mounted = d
        return d

    def _cleanup(self) -> None:
        if self.instance:
            for _ in range(50):
                try:
                    self._rmdir(self.instance)
                    break
                except FileNotFoundError:
                    break
                except OSError:          # EBUSY: a reader still has a file open
                    time.sleep(0.02)
            else:
                self.error = f"tracing instance {self.instance} could not be removed"
            self.instance = None
        if self.mounted:
            p = subprocess.run(["umount", self.mounted], capture_output=True, text=True, timeout=30)
            if p.returncode == 0:
                os.rmdir(self.mounted)
            else:
                self.error = f"could not unmount {self.mounted}: {p.stderr.strip()}"
            self.mounted = None


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


def _clock_offset() -> float:
    """time.time() - CLOCK_MONOTONIC (the instance's ``mono`` trace clock), read tightly."""
    best = None
    for _ in range(5):
        a = time.time()
        m = time.clock_gettime(time.CLOCK_MONOTONIC)
        b = time.time()
        if best is None or b - a < best[0]:
            best = (b - a, (a + b) / 2 - m)
    return best[1]  # type: ignore[index]


def snapshot(root: str) -> dict:
    """The tracefs state a trace must leave as it found it (tests compare two of these)."""
    out = {"instances": sorted(os.listdir(os.path.join(root, "instances")))}
    for rel in ("tracing_on", "current_tracer", "trace_clock", "set_event", "buffer_size_kb",
                os.path.join(EVENT, "enable"), os.path.join(EVENT, "filter"), os.path.join(EVENT, "trigger")):
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                out[rel] = f.read()
        except OSError as e:
            out[rel] = f"error {e.errno}"
    return out
