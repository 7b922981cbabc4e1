"""trio_echo.testing: a real server and client in memory, and a protocol peer, for users' tests."""

from __future__ import annotations

import pytest
import trio

import trio_echo
from trio_echo import Server, Service, wire
from trio_echo.testing import listening_port, open_test_client, open_test_peer


def user_service() -> Service:
    service = Service()

    @service.method
    async def add(a: int, b: int) -> int:
        return a + b

    @service.method(blocking=True)
    def shout(text: str) -> str:
        return text.upper()

    @service.method
    async def nap(seconds: float) -> str:
        await trio.sleep(seconds)
        return "rested"

    return service


async def test_a_real_client_against_a_real_server_in_memory() -> None:
    async with open_test_client(user_service()) as client:
        assert client.server_info["max_frame"] == wire.DEFAULT_MAX_FRAME
        assert await client.call("add", 2, 3) == 5
        assert await client.call("shout", "hi") == "HI"  # a worker thread
        assert await client.call("echo", b"\x00") == b"\x00"  # the built-ins too
        with pytest.raises(trio_echo.InvalidParams):
            await client.call("add", "two", 3)
    assert client.closed


async def test_time_is_virtual_under_autojump_clock(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_client(user_service()) as client:
        start = trio.current_time()
        assert await client.call("nap", 3600) == "rested"
        assert await client.call("sleep", 30) is None
        with pytest.raises(trio_echo.DeadlineExceeded):
            await client.call("nap", 60, timeout=5)
        assert trio.current_time() - start >= 3630


async def test_server_options_and_a_server_of_your_own() -> None:
    async with open_test_client(user_service(), max_frame=100, max_inflight=3) as client:
        assert (client.server_info["max_frame"], client.server_info["max_inflight"]) == (100, 3)
        with pytest.raises(trio_echo.FrameTooLarge):
            await client.call("echo", b"x" * 200)
    server = Server(user_service())
    async with open_test_client(server) as client:
        await client.call("add", 1, 1)
        await client.notify("add", 1, 1)
    assert server.stats()["requests_total"] >= 1
    with pytest.raises(TypeError, match="server options"):
        async with open_test_client(server, debug=True):
            pass  # pragma: no cover


async def test_a_failing_body_raises_its_own_exception_not_a_group() -> None:
    with pytest.raises(ZeroDivisionError):
        async with open_test_client(user_service()) as client:
            await client.call("ping")
            1 / 0  # noqa: B018
    with pytest.raises(KeyError):
        async with open_test_peer(user_service()):
            raise KeyError("peer")


async def test_lockstep_streams() -> None:
    async with open_test_client(user_service(), lockstep=True) as client:
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(client.call, "add", i, i)
        assert await client.call("add", 20, 1) == 21


async def test_a_peer_speaks_the_protocol_as_it_is_told() -> None:
    async with open_test_peer(user_service()) as peer:
        assert peer.server_info["protocol"] >= 1
        assert await peer.call(7, "add", 2, 3) == wire.Response(7, 5)
        await peer.request(8, "nap", 10, timeout_ms=1)
        reply = await peer.next_event()
        assert isinstance(reply, wire.ErrorResponse) and reply.code == "timeout"
        await peer.stream.send_all(b"\x00\x00\x00\x01\xc1")  # an undecodable frame
        notice = await peer.next_event()
        assert isinstance(notice, wire.Notification) and notice.params[0]["code"] == "malformed"
        assert await peer.call(9, "ping") == wire.Response(9, "pong")


async def test_a_peer_in_msgpack_rpc_stream_mode() -> None:
    async with open_test_peer(user_service(), mode=wire.Mode.MPRPC) as peer:
        assert await peer.call(1, "add", 1, 2) == wire.Response(1, 3)


async def test_a_peer_fails_instead_of_hanging(autojump_clock: trio.abc.Clock) -> None:
    async with open_test_peer(user_service()) as peer:
        peer.timeout = 5
        await peer.request(1, "nap", 60)
        with pytest.raises(trio.TooSlowError):
            await peer.next_event()


async def test_listening_port_over_loopback() -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio_echo.serve, user_service(), "127.0.0.1", 0)
        port = listening_port(listeners)
        assert port == listeners[0].socket.getsockname()[1] != 0
        async with trio_echo.open_client("127.0.0.1", port) as client:
            assert await client.call("add", 2, 3) == 5
        nursery.cancel_scope.cancel()


def test_reachable_from_the_package() -> None:
    assert trio_echo.testing.open_test_client is open_test_client
    assert "testing" in trio_echo.__all__
