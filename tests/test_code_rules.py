"""Rules about the code itself, read from the source with ``ast`` (nothing is imported):

* no import cycle among the ``api`` modules, imports inside functions included (a lazy import
  hides a cycle, it does not end it): api/platform/problems.py once imported the dashboard to
  render its error page, and the dashboard imports the problems;
* no private name (``_name``) imported from another module anywhere in the project: a name shared
  across modules is public, with a name that says what it is.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".venv", ".git", "node_modules", "test-artifacts", "data", "build", "dist"}
# Reasoned exceptions, each with its reason:
# * core/workflow_runner.py subclasses the SDK's sandboxed workflow instance, which the SDK keeps in a
#   private module (there is no public hook for what it changes); tests/test_workflow_runner.py
#   fails if the SDK renames what it overrides.
PRIVATE_IMPORTS_ALLOWED: set[tuple[str, str, str]] = {
    ("core/workflow_runner.py", "temporalio.worker.workflow_sandbox", "_runner"),
}


def python_files(under: Path = ROOT) -> Iterator[Path]:
    for path in sorted(under.rglob("*.py")):
        if not SKIP_DIRS.intersection(path.relative_to(ROOT).parts):
            yield path


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The modules among ``known`` that the file imports, anywhere in it."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .a import b
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in known:
                    found.add(submodule)
                elif base in known:
                    found.add(base)
    return found


def import_cycles(package: str) -> list[list[str]]:
    """Every cycle (strongly connected set of two or more modules, or a module importing itself)."""
    files = {module_name(p): p for p in python_files(ROOT / package)}
    known = set(files)
    graph = {name: imported_modules(path, known) - {name} for name, path in files.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return cycles


def private_imports() -> list[str]:
    found = []
    for path in python_files():
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    if private and (rel, node.module, alias.name) not in PRIVATE_IMPORTS_ALLOWED:
                        found.append(f"{rel}:{node.lineno}: from {node.module} import {alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if any(p.startswith("_") and not p.startswith("__") for p in alias.name.split(".")):
                        found.append(f"{rel}:{node.lineno}: import {alias.name}")
    return found


def test_no_import_cycle_among_api_modules():
    assert import_cycles("api") == []


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def later():\n    from pkg.a import thing\n")
    (package / "c.py").write_text("from . import a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert import_cycles("pkg") == [["pkg.a", "pkg.b"]]


def test_no_private_name_is_imported_across_modules():
    assert private_imports() == []


def test_the_problems_do_not_import_the_dashboard():
    problems = ROOT / "api" / "platform" / "problems.py"
    known = {module_name(p) for p in python_files(ROOT / "api")}
    assert not {m for m in imported_modules(problems, known) if m.startswith("api.ui")}
