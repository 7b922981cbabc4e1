"""``trio-echo call --stream``: items as JSON lines, items from standard input (protocol.md §12)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import pytest

from trio_echo.cli import main

from helpers import ServerThread
from helpers import run_cli as cli


def test_a_server_stream_prints_one_line_per_item(srv: ServerThread) -> None:
    done = cli("call", "--port", str(srv.port), "--stream", "ticks", "3", "0")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "0\n1\n2\n"


def test_a_client_stream_reads_stdin(
    srv: ServerThread, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("1\n2.5\n\n3\n"))
    assert main(["call", "--port", str(srv.port), "--stream", "sum"]) == 0
    assert capsys.readouterr().out == "6.5\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO("1\nnot a number\n"))
    assert main(["call", "--port", str(srv.port), "--stream", "sum"]) == 1
    assert capsys.readouterr().err.startswith("invalid_params: sum: items must be numbers")


def test_a_bidi_stream_echoes_stdin(
    srv: ServerThread, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = "".join(f'{{"n": {i}}}\n' for i in range(40)) + 'plain\n{"$bytes": "AP8="}\n'
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert main(["call", "--port", str(srv.port), "--stream", "echo_stream"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out == [{"n": i} for i in range(40)] + ["plain", {"$bytes": "AP8="}]


def test_not_a_stream_unknown_and_errors(
    srv: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    port = str(srv.port)
    assert main(["call", "--port", port, "--stream", "echo", "x"]) == 1
    assert "echo is a unary method, not a stream" in capsys.readouterr().err
    assert main(["call", "--port", port, "--stream", "nope"]) == 1
    assert capsys.readouterr().err.startswith("unknown_method:")
    assert main(["call", "--port", port, "--stream", "--timeout", "0.3", "ticks", "5", "5"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "0\n" and captured.err.startswith("timeout:")


def test_a_reader_that_leaves_cancels_the_stream(srv: ServerThread) -> None:
    """`| head -2`: the command exits 0, and the server's stream is cancelled."""
    command = [sys.executable, "-m", "trio_echo", "call", "--port", str(srv.port)]
    with subprocess.Popen(
        [*command, "--stream", "ticks", "100000000", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"0\n"
        proc.stdout.close()  # as head does after its lines
        assert proc.wait(timeout=30) == 0
        assert proc.stderr.read() == b""
    # The cancel was sent before the command exited; the server applies it as it reads.
    deadline = time.monotonic() + 30
    while srv.server.stats()["requests_in_flight"] and time.monotonic() < deadline:
        srv.settle()
    stats = srv.server.stats()
    assert stats["requests_in_flight"] == 0
    assert stats["errors"].get("cancelled", 0) >= 1


def test_methods_shows_the_kind_of_streams(
    srv: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["methods", "--port", str(srv.port)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("ticks") and "[server stream]" in line for line in lines)
    assert any(line.startswith("sum") and "[client stream]" in line for line in lines)
    assert any(line.startswith("echo_stream") and "[bidi stream]" in line for line in lines)
    assert not any(line.startswith("echo ") and "stream]" in line for line in lines)
