"""Where `netlab capture` puts frames: decoded lines, a pcap, or a pcapng.

``sink_for(write, several=...)``: no ``-w`` prints one decoded line per
frame; ``-w FILE`` writes a pcap (one target) or pcapng (several targets, or a
``.pcapng`` name: one interface per target and interface, ``node1/eth0``);
``-w -`` streams the same to stdout, flushed per batch, for
``| tcpdump -r -`` or ``| wireshark -k -i -``.
"""
from __future__ import annotations

import sys
from typing import BinaryIO, Callable

from . import pcapng
from ..base.capture import pcap_header, pcap_record


class _Sink:
    kind = ""
    broken = False

    def add(self, target: str, iface: str, direction: str, ts: float, frame: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LineSink(_Sink):
    kind = "text"

    def __init__(self, line: Callable[..., str], several: bool, verbose: bool) -> None:
        self.line, self.several, self.verbose = line, several, verbose

    def add(self, target, iface, direction, ts, frame) -> None:
        name = f"{target}/{iface}" if self.several else iface
        print(self.line(ts, frame, name, direction, self.verbose), flush=True)


class _FileSink(_Sink):
    def __init__(self, out: BinaryIO, own: bool) -> None:
        self.out, self.own = out, own

    def close(self) -> None:
        self.out.flush()
        if self.own:
            self.out.close()


class PcapSink(_FileSink):
    kind = "pcap"

    def __init__(self, out: BinaryIO, own: bool) -> None:
        super().__init__(out, own)
        out.write(pcap_header())
        out.flush()

    def add(self, target, iface, direction, ts, frame) -> None:
        self.out.write(pcap_record(ts, frame))
        self.out.flush()


class PcapNgSink(_FileSink):
    kind = "pcapng"

    def __init__(self, out: BinaryIO, own: bool) -> None:
        super().__init__(out, own)
        self.w = pcapng.Writer(out, comment="netlab capture")
        out.flush()

    def add(self, target, iface, direction, ts, frame) -> None:
        self.w.write(f"{target}/{iface}", ts, frame)
        self.out.flush()


def sink_for(write: str | None, *, several: bool, verbose: bool = False,
             line: Callable[..., str] | None = None) -> _Sink:
    if write is None:
        assert line is not None
        return LineSink(line, several, verbose)
    own = write != "-"
    out = open(write, "wb") if own else sys.stdout.buffer
    ng = several or write.endswith(".pcapng")
    return PcapNgSink(out, own) if ng else PcapSink(out, own)
