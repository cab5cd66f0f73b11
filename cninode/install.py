"""`netlab cni install DIR`: write our plugin executables into a CNI bin dir.

Each executable is a few lines of Python bound to this project's interpreter
by absolute path (a container runtime execs it with a minimal environment: no
PATH, any working directory) that calls ``cninode.launcher.main(name)``.

Start-up: the shebang is ``python -IS`` (isolated: no PYTHON* variables, no
user site; no ``site``: no scan of site-packages and its .pth files, which
costs ~14 ms per exec here because of the editable-install finder). The
script puts the code root and the interpreter's site-packages on sys.path
itself. ``install`` proves each file works (a VERSION call with an empty
environment from ``/``) and falls back to ``-I`` (with site) if ``-IS`` does
not; benchmarks/bench_version.py measures both.

Writing is atomic and verified: each executable is written aside (a temp
file in DIR), the temp file answers VERSION, and only then is it renamed over
the old one; a file that fails verification leaves the old one untouched.
Idempotent; a file that is not one of our launchers is not replaced unless
``force``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

from plugins.core.fsutil import make_dirs, write_atomic


PLUGINS = ("bridge", "host-local", "portmap", "bandwidth", "vxlan", "loopback", "firewall",
           "tuning", "dhcp")
MARKER = "# cnilab CNI plugin launcher"
MODES = ("-IS", "-I")


def code_root() -> str:
    """The directory holding the ``plugins`` package (the project, for an editable install)."""
    import plugins
    return os.path.dirname(os.path.dirname(os.path.abspath(plugins.__file__)))


def site_dirs() -> list[str]:
    """This interpreter's site-packages (pyroute2, nftables, ...), in sys.path order."""
    out: list[str] = []
    for key in ("purelib", "platlib"):
        d = sysconfig.get_paths()[key]
        if d not in out and os.path.isdir(d):
            out.append(d)
    return out


def interpreter() -> str:
    """The absolute path of the interpreter to bind to (the venv's, not its target)."""
    exe = sys.executable
    if not exe or not os.path.isabs(exe):
        raise ValueError(f"cannot bind to interpreter {exe!r}: not an absolute path")
    return exe


def script_text(plugin: str, *, python: str | None = None, mode: str = "-IS",
                root: str | None = None, paths: list[str] | None = None) -> str:
    if plugin not in PLUGINS:
        raise ValueError(f"unknown plugin {plugin!r}; expected one of {', '.join(PLUGINS)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    python = python or interpreter()
    root = root or code_root()
    extra = [root] + [p for p in (site_dirs() if paths is None else paths) if p != root]
    lines = [f"#!{python} {mode}", f"{MARKER}: {plugin}", "import sys"]
    if mode == "-IS":
        lines.append(f"sys.path[:0] = {extra!r}")
    else:
        lines.append(f"sys.path.insert(0, {root!r})")
    lines += ["from cninode.launcher import main", f"main({plugin!r})", ""]
    return "\n".join(lines)


def _write_script(path: str, text: str, verify: bool) -> bool:
    """Write aside, verify the temp file (``works``), rename; False: ``path`` untouched."""
    return write_atomic(path, text.encode(), mode=0o755, verify=works if verify else None)


def is_ours(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return MARKER.encode() in head


def works(path: str) -> bool:
    """Does the executable answer VERSION with an empty environment, from /?"""
    try:
        p = subprocess.run([path], env={"CNI_COMMAND": "VERSION", "CNILAB_AGENT": "off"},
                           cwd="/", capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return False
    return p.returncode == 0 and b'"supportedVersions"' in p.stdout


def install(directory: str, *, force: bool = False, plugins: tuple[str, ...] = PLUGINS,
            verify: bool = True, python: str | None = None) -> list[str]:
    """Write the plugin executables into ``directory``; returns their paths.

    ``python``: the interpreter named in the ``#!`` line (default: this one,
    ``sys.executable``); it must be an absolute path and run this code tree
    with this interpreter's site-packages (e.g. a wrapper that execs it).
    """
    if python is not None and not os.path.isabs(python):
        raise ValueError(f"the interpreter path must be absolute: {python!r}")
    directory = os.path.abspath(directory)
    make_dirs(directory, 0o755)     # never world-writable, whatever the umask
    targets = [os.path.join(directory, name) for name in plugins]
    for t in targets:
        if os.path.lexists(t) and not force and not is_ours(t):
            raise FileExistsError(f"{t} exists and is not a cnilab launcher "
                                  "(use --force to replace it)")
    written = []
    for name, target in zip(plugins, targets):
        for mode in MODES:
            text = script_text(name, mode=mode, python=python)
            try:
                with open(target) as f:
                    same = f.read() == text
            except (OSError, UnicodeDecodeError):
                same = False
            if same and (not verify or works(target)):
                break
            if not same and _write_script(target, text, verify):
                break
        else:
            raise RuntimeError(f"{target} does not answer VERSION with either -IS or -I "
                               "(the file there, if any, was left as it was)")
        written.append(target)
    return written
