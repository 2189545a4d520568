"""The architecture, read from the imports (every import statement, also those inside functions): no
circle of imports, and no import running back up. Between packages data flows prototxt -> converters ->
zoo; inside zoo the roles are layered: models (data, built-in architectures) -> hub (cards, registry,
downloads, resolving a model) and the net descriptions (netinfo, drawing) -> inference (images, the
transform, onnxruntime) -> training -> the front door (zoo/__init__.py) -> cli -> __main__.
See docs/architecture.md."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGES = ("prototxt", "converters", "zoo")
# (module-name prefix, layer): a module belongs to the layer of its longest matching prefix.
LAYERS = [
    ("prototxt", 0),
    ("converters", 1),
    ("zoo.models", 2),
    ("zoo.hub", 3), ("zoo.netinfo", 3), ("zoo.drawing", 3),
    ("zoo.inference", 4),
    ("zoo.training", 5),
    ("zoo", 6),            # the front door: zoo/__init__.py
    ("zoo.cli", 7),
    ("zoo.__main__", 8),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            found[module_name(path)] = path
    return found


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".") if is_package else name.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _defines(tree: ast.Module) -> set[str]:
    """The names a module defines at its top (functions, classes, assignments)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from a import b``: the module ``a.b`` unless package
    ``a`` itself defines ``b``)."""
    known = modules()
    trees = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in known.items()}
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        edges: set[str] = set()
        for node in ast.walk(trees[name]):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, name, path.name == "__init__.py")
                own = _defines(trees[base]) if base in trees else set()
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known and alias.name not in own
                           else base for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]  # `import a.b.c` of a non-module: its package
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def layer(name: str) -> int:
    return max((len(prefix), rank) for prefix, rank in LAYERS if name == prefix or name.startswith(prefix + "."))[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert cycles(imports()) == []


def test_no_import_runs_back_up():
    upward = sorted(f"{src} -> {dst}" for src, targets in imports().items() for dst in targets
                    if layer(dst) > layer(src))
    assert upward == []


def test_zoo_uses_only_the_public_api_of_prototxt_and_converters():
    """zoo imports converters and prototxt through their packages (their __init__.py), besides prototxt's
    public modules for Caffe's messages and atomic files."""
    allowed = {"prototxt.caffe_pb2", "prototxt.fileio"}
    bad = sorted(f"{src} -> {dst}" for src, targets in imports().items() if src.split(".")[0] == "zoo"
                 for dst in targets if dst.startswith("converters.") or (dst.startswith("prototxt.")
                                                                         and dst not in allowed))
    assert bad == []


def test_zoo_has_at_most_ten_modules_at_its_top():
    top = [p for p in (REPO / "zoo").iterdir() if p.suffix == ".py"]
    assert len(top) <= 10, sorted(p.name for p in top)


def test_the_graph_reader_finds_real_edges():
    graph = imports()
    assert "zoo.hub.registry" in graph["zoo.hub.resolve"] and "prototxt" in graph["zoo.hub.resolve"]
    assert "converters.registry" in graph["converters.layers.conv"]  # a relative import, resolved
    assert layer("zoo.cli.info") == 7 and layer("zoo") == 6 and layer("zoo.models.arch.vgg") == 2
