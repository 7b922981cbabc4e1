"""Protocol version 2 in the Python clients (protocol.md §11): the fallback to
version 1, goaway, unavailable retries, reconnecting after a lost connection.

The policy is tested without I/O (Backoff, Attempts); the clients against
scripted fake servers on loopback, so that each rule is seen on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import trio

import trio_echo
from trio_echo import ConnectionClosed, DeadlineExceeded, Unavailable
from trio_echo.client.core import UNAVAILABLE_RETRIES, Attempts, Backoff, GoingAway

from helpers.fake_server import FakeConnection, FakeServer, fake_server

# --- the policy, without I/O -----------------------------------------------------------------


def test_backoff_doubles_from_50_ms_to_5_s_with_jitter() -> None:
    backoff = Backoff(rng=lambda: 0.5)
    assert backoff.delay() == 0  # a first connection, or one after a goaway: at once
    backoff.lost()
    assert backoff.delay() == pytest.approx(0.05)
    delays = []
    for _ in range(10):
        backoff.failed()
        delays.append(backoff.delay())
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5, 5, 5, 5])
    backoff.succeeded()
    assert backoff.delay() == 0
    backoff.failed()  # a failed attempt after a goaway waits the minimum
    assert backoff.delay() == pytest.approx(0.05)
    for rng, expected in ((0.0, 0.04), (1.0, 0.06)):
        jittered = Backoff(rng=lambda r=rng: r)  # type: ignore[misc]
        jittered.lost()
        assert jittered.delay() == pytest.approx(expected)


def test_attempts_share_the_calls_deadline_and_retry_budget() -> None:
    attempts = Attempts("m", 1.0, now=100.0)
    assert attempts.remaining(100.0) == 1.0  # the first try: the timeout as given
    assert attempts.remaining(100.4) == pytest.approx(0.6)
    with pytest.raises(DeadlineExceeded, match="no reply within 1 s"):
        attempts.remaining(101.0)
    assert attempts.again(GoingAway("moved"), reconnect=True)
    assert not attempts.again(GoingAway("moved"), reconnect=False)
    for _ in range(UNAVAILABLE_RETRIES):
        assert attempts.again(Unavailable("not run"), reconnect=True)
    assert not attempts.again(Unavailable("not run"), reconnect=True)
    assert not attempts.again(ConnectionClosed("lost"), reconnect=True)
    assert Attempts("m", None, 0).remaining(1e9) is None
    with pytest.raises(ValueError):
        Attempts("m", -1, 0)


# --- fake servers' scripts ---------------------------------------------------------------------


class Holding:
    """Answers ``echo``; holds each ``hold`` request until the test answers it."""

    def __init__(self) -> None:
        self.held: list[tuple[FakeConnection, int]] = []
        self.got = threading.Event()

    def __call__(self, conn: FakeConnection) -> None:
        while (request := conn.next_request()) is not None:
            if request.method == "hold":
                self.held.append((conn, request.msgid))
                self.got.set()
            else:
                conn.reply(request.msgid, request.params[0] if request.params else None)


def unavailable_on_first_connection(conn: FakeConnection) -> None:
    while (request := conn.next_request()) is not None:
        if conn.index == 0:
            conn.goaway()
            conn.error(request.msgid, "unavailable", "server is shutting down")
        else:
            conn.reply(request.msgid, request.params[0])


def always_unavailable(conn: FakeConnection) -> None:
    while (request := conn.next_request()) is not None:
        conn.goaway()
        conn.error(request.msgid, "unavailable")


def crash_on_request(conn: FakeConnection) -> None:
    while (request := conn.next_request()) is not None:
        if request.method == "crash":
            conn.reset()
            return
        conn.reply(request.msgid, request.params[0] if request.params else None)


def requests(server: FakeServer) -> list[int]:
    return [len(c.requests) for c in server.connections]


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(fn)


# --- the async client ------------------------------------------------------------------------


async def test_async_offers_version_2_and_falls_back_to_1() -> None:
    with fake_server(FakeConnection.serve_echo, versions=[1]) as srv:
        async with trio_echo.open_client("127.0.0.1", srv.port) as client:
            assert client.server_info["protocol"] == 1
            assert await client.call("echo", 5) == 5
        assert [c.version for c in srv.connections] == [1]
    with fake_server(FakeConnection.serve_echo) as srv:
        async with trio_echo.open_client("127.0.0.1", srv.port) as client:
            assert client.server_info["protocol"] == 2


async def test_async_goaway_new_calls_move_pending_ones_finish() -> None:
    script = Holding()
    with fake_server(script) as srv:
        async with (
            trio_echo.open_client("127.0.0.1", srv.port) as client,
            trio.open_nursery() as nursery,
        ):
            results: dict[str, Any] = {}

            async def hold() -> None:
                results["held"] = await client.call("hold")

            nursery.start_soon(hold)
            assert await in_thread(lambda: script.got.wait(10))
            old = srv.connections[0]
            old.goaway("max_age", 5000)
            # Once it has read the goaway the client half-closes the old connection,
            # with the held call still pending there.
            assert await in_thread(lambda: old.eof.wait(10))
            assert await client.call("echo", "new") == "new"
            assert requests(srv) == [1, 1]
            assert client.server_info["index"] == 1  # server_info follows the new connection
            [(conn, msgid)] = script.held
            conn.reply(msgid, "finished")
        assert results == {"held": "finished"}


async def test_async_idle_connection_told_to_go_away_is_replaced_on_the_next_call() -> None:
    notes: list[Any] = []
    with fake_server(FakeConnection.serve_echo) as srv:
        async with trio_echo.open_client(
            "127.0.0.1", srv.port, on_notification=lambda *n: notes.append(n)
        ) as client:
            srv.connections[0].goaway()
            assert await in_thread(lambda: srv.connections[0].eof.wait(10))
            assert len(srv.connections) == 1  # nothing reconnects before it is needed
            await client.notify("echo", "fire")
            assert await client.call("echo", 2) == 2
            assert requests(srv) == [0, 1]
    assert notes == []  # goaway is the client's business, never the callback's


async def test_async_unavailable_is_sent_again_within_the_timeout() -> None:
    with fake_server(unavailable_on_first_connection) as srv:
        async with trio_echo.open_client("127.0.0.1", srv.port) as client:
            assert await client.call("echo", "again", timeout=5) == "again"
        assert requests(srv) == [1, 1]
        first, retry = (c.requests[0] for c in srv.connections)
        assert first.options == {"timeout_ms": 5000.0}
        assert retry.options is not None and 0 < retry.options["timeout_ms"] < 5000


async def test_async_unavailable_retries_are_bounded() -> None:
    with fake_server(always_unavailable) as srv:
        async with trio_echo.open_client("127.0.0.1", srv.port) as client:
            with pytest.raises(Unavailable):
                await client.call("echo", 1)
        assert sum(requests(srv)) == 1 + UNAVAILABLE_RETRIES


async def test_async_lost_connection_fails_pending_calls_then_reconnects() -> None:
    with fake_server(crash_on_request) as srv:
        async with trio_echo.open_client("127.0.0.1", srv.port) as client:
            with pytest.raises(ConnectionClosed):
                await client.call("crash")
            lost_at = trio.current_time()
            assert await client.call("echo", "back") == "back"
            # A lost connection is not redialled at once: 50 ms (±20 %) first.
            assert trio.current_time() - lost_at >= 0.04
            assert not client.closed
        assert len(srv.connections) == 2


async def test_async_reconnect_false_keeps_todays_behaviour() -> None:
    with fake_server(crash_on_request) as srv:
        async with trio_echo.open_client("127.0.0.1", srv.port, reconnect=False) as client:
            with pytest.raises(ConnectionClosed):
                await client.call("crash")
            assert client.closed
            with pytest.raises(ConnectionClosed):
                await client.call("echo", 1)
        assert len(srv.connections) == 1
    script = Holding()
    with fake_server(script) as srv:
        async with (
            trio_echo.open_client("127.0.0.1", srv.port, reconnect=False) as client,
            trio.open_nursery() as nursery,
        ):
            results: list[Any] = []

            async def hold() -> None:
                results.append(await client.call("hold"))

            nursery.start_soon(hold)
            assert await in_thread(lambda: script.got.wait(10))
            srv.connections[0].goaway()
            assert await in_thread(lambda: srv.connections[0].eof.wait(10))
            with pytest.raises(ConnectionClosed, match="going away"):
                await client.call("echo", 1)
            conn, msgid = script.held[0]
            conn.reply(msgid, "done")
        assert results == ["done"]
        assert len(srv.connections) == 1


async def test_async_waits_for_a_server_that_comes_back() -> None:
    with fake_server(crash_on_request) as srv:
        async with trio_echo.open_client("127.0.0.1", srv.port, connect_timeout=10) as client:
            srv.stop_listening()
            with pytest.raises(ConnectionClosed):
                await client.call("crash")
            async with trio.open_nursery() as nursery:
                result: list[Any] = []

                async def call() -> None:
                    result.append(await client.call("echo", "later"))

                nursery.start_soon(call)
                await trio.sleep(0.3)  # refused attempts meanwhile, spaced by the backoff
                assert result == []
                srv.listen()
            assert result == ["later"]


async def test_async_gives_up_after_connect_timeout_or_the_calls_deadline() -> None:
    with fake_server(crash_on_request) as srv:
        async with trio_echo.open_client("127.0.0.1", srv.port, connect_timeout=0.3) as client:
            srv.stop_listening()
            with pytest.raises(ConnectionClosed):
                await client.call("crash")
            started = trio.current_time()
            with pytest.raises(ConnectionClosed, match=f"127.0.0.1:{srv.port}"):
                await client.call("echo", 1)
            assert 0.25 <= trio.current_time() - started < 5
            started = trio.current_time()
            with pytest.raises(DeadlineExceeded):
                await client.call("echo", 1, timeout=0.1)
            assert trio.current_time() - started < 1


async def test_async_first_connect_still_fails_at_once() -> None:
    with fake_server(FakeConnection.serve_echo) as srv:
        srv.stop_listening()
        with pytest.raises(OSError):
            async with trio_echo.open_client("127.0.0.1", srv.port, connect_timeout=10):
                pass  # pragma: no cover


# --- the blocking client ---------------------------------------------------------------------


def test_blocking_offers_version_2_and_falls_back_to_1() -> None:
    with (
        fake_server(FakeConnection.serve_echo, versions=[1]) as srv,
        trio_echo.connect("127.0.0.1", srv.port) as client,
    ):
        assert client.server_info["protocol"] == 1
        assert client.call("echo", 5) == 5


def test_blocking_goaway_new_calls_move_pending_ones_finish() -> None:
    script = Holding()
    with (
        fake_server(script) as srv,
        trio_echo.connect("127.0.0.1", srv.port) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        held = pool.submit(client.call, "hold")
        assert script.got.wait(10)
        old = srv.connections[0]
        old.goaway("shutdown", 5000)
        assert old.eof.wait(10)  # half-closed, the held call still pending
        assert client.call("echo", "new") == "new"
        assert client.server_info["index"] == 1
        conn, msgid = script.held[0]
        conn.reply(msgid, "finished")
        assert held.result(10) == "finished"
        assert requests(srv) == [1, 1]


def test_blocking_unavailable_is_sent_again_and_bounded() -> None:
    with (
        fake_server(unavailable_on_first_connection) as srv,
        trio_echo.connect("127.0.0.1", srv.port) as client,
    ):
        assert client.call("echo", "again", timeout=5) == "again"
        assert requests(srv) == [1, 1]
    with (
        fake_server(always_unavailable) as srv,
        trio_echo.connect("127.0.0.1", srv.port) as client,
    ):
        with pytest.raises(Unavailable):
            client.call("echo", 1)
        assert sum(requests(srv)) == 1 + UNAVAILABLE_RETRIES


def test_blocking_lost_connection_then_reconnect_or_not() -> None:
    with (
        fake_server(crash_on_request) as srv,
        trio_echo.connect("127.0.0.1", srv.port) as client,
    ):
        with pytest.raises(ConnectionClosed):
            client.call("crash")
        lost_at = time.monotonic()
        assert client.call("echo", "back") == "back"
        assert time.monotonic() - lost_at >= 0.04
        assert len(srv.connections) == 2
    with (
        fake_server(crash_on_request) as srv,
        trio_echo.connect("127.0.0.1", srv.port, reconnect=False) as client,
    ):
        with pytest.raises(ConnectionClosed):
            client.call("crash")
        with pytest.raises(ConnectionClosed):
            client.call("echo", 1)
        assert client.closed and len(srv.connections) == 1


def test_blocking_gives_up_after_connect_timeout() -> None:
    with (
        fake_server(crash_on_request) as srv,
        trio_echo.connect("127.0.0.1", srv.port, connect_timeout=0.3) as client,
    ):
        srv.stop_listening()
        with pytest.raises(ConnectionClosed):
            client.call("crash")
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            client.call("echo", 1)
        assert 0.25 <= time.monotonic() - started < 5
        with pytest.raises(DeadlineExceeded):
            client.call("echo", 1, timeout=0.1)


def test_blocking_threads_share_one_reconnection() -> None:
    """Many threads finding the connection lost make one new connection, not one each."""
    with (
        fake_server(crash_on_request) as srv,
        trio_echo.connect("127.0.0.1", srv.port) as client,
        ThreadPoolExecutor(8) as pool,
    ):
        with pytest.raises(ConnectionClosed):
            client.call("crash")
        results = list(pool.map(lambda i: client.call("echo", i), range(32)))
        assert results == list(range(32))
        assert len(srv.connections) == 2
