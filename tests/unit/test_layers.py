"""The package's layers, checked from the source with ``ast``.

Every import inside ``durable/`` counts, at module level or inside a function, except those under
``if TYPE_CHECKING:``. The graph of modules must have no cycle, and no module may import one of a
higher layer. The pure core must not import redis, anyio or prometheus-client at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "durable"

#: lowest first; a module may import its own layer and the layers before it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("durable._embedded", "durable._config", "durable._loop")),
    ("core", ("durable._core",)),
    ("store", ("durable._store",)),
    ("runtime", ("durable._runtime",)),
    ("api", ("durable._client", "durable._sync_client", "durable._query", "durable._worker")),
    ("ops", ("durable._ops",)),
    ("sidecar", ("durable._sidecar",)),
    ("cli", ("durable.cli", "durable._cli", "durable.__main__")),
    ("package", ("durable",)),
    ("agents", ("durable.agents",)),
]
CORE_FORBIDDEN = ("redis", "anyio", "prometheus_client", "grpc", "durabletask", "google")
#: the optional extra ``durable[sidecar]``: only the sidecar package may import these
SIDECAR_ONLY = ("grpc", "durabletask", "google")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    skip.update(id(n) for n in ast.walk(child))
    return skip


def _imports(path: Path, modules: set[str]) -> tuple[set[str], set[str]]:
    """(durable modules imported, top-level external packages imported) by one file."""
    name = _module_name(path)
    package = name if _is_package(path) else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    internal: set[str] = set()
    external: set[str] = set()

    def add(target: str) -> None:
        if target == "durable" or target.startswith("durable."):
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target != name:
                internal.add(target)
        else:
            external.add(target)

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            for alias in node.names:
                candidate = f"{origin}.{alias.name}"
                add(candidate if candidate in modules else origin)
    return internal, external


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for name, path in files.items():
        graph[name], external[name] = _imports(path, modules)
    return graph, external


def _layer(module: str) -> int:
    best, best_len = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
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


def test_every_module_has_a_layer() -> None:
    graph, _ = _graph()
    assert [m for m in graph if _layer(m) < 0] == []


def test_no_import_cycles() -> None:
    graph, _ = _graph()
    # a package's __init__ importing its own modules is not a cycle worth reporting: drop those edges
    pruned = {m: {d for d in deps if d.rpartition(".")[0] != m} for m, deps in graph.items()}
    assert _cycles(pruned) == []


def test_no_upward_imports() -> None:
    graph, _ = _graph()
    upward = [
        f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if _layer(d) > _layer(m)
    ]
    assert upward == []


def test_nothing_imports_the_cli_or_the_top_package() -> None:
    graph, _ = _graph()
    offenders = [
        f"{m} imports {d}"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if d in ("durable", "durable.cli") and _layer(m) < _layer("durable.cli")
    ]
    assert offenders == []


def test_core_is_pure() -> None:
    _, external = _graph()
    bad = {
        m: sorted(x for x in e if x.split(".")[0] in CORE_FORBIDDEN)
        for m, e in external.items()
        if _layer(m) == 1
    }
    assert {m: e for m, e in bad.items() if e} == {}


def test_only_the_store_talks_to_redis() -> None:
    """Only the store (and the embedded server's launcher) imports a Redis client; other modules
    may catch ``redis.exceptions`` but never reach a connection (no ``.redis`` attribute)."""
    _, external = _graph()
    allowed = {"durable._embedded"}
    offenders = sorted(
        f"{m} imports {x}"
        for m, e in external.items()
        for x in e
        if x.split(".")[0] == "redis" and x != "redis.exceptions" and m not in allowed and _layer(m) != 2
    )
    assert offenders == []
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    reaching = sorted(
        f"{m}:{node.lineno}"
        for m, path in files.items()
        if _layer(m) != 2
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "redis"
    )
    assert reaching == [], "only durable._store may use the store's Redis connection"


@pytest.mark.parametrize("layer", [name for name, _ in LAYERS])
def test_layer_is_not_empty(layer: str) -> None:
    graph, _ = _graph()
    index = [name for name, _ in LAYERS].index(layer)
    assert any(_layer(m) == index for m in graph)


def test_only_the_sidecar_imports_the_protocol() -> None:
    """grpc and durabletask are an optional extra: nothing outside ``durable._sidecar`` imports them
    (the ``durable sidecar`` command loads the package by name when it runs)."""
    _, external = _graph()
    offenders = sorted(
        f"{m} imports {x}"
        for m, e in external.items()
        for x in e
        if x.split(".")[0] in SIDECAR_ONLY and not m.startswith("durable._sidecar")
    )
    assert offenders == []
