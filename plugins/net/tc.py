"""tc helpers for the bandwidth plugin: pure parameter maths + a small pyroute2 backend.

Pure part (no root, no pyroute2): ``tbf_params`` turns a CNI rate/burst pair
(bits per second, bits) into the kernel's TBF parameters, the same way
``tc qdisc add ... tbf rate R burst B latency 25ms`` would; ``ifb_name`` is
the deterministic IFB device name.

Backend (``Tc``): TBF as root qdisc, the ingress qdisc, a match-all filter
with a mirred egress redirect (u32 match-all when the kernel has no matchall
classifier), IFB devices. It works in the netns its IPRoute was opened in; the
IPRoute comes from ``link.open_iproute`` (kernel errors are OSErrors).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

TIME_UNITS_PER_SEC = 1_000_000
LATENCY_MS = 25               # queueing latency the TBF limit allows for (as the reference)
U32_MAX = 2**32 - 1
TBF_HANDLE = 0x10000          # 1:
INGRESS_HANDLE = 0xFFFF0000   # ffff:
TC_H_ROOT = 0xFFFFFFFF
ETH_P_ALL = 0x0003
FILTER_PRIO = 1
IFB_PREFIX = "bwp"


def tick_in_usec(psched: str | None = None) -> float:
    """Kernel scheduler ticks per microsecond, from /proc/net/psched (as tc does)."""
    if psched is None:
        try:
            with open("/proc/net/psched") as f:
                psched = f.read()
        except OSError:
            return 1.0
    t2us, us2t, clock_res, _ = (int(x, 16) for x in psched.split()[:4])
    clock_factor = clock_res / TIME_UNITS_PER_SEC
    return t2us / us2t * clock_factor


@dataclass(frozen=True)
class TbfParams:
    rate: int        # bytes per second
    burst: int       # bytes
    limit: int       # bytes queued at most
    buffer: int      # burst expressed in scheduler ticks (what the kernel stores)

    def describe(self) -> str:
        return (f"rate {self.rate * 8} bit/s burst {self.burst * 8} bit "
                f"limit {self.limit} B buffer {self.buffer} ticks")


class TcParamError(ValueError):
    """A rate/burst pair the kernel's TBF cannot represent."""


def _xmit_ticks(rate: int, size: int, ticks: float) -> int:
    """Time to send ``size`` bytes at ``rate`` bytes/s, in ticks, exactly as tc
    (and pyroute2) compute it: microseconds truncated first, then scaled."""
    return int(int(TIME_UNITS_PER_SEC * (float(size) / rate)) * ticks)


def tbf_params(rate_bits: int, burst_bits: int, ticks: float,
               latency_ms: int = LATENCY_MS) -> TbfParams:
    """TBF parameters for a CNI rate (bit/s) and burst (bits).

    limit = rate * latency + burst (bytes); buffer = time to send ``burst`` at
    ``rate``, in ticks (a 32-bit kernel field). A burst longer than the
    kernel can express (~274 s at the rate) is capped there: runtimes send
    "unlimited" bursts (kubelet 2^31-1, containerd 2^32-1 bits), which must
    work at low rates too; the reference lets the value wrap instead.
    """
    rate = rate_bits // 8
    burst = burst_bits // 8
    if rate < 1:
        raise TcParamError("rate must be at least 8 bit/s")
    if rate > U32_MAX:
        raise TcParamError(f"rate must be at most {U32_MAX * 8} bit/s")
    if burst < 1:
        raise TcParamError("burst must be at least 8 bits")
    if burst > U32_MAX:
        raise TcParamError(f"burst must be at most {U32_MAX * 8} bits")
    if _xmit_ticks(rate, burst, ticks) > U32_MAX:
        burst = int(U32_MAX / ticks * rate / TIME_UNITS_PER_SEC)
        while burst > 1 and _xmit_ticks(rate, burst, ticks) > U32_MAX:
            burst -= max(1, burst // 10**6)
    buffer = _xmit_ticks(rate, burst, ticks)
    limit = min(int(rate * latency_ms * 1000 / TIME_UNITS_PER_SEC) + burst, U32_MAX)
    return TbfParams(rate=rate, burst=burst, limit=limit, buffer=buffer)


def ifb_name(network: str, container_id: str, ifname: str) -> str:
    """The IFB device of one attachment: 'bwp' + 12 hex chars of a hash of network,
    container ID and interface (15 chars): a pod's eth0 and eth1 get their own."""
    h = hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).hexdigest()
    return IFB_PREFIX + h[:12]


def legacy_ifb_name(network: str, container_id: str) -> str:
    """The name earlier versions gave the IFB (no interface in the hash): DEL and GC
    still remove such an IFB for its owner after an upgrade."""
    h = hashlib.sha256(f"{network}\0{container_id}".encode()).hexdigest()
    return IFB_PREFIX + h[:12]


def ifb_alias(network: str, container_id: str, ifname: str) -> str:
    """The alias the IFB carries so GC can tell which attachment it serves."""
    return f"cnilab-bandwidth n:{network} c:{container_id} i:{ifname}"[:255]


def parse_alias(alias: str) -> tuple[str, str, str | None] | None:
    """(network, container ID, ifname) of an IFB alias of ours; ifname is None for an
    alias written by an earlier version (which did not record it). Names and IDs
    hold no spaces, so the separators are unambiguous."""
    if not alias.startswith("cnilab-bandwidth n:"):
        return None
    rest = alias[len("cnilab-bandwidth n:"):]
    net, sep, cid = rest.partition(" c:")
    if not sep:
        return None
    cid, sep, ifname = cid.partition(" i:")
    return net, cid, (ifname if sep else None)


# ---- backend ------------------------------------------------------------------

class Tc:
    """tc and link operations through one pyroute2 IPRoute (in its netns)."""

    def __init__(self, ipr) -> None:
        self.ipr = ipr

    # links
    def link(self, name: str | None = None, index: int | None = None):
        try:
            if index is not None:
                return self.ipr.link("get", index=index)[0]
            return self.ipr.link("get", ifname=name)[0]
        except OSError as e:        # link.NetlinkFailure
            if e.errno in (19, 2):   # ENODEV, ENOENT
                return None
            raise

    def create_ifb(self, name: str, mtu: int, alias: str) -> int:
        self.ipr.link("add", ifname=name, kind="ifb", mtu=mtu)
        idx = self.ipr.link_lookup(ifname=name)[0]
        self.ipr.link("set", index=idx, ifalias=alias)
        self.ipr.link("set", index=idx, state="up")
        return idx

    def delete_link(self, name: str) -> bool:
        try:
            self.ipr.link("del", ifname=name)
            return True
        except OSError as e:        # link.NetlinkFailure
            if e.errno in (19, 2):
                return False
            raise

    def ifb_links(self) -> list:
        return [link for link in self.ipr.get_links() if _kind(link) == "ifb"]

    def redirected_to(self, target: int) -> bool:
        """Whether an ingress filter of any link of the namespace redirects to ``target``."""
        return any(self.ingress_qdisc(link["index"]) is not None
                   and target in self.redirect_targets(link["index"])
                   for link in self.ipr.get_links())

    # qdiscs
    def qdiscs(self, index: int) -> list:
        return [q for q in self.ipr.get_qdiscs(index=index) if q["index"] == index]

    def root_qdisc(self, index: int):
        for q in self.qdiscs(index):
            if q["parent"] == TC_H_ROOT:
                return q
        return None

    def ingress_qdisc(self, index: int):
        for q in self.qdiscs(index):
            if q.get_attr("TCA_KIND") == "ingress":
                return q
        return None

    def set_tbf(self, index: int, p: TbfParams) -> None:
        # pyroute2 computes buffer from rate/burst with the same tick factor
        self.ipr.tc("replace", kind="tbf", index=index, handle=TBF_HANDLE,
                    rate=p.rate, burst=p.burst, limit=p.limit)

    def del_root(self, index: int) -> None:
        self._del_qdisc(index, dict(parent=TC_H_ROOT))

    def add_ingress(self, index: int) -> None:
        try:
            self.ipr.tc("add", kind="ingress", index=index, handle=INGRESS_HANDLE)
        except OSError as e:        # link.NetlinkFailure
            if e.errno != 17:        # EEXIST: re-ADD
                raise

    def del_ingress(self, index: int) -> None:
        self._del_qdisc(index, dict(kind="ingress", handle=INGRESS_HANDLE))

    def _del_qdisc(self, index: int, kw: dict) -> None:
        try:
            self.ipr.tc("del", index=index, **kw)
        except OSError as e:        # link.NetlinkFailure
            if e.errno not in (2, 22, 19):     # nothing there (ENOENT/EINVAL/ENODEV)
                raise

    def redirect_all(self, index: int, target: int) -> str:
        """Redirect everything entering ``index`` to ``target``'s egress; returns the
        classifier used."""
        action = {"kind": "mirred", "direction": "egress", "action": "redirect",
                  "ifindex": target}
        try:
            self.ipr.tc("replace-filter", kind="matchall", index=index, parent=INGRESS_HANDLE,
                        prio=FILTER_PRIO, protocol=ETH_P_ALL, action=action)
            return "matchall"
        except OSError as e:        # link.NetlinkFailure
            if e.errno not in (2, 95, 22):   # no cls_matchall in this kernel
                raise
        self.ipr.tc("replace-filter", kind="u32", index=index, parent=INGRESS_HANDLE,
                    prio=FILTER_PRIO, protocol=ETH_P_ALL, keys=["0x0/0x0+0"],
                    target=0x10001, action=action)
        return "u32"

    def redirect_targets(self, index: int) -> list[int]:
        """ifindexes that filters on the ingress qdisc of ``index`` redirect to."""
        out = []
        for f in self.ipr.get_filters(index=index, parent=INGRESS_HANDLE):
            out += _mirred_targets(f)
        return out

    @staticmethod
    def tbf_of(qdisc) -> TbfParams | None:
        if qdisc is None or qdisc.get_attr("TCA_KIND") != "tbf":
            return None
        opts = qdisc.get_attr("TCA_OPTIONS")
        parms = opts.get_attr("TCA_TBF_PARMS") if opts is not None else None
        if parms is None:
            return None
        # rates are capped at 2^32-1 bytes/s by our validation: no TCA_TBF_RATE64
        return TbfParams(rate=parms["rate"], burst=0, limit=parms["limit"],
                         buffer=parms["buffer"])


def _kind(link) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def _mirred_targets(msg) -> list[int]:
    """ifindexes of the mirred actions of one filter message (matchall or u32)."""
    out: list[int] = []
    opts = msg.get_attr("TCA_OPTIONS")
    if opts is None:
        return out
    acts = opts.get_attr("TCA_U32_ACT") or opts.get_attr("TCA_MATCHALL_ACT")
    if acts is None:
        return out
    for _name, act in acts.get("attrs", []):
        if not hasattr(act, "get_attr") or act.get_attr("TCA_ACT_KIND") != "mirred":
            continue
        aopts = act.get_attr("TCA_ACT_OPTIONS")
        parms = aopts.get_attr("TCA_MIRRED_PARMS") if aopts is not None else None
        if parms is not None:
            out.append(parms["ifindex"])
    return out
