"""plugins.core.record: the dataclasses subset the plugins use (no root)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from plugins.core.record import FrozenInstanceError, field, fields, record, replace


@record
class Plain:
    a: int
    b: str = "x"
    c: list = field(default_factory=list)


@record(frozen=True, order=True)
class Point:
    x: int
    y: int = 0


def test_init_defaults_and_factories():
    p = Plain(1)
    assert (p.a, p.b, p.c) == (1, "x", [])
    assert Plain(1).c is not Plain(1).c                # one list per instance
    assert Plain(a=2, c=[1], b="y") == Plain(2, "y", [1])
    with pytest.raises(TypeError):
        Plain()                                         # a has no default
    with pytest.raises(TypeError):
        Plain(1, nope=3)


def test_repr_eq_and_hash_rules():
    assert repr(Plain(1, "q", [2])) == "Plain(a=1, b='q', c=[2])"
    assert Plain(1) != Plain(2) and Plain(1) != (1, "x", [])
    with pytest.raises(TypeError):
        hash(Plain(1))                                  # mutable: unhashable, as dataclasses
    assert hash(Point(1, 2)) == hash(Point(1, 2)) and {Point(1, 2), Point(1, 2)} == {Point(1, 2)}


def test_frozen_and_order():
    p = Point(1, 2)
    with pytest.raises(FrozenInstanceError):
        p.x = 3
    with pytest.raises(AttributeError):
        del p.y
    assert sorted([Point(2), Point(1, 5), Point(1, 2)]) == [Point(1, 2), Point(1, 5), Point(2)]
    assert Point(1) < Point(1, 1) and Point(2) >= Point(1, 9)


def test_replace_and_fields():
    p = Point(1, 2)
    assert replace(p, y=7) == Point(1, 7) and p == Point(1, 2)
    assert fields(Point) == ("x", "y") and fields(p) == ("x", "y")
    with pytest.raises(TypeError):
        replace(p, z=1)


def test_post_init_inheritance_classvar_and_own_methods():
    @record
    class Base:
        a: int
        kind: "ClassVar[str]" = "base"

        def __post_init__(self):
            self.doubled = self.a * 2

    @record
    class Child(Base):
        b: int = 5

        def __repr__(self):
            return "mine"

    c = Child(3)
    assert (c.a, c.b, c.doubled, Child.kind) == (3, 5, 6, "base")
    assert fields(Child) == ("a", "b") and repr(c) == "mine"


def test_definition_errors():
    with pytest.raises(ValueError):
        @record
        class Bad:
            items: list = []                            # shared mutable default
    with pytest.raises(TypeError):
        @record
        class Order:
            a: int = 1
            b: int                                      # non-default after default


def test_plugin_modules_do_not_import_dataclasses():
    """What a cold plugin call imports stays lean: no dataclasses (inspect, ast, dis)
    and no hashlib (OpenSSL) once every plugin module is loaded."""
    code = ("import sys\n"
            "from plugins import bridge, portmap, bandwidth, vxlan, firewall, tuning\n"
            "from plugins.net import attach, link, tc, masq, portmap_rules\n"
            "from ipam import allocator, config, store\n"
            "print(' '.join(m for m in ('dataclasses', 'inspect', 'hashlib', 'pyroute2')"
            " if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [], out
