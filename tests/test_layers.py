"""The package's import structure: no cycle, and the layers only import downwards.

Every ``import`` of every module counts, at any depth: inside functions, under
``if TYPE_CHECKING:``, in ``try`` blocks. Relative imports are resolved against the module's
package. Layers, bottom to top (a module imports only its own layer or lower ones):

0. ``flwr_byz`` itself, ``flwr_byz.specs`` (spec-string parsing shared by the registries),
   ``flwr_byz.files`` (atomic writes) and ``flwr_byz.statetree`` (objects' state as tensors and
   JSON, for checkpoints);
1. ``methods``, ``aggregators``, ``compressors``, ``attacks``: pure torch, no ``flwr`` import;
2. ``protocol``: the wire contract (keys, ArrayRecord bridge, payload records);
3. ``strategies`` and ``clients``: the Flower edge; neither imports the other;
4. ``simulations``: the app layer's engines, round loop, data sets, models and results;
5. ``deployment``: the loopback deployment (it runs the simulations' round loop; the
   simulations never import it);
6. ``reproduce``: the reproduction pipeline (it runs experiments, and measures deployments);
   ``bench``: the benchmarks (aggregators against Flower and ByzFL, engines against a plain
   loop). Same layer, never each other: the reproduction's performance section runs the
   aggregator benchmark as a child process (``python -m flwr_byz.bench.aggregators``, a fresh
   process for its thread count and memory probes), so neither imports the other;
7. ``cli`` / ``__main__``: the one entry point over everything.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "flwr_byz"

LAYERS: dict[str, int] = {
    "": 0,
    "specs": 0,
    "files": 0,
    "interrupt": 0,
    "statetree": 0,
    "methods": 1,
    "aggregators": 1,
    "compressors": 1,
    "attacks": 1,
    "protocol": 2,
    "strategies": 3,
    "clients": 3,
    "simulations": 4,
    "deployment": 5,
    "reproduce": 6,
    "bench": 6,
    "cli": 7,
    "__main__": 7,
}
PURE = {"methods", "aggregators", "compressors", "attacks"}  # no Flower import
APART = {  # same layer, never each other
    ("strategies", "clients"),
    ("clients", "strategies"),
    ("reproduce", "bench"),
    ("bench", "reproduce"),
}


@dataclass
class Graph:
    """Module -> the package's modules it imports; module -> external top-level names."""

    internal: dict[str, set[str]] = field(default_factory=dict)
    external: dict[str, set[str]] = field(default_factory=dict)
    lines: dict[tuple[str, str], int] = field(default_factory=dict)  # (src, dst) -> line


def module_name(path: Path, root: Path) -> str:
    """Dotted name of the module at ``path`` (a package's ``__init__`` is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(
    tree: ast.AST, module: str, is_package: bool, modules: Collection[str]
) -> Iterator[tuple[str, int]]:
    """The absolute name of every module an import statement anywhere in ``tree`` imports:
    ``import a.b`` -> ``a.b``; ``from a import b`` -> ``a.b`` when that is a module of
    ``modules`` (a submodule), else ``a`` (b is an attribute of a)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                if node.level - 1 > len(base):
                    raise ValueError(f"{module}:{node.lineno}: relative import beyond the top")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in modules else target), node.lineno


def build_graph(root: Path, package: str) -> Graph:
    """The import graph of ``package`` (a directory under ``root``)."""
    files = sorted((root / package).rglob("*.py"))
    modules = {module_name(p, root): p for p in files}
    graph = Graph()
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        deps: set[str] = set()
        ext: set[str] = set()
        for target, line in _imports(tree, name, path.name == "__init__.py", modules):
            if target == package or target.startswith(package + "."):
                if target in modules and target != name:
                    deps.add(target)
                    graph.lines.setdefault((name, target), line)
            elif target:
                ext.add(target.split(".")[0])
        graph.internal[name] = deps
        graph.external[name] = ext
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component of ``graph``."""
    return [_cycle_in(graph, set(c)) for c in strongly_connected(graph)]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, each sorted (Tarjan's
    algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    start = min(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError("a strongly connected component without a cycle")


def _part(module: str, package: str) -> str:
    """The top-level part of ``package`` that ``module`` belongs to (``""``: the root)."""
    rest = module[len(package) :].lstrip(".")
    return rest.split(".")[0] if rest else ""


def layer_violations(graph: Graph, package: str) -> list[str]:
    """Every import that breaks the layer rules (module doc), as readable lines."""
    out = []
    for src, deps in sorted(graph.internal.items()):
        part = _part(src, package)
        if part not in LAYERS:
            out.append(f"{src}: {part!r} is in no layer (add it to LAYERS)")
            continue
        if part in PURE and "flwr" in graph.external[src]:
            out.append(f"{src}: imports flwr (the {part} layer is pure torch)")
        for dst in sorted(deps):
            other = _part(dst, package)
            line = graph.lines[(src, dst)]
            if other not in LAYERS:
                continue  # reported as the source of its own imports
            if LAYERS[other] > LAYERS[part]:
                out.append(f"{src}:{line} imports {dst} (layer {other} is above {part})")
            elif (part, other) in APART:
                out.append(
                    f"{src}:{line} imports {dst} ({part} and {other} never import each other)"
                )
    return out


# --- the package -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph(ROOT, PACKAGE)


def test_graph_sees_the_package(graph: Graph) -> None:
    """Sanity: the walk found the layers and resolved relative imports."""
    assert f"{PACKAGE}.protocol.keys" in graph.internal
    assert f"{PACKAGE}.protocol.keys" in graph.internal[f"{PACKAGE}.strategies.method"]
    assert "flwr" in graph.external[f"{PACKAGE}.strategies.method"]
    assert len(graph.internal) > 50


def test_no_import_cycle(graph: Graph) -> None:
    components = strongly_connected(graph.internal)
    report = [
        " -> ".join(_cycle_in(graph.internal, set(c))) + f"\n  (all of: {', '.join(c)})"
        for c in components
    ]
    assert not components, "import cycles:\n" + "\n".join(report)


def test_layers_import_downwards(graph: Graph) -> None:
    bad = layer_violations(graph, PACKAGE)
    assert not bad, "layer violations:\n" + "\n".join(bad)


# --- the checker catches what it should (a synthetic package) ----------------------------------
def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_hidden_cycle_and_violations(tmp_path: Path) -> None:
    """A cycle through a function-level import and a TYPE_CHECKING block, a clients ->
    strategies import inside a function, flwr in the pure layer and protocol reaching up."""
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/clients/__init__.py": "from .a import f\n",
            "pkg/clients/a.py": "def f():\n    from .b import g\n    from ..strategies import s\n",
            "pkg/clients/b.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
            ),
            "pkg/strategies/__init__.py": "",
            "pkg/strategies/s.py": "from pkg.protocol.keys import K\n",
            "pkg/protocol/__init__.py": "",
            "pkg/protocol/keys.py": (
                "K = 1\ntry:\n    import pkg.simulations.other\nexcept ImportError:\n    pass\n"
            ),
            "pkg/methods/__init__.py": "",
            "pkg/methods/m.py": "def step():\n    from flwr.app import Message\n",
            "pkg/simulations/__init__.py": "",
            "pkg/simulations/run.py": "from ..clients import a\nfrom ..strategies.s import K\n",
            "pkg/simulations/other.py": "",
        },
    )
    graph = build_graph(tmp_path, "pkg")
    assert graph.internal["pkg.strategies.s"] == {"pkg.protocol.keys"}
    assert find_cycles(graph.internal) == [["pkg.clients.a", "pkg.clients.b", "pkg.clients.a"]]
    bad = layer_violations(graph, "pkg")
    assert len(bad) == 3, bad
    assert any("pkg.clients.a:3 imports pkg.strategies" in b for b in bad)
    assert any("pkg.methods.m: imports flwr" in b for b in bad)
    assert any("pkg.protocol.keys:3 imports pkg.simulations.other" in b for b in bad)
    assert not any(b.startswith("pkg.simulations") for b in bad)  # the app layer may


def test_checker_reports_longer_cycles_and_accepts_a_dag(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/aggregators/__init__.py": "from .x import X\n",
            "pkg/aggregators/x.py": "from . import y\nX = 1\n",
            "pkg/aggregators/y.py": "import pkg.aggregators.z\n",
            "pkg/aggregators/z.py": "def late():\n    from pkg.aggregators import x\n",
        },
    )
    graph = build_graph(tmp_path, "pkg")
    cycles = find_cycles(graph.internal)
    assert cycles == [
        ["pkg.aggregators.x", "pkg.aggregators.y", "pkg.aggregators.z", "pkg.aggregators.x"]
    ]
    (tmp_path / "pkg/aggregators/z.py").write_text("Z = 0\n")
    assert find_cycles(build_graph(tmp_path, "pkg").internal) == []
