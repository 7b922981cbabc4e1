"""Faults end to end on loopback: resets, raising handlers, half-closes, shutdown, EMFILE."""

from __future__ import annotations

import collections
import logging
import resource
import signal
import socket
import threading
import time

import pytest
import trio
import trio.testing

from trio_echo import Server, wire
from trio_echo.wire import ErrorCode, ErrorResponse, Notification, Response

from helpers import (
    Gate,
    ServerProcess,
    SyncPeer,
    decode_all,
    error_code,
    eventually,
    framed_peer,
    open_fds,
    quiet,
    raw_bytes,
    read_to_eof,
    reset,
    tcp_server,
    wait_for_log,
)

# --- connection resets ---------------------------------------------------------------


def vandal_bytes(i: int) -> tuple[bytes, bool]:
    """What vandal ``i`` sends before it resets; True if it then waits for a pong."""
    framed = wire.Connection()
    stream = wire.Connection(mode=wire.Mode.MPRPC)
    kind = i % 5
    if kind == 0:  # framed, a sleep in flight, then half a frame
        req = framed.send(wire.Request(1, "sleep", [30]))
        ping = framed.send(wire.Request(2, "ping", []))
        return framed.initiate() + req + ping + req[:7], True
    if kind == 1:  # framed, a big echo cut in the middle of its body
        big = framed.send(wire.Request(1, "echo", [b"x" * 200_000]))
        return framed.initiate() + big[: len(big) // 2], False
    if kind == 2:  # msgpack-rpc stream, a sleep in flight, then half a message
        req = stream.send(wire.Request(1, "sleep", [30]))
        ping = stream.send(wire.Request(2, "ping", []))
        return req + ping + req[:5], True
    if kind == 3:  # raw echo, more than the socket buffers hold
        return b"raw " * 300_000, False
    return wire.MAGIC[:5], False  # still sniffing


async def test_a_thousand_resets_mid_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_echo")
    async with tcp_server() as (server, port):
        limit = trio.CapacityLimiter(100)
        # The client addresses used: a port freed by a reset may be handed out again.
        used: collections.Counter[str] = collections.Counter()

        async def vandal(i: int) -> None:
            async with limit:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                host, client_port = stream.socket.getsockname()[:2]
                used[f"{host}:{client_port}"] += 1
                data, wait_for_pong = vandal_bytes(i)
                # Big sends may block once the echo fills our receive buffer: then reset.
                with trio.move_on_after(0.5):
                    await stream.send_all(data)
                if wait_for_pong:
                    # The pong proves the sleep before it is running on the server.
                    mode = wire.Mode.FRAMED if i % 5 == 0 else wire.Mode.MPRPC
                    conn = wire.Connection(mode=mode)
                    with trio.fail_after(10):
                        while not any(e == Response(2, "pong") for e in conn.events()):
                            conn.receive_data(await stream.receive_some(65536))
                reset(stream)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(1000):
                    nursery.start_soon(vandal, i)
            await eventually(lambda: quiet(server))
        # Still answering.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            conn = wire.Connection()
            await stream.send_all(conn.initiate() + conn.send(wire.Request(9, "ping", [])))
            events: list[wire.Event] = []
            with trio.fail_after(10):
                while len(events) < 2:
                    conn.receive_data(await stream.receive_some(65536))
                    events.extend(conn.events())
            assert events[1] == Response(9, "pong")
        stats = server.stats()
        assert stats["connections_total"] == 1001
        assert stats["requests_total"] >= 400  # the sleeps and pings
    # No traceback storm: nothing above debug, no tracebacks, one line per connection at most.
    records = [r for r in caplog.records if r.name.startswith("trio_echo")]
    loud = [r for r in records if r.levelno > logging.INFO or r.exc_info]
    assert loud == [], loud[:3]
    # A reset is one debug line: never more lines than connections, never two for one
    # connection, so never more for a peer address than connections came from it (a peer
    # that reset before the server looked at it is named "<unknown>").
    lost = [r for r in records if r.levelno == logging.DEBUG and "lost" in r.getMessage()]
    assert 0 < len(lost) <= 1000
    named = [str(r.args[0]) for r in lost if isinstance(r.args, tuple) and r.args]
    per_peer = collections.Counter(peer for peer in named if peer != "<unknown>")
    assert {peer: n for peer, n in per_peer.items() if n > used[peer]} == {}


# --- handlers that raise or never return ---------------------------------------------


@pytest.mark.parametrize("method", ["raise_inline", "raise_async", "raise_blocking"])
async def test_a_raising_handler_is_internal_logged_once_and_the_connection_carries_on(
    method: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_echo")
    async with tcp_server(Server(Gate().service)) as (server, port):
        async with framed_peer(port) as peer:
            reply = await peer.call(1, method)
            assert isinstance(reply, ErrorResponse) and reply.code == ErrorCode.INTERNAL
            assert "kaboom" in reply.message and reply.data is None  # no traceback leaks
            assert await peer.call(2, "ping") == Response(2, "pong")
            # A notification to it: no reply at all, only the count.
            await peer.send(Notification(method, []))
            assert await peer.call(3, "ping") == Response(3, "pong")
        await eventually(lambda: quiet(server))  # the notification may still be running
        stats = server.stats()
        assert stats["errors"] == {"internal": 2}
        assert stats["notifications_total"] == 1
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 2  # once per failed call, the request and the notification
    assert all(method in r.getMessage() for r in tracebacks)


async def test_a_never_returning_handler_is_bounded_by_timeout_ms_and_cancel() -> None:
    gate = Gate()
    try:
        async with (
            tcp_server(Server(gate.service)) as (server, port),
            framed_peer(port) as peer,
        ):
            start = trio.current_time()
            await peer.request(1, "await_forever", timeout_ms=200)
            await peer.request(2, "wait_gate", timeout_ms=300)
            await peer.request(3, "await_forever")
            await peer.request(4, "wait_gate")
            timed_out = await peer.events(2)
            assert [(e.msgid, error_code(e)) for e in timed_out] == [  # type: ignore[union-attr]
                (1, "timeout"),
                (2, "timeout"),
            ]
            assert trio.current_time() - start < 5
            await peer.send(wire.Cancel(3), wire.Cancel(4))
            cancelled = await peer.events(2)
            assert {(e.msgid, error_code(e)) for e in cancelled} == {  # type: ignore[union-attr]
                (3, "cancelled"),
                (4, "cancelled"),
            }
            assert server.stats()["requests_in_flight"] == 0
            assert await peer.call(5, "ping") == Response(5, "pong")
    finally:
        gate.open()  # let the abandoned worker threads finish


async def test_a_fatal_error_still_answers_the_requests_read_before_it() -> None:
    """Requests decoded before a fatal error, but waiting for room, are answered."""
    async with tcp_server(max_inflight=2, max_frame=1000) as (_, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = wire.Connection()
        sleeps = [wire.Request(i, "sleep", [0.05 * i]) for i in range(1, 5)]
        oversize = (1001).to_bytes(4, "big")
        await stream.send_all(conn.initiate() + b"".join(map(conn.send, sleeps)) + oversize)
        events = decode_all(await read_to_eof(stream))[1:]
        assert sorted(e.msgid for e in events if isinstance(e, Response)) == [1, 2, 3, 4]
        assert [error_code(e) for e in events if error_code(e)] == ["frame_too_large"]


def test_shutdown_while_requests_wait_for_room_answers_them_and_does_not_spin() -> None:
    """Shutdown begins while the reader is sending and holds requests waiting for room.

    Regression: the read loop spun without a checkpoint (wedging the whole
    server) when shutdown found it at max_inflight with such requests.
    """
    events: list[wire.Event] = []

    async def scenario() -> None:
        server = Server(max_inflight=2, grace=5)
        client, server_side = trio.testing.lockstep_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve_stream, server_side)
            conn = wire.Connection()
            requests = [wire.Request(1, "sleep", [0.1]), wire.Request(2, "sleep", [0.1])]
            requests += [wire.Request(3, "echo", ["x"]), wire.Request(4, "sleep", [0])]
            # Lockstep: the server's send of the hello and echo blocks until we read.
            await client.send_all(conn.initiate() + b"".join(map(conn.send, requests)))
            await trio.testing.wait_all_tasks_blocked()
            for state in list(server._conns):
                state.stop_reading()  # what a graceful shutdown does to each connection
            with trio.fail_after(10):
                while True:
                    data = await client.receive_some(65536)
                    conn.receive_data(data)
                    events.extend(conn.events())
                    if not data:
                        break
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(scenario,), daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "the server spun without a checkpoint"
    assert sorted(e.msgid for e in events[1:]) == [1, 2, 3, 4]  # type: ignore[union-attr]


# --- half-closed clients ----------------------------------------------------------------


@pytest.mark.parametrize("mode", [wire.Mode.FRAMED, wire.Mode.MPRPC])
async def test_half_closed_client_gets_every_reply_then_the_close(mode: wire.Mode) -> None:
    async with tcp_server() as (server, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = wire.Connection(mode=mode)
        requests = [wire.Request(1, "sleep", [0.3]), wire.Request(2, "sleep", [0.1])]
        requests += [wire.Request(i, "echo", [b"e" * i]) for i in range(3, 200)]
        await stream.send_all(conn.initiate() + b"".join(conn.send(r) for r in requests))
        await stream.send_eof()
        events = decode_all(await read_to_eof(stream), mode)
        if mode is wire.Mode.FRAMED:
            events = events[1:]  # hello
        assert sorted(events, key=lambda e: e.msgid) == [  # type: ignore[union-attr]
            Response(1, None),
            Response(2, None),
            *[Response(i, b"e" * i) for i in range(3, 200)],
        ]
        await eventually(lambda: quiet(server))


async def test_half_closed_raw_client_gets_every_byte_then_the_close() -> None:
    data = raw_bytes(3 << 20)
    async with tcp_server() as (server, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        got = b""
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                await stream.send_all(data)
                await stream.send_eof()

            nursery.start_soon(send)
            got = await read_to_eof(stream)
        assert got == data
        await eventually(lambda: quiet(server))


# --- shutdown under load ----------------------------------------------------------------


def test_sigterm_under_load_answers_everything_received_and_exits_0() -> None:
    """100 connections with requests in flight, a raw client and stragglers past --grace."""
    grace = 2.0
    with ServerProcess("--grace", str(grace)) as srv:
        peers = []
        for i in range(100):
            mode = wire.Mode.MPRPC if i % 4 == 3 else wire.Mode.FRAMED
            peer = SyncPeer(srv.port, mode)
            sleeps = [wire.Request(n, "sleep", [0.2 + (i + n) % 5 * 0.15]) for n in range(1, 4)]
            peer.send(*sleeps, wire.Request(4, "echo", [i]), wire.Request(5, "ping", []))
            peers.append(peer)
        stragglers = [SyncPeer(srv.port) for _ in range(3)]
        for peer in stragglers:
            peer.send(wire.Request(1, "sleep", [30]), wire.Request(2, "ping", []))
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        raw.sendall(b"raw bytes")
        assert raw.recv(100) == b"raw bytes"
        # Every pong proves the server has read the requests before it.
        for peer in peers + stragglers:
            while peer.next_event() != Response(peer_last := 5 if peer in peers else 2, "pong"):
                pass
        assert peer_last == 2
        srv.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        for i, peer in enumerate(peers):
            rest = peer.until_eof()
            assert sorted(e.msgid for e in rest) == [1, 2, 3], (i, rest)  # type: ignore[union-attr]
            assert all(e == Response(e.msgid, None) for e in rest)  # type: ignore[union-attr]
            peer.close()
        for peer in stragglers:
            assert peer.until_eof() == []  # cancelled when the grace period ran out
            peer.close()
        assert raw.recv(100) == b""
        raw.close()
        assert time.monotonic() - signalled < grace + 3
        assert srv.wait() == 0
    log = "".join(srv.log)
    assert "Traceback" not in log and "shutting down" in log


def test_a_second_signal_under_load_exits_at_once() -> None:
    with ServerProcess("--grace", "60") as srv:
        peers = [SyncPeer(srv.port) for _ in range(100)]
        for peer in peers:
            peer.send(wire.Request(1, "sleep", [60]), wire.Request(2, "ping", []))
        for peer in peers:
            while peer.next_event() != Response(2, "pong"):
                pass
        srv.proc.send_signal(signal.SIGTERM)
        wait_for_log(srv.log, "shutting down")
        start = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.wait(timeout=10) == 1  # forced
        assert time.monotonic() - start < 3
        for peer in peers:
            assert peer.until_eof() == []
            peer.close()
    assert "Traceback" not in "".join(srv.log)


# --- out of file descriptors -----------------------------------------------------------------


def test_out_of_descriptors_keeps_serving_and_recovers() -> None:
    with ServerProcess() as srv:
        pid = srv.proc.pid
        served = [SyncPeer(srv.port) for _ in range(3)]
        for peer in served:
            assert isinstance(peer.next_event(), Notification)  # hello: accepted
        # Room for exactly three more descriptors (a low `ulimit -n`).
        _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_fds(pid) + 3, hard))
        more = [SyncPeer(srv.port) for _ in range(3)]
        for peer in more:
            assert isinstance(peer.next_event(), Notification)
        waiting = [SyncPeer(srv.port) for _ in range(2)]  # connect: the kernel's backlog holds them
        wait_for_log(srv.log, "accept failed")
        # The connections it has are served as before.
        for n, peer in enumerate(served + more):
            assert peer.call(n, "ping") == Response(n, "pong")
        # The interval under test: several retries (every 0.1 s) without a log line each.
        time.sleep(0.5)
        # Descriptors free up: the waiting clients are accepted and served.
        served.pop().close()
        served.pop().close()
        for peer in waiting:
            assert isinstance(peer.next_event(), Notification)
            assert peer.call(7, "ping") == Response(7, "pong")
        wait_for_log(srv.log, "accepting again")
        for peer in served + more + waiting:
            peer.close()
        assert srv.stop() == 0
    log = "".join(srv.log)
    assert log.count("accept failed") == 1 and log.count("accepting again") == 1, log
    assert "Traceback" not in log
