"""The package's imports go one way, with no cycle: read from the source (AST), not run.

Layers, lowest first: models < relay < engine (storage, wait, delivery, ledger) <
credentials < tasks < flows < cli. A module may import its own layer and the ones below.
The credentials block sits above the engine because a block may hand out clients the
engine uses, while the engine only ever works on clients, never on blocks. The simulator
may import only itself and the models; its pytest plugin also the credentials; the command
line anything. Nothing in
the package imports the package `__init__` (the public surface, which loads lazily).
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[2] / "luma_prefect"

# Longest prefix wins.
PARTS: dict[str, str] = {
    "luma_prefect._exceptions": "models",
    "luma_prefect._models": "models",
    "luma_prefect._ids": "models",
    "luma_prefect._outcomes": "models",
    "luma_prefect._retry": "models",
    "luma_prefect._urls": "models",
    "luma_prefect._tls": "models",
    "luma_prefect.relay": "relay",
    "luma_prefect.storage": "engine",
    "luma_prefect.wait": "engine",
    "luma_prefect.delivery": "engine",
    "luma_prefect.ledger": "engine",
    "luma_prefect.credentials": "credentials",
    "luma_prefect.tasks": "tasks",
    "luma_prefect.flows": "flows",
    "luma_prefect.cli": "cli",
    "luma_prefect.fleet": "cli",
    # The command line's private Prefect home: used by it alone.
    "luma_prefect._prefect_home": "cli",
    "luma_prefect.simulator": "simulator",
    "luma_prefect.simulator.pytest_plugin": "simulator-plugin",
}
ORDER = ["models", "relay", "engine", "credentials", "tasks", "flows", "cli"]
ALLOWED: dict[str, set[str]] = {
    **{layer: set(ORDER[: i + 1]) for i, layer in enumerate(ORDER)},
    "simulator": {"models", "simulator"},
    "simulator-plugin": {"models", "simulator", "credentials", "simulator-plugin"},
    # The command line runs it all, the simulator too.
    "cli": {*ORDER, "simulator"},
    # The package `__init__` re-exports from every layer but the command line.
    "surface": set(ORDER) - {"cli"},
}


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`: no import happens at run time


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, tree: ast.AST, modules: Mapping[str, object]) -> Iterator[Import]:
    """Every import of a luma_prefect module in `tree`, wherever it stands (also in functions).

    `from a import b` counts as an import of `a.b` when that is a module, else of `a`.
    """

    def visit(node: ast.AST, type_only: bool) -> Iterator[Import]:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, True)
            for child in node.orelse:
                yield from visit(child, type_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(source, alias.name, node.lineno, type_only)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = source if _is_package(source) else source.rpartition(".")[0]
                base = importlib.util.resolve_name("." * node.level + base, package)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield Import(
                    source, candidate if candidate in modules else base, node.lineno, type_only
                )
        for child in ast.iter_child_nodes(node):
            yield from visit(child, type_only)

    for found in visit(tree, False):
        if found.target == "luma_prefect" or found.target.startswith("luma_prefect."):
            yield found


def _is_package(module: str) -> bool:
    return (ROOT.parent / module.replace(".", "/") / "__init__.py").exists()


def layer_of(module: str) -> str:
    if module == "luma_prefect":
        return "surface"
    matches = [p for p in PARTS if module == p or module.startswith(p + ".")]
    if not matches:
        raise KeyError(module)
    return PARTS[max(matches, key=len)]


def part_of(module: str) -> str:
    """The top-level piece a module belongs to: `luma_prefect.relay`, `luma_prefect._models`."""
    return ".".join(module.split(".")[:2])


def all_imports() -> list[Import]:
    modules = package_modules()
    found: list[Import] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found.extend(imports_of(name, tree, modules))
    return found


def layer_violations(imports: list[Import]) -> list[str]:
    bad = []
    for imp in imports:
        source, target = layer_of(imp.source), layer_of(imp.target)
        if target not in ALLOWED[source]:
            kind = " (type-only)" if imp.type_only else ""
            bad.append(f"{imp.source}:{imp.line} ({source}) imports {imp.target} ({target}){kind}")
    return bad


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node, or a node importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def import_graph(
    imports: list[Import], key: object = None, *, type_only: bool = True
) -> dict[str, set[str]]:
    """Who imports whom; `type_only=False` leaves out imports under TYPE_CHECKING."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.type_only and not type_only:
            continue
        source, target = imp.source, imp.target
        if key is part_of:
            source, target = part_of(source), part_of(target)
            if source == target:
                continue
        graph.setdefault(source, set()).add(target)
    return graph


def test_every_module_has_a_layer() -> None:
    """A new module must be placed in the map (so the rule below covers it)."""
    missing = []
    for name in package_modules():
        try:
            layer_of(name)
        except KeyError:
            missing.append(name)
    assert missing == []


def test_imports_only_go_down_the_layers() -> None:
    assert layer_violations(all_imports()) == []


def test_no_import_cycle_between_modules() -> None:
    """Not even through an import for the type checker only: a cycle is a cycle to a reader."""
    assert cycles(import_graph(all_imports())) == []


def test_no_import_cycle_between_parts() -> None:
    """Nor between the parts (relay, storage, delivery, ...), whatever modules close it."""
    assert cycles(import_graph(all_imports(), key=part_of)) == []


def test_the_checks_catch_what_they_look_for() -> None:
    """The checker itself: a cycle, an upward import and a simulator import are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from luma_prefect.credentials import LumaRelayCredentials\n"
        "def f():\n"
        "    from luma_prefect.tasks import _common\n"
        "    from . import _config\n"
    )
    modules = {"luma_prefect.tasks._common": None, "luma_prefect.simulator._config": None}
    found = list(imports_of("luma_prefect.simulator._server", tree, modules))
    assert [(i.target, i.type_only) for i in found] == [
        ("luma_prefect.credentials", True),
        ("luma_prefect.tasks._common", False),
        ("luma_prefect.simulator._config", False),
    ]
    assert len(layer_violations(found)) == 2
    upward = Import("luma_prefect._models", "luma_prefect.relay._client", 1, False)
    assert layer_violations([upward])
