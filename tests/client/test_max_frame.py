"""A reply larger than the client's own max_frame fails that call only, with FrameTooLarge."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import trio_echo
from trio_echo import Server, Service, wire
from trio_echo.client.core import ClientCore

from helpers import server_thread, tcp_server

CLIENT_MAX = 10_000
TOO_LARGE = re.escape(
    f"more than this client's max_frame ({CLIENT_MAX}); it was skipped and the connection "
    "stays usable"
)


def service() -> Service:
    svc = Service()

    @svc.method
    def blob(size: int) -> bytes:
        return b"b" * size

    @svc.method
    async def slow_blob(size: int, wait: float) -> bytes:
        await trio.sleep(wait)
        return b"s" * size

    return svc


@asynccontextmanager
async def tcp_client() -> AsyncIterator[trio_echo.Client]:
    async with (
        tcp_server(Server(service())) as (_, port),
        trio_echo.open_client("127.0.0.1", port, max_frame=CLIENT_MAX) as client,
    ):
        yield client


async def check(client: trio_echo.Client) -> None:
    with pytest.raises(trio_echo.FrameTooLarge, match=TOO_LARGE) as info:
        await client.call("blob", 50_000)
    assert info.value.code == "frame_too_large"
    assert "the reply is 50" in str(info.value)
    # The connection carries on, and a reply just under the limit still comes.
    assert await client.call("blob", CLIENT_MAX - 100) == b"b" * (CLIENT_MAX - 100)
    assert not client.closed
    # Calls in flight around the skipped reply get theirs.
    results: dict[str, object] = {}

    async def one(name: str, size: int) -> None:
        try:
            results[name] = await client.call("slow_blob", size, 0.01)
        except trio_echo.FrameTooLarge:
            results[name] = "too large"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "small1", 10)
        nursery.start_soon(one, "big", 1_000_000)  # 1 MB, skipped as it streams in
        nursery.start_soon(one, "small2", 20)
    assert results == {"small1": b"s" * 10, "big": "too large", "small2": b"s" * 20}
    assert await client.call("ping") == "pong"


async def test_over_loopback() -> None:
    async with tcp_client() as client:
        await check(client)


async def test_in_memory() -> None:
    server = Server(service())
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_stream, server_stream)
        async with trio_echo.open_client_over_stream(client_stream, max_frame=CLIENT_MAX) as client:
            await check(client)
        nursery.cancel_scope.cancel()


def test_an_abandoned_calls_oversized_reply_is_dropped_quietly() -> None:
    core: ClientCore[str] = ClientCore(None, CLIENT_MAX)
    assert core.receive_hello(wire.encode_notification("hello", [{"max_frame": 10**7}]))
    msgid, _ = core.request("blob", (50_000,), None, "waiter")
    assert core.abandon(msgid, "waiter") is not None  # the caller gave up: a cancel to send
    late = wire.encode_response(msgid, b"b" * 50_000)
    assert core.receive(late + wire.encode_response(99, "junk")) == []
    assert msgid not in core.pending and core.error is None
    # The msgid is free again, and the connection is not finished.
    other, _ = core.request("ping", (), None, "next")
    assert core.receive(wire.encode_response(other, "pong")) == [("next", "pong", None)]


def test_the_blocking_client() -> None:
    with (
        server_thread(service()) as srv,
        trio_echo.connect("127.0.0.1", srv.port, max_frame=CLIENT_MAX) as client,
    ):
        with pytest.raises(trio_echo.FrameTooLarge, match=TOO_LARGE):
            client.call("blob", 50_000)
        assert client.call("blob", 100) == b"b" * 100
        assert not client.closed
