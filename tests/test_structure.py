"""The package structure as a test: no import cycles (function-local imports
count), no private name of one module used by another, imports only pointing
down between packages. Pure AST reading, no imports of the code itself."""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("plugins", "ipam", "cniruntime", "cninode", "netlab")


def _modules() -> dict[str, str]:
    mods = {}
    for pkg in PACKAGES:
        for d, dirs, files in os.walk(os.path.join(ROOT, pkg)):
            dirs[:] = [x for x in dirs if not x.startswith((".", "__"))]
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(d, f)
                    name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    mods[name.removesuffix(".__init__")] = path
    return mods


MODULES = _modules()


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``if TYPE_CHECKING:`` (annotations only, never run)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            out |= {id(n) for b in node.body for n in ast.walk(b)}
    return out


def _imports(mod: str, *, runtime_only: bool = False) -> list[tuple[str, str | None, int, ast.AST]]:
    """(target module, imported name or None, line, node) of every import, anywhere in the module
    (``runtime_only``: without those under ``if TYPE_CHECKING:``)."""
    path = MODULES[mod]
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    pkg = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
    skip = _type_checking_only(tree) if runtime_only else set()
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno, node) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                target = base + ("." + node.module if node.module else "")
            else:
                target = node.module or ""
            out += [(target, a.name, node.lineno, node) for a in node.names]
    return out


def _resolve(target: str, name: str | None) -> str | None:
    if name and f"{target}.{name}" in MODULES:
        return f"{target}.{name}"
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod in MODULES:
        for target, name, _, _ in _imports(mod):
            dep = _resolve(target, name)
            if dep and dep != mod:
                graph[mod].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_the_cycle_finder_finds_a_cycle_through_a_function_local_import():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_counts_function_local_imports():
    # plan imports bgp only inside make_plan
    assert "netlab.features.bgp" in import_graph()["netlab.lab.plan"]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (function-local imports count):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def _private_uses(mod: str) -> list[str]:
    """`from x import _name` and `alias._name` where x/alias is another of our modules."""
    out = []
    aliases: dict[str, str] = {}
    for target, name, line, node in _imports(mod):
        dep = _resolve(target, name)
        if dep is None or dep == mod:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == target and a.asname:
                    aliases[a.asname] = dep
        elif name and f"{target}.{name}" == dep:
            asname = next(a.asname or a.name for a in node.names if a.name == name)
            aliases[asname] = dep
        elif name and name.startswith("_") and not name.startswith("__"):
            out.append(f"{mod}:{line}: from {target} import {name}")
    tree = ast.parse(open(MODULES[mod], encoding="utf-8").read())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__")):
            out.append(f"{mod}:{node.lineno}: {node.value.id}.{node.attr} ({aliases[node.value.id]})")
    return out


def test_no_private_names_across_modules():
    found = [u for m in sorted(MODULES) for u in _private_uses(m)]
    assert not found, "private names used by other modules (make them public):\n" + "\n".join(found)


# Packages from the bottom up: a module may import its own package and those
# listed for it (ADR 0029, docs/architecture.md). Sub-packages not listed
# belong to their parent (plugins.net -> plugins).
LAYERS = {
    "plugins.core": set(),
    "plugins": {"plugins.core", "ipam"},
    "ipam": {"plugins.core"},
    "cniruntime": {"plugins.core", "cninode"},   # the node agent fast path (ADR 0030)
    "cninode": {"plugins", "plugins.core", "ipam"},
    "netlab.cri": {"netlab.base", "plugins", "plugins.core"},
    "netlab.base": {"plugins.core"},
    "netlab.features": {"netlab.base", "cniruntime", "plugins", "plugins.core"},
    "netlab.lab": {"netlab.cri", "netlab.features", "netlab.base", "cniruntime", "cninode", "plugins", "plugins.core"},
    "netlab.debug": {"netlab.cri", "netlab.lab", "netlab.features", "netlab.base", "cniruntime", "plugins", "plugins.core"},
    "netlab.checks": {"netlab.cri", "netlab.debug", "netlab.lab", "netlab.features", "netlab.base", "cniruntime",
                      "plugins", "plugins.core"},
    "netlab.cli": {"netlab.cri", "netlab.checks", "netlab.debug", "netlab.lab", "netlab.features", "netlab.base",
                   "cniruntime", "cninode", "plugins", "plugins.core"},
    "netlab": {"netlab.cli", "netlab.checks", "netlab.debug", "netlab.lab", "netlab.features", "netlab.base",
               "cniruntime", "cninode", "plugins", "plugins.core"},
}


def layer_of(mod: str) -> str:
    best = ""
    for name in LAYERS:
        if (mod == name or mod.startswith(name + ".")) and len(name) > len(best):
            best = name
    assert best, f"{mod} belongs to no package of LAYERS: add it (and say what it may import)"
    return best


def test_the_layer_rule_catches_an_upward_import():
    assert layer_of("netlab.lab.build") == "netlab.lab" and layer_of("plugins.net.tc") == "plugins"
    assert "netlab.cli" not in LAYERS[layer_of("netlab.lab.plan")]


def test_imports_only_point_down():
    bad = []
    for mod in sorted(MODULES):
        own = layer_of(mod)
        for target, name, line, _ in _imports(mod, runtime_only=True):
            dep = _resolve(target, name)
            if dep is None:
                continue
            other = layer_of(dep)
            if other != own and other not in LAYERS[own]:
                bad.append(f"{mod}:{line} imports {dep} ({own} may import: {', '.join(sorted(LAYERS[own]))})")
    assert not bad, "imports pointing up or sideways:\n" + "\n".join(bad)


def test_packages_are_small_and_say_what_they_own():
    for d, dirs, files in os.walk(ROOT):
        dirs[:] = [x for x in dirs if not x.startswith((".", "__")) and x not in ("tests", "benchmarks", "docs")]
        rel = os.path.relpath(d, ROOT)
        if rel.split(os.sep)[0] not in PACKAGES or "__init__.py" not in files:
            continue
        modules = [f for f in files if f.endswith(".py") and f not in ("__init__.py", "__main__.py")]
        assert len(modules) <= 13, f"{rel} holds {len(modules)} modules directly: split it by concern"
        doc = ast.get_docstring(ast.parse(open(os.path.join(d, "__init__.py"), encoding="utf-8").read()))
        assert doc, f"{rel}/__init__.py has no docstring saying what the package owns"
        if rel.split(os.sep)[0] in ("cniruntime", "cninode") or rel.startswith("netlab" + os.sep):
            assert "import" in doc.lower(), f"{rel}/__init__.py does not say what it may import"
