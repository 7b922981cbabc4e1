"""``trio-echo bench --stream`` and ``benchmarks/streams.py`` (#14): what they measure and check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio_echo
from trio_echo import wire

from helpers import run_cli, server_thread
from helpers.fake_server import FakeConnection, fake_server

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--duration", "0.3", "--warmup", "0.05"]


def test_bench_stream_reports_items_and_calls_per_second() -> None:
    with server_thread() as srv:
        done = run_cli("bench", "--port", str(srv.port), "--stream", "--json", *QUICK)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["size"] == 64 and report["pipeline"] == 32 and report["window"] == 256
        assert report["stream_items_per_s"] > 0 and report["unary_per_s"] > 0
        ratio = report["stream_items_per_s"] / report["unary_per_s"]
        assert abs(report["ratio"] - ratio) < 0.01

        text = run_cli("bench", "--port", str(srv.port), "--stream", "--window", "8", *QUICK)
        assert text.returncode == 0, text.stderr
        assert "server stream (window 8)" in text.stdout and "items/s" in text.stdout
        assert "stream / unary" in text.stdout


def test_bench_stream_refuses_what_it_cannot_measure() -> None:
    for extra in (["--mode", "mprpc"], ["--window", "0"], ["--size", "-1"]):
        done = run_cli("bench", "--port", "1", "--stream", *QUICK, *extra)
        assert done.returncode == 2, (extra, done.stderr)
        assert "--stream" in done.stderr


def test_bench_stream_checks_the_items_it_gets() -> None:
    def wrong_ticks(conn: FakeConnection) -> None:
        """Answers echo, and streams ints where 64-byte items were asked for."""
        while (request := conn.next_request()) is not None:
            if request.method == "ticks":
                conn.peer.sock.sendall(wire.encode_items(request.msgid, [0, 1, 2]))
            else:
                conn.reply(request.msgid, request.params[0])

    with fake_server(wrong_ticks) as srv:
        done = run_cli("bench", "--port", str(srv.port), "--stream", *QUICK)
    assert done.returncode == 1
    assert "not a 64-byte item: 0" in done.stderr


def test_streams_benchmark_quick() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "streams.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| trio_echo server stream (window 1024) |" in proc.stdout
    assert "trio_echo async client's stream" in proc.stdout
    assert "stream / unary =" in proc.stdout
    figures = json.loads(proc.stdout.strip().splitlines()[-1])["median_per_s"]
    assert figures["trio_echo stream"] > 0 and figures["trio_echo client stream"] > 0
    assert figures["trio_echo unary"] > 0
    assert trio_echo.__version__
