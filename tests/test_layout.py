"""The parts of `edge/` import only downwards (cli → daemon → models, sources → ocr, delivery →
base), never sideways between parts of one tier, and no modules import each other in a loop."""

from __future__ import annotations

import ast
from pathlib import Path

import edge

PACKAGE = Path(edge.__file__).parent
TIER = {"cli": 4, "daemon": 3, "models": 2, "sources": 2, "ocr": 1, "delivery": 1, "base": 0}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    """The folder a module of `edge` lives in; `base` for the modules at the top."""
    pieces = module.split(".")
    if module == "edge.__main__":
        return "cli"
    return pieces[1] if len(pieces) > 2 or (len(pieces) == 2 and pieces[1] in TIER) else "base"


def edge_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every module of `edge` that `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known
                         else node.module for alias in node.names)
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    modules = edge_modules()
    return {name: imports_of(path, set(modules)) for name, path in modules.items()}


def upward_or_sideways(graph: dict[str, set[str]]) -> list[str]:
    """`a -> b` for each import that does not go down a tier or stay within its own part."""
    wrong = []
    for module, targets in graph.items():
        for target in targets:
            here, there = part_of(module), part_of(target)
            if here != there and TIER[there] >= TIER[here]:
                wrong.append(f"{module} ({here}) -> {target} ({there})")
    return sorted(wrong)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One loop through each set of modules that import each other, found depth first."""
    found, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_every_module_belongs_to_a_known_part():
    assert {part_of(name) for name in edge_modules()} <= set(TIER)
    assert part_of("edge.daemon.service") == "daemon" and part_of("edge.config") == "base"


def test_no_part_imports_a_higher_or_neighbouring_part():
    assert upward_or_sideways(import_graph()) == []


def test_no_modules_import_each_other_in_a_loop():
    assert cycles(import_graph()) == []


def test_the_checks_catch_an_upward_import_and_a_loop():
    graph = {"edge.config": {"edge.daemon.service"}, "edge.daemon.service": {"edge.config"}}
    assert upward_or_sideways(graph) == ["edge.config (base) -> edge.daemon.service (daemon)"]
    assert cycles(graph) == [["edge.config", "edge.daemon.service", "edge.config"]]
