"""The architecture as rules the tree must keep (DESIGN.md "Layers").

Read from the source with `ast`: no import circle anywhere in sa3ckpt/ or tui/ (lazy and
TYPE_CHECKING imports count: a circle hidden in a function is still a circle);
code outside an `ops` package reaches it through its face (`sa3ckpt.ops.merge`, not
`sa3ckpt.ops.merge.driver`) and never takes an underscore name from another package; the CLI
never imports Textual; every face names only what exists.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OPS = ROOT / "sa3ckpt" / "ops"
OPS_PACKAGES = sorted(p.name for p in OPS.iterdir() if (p / "__init__.py").is_file())


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    files = [*(ROOT / "sa3ckpt").rglob("*.py"), *(ROOT / "tui").rglob("*.py")]
    return {_module_name(p): p for p in files}


SOURCES = _sources()


def _imports(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(module, names) for every absolute import in the file, at any depth."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in SOURCES}
    for name, path in SOURCES.items():
        for module, names in _imports(path):
            for target in [module, *(f"{module}.{n}" for n in names)]:
                if target in SOURCES and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
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
                    found.append(sorted(component))
    return found


def test_no_import_circle_anywhere() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def _ops_package(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] == ["sa3ckpt", "ops"] and len(parts) > 2 and parts[2] in OPS_PACKAGES:
        return parts[2]
    return None


def test_code_outside_an_ops_package_goes_through_its_face() -> None:
    offenders = []
    for name, path in SOURCES.items():
        own = _ops_package(name)
        for module, names in _imports(path):
            package = _ops_package(module)
            if package is None or package == own:
                continue
            if module != f"sa3ckpt.ops.{package}":
                offenders.append(f"{name} imports {module}")
            offenders += [f"{name} takes {module}.{n}" for n in names if n.startswith("_")]
    assert offenders == []


def test_cli_never_imports_textual() -> None:
    """The library and CLI import neither Textual nor the TUI; `sa3ckpt tui` alone starts the
    app, importing it only when that command runs."""
    offenders = [
        f"{name} imports {module}"
        for name, path in SOURCES.items()
        if name.startswith("sa3ckpt") and name != "sa3ckpt.cli.cmd_tui"
        for module, _ in _imports(path)
        if module.split(".")[0] in {"textual", "tui"}
    ]
    tree = ast.parse(SOURCES["sa3ckpt.cli.cmd_tui"].read_text(encoding="utf-8"))
    offenders += [
        f"sa3ckpt.cli.cmd_tui imports {node.module} at import time"
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        and (node.module or "").split(".")[0] in {"textual", "tui"}
    ]
    assert offenders == []


@pytest.mark.parametrize("package", OPS_PACKAGES)
def test_each_face_says_what_it_owns_and_names_only_what_exists(package: str) -> None:
    face = importlib.import_module(f"sa3ckpt.ops.{package}")
    assert face.__doc__ and len(face.__doc__.strip()) > 40
    assert face.__all__ and all(hasattr(face, n) for n in face.__all__)
