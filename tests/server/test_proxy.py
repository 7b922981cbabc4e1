"""--proxy-protocol: the server reads a PROXY header before sniffing any mode."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from trio_echo import Server, wire
from trio_echo.server.proxy import PROXY_HEADER_TIMEOUT_S
from trio_echo.wire import ErrorResponse, Notification, Response

from helpers import Peer, ServerProcess, memory_server, tcp_server
from helpers.proxy import inet, v1, v2

CLIENT = "203.0.113.7:4242"
HEADERS = {
    "v1": v1("TCP4", "203.0.113.7", "10.0.0.1", 4242, 7000),
    "v2": v2(addresses=inet("203.0.113.7", "10.0.0.1", 4242, 7000)),
}


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "--proxy-protocol" in r.getMessage()]


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything until EOF (bounded in time)."""
    out = b""
    with trio.fail_after(10):
        while data := await stream.receive_some(65536):
            out += data
    return out


@pytest.mark.parametrize("version", HEADERS)
async def test_framed_after_header_names_the_real_client(
    version: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_echo")
    async with tcp_server(proxy_protocol=True) as (server, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        balancer = f"127.0.0.1:{stream.socket.getsockname()[1]}"
        async with stream:
            # The header and the preamble in one write, as a balancer often sends them.
            await stream.send_all(HEADERS[version] + wire.PREAMBLE)
            peer = Peer(stream)
            hello = await peer.next_event()
            assert isinstance(hello, Notification) and hello.method == "hello"
            assert await peer.call(1, "echo", "hi") == Response(1, "hi")
            # A fatal error is logged with the peer's name: the real client's.
            await peer.send(wire.Request(2, "echo", []))
            await stream.send_all(b"\xff\xff\xff\xff")
            await peer.expect_close()
        assert server.stats()["proxy_rejected"] == 0
    messages = [r.getMessage() for r in caplog.records]
    assert f"connection {balancer} is from {CLIENT} (PROXY header)" in messages
    assert any(CLIENT in m and "frame" in m for m in messages if "is from" not in m), messages


async def test_every_mode_follows_the_header() -> None:
    """Raw echo and msgpack-rpc streams are sniffed from the bytes after the header."""
    async with memory_server(proxy_protocol=True) as (_, client, _):
        await client.send_all(HEADERS["v1"] + b"hello")
        await client.send_eof()
        assert await read_all(client) == b"hello"
    async with memory_server(proxy_protocol=True) as (_, client, _):
        await client.send_all(HEADERS["v2"])
        peer = Peer(client, wire.Mode.MPRPC)
        assert await peer.call(1, "ping") == Response(1, "pong")


async def test_header_one_byte_at_a_time() -> None:
    async with memory_server(proxy_protocol=True) as (_, client, _):
        data = HEADERS["v2"] + wire.PREAMBLE
        for i in range(len(data)):
            await client.send_all(data[i : i + 1])
            await trio.testing.wait_all_tasks_blocked()
        peer = Peer(client)
        assert isinstance(await peer.next_event(), Notification)
        assert await peer.call(1, "ping") == Response(1, "pong")


async def test_local_command_keeps_the_socket_peer(caplog: pytest.LogCaptureFixture) -> None:
    """v2 LOCAL (HAProxy's health checks) is served like any connection."""
    caplog.set_level(logging.DEBUG, logger="trio_echo")
    async with memory_server(proxy_protocol=True) as (server, client, _):
        await client.send_all(v2(command=0, family=0, transport=0) + wire.PREAMBLE)
        peer = Peer(client)
        assert isinstance(await peer.next_event(), Notification)
        assert await peer.call(1, "ping") == Response(1, "pong")
        assert server.stats()["proxy_rejected"] == 0
    assert not any("is from" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "opening",
    [
        wire.PREAMBLE,  # no header: a client that bypassed the balancer
        b"hello\n",
        b"\x94\x00\x01\xa4ping\x90",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n" + wire.PREAMBLE,
        v2(version=1) + wire.PREAMBLE,
        b"PROXY " + b"x" * 200,
    ],
)
async def test_no_or_malformed_header_is_closed_and_logged_once(
    opening: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_echo")
    async with tcp_server(proxy_protocol=True) as (server, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(opening)
            # Closed with nothing sent back: no echo, no hello, no error notice.
            assert await read_all(stream) == b""
        assert server.stats()["proxy_rejected"] == 1
        assert server.stats()["errors"] == {}
    [line] = refusals(caplog)
    assert line.startswith("connection 127.0.0.1:") and "refused" in line


async def test_a_header_too_slow_is_closed(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    async with memory_server(proxy_protocol=True) as (server, client, _):
        await client.send_all(HEADERS["v1"][:10])
        start = trio.current_time()
        assert await read_all(client) == b""
        assert trio.current_time() - start == pytest.approx(PROXY_HEADER_TIMEOUT_S, abs=0.1)
        assert server.stats()["proxy_rejected"] == 1
    [line] = refusals(caplog)
    assert f"no complete PROXY header within {PROXY_HEADER_TIMEOUT_S:g} s" in line


async def test_a_silent_connection_is_closed_after_the_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with memory_server(proxy_protocol=True) as (server, client, _):
        assert await read_all(client) == b""
        assert trio.current_time() == pytest.approx(PROXY_HEADER_TIMEOUT_S, abs=0.1)
        assert server.stats()["proxy_rejected"] == 1


async def test_eof_before_any_byte_is_not_a_refusal(caplog: pytest.LogCaptureFixture) -> None:
    """A balancer's plain TCP check connects and closes: nothing to warn about."""
    caplog.set_level(logging.DEBUG, logger="trio_echo")
    async with memory_server(proxy_protocol=True) as (server, client, _):
        await client.send_eof()
        assert await read_all(client) == b""
        assert server.stats()["proxy_rejected"] == 0
    assert refusals(caplog) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_without_the_flag_a_header_is_raw_echo() -> None:
    """Today's behaviour is kept: the header is only read when asked for."""
    async with memory_server() as (_, client, _):
        await client.send_all(HEADERS["v1"])
        await client.send_eof()
        assert await read_all(client) == HEADERS["v1"]


async def test_over_max_connections_a_proxied_framed_client_is_told_why() -> None:
    async with tcp_server(proxy_protocol=True, max_connections=1) as (_, port):
        first = await trio.open_tcp_stream("127.0.0.1", port)
        async with first:
            await first.send_all(HEADERS["v2"] + wire.PREAMBLE)
            assert isinstance(await Peer(first).next_event(), Notification)
            second = await trio.open_tcp_stream("127.0.0.1", port)
            async with second:
                await second.send_all(HEADERS["v2"] + wire.PREAMBLE)
                events = await Peer(second).expect_close()
                assert [type(e) for e in events] == [Notification]
                assert events[0].params[0]["code"] == "overloaded"  # type: ignore[union-attr]


@pytest.mark.parametrize("proxy_protocol", [False, True])
async def test_shutdown_while_sniffing_is_quiet(
    proxy_protocol: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection still sending its opening when the server shuts down just closes."""
    server = Server(proxy_protocol=proxy_protocol)
    async with memory_server(server) as (_, client, _):
        await client.send_all(HEADERS["v1"][:5] if proxy_protocol else wire.PREAMBLE[:3])
        await trio.testing.wait_all_tasks_blocked()
        server.shutdown()
        await server._drain()
        assert await read_all(client) == b""
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


async def test_error_response_for_sanity() -> None:
    """The connection behind a header is an ordinary one: errors are answered as usual."""
    async with memory_server(proxy_protocol=True) as (_, client, _):
        await client.send_all(HEADERS["v1"] + wire.PREAMBLE)
        peer = Peer(client)
        await peer.next_event()
        reply = await peer.call(1, "nope")
        assert isinstance(reply, ErrorResponse) and reply.code == "unknown_method"


def test_serve_flag_end_to_end() -> None:
    """``trio-echo serve --proxy-protocol`` in a subprocess: served with, closed without."""
    import socket

    with ServerProcess("--proxy-protocol", "--log-level", "debug") as proc:
        with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
            sock.sendall(HEADERS["v2"] + wire.PREAMBLE + wire.encode_request(1, "ping", []))
            conn = wire.Connection()
            events: list[wire.Event] = []
            while len(events) < 2:
                conn.receive_data(sock.recv(65536))
                events += conn.events()
            assert events[1] == Response(1, "pong")
        with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as sock:
            sock.sendall(wire.PREAMBLE)
            assert sock.recv(65536) == b""
        assert proc.stop() == 0
    log = "".join(proc.log)
    assert f"is from {CLIENT} (PROXY header)" in log
    assert log.count("refused (--proxy-protocol): no PROXY header") == 1
