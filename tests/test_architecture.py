"""The layers of design.md §2: no import cycle in the engine, lower layers never import upper ones.

Read from the source with ``ast`` (type-only imports count too), so a cycle hidden behind
``TYPE_CHECKING`` or a lazy import is found as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

SRC = REPO_ROOT / "src"


def _module(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every fedlora module and the fedlora modules it imports (by their full names)."""
    modules = {_module(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    found.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _cycle(graph: dict[str, set[str]], nodes: set[str]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node] & nodes):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(nodes):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_engine_has_no_import_cycle() -> None:
    graph = _imports()
    engine = {m for m in graph if m.startswith("fedlora.engine.")}
    assert len(engine) >= 10
    assert _cycle(graph, engine) is None, _cycle(graph, engine)


def test_lower_layers_never_import_upper_ones() -> None:
    graph = _imports()
    lower = ("fedlora.lora", "fedlora.aggregation", "fedlora.ranks", "fedlora.data")
    upper = ("fedlora.model", "fedlora.engine", "fedlora.flower", "fedlora.commands")
    for module, imported in graph.items():
        if module.startswith(lower):
            bad = [m for m in imported if m.startswith(upper)]
            assert not bad, f"{module} imports {bad}"
        if not module.startswith(("fedlora.flower", "fedlora.commands")):
            flower = [m for m in imported if m.startswith("fedlora.flower")]
            assert not flower, f"{module} imports {flower}: only the Flower layer may"
