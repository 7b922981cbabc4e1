"""Streams on the server, message by message (protocol.md §12), over in-memory connections.

Each test speaks the protocol with a bare :class:`Peer` (version 2 unless said
otherwise) and checks what the server sends, and what the handlers saw: that a
producer is never asked for an item without a credit, that a generator's
``finally`` runs however its stream ends, and that the connection carries on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from trio_echo import ItemReceiver, ItemSender, Server, Service, wire
from trio_echo.testing import Peer
from trio_echo.wire import Credit, End, ErrorResponse, Items, Notification, Response

from helpers import eventually, memory_server, quiet


class Probe:
    """A service whose streams report what they were asked and how they ended."""

    def __init__(self) -> None:
        self.asked = 0  # items the producer was asked for
        self.closed = trio.Event()  # a generator's finally ran
        self.received: list[Any] = []
        self.service = Service()
        svc = self.service

        @svc.method
        async def count(n: int) -> AsyncIterator[int]:
            try:
                for i in range(n):
                    self.asked += 1
                    yield i
            finally:
                self.closed.set()

        @svc.method
        async def forever() -> AsyncIterator[int]:
            try:
                i = 0
                while True:
                    self.asked += 1
                    yield i
                    i += 1
                    await trio.lowlevel.checkpoint()
            finally:
                self.closed.set()

        @svc.method
        async def fail_after(k: int) -> AsyncIterator[int]:
            for i in range(k):
                yield i
            raise ValueError("kaboom")

        @svc.method
        async def bad_item(k: int) -> AsyncIterator[Any]:
            for i in range(k):
                yield i
            yield object()

        @svc.method
        async def collect(items: ItemReceiver[Any]) -> list[Any]:
            try:
                async for item in items:
                    self.received.append(item)
                return self.received
            finally:
                self.closed.set()

        @svc.method
        async def take(items: ItemReceiver[Any], n: int) -> list[Any]:
            """Takes n items, then returns without waiting for the end."""
            return [await items.receive() for _ in range(n)]

        @svc.method(stream="server")
        async def spread(out: ItemSender[int], n: int) -> None:
            """Channel style: items sent from tasks of a nursery."""

            async def one(i: int) -> None:
                await out.send(i)

            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(one, i)

        @svc.method(stream="bidi")
        async def doubler(items: ItemReceiver[int], out: ItemSender[int]) -> int:
            n = 0
            async for item in items:
                await out.send(item * 2)
                n += 1
            return n


@asynccontextmanager
async def v2(
    service: Service | None = None, version: int = 2, **options: Any
) -> AsyncIterator[tuple[Server, Peer]]:
    async with memory_server(Server(service, **options)) as (server, stream, _):
        peer = Peer(stream, version=version)
        await peer.start()
        yield server, peer


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def items_of(peer: Peer, msgid: int, n: int) -> list[Any]:
    """The next ``n`` items of stream ``msgid`` (in as many items messages as they came)."""
    got: list[Any] = []
    while len(got) < n:
        event = await peer.next_event()
        assert isinstance(event, Items) and event.msgid == msgid, event
        got += event.items
    assert len(got) == n
    return got


async def test_a_server_stream_sends_no_more_than_the_credit_and_asks_no_more() -> None:
    probe = Probe()
    async with v2(probe.service) as (_, peer):
        await peer.request(1, "count", 10, stream="server", credit=3)
        assert await peer.next_event() == Items(1, [0, 1, 2])  # one batch: they were ready
        await settle()
        assert probe.asked == 3  # the producer waits for credit, it does not run ahead
        await peer.send(Credit(1, 4))
        assert await peer.next_event() == Items(1, [3, 4, 5, 6])
        await settle()
        assert probe.asked == 7
        await peer.send(Credit(1, 100))
        assert await peer.next_event() == Items(1, [7, 8, 9])
        assert await peer.next_event() == Response(1, None)  # the end, as soon as it is known
        assert probe.closed.is_set()
        assert await peer.call(2, "ping") == Response(2, "pong")


async def test_the_end_needs_a_credit_to_be_known_and_credit_zero_sends_nothing() -> None:
    probe = Probe()
    async with v2(probe.service) as (_, peer):
        await peer.request(1, "count", 2, stream="server", credit=0)
        await settle()
        assert probe.asked == 0
        await peer.send(Credit(1, 2))
        assert await peer.next_event() == Items(1, [0, 1])
        await settle()
        assert not probe.closed.is_set()  # not asked again yet: no credit
        await peer.send(Credit(1, 1))
        assert await peer.next_event() == Response(1, None)


async def test_a_client_stream_waits_for_the_go_ahead_and_is_refilled_as_it_is_consumed() -> None:
    probe = Probe()
    async with v2(probe.service, stream_credit=4) as (_, peer):
        await peer.request(1, "collect", stream="client")
        assert await peer.next_event() == Credit(1, 4)  # the go-ahead
        await peer.send(Items(1, [1, 2]))
        assert await peer.next_event() == Credit(1, 2)  # half the window taken: refilled
        await peer.send(Items(1, [3, 4, 5, 6]))
        assert await peer.events(2) == [Credit(1, 2), Credit(1, 2)]
        await peer.send(End(1))
        assert await peer.next_event() == Response(1, [1, 2, 3, 4, 5, 6])


async def test_builtins_sum_and_echo_stream() -> None:
    async with v2() as (_, peer):
        await peer.request(1, "sum", stream="client")
        assert await peer.next_event() == Credit(1, 16)
        await peer.send(Items(1, [1, 2.5]), Items(1, [-3]), End(1))
        assert await peer.next_event() == Response(1, 0.5)
        await peer.request(2, "echo_stream", stream="bidi", credit=16)
        assert await peer.next_event() == Credit(2, 16)
        await peer.send(Items(2, ["a", None, b"\x00"]))
        assert await peer.next_event() == Items(2, ["a", None, b"\x00"])
        await peer.send(End(2))
        assert await peer.next_event() == Response(2, None)
        await peer.request(3, "sum", stream="client")
        await peer.send(End(3))  # before the go-ahead: an empty stream
        events = await peer.events(1)
        if events[0] == Credit(3, 16):
            events = await peer.events(1)
        assert events == [Response(3, 0)]


async def test_sum_rejects_what_is_not_a_number() -> None:
    async with v2() as (_, peer):
        await peer.request(1, "sum", stream="client")
        assert await peer.next_event() == Credit(1, 16)
        await peer.send(Items(1, [1, True]), End(1))
        reply = await peer.next_event()
        assert isinstance(reply, ErrorResponse) and reply.code == "invalid_params"


async def test_ticks_paces_its_items(autojump_clock: trio.testing.MockClock) -> None:
    async with v2() as (_, peer):
        start = trio.current_time()
        await peer.request(1, "ticks", 3, 3, stream="server", credit=10)
        got: list[Any] = []
        while len(got) < 3:
            event = await peer.next_event()
            assert isinstance(event, Items)
            got += event.items
        assert got == [0, 1, 2]
        assert await peer.next_event() == Response(1, None)
        assert trio.current_time() - start == pytest.approx(6)


async def test_channel_style_streams_with_a_nursery_and_bidi() -> None:
    probe = Probe()
    async with v2(probe.service) as (_, peer):
        await peer.request(1, "spread", 5, stream="server", credit=2)
        got: list[int] = []
        while len(got) < 2:
            event = await peer.next_event()
            assert isinstance(event, Items)
            got += event.items
        await settle()
        await peer.send(Credit(1, 10))
        while len(got) < 5:
            event = await peer.next_event()
            assert isinstance(event, Items)
            got += event.items
        assert sorted(got) == [0, 1, 2, 3, 4]
        assert await peer.next_event() == Response(1, None)
        await peer.request(2, "doubler", stream="bidi", credit=8)
        assert await peer.next_event() == Credit(2, 16)
        await peer.send(Items(2, [1, 2, 3]), End(2))
        got = []
        while len(got) < 3:
            event = await peer.next_event()
            assert isinstance(event, Items)
            got += event.items
        assert got == [2, 4, 6]
        assert await peer.next_event() == Response(2, 3)


@pytest.mark.parametrize(
    ("method", "options", "says"),
    [
        ("ticks", {"stream": "client"}, "ticks is a server stream, not a client stream"),
        ("ticks", {"stream": "bidi", "credit": 1}, "not a bidi stream"),
        ("sum", {"stream": "server", "credit": 1}, "sum is a client stream"),
        ("echo", {"stream": "server", "credit": 1}, "echo is a unary method"),
        ("ticks", {"stream": "server"}, "needs a credit"),
        ("ticks", {"stream": "server", "credit": -1}, "needs a credit"),
        ("ticks", {"stream": "server", "credit": 2**31}, "needs a credit"),
        ("ticks", {"stream": "up", "credit": 1}, "stream must be"),
    ],
)
async def test_wrong_kind_or_bad_options_are_invalid_params(
    method: str, options: dict[str, Any], says: str
) -> None:
    async with v2() as (server, peer):
        params = [3, 0] if method == "ticks" else ["x"] if method == "echo" else []
        await peer.send(wire.Request(1, method, params, options))
        reply = await peer.next_event()
        assert isinstance(reply, ErrorResponse), reply
        assert reply.code == "invalid_params" and says in reply.message
        assert server.stats()["requests_in_flight"] == 0
        assert await peer.call(2, "ping") == Response(2, "pong")


@pytest.mark.parametrize("version", [1, 2])
async def test_without_streams_a_server_stream_is_gathered_and_the_others_refused(
    version: int,
) -> None:
    async with v2(version=version) as (_, peer):
        assert await peer.call(1, "ticks", 4, 0) == Response(1, [0, 1, 2, 3])
        for msgid, method in [(2, "sum"), (3, "echo_stream")]:
            reply = await peer.call(msgid, method)
            assert isinstance(reply, ErrorResponse) and reply.code == "invalid_params"
            assert "needs protocol version 2 streams" in reply.message
        if version == 1:
            # The stream option is an unknown option on version 1: ignored.
            reply = await peer.call(4, "ticks", 2, 0, stream="server", credit=1)
            assert reply == Response(4, [0, 1])
            await peer.stream.send_all(wire.encode_credit(4, 1))
            notice = await peer.next_event()
            assert isinstance(notice, Notification) and notice.method == "error"
            assert "unknown message type 5" in notice.params[0]["message"]


async def test_msgpack_rpc_stream_connections_gather_too() -> None:
    async with memory_server() as (_, stream, _):
        peer = Peer(stream, wire.Mode.MPRPC)
        assert await peer.call(1, "ticks", 3, 0) == Response(1, [0, 1, 2])
        reply = await peer.call(2, "sum")
        assert isinstance(reply, ErrorResponse) and reply.code == "invalid_params"


async def test_a_gathered_stream_is_bounded_by_max_frame() -> None:
    async with v2(max_frame=1000) as (_, peer):
        reply = await peer.call(1, "ticks", 2000, 0)
        assert isinstance(reply, ErrorResponse) and reply.code == "invalid_params"
        assert "streams its items" in reply.message and "max_frame (1000" in reply.message


async def test_a_handler_raising_after_k_items_sends_k_items_then_the_error() -> None:
    probe = Probe()
    async with v2(probe.service) as (_, peer):
        await peer.request(1, "fail_after", 3, stream="server", credit=10)
        assert await peer.next_event() == Items(1, [0, 1, 2])
        reply = await peer.next_event()
        assert isinstance(reply, ErrorResponse) and reply.code == "internal"
        assert "kaboom" in reply.message
        await peer.request(2, "bad_item", 2, stream="server", credit=10)
        assert await peer.next_event() == Items(2, [0, 1])
        reply = await peer.next_event()
        assert isinstance(reply, ErrorResponse) and reply.code == "internal"
        assert "cannot be encoded" in reply.message


async def test_an_end_with_an_error_is_an_exception_in_the_handler() -> None:
    probe = Probe()
    async with v2(probe.service) as (_, peer):
        await peer.request(1, "collect", stream="client")
        assert await peer.next_event() == Credit(1, 16)
        err = {"code": "io_error", "message": "disk full", "data": [1]}
        await peer.send(Items(1, [1]), End(1, err))
        assert await peer.next_event() == ErrorResponse(1, "io_error", "disk full", [1])
        assert probe.received == [1] and probe.closed.is_set()


@pytest.mark.parametrize(
    ("messages", "why"),
    [
        ([Items(1, [1, 2, 3, 4, 5])], "5 items with 4 credits"),
        ([End(1), Items(1, [1])], "items after the client's end"),
        ([End(1), End(1)], "a second end"),
        ([Credit(1, 1)], None),  # a client stream ignores credit: not an error
    ],
)
async def test_stream_protocol_errors_end_that_call_with_malformed(
    messages: list[wire.Event], why: str | None
) -> None:
    probe = Probe()
    async with v2(probe.service, stream_credit=4) as (server, peer):
        await peer.request(9, "block_forever_other")  # an unknown method: answered at once
        await peer.next_event()
        await peer.request(1, "collect", stream="client")
        assert await peer.next_event() == Credit(1, 4)
        await peer.send(*messages)
        if why is None:
            await peer.send(End(1))
            assert await peer.next_event() == Response(1, [])
            return
        reply = await peer.next_event()
        assert isinstance(reply, ErrorResponse) and reply.code == "malformed", reply
        assert why in reply.message
        await probe.closed.wait()
        # The connection carries on, later messages for that msgid are dropped.
        await peer.send(Items(1, [1]), End(1))
        assert await peer.call(2, "ping") == Response(2, "pong")
        assert server.stats()["requests_in_flight"] == 0


async def test_items_read_with_their_request_came_before_the_go_ahead() -> None:
    probe = Probe()
    async with v2(probe.service) as (server, peer):
        # In one write: the client cannot have seen a go-ahead.
        request = wire.encode_request(1, "collect", [], {"stream": "client"})
        await peer.stream.send_all(request + wire.encode_items(1, [1]))
        reply = await peer.next_event()
        if reply == Credit(1, 16):  # the go-ahead, if the handler started first
            reply = await peer.next_event()
        assert isinstance(reply, ErrorResponse) and reply.code == "malformed", reply
        assert "before the server's go-ahead" in reply.message
        assert probe.received == []
        # After the go-ahead, in a read of their own, items are the stream's.
        await peer.request(2, "collect", stream="client")
        assert await peer.next_event() == Credit(2, 16)
        await peer.send(Items(2, [1, 2]), End(2))
        assert await peer.next_event() == Response(2, [1, 2])
        assert server.stats()["requests_in_flight"] == 0


async def test_malformed_stream_messages() -> None:
    probe = Probe()
    async with v2(probe.service) as (_, peer):
        await peer.request(1, "collect", stream="client")
        assert await peer.next_event() == Credit(1, 16)
        await peer.stream.send_all(wire.frame(wire.packb([4, 1, []])))
        reply = await peer.next_event()
        assert isinstance(reply, ErrorResponse) and reply.code == "malformed"
        # For no running stream: dropped; without a readable msgid: a notice.
        await peer.stream.send_all(wire.frame(wire.packb([5, 77, 0])))
        await peer.stream.send_all(wire.frame(wire.packb([5, "x", 1])))
        notice = await peer.next_event()
        assert isinstance(notice, Notification) and notice.params[0]["code"] == "malformed"
        # Too much credit on a server stream.
        await peer.request(2, "ticks", 5, 60, stream="server", credit=wire.MAX_CREDIT)
        assert await peer.next_event() == Items(2, [0])  # then it sleeps: MAX - 1 outstanding
        await peer.send(Credit(2, 2))
        event = await peer.next_event()
        assert isinstance(event, ErrorResponse) and event.code == "malformed"
        assert "outstanding" in event.message
        assert await peer.call(3, "ping") == Response(3, "pong")


async def test_cancel_mid_stream_before_the_go_ahead_after_the_end_and_twice() -> None:
    probe = Probe()
    async with v2(probe.service, max_inflight=1) as (server, peer):
        # Mid-stream, the producer waiting for credit.
        await peer.request(1, "forever", stream="server", credit=2)
        assert await items_of(peer, 1, 2) == [0, 1]
        await settle()
        assert probe.asked == 2
        await peer.send(wire.Cancel(1), wire.Cancel(1))
        assert await peer.next_event() == ErrorResponse(1, "cancelled", "cancelled by the client")
        assert probe.closed.is_set()
        # Before the go-ahead: the stream waits for room behind a running one.
        await peer.request(2, "collect", stream="client")
        assert await peer.next_event() == Credit(2, 16)
        await peer.request(3, "collect", stream="client")
        await settle()
        await peer.send(wire.Cancel(3), Credit(3, 1))
        # Answered at once (as any request cancelled while it waits, §4.5), never run.
        assert await peer.next_event() == ErrorResponse(3, "cancelled", "cancelled by the client")
        await peer.send(End(2))
        assert await peer.next_event() == Response(2, [])
        await settle()
        assert probe.received == []
        # After the final response: nothing more for that msgid.
        await peer.send(wire.Cancel(2), wire.Cancel(2))
        assert await peer.call(4, "ping") == Response(4, "pong")
        assert server.stats()["requests_in_flight"] == 0


async def test_a_deadline_while_waiting_for_credit(autojump_clock: trio.testing.MockClock) -> None:
    probe = Probe()
    async with v2(probe.service) as (_, peer):
        await peer.request(1, "forever", stream="server", credit=1, timeout_ms=5000)
        assert await peer.next_event() == Items(1, [0])
        reply = await peer.next_event()
        assert isinstance(reply, ErrorResponse) and reply.code == "timeout"
        assert probe.closed.is_set()


async def test_the_stream_idle_timeout(autojump_clock: trio.testing.MockClock) -> None:
    probe = Probe()
    async with v2(probe.service, stream_idle_timeout=5) as (_, peer):
        start = trio.current_time()
        await peer.request(1, "forever", stream="server", credit=1)
        assert await peer.next_event() == Items(1, [0])
        reply = await peer.next_event()
        assert isinstance(reply, ErrorResponse) and reply.code == "timeout"
        assert "stream_idle_timeout" in reply.message
        assert trio.current_time() - start == pytest.approx(5)
        assert probe.closed.is_set()


async def test_half_close_ends_what_waits_on_the_client_and_finishes_the_rest() -> None:
    probe = Probe()
    async with v2(probe.service) as (_, peer):
        await peer.request(1, "forever", stream="server", credit=1)
        await peer.request(2, "count", 3, stream="server", credit=5)
        await peer.request(3, "take", 1, stream="client")
        await peer.request(4, "collect", stream="client")
        await settle()
        await peer.send(Items(3, [7]))
        await settle()
        await peer.stream.send_eof()
        events = await peer.expect_close()
        replies = {e.msgid: e for e in events if isinstance(e, Response | ErrorResponse)}
        assert replies[1] == ErrorResponse(1, "cancelled", replies[1].message)  # type: ignore[union-attr]
        assert "half-closed" in replies[1].message  # type: ignore[union-attr]
        assert replies[2] == Response(2, None)
        assert replies[3] == Response(3, [7])
        assert isinstance(replies[4], ErrorResponse) and replies[4].code == "cancelled"


async def test_a_full_connection_still_applies_the_messages_of_running_streams() -> None:
    """max_inflight=2, both running streams need the client; requests wait behind them."""
    probe = Probe()
    async with v2(probe.service, max_inflight=2) as (server, peer):
        await peer.request(1, "collect", stream="client")
        await peer.request(2, "count", 3, stream="server", credit=1)
        await peer.request(3, "ticks", 2, 0, stream="server", credit=0)  # waits for room
        await peer.request(4, "ping")
        assert await peer.events(2) == [Credit(1, 16), Items(2, [0])]
        await peer.send(Credit(3, 5))  # for a stream still waiting: kept until it starts
        await peer.send(Items(1, ["a"]), Credit(2, 5), End(1))
        events = await peer.events(6)
        assert Response(1, ["a"]) in events and Response(2, None) in events
        assert Items(2, [1, 2]) in events and Response(4, "pong") in events
        assert Items(3, [0, 1]) in events and Response(3, None) in events
        assert server.stats()["requests_in_flight"] == 0


async def test_a_large_items_message_while_full() -> None:
    probe = Probe()
    blob = b"x" * (wire.LARGE_MESSAGE * 2)
    async with v2(probe.service, max_inflight=1) as (_, peer):
        await peer.request(1, "collect", stream="client")
        assert await peer.next_event() == Credit(1, 16)
        await peer.request(2, "ping")  # waits for room
        await peer.send(Items(1, [blob, 1]), End(1))
        assert await peer.events(2) == [Response(1, [blob, 1]), Response(2, "pong")]


async def test_lost_connection_closes_every_generator() -> None:
    probe = Probe()
    async with memory_server(Server(probe.service)) as (server, stream, _):
        peer = Peer(stream, version=2)
        await peer.start()
        await peer.request(1, "forever", stream="server", credit=1)
        await peer.request(2, "collect", stream="client")
        await peer.events(2)
        await stream.aclose()
        with trio.fail_after(10):
            await probe.closed.wait()
        await eventually(lambda: quiet(server))


async def test_server_side_loss_closes_generators_and_the_client_sees_eof() -> None:
    probe = Probe()
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(Server(probe.service).serve_stream, server_side)
        peer = Peer(client, version=2)
        await peer.start()
        await peer.request(1, "forever", stream="server", credit=1)
        assert await peer.next_event() == Items(1, [0])
        nursery.cancel_scope.cancel()
    assert probe.closed.is_set()
    assert await peer.expect_close() == []


async def test_split_at_every_byte_boundary() -> None:
    data = (
        wire.encode_request(1, "sum", [], {"stream": "client"})
        + wire.encode_request(2, "ticks", [2, 0], {"stream": "server", "credit": 1})
        + wire.encode_credit(2, 2)  # 1 + 2: two items, and a credit to learn the end
    )
    tail = wire.encode_items(1, [1, 2]) + wire.encode_items(1, [3]) + wire.encode_end(1)
    for cut in range(1, len(data + tail)):
        async with v2() as (_, peer):
            whole = data + tail
            await peer.stream.send_all(data[: min(cut, len(data))])
            await settle()
            if cut < len(data):
                await peer.stream.send_all(data[cut:])
            # The go-ahead came: now the client's items, cut at the same place.
            events: list[wire.Event] = []
            while Credit(1, 16) not in events:
                events.append(await peer.next_event())
            rest = whole[max(cut, len(data)) :]
            if cut > len(data):
                await peer.stream.send_all(tail[: cut - len(data)])
                await settle()
            await peer.stream.send_all(rest)
            while len([e for e in events if isinstance(e, Response)]) < 2:
                events.append(await peer.next_event())
            assert Response(1, 6) in events and Response(2, None) in events
            items = [i for e in events if isinstance(e, Items) and e.msgid == 2 for i in e.items]
            assert items == [0, 1]


async def test_methods_reports_each_kind() -> None:
    probe = Probe()
    async with v2(probe.service) as (_, peer):
        reply = await peer.call(1, "methods")
        assert isinstance(reply, Response)
        kinds = {m["name"]: m["kind"] for m in reply.result}
        assert kinds["echo"] == "unary" and kinds["sleep"] == "unary"
        assert kinds["ticks"] == kinds["count"] == kinds["spread"] == "server"
        assert kinds["sum"] == kinds["collect"] == "client"
        assert kinds["echo_stream"] == kinds["doubler"] == "bidi"


async def test_a_thousand_streams_on_one_connection_all_complete() -> None:
    """With the default max_inflight (128) the later ones wait their turn, while the
    running ones keep receiving credit."""
    n = 1000
    async with v2() as (server, peer):
        await peer.send(
            *[wire.Request(i, "ticks", [4, 0], {"stream": "server", "credit": 1}) for i in range(n)]
        )
        got = dict.fromkeys(range(n), 0)
        done: set[int] = set()
        with trio.fail_after(60):
            while len(done) < n:
                event = await peer.next_event()
                if isinstance(event, Items):
                    got[event.msgid] += len(event.items)
                    await peer.send(Credit(event.msgid, len(event.items)))
                else:
                    assert isinstance(event, Response), event
                    done.add(event.msgid)
        assert all(count == 4 for count in got.values())
        assert server.stats()["requests_in_flight"] == 0


def test_registering_streams() -> None:
    service = Service()

    async def gen() -> AsyncIterator[int]:
        yield 1

    async def client(items: ItemReceiver[int], scale: float) -> float:
        return scale

    async def bidi_gen(items: ItemReceiver[int]) -> AsyncIterator[int]:
        yield 1

    async def channel(out: ItemSender[int], n: int) -> None:
        pass

    async def both(items: ItemReceiver[int], out: ItemSender[int]) -> None:
        pass

    async def untyped(a: Any) -> None:
        pass

    expected = {
        gen: ("server", ()),
        client: ("client", ("receiver",)),
        bidi_gen: ("bidi", ("receiver",)),
        channel: ("server", ("sender",)),
        both: ("bidi", ("receiver", "sender")),
    }
    for fn, (kind, injected) in expected.items():
        method = service.add(fn)
        assert (method.kind_name, method.injected) == (kind, injected), fn
        assert method.kind is trio_echo_kind("STREAM")
    assert service.add(untyped).kind_name == "unary"
    assert service.add(untyped, name="u2", stream="client").injected == ("receiver",)
    # The call's parameters are what follows the injected ones.
    assert service.get("client").check_params([1.5]) is None  # type: ignore[union-attr]
    assert service.get("client").check_params(["x"]) is not None  # type: ignore[union-attr]
    with pytest.raises(TypeError):
        service.add(gen, name="g2", stream="client")
    with pytest.raises(ValueError):
        service.add(gen, name="g3", stream="sideways")

    def plain() -> None:
        pass

    with pytest.raises(TypeError):
        service.add(plain, stream="server")


def trio_echo_kind(name: str) -> Any:
    import trio_echo

    return getattr(trio_echo.HandlerKind, name)
