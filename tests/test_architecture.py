"""The package's shape: no import cycles, function-level imports included (they hide cycles from Python, not
from a reader); imports under `if TYPE_CHECKING:` (annotations only, never run) do not count."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rustcoder"


def _graph() -> dict[str, set[str]]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        package = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
        tree = ast.parse(f.read_text())
        annotations_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                            and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in annotations_only:  # `if TYPE_CHECKING:` imports never run
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base
                    if target in mods and target != m:
                        graph[m].add(target)
            elif isinstance(node, ast.Import):
                graph[m].update(a.name for a in node.names if a.name in mods and a.name != m)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    graph = _graph()
    assert "rustcoder.merge.api" in graph and graph["rustcoder.eval.parallel"]  # the scan sees the package
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]



def _private_imports(package: Path) -> list[str]:
    """`from .x import _name` (or `from rustcoder.x import _name`) between different modules of ``package``."""
    found = []
    for f in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("rustcoder")):
                found += [f"{f.name}: from {'.' * node.level}{node.module or ''} import {a.name}"
                          for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_sandbox_modules_use_each_others_public_names_only():
    """Each sandbox module has a public surface: no module imports another's underscore names, no cycle."""
    sandbox = PACKAGE / "sandbox"
    assert len(list(sandbox.glob("*.py"))) >= 8  # the scan sees the package
    assert _private_imports(sandbox) == []
    graph = _graph()
    assert graph["rustcoder.sandbox.api"] and graph["rustcoder.sandbox.uids"]  # the graph sees the modules
    assert [c for c in _cycles(graph) if any(m.startswith("rustcoder.sandbox") for m in c)] == []


def test_the_private_import_finder_finds_one(tmp_path):
    (tmp_path / "a.py").write_text("from .b import _secret, public\nfrom . import c\nfrom .d import __version__\n")
    assert _private_imports(tmp_path) == ["a.py: from .b import _secret"]
