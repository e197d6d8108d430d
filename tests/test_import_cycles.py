"""No import cycle among the modules of `farm/` or `analysis/`, read from the source with `ast`.

Two graphs per package: the imports a module runs when it is imported (module level, `if`/`try`
blocks included), and those plus the imports inside functions. A function-level import is still a
dependency: a circle through one is a circle, only hidden until the function runs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "omk_ray"
PACKAGES = ["farm", "analysis"]


def imports(package: str, function_level: bool) -> dict[str, set[str]]:
    """module -> the sibling modules of `package` it imports."""
    folder = ROOT / package
    siblings = {p.stem for p in folder.glob("*.py")}
    prefix = f"omk_ray.{package}"
    graph: dict[str, set[str]] = {m: set() for m in siblings}
    for module in siblings:
        tree = ast.parse((folder / f"{module}.py").read_text())
        for node in _module_level(tree.body) if not function_level else ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith(prefix + "."):
                    target = name[len(prefix) + 1:].split(".")[0]
                    if target in siblings and target != module:
                        graph[module].add(target)
    return graph


def _module_level(body: list[ast.stmt]):
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            yield from _module_level([*node.body, *node.orelse, *getattr(node, "finalbody", []),
                                      *(s for h in getattr(node, "handlers", []) for s in h.body)])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary circle found by a depth-first search, each once (rotated to start at its least name)."""
    found: set[tuple[str, ...]] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                circle = path[path.index(nxt):]
                i = circle.index(min(circle))
                found.add(tuple(circle[i:] + circle[:i]))
            elif len(path) < 12:
                visit(nxt, [*path, nxt])

    for start in sorted(graph):
        visit(start, [start])
    return [list(c) for c in sorted(found)]


def test_the_cycle_finder_finds_a_circle_and_only_circles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_reader_sees_module_and_function_level_imports_apart():
    farm_top, farm_all = imports("farm", False), imports("farm", True)
    assert "planner" in farm_top["runner"]  # `from omk_ray.farm.planner import ...` at the top
    assert all(farm_top[m] <= farm_all[m] for m in farm_top)


@pytest.mark.parametrize("package", PACKAGES)
@pytest.mark.parametrize("function_level", [False, True], ids=["module-level", "with-function-level"])
def test_no_import_cycle(package, function_level):
    found = cycles(imports(package, function_level))
    assert found == [], f"import circles in omk_ray/{package}: " + "; ".join(" -> ".join([*c, c[0]]) for c in found)
