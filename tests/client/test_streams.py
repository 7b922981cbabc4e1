"""Streams from the clients' side (protocol.md §12): the async ``client.stream`` and the
blocking ``with client.stream(...)``, against a real server."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
import trio.testing

import trio_echo
from trio_echo import ItemReceiver, Server, Service
from trio_echo.testing import open_test_client

from helpers import server_thread


class Probe:
    def __init__(self) -> None:
        self.asked = 0
        self.closed = trio.Event()
        self.closed_in_thread = threading.Event()
        self.service = Service()

        @self.service.method
        async def count(n: int) -> AsyncIterator[int]:
            try:
                for i in range(n):
                    self.asked += 1
                    yield i
            finally:
                self.closed.set()
                self.closed_in_thread.set()

        @self.service.method
        async def fail_after(k: int) -> AsyncIterator[int]:
            for i in range(k):
                yield i
            raise trio_echo.InvalidParams(f"failing after {k}")

        @self.service.method
        async def collect(items: ItemReceiver[Any]) -> list[Any]:
            return [item async for item in items]


async def test_a_server_stream_and_its_result() -> None:
    async with open_test_client() as client:
        async with client.stream("ticks", 5, 0) as s:
            assert [item async for item in s] == [0, 1, 2, 3, 4]
            assert s.done and s.result is None
            with pytest.raises(trio.EndOfChannel):
                await s.receive()
        assert await client.call("ping") == "pong"


async def test_credit_follows_what_the_application_consumes() -> None:
    probe = Probe()
    async with open_test_client(probe.service) as client:
        async with client.stream("count", 100, window=4) as s:
            await trio.testing.wait_all_tasks_blocked()
            assert probe.asked == 4  # a frozen consumer: the window, no more
            assert await s.receive() == 0
            await trio.testing.wait_all_tasks_blocked()
            assert probe.asked == 4  # one taken: not yet half the window
            assert await s.receive() == 1
            await trio.testing.wait_all_tasks_blocked()
            assert probe.asked == 6  # half taken: granted again
        # Leaving early cancelled it on the server: its generator was closed.
        with trio.fail_after(10):
            await probe.closed.wait()
        assert await client.call("ping") == "pong"


async def test_client_and_bidi_streams() -> None:
    async with open_test_client() as client:
        async with client.stream("sum", kind="client") as s:
            for i in range(100):  # more than the server's window: it grants as it sums
                await s.send(i)
            assert await s.finish() == 4950
            assert s.result == 4950
        async with client.stream("echo_stream", kind="bidi", window=2) as s:

            async def produce() -> None:
                for i in range(50):
                    await s.send(i)
                await s.end()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce)
                assert [item async for item in s] == list(range(50))
            assert s.result is None


async def test_an_end_with_an_error_reaches_the_handler() -> None:
    async with open_test_client() as client, client.stream("sum", kind="client") as s:
        await s.send(1)
        await s.end(trio_echo.RemoteError("disk full", code="io_error"))
        with pytest.raises(trio_echo.RemoteError) as info:
            await s.finish()
        assert (info.value.code, info.value.message) == ("io_error", "disk full")


async def test_an_error_after_k_items() -> None:
    probe = Probe()
    async with open_test_client(probe.service) as client, client.stream("fail_after", 3) as s:
        got = []
        with pytest.raises(trio_echo.InvalidParams, match="failing after 3"):
            async for item in s:
                got.append(item)
        assert got == [0, 1, 2]
        with pytest.raises(trio_echo.InvalidParams):
            s.result  # noqa: B018


async def test_a_wrong_kind_is_invalid_params() -> None:
    async with open_test_client() as client:
        async with client.stream("sum") as s:
            with pytest.raises(trio_echo.InvalidParams, match="client stream"):
                await s.receive()
        with pytest.raises(TypeError):
            async with client.stream("ticks", 1, 0) as s:
                await s.send(1)


async def test_a_timeout_while_the_consumer_waits(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_client() as client:
        async with client.stream("ticks", 10, 5, timeout=7) as s:
            assert await s.receive() == 0
            assert await s.receive() == 1
            with pytest.raises(trio_echo.DeadlineExceeded):
                await s.receive()
        assert await client.call("ping") == "pong"


async def test_the_body_raising_cancels_the_stream() -> None:
    probe = Probe()
    async with open_test_client(probe.service) as client:
        with pytest.raises(KeyError):
            async with client.stream("count", 10**6) as s:
                await s.receive()
                raise KeyError("mine")
        with trio.fail_after(10):
            await probe.closed.wait()
        stats = await client.call("stats")
        assert stats["errors"].get("cancelled") == 1


async def test_a_version_1_connection_has_no_streams() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(Server().serve_stream, server_stream)
        async with trio_echo.open_client_over_stream(client_stream, version=1) as client:
            with pytest.raises(trio_echo.UnsupportedVersion, match="version 2"):
                async with client.stream("ticks", 1, 0):
                    pass
            assert await client.call("ticks", 3, 0) == [0, 1, 2]  # gathered
        nursery.cancel_scope.cancel()


async def test_losing_the_connection_ends_the_stream() -> None:
    probe = Probe()
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        server_scope = trio.CancelScope()

        async def serve() -> None:
            with server_scope:
                await Server(probe.service).serve_stream(server_stream)

        nursery.start_soon(serve)
        async with (
            trio_echo.open_client_over_stream(client_stream) as client,
            client.stream("count", 10**6, window=2) as s,
        ):
            assert await s.receive() == 0
            server_scope.cancel()
            with pytest.raises(trio_echo.ConnectionClosed), trio.fail_after(10):
                while True:
                    await s.receive()
        assert probe.closed.is_set()


@pytest.fixture
def srv() -> Iterator[Any]:
    probe = Probe()
    with server_thread(probe.service) as running:
        running.probe = probe  # type: ignore[attr-defined]
        yield running


def test_blocking_streams(srv: Any) -> None:
    with trio_echo.connect("127.0.0.1", srv.port) as client:
        with client.stream("ticks", 5, 0) as s:
            assert list(s) == [0, 1, 2, 3, 4]
            assert s.result is None
        with client.stream("sum", kind="client") as s:
            for i in range(40):
                s.send(i)
            assert s.finish() == 780
        with client.stream("echo_stream", kind="bidi", window=3) as s:

            def produce() -> None:
                for i in range(30):
                    s.send(i)
                s.end()

            producer = threading.Thread(target=produce)
            producer.start()
            assert list(s) == list(range(30))
            producer.join(10)
        with client.stream("fail_after", 2) as s:
            got = []
            with pytest.raises(trio_echo.InvalidParams):
                for item in s:
                    got.append(item)
            assert got == [0, 1]
        assert client.call("ping") == "pong"


def test_blocking_leaving_early_cancels_and_a_timeout(srv: Any) -> None:
    with trio_echo.connect("127.0.0.1", srv.port) as client:
        with client.stream("count", 10**6, window=2) as s:
            assert next(iter(s)) == 0
        assert srv.probe.closed_in_thread.wait(10)
        with (
            pytest.raises(trio_echo.DeadlineExceeded),
            client.stream("ticks", 5, 5, timeout=0.3) as s,
        ):
            list(s)
        assert client.call("ping") == "pong"
