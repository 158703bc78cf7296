"""The engine's layers import downwards only (docs/architecture.md): a module of a layer imports
from its own layer and the ones below it, type-only imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "core" / "src" / "taskyard"
SHARED = {"errors", "ids"}  # used by every layer
BELOW = {
    "domain": {"domain"},
    "store": {"store", "domain"},
    "actors": {"actors", "store", "domain"},
    "services": {"services", "actors", "store", "domain", "config"},
}


def engine_imports(path: Path) -> set[str]:
    """The first component of every `taskyard.<x>` module the file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "taskyard":
                names = [f"taskyard.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "taskyard" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", sorted(BELOW))
def test_a_layer_imports_only_what_lies_below_it(layer: str) -> None:
    modules = sorted((PACKAGE / layer).glob("*.py"))
    assert modules, f"no modules in {layer}/"
    upward = {
        f"{layer}/{path.name} imports taskyard.{target}"
        for path in modules
        for target in engine_imports(path) - BELOW[layer] - SHARED
    }
    assert not upward, sorted(upward)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from taskyard.http.routing import Call\nfrom taskyard import engine\n"
    )
    assert engine_imports(probe) == {"http", "engine"}


def test_the_domain_needs_no_event_loop_and_no_database() -> None:
    runtime = {"asyncio", "asyncpg", "aiohttp"}
    found = {
        f"domain/{path.name} imports {alias.name}"
        for path in sorted((PACKAGE / "domain").glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
        if alias.name.split(".")[0] in runtime
    }
    assert not found, sorted(found)


def test_only_the_command_line_imports_the_composition_root() -> None:
    """The engine builds and starts every layer; a layer importing it back would close a loop
    (the HTTP layer reaches the engine through `http.keys.Host`, a protocol)."""
    importers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "engine.py" and "engine" in engine_imports(path)
    )
    assert importers == ["cli.py"]


def _runtime_imports(root: Path, package: str) -> dict[str, set[str]]:
    """Each module's imports of its own package that run when it loads: module level, outside
    `if TYPE_CHECKING:` (imports inside functions run later, and are allowed to close a loop)."""
    modules = {
        ".".join((package, *path.relative_to(root).with_suffix("").parts)).removesuffix(
            ".__init__"
        ): path
        for path in root.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.split(".")[0] != package:
                    continue
                submodules = {f"{node.module}.{alias.name}" for alias in node.names}
                found |= submodules & modules.keys()
                if not submodules <= modules.keys():
                    found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names} & modules.keys()
        graph[name] = found & modules.keys() - {name}
    return graph


def _a_loop(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop, as the modules along it, if there is one."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for target in sorted(graph[name]):
            loop = visit(target, [*path, name])
            if loop is not None:
                return loop
        done.add(name)
        return None

    for name in sorted(graph):
        loop = visit(name, [])
        if loop is not None:
            return loop
    return None


@pytest.mark.parametrize(
    ("root", "package"),
    [(PACKAGE, "taskyard"), (PACKAGE.parents[2] / "sdk" / "src" / "taskyard_sdk", "taskyard_sdk")],
)
def test_no_import_loops_but_type_only_ones(root: Path, package: str) -> None:
    graph = _runtime_imports(root, package)
    assert len(graph) > 20, f"found only {len(graph)} modules under {root}"
    assert _a_loop(graph) is None


def test_the_loop_check_finds_a_loop() -> None:
    assert _a_loop({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
