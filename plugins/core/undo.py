"""Rollback of a failing ADD, shared by every plugin.

An ADD registers one undo step per thing it changes, each right *before* the
change when the change can fail half-way (an IPAM ADD that reserved and then
failed still gets its DEL), and releases the whole stack only once the result
is complete. On failure the steps run in reverse order and the runtime must
see the error that started the rollback: a failing undo step is written to
stderr and the next step still runs (``contextlib.ExitStack`` alone would let
it replace the original error and skip the steps after it).

Standard library only (cheap on the start-up path).
"""
from __future__ import annotations

import contextlib
import sys


def quietly(fn, *args, **kw):
    """``fn(*args, **kw)`` as an undo step: a failure is logged to stderr, never raised."""
    def step() -> None:
        try:
            fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - never mask the error being rolled back
            name = getattr(fn, "__qualname__", None) or repr(fn)
            sys.stderr.write(f"rollback: undo step {name} failed: "
                             f"{type(e).__name__}: {e}\n")
    return step


class Undo(contextlib.ExitStack):
    """The undo stack of an ADD: every ``callback`` runs quietly (see module doc).

    ``with Undo() as undo: ...; undo.pop_all()`` at the end keeps what was done.
    """

    def callback(self, fn, /, *args, **kw):
        return super().callback(quietly(fn, *args, **kw))
