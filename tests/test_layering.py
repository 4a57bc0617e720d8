"""The folder layout is the architecture: every import follows the layering, no import cycles, small modules.

Imports are read from the source (ast), all of them: top-level, inside functions and under TYPE_CHECKING,
because a lazy import is still an arrow a reader has to follow. The rules are the ones in
docs/architecture.md; a failure names the file, the line and the rule it breaks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocols", "models", "edge_agent", "cloud_hub")
# Code that is not shipped in the wheel but lives in the repository: it may use the packages, never tests.
TOOLS = ("deploy", "bench")
MAX_LINES = 400

# Who may import whom across the top level (the design's arrows; a package may always import itself).
TOP_LEVEL: dict[str, set[str]] = {
    "protocols": set(),
    "models": {"protocols"},
    "edge_agent": {"protocols", "models"},
    "cloud_hub": {"protocols", "models"},
    "deploy": {"protocols", "models", "edge_agent", "cloud_hub"},
    "bench": {"protocols", "models", "edge_agent", "cloud_hub", "deploy"},
}

# Layers inside a package, bottom first. A module may import its own group and any group of a lower
# layer; groups in the same layer are peers that may not import each other unless PEER_ALLOWED says so.
# The most specific (longest) prefix decides a module's group; the package name alone means its __init__.
LAYERS: dict[str, list[list[str]]] = {
    "edge_agent": [
        ["edge_agent"],
        ["edge_agent.errors"],
        ["edge_agent.config"],
        ["edge_agent.metrics"],
        ["edge_agent.store"],
        ["edge_agent.probe"],
        ["edge_agent.scheduler", "edge_agent.offload"],
        ["edge_agent.serving"],
        ["edge_agent.http", "edge_agent.fleet", "edge_agent.reconcile", "edge_agent.cell"],
        ["edge_agent.app"],
        ["edge_agent.doctor"],
        ["edge_agent.cli"],
        ["edge_agent.__main__"],
    ],
    "cloud_hub": [
        ["cloud_hub"],
        ["cloud_hub.errors"],
        ["cloud_hub.files"],
        ["cloud_hub.config"],
        ["cloud_hub.metrics"],
        ["cloud_hub.pki"],
        ["cloud_hub.store"],
        ["cloud_hub.broker"],
        ["cloud_hub.fleet"],
        ["cloud_hub.registry"],
        ["cloud_hub.ingest", "cloud_hub.rollouts"],
        ["cloud_hub.api"],
        ["cloud_hub.dashboard"],
        ["cloud_hub.app"],
        ["cloud_hub.cli"],
        ["cloud_hub.__main__"],
    ],
}
PEER_ALLOWED: set[tuple[str, str]] = {
    ("edge_agent.reconcile", "edge_agent.fleet"),  # the reconciler reports through the device's link
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in (*PACKAGES, *TOOLS):
        for path in sorted((ROOT / top).rglob("*.py")):
            found[_module_name(path)] = path
    return found


SOURCES = _sources()


def _resolve(module: str, names: list[str]) -> Iterator[str]:
    """Modules an import statement names: `from a.b import c` is `a.b.c` when that is a module, else `a.b`."""
    if not names:
        yield module
        return
    for name in names:
        candidate = f"{module}.{name}"
        yield candidate if candidate in SOURCES else module


def _imports(name: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for target in _resolve(module, [a.name for a in node.names]):
                yield node.lineno, target


def _internal(target: str) -> str | None:
    """The project module an import refers to, or None for the standard library and third parties."""
    top = target.split(".", 1)[0]
    if top not in TOP_LEVEL and top != "tests":
        return None
    while target and target not in SOURCES:
        target = target.rpartition(".")[0]
    return target or top


GRAPH: dict[str, list[tuple[int, str]]] = {
    name: sorted({(line, t) for line, raw in _imports(name, path) if (t := _internal(raw)) is not None})
    for name, path in SOURCES.items()
}


def _group(package: str, module: str) -> tuple[int, str]:
    best: tuple[int, str] | None = None
    for depth, layer in enumerate(LAYERS[package]):
        for prefix in layer:
            # The package itself (its __init__) is matched exactly, every other group as a prefix.
            matches = module == prefix or (prefix != package and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > len(best[1])):
                best = (depth, prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer of {package}: add it to LAYERS in {Path(__file__).name}")
    return best


def test_top_level_arrows_point_one_way() -> None:
    """protocols <- models <- {edge_agent, cloud_hub}; the agent and the hub never import each other."""
    broken = []
    for name, edges in GRAPH.items():
        top = name.split(".", 1)[0]
        for line, target in edges:
            other = target.split(".", 1)[0]
            if other != top and other not in TOP_LEVEL[top]:
                broken.append(f"{SOURCES[name].relative_to(ROOT)}:{line} imports {target}")
    assert not broken, "imports against the top-level layering:\n" + "\n".join(broken)


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_layers_inside_a_package(package: str) -> None:
    """Inside a package, imports go to the same group or down a layer (see LAYERS)."""
    broken = []
    for name, edges in GRAPH.items():
        if name.split(".", 1)[0] != package:
            continue
        depth, group = _group(package, name)
        for line, target in edges:
            if target.split(".", 1)[0] != package:
                continue
            other_depth, other = _group(package, target)
            if other == group or other_depth < depth or (group, other) in PEER_ALLOWED:
                continue
            where = "a peer" if other_depth == depth else "a higher layer"
            broken.append(f"{SOURCES[name].relative_to(ROOT)}:{line} imports {target} ({where}: {other})")
    assert not broken, f"imports against the layering of {package}:\n" + "\n".join(broken)


def _cycles() -> list[list[str]]:
    """Strongly connected components of the module graph with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for _, target in GRAPH.get(node, []):
            if target == node or target not in SOURCES:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    """No module imports itself back through others (lazy imports included)."""
    cycles = _cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_tools_never_import_tests() -> None:
    """The harness and the benchmarks stand on the packages, not on the test suite."""
    broken = [
        f"{SOURCES[name].relative_to(ROOT)}:{line} imports {target}"
        for name, edges in GRAPH.items()
        for line, target in edges
        if target.split(".", 1)[0] == "tests"
    ]
    assert not broken, "\n".join(broken)


def test_modules_stay_small() -> None:
    """No Python module in the repository is over MAX_LINES lines."""
    paths = [p for top in (*PACKAGES, *TOOLS, "tests") for p in (ROOT / top).rglob("*.py")]
    long = sorted(f"{p.relative_to(ROOT)}: {n}" for p in paths if (n := len(p.read_text().splitlines())) > MAX_LINES)
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(long)


def test_the_rules_see_the_code() -> None:
    """Guard against a walker that reads nothing: known arrows of the design are found, lazy ones too."""
    assert "models.package" in {t for _, t in GRAPH["edge_agent.store"]}
    assert "protocols.manifest" in {t for _, t in GRAPH["models.package"]}
    lazy = [t for _, t in GRAPH["models.runtimes.factory"]]  # runtimes are imported inside the factory
    assert any(t.startswith("models.runtimes.") for t in lazy)
    assert len(SOURCES) > 150
