"""Faults end to end on loopback: resets, raising handlers, half-closes, shutdown, EMFILE."""

from __future__ import annotations

import logging

import pytest
import trio

from fault_tools import eventually, quiet, reset
from trio_echo import wire
from trio_echo.wire import Response

from helpers import tcp_server

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

        async def vandal(i: int) -> None:
            async with limit:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
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
    # A reset is one debug line: never more lines than connections, never two for one peer
    # (a peer that reset before the server looked at it is named "<unknown>").
    lost = [r for r in records if r.levelno == logging.DEBUG and "lost" in r.getMessage()]
    assert 0 < len(lost) <= 1000
    named = [str(r.args[0]) for r in lost if isinstance(r.args, tuple) and r.args]
    named = [peer for peer in named if peer != "<unknown>"]
    assert len(named) == len(set(named))
