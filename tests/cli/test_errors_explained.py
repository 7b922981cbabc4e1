"""Errors that explain themselves, through the real ``trio-echo`` command: one line each."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from trio_echo import wire

from helpers import ServerThread, free_port, server_thread
from helpers import run_cli as trio_echo


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command printed (and nothing else)."""
    assert done.returncode != 0 and done.stdout == ""
    assert "Traceback" not in done.stderr and "Group" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another (plain, non-SO_REUSEPORT) listener holds."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_taken_port_is_one_clear_line(taken_port: int, workers: str) -> None:
    done = trio_echo("serve", "--port", str(taken_port), "--workers", workers)
    assert one_line(done) == (
        f"trio-echo serve: cannot listen on 127.0.0.1:{taken_port}: the address is already in "
        "use (is another server running there? choose another --port, or --port 0 for any "
        "free one)"
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_bad_host_is_one_clear_line(workers: str) -> None:
    line = one_line(trio_echo("serve", "--host", "no-such-host.invalid", "--port", "0",
                              "--workers", workers))  # fmt: skip
    assert line.startswith(
        "trio-echo serve: cannot listen on no-such-host.invalid:0: --host 'no-such-host.invalid' "
        "is neither an address nor a name that resolves ("
    )


def test_serve_on_an_address_of_another_machine_is_one_clear_line() -> None:
    line = one_line(trio_echo("serve", "--host", "192.0.2.1", "--port", "0"))  # TEST-NET-1
    assert line == (
        "trio-echo serve: cannot listen on 192.0.2.1:0: 192.0.2.1 is not an address of this "
        "machine (--host)"
    )


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("port", ["-1", "70000", "http"])
def test_out_of_range_ports_are_argument_errors(port: str, workers: str) -> None:
    done = trio_echo("serve", "--port", port, "--workers", workers)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.splitlines()[-1]
    if port == "http":
        assert last == "trio-echo serve: error: argument --port: invalid int value: 'http'"
    else:
        assert last == (
            f"trio-echo serve: error: argument --port: must be an integer from 0 to 65535, "
            f"not {port}"
        )


@pytest.mark.parametrize(("command", "extra"), [("call", ["ping"]), ("bench", [])])
def test_the_clients_check_ports_too(command: str, extra: list[str]) -> None:
    done = trio_echo(command, "--port", "70000", *extra)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith(
        "argument --port: must be an integer from 0 to 65535, not 70000"
    )


def test_negative_workers_are_an_argument_error() -> None:
    done = trio_echo("serve", "--workers", "-1")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].endswith(
        "argument --workers: must be an integer >= 0, not -1"
    )


def test_call_before_the_server_is_up_names_the_address() -> None:
    port = free_port()
    line = one_line(trio_echo("call", "--port", str(port), "ping"))
    assert line == (
        f"trio-echo: cannot connect to 127.0.0.1:{port}: connection refused (no server is "
        "listening there: is it running?)"
    )


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerThread]:
    with server_thread() as running:
        yield running


def test_call_suggests_the_closest_method(srv: ServerThread) -> None:
    done = trio_echo("call", "--port", str(srv.port), "ecoh", "x")
    assert done.returncode == 1
    assert done.stderr == "unknown_method: unknown method 'ecoh'; did you mean 'echo'?\n"
    long_name = "x" * 5000
    done = trio_echo("call", "--port", str(srv.port), long_name)
    assert done.stderr == f"unknown_method: unknown method {wire.quote(long_name)}\n"
    assert len(done.stderr) < 150
