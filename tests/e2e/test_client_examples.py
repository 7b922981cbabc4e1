"""The runnable examples in clients/ work against a live server."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from helpers import ROOT, server_thread

CLIENTS = ROOT / "clients"


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["concurrent_calls.py", "--calls", "1000"], "1000 echo calls from 100 tasks"),
        (["blocking_client.py"], "requests in flight now: 0"),
    ],
)
def test_python_examples(argv: list[str], expected: str) -> None:
    script, *args = argv
    with server_thread() as running:
        out = run(sys.executable, str(CLIENTS / script), *args, "--port", str(running.port))
    assert expected in out


def test_netcat_examples() -> None:
    assert shutil.which("nc"), "netcat-openbsd is required (see .ci/run)"
    with server_thread() as running:
        out = run("bash", str(CLIENTS / "netcat.sh"), "127.0.0.1", str(running.port))
    lines = out.splitlines()
    assert "hello" in lines and "identical" in lines
    assert " 94 01 01 c0 a2 68 69" in lines
