"""Link impairments: loss, duplication, rate (and delay/jitter where the kernel has netem).

An impairment belongs to one interface of a lab namespace and one direction:
``egress`` (what leaves it, the default) or ``ingress`` (what arrives). Every
lab link is a veth, so it is a wire with two ends, and each impairment is
placed where a real faulty link would act (docs/adr/0020-link-impairments.md):

* **loss**: a netdev *ingress* hook at the receiving end of the wire
  (``numgen random mod 10000 < N drop`` in a table of our own). Dropping at the
  sender's egress would be wrong: the sending kernel sees the drop
  (ENOBUFS), and ping or TCP just send again.
* **duplicate**: a netdev *egress* hook at the sending end
  (``dup to "<dev>"``; the copy is marked so it is not copied again).
* **rate** (+ burst): a TBF on the sending end; for ``ingress``, the
  interface's ingress qdisc redirects to an IFB device that has the TBF
  (plugins/net/tc.py, as the bandwidth plugin does).
* **delay** / **jitter**: netem, only where the kernel has it (probed by
  adding one in a throwaway namespace); otherwise refused in one line
  naming the missing module, ``sch_netem``.

``plan`` turns an impairment into parts (pure data, unit-tested); ``apply``
makes them, each recorded in the lab state first (kind ``impair``), and
``remove`` undoes exactly the recorded parts. ``down`` removes them with
the rest of the lab.
"""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

KEYS = ("loss", "duplicate", "minSize", "rate", "burst", "delay", "jitter", "direction")
_ATTR = {"minSize": "min_size"}
DIRECTIONS = ("egress", "ingress")
TABLE_PREFIX = "cnilab-impair-"
DUP_MARK = 0x4E4C0001          # "NL" + 1: a copy we made, not copied again
SCALE = 10000                  # loss/duplicate in 1/100 of a percent
NETEM_MODULE = "sch_netem"
FOREIGN_OK = ("noqueue", "pfifo_fast", "fq_codel", "mq", "pfifo", "bfifo")   # defaults we may replace


class ImpairError(Exception):
    pass


@dataclass
class Impairment:
    loss: float = 0.0          # percent of packets dropped
    duplicate: float = 0.0     # percent of packets sent twice
    rate: int = 0              # bit/s
    burst: int = 0             # bytes (0: a default for the rate)
    delay: float = 0.0         # ms (netem)
    jitter: float = 0.0        # ms (netem)
    direction: str = "egress"
    min_size: int = 0          # loss/duplicate only for packets of at least this many bytes (IP length)

    def empty(self) -> bool:
        return not (self.loss or self.duplicate or self.rate or self.delay or self.jitter)

    def needs_netem(self) -> bool:
        return bool(self.delay or self.jitter)

    def describe(self) -> str:
        out = []
        if self.loss:
            out.append(f"loss {self.loss:g}%")
        if self.duplicate:
            out.append(f"duplicate {self.duplicate:g}%")
        if self.min_size:
            out.append(f"of packets >= {self.min_size} bytes")
        if self.rate:
            out.append(f"rate {_rate_text(self.rate)}" + (f" burst {self.burst}B" if self.burst else ""))
        if self.delay:
            out.append(f"delay {self.delay:g}ms")
        if self.jitter:
            out.append(f"jitter {self.jitter:g}ms")
        return (", ".join(out) or "none") + f" ({self.direction})"

    def to_dict(self) -> dict:
        return {k: getattr(self, _ATTR.get(k, k)) for k in KEYS
                if getattr(self, _ATTR.get(k, k)) or k == "direction"}

    @classmethod
    def from_dict(cls, d: dict) -> "Impairment":
        return cls(**{_ATTR.get(k, k): d[k] for k in KEYS if k in d})


def _rate_text(bits: int) -> str:
    for unit, n in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits >= n and bits % (n // 1000 or 1) == 0:
            return f"{bits / n:g}{unit}"
    return f"{bits}bit"


# --------------------------------------------------------------------------- parsing

def parse_percent(v: Any) -> float:
    """'5%', '0.5%', 5, 2.5 -> percent (0..100), at most two decimals."""
    if isinstance(v, bool):
        raise ValueError("must be a percentage like 5% or 0.5%")
    if isinstance(v, (int, float)):
        x = float(v)
    elif isinstance(v, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*%?\s*", v):
        x = float(v.strip().rstrip("%"))
    else:
        raise ValueError(f"must be a percentage like 5% or 0.5%, got {v!r}")
    if not 0 <= x <= 100:
        raise ValueError(f"must be between 0% and 100%, got {v!r}")
    if round(x * 100) != x * 100 and abs(round(x * 100) - x * 100) > 1e-6:
        raise ValueError(f"at most two decimals (steps of 0.01%), got {v!r}")
    return round(x, 2)


def parse_ms(v: Any) -> float:
    """'20ms', '1.5s', '500us', 20 (ms) -> milliseconds."""
    if isinstance(v, bool):
        raise ValueError("must be a duration like 20ms")
    if isinstance(v, (int, float)):
        x = float(v)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(us|ms|s)?\s*", str(v))
        if not m:
            raise ValueError(f"must be a duration like 20ms, 1s or 500us, got {v!r}")
        x = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, None: 1.0}[m.group(2)]
    if not 0 <= x <= 60000:
        raise ValueError(f"must be between 0 and 60s, got {v!r}")
    return x


def parse_size(v: Any) -> int:
    """'32kb', '1500b', '64k', 32000 -> bytes."""
    if isinstance(v, bool):
        raise ValueError("must be a size like 32kb")
    if isinstance(v, int):
        n = v
    else:
        m = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(b|bytes?)?\s*", str(v), re.I)
        if not m:
            raise ValueError(f"must be a size like 32kb or 1500 (bytes), got {v!r}")
        n = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[m.group(2).lower()]
    if not 1 <= n <= 2 ** 31:
        raise ValueError(f"must be between 1 byte and 2 GiB, got {v!r}")
    return n


def parse(data: Any) -> tuple[Impairment, list[tuple[str, str]]]:
    """A topology's ``impair`` mapping -> (Impairment, [(key, problem)])."""
    from ..base.units import parse_rate
    errs: list[tuple[str, str]] = []
    imp = Impairment()
    if not isinstance(data, dict):
        return imp, [("", "must be a mapping of " + ", ".join(KEYS))]
    for k, v in data.items():
        if k not in KEYS:
            errs.append((str(k), f"unknown key (known: {', '.join(KEYS)})"))
            continue
        try:
            if k in ("loss", "duplicate"):
                setattr(imp, k, parse_percent(v))
            elif k == "rate":
                imp.rate = parse_rate(v)
                if imp.rate and imp.rate < 8:
                    raise ValueError("must be at least 8 bit/s")
            elif k == "burst":
                imp.burst = parse_size(v)
            elif k == "minSize":
                imp.min_size = parse_size(v)
            elif k in ("delay", "jitter"):
                setattr(imp, k, parse_ms(v))
            elif v not in DIRECTIONS:
                raise ValueError(f"must be one of {', '.join(DIRECTIONS)}, got {v!r}")
            else:
                imp.direction = v
        except ValueError as e:
            errs.append((k, str(e)))
    if imp.burst and not imp.rate:
        errs.append(("burst", "a burst needs a rate"))
    if imp.min_size and not (imp.loss or imp.duplicate):
        errs.append(("minSize", "applies to loss and duplicate: give one of them"))
    if imp.jitter and not imp.delay:
        errs.append(("jitter", "jitter needs a delay"))
    if not errs and imp.empty():
        errs.append(("", "give at least one of loss, duplicate, rate, delay"))
    return imp, errs


def parse_words(words: list[str]) -> Impairment:
    """``loss 5% rate 1mbit`` or ``loss=5% rate=1mbit`` (the command line) -> Impairment."""
    data: dict[str, str] = {}
    i = 0
    while i < len(words):
        w = words[i]
        if "=" in w:
            k, _, v = w.partition("=")
            i += 1
        elif i + 1 < len(words):
            k, v = w, words[i + 1]
            i += 2
        else:
            raise ImpairError(f"{w!r} needs a value (e.g. loss 5%)")
        if k in data:
            raise ImpairError(f"{k} is given twice")
        data[k] = v
    imp, errs = parse(data)
    if errs:
        raise ImpairError("; ".join(f"{k}: {m}" if k else m for k, m in errs))
    return imp


# --------------------------------------------------------------------------- kernel probe

_netem_cache: dict[str, bool] = {}


def kernel_has_netem() -> bool:
    """Can this kernel make a netem qdisc? Tried for real, once, on the loopback of a
    throwaway network namespace (``unshare -n``: it dies with the command)."""
    if "netem" not in _netem_cache:
        p = subprocess.run(["unshare", "-n", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                           capture_output=True, text=True, timeout=30)
        _netem_cache["netem"] = p.returncode == 0
    return _netem_cache["netem"]


def netem_refusal(imp: Impairment, what: str = "") -> str:
    keys = [k for k in ("delay", "jitter") if getattr(imp, k)] or ["delay"]
    return (f"{what + ': ' if what else ''}{' and '.join(keys)} {'need' if len(keys) > 1 else 'needs'} the "
            f"kernel's netem qdisc (module {NETEM_MODULE}), which this kernel lacks; loss, duplicate and rate "
            "work without it")


# --------------------------------------------------------------------------- plan (pure)

@dataclass
class Part:
    """One kernel object an impairment consists of; enough to remove it again."""
    kind: str                  # nft | tbf | ifb | netem
    ns: str
    dev: str
    table: str = ""            # nft: table netdev <table>
    text: str = ""             # nft: the ruleset
    ifb: str = ""              # ifb: the IFB device (ingress qdisc of dev redirects to it)
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def ifb_name(ns: str, dev: str) -> str:
    return "nli" + hashlib.sha256(f"{ns}\0{dev}".encode()).hexdigest()[:12]


def _table(dev: str, hook: str) -> str:
    return f"{TABLE_PREFIX}{dev}-{'in' if hook == 'ingress' else 'out'}"


def _size_match(min_size: int) -> str:
    return f"meta length >= {min_size} " if min_size else ""


def _nft_loss(ns: str, dev: str, pct: float, min_size: int = 0) -> Part:
    t = _table(dev, "ingress")
    n = int(round(pct * SCALE / 100))
    text = (f"create table netdev {t}\n"
            f"add chain netdev {t} impair {{ type filter hook ingress device \"{dev}\" priority -500; }}\n"
            f"add rule netdev {t} impair {_size_match(min_size)}numgen random mod {SCALE} < {n} counter drop "
            f"comment \"netlab loss {pct:g}%\"\n")
    return Part("nft", ns, dev, table=t, text=text, params={"hook": "ingress", "loss": pct})


def _nft_dup(ns: str, dev: str, pct: float, min_size: int = 0) -> Part:
    t = _table(dev, "egress")
    n = int(round(pct * SCALE / 100))
    text = (f"create table netdev {t}\n"
            f"add chain netdev {t} impair {{ type filter hook egress device \"{dev}\" priority -500; }}\n"
            f"add rule netdev {t} impair meta mark {DUP_MARK:#x} accept\n"
            f"add rule netdev {t} impair {_size_match(min_size)}numgen random mod {SCALE} < {n} "
            f"meta mark set {DUP_MARK:#x} "
            f"counter dup to \"{dev}\" comment \"netlab duplicate {pct:g}%\"\n")
    return Part("nft", ns, dev, table=t, text=text, params={"hook": "egress", "duplicate": pct})


def default_burst(rate_bits: int) -> int:
    """Bytes of burst for a rate (the topology's default for shaping)."""
    from ..base.units import default_burst as bits
    return bits(rate_bits) // 8


def plan(imp: Impairment, ns: str, dev: str, peer: tuple[str, str] | None, *, netem: bool) -> list[Part]:
    """The parts that make ``imp`` on ``dev`` in ``ns`` (``peer``: the other end of its veth)."""
    if imp.needs_netem() and not netem:
        raise ImpairError(netem_refusal(imp, f"{dev} in {ns}"))
    egress = imp.direction == "egress"
    # the sending and the receiving end of the wire, for this direction
    send = (ns, dev) if egress else peer
    recv = peer if egress else (ns, dev)
    parts: list[Part] = []
    if imp.loss:
        if recv is None:
            raise ImpairError(f"{dev} in {ns} is not a veth: no receiving end to drop packets at")
        parts.append(_nft_loss(recv[0], recv[1], imp.loss, imp.min_size))
    if imp.duplicate:
        if send is None:
            raise ImpairError(f"{dev} in {ns} is not a veth: no sending end to duplicate packets at")
        parts.append(_nft_dup(send[0], send[1], imp.duplicate, imp.min_size))
    if imp.rate or imp.needs_netem():
        shaper = {}
        if imp.rate:
            shaper.update(rate=imp.rate, burst=imp.burst or default_burst(imp.rate))
        if egress:
            kind = "netem" if imp.needs_netem() else "tbf"
            parts.append(Part(kind, ns, dev, params=dict(shaper, delay=imp.delay, jitter=imp.jitter)
                              if kind == "netem" else shaper))
        else:
            ifb = ifb_name(ns, dev)
            kind = "netem" if imp.needs_netem() else "tbf"
            parts.append(Part("ifb", ns, dev, ifb=ifb, params={"shaper": kind}))
            parts.append(Part(kind, ns, ifb, params=dict(shaper, delay=imp.delay, jitter=imp.jitter)
                              if kind == "netem" else shaper))
    return parts


# --------------------------------------------------------------------------- apply / remove

def _nft_in(ns: str, text: str) -> subprocess.CompletedProcess:
    from ..base.namespaces import nft_in
    return nft_in(ns, text)


def _with_tc(ns: str, fn: Callable) -> Any:
    """fn(Tc) in a thread inside ``ns`` (the netlink socket binds to the thread's namespace)."""
    from plugins.net.netlink.rtnl import Rtnl
    from plugins.net.tc import Tc
    from ..base.namespaces import in_thread

    def go():
        with Rtnl() as nl:
            return fn(Tc(nl))
    return in_thread(ns, go, timeout=30)


def _index(t, dev: str) -> int:
    link = t.link(dev)
    if link is None:
        raise ImpairError(f"no interface {dev}")
    return link.index


def make(part: Part) -> None:
    """Create one part in the kernel (raises ImpairError saying what failed)."""
    if part.kind == "nft":
        p = _nft_in(part.ns, part.text)
        if p.returncode != 0:
            msg = p.stderr.strip().splitlines()[0] if p.stderr.strip() else "nft failed"
            if "File exists" in p.stderr:
                msg = f"{part.dev} in {part.ns} already has an impairment in this direction (table {part.table})"
            raise ImpairError(msg)
        return

    def tc(t):
        from plugins.net.tc import tbf_params, tick_in_usec
        idx = _index(t, part.dev)
        # never replace a qdisc someone else made (e.g. the bandwidth plugin's on a host veth)
        if part.kind == "ifb" and t.ingress_qdisc(idx) is not None:
            raise ImpairError(f"{part.dev} in {part.ns} already has an ingress qdisc (not netlab's impairment); "
                              "not replacing it")
        root = t.root_qdisc(idx) if part.kind != "ifb" else None
        if root is not None and root.kind not in FOREIGN_OK:
            raise ImpairError(f"{part.dev} in {part.ns} already has a {root.kind} root qdisc "
                              "(not netlab's impairment); not replacing it")
        if part.kind == "ifb":
            ifb = t.create_ifb(part.ifb, t.link(index=idx).mtu, f"netlab impair ingress of {part.dev}")
            t.add_ingress(idx)
            t.redirect_all(idx, ifb.index)
        elif part.kind == "tbf":
            t.set_tbf(idx, tbf_params(part.params["rate"], part.params["burst"] * 8, tick_in_usec()))
        elif part.kind == "netem":
            kw = {"delay": int(part.params.get("delay", 0) * 1000), "jitter": int(part.params.get("jitter", 0) * 1000)}
            if part.params.get("rate"):
                kw["rate"] = part.params["rate"] // 8
            from plugins.net.link import open_iproute      # netem: still through pyroute2
            with open_iproute() as ipr:
                ipr.tc("replace", kind="netem", index=idx, handle=0x10000, **kw)
        else:
            raise ImpairError(f"unknown part kind {part.kind}")
    try:
        _with_tc(part.ns, tc)
    except ImpairError:
        raise
    except Exception as e:  # noqa: BLE001 - netlink errors, said in one line
        raise ImpairError(f"{part.kind} on {part.dev} in {part.ns}: {e}") from None


def unmake(part: dict) -> None:
    """Remove one recorded part; what is already gone (or whose namespace is) is fine."""
    from ..base import namespaces as nsutil
    ns = part["ns"]
    if not nsutil.exists(ns):
        return
    if part["kind"] == "nft":
        p = _nft_in(ns, f"delete table netdev {part['table']}\n")
        if p.returncode != 0 and "No such file" not in p.stderr:
            raise ImpairError(f"nft delete table netdev {part['table']} in {ns}: {p.stderr.strip()}")
        return

    def tc(t):
        link = t.link(part["dev"])
        if part["kind"] == "ifb":
            if link is not None:
                t.del_ingress(link.index)
            t.delete_link(part["ifb"])
        elif link is not None:
            t.del_root(link.index)
    _with_tc(ns, tc)


# --------------------------------------------------------------------------- lab side

@dataclass
class Where:
    target: str                # as the user named it (node1, web, underlay:node2)
    ns: str
    dev: str


def resolve(plan_, target: str) -> Where:
    """TARGET[:IFACE] of a lab -> namespace and interface. Pods default to their
    interface, nodes/ext/dns to their uplink; ``underlay:NAME`` is the switch port
    that faces node/ext/dns NAME (or a port name, e.g. underlay:n0)."""
    from ..base.names import UPLINK, switch_ns
    name, _, iface = target.partition(":")
    topo = plan_.topology
    if name in ("underlay", "switch"):
        ports = switch_ports(plan_)
        if not iface:
            raise ImpairError("underlay needs a port: underlay:NODE (the port facing it) or underlay:PORT")
        port = ports.get(iface, iface if iface in ports.values() else None)
        if port is None:
            raise ImpairError(f"no switch port {iface!r} (have: {', '.join(f'{k} ({v})' for k, v in ports.items())})")
        return Where(f"underlay:{iface}", switch_ns(plan_.lab), port)
    if name not in plan_.endpoints:
        raise ImpairError(f"unknown target {name!r}: a pod, node, 'ext', 'dns' or underlay:NODE "
                          f"(have: {', '.join(plan_.endpoints)})")
    ep = plan_.endpoints[name]
    if not iface:
        if name in topo.pods:
            owner = topo.pods[topo.pod_netns_owner(name)]
            if owner.mode not in ("bridge", "overlay"):
                raise ImpairError(f"pod {name} (mode {owner.mode}) has no interface of its own: give TARGET:IFACE")
            iface = owner.ifname
        else:
            iface = UPLINK
    return Where(target, ep.netns, iface)


def switch_ports(plan_) -> dict[str, str]:
    """node/ext/dns name -> its switch port (from the plan's uplink steps)."""
    from ..base.names import dns_ns, ext_ns, node_ns
    names = {node_ns(plan_.lab, n): n for n in plan_.topology.nodes}
    names[ext_ns(plan_.lab)] = "ext"
    names[dns_ns(plan_.lab)] = "dns"
    return {names.get(s.params["ns"], s.params["ns"]): s.params["port"] for s in plan_.steps if s.kind == "uplink"}


def peer_of(ns: str, dev: str) -> tuple[str, str] | None:
    """The other end of a veth (namespace name, interface), from the kernel."""
    import json
    p = subprocess.run(["ip", "-n", ns, "-j", "-d", "link", "show", "dev", dev], capture_output=True, text=True,
                       timeout=30)
    if p.returncode != 0:
        raise ImpairError(f"no interface {dev} in {ns}")
    info = json.loads(p.stdout)[0]
    if (info.get("linkinfo") or {}).get("info_kind") != "veth" or "link_netnsid" not in info:
        return None
    nsid = info["link_netnsid"]
    ids = subprocess.run(["ip", "-n", ns, "-j", "netns", "list-id"], capture_output=True, text=True, timeout=30)
    other = next((x.get("name") for x in json.loads(ids.stdout or "[]") if x.get("nsid") == nsid), None)
    if not other:
        return None
    peer_index = info.get("link_index")
    q = subprocess.run(["ip", "-n", other, "-j", "link", "show"], capture_output=True, text=True, timeout=30)
    for l in json.loads(q.stdout or "[]"):
        if l.get("ifindex") == peer_index:
            return other, l["ifname"]
    return None


def recorded(st, where: Where | None = None) -> list[dict]:
    return [r for r in st.find("impair") if not r.get("removed")
            and (where is None or (r["ns"] == where.ns and r["dev"] == where.dev))]


def set_impairment(st, where: Where, imp: Impairment, *, record: Callable[..., dict] | None = None,
                   update: Callable[..., None] | None = None, netem: bool | None = None) -> dict:
    """Replace the impairment of one interface. The new one is planned first (a plan
    error changes nothing); then the old one (recorded) goes, and the new one is
    recorded part by part *before* each part is made; a failure removes the new parts
    (and leaves the interface without impairment)."""
    record = record or st.record
    update = update or st.update
    parts = plan(imp, where.ns, where.dev, peer_of(where.ns, where.dev),
                 netem=kernel_has_netem() if netem is None and imp.needs_netem() else bool(netem))
    clear(st, where, update=update)
    res = record("impair", target=where.target, ns=where.ns, dev=where.dev, spec=imp.to_dict(), parts=[])
    try:
        for p in parts:
            update(res, parts=res["parts"] + [p.to_dict()])
            try:
                make(p)
            except ImpairError:
                if p.kind == "nft" or "not replacing" in str(sys.exc_info()[1]):
                    # an nft transaction that failed made nothing, and a refused qdisc was
                    # left alone: undoing them would remove what someone else made
                    update(res, parts=res["parts"][:-1])
                raise
    except BaseException:
        remove(res)
        update(res, removed=True)
        raise
    return res


def remove(res: dict) -> list[str]:
    """Undo the recorded parts of one impairment, newest first; returns errors."""
    errors = []
    for part in reversed(res.get("parts", [])):
        try:
            unmake(part)
        except Exception as e:  # noqa: BLE001 - keep going, report all
            errors.append(str(e))
    return errors


def clear(st, where: Where | None = None, *, update: Callable[..., None] | None = None) -> int:
    update = update or st.update
    n = 0
    for r in recorded(st, where):
        errs = remove(r)
        if errs:
            raise ImpairError("; ".join(errs))
        update(r, removed=True)
        n += 1
    return n


def topology_impairments(topo, plan_) -> list[tuple[Where, Impairment]]:
    """Every ``impair`` key of a topology, as (where, impairment)."""
    out = []
    for n in topo.nodes.values():
        if getattr(n, "impair", None):
            out.append((resolve(plan_, n.name), Impairment.from_dict(n.impair)))
    for p in topo.pods.values():
        if getattr(p, "impair", None):
            out.append((resolve(plan_, p.name), Impairment.from_dict(p.impair)))
    for name, spec in (getattr(topo.underlay, "impair", None) or {}).items():
        out.append((resolve(plan_, f"underlay:{name}"), Impairment.from_dict(spec)))
    return out


def preflight(topo) -> str | None:
    """Refuse a topology whose impairments this kernel cannot make (before anything is built)."""
    need = [w for w in _all_specs(topo) if Impairment.from_dict(w[1]).needs_netem()]
    if need and not kernel_has_netem():
        where, spec = need[0]
        return netem_refusal(Impairment.from_dict(spec), where)
    return None


def _all_specs(topo) -> list[tuple[str, dict]]:
    out = [(f"nodes.{n.name}.impair", n.impair) for n in topo.nodes.values() if getattr(n, "impair", None)]
    out += [(f"pods.{p.name}.impair", p.impair) for p in topo.pods.values() if getattr(p, "impair", None)]
    out += [(f"underlay.impair.{k}", v) for k, v in (getattr(topo.underlay, "impair", None) or {}).items()]
    return out


def apply_topology(plan_, st, *, record, update, progress=print) -> int:
    """Make the topology's impairments (after the build); returns how many."""
    items = topology_impairments(plan_.topology, plan_)
    for where, imp in items:
        set_impairment(st, where, imp, record=record, update=update)
        progress(f"      impair {where.target} ({where.dev} in {where.ns}): {imp.describe()}")
    return len(items)


def kernel_view(res: dict) -> list[str]:
    """What the kernel has for each recorded part: the nft rule with its counter, the qdisc."""
    from ..base.namespaces import run_in
    out = []
    for part in res.get("parts", []):
        where = f"{part['dev']} in {part['ns']}"
        if part["kind"] == "nft":
            p = run_in(part["ns"], ["nft", "list", "table", "netdev", part["table"]])
            rules = [ln.strip() for ln in p.stdout.splitlines() if "numgen" in ln]
            out += [f"{where} ({part['params']['hook']}): {r}" for r in rules] or [f"{where}: table {part['table']} MISSING"]
        else:
            dev = part["dev"]
            what = ["ingress"] if part["kind"] == "ifb" else []
            q = subprocess.run(["tc", "-n", part["ns"], "qdisc", "show", "dev", dev, *what], capture_output=True,
                               text=True, timeout=30)
            lines = [ln.strip() for ln in q.stdout.splitlines() if ln.strip() and "noqueue" not in ln]
            if part["kind"] == "ifb":
                lines = [f"{ln} (redirected to {part['ifb']})" for ln in lines]
            out += [f"{dev} in {part['ns']}: {ln}" for ln in lines] or [f"{dev} in {part['ns']}: MISSING"]
    return out
