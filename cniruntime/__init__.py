"""cniruntime: libcni semantics in Python, the runtime side of CNI.

Owns: conflist loading and the capabilities -> runtimeConfig mapping, chaining
with prevResult, the libcni result cache, ADD/DEL/CHECK/GC/STATUS through the
plugin executables (optionally entering a "host" network namespace before
exec), and the call log it writes (``runtime``), read back by ``cnilog``.

Used by netlab (labs attach pods through it), ``netlab cni``, the tests and
the benchmarks. May import: the standard library and plugins.core (errors,
types, names, invoke, netns, fsutil, version). Never netlab.
"""
