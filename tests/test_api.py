"""The public surface: exports resolve, the sans-IO core stays free of I/O, the code is clean."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys

import pytest

import trio_echo

from helpers import ROOT

SRC = ROOT / "src" / "trio_echo"


def test_every_export_resolves() -> None:
    for name in trio_echo.__all__:
        assert getattr(trio_echo, name) is not None, name


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
