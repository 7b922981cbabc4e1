"""The public surface: exports resolve, the sans-IO core stays free of I/O, the code is clean."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys

import pytest

import trio_echo

from helpers import ROOT, run_python

SRC = ROOT / "src" / "trio_echo"


def test_every_export_resolves() -> None:
    for name in trio_echo.__all__:
        assert getattr(trio_echo, name) is not None, name


def test_the_blocking_client_imports_no_trio() -> None:
    done = run_python(
        "import sys, trio_echo\n"
        "assert 'trio' not in sys.modules, 'import trio_echo'\n"
        "trio_echo.connect, trio_echo.BlockingClient, trio_echo.RemoteError, trio_echo.wire\n"
        "from trio_echo import connect_unix, ConnectionClosed, NotificationHandler\n"
        "assert 'trio' not in sys.modules, sorted(m for m in sys.modules if 'trio' in m)\n"
        "assert 'trio_echo.server' not in sys.modules\n"
        "trio_echo.open_client\n"
        "assert 'trio' in sys.modules\n"
    )
    assert done.returncode == 0, done.stderr


def test_public_names_are_lazy_but_complete() -> None:
    done = run_python(
        "import sys, trio_echo\n"
        "names = set(trio_echo.__all__)\n"
        "assert names <= set(dir(trio_echo)), names - set(dir(trio_echo))\n"
        "assert trio_echo.Method is __import__('trio_echo.server.service').server.service.Method\n"
        "assert 'Method' in vars(trio_echo)  # cached after the first use\n"
        "try:\n"
        "    trio_echo.nope\n"
        "except AttributeError as exc:\n"
        "    assert 'nope' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
    )
    assert done.returncode == 0, done.stderr


def test_static_imports_match_the_lazy_table() -> None:
    """The ``if TYPE_CHECKING:`` imports (for type checkers) name what __getattr__ resolves."""
    tree = ast.parse((SRC / "__init__.py").read_text())
    [block] = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    ]
    static = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names:
            static[alias.asname or alias.name] = node.module or alias.name
    where = dict(trio_echo._WHERE)
    assert static == where
    assert set(trio_echo.__all__) == {*where, "__version__"}


def test_one_exception_class_per_error_code() -> None:
    codes = {code.value for code in trio_echo.wire.ErrorCode}
    classes = {
        getattr(trio_echo, name).code
        for name in trio_echo.__all__
        if isinstance(getattr(trio_echo, name), type)
        and issubclass(getattr(trio_echo, name), trio_echo.RemoteError)
        and getattr(trio_echo, name) is not trio_echo.RemoteError
    }
    assert classes == codes
    assert issubclass(trio_echo.ConnectionClosed, trio_echo.TrioEchoError)
    assert issubclass(trio_echo.RemoteError, trio_echo.TrioEchoError)


@pytest.mark.parametrize(
    "module", ["wire.py", "proxy_protocol.py", "errors.py", "server/service.py", "client/core.py"]
)
def test_sans_io_modules_import_no_io(module: str) -> None:
    tree = ast.parse((SRC / module).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "socket", "asyncio", "selectors", "threading"}


def test_ships_py_typed() -> None:
    assert (SRC / "py.typed").exists()


def test_python_m_trio_echo_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trio_echo", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"trio-echo {trio_echo.__version__}"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is part of the test extras; install with pip install '.[test]'")
    return path


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [_tool("ruff"), "check", "src", "tests", "clients", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
