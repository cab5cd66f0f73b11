"""Reading JSON exactly as Go's ``encoding/json`` reads it into a struct.

Why: the runtimes and plugins of the CNI world are Go programs, and they rely
on ``encoding/json``'s rules. containerd (and so kind, via go-cni) marshals
capability args from structs with no JSON tags, so a plugin receives
``{"HostPort": 8080, "ContainerPort": 80, ...}``, ``{"IngressRate": ...}``,
``{"Subnet": ..., "RangeStart": ...}``; the Go plugins take these because Go
matches object keys to struct fields case-insensitively. A plugin that reads
keys by exact name breaks on containerd while passing on podman. Every config
read in this project goes through this module (via ``Fields``).

The rules, from the Go sources (src/encoding/json: decode.go ``object()``,
encode.go ``typeFields``, fold.go ``foldName``/``foldRune``; unicode
``SimpleFold`` and its ``caseOrbit`` table):

1. Decoding keeps every key/value pair of an object, in input order
   (``loads`` uses an ``object_pairs_hook``; a ``GoObject`` is a dict, whose
   dict view is Go's *map* semantics: exact keys, the last duplicate wins,
   plus ``.pairs``, what a *struct* decode sees).
2. A key is matched to a struct field by exact name first; otherwise by
   ``foldName`` equality. ``foldName`` upper-cases ASCII letters and maps any
   other rune to the smallest rune of its case-folding orbit, so the only
   non-ASCII runes that reach an ASCII name are U+212A KELVIN SIGN (-> K)
   and U+017F LATIN SMALL LETTER LONG S (-> S). U+0130 and U+0131 (Turkish
   dotted/dotless i) are their own orbits in Go and fold to nothing else.
   All CNI field names are ASCII; a non-ASCII name is folded by the same
   table, which is exact whenever one side is ASCII.
3. A key that exactly names *another* field of the struct belongs to that
   field; when two fields fold alike, a fold-only match goes to the first
   declared (``Fields(..., known=(...))`` gives the declaration order; it
   only matters for structs with such fields).
4. Keys are applied in input order, each decoding into the same Go value:
   for a scalar the last value wins; a JSON ``null`` changes nothing on a
   value field (we treat every field as a value field: null = "not given",
   so a later null never erases an earlier value); objects for the same
   field merge key by key (``obj``), and arrays decode into the same slice:
   element *i* is built from element *i* of every array (in order) that has
   one, the last array sets the length, and ``null`` or ``[]`` starts over
   (``objects``, ``list``).
5. Object keys of Go *maps* (``capabilities``, the inside of
   ``io.kubernetes.cri.pod-annotations``) are exact: use the dict view.
6. Numbers: an integer field takes only an integer literal (``1.0`` and
   ``1e3`` are errors in Go, and here); ``NaN``/``Infinity`` are not JSON;
   invalid UTF-8 inside strings becomes U+FFFD, as Go coerces it.

Cost: this module imports only ``json`` (the plugins already need it); the
dispatcher loads it only once a command needs the network config.
"""
from __future__ import annotations

import json

from .errors import CNIError, INVALID_NETWORK_CONFIG

# Non-ASCII runes whose Go fold orbit contains an ASCII letter (unicode.caseOrbit).
_SPECIAL_FOLD = {"\u212a": "K", "\u017f": "S"}


class GoObject(dict):
    """A decoded JSON object: the dict view is Go's map semantics (exact keys,
    last duplicate wins); ``pairs`` keeps every (key, value) in input order."""
    __slots__ = ("pairs",)

    def __init__(self, pairs=()) -> None:
        pairs = list(pairs)
        super().__init__(pairs)
        self.pairs = pairs


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def loads(data: bytes | str) -> object:
    """Decode like Go: pairs kept, no NaN/Infinity, invalid UTF-8 -> U+FFFD."""
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("utf-8", "replace")
    return json.loads(data, object_pairs_hook=GoObject, parse_constant=_no_constant)


def pairs(obj: dict) -> list:
    p = getattr(obj, "pairs", None)
    return list(obj.items()) if p is None else p


def fold(name: str) -> str:
    """Go's foldName for the purpose of matching (see rule 2)."""
    if name.isascii():
        return name.upper()
    return "".join(c.upper() if c < "\x80" else _SPECIAL_FOLD.get(c, c) for c in name)


def merged(objs: list) -> GoObject:
    """Several objects decoded in turn into one struct = one object with all their pairs."""
    out: list = []
    for o in objs:
        out += pairs(o)
    return GoObject(out)


def as_go_map(value: object) -> object:
    """What a value looks like after a Go ``map[string]interface{}`` round trip
    (how Go plugins hold prevResult): exact duplicate keys collapsed (last
    wins), keys in sorted order, recursively."""
    if isinstance(value, dict):
        return GoObject((k, as_go_map(value[k])) for k in sorted(value))
    if isinstance(value, list):
        return [as_go_map(v) for v in value]
    return value


def slice_layers(arrays: list) -> list[list]:
    """Go decoding several JSON arrays (or nulls), in order, into one slice.

    Returns, per element of the final slice, the values decoded into it in
    order (decode.go ``array()`` reuses the slice's elements, also those
    beyond a shorter array's length; ``null`` and ``[]`` reset the slice)."""
    live: list = []
    for a in arrays:
        live = [] if not a else live + [a]
    if not live:
        return []
    return [[a[i] for a in live if len(a) > i] for i in range(len(live[-1]))]


def _last(values: list) -> object:
    out = None
    for v in values:
        if v is not None:
            out = v
    return out


def _show(v: object) -> str:
    try:
        return json.dumps(v)[:200]
    except (TypeError, ValueError):
        return repr(v)[:200]


class Fields:
    """Typed, Go-exact access to one JSON object read as a Go struct.

    Every error is a CNI error (code 7 unless ``code`` says otherwise) naming
    the field's path. ``known`` is the struct's field names in declaration
    order, needed only where two of them fold alike (rule 3).
    """
    __slots__ = ("data", "where", "known", "code", "_index")

    def __init__(self, data: object, where: str = "", known: tuple = (),
                 code: int = INVALID_NETWORK_CONFIG) -> None:
        if isinstance(data, Fields):
            data = data.data
        if not isinstance(data, dict):
            raise CNIError(code, f"{where or 'config'} must be a JSON object",
                           f"got {type(data).__name__}")
        self.data = data
        self.where = where
        self.known = tuple(known)
        self.code = code
        self._index: dict | None = None

    # ---- the matching rules ----------------------------------------------------
    def values(self, key: str) -> list:
        """Every value Go would decode into field ``key``, in input order."""
        if self._index is None:
            idx: dict = {}
            for k, v in pairs(self.data):
                idx.setdefault(fold(k), []).append((k, v))
            self._index = idx
        fk = fold(key)
        cands = self._index.get(fk)
        if not cands:
            return []
        if not self.known:
            return [v for _, v in cands]
        known = self.known
        owner = next((n for n in known if fold(n) == fk), key)
        return [v for k, v in cands
                if k == key or (owner == key and k not in known)]

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _bad(self, key: str, want: str, got: object) -> CNIError:
        return CNIError(self.code, f"{self.path(key)} must be {want}", f"got {_show(got)}")

    def _required(self, key: str) -> CNIError:
        return CNIError(self.code, f"{self.path(key)} is required")

    # ---- scalars -----------------------------------------------------------------
    def has(self, key: str) -> bool:
        return _last(self.values(key)) is not None

    def raw(self, key: str, default: object = None) -> object:
        v = _last(self.values(key))
        return default if v is None else v

    def str(self, key: str, default: str = "", *, required: bool = False) -> str:
        v = _last(self.values(key))
        if v is None:
            if required:
                raise self._required(key)
            return default
        if not isinstance(v, str):
            raise self._bad(key, "a string", v)
        return v

    def bool(self, key: str, default: bool = False) -> bool:
        v = _last(self.values(key))
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self._bad(key, "true or false", v)
        return v

    def int(self, key: str, default: int = 0, *, lo: int | None = None,
            hi: int | None = None, required: bool = False) -> int:
        v = _last(self.values(key))
        if v is None:
            if required:
                raise self._required(key)
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._bad(key, "an integer", v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            if lo is not None and hi is not None:
                rng = f"between {lo} and {hi}"
            else:
                rng = f"at least {lo}" if lo is not None else f"at most {hi}"
            raise CNIError(self.code, f"{self.path(key)} must be {rng}", f"got {v}")
        return v

    def ifname(self, key: str, default: str = "") -> str:
        v = self.str(key, default)
        if v:
            from . import names
            names.check_ifname(v, self.path(key), self.code)
        return v

    def ip(self, key: str, default: str = "") -> str:
        v = self.str(key, default)
        if v:
            import ipaddress
            try:
                ipaddress.ip_address(v)
            except ValueError:
                raise self._bad(key, "an IP address", v) from None
        return v

    # ---- composites -----------------------------------------------------------------
    def _arrays(self, key: str) -> list:
        out = []
        for v in self.values(key):
            if v is not None and not isinstance(v, list):
                raise self._bad(key, "a list", v)
            out.append(v)
        return out

    def list(self, key: str) -> list:
        """A list of scalars (or of values the caller checks itself)."""
        return [_last(layers) for layers in slice_layers(self._arrays(key))]

    def layers(self, key: str) -> list[list]:
        """A list whose elements are themselves composite: per element, the
        values decoded into it (see ``slice_layers``)."""
        return slice_layers(self._arrays(key))

    def obj(self, key: str, known: tuple = ()) -> "Fields":
        objs = []
        for v in self.values(key):
            if v is None:
                continue
            if not isinstance(v, dict):
                raise CNIError(self.code, f"{self.path(key)} must be a JSON object",
                               f"got {type(v).__name__}")
            objs.append(v)
        return Fields(merged(objs), self.path(key), known, self.code)

    def objects(self, key: str, known: tuple = ()) -> list["Fields"]:
        """A list of objects (a Go slice of structs)."""
        return [element(layers, f"{self.path(key)}[{i}]", known, self.code)
                for i, layers in enumerate(self.layers(key))]


def element(layers: list, where: str, known: tuple = (),
            code: int = INVALID_NETWORK_CONFIG) -> Fields:
    """One struct decoded from ``layers`` (values in order; nulls skipped)."""
    objs = []
    for v in layers:
        if v is None:
            continue
        if not isinstance(v, dict):
            raise CNIError(code, f"{where} must be a JSON object", f"got {_show(v)}")
        objs.append(v)
    return Fields(merged(objs), where, known, code)
