"""The shared undo stack: a failing undo step never replaces the original error."""
from __future__ import annotations

import pytest

from plugins.core.errors import CNIError, IO_FAILURE
from plugins.core.undo import Undo, quietly


def test_failing_step_is_logged_and_the_rest_still_run(capsys):
    ran = []

    def bad(what):
        ran.append(what)
        raise OSError(16, "Device or resource busy")
    with pytest.raises(CNIError) as info:
        with Undo() as undo:
            undo.callback(ran.append, "first registered")
            undo.callback(bad, "middle")
            undo.callback(ran.append, "last registered")
            raise CNIError(IO_FAILURE, "the original failure", "details")
    assert (info.value.code, info.value.msg, info.value.details) == \
        (IO_FAILURE, "the original failure", "details")
    assert ran == ["last registered", "middle", "first registered"]    # all, in reverse
    err = capsys.readouterr().err
    assert "rollback: undo step" in err and "bad" in err and "busy" in err


def test_pop_all_keeps_everything():
    ran = []
    with Undo() as undo:
        undo.callback(ran.append, 1)
        undo.pop_all()
    assert ran == []


def test_quietly_outside_a_stack(capsys):
    def boom():
        raise RuntimeError("nope")
    quietly(boom)()
    assert "RuntimeError: nope" in capsys.readouterr().err


def test_allocator_rollback_failure_keeps_the_original_error(capsys):
    """host-local: set 2 exhausted, releasing set 1's new address fails: the runtime
    still sees 'no IP addresses available' (code 103), not the release error."""
    from ipam import allocator
    from ipam.ranges import parse_range_set
    from ipam.store import MemoryStore, Owner
    sets = [parse_range_set([{"subnet": "10.9.0.0/29"}], "ranges[0]"),
            parse_range_set([{"subnet": "10.9.1.0/30"}], "ranges[1]")]
    store = MemoryStore()
    with store.session():
        allocator.allocate(store, sets[1:], Owner("other", "eth0"), [])   # fills set 2

    def broken_release(ip):
        raise OSError(30, "Read-only file system")
    store.release = broken_release
    with pytest.raises(CNIError) as info:
        with store.session():
            allocator.allocate(store, sets, Owner("c1", "eth0"), [])
    assert info.value.code == 103, info.value
    assert "Read-only" in capsys.readouterr().err
