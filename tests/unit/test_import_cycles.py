"""No import cycle between the gateway and the async worker (issue 18, item 6).

The graph is read from the source (every ``import``, at module level, in functions and under TYPE_CHECKING
alike) and collapsed to kubelambda's subpackages: ``kubelambda.gateway`` may use ``kubelambda.asyncworker``
(it runs the worker in process and publishes Events), never the other way round, directly or through another
package. What both need (header names, the agent's outcomes) is in the neutral ``kubelambda.outcomes``.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Set
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "operator" / "kubelambda"
ACYCLIC = ("kubelambda.gateway", "kubelambda.asyncworker")


def _unit(module: str) -> str:
    """``kubelambda.gateway.app`` → ``kubelambda.gateway``: a subpackage, or a top-level module."""
    return ".".join(module.split(".")[:2])


def package_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Subpackage → the subpackages its modules import. ``__main__`` modules are left out: they are entry
    points (``python -m``), which importing their package never runs."""
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        if path.name == "__main__.py":
            continue
        parts = path.relative_to(root.parent).with_suffix("").parts
        source = _unit(".".join(parts))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "kubelambda" and _unit(name) != source:
                    graph.setdefault(source, set()).add(_unit(name))
    return graph


def reachable(graph: Mapping[str, Set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycle_through(graph: Mapping[str, Set[str]], unit: str) -> list[str]:
    """The units on an import cycle through ``unit`` (empty when there is none)."""
    return sorted(u for u in reachable(graph, unit) if unit in reachable(graph, u))


def test_the_graph_is_read_from_the_source() -> None:
    graph = package_graph()
    assert "kubelambda.asyncworker" in graph["kubelambda.gateway"]  # the in-process worker, the queue
    assert "kubelambda.outcomes" in graph["kubelambda.asyncworker"]


def test_a_cycle_is_found_when_there_is_one(tmp_path: Path) -> None:
    """The check itself: a package whose gateway and asyncworker import each other (one of them in a function)
    has a cycle through both."""
    root = tmp_path / "kubelambda"
    for sub, text in {
        "gateway": "from kubelambda.asyncworker.queue import EventQueue\n",
        "asyncworker": "def run() -> None:\n    from kubelambda.gateway.app import Gateway\n",
    }.items():
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text("")
        (root / sub / "mod.py").write_text(text)
    graph = package_graph(root)
    assert cycle_through(graph, "kubelambda.gateway") == ["kubelambda.asyncworker", "kubelambda.gateway"]


def test_no_cycle_through_the_gateway_or_the_async_worker() -> None:
    graph = package_graph()
    for unit in ACYCLIC:
        assert cycle_through(graph, unit) == [], f"an import cycle through {unit}"
