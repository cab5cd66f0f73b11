"""`netlab completion bash|zsh`: a completion script generated from the
argparse parser itself, so it cannot drift from the verbs and options.

The parser is walked once into a table {command path: (sub-commands,
options, {option: choices or None when it takes a free value})}; the script
embeds that table and a small shell function that walks the words typed so
far. zsh uses the same function through its ``bashcompinit`` layer.
"""
from __future__ import annotations

import argparse


def walk(parser: argparse.ArgumentParser, path: str = "") -> dict[str, dict]:
    """{path: {"subs": [...], "args": [...], "opts": [...], "values": {opt: [choices] | []}}}
    (args: the choices of positional arguments, e.g. ``completion bash|zsh``)."""
    out: dict[str, dict] = {}
    subs: list[str] = []
    args: list[str] = []
    opts: list[str] = []
    values: dict[str, list[str]] = {}
    for act in parser._actions:                       # argparse has no public walker
        if isinstance(act, argparse._SubParsersAction):
            for name, sp in act.choices.items():
                subs.append(name)
                out.update(walk(sp, f"{path} {name}".strip()))
        elif act.option_strings:
            opts += act.option_strings
            if act.nargs != 0:                        # takes a value
                for o in act.option_strings:
                    values[o] = [str(c) for c in act.choices] if act.choices else []
        elif act.choices:
            args += [str(c) for c in act.choices]
    out[path] = {"subs": subs, "args": args, "opts": opts, "values": values}
    return out


def _bash_table(tree: dict[str, dict]) -> str:
    lines = []
    for path in sorted(tree):
        t = tree[path]
        key = ("netlab " + path).strip().replace(" ", "/")   # bash forbids an empty key
        lines.append(f"    _netlab_subs[{key!r}]={' '.join(t['subs'])!r}")
        lines.append(f"    _netlab_opts[{key!r}]={' '.join(t['opts'])!r}")
        if t["args"]:
            lines.append(f"    _netlab_args[{key!r}]={' '.join(t['args'])!r}")
        for o, ch in sorted(t["values"].items()):
            lines.append(f"    _netlab_vals[{(key + '|' + o)!r}]={(' '.join(ch) if ch else '@file')!r}")
    return "\n".join(lines)


BASH = r'''# netlab completion for bash, generated from netlab's argument parser.
# Load it with:  source <(netlab completion bash)
_netlab_complete() {
    local -A _netlab_subs _netlab_opts _netlab_vals _netlab_args
%(table)s
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
    local path=netlab i w
    for (( i = 1; i < COMP_CWORD; i++ )); do
        w=${COMP_WORDS[i]}
        [[ $w == -- ]] && { COMPREPLY=(); return; }
        if [[ $w != -* && " ${_netlab_subs[$path]} " == *" $w "* ]]; then
            path=$path/$w
        fi
    done
    local v=${_netlab_vals[$path|$prev]-}
    if [[ -n $v ]]; then
        if [[ $v == @file ]]; then
            COMPREPLY=($(compgen -f -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$v" -- "$cur"))
        fi
        return
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "${_netlab_opts[$path]}" -- "$cur"))
    elif [[ -n ${_netlab_subs[$path]} ]]; then
        COMPREPLY=($(compgen -W "${_netlab_subs[$path]}" -- "$cur"))
    elif [[ -n ${_netlab_args[$path]-} ]]; then
        COMPREPLY=($(compgen -W "${_netlab_args[$path]}" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}
complete -F _netlab_complete netlab
'''

ZSH_HEAD = '''# netlab completion for zsh (through bashcompinit), generated from netlab's argument parser.
# Load it with:  source <(netlab completion zsh)
autoload -U +X bashcompinit && bashcompinit
'''


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    body = BASH % {"table": _bash_table(walk(parser))}
    if shell == "bash":
        return body
    if shell == "zsh":
        return ZSH_HEAD + body.split("\n", 2)[2]
    raise ValueError(f"no completion for shell {shell!r} (bash, zsh)")
