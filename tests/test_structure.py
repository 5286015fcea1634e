"""The package's shape: no import circles, a light public API, no reaching into other modules' privates.

The import graph is read from the source with ``ast``: an edge ``a -> b`` for each import of
``clipfuse`` module ``b`` at the top level of module ``a`` (inside ``if``/``try`` blocks too, but
not under ``if TYPE_CHECKING:``, which never runs). Imports inside functions are the lazy ones
(torch, celery, a module that builds an app when imported) and are not edges.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clipfuse"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _top_level_imports(node.body)
            yield from _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _top_level_imports(block)


def _imported(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> Iterator[tuple[str, str | None]]:
    """(module imported from, name imported or None) for each name of an import statement."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, None
        return
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    for alias in node.names:
        yield base, alias.name


def _target(source: str, name: str | None) -> str | None:
    """The clipfuse module an import runs: ``from pkg import sub`` runs ``pkg.sub``."""
    if name is not None and f"{source}.{name}" in MODULES:
        return f"{source}.{name}"
    return source if source in MODULES else None


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for module, (path, is_package) in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _top_level_imports(tree.body):
            for source, name in _imported(module, is_package, node):
                target = _target(source, name)
                if target is not None and target != module:
                    graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_graph_is_read_from_the_source() -> None:
    graph = import_graph()
    # known edges, so that a broken reader cannot pass the test below by finding no edges at all
    assert "clipfuse.ingest.pipeline" in graph["clipfuse.factory"] or "clipfuse.ingest.run" in graph["clipfuse.cli"]
    assert "clipfuse.workers.tasks" in graph["clipfuse.workers.app"]
    assert "clipfuse.console" in graph["clipfuse.demo.run"]


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_level_import_circles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_plugin_and_schemas_do_not_import_torch_open_clip_or_celery() -> None:
    code = (
        "import sys, clipfuse.plugin, clipfuse.schemas\n"
        "import clipfuse.plugin.qdrant, clipfuse.plugin.edge, clipfuse.plugin.elasticsearch\n"
        "print(sorted(m for m in ('torch', 'open_clip', 'celery') if m in sys.modules))"
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _private_imports() -> list[str]:
    """``from clipfuse.x import _name`` in another module, and ``module._name`` on an imported clipfuse module."""
    found = []
    for module, (path, is_package) in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        module_names: set[str] = set()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for (source, name), alias in zip(_imported(module, is_package, node), node.names, strict=True):
                if not source.startswith("clipfuse"):
                    continue
                if name is None:
                    module_names.add(alias.asname or source.split(".")[0])
                    continue
                if f"{source}.{name}" in MODULES:
                    module_names.add(alias.asname or name)
                if name.startswith("_") and source != module:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {source} import {name}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in module_names
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    assert _private_imports() == []


def test_only_the_entry_point_imports_the_cli() -> None:
    """``clipfuse.cli`` is the top: the commands it mounts share :mod:`clipfuse.console`, not its helpers."""
    importers = []
    for module, (path, is_package) in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = {_target(source, name) for source, name in _imported(module, is_package, node)}
                if "clipfuse.cli" in targets and module != "clipfuse.cli":
                    importers.append(f"{module}:{node.lineno}")
    assert importers == []
