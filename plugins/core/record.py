"""Typed records: the part of ``dataclasses`` the plugins use, without its import cost.

``import dataclasses`` imports ``inspect`` and, through it, ``ast``, ``dis``,
``tokenize`` and more: ~10 ms of a ~40 ms plugin call without the agent, paid
on every exec (docs/performance.md, docs/adr/0037). The plugins' config, plan
and result types need only this:

- ``@record`` / ``@record(frozen=True, order=True)`` on a class with annotated
  fields: ``__init__`` (positional or keyword, defaults, ``field(default_factory=...)``,
  then ``__post_init__`` when the class has one), ``__repr__``, ``__eq__``
  (same class, fields in order); frozen records refuse assignment and hash by
  their fields, unfrozen ones are unhashable (as dataclasses makes them);
  ``order`` adds ``<``, ``<=``, ``>``, ``>=`` over the fields' tuple;
- ``replace(obj, **changes)``: a copy with some fields changed.

Methods a class defines itself are kept, as dataclasses does. Fields are the
annotations of the class and of its record bases, in definition order; the
annotations are not evaluated (they are strings under ``from __future__ import
annotations``) and a ``ClassVar`` annotation is not a field. The methods
are closures over the class's fields, not generated source: compiling source
per class (as dataclasses does) costs more at import than a generic
``__init__`` costs per instance.
"""
from __future__ import annotations

_MISSING = object()
_FIELDS = "__record_fields__"


class Field:
    """A field's default: a value, or a factory called for each new instance."""
    __slots__ = ("default", "default_factory")

    def __init__(self, default=_MISSING, default_factory=_MISSING) -> None:
        if default is not _MISSING and default_factory is not _MISSING:
            raise ValueError("a field cannot have both a default and a default_factory")
        self.default, self.default_factory = default, default_factory


def field(*, default=_MISSING, default_factory=_MISSING):
    """A field with a default factory (``field(default_factory=list)``) or a default."""
    return Field(default, default_factory)


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record."""


def record(cls=None, /, *, frozen: bool = False, order: bool = False):
    """Make ``cls`` a record (see the module docstring); usable with or without arguments."""
    def wrap(c):
        return _process(c, frozen, order)
    return wrap if cls is None else wrap(cls)


def fields(obj_or_cls) -> tuple[str, ...]:
    """The field names of a record class or instance, in order."""
    return tuple(name for name, _ in getattr(obj_or_cls, _FIELDS))


def replace(obj, /, **changes):
    """A new record of ``obj``'s class: its fields, with ``changes`` applied."""
    names = fields(obj)
    unknown = set(changes) - set(names)
    if unknown:
        raise TypeError(f"{type(obj).__name__} has no field(s) {sorted(unknown)}")
    return type(obj)(**{n: changes[n] if n in changes else getattr(obj, n) for n in names})


def _own_fields(cls) -> list[tuple[str, Field]]:
    out = []
    for name, ann in cls.__dict__.get("__annotations__", {}).items():
        if isinstance(ann, str) and ann.strip("'\"").replace("typing.", "").startswith("ClassVar"):
            continue
        value = cls.__dict__.get(name, _MISSING)
        if isinstance(value, Field):
            spec = value
            if value.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, value.default)
        else:
            spec = Field(value)
        if isinstance(spec.default, (list, dict, set)):
            raise ValueError(f"mutable default for field {name!r} of {cls.__name__}: "
                             "use field(default_factory=...)")
        out.append((name, spec))
    return out


def _process(cls, frozen: bool, order: bool):
    inherited: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for name, spec in getattr(base, _FIELDS, ()):
            inherited[name] = spec
    for name, spec in _own_fields(cls):
        inherited.pop(name, None)
        inherited[name] = spec
    specs = tuple(inherited.items())
    _check_order(cls, specs)
    setattr(cls, _FIELDS, specs)
    names = tuple(n for n, _ in specs)
    methods = _methods(cls, specs, names, frozen)
    own = cls.__dict__
    explicit_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
    for name in ("__init__", "__repr__", "__eq__"):
        if name not in own:
            setattr(cls, name, methods[name])
    if order:
        for name in ("__lt__", "__le__", "__gt__", "__ge__"):
            if name in own:
                raise TypeError(f"{cls.__name__} defines {name}: cannot add ordering")
            setattr(cls, name, methods[name])
    if frozen:
        for name in ("__setattr__", "__delattr__"):
            if name in own:
                raise TypeError(f"{cls.__name__} defines {name}: cannot be frozen")
            setattr(cls, name, methods[name])
    if not explicit_hash:
        cls.__hash__ = methods["__hash__"] if frozen else None
    cls.__match_args__ = names
    return cls


def _check_order(cls, specs) -> None:
    seen_default = False
    for name, spec in specs:
        has = spec.default is not _MISSING or spec.default_factory is not _MISSING
        if seen_default and not has:
            raise TypeError(f"{cls.__name__}: non-default field {name!r} follows a field "
                            "with a default")
        seen_default = seen_default or has


def _methods(cls, specs, names: tuple[str, ...], frozen: bool) -> dict:
    """The generated methods, as closures (no ``exec``: compiling source per class
    costs more at import than these cost per call)."""
    set_field = object.__setattr__ if frozen else setattr
    field_set = frozenset(names)
    nfields = len(names)

    def __init__(self, *args, **kwargs):
        if len(args) > nfields:
            raise TypeError(f"{cls.__name__}() takes {nfields} positional arguments "
                            f"but {len(args)} were given")
        for i, (name, spec) in enumerate(specs):
            if i < len(args):
                if name in kwargs:
                    raise TypeError(f"{cls.__name__}() got multiple values for {name!r}")
                value = args[i]
            elif name in kwargs:
                value = kwargs[name]
            elif spec.default_factory is not _MISSING:
                value = spec.default_factory()
            elif spec.default is not _MISSING:
                value = spec.default
            else:
                raise TypeError(f"{cls.__name__}() missing required argument {name!r}")
            set_field(self, name, value)
        if not field_set.issuperset(kwargs):
            extra = sorted(set(kwargs) - field_set)
            raise TypeError(f"{cls.__name__}() got unexpected keyword argument(s) {extra}")
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    def values(self) -> tuple:
        return tuple(getattr(self, n) for n in names)

    def __repr__(self):
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{type(self).__qualname__}({inner})"

    def compare(op):
        def method(self, other):
            if other.__class__ is self.__class__:
                return op(values(self), values(other))
            return NotImplemented
        return method

    def __setattr__(self, name, value):
        if type(self) is cls or name in field_set:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)

    def __delattr__(self, name):
        if type(self) is cls or name in field_set:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)

    return {"__init__": __init__, "__repr__": __repr__,
            "__eq__": compare(lambda a, b: a == b), "__lt__": compare(lambda a, b: a < b),
            "__le__": compare(lambda a, b: a <= b), "__gt__": compare(lambda a, b: a > b),
            "__ge__": compare(lambda a, b: a >= b),
            "__hash__": lambda self: hash(values(self)),
            "__setattr__": __setattr__, "__delattr__": __delattr__}
