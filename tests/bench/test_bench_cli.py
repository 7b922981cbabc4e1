"""``trio-echo bench`` through the real command: --params, error messages, oversized requests."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from typing import Any

import pytest

import trio_echo
from trio_echo import Service

from helpers import run_cli, server_thread

QUICK = ["--duration", "0.3", "--warmup", "0", "--quiet", "--workers", "1"]


class NoSuchKey(trio_echo.RemoteError, code="bench.no_such_key"):
    """An application error, for the report's messages."""


def kv_service() -> Service:
    service = Service()
    counter = itertools.count()
    known = {"a": 1}

    @service.method
    def get(key: str) -> int:
        value = known.get(key)
        if value is None:
            raise NoSuchKey(f"no key {key!r}")
        return value

    @service.method
    def blen(data: bytes, times: int) -> int:
        """Annotated: a str or a float would be invalid_params."""
        return len(data) * times

    @service.method
    def always_different() -> None:
        raise NoSuchKey(f"attempt {next(counter)}")

    return service


def bench(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("bench", "--port", str(port), *QUICK, *args)


def bench_json(port: int, *args: str) -> tuple[int, dict[str, Any]]:
    done = bench(port, "--json", *args)
    return done.returncode, json.loads(done.stdout)


@pytest.fixture(scope="module")
def kv_port() -> Any:
    with server_thread(kv_service()) as srv:
        yield srv.port


@pytest.mark.parametrize("mode", ["framed", "mprpc"])
def test_params_are_sent_as_trio_echo_call_parses_them(kv_port: int, mode: str) -> None:
    code, r = bench_json(kv_port, "--mode", mode, "--method", "get", "--params", '["a"]')
    assert (code, r["errors_by_code"]) == (0, {})
    assert r["requests"] > 0 and r["params"] == ["a"] and r["method"] == "get"
    # {"$bytes": ...} is bytes, 3 an int: the handler's annotations accept them.
    code, r = bench_json(kv_port, "--mode", mode, "--method", "blen",
                         "--params", '[{"$bytes": "AP8A"}, 3]')  # fmt: skip
    assert (code, r["errors_by_code"]) == (0, {}), r
    assert r["requests"] > 0 and r["params"] == [{"$bytes": "AP8A"}, 3]


def test_the_report_shows_the_servers_error_messages(kv_port: int) -> None:
    code, r = bench_json(kv_port, "--method", "get", "--params", '["nope"]', "-c", "2")
    assert code == 1 and r["requests"] == 0
    assert set(r["errors_by_code"]) == {"bench.no_such_key"} and r["errors"] > 0
    assert r["error_messages"] == [{"code": "bench.no_such_key", "message": "no key 'nope'"}]
    done = bench(kv_port, "--method", "get", "--params", '["nope"]')
    assert done.returncode == 1
    shown = r"errors +[\d,]+: bench.no_such_key [\d,]+\n +bench.no_such_key: no key 'nope'\n"
    assert re.search(shown, done.stdout), done.stdout
    # Only the first few distinct messages are kept.
    code, r = bench_json(kv_port, "--method", "always_different", "--params", "[]")
    assert code == 1 and r["errors_by_code"]["bench.no_such_key"] > 5
    assert [m["message"] for m in r["error_messages"]] == [f"attempt {i}" for i in range(5)]


def test_unknown_method_is_reported_with_its_message(kv_port: int) -> None:
    code, r = bench_json(kv_port, "--method", "gett")
    assert code == 1 and set(r["errors_by_code"]) == {"unknown_method"}
    assert r["error_messages"][0]["message"].startswith("unknown method 'gett'")


@pytest.mark.parametrize("mode", ["framed", "mprpc"])
@pytest.mark.parametrize("size", [5_000_000, 4 * 1024 * 1024])
def test_an_oversized_request_is_counted_once_as_frame_too_large(mode: str, size: int) -> None:
    # The server's default max_frame (4 MiB): a 4 MiB payload is over it with the envelope.
    with server_thread() as srv:
        code, r = bench_json(srv.port, "--mode", mode, "--size", str(size), "-c", "2")
    assert code == 1 and r["requests"] == 0
    assert r["errors_by_code"] == {"frame_too_large": 2}, r
    [message] = r["error_messages"]
    assert message["code"] == "frame_too_large"
    if mode == "framed":  # the hello announced the limit: nothing was sent
        assert "exceeds the server's max_frame (4,194,304); not sent" in message["message"]


def test_params_must_be_a_json_array() -> None:
    for bad, why in [
        ('{"a": 1}', "must be a JSON array"),
        ("nojson", "not JSON"),
        ("3", "must be a JSON array"),
    ]:
        done = bench(1, "--params", bad)
        assert done.returncode == 2 and why in done.stderr, done.stderr
    done = bench(1, "--mode", "raw", "--params", "[1]")
    assert done.returncode == 2
    assert "--params is for framed and mprpc mode" in done.stderr


def test_no_verify_help_reads_the_right_way_round() -> None:
    done = run_cli("bench", "--help")
    match = re.search(r"^  --no-verify(.*?)^  --", done.stdout, re.MULTILINE | re.DOTALL)
    assert match
    entry = " ".join(match.group(1).split())
    assert "default: True" not in entry
    assert entry.startswith("accept any result") and entry.endswith("(default: False)")
