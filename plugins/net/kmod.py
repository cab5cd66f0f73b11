"""Does the running kernel have a feature? Read-only probes for a one-line refusal.

Some things a user can ask for need kernel modules this project does not
implement on top of, or that a machine may lack (Geneve, IPVS). Before
refusing we look, without changing anything: a loaded module shows in
``/sys/module``; a built-in or loadable one in ``/proc/config.gz``
(``CONFIG_X=y|m``) or in ``/lib/modules/<release>/modules.{builtin,dep}``.
"""
from __future__ import annotations

import gzip
import os

# what a user asks for -> (module name, kernel config symbol)
FEATURES = {
    "geneve": ("geneve", "CONFIG_GENEVE"),
    "ipvs": ("ip_vs", "CONFIG_IP_VS"),
}


def _config(symbol: str, path: str = "/proc/config.gz") -> str | None:
    """'y', 'm', 'n' (the config says it is not set) or None (no config to read)."""
    try:
        with gzip.open(path, "rt", errors="replace") as f:
            for line in f:
                if line.startswith(symbol + "="):
                    return line.split("=", 1)[1].strip().strip('"')
                if line.startswith(f"# {symbol} is not set"):
                    return "n"
    except OSError:
        return None
    return "n"


def _listed(module: str, release: str) -> bool:
    base = os.path.join("/lib/modules", release)
    for fname in ("modules.builtin", "modules.dep"):
        try:
            with open(os.path.join(base, fname), errors="replace") as f:
                for line in f:
                    mod = line.split(":", 1)[0].rsplit("/", 1)[-1]
                    if mod.split(".ko", 1)[0].replace("-", "_") == module:
                        return True
        except OSError:
            continue
    return False


def has(feature: str, *, sys_module: str = "/sys/module",
        config: str = "/proc/config.gz") -> tuple[bool, str]:
    """(available, evidence): whether the kernel has ``feature`` and why we think so."""
    module, symbol = FEATURES[feature]
    if os.path.isdir(os.path.join(sys_module, module)):
        return True, f"module {module} is loaded"
    got = _config(symbol, config)
    if got in ("y", "m"):
        return True, f"{symbol}={got}"
    if _listed(module, os.uname().release):
        return True, f"{module} is in /lib/modules/{os.uname().release}"
    if got == "n":
        return False, f"{symbol} is not set"
    return False, f"no /sys/module/{module}, no {symbol} in the kernel config, not in /lib/modules"


def missing_message(feature: str, what: str, **kw) -> str | None:
    """The one-line refusal for ``what`` (e.g. 'encap geneve') when the kernel lacks
    ``feature``; None when the kernel has it."""
    ok, why = has(feature, **kw)
    if ok:
        return None
    module = FEATURES[feature][0]
    return f"{what} needs the kernel module {module}, which this kernel lacks ({why})"
