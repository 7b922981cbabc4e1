"""Streams over real loopback sockets (protocol.md §12): bare sockets byte by byte, a frozen
consumer beside a unary caller, connection loss, a thousand streams on one connection."""

from __future__ import annotations

import gc
import json
import socket
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import trio

import trio_echo
from trio_echo import Server, Service, wire
from trio_echo.wire import Credit, End, ErrorResponse, Items, Response

from helpers import (
    ServerProcess,
    SyncPeer,
    eventually,
    proc_status_kib,
    quiet,
    reset,
    run_cli,
    tcp_server,
)

MALFORMED_EARLY = "stream protocol error: items before the server's go-ahead (its first credit)"


class RawPeer(SyncPeer):
    """A version 2 framed client on a blocking socket, speaking exactly what it is told."""

    def __init__(self, port: int) -> None:
        super().__init__(port, timeout=30, version=2)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hello = self.next_event()
        assert isinstance(hello, wire.Notification) and hello.params[0]["protocol"] == 2

    def __enter__(self) -> RawPeer:
        return self

    def until(self, *wanted: wire.Event) -> list[wire.Event]:
        """Events up to the moment every one of ``wanted`` has come."""
        events: list[wire.Event] = []
        while not all(w in events for w in wanted):
            events.append(self.next_event())
        return events

    def call_latency(self, msgid: int) -> float:
        """One echo's round trip in seconds, skipping the stream's items that come meanwhile."""
        start = time.perf_counter()
        self.send(wire.Request(msgid, "echo", [b"x" * 64]))
        while True:
            event = self.next_event()
            if isinstance(event, Response) and event.msgid == msgid:
                return time.perf_counter() - start
            assert isinstance(event, Items), event


def test_bare_socket_streams_sent_a_byte_at_a_time() -> None:
    with ServerProcess("--stream-credit", "4") as srv, RawPeer(srv.port) as peer:
        data = (
            wire.encode_request(1, "ticks", [3, 0], {"stream": "server", "credit": 2})
            + wire.encode_request(2, "sum", [], {"stream": "client"})
            + wire.encode_credit(1, 2)
        )
        for i in range(len(data)):
            peer.sock.sendall(data[i : i + 1])  # (TCP_NODELAY: one segment each)
        events = peer.until(Credit(2, 4), Response(1, None))
        items = [i for e in events if isinstance(e, Items) for i in e.items]
        assert items == [0, 1, 2]
        tail = wire.encode_items(2, [1, 2, 3, 4]) + wire.encode_end(2)
        for i in range(len(tail)):
            peer.sock.sendall(tail[i : i + 1])
        # (Credit is granted again as the handler takes items, unless the end came first.)
        assert all(isinstance(e, Credit) for e in peer.until(Response(2, 10))[:-1])
        # Beyond the credit: that call alone ends malformed.
        peer.send(wire.Request(3, "sum", [], {"stream": "client"}))
        assert peer.next_event() == Credit(3, 4)
        peer.send(Items(3, [1, 2, 3, 4, 5]))
        reply = peer.next_event()
        assert isinstance(reply, ErrorResponse) and reply.code == "malformed"
        peer.send(End(3), wire.Request(4, "ping", []))
        assert peer.next_event() == Response(4, "pong")
        peer.sock.close()  # (else a version 2 server waits for our EOF as it stops)
        assert srv.stop() == 0


def test_a_frozen_consumer_delays_no_unary_call_and_costs_bounded_memory() -> None:
    """Unary p99 on the connection of 50 frozen streams stays within 2x of its value without
    them, and the server sends (and holds) only their credit's worth of items."""
    with ServerProcess() as srv, RawPeer(srv.port) as peer:
        msgid = iter(range(10, 10**9))

        def p99(calls: int = 1500) -> float:
            for _ in range(100):  # warm up
                peer.call_latency(next(msgid))
            # The server's latency is measured, not this process's garbage collector (in
            # the full suite its heap is large, and decoding the items triggers it).
            gc.collect()
            gc.disable()
            try:
                samples = sorted(peer.call_latency(next(msgid)) for _ in range(calls))
            finally:
                gc.enable()
            return samples[int(calls * 0.99)]

        def stats() -> dict[str, Any]:
            return json.loads(run_cli("call", "--port", str(srv.port), "stats").stdout)

        frozen_ids = range(1000, 1050)
        base, frozen = [], []
        for _ in range(5):  # alternate, so that the machine's load hits both alike
            base.append(p99())
            sent_before = stats()["bytes_out"]
            rss_before = proc_status_kib(srv.proc.pid, "VmRSS")
            # 50 streams of 1 KiB items, 16 credits each, never refilled: frozen.
            options = {"stream": "server", "credit": 16}
            peer.send(
                *[wire.Request(i, "ticks", [wire.MAX_CREDIT, 0, 1024], options) for i in frozen_ids]
            )
            items = 0
            while items < 50 * 16:  # every stream has used its credit: frozen from here on
                event = peer.next_event()
                assert isinstance(event, Items), event
                items += len(event.items)
            assert items == 50 * 16
            frozen.append(p99())
            time.sleep(0.5)  # what a frozen consumer looks like: time passes, nothing is read
            sent = stats()["bytes_out"] - sent_before
            rss_growth = proc_status_kib(srv.proc.pid, "VmRSS") - rss_before
            # Their items: 50 x 16 x ~1 KiB, plus the echoes' and stats' replies.
            assert sent < 50 * 16 * 1100 + 2000 * 200, sent
            assert rss_growth < 20 * 1024, rss_growth  # KiB: no build-up in the server
            peer.send(*[wire.Cancel(i) for i in frozen_ids])
            cancelled = 0
            while cancelled < len(frozen_ids):
                event = peer.next_event()
                if isinstance(event, ErrorResponse):
                    assert event.code == "cancelled"
                    cancelled += 1
        # Loopback round trips are ~0.1 ms, and on a loaded 2-core machine other processes
        # put a p99 anywhere up to ~3 ms: the floor keeps such hiccups from counting (a
        # connection stalled by its frozen streams would miss it by far).
        floor = 0.001
        assert statistics.median(frozen) <= 2 * max(statistics.median(base), floor), (base, frozen)
        peer.sock.close()
        assert srv.stop() == 0


class Probe:
    def __init__(self) -> None:
        self.open = 0
        self.closed = 0
        self.service = Service()

        @self.service.method
        async def endless() -> AsyncIterator[int]:
            self.open += 1
            try:
                i = 0
                while True:
                    yield i
                    i += 1
                    await trio.sleep(0.001)
            finally:
                self.closed += 1


async def test_a_client_reset_closes_every_generator() -> None:
    probe = Probe()
    async with tcp_server(Server(probe.service)) as (server, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(wire.PREAMBLE_V2)
        await stream.send_all(
            b"".join(
                wire.encode_request(i, "endless", [], {"stream": "server", "credit": 5})
                for i in range(20)
            )
        )
        await eventually(lambda: probe.open == 20)
        reset(stream)
        await eventually(lambda: probe.closed == 20 and quiet(server))


async def test_a_lost_server_fails_the_clients_streams_and_nothing_hangs() -> None:
    probe = Probe()
    async with trio.open_nursery() as nursery:
        server = Server(probe.service)
        listeners = await nursery.start(server.serve, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        async with (
            trio_echo.open_client("127.0.0.1", port, reconnect=False) as client,
            client.stream("endless", window=4) as s,
        ):
            assert await s.receive() == 0
            nursery.cancel_scope.cancel()  # the server goes away at once
            with trio.fail_after(10):
                try:
                    while True:
                        await s.receive()
                except trio_echo.ConnectionClosed:
                    pass
    assert probe.closed == probe.open == 1


async def test_a_thousand_streams_at_once_on_one_connection() -> None:
    """All complete, none starved: past max_inflight (128) they wait their turn while the
    running ones keep receiving credit."""
    async with (
        tcp_server() as (server, port),
        trio_echo.open_client("127.0.0.1", port) as client,
    ):
        counts: dict[int, list[int]] = {}

        async def consume(i: int) -> None:
            async with client.stream("ticks", 20, 0, window=4) as s:
                counts[i] = [item async for item in s]

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for i in range(1000):
                    nursery.start_soon(consume, i)
        assert len(counts) == 1000
        assert all(items == list(range(20)) for items in counts.values())
        assert server.stats()["requests_in_flight"] == 0


def test_items_sent_with_their_request_came_before_the_go_ahead() -> None:
    with ServerProcess() as srv, RawPeer(srv.port) as peer:
        # One write: whatever the server does first, the client saw no go-ahead.
        request = wire.encode_request(1, "sum", [], {"stream": "client"})
        peer.sock.sendall(request + wire.encode_items(1, [1]))
        events = peer.until(ErrorResponse(1, "malformed", MALFORMED_EARLY))
        assert all(e == Credit(1, 16) for e in events[:-1]), events
        # Items sent after the go-ahead came are the stream's; the connection carried on.
        peer.send(wire.Request(2, "sum", [], {"stream": "client"}))
        assert peer.next_event() == Credit(2, 16)
        peer.sock.sendall(wire.encode_items(2, [1, 2]) + wire.encode_end(2))
        assert peer.until(Response(2, 3))[-1] == Response(2, 3)
