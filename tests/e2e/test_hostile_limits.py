"""The limits issue #10 added, end to end on loopback: each driven past its bound.

``max_buffered_bytes`` (the server-wide ingress budget), ``write_timeout``,
``max_containers``, and monitoring methods answered at ``max_requests``.
"""

from __future__ import annotations

import socket

import pytest
import trio

from trio_echo import Server, wire
from trio_echo.wire import ErrorCode, ErrorResponse, Notification, Response

from helpers import Peer, decode_all, error_code, eventually, framed_peer, read_to_eof, tcp_server


async def connect(port: int, rcvbuf: int | None = None) -> trio.SocketStream:
    """A loopback connection; ``rcvbuf`` shrinks its receive buffer before it connects."""
    sock = trio.socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def started(stream: trio.SocketStream, mode: wire.Mode = wire.Mode.FRAMED) -> Peer:
    peer = Peer(stream, mode)
    if mode is wire.Mode.FRAMED:
        await peer.start()
    else:
        assert await peer.call(0, "ping") == Response(0, "pong")  # sniffed as msgpack-rpc
    return peer


# --- max_buffered_bytes --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [wire.Mode.FRAMED, wire.Mode.MPRPC], ids=["framed", "stream"])
async def test_max_buffered_bytes_closes_the_connection_that_passes_it(mode: wire.Mode) -> None:
    """Partial messages count against one server-wide budget; the connection whose
    bytes would pass it gets ``overloaded`` and is closed, the others carry on.

    A framed connection is charged a frame's announced size as soon as its header
    arrives; a stream is charged the bytes of its partial message as they come.
    (B sends nothing past what passes the budget: bytes the server never read
    would make its close a reset, which may destroy the notice before it is read.)
    """
    framed = mode is wire.Mode.FRAMED
    budget = 300_000
    async with (
        tcp_server(max_buffered_bytes=budget) as (server, port),
        await connect(port) as a_stream,
        await connect(port) as b_stream,
        await connect(port) as c_stream,
    ):
        a, b, c = [await started(s, mode) for s in (a_stream, b_stream, c_stream)]
        big = wire.encode_request(1, "echo", [bytes(200_000)], framed=framed)
        await a_stream.send_all(big[:-1000])  # A: a partial message
        await eventually(lambda: server.stats()["buffered_bytes"] >= len(big) - 1000)
        if framed:  # charged the frame's announced size, not just the bytes so far
            assert server.stats()["buffered_bytes"] == len(big)
        # B's message takes the total past the budget: at its header (framed), or
        # with its last bytes (stream).
        other = wire.encode_request(1, "echo", [bytes(250_000)], framed=framed)
        if framed:
            await b_stream.send_all(other[:10])
        else:
            await b_stream.send_all(other[:90_000])
            await eventually(lambda: server.stats()["buffered_bytes"] >= len(big) + 89_000)
            assert server.stats()["buffered_bytes"] <= budget
            await b_stream.send_all(other[90_000:110_000])
        seen = await b.expect_close()
        assert [error_code(e) for e in seen] == ["overloaded"], seen
        notice = seen[0]
        assert isinstance(notice, Notification)
        assert "max_buffered_bytes" in notice.params[0]["message"]
        assert len(wire.packb(notice.params[0])) < 1024
        # A and C never noticed: C is answered meanwhile, A's message completes.
        assert await c.call(2, "ping") == Response(2, "pong")
        await a_stream.send_all(big[-1000:])
        assert await a.next_event() == Response(1, bytes(200_000))
        assert await c.call(3, "echo", "c") == Response(3, "c")
        await eventually(lambda: server.stats()["buffered_bytes"] == 0)
        stats = server.stats()
        assert stats["errors"]["overloaded"] == 1
        assert stats["connections_open"] == 2


async def test_backlog_of_a_full_connection_counts_against_max_buffered_bytes() -> None:
    """At max_inflight a connection reads on, holding requests as bytes: those count too."""
    async with (
        tcp_server(max_inflight=1, max_buffered_bytes=150_000) as (server, port),
        framed_peer(port) as full,
        framed_peer(port) as bystander,
    ):
        await full.request(1, "sleep", 1)
        await eventually(lambda: server.stats()["requests_in_flight"] == 1)
        # Each waits undecoded in the backlog: 3 x 40 KB held, under the budget...
        for msgid in (2, 3, 4):
            await full.request(msgid, "echo", bytes(40_000))
        await eventually(lambda: server.stats()["buffered_bytes"] >= 120_000)
        assert await bystander.call(1, "ping") == Response(1, "pong")
        # ...and a fourth passes it.
        await full.request(5, "echo", bytes(40_000))
        seen = await full.expect_close()
        # The notice says why; the call in flight is answered, as after any fatal
        # error (then the connection closes); the backlog never runs.
        assert seen == [
            Notification("error", [seen[0].params[0]]),  # type: ignore[union-attr]
            Response(1, None),
        ], seen
        assert error_code(seen[0]) == "overloaded"
        await eventually(lambda: server.stats()["buffered_bytes"] == 0)
        assert await bystander.call(2, "echo", "still") == Response(2, "still")


# --- write_timeout -------------------------------------------------------------------------------


async def test_write_timeout_closes_a_client_that_never_reads_and_spares_a_slow_one() -> None:
    """A client that sends requests and reads nothing is closed ``write_timeout`` after
    its replies stop moving; one that reads slowly but steadily is not, whatever
    the time it takes, and gets every reply."""
    timeout = 1.5
    async with tcp_server(write_timeout=timeout) as (server, port):
        # The non-reader, with a small receive buffer so its replies stop moving soon.
        mute_stream = await connect(port, rcvbuf=16 * 1024)
        slow_stream = await connect(port, rcvbuf=16 * 1024)
        async with mute_stream, slow_stream:
            await write_timeout_race(server, mute_stream, slow_stream, timeout)


async def write_timeout_race(
    server: Server, mute_stream: trio.SocketStream, slow_stream: trio.SocketStream, timeout: float
) -> None:
    requests = 60
    value = bytes(64 * 1024)
    mute = await started(mute_stream)
    slow = await started(slow_stream)

    async def send_all_requests(peer: Peer) -> None:
        for msgid in range(requests):
            try:
                await peer.request(msgid, "echo", value)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # closed: fine for the non-reader

    got = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all_requests, mute)
        nursery.start_soon(send_all_requests, slow)
        # The slow reader: 16 KiB every 10 ms, so ~2.4 s for 3.75 MiB of replies.
        while len(got) < requests:
            event = slow.conn.next_event()
            if event is wire.NEED_DATA:
                await trio.sleep(0.01)
                slow.conn.receive_data(await slow_stream.receive_some(16 * 1024))
                continue
            got.append(event)
        took = trio.current_time() - start
    assert got == [Response(i, value) for i in range(requests)]
    assert took > timeout  # it really was slower than the timeout
    await eventually(lambda: server.stats()["write_timeouts"] == 1, timeout=10)
    # The non-reader is gone, the slow reader is still served.
    assert server.stats()["connections_open"] == 1
    assert await slow.call(100, "ping") == Response(100, "pong")


async def test_write_timeout_closes_a_raw_echo_client_that_never_reads() -> None:
    async with tcp_server(write_timeout=1.0) as (server, port):
        chunk = b"raw!" * 16384
        async with await connect(port, rcvbuf=16 * 1024) as stream:
            with trio.move_on_after(20):
                try:
                    while True:  # until the server closes it
                        await stream.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        await eventually(lambda: server.stats()["write_timeouts"] == 1, timeout=10)
        await eventually(lambda: server.stats()["connections_open"] == 0)


async def test_write_timeout_zero_is_off() -> None:
    server = Server(write_timeout=0)
    async with tcp_server(server) as (_, port), await connect(port, rcvbuf=16 * 1024) as stream:
        await never_closed(server, stream)


async def never_closed(server: Server, stream: trio.SocketStream) -> None:
    peer = await started(stream)
    with trio.move_on_after(0.5):  # until the server stops reading
        for msgid in range(100):
            await peer.request(msgid, "echo", bytes(64 * 1024))
    # The server is stuck sending to it (else this would prove nothing)...
    await eventually(lambda: any(conn.sending() for conn in server._conns))
    # ...past the reaper's first tick (1 s), when any timeout would have closed it.
    await trio.sleep(1.3)
    assert server.stats()["write_timeouts"] == 0
    assert server.stats()["connections_open"] == 1


# --- max_requests: monitoring never goes dark ----------------------------------------------------


@pytest.mark.parametrize("mode", [wire.Mode.FRAMED, wire.Mode.MPRPC], ids=["framed", "stream"])
async def test_monitoring_answers_at_max_requests(mode: wire.Mode) -> None:
    """At max_requests, ``ping``, ``stats`` and ``methods`` still answer (pipelined
    among refused requests, on either kind of connection); everything else is
    ``overloaded``."""
    async with (
        tcp_server(max_requests=2) as (server, port),
        framed_peer(port) as holder,
        await trio.open_tcp_stream("127.0.0.1", port) as stream,
    ):
        await holder.send(wire.Request(1, "sleep", [30]), wire.Request(2, "sleep", [30]))
        await eventually(lambda: server.stats()["requests_in_flight"] == 2)
        peer = Peer(stream, mode)
        if mode is wire.Mode.FRAMED:
            await peer.start()
        batch = ["ping", "echo", "stats", "sleep", "methods", "ping"]
        await peer.send(
            *[
                wire.Request(i, name, [0] if name in ("echo", "sleep") else [])
                for i, name in enumerate(batch)
            ]
        )
        replies = {getattr(e, "msgid", None): e for e in await peer.events(len(batch))}
        for i, name in enumerate(batch):
            if name in ("echo", "sleep"):
                assert error_code(replies[i]) == ErrorCode.OVERLOADED, replies[i]
            else:
                assert isinstance(replies[i], Response), replies[i]
        stats = replies[2]
        assert isinstance(stats, Response) and stats.result["requests_in_flight"] == 2


# --- max_containers ------------------------------------------------------------------------------


def with_containers(total: int, pad: int) -> list[object]:
    """A ``ping`` holding exactly ``total`` arrays and maps (and ``pad`` bytes of bin)."""
    # The request, its params and its options are 3; the list of empty arrays is 1 more.
    return [0, 1, "ping", [], {"x": [[]] * (total - 4), "pad": bytes(pad)}]


@pytest.mark.parametrize("mode", [wire.Mode.FRAMED, wire.Mode.MPRPC], ids=["framed", "stream"])
@pytest.mark.parametrize("pad", [0, 100_000], ids=["small", "sliced"])
async def test_max_containers_is_exact(mode: wire.Mode, pad: int) -> None:
    """``max_containers`` arrays and maps are accepted, one more is ``frame_too_large``
    and the connection closes: for a message decoded at once and for one decoded a
    slice at a time."""
    framed = mode is wire.Mode.FRAMED
    async with tcp_server(max_containers=1000) as (server, port), await connect(port) as stream:
        peer = await started(stream, mode)
        body = wire.packb(with_containers(1000, pad))
        await peer.stream.send_all(wire.frame(body) if framed else body)
        assert await peer.next_event() == Response(1, "pong")
        body = wire.packb(with_containers(1001, pad))
        await peer.stream.send_all(wire.frame(body) if framed else body)
        seen = await peer.expect_close()
        assert [error_code(e) for e in seen] == ["frame_too_large"], seen
        assert "max_containers" in seen[0].params[0]["message"]  # type: ignore[union-attr]
        assert server.stats()["errors"] == {"frame_too_large": 1}


async def test_max_containers_applies_to_a_request_that_waited_in_the_backlog() -> None:
    """A message read while the connection was full is decoded later, from bytes:
    with the same limit."""
    async with (
        tcp_server(max_containers=1000, max_inflight=1) as (server, port),
        await connect(port) as stream,
    ):
        peer = await started(stream)
        await peer.request(1, "sleep", 0.3)
        await eventually(lambda: server.stats()["requests_in_flight"] == 1)
        await stream.send_all(
            wire.frame(wire.packb([0, 2, "ping", [], {"x": [[]] * 996}]))
            + wire.frame(wire.packb([0, 3, "ping", [], {"x": [[]] * 997}]))
        )
        seen = await peer.expect_close()
        assert seen[:2] == [Response(1, None), Response(2, "pong")], seen
        assert [error_code(e) for e in seen[2:]] == ["frame_too_large"], seen


async def test_overloaded_notice_is_small_for_a_huge_frame() -> None:
    """The budget's notice, too, is a few hundred bytes whatever was sent."""
    async with tcp_server(max_buffered_bytes=1000) as (_, port):
        stream = await connect(port)
        await stream.send_all(wire.PREAMBLE + (4_000_000).to_bytes(4, "big") + bytes(100))
        events = decode_all(await read_to_eof(stream))
        assert [error_code(e) for e in events[1:]] == ["overloaded"]
        assert isinstance(events[1], Notification) and not isinstance(events[1], ErrorResponse)


# --- a full connection and a fatal error ---------------------------------------------------------


@pytest.mark.parametrize("mode", [wire.Mode.FRAMED, wire.Mode.MPRPC], ids=["framed", "stream"])
async def test_requests_before_a_fatal_error_at_max_inflight_are_answered_once(
    mode: wire.Mode,
) -> None:
    """At max_inflight the requests read before a message that ends the connection
    wait as bytes; each is answered exactly once, then the notice, then the close.
    (On a stream, a header refused in the same read as them used to bring back the
    previous read's requests, answered twice, and lose these.)"""
    framed = mode is wire.Mode.FRAMED
    async with tcp_server(max_inflight=2) as (_, port), await connect(port) as stream:
        peer = await started(stream, mode)
        # Request 1 still runs when the second batch arrives: the connection is full.
        first = [
            wire.Request(1, "sleep", [1]),
            wire.Request(2, "ping", []),
            wire.Request(3, "ping", []),
        ]
        await peer.send(*first)
        assert await peer.events(2) == [Response(2, "pong"), Response(3, "pong")]
        if framed:
            fatal = (wire.DEFAULT_MAX_FRAME + 1).to_bytes(4, "big")
        else:  # an array announcing more items than max_frame bytes can hold
            fatal = bytes.fromhex("94 00 09 a4 65 63 68 6f 91 dd") + (4_200_000).to_bytes(4, "big")
        second = [wire.Request(4, "sleep", [0.1]), wire.Request(5, "sleep", [0.1])]
        await stream.send_all(b"".join(peer.conn.send(e) for e in second) + fatal)
        seen = await peer.expect_close()
        answered = sorted(e.msgid for e in seen if isinstance(e, Response))
        assert answered == [1, 4, 5], seen
        assert [error_code(e) for e in seen if not isinstance(e, Response)] == ["frame_too_large"]
