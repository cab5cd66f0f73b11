"""The transcripts in the docs are generated from real runs (docs/gen_transcripts.py,
`make docs`). Their output depends on timing; their commands must stay valid:
every netlab command parses with today's CLI, every file it names exists and
validates, every target and evidence file it names exists in its lab. No root."""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import shlex
import shutil
import sys
from types import SimpleNamespace

import pytest

from netlab.cli import main as cli
from netlab.lab import topology as T
from netlab.checks.common import Context
from netlab.lab.plan import make_plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gen():
    spec = importlib.util.spec_from_file_location("gen_transcripts", os.path.join(REPO, "docs", "gen_transcripts.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


GEN = _gen()
SHIPPED = {T.load(p).name: p for p in glob.glob(os.path.join(REPO, "topologies", "*.yaml"))
           + glob.glob(os.path.join(REPO, "topologies", "scenarios", "*.yaml"))}
BLOCKS = [b for f in GEN.DOCS for b in GEN.parse(os.path.join(REPO, f))[1]]


def test_the_docs_have_transcripts():
    assert len(BLOCKS) >= 5
    for b in BLOCKS:
        assert b.commands, f"{b.path}: a transcript block without a $ command"
        assert b.labs and all(T.NAME_RE.match(lab) for lab in b.labs), (b.path, b.labs)


def _evidence_names(topo) -> set[str]:
    ctx = SimpleNamespace(evidence_dir="")
    names = {os.path.basename(Context.pcap(ctx, c)) for c in topo.checks}
    names |= {os.path.basename(Context.pcap(ctx, c, "-arp")) for c in topo.checks
              if c.type == "service" and c.params.get("via") == "loadBalancer"}
    from netlab.features import loadbalancer
    sc = topo.scenario
    if sc and any(kind == "link-down" for kind, _ in sc.faults):     # the takeover capture of the fault
        names.add(loadbalancer.FAILOVER_PCAP)
    return names


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{os.path.basename(b.path)}:{b.commands[0][:40]}")
def test_transcript_commands_are_still_valid(block):
    parser = cli.build_parser()
    made: list[str] = []                         # files an earlier command of the block writes
    for cmd in block.commands:
        made += re.findall(r"> (/tmp/\S+)", cmd)
        cmd = cmd.split("&")[-1] if cmd.startswith("(") else cmd   # (traffic in the background) & the command
        argv = shlex.split(cmd.split("|")[0].split(">")[0])
        if argv[0] != "netlab":
            assert shutil.which(argv[0]), f"{cmd}: {argv[0]} is not installed"
        else:
            try:
                args = parser.parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"`{cmd}` no longer parses with netlab's CLI")
            f = getattr(args, "file", None)
            if f and f not in made:
                assert os.path.isfile(os.path.join(REPO, f)), cmd
                T.load(os.path.join(REPO, f))
            lab = getattr(args, "lab", None) or block.labs[0]
            if args.command == "exec" and lab in SHIPPED:
                plan = make_plan(T.load(SHIPPED[lab]), "/nonexistent")
                assert args.target in plan.endpoints or args.target == "underlay", cmd
        for a in argv:
            if "/evidence/" in a:                 # a check's pcap: that check must still exist
                lab = a.split("/netlab/")[1].split("/")[0]
                assert os.path.basename(a) in _evidence_names(T.load(SHIPPED[lab])), cmd


def test_regenerate_rewrites_only_the_marked_blocks(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text("intro\n```\n$ echo untouched\nold\n```\n"
                   "<!-- transcript -->\n```\n$ echo hello\nstale output\n$ printf 'a\\nb\\n'\n```\n<!-- /transcript -->\n"
                   "tail\n")
    GEN.regenerate([str(doc)])
    assert doc.read_text() == ("intro\n```\n$ echo untouched\nold\n```\n"
                               "<!-- transcript -->\n```\n$ echo hello\nhello\n$ printf 'a\\nb\\n'\na\nb\n```\n"
                               "<!-- /transcript -->\ntail\n")
    doc.write_text("<!-- transcript -->\n$ echo no fence\n<!-- /transcript -->\n")
    with pytest.raises(SystemExit, match="well-formed"):
        GEN.parse(str(doc))
