"""The engine's structure (issue 12): no import cycles among its modules, lazy imports
included, and no module over 500 lines. The layer contracts themselves are checked by
import-linter in .ci/run (`[tool.importlinter]` in pyproject.toml)."""

from __future__ import annotations

from pathlib import Path

import grimp
import networkx as nx

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_cycles_among_engine_modules() -> None:
    graph = grimp.build_graph("engine", "tasks")
    edges = nx.DiGraph()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            edges.add_edge(module, imported)
    cycles = [sorted(c) for c in nx.strongly_connected_components(edges) if len(c) > 1]
    assert cycles == []


def test_no_module_over_500_lines() -> None:
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for folder in ("engine", "tasks")
        for path in (ROOT / folder).rglob("*.py")
    }
    assert {path: n for path, n in sizes.items() if n > 500} == {}
