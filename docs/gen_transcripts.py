#!/usr/bin/env python3
"""Regenerate the command transcripts in the docs from real runs (`make docs`).

A transcript is a fenced block between markers in a Markdown file:

    <!-- transcript lab=default -->
    ```
    $ netlab up topologies/default.yaml
    (output, rewritten by this script)
    $ netlab exec --lab default node1 -- ip route
    (output)
    ```
    <!-- /transcript -->

Every ``$ `` line is run (with ``bash -c``, from the repository root, with
this venv's ``netlab`` first on PATH) in document order, and the lines after
it, up to the next command or the end of the block, are replaced by what it
printed (stdout and stderr, as a terminal shows them; ``keep=H,T`` shows a
long output as its first H and last T lines and says how many it left out).
``lab=NAME[,NAME]``
names the labs the block's commands bring up or use: they must not be up
when the script starts (it refuses, so a lab of yours is never touched) and
are removed with ``netlab down`` when the file is done, whatever happened, so
each file starts from no lab. Needs root, like the labs.

    sudo .venv/bin/python docs/gen_transcripts.py [FILE.md ...]   (default: DOCS)
    .venv/bin/python docs/gen_transcripts.py --check [FILE.md ...]   (no root: parse only)

``--check`` parses the blocks and prints their commands without running
anything; tests/test_docs_transcripts.py checks that every command is still
valid (verbs, options, files), not its timing-dependent output.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("docs/netlab/tutorial.md", "docs/debugging.md", "docs/netlab/ipv6.md")
BLOCK_RE = re.compile(r"<!-- transcript(?P<attrs>[^>]*?)-->\n```[a-z]*\n(?P<body>.*?)```\n<!-- /transcript -->",
                      re.S)
MAX_OUTPUT_LINES = 400


@dataclass
class Block:
    path: str
    start: int                     # offset of the body in the file
    end: int
    labs: list[str]
    commands: list[str] = field(default_factory=list)
    keep: tuple[int, int] | None = None       # keep=H,T: long outputs shown as H first and T last lines


def parse(path: str) -> tuple[str, list[Block]]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    blocks = []
    for m in BLOCK_RE.finditer(text):
        attrs = dict(re.findall(r"(\w+)=(\S+)", m.group("attrs")))
        labs = [x for x in attrs.get("lab", "").split(",") if x]
        cmds = [ln[2:] for ln in m.group("body").splitlines() if ln.startswith("$ ")]
        keep = None
        if "keep" in attrs:
            h, _, t = attrs["keep"].partition(",")
            keep = (int(h), int(t or 0))
        blocks.append(Block(path, m.start("body"), m.end("body"), labs, cmds, keep))
    opened = text.count("<!-- transcript")
    if opened != len(blocks):
        raise SystemExit(f"{path}: {opened} transcript markers but {len(blocks)} well-formed blocks "
                         "(marker, fenced block, closing marker)")
    return text, blocks


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = os.path.dirname(sys.executable) + os.pathsep + e.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    e["COLUMNS"] = "200"
    return e


def run(cmd: str, keep: tuple[int, int] | None = None) -> str:
    p = subprocess.run(["bash", "-c", cmd], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=600)
    lines = [ln.rstrip() for ln in p.stdout.rstrip("\n").splitlines()]
    if len(lines) > MAX_OUTPUT_LINES:
        raise SystemExit(f"`{cmd}` printed {len(lines)} lines: narrow it in the doc")
    return "\n".join(elide(lines, keep))


def elide(lines: list[str], keep: tuple[int, int] | None) -> list[str]:
    """``keep=(H, T)``: the first H and last T lines, and how many are left out between."""
    if keep is None or len(lines) <= keep[0] + keep[1] + 1:
        return lines
    head, tail = keep
    return lines[:head] + [f"[... {len(lines) - head - tail} lines ...]"] + (lines[-tail:] if tail else [])


def lab_is_up(name: str) -> bool:
    p = subprocess.run([sys.executable, "-m", "netlab", "status", name, "--json"], cwd=REPO, env=env(),
                       capture_output=True, text=True)
    return p.returncode != 1 or '"labs": []' not in p.stdout


def regenerate(paths: list[str]) -> None:
    parsed = [(p, *parse(p)) for p in paths]
    labs = sorted({lab for _, _, blocks in parsed for b in blocks for lab in b.labs})
    busy = [lab for lab in labs if lab_is_up(lab)]
    if busy:
        raise SystemExit(f"lab(s) {', '.join(busy)} already up: bring them down first (this script "
                         "builds and removes its own)")
    for path, text, blocks in parsed:
        # each file starts with none of its labs up and leaves none behind
        file_labs = sorted({lab for b in blocks for lab in b.labs})
        try:
            out, pos = [], 0
            for b in blocks:
                body = []
                for cmd in b.commands:
                    print(f"{os.path.relpath(path, REPO)}: $ {cmd}", file=sys.stderr, flush=True)
                    body.append(f"$ {cmd}")
                    result = run(cmd, b.keep)
                    if result:
                        body.append(result)
                out += [text[pos:b.start], "\n".join(body) + "\n"]
                pos = b.end
            out.append(text[pos:])
            new = "".join(out)
            if new != text:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
        finally:
            for lab in file_labs:
                subprocess.run([sys.executable, "-m", "netlab", "down", lab], cwd=REPO, env=env(),
                               capture_output=True, text=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help=f"Markdown files (default: {' '.join(DOCS)})")
    ap.add_argument("--check", action="store_true", help="parse and list the commands; run nothing")
    a = ap.parse_args(argv)
    paths = [os.path.join(REPO, f) if not os.path.isabs(f) else f for f in (a.files or DOCS)]
    if a.check:
        for p in paths:
            for b in parse(p)[1]:
                for c in b.commands:
                    print(f"{os.path.relpath(p, REPO)}: $ {c}")
        return 0
    if os.geteuid() != 0:
        print("gen_transcripts: needs root (it builds labs); --check runs nothing", file=sys.stderr)
        return 2
    regenerate(paths)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
