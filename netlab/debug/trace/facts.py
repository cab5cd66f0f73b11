"""Everything the explanation of one trace may consult, in one place.

Owns ``Facts``: the lab (state and inventory), the probe and where it was
sent from and to, what was recorded (captures, counters before and after,
nft verdicts, kernel drops), the correlated path, the counter moves, and the
``TraceResult`` the explanation writes its verdict, causes and evidence into.
Built once by the orchestration after the correlation; the explaining
modules read it and add to ``res``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..graph import Inventory
from .capture import Recording
from .correlate import Path, ns_label
from .counters import counter_lines, deltas
from .probe import Probe
from .result import TraceResult


@dataclass
class Facts:
    st: object                 # the lab's state (netlab.base.state.State), or None
    inv: Inventory
    probe: Probe
    res: TraceResult
    src_ns: str
    dst: str                   # the probe's destination address
    dst_ns: str = ""           # the namespace of the named destination ("" for a bare address)
    rec: Recording = field(default_factory=Recording)
    path: Path = field(default_factory=Path)
    nftrace: bool = True
    drop_reasons: bool = True
    moved: dict[str, dict] = field(default_factory=dict)   # counters.deltas(before, after)

    @classmethod
    def of(cls, **kw) -> "Facts":
        f = cls(**kw)
        f.moved = deltas(f.rec.before, f.rec.after)
        return f

    @property
    def rules(self) -> dict[str, list[dict]]:
        """ns -> the nft rules the probe and its answer met, with verdicts."""
        return self.rec.rules

    def label(self, ns: str) -> str:
        return ns_label(self.inv, ns)

    def counter_lines(self, ns: str) -> list[str]:
        return counter_lines(self.label, ns, self.moved)

    def dropping_rules(self, ns: str) -> list[dict]:
        """The rules of ``ns`` the probe met whose verdict is drop or reject."""
        return [d for d in self.rules.get(ns, []) if d["verdict"] and d["verdict"].split()[0] in ("drop", "reject")]
