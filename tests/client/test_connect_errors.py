"""Connecting fails the same way from both clients: ConnectFailed, naming the address."""

from __future__ import annotations

import errno
import re
import socket
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
import trio.testing

import trio_echo
from trio_echo import Server, Service

from helpers import eventually, free_port, memory_server, server_thread, tcp_server


def connect_async(host: str, port: int, **kwargs: Any) -> None:
    async def main() -> None:
        async with trio_echo.open_client(host, port, **kwargs):
            pass

    trio.run(main)


def connect_blocking(host: str, port: int, **kwargs: Any) -> None:
    trio_echo.connect(host, port, **kwargs).close()


CONNECTS = pytest.mark.parametrize("connect", [connect_async, connect_blocking])


@CONNECTS
def test_refused_names_the_address(connect: Callable[..., None]) -> None:
    port = free_port()
    with pytest.raises(trio_echo.ConnectFailed) as info:
        connect("127.0.0.1", port)
    exc = info.value
    assert type(exc) is trio_echo.ConnectFailed
    assert str(exc) == (
        f"cannot connect to 127.0.0.1:{port}: connection refused (no server is listening "
        "there: is it running?)"
    )
    assert (exc.address, exc.errno) == (f"127.0.0.1:{port}", errno.ECONNREFUSED)
    # Still what code written for the old behaviour catches.
    assert isinstance(exc, ConnectionError) and isinstance(exc, OSError)
    assert isinstance(exc, trio_echo.TrioEchoError)
    # The cause is the one OSError, not Trio's group of one error per address tried.
    assert isinstance(exc.__cause__, ConnectionRefusedError)
    shown = "".join(traceback.format_exception(exc))
    assert "ExceptionGroup" not in shown and "all attempts" not in shown


@CONNECTS
def test_an_unknown_host_says_so(connect: Callable[..., None]) -> None:
    with pytest.raises(trio_echo.ConnectFailed) as info:
        connect("no-such-host.invalid", 7000)
    assert str(info.value).startswith(
        "cannot connect to no-such-host.invalid:7000: cannot resolve the host name ("
    )
    assert isinstance(info.value.__cause__, socket.gaierror)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listener that never accepts: connecting works, the hello never comes."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@CONNECTS
def test_a_timeout_is_a_connect_failed_and_a_timeout_error(
    connect: Callable[..., None], silent_port: int
) -> None:
    with pytest.raises(trio_echo.ConnectTimeout) as info:
        connect("127.0.0.1", silent_port, connect_timeout=0.2)
    assert isinstance(info.value, trio_echo.ConnectFailed) and isinstance(info.value, TimeoutError)
    assert str(info.value) == (
        f"cannot connect to 127.0.0.1:{silent_port}: timed out after 0.2 s (connecting and "
        "waiting for the server's hello)"
    )


# --- a connection the server closed for idleness -------------------------------------------

# On protocol v1 the client can only guess ("it may have closed an idle connection");
# on v2 the server says goaway("idle") first. Either way the message names the setting.
IDLE_HINT = "idle connection (trio-echo serve --idle-timeout"


async def test_an_idle_close_says_so_on_the_next_call(autojump_clock: trio.abc.Clock) -> None:
    # The idle reaper runs with the listeners: over loopback, on a clock that jumps.
    async with (
        tcp_server(Server(idle_timeout=5)) as (_, port),
        trio_echo.open_client("127.0.0.1", port, reconnect=False) as client,
    ):
        assert await client.call("ping") == "pong"
        await eventually(lambda: client.closed, timeout=60)
        with pytest.raises(trio_echo.ConnectionClosed, match=re.escape(IDLE_HINT)):
            await client.call("ping")


async def test_after_an_idle_close_a_reconnecting_client_just_connects_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with (
        tcp_server(Server(idle_timeout=5)) as (server, port),
        trio_echo.open_client("127.0.0.1", port) as client,
    ):
        assert await client.call("ping") == "pong"
        await eventually(lambda: not client.core.usable, timeout=60)
        assert await client.call("ping") == "pong"
        assert server.stats()["connections_total"] == 2


async def test_a_close_with_calls_waiting_does_not_blame_idleness() -> None:
    service = Service()
    entered = trio.Event()

    @service.method
    async def hang() -> None:
        entered.set()
        await trio.sleep_forever()

    server = Server(service)
    async with (
        memory_server(server) as (_, stream, nursery),
        trio_echo.open_client_over_stream(stream) as client,
    ):

        async def close_when_entered() -> None:
            await entered.wait()
            nursery.cancel_scope.cancel()  # the server side goes away mid-call

        nursery.start_soon(close_when_entered)
        with pytest.raises(trio_echo.ConnectionClosed) as info:
            await client.call("hang")
        assert "idle" not in str(info.value)


def test_the_blocking_client_says_so_too() -> None:
    with server_thread(idle_timeout=0.2) as srv:
        client = trio_echo.connect("127.0.0.1", srv.port, reconnect=False)
        with client:
            assert client.call("ping") == "pong"
            # The server's reaper closes the connection; the reader thread sees EOF.
            client._current._reader.join(10)
            assert client.closed
            with pytest.raises(trio_echo.ConnectionClosed, match=re.escape(IDLE_HINT)):
                client.call("ping")
