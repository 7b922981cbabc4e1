"""Protocol version 2 on the server: the preamble, the hello (protocol.md §11)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_echo import Server, wire
from trio_echo.wire import Notification, Response

from helpers import Peer, memory_server, tcp_server


@pytest.mark.parametrize("mode", ["auto", "framed"])
@pytest.mark.parametrize("version", [1, 2])
async def test_each_version_gets_its_own_hello(mode: str, version: int) -> None:
    async with memory_server(mode=mode) as (server, stream, _):
        peer = Peer(stream, version=version)
        info = await peer.start()
        assert info == {**server.hello, "protocol": version}
        assert await peer.call(1, "echo", b"\x00") == Response(1, b"\x00")


async def test_v1_hello_is_unchanged() -> None:
    """Version 1's hello frame is byte for byte what it always was."""
    async with memory_server() as (server, stream, _):
        await stream.send_all(wire.PREAMBLE)
        expected = wire.encode_notification("hello", [server.hello])
        got = b""
        with trio.fail_after(10):
            while len(got) < len(expected):
                got += await stream.receive_some(65536)
        assert got == expected
        assert server.hello["protocol"] == 1


async def test_v2_preamble_split_at_every_byte() -> None:
    data = wire.PREAMBLE_V2 + wire.encode_request(1, "ping", [])
    for cut in range(1, len(data)):
        async with memory_server() as (_, stream, _):
            await stream.send_all(data[:cut])
            await trio.testing.wait_all_tasks_blocked()
            await stream.send_all(data[cut:])
            peer = Peer(stream)
            hello = await peer.next_event()
            assert isinstance(hello, Notification) and hello.params[0]["protocol"] == 2
            assert await peer.next_event() == Response(1, "pong")


async def test_over_max_connections_a_v2_client_is_told_why() -> None:
    async with tcp_server(Server(max_connections=1)) as (_, port):
        first = await trio.open_tcp_stream("127.0.0.1", port)
        async with first:
            await Peer(first, version=2).start()
            second = await trio.open_tcp_stream("127.0.0.1", port)
            async with second:
                await second.send_all(wire.PREAMBLE_V2)
                [notice] = await Peer(second).expect_close()
                assert isinstance(notice, Notification)
                assert notice.params[0]["code"] == "overloaded"
