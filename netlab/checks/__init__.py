"""Lab checks, each proven by a packet capture saved in the lab directory.

``run_checks(ctx, checks)`` runs them in order and returns CheckResults; a
check never raises (an unexpected error is a failed result saying why).
One module per check type (``traffic``: the ones that measure rates); ``common`` holds the context, targets, small
servers/clients and capture helpers they share.

May import: netlab.debug (captures, drop reasons: the evidence),
netlab.lab, netlab.features, netlab.base, plugins.core. Never cli.
"""
from __future__ import annotations

import time
import traceback

from .common import CheckResult, Context

RUNNERS = {}


def _runners():
    if not RUNNERS:
        from . import bgp, capture, dns, loadbalancer, mtu, policy, port, reach, service
        from .traffic import bandwidth, throughput
        RUNNERS.update(reach=reach.run, mtu=mtu.run, dns=dns.run, port=port.run,
                       bandwidth=bandwidth.run, capture=capture.run, service=loadbalancer.service_or_lb,
                       policy=policy.run,
                       bgp=bgp.run, throughput=throughput.run)
    return RUNNERS


def run_check(ctx: Context, check) -> CheckResult:
    t0 = time.monotonic()
    try:
        res = _runners()[check.type](ctx, check)
    except Exception as e:  # noqa: BLE001 - a broken check is a failed check
        res = CheckResult(check.name, check.type, False, expected=str(check.params.get("expect")),
                          observed=f"error: {e}", details=traceback.format_exc().splitlines()[-3:])
    res.seconds = round(time.monotonic() - t0, 2)
    return res


def run_checks(ctx: Context, checks, progress=lambda r: None) -> list[CheckResult]:
    out = []
    for c in checks:
        r = run_check(ctx, c)
        progress(r)
        out.append(r)
    return out


__all__ = ["CheckResult", "Context", "run_check", "run_checks"]
