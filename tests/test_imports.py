"""The import graph of trio_echo: modules import one way (no cycles), and the sans-IO ones no I/O.

The graph is read from the source (every ``import`` of a trio_echo module,
including those under ``if TYPE_CHECKING:`` and inside functions: each is a
dependency someone has to know about), and each module is also imported alone
in a fresh interpreter, so none works only because another was imported first.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ROOT, run_python

SRC = ROOT / "src"
PACKAGE = SRC / "trio_echo"

#: Imports that close a cycle (none are left: the session and its parts see their
#: connection through ``context.ConnectionView``, metrics read a ``MetricsSource``).
#: Nothing may be added.
KNOWN_BACK_EDGES: set[tuple[str, str]] = set()

#: Modules with no I/O: they may import neither these nor a module that does.
SANS_IO = [
    "trio_echo.wire",
    "trio_echo.errors",
    "trio_echo.client.core",
    "trio_echo.proxy_protocol",
    "trio_echo.server.service",
]
IO_MODULES = {"trio", "socket", "threading", "asyncio", "selectors", "ssl", "select"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def package_of(name: str) -> str:
    """The package that ``name``'s relative imports start from."""
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def imported_module(node: ast.ImportFrom, package: str) -> str:
    """The module a ``from ... import`` names, relative ones resolved from ``package``."""
    if node.level == 0:
        assert node.module is not None
        return node.module
    parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join([*parent, node.module] if node.module else parent)


def imports(name: str) -> Iterator[str]:
    """Every module ``name`` imports: trio_echo ones by full name, others by their top name."""
    package = package_of(name)
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name if alias.name.startswith("trio_echo") else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = imported_module(node, package)
            if not base.startswith("trio_echo"):
                yield base.split(".")[0]
                continue
            for alias in node.names:
                # "from . import wire" imports the module trio_echo.wire;
                # "from .errors import RemoteError" the module trio_echo.errors.
                sub = f"{base}.{alias.name}"
                yield sub if sub in MODULES else base


def names_used_from(target: str, name: str) -> Iterator[str]:
    """The names module ``name`` takes from module ``target``: ``from target import X``,
    and ``alias.X`` where ``alias`` is ``target`` (``from .. import wire``)."""
    package = package_of(name)
    tree = ast.parse(MODULES[name].read_text())
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = imported_module(node, package)
            for alias in node.names:
                if module == target:
                    yield alias.name
                elif f"{module}.{alias.name}" == target:
                    aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == target and alias.asname:
                    aliases.add(alias.asname)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            yield node.attr


@pytest.mark.parametrize(
    "target",
    ["trio_echo.wire", "trio_echo.errors", "trio_echo.client.core", "trio_echo.server.config"],
)
def test_what_other_modules_import_is_in_all(target: str) -> None:
    """A name another module imports is public (in ``__all__``), or it is not imported."""
    exported = set(importlib.import_module(target).__all__)
    missing = {
        (used, name)
        for name in MODULES
        if name != target
        for used in names_used_from(target, name)
        if used not in exported
    }
    assert not missing, sorted(missing)


def graph() -> dict[str, set[str]]:
    return {
        name: {dep for dep in imports(name) if dep in MODULES and dep != name} for name in MODULES
    }


def cycles(edges: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[tuple[str, ...]] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(edges[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.add(tuple(sorted(component)))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read_right() -> None:
    edges = graph()
    assert "trio_echo.wire" in edges["trio_echo.errors"]
    assert "trio_echo.client.core" in edges["trio_echo.client.blocking"]
    assert "trio_echo.server.config" in edges["trio_echo.server.server"]
    assert "trio_echo.wire" in edges["trio_echo.server.server"]  # "from .. import wire"
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {("a", "b", "c")}


def test_no_import_cycles_between_modules() -> None:
    edges = graph()
    gone = {(a, b) for a, b in KNOWN_BACK_EDGES if b not in edges[a]}
    assert not gone, f"these imports are gone: strike them off KNOWN_BACK_EDGES: {sorted(gone)}"
    for a, b in KNOWN_BACK_EDGES:
        edges[a].discard(b)
    assert not cycles(edges), f"import cycles: {sorted(cycles(edges))}"


@pytest.mark.parametrize("name", SANS_IO)
def test_sans_io_modules_import_no_io_even_indirectly(name: str) -> None:
    edges = graph()
    seen, todo = {name}, [name]
    while todo:
        for dep in edges[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    external = {dep for module in seen for dep in imports(module) if dep not in MODULES}
    assert not external & IO_MODULES, (sorted(seen), sorted(external & IO_MODULES))


def test_each_module_imports_alone() -> None:
    """In one fresh interpreter, each module is imported with no trio_echo module loaded.

    The sans-IO ones go first, while Trio is not loaded yet, to check that
    importing them does not load it (server.service cannot be checked so:
    its package's ``__init__`` starts the server).
    """
    first = [name for name in SANS_IO if not name.startswith("trio_echo.server.")]
    script = "\n".join(
        [
            "import importlib, sys",
            "def alone(name):",
            "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'trio_echo']:",
            "        del sys.modules[loaded]",
            "    importlib.import_module(name)",
            "assert 'trio' not in sys.modules",
            f"for name in {first!r}:",
            "    alone(name)",
            "    assert 'trio' not in sys.modules, name + ' imported trio'",
            f"for name in {sorted(MODULES)!r}:",
            "    alone(name)",
        ]
    )
    done = run_python(script, timeout=120)
    assert done.returncode == 0, done.stderr
