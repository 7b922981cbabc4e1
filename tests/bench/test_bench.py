"""``trio-echo bench`` and ``benchmarks/run.py``, against live servers on loopback.

Only sanity is checked (requests were made, errors were counted, fields are
there); never a speed, which depends on the machine.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trio_echo import wire
from trio_echo.bench.worker import (
    FramedReader,
    Worker,
    WorkerSpec,
    _Conn,
    bucket_of,
    bucket_value,
    payload_bytes,
)
from trio_echo.cli import main

from helpers import ROOT, free_port

QUICK = ["--duration", "0.3", "--warmup", "0.1", "--quiet", "--json"]


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    """A ``python -m trio_echo serve`` subprocess; its port."""
    port = free_port()
    argv = [sys.executable, "-m", "trio_echo", "serve", "--port", str(port)]
    proc = subprocess.Popen([*argv, "--log-level", "warning", "--grace", "1"])
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, "the server exited at start"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not listen"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    """Run ``trio-echo bench --json`` in-process; (exit code, parsed JSON)."""
    code = main(["bench", *QUICK, *args])
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.mark.parametrize("mode", ["framed", "mprpc", "raw"])
def test_bench_each_mode_against_trio_echo(
    server_port: int, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    code, r = bench(
        capsys, "--port", str(server_port), "--mode", mode, "-c", "4", "-P", "8", "--workers", "2"
    )
    assert code == 0
    assert r["mode"] == mode and r["workers"] == 2 and r["connections_open"] == 4
    assert r["requests"] > 0 and r["req_per_s"] > 0 and r["mb_per_s"] > 0
    assert r["errors"] == 0 and r["errors_by_code"] == {}
    lat = r["latency_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"] * 1.02
    assert lat["mean"] > 0
    assert len(r["worker_cpu_pct"]) == 2 and isinstance(r["client_bound"], bool)


def test_bench_large_payloads(server_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    for mode in ("framed", "raw"):
        code, r = bench(capsys, "--port", str(server_port), "--mode", mode, "-c", "2", "-P", "2",
                        "--size", "200000", "--workers", "1")  # fmt: skip
        assert code == 0 and r["requests"] > 0 and r["errors"] == 0, r


def test_bench_ping_and_unknown_method(
    server_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code, r = bench(capsys, "--port", str(server_port), "--method", "ping", "-c", "2")
    assert code == 0 and r["requests"] > 0 and r["errors"] == 0
    code, r = bench(capsys, "--port", str(server_port), "--method", "nope", "-c", "2")
    assert code == 1 and r["requests"] == 0
    assert set(r["errors_by_code"]) == {"unknown_method"} and r["errors"] > 0


def test_bench_human_report(server_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--port", str(server_port), "--duration", "0.3", "--warmup", "0",
                 "-c", "2", "-P", "4"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    for word in ("req/s", "MB/s", "p50", "p99.9", "max", "errors      0", "client CPU"):
        assert word in captured.out
    assert "req/s" not in captured.err or captured.err.startswith("bench:")


def test_bench_connection_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, r = bench(capsys, "--port", str(free_port()), "-c", "3", "--connect-timeout", "1")
    assert code == 1 and r["requests"] == 0
    assert r["errors_by_code"] == {"connect_failed": 3}


def test_bench_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--connections", "0"]) == 2
    assert main(["bench", "--mode", "raw", "--size", "0"]) == 2
    assert "at least" in capsys.readouterr().err


# --- wrong answers are errors ------------------------------------------------------


async def wrong_framed_server(stream: trio.SocketStream) -> None:
    """Answers msgid % 4: 0 right, 1 a wrong result, 2 an error, 3 an unknown msgid."""
    conn = wire.Connection(wire.Role.SERVER, wire.Mode.FRAMED)
    with trio.move_on_after(30):
        while data := await stream.receive_some(65536):
            conn.receive_data(data)
            out = (
                [wire.encode_notification("hello", [{"protocol": 1}])]
                if data.startswith(wire.PREAMBLE)
                else []
            )
            for ev in conn.events():
                assert isinstance(ev, wire.Request)
                kind = ev.msgid % 4
                if kind == 0:
                    out.append(wire.encode_response(ev.msgid, ev.params[0]))
                elif kind == 1:
                    out.append(wire.encode_response(ev.msgid, b"not the payload"))
                elif kind == 2:
                    out.append(wire.encode_error(ev.msgid, "overloaded", "busy"))
                else:
                    out.append(wire.encode_response(ev.msgid ^ 0x80000000, ev.params[0]))
            await stream.send_all(b"".join(out))


async def wrong_raw_server(stream: trio.SocketStream) -> None:
    """An echo server that changes the bytes."""
    with trio.move_on_after(30):
        while data := await stream.receive_some(65536):
            await stream.send_all(data.upper())


async def run_bench_against(handler: Any, *args: str) -> tuple[int, dict[str, Any]]:
    async def serve_one(stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        except trio.BrokenResourceError:
            pass  # the bench closed (or reset) its connection while this one was writing

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, serve_one, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        port = listeners[0].socket.getsockname()[1]
        argv = [sys.executable, "-m", "trio_echo", "bench", "--port", str(port), *QUICK, *args]
        proc = await trio.run_process(argv, capture_stdout=True, check=False)
        nursery.cancel_scope.cancel()
    return proc.returncode, json.loads(proc.stdout)


async def test_wrong_results_and_msgids_are_errors() -> None:
    code, r = await run_bench_against(wrong_framed_server, "-c", "2", "-P", "8", "--warmup", "0")
    assert code == 1
    assert r["requests"] > 0  # the right answers still count
    errs = r["errors_by_code"]
    assert set(errs) == {"wrong_result", "overloaded", "unknown_msgid"}, errs
    assert r["errors"] == sum(errs.values())


async def test_wrong_raw_echo_is_an_error() -> None:
    code, r = await run_bench_against(wrong_raw_server, "--mode", "raw", "-c", "2")
    assert code == 1 and r["errors_by_code"]["wrong_result"] > 0


async def closing_server(stream: trio.SocketStream) -> None:
    """Hangs up at once."""
    await stream.aclose()


async def test_lost_connections_are_errors() -> None:
    code, r = await run_bench_against(closing_server, "-c", "3", "--workers", "1")
    assert code == 1 and r["requests"] == 0
    assert r["errors_by_code"] == {"connection_lost": 3} and r["connections_open"] == 0


# --- the worker's pieces --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["framed", "mprpc"])
def test_pre_encoded_requests_decode_as_protocol_requests(mode: str) -> None:
    spec = WorkerSpec("127.0.0.1", 1, mode, 1, 3, 10, "echo", True, 0, 1)
    worker = Worker(spec)
    a, b = socket.socketpair()
    with a, b:
        conn = _Conn(a)
        conn.next_id = wire.MAX_MSGID - 1  # the msgids wrap around to 0
        worker._refill_rpc(conn, 0)
        data = b.recv(65536)
    server = wire.Connection(wire.Role.SERVER, wire.Mode(mode))
    server.receive_data(wire.PREAMBLE + data if mode == "framed" else data)
    assert list(server.events()) == [wire.Request(i, "echo", [payload_bytes(10)]) for i in range(3)]
    assert set(conn.inflight) == {0, 1, 2}


def test_payload_is_not_sniffed_as_a_protocol() -> None:
    for size in (1, 64, 65536):
        assert wire.sniff_mode(payload_bytes(size)) is wire.Mode.RAW
        assert len(payload_bytes(size)) == size


objects = st.recursive(
    st.none() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=300) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=20,
)


@given(st.lists(objects, min_size=1, max_size=8), st.lists(st.integers(0, 4000), max_size=6))
def test_framed_reader_any_split(items: list[Any], cuts: list[int]) -> None:
    data = b"".join(wire.frame(wire.packb(obj)) for obj in items)
    reader = FramedReader()
    out: list[Any] = []
    prev = 0
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        out += reader.feed(data[prev:cut])
        prev = cut
    assert out == items


@pytest.mark.parametrize(
    "data",
    [
        wire.frame(wire.packb(1) + wire.packb(2)),  # two objects in one frame
        wire.frame(wire.packb([1, 2])[:2]) + wire.frame(wire.packb(3)),  # an object across frames
        b"\x00\x00\x00\x00",  # an empty frame
        b"\x7f\xff\xff\xff",  # larger than max_frame
    ],
)
def test_framed_reader_rejects_bad_frames(data: bytes) -> None:
    with pytest.raises((ValueError, msgpack.UnpackException)):
        FramedReader(max_frame=1 << 20).feed(data)


def test_latency_buckets_are_within_two_percent() -> None:
    last = -1
    for ns in [*range(0, 300), *(int(1.37**k) for k in range(20, 110))]:
        index = bucket_of(ns)
        assert index >= last
        last = index
        assert abs(bucket_value(index) - ns) <= 0.016 * ns + 0.5


# --- benchmarks/run.py -------------------------------------------------------------------


def test_benchmarks_run_quick(tmp_path: Path) -> None:
    measured = (ROOT / "benchmarks" / "results.json").read_bytes()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    # A smoke test writes to a temporary folder, never over the measured results.
    found = re.search(r"^results in (.+)/$", proc.stderr, re.M)
    assert found, proc.stderr
    out = Path(found.group(1))
    assert out != ROOT / "benchmarks"
    assert (ROOT / "benchmarks" / "results.json").read_bytes() == measured
    shutil.move(out, tmp_path / "out")  # into tmp_path, which pytest cleans up
    out = tmp_path / "out"
    table = (out / "results.md").read_text()
    for name in ("raw c50 d1", "raw c4 d4 64 KiB", "framed echo c1 d1", "mprpc echo c50 d16",
                 "aecho (async def)"):  # fmt: skip
        assert name in table
    assert "trio_echo / bare trio echo" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    for runs in results["scenarios"].values():
        for label in ("trio_echo", "bare trio echo"):
            assert runs[label][0]["requests"] > 0 and runs[label][0]["errors"] == 0
    for label in ("trio_echo", "bare trio echo"):
        idle = results["idle"][label]
        assert idle["connections"] == 100 and idle["errors"] == 0 and "kb_per_conn" in idle
    assert "per connection" in table
    # The clients, each beside its bare loop (gRPC's rows need grpcio, the bench extra).
    for name in ("bare Trio loop", "async client, one task", "blocking client, one thread",
                 "async client, 100 tasks"):  # fmt: skip
        runs = next(r for n, r in results["clients"].items() if n.startswith(name))
        assert runs["client"][0]["calls"] > 0 and runs["client"][0]["errors"] == 0
        assert runs["baseline"][0]["calls"] > 0
        assert name in table
    # --render rebuilds the same table from results.json without running anything.
    again = out / "again"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--render",
         str(out / "results.json"), "--out", str(again)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert (again / "results.md").read_text() == table


def test_benchmarks_run_quick_never_updates_the_readme() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--update-readme"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "cannot update README.md" in proc.stderr


# --- benchmarks/instructions.py --------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "mode", "method"),
    [
        ("trio_echo", "mprpc", "echo"),
        ("trio_echo", "framed", "echo"),
        ("trio_echo", "mprpc", "aecho"),
        ("inline", "mprpc", "echo"),
        ("inline", "framed", "echo"),
        ("spawn", "mprpc", "aecho"),
    ],
)
def test_instruction_count_workloads_answer_every_request(
    target: str, mode: str, method: str
) -> None:
    # The counts are only worth comparing if every target really answers every request.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import instructions
    finally:
        sys.path.pop(0)
    stream = instructions.workload(target, mode, method, per_read=4, reads=5, keep=True)
    framed = mode == "framed"
    replies = wire.Connection(mode=wire.Mode.FRAMED if framed else wire.Mode.MPRPC)
    if framed:
        replies.initiate()
    replies.receive_data(stream.received_back)
    events = [e for e in replies.events() if isinstance(e, wire.Response)]
    assert len(events) == 4 * 5
    assert all(e.result == instructions.PAYLOAD for e in events)
