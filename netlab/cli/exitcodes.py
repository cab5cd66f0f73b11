"""The exit statuses of every netlab verb: one set, documented as the table
in docs/netlab/commands.md ("Exit status"). Verbs return these names, never
bare numbers."""
from __future__ import annotations

OK = 0            # done; what the verb reports is good (checks passed, lab healthy, probe answered)
FAILED = 1        # the verb ran and what it reports is bad: a check, a build, a teardown, a CNI call, a degraded lab
USAGE = 2         # the input is wrong (arguments, a topology, a refused choice); nothing was changed
NOT_RUNNING = 3   # `agent status`: no agent answers on the socket (systemctl's "not running")
INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT); whatever a build made was removed

TABLE = ((OK, "OK"), (FAILED, "FAILED"), (USAGE, "USAGE"), (NOT_RUNNING, "NOT_RUNNING"),
         (INTERRUPTED, "INTERRUPTED"))
