"""The netlab CLI surface: --version, completion generated from the parser,
--json on every verb that reports, one exit-status table, and no silent
substitute plugins. No root needed: nothing here builds a lab."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from netlab.lab import build
from netlab.cli import main as cli, exitcodes
from netlab.cli.completion import script, walk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def netlab(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netlab", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60, env=env)


def test_version():
    p = netlab("--version")
    assert p.returncode == 0
    assert re.match(r"^netlab \(cnilab\) \d+\.\d+\.\d+; CNI spec 0\.1\.0 to 1\.1\.0$", p.stdout.strip()), p.stdout


def test_completion_covers_every_verb_and_option():
    parser = cli.build_parser()
    tree = walk(parser)
    assert {"up", "down", "validate", "cni", "capture", "completion"} <= set(tree[""]["subs"])
    assert "gc" in tree["cni"]["subs"] and "--json" in tree["cni gc"]["opts"]
    assert tree["up"]["values"]["--plugins"] == ["ours", "reference"]
    assert tree["completion"]["args"] == ["bash", "zsh"]
    for shell in ("bash", "zsh"):
        text = script(parser, shell)
        assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
        assert "complete -F _netlab_complete netlab" in text
    assert script(parser, "zsh").startswith("# netlab completion for zsh")


def _complete(words: list[str]) -> list[str]:
    text = script(cli.build_parser(), "bash")
    words_sh = " ".join(f"'{w}'" for w in words)
    prog = (text + f"\nCOMP_WORDS=({words_sh}); COMP_CWORD={len(words) - 1}; _netlab_complete; "
            'printf "%s\\n" "${COMPREPLY[@]}"\n')
    p = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_completion_script_completes():
    assert _complete(["netlab", "cni", "g"]) == ["gc"]
    assert _complete(["netlab", "up", "--plugins", ""]) == ["ours", "reference"]
    assert "--json" in _complete(["netlab", "cni", "status", "--j"])
    assert _complete(["netlab", "completion", "z"]) == ["zsh"]
    assert _complete(["netlab", "-q", "cni", "--conf-dir", "x", "ad"]) == ["add"]


def test_the_exit_status_table_is_the_one_documented_and_used():
    doc = open(os.path.join(REPO, "docs", "netlab", "commands.md"), encoding="utf-8").read()
    table = re.search(r"<!-- exit-codes -->(.*?)<!-- /exit-codes -->", doc, re.S).group(1)
    rows = dict(re.findall(r"^\| (\d+) \| `(\w+)` \|", table, re.M))
    assert rows == {str(n): name for n, name in exitcodes.TABLE}
    for n, name in exitcodes.TABLE:
        assert getattr(exitcodes, name) == n
    # verbs return the names, never bare numbers
    for f in ("main.py", "cmd_lab.py", "cmd_cni.py", "cmd_debug.py", "cmd_agent.py", "cmd_impair.py"):
        src = open(os.path.join(REPO, "netlab", "cli", f), encoding="utf-8").read()
        assert not re.findall(r"\breturn \d+\b", src), f


def test_help_has_no_developer_notes():
    parser = cli.build_parser()
    tree_paths = [p for p in walk(parser) if p]
    texts = [parser.format_help()]
    for path in tree_paths:
        p = netlab(*path.split(), "--help")
        assert p.returncode == 0, path
        texts.append(p.stdout)
    for t in texts:
        assert not re.search(r"\bissue \d|not implemented|not written|TODO|XXX|\.py\b|``", t), t


def test_validate_json(tmp_path):
    p = netlab("validate", "topologies/bridge.yaml", "--json")
    assert p.returncode == exitcodes.OK, p.stderr
    out = json.loads(p.stdout)
    assert out["ok"] and out["errors"] == [] and out["lab"] == "bridge" and out["plan"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nnodes: {n1: {mtu: 1}}\n")
    p = netlab("validate", str(bad), "--json")
    assert p.returncode == exitcodes.USAGE
    out = json.loads(p.stdout)
    assert not out["ok"] and out["errors"] and ":2: nodes.n1.mtu:" in out["errors"][0]


def test_down_json_when_nothing_is_up(tmp_path):
    p = netlab("down", "--lab-dir", str(tmp_path / "none"), "--json")
    assert p.returncode == exitcodes.OK
    out = json.loads(p.stdout)
    assert out["ok"] and out["removed"] == 0 and out["errors"] == []


def test_cni_gc_and_status_json(tmp_path):
    conf = tmp_path / "n.conflist"
    conf.write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]}))
    common = ["--cache-dir", str(tmp_path / "cache"), "--cni-path", str(tmp_path)]
    p = netlab("cni", "gc", str(conf), *common, "--json")
    assert p.returncode == exitcodes.OK, p.stderr
    assert json.loads(p.stdout) == {"network": str(conf), "ok": True, "deleted": []}
    p = netlab("cni", "status", str(conf), *common, "--json")
    assert p.returncode == exitcodes.OK, p.stderr
    out = json.loads(p.stdout)
    assert out["ok"] and out["plugins"] == ["bridge"] and out["asked"] is False   # no STATUS before 1.1.0
    p = netlab("cni", "status", "absent-net", "--conf-dir", str(tmp_path), *common, "--json")
    assert p.returncode == exitcodes.FAILED
    out = json.loads(p.stdout)
    assert out["ok"] is False and "absent-net" in out["error"]["msg"]


# ---- no silent substitutes -------------------------------------------------------------

def test_plugin_choice_is_ours_or_reference_only():
    p = netlab("up", "topologies/bridge.yaml", "--plugins", "auto", "--dry-run")
    assert p.returncode == exitcodes.USAGE and "invalid choice: 'auto'" in p.stderr


def test_reference_plugins_are_refused_up_front_for_an_overlay_lab():
    p = netlab("validate", "topologies/default.yaml", "--plugins", "reference")
    assert p.returncode == exitcodes.USAGE
    assert ("topology default uses network type overlay (network overlay), which needs our vxlan plugin; "
            "the reference plugins (/usr/lib/cni) have none") in p.stderr
    p = netlab("up", "topologies/default.yaml", "--plugins", "reference", "--dry-run")
    assert p.returncode == exitcodes.USAGE and "needs our vxlan plugin" in p.stderr
    assert netlab("validate", "topologies/bridge.yaml", "--plugins", "reference").returncode == exitcodes.OK


def test_ours_means_only_ours(tmp_path):
    _, which = build.prepare_plugins(str(tmp_path), {"bridge", "vxlan", "portmap"}, "ours")
    assert set(which.values()) == {"ours"}
    for t in which:
        assert not os.path.islink(os.path.join(tmp_path, "bin", t))
    with pytest.raises(build.BuildError, match="not one of our plugins"):
        build.prepare_plugins(str(tmp_path), {"macvlan"}, "ours")
    with pytest.raises(build.BuildError, match="--plugins must be one of"):
        build.prepare_plugins(str(tmp_path), {"bridge"}, "auto")
