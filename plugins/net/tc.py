"""tc helpers for the bandwidth plugin: pure parameter maths + a small rtnetlink backend.

Pure part (no root, no pyroute2): ``tbf_params`` turns a CNI rate/burst pair
(bits per second, bits) into the kernel's TBF parameters, the same way
``tc qdisc add ... tbf rate R burst B latency 25ms`` would; ``ifb_name`` is
the deterministic IFB device name.

Backend (``Tc``): TBF as root qdisc, the ingress qdisc, a match-all filter
with a mirred egress redirect (u32 match-all when the kernel has no matchall
classifier), IFB devices, on the standard library's netlink socket
(``netlink.tcmsg``, no pyroute2: docs/adr/0037). It works in the netns its
``Rtnl`` was opened in.
"""
from __future__ import annotations

from ..core.names import sha256_hex
from ..core.record import record

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


@record(frozen=True)
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
    h = sha256_hex(f"{network}\0{container_id}\0{ifname}")
    return IFB_PREFIX + h[:12]


def legacy_ifb_name(network: str, container_id: str) -> str:
    """The name earlier versions gave the IFB (no interface in the hash): DEL and GC
    still remove such an IFB for its owner after an upgrade."""
    h = sha256_hex(f"{network}\0{container_id}")
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
    """tc and link operations on one standard-library rtnetlink socket
    (``netlink.rtnl.Rtnl``, bound to the namespace it was opened in).

    Links are ``link.LinkInfo``; qdiscs ``netlink.tcmsg.Qdisc``. Kernel refusals
    of tc requests are OSErrors (``link.NetlinkFailure``), of link requests
    CNIErrors, as in ``netlink.rtnl``.
    """

    def __init__(self, nl) -> None:
        from .netlink import rtnl, tcmsg
        self.nl, self._rtnl, self._tc = nl, rtnl, tcmsg

    # links
    def link(self, name: str | None = None, index: int | None = None):
        return self._rtnl.get_link(self.nl, name=name, index=index)

    def create_ifb(self, name: str, mtu: int, alias: str):
        """The IFB, named and aliased (the alias is set with the link going up, so an
        IFB that is up always says whom it serves); returns its LinkInfo."""
        self._rtnl.add_link(self.nl, name, "ifb", mtu=mtu)
        ifb = self.link(name)
        if ifb is None:
            raise OSError(19, f"IFB {name} vanished right after creation")
        self._rtnl.set_link(self.nl, ifb.index, f"bringing up IFB {name}", ifalias=alias,
                            state="up")
        return self.link(index=ifb.index) or ifb

    def delete_link(self, name: str) -> bool:
        return self._rtnl.delete_link(self.nl, name)

    def ifb_links(self) -> list:
        return [link for link in self._rtnl.dump_links(self.nl) if link.kind == "ifb"]

    def redirected_to(self, target: int) -> bool:
        """Whether an ingress filter of any link of the namespace redirects to ``target``."""
        return any(self.ingress_qdisc(link.index) is not None
                   and target in self.redirect_targets(link.index)
                   for link in self._rtnl.dump_links(self.nl))

    # qdiscs
    def root_qdisc(self, index: int):
        return self._tc.get_qdisc(self.nl, index, TC_H_ROOT)

    def ingress_qdisc(self, index: int):
        q = self._tc.get_qdisc(self.nl, index, self._tc.TC_H_INGRESS)
        return q if q is not None and q.kind == "ingress" else None

    def set_tbf(self, index: int, p: TbfParams) -> None:
        self._tc.replace_tbf(self.nl, index, TBF_HANDLE, p.rate, p.limit, p.buffer)

    def del_root(self, index: int) -> None:
        self._tc.delete_qdisc(self.nl, index, TC_H_ROOT)

    def add_ingress(self, index: int) -> None:
        self._tc.add_ingress(self.nl, index, INGRESS_HANDLE)     # already there: a re-ADD

    def del_ingress(self, index: int) -> None:
        self._tc.delete_qdisc(self.nl, index, self._tc.TC_H_INGRESS, INGRESS_HANDLE)

    def redirect_all(self, index: int, target: int, classifier: str | None = None) -> str:
        """Redirect everything entering ``index`` to ``target``'s egress; returns the
        classifier used: matchall, or u32 match-all when the kernel has no
        cls_matchall (or when ``classifier`` asks for it)."""
        if classifier in (None, "matchall"):
            try:
                self._tc.replace_redirect_filter(self.nl, index, INGRESS_HANDLE, FILTER_PRIO,
                                                 ETH_P_ALL, target, "matchall")
                return "matchall"
            except OSError as e:
                if classifier or e.errno not in (2, 95, 22):   # no cls_matchall here
                    raise
        self._tc.replace_redirect_filter(self.nl, index, INGRESS_HANDLE, FILTER_PRIO,
                                         ETH_P_ALL, target, "u32", classid=0x10001)
        return "u32"

    def redirect_targets(self, index: int) -> list[int]:
        """ifindexes that filters on the ingress qdisc of ``index`` redirect to."""
        return self._tc.redirect_targets(self.nl, index, INGRESS_HANDLE)

    @staticmethod
    def tbf_of(qdisc) -> TbfParams | None:
        if qdisc is None or qdisc.tbf is None:
            return None
        # rates are capped at 2^32-1 bytes/s by our validation: no TCA_TBF_RATE64
        rate, limit, buffer = qdisc.tbf
        return TbfParams(rate=rate, burst=0, limit=limit, buffer=buffer)
