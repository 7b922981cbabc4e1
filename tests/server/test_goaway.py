"""Protocol version 2 on the server: goaway on shutdown and at --max-connection-age,
requests read after it answered unavailable, draining (protocol.md §11)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from trio_echo import Server, Service, wire
from trio_echo.wire import Cancel, ErrorResponse, Notification, Request, Response

from helpers import Peer, memory_server


def gated_service() -> tuple[Service, trio.Event, trio.Event]:
    """A ``hold`` method that runs until ``release`` is set; ``entered`` says it started."""
    service = Service()
    entered, release = trio.Event(), trio.Event()

    @service.method
    async def hold() -> str:
        entered.set()
        await release.wait()
        return "held"

    return service, entered, release


def is_goaway(event: wire.Event, reason: str, grace_ms: int) -> bool:
    return isinstance(event, Notification) and wire.parse_goaway(event) == (reason, grace_ms)


async def start_v2(stream: trio.abc.Stream) -> Peer:
    peer = Peer(stream, version=2)
    info = await peer.start()
    assert info["protocol"] == 2
    return peer


async def holding_v2(stream: trio.abc.Stream, entered: trio.Event) -> Peer:
    """A version 2 peer whose request 1 (``hold``) runs on the server."""
    peer = await start_v2(stream)
    await peer.request(1, "hold")
    await entered.wait()
    return peer


async def test_shutdown_goaway_then_unavailable_then_drain(
    autojump_clock: trio.abc.Clock,
) -> None:
    service, entered, release = gated_service()
    server = Server(service, grace=7)
    async with memory_server(server) as (_, stream, nursery):
        peer = await holding_v2(stream, entered)
        drained = trio.Event()

        async def shut_down() -> None:
            server.shutdown()
            await server._drain()
            drained.set()

        nursery.start_soon(shut_down)
        assert is_goaway(await peer.next_event(), "shutdown", 7000)
        # A request read after the goaway is not run: unavailable, at once.
        await peer.request(2, "echo", "late")
        reply = await peer.next_event()
        assert isinstance(reply, ErrorResponse) and (reply.msgid, reply.code) == (2, "unavailable")
        await peer.send(Notification("echo", ["dropped"]))
        # The call started before the goaway still gets its answer.
        release.set()
        assert await peer.next_event() == Response(1, "held")
        assert not drained.is_set()  # the server keeps reading until the client's EOF
        await stream.send_eof()
        assert await peer.expect_close() == []
        await drained.wait()
    stats = server.stats()
    assert stats["goaways"] == {"shutdown": 1}
    assert stats["errors"] == {"unavailable": 2}  # the request and the notification
    assert stats["requests_in_flight"] == 0


async def test_cancels_still_work_after_goaway(autojump_clock: trio.abc.Clock) -> None:
    service, entered, _ = gated_service()
    server = Server(service)
    async with memory_server(server) as (_, stream, nursery):
        peer = await holding_v2(stream, entered)
        server.shutdown()
        nursery.start_soon(server._drain)
        assert is_goaway(await peer.next_event(), "shutdown", 10_000)
        await peer.send(Cancel(1))
        reply = await peer.next_event()
        assert isinstance(reply, ErrorResponse) and (reply.msgid, reply.code) == (1, "cancelled")


async def test_requests_waiting_at_max_inflight_are_answered_unavailable_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    service, entered, release = gated_service()
    server = Server(service, max_inflight=1)
    async with memory_server(server) as (_, stream, nursery):
        peer = await holding_v2(stream, entered)
        await peer.send(*(Request(i, "echo", [i]) for i in range(2, 6)))
        await trio.testing.wait_all_tasks_blocked()  # read, and held: no room to start them
        server.shutdown()
        nursery.start_soon(server._drain)
        events = await peer.events(5)
        assert is_goaway(events[0], "shutdown", 10_000)
        assert [(e.msgid, e.code) for e in events[1:]] == [  # type: ignore[union-attr]
            (i, "unavailable") for i in range(2, 6)
        ]
        release.set()
        assert await peer.next_event() == Response(1, "held")


@pytest.mark.parametrize("mode", [wire.Mode.FRAMED, wire.Mode.MPRPC])
async def test_v1_and_stream_connections_drain_as_before(
    mode: wire.Mode, autojump_clock: trio.abc.Clock
) -> None:
    service, entered, release = gated_service()
    server = Server(service)
    async with memory_server(server) as (_, stream, nursery):
        peer = Peer(stream, mode)
        if mode is wire.Mode.FRAMED:
            await peer.start()  # version 1
        else:
            await peer.request(0, "ping")
            assert await peer.next_event() == Response(0, "pong")
        await peer.request(1, "hold")
        await entered.wait()
        server.shutdown()
        nursery.start_soon(server._drain)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
        # No goaway: the call is answered and the connection closed, as in version 1.
        assert await peer.expect_close() == [Response(1, "held")]
    assert server.stats()["goaways"] == {}


async def test_grace_runs_out_when_the_client_stays(autojump_clock: trio.abc.Clock) -> None:
    service, entered, _ = gated_service()
    server = Server(service, grace=3)
    async with memory_server(server) as (_, stream, nursery):
        peer = await holding_v2(stream, entered)
        server.shutdown()
        start = trio.current_time()
        await server._drain()  # returns when the grace is over
        assert trio.current_time() - start == pytest.approx(3)
        nursery.cancel_scope.cancel()
        assert is_goaway(await peer.next_event(), "shutdown", 3000)


async def test_max_connection_age(autojump_clock: trio.abc.Clock) -> None:
    server = Server(max_connection_age=5, grace=2)
    async with memory_server(server) as (_, stream, _):
        peer = await start_v2(stream)
        assert await peer.call(1, "echo", "young") == Response(1, "young")
        start = trio.current_time()
        event = await peer.next_event()
        aged = trio.current_time() - start
        assert is_goaway(event, "max_age", 2000)
        assert 4.5 <= aged <= 5.5  # the age, give or take a tenth
        reply = await peer.call(2, "echo", "old")
        assert isinstance(reply, ErrorResponse) and reply.code == "unavailable"
        # The client never leaves: the connection is closed when the grace is over.
        assert await peer.expect_close() == []
        assert trio.current_time() - start == pytest.approx(aged + 2)
    assert server.stats()["goaways"] == {"max_age": 1}


async def test_max_connection_age_client_leaves_first(autojump_clock: trio.abc.Clock) -> None:
    server = Server(max_connection_age=5, grace=30)
    async with memory_server(server) as (_, stream, _):
        peer = await start_v2(stream)
        assert is_goaway(await peer.next_event(), "max_age", 30_000)
        start = trio.current_time()
        await stream.send_eof()
        assert await peer.expect_close() == []
        assert trio.current_time() - start < 1


async def test_max_connection_age_spares_version_1(autojump_clock: trio.abc.Clock) -> None:
    server = Server(max_connection_age=5, idle_timeout=0)
    async with memory_server(server) as (_, stream, _):
        peer = Peer(stream)
        await peer.start()
        await trio.sleep(60)
        assert await peer.call(1, "ping") == Response(1, "pong")
    assert server.stats()["goaways"] == {}


def test_ages_are_spread() -> None:
    """The jitter: ages drawn for many connections differ, within ±10 %."""
    import random

    from trio_echo.server.goaway import AGE_JITTER

    draws = [10 * random.uniform(1 - AGE_JITTER, 1 + AGE_JITTER) for _ in range(200)]
    assert 9 <= min(draws) < 9.5 and 10.5 < max(draws) <= 11


async def test_stats_and_hello(autojump_clock: trio.abc.Clock) -> None:
    """stats() always has the goaways map; a v2 hello is the v1 hello with protocol 2."""
    server = Server()
    async with memory_server(server) as (_, stream, _):
        peer = await start_v2(stream)
        stats: dict[str, Any] = (await peer.call(1, "stats")).result  # type: ignore[union-attr]
        assert stats["goaways"] == {}
