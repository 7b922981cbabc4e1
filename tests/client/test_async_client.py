"""The async client: against the real server (loopback and in-memory) and a fake peer."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trio_echo
from trio_echo import Server, Service, wire
from trio_echo.errors import remote_error

from helpers import EXCEPTIONS, Peer, run_python, server_thread, tcp_server

HELLO = {"protocol": 1, "server": "fake", "max_frame": wire.DEFAULT_MAX_FRAME, "max_inflight": 128}


class FakeServer(Peer):
    """The server end of an in-memory connection, driven by hand through wire.Connection."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        super().__init__(stream, role=wire.Role.SERVER)

    async def hello(self, **info: Any) -> None:
        await self.send(wire.Notification("hello", [{**HELLO, **info}]))


@asynccontextmanager
async def fake_pair(**client_kwargs: Any) -> AsyncIterator[tuple[trio_echo.Client, FakeServer]]:
    """A client connected to a FakeServer that has sent its hello."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    fake = FakeServer(server_stream)
    await fake.hello()
    async with trio_echo.open_client_over_stream(client_stream, **client_kwargs) as client:
        yield client, fake


@asynccontextmanager
async def tcp_client(
    server: Server | None = None, **client_kwargs: Any
) -> AsyncIterator[tuple[trio_echo.Client, Server]]:
    """A client connected over loopback to a real server in this Trio run."""
    async with (
        tcp_server(server) as (srv, port),
        trio_echo.open_client("127.0.0.1", port, **client_kwargs) as client,
    ):
        yield client, srv


async def settled_stats(client: trio_echo.Client) -> dict[str, Any]:
    """The server's stats once every task in this run (server included) is idle."""
    await trio.testing.wait_all_tasks_blocked()
    stats: dict[str, Any] = await client.call("stats")
    return stats


# --- connecting ----------------------------------------------------------------------


async def test_call_and_server_info() -> None:
    async with tcp_client() as (client, server):
        assert client.server_info == server.hellos[2]
        assert await client.call("echo", "hi") == "hi"
        assert await client.call("echo", b"\x00\xff") == b"\x00\xff"
        assert await client.call("echo", {"a": [1, 2.5, None]}) == {"a": [1, 2.5, None]}
        assert await client.call("ping") == "pong"
    assert client.closed


async def test_connection_refused_raises_oserror() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(OSError):
        async with trio_echo.open_client("127.0.0.1", port):
            pytest.fail("connected to a closed port")


async def test_connect_timeout_when_no_hello_comes() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(5):
        with pytest.raises(TimeoutError, match="timed out"):
            async with trio_echo.open_client("127.0.0.1", port, connect_timeout=0.2):
                pytest.fail("no hello was sent")
    await listeners[0].aclose()


@pytest.mark.parametrize(
    "opening",
    [
        b"",
        wire.encode_error(None, wire.ErrorCode.OVERLOADED, "too many connections"),
        wire.encode_response(1, "not a hello"),
        wire.frame(b"\xc1"),
    ],
)
async def test_close_before_hello_raises_connection_closed(opening: bytes) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    await server_stream.send_all(opening)
    await server_stream.aclose()
    with pytest.raises(trio_echo.ConnectionClosed):
        async with trio_echo.open_client_over_stream(client_stream):
            pytest.fail("no hello was sent")


async def test_raw_echo_server_is_refused_without_waiting() -> None:
    async with tcp_server(mode="raw") as (_, port):
        with trio.fail_after(5), pytest.raises(trio_echo.ConnectionClosed, match="raw echo"):
            async with trio_echo.open_client("127.0.0.1", port, connect_timeout=None):
                pytest.fail("a raw echo server has no hello")


# --- concurrency and batching ----------------------------------------------------------


class CountingStream(trio.abc.Stream):
    """Wraps a stream and counts send_all calls."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sends = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sends += 1
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_1000_concurrent_calls_from_100_tasks() -> None:
    async with tcp_server() as (_, port):
        stream = CountingStream(await trio.open_tcp_stream("127.0.0.1", port))
        results: dict[tuple[int, int], Any] = {}

        async def one(task: int, i: int) -> None:
            value = [task, i, "x" * i]
            results[task, i] = await client.call("echo", value) == value

        async def caller(task: int) -> None:
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(one, task, i)

        async with trio_echo.open_client_over_stream(stream) as client:
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    for task in range(100):
                        nursery.start_soon(caller, task)
            assert len(results) == 1000 and all(results.values())
            assert client.core.pending == {}
            # Requests queued in the same tick leave together, not one send_all each.
            assert stream.sends < 100, stream.sends


async def test_out_of_order_replies_over_memory_stream_to_real_server() -> None:
    server = Server()
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_stream, server_stream)
        async with trio_echo.open_client_over_stream(client_stream) as client:
            order: list[str] = []

            async def slow() -> None:
                await client.call("sleep", 0.2)
                order.append("slow")

            async with trio.open_nursery() as calls:
                calls.start_soon(slow)
                await trio.testing.wait_all_tasks_blocked()
                assert await client.call("echo", "fast") == "fast"
                order.append("fast")
            assert order == ["fast", "slow"]
        nursery.cancel_scope.cancel()


# --- cancellation and timeouts -----------------------------------------------------------


async def test_cancel_crosses_the_wire() -> None:
    async with tcp_client() as (client, server):
        with trio.move_on_after(30) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.call, "sleep", 30)
                await trio.testing.wait_all_tasks_blocked()
                assert server.requests_in_flight == 1
                nursery.cancel_scope.cancel()
        assert not scope.cancelled_caught
        stats = await settled_stats(client)
        assert stats["requests_in_flight"] == 0
        assert stats["errors"] == {"cancelled": 1}
        assert client.core.pending == {}  # the late "cancelled" reply arrived and was dropped
        assert await client.call("echo", 1) == 1


async def test_timeout_raises_deadline_exceeded() -> None:
    service = Service()
    release = trio.Event()

    @service.method
    async def wait_forever() -> None:
        await release.wait()

    server = Server(service)
    async with tcp_client(server) as (client, _):
        start = trio.current_time()
        with pytest.raises(trio_echo.DeadlineExceeded):
            await client.call("wait_forever", timeout=0.1)
        assert trio.current_time() - start < 5
        stats = await settled_stats(client)
        assert stats["requests_in_flight"] == 0
        assert set(stats["errors"]) <= {"timeout", "cancelled"}
        assert await client.call("echo", 2) == 2


async def test_timeout_is_sent_and_enforced_locally(autojump_clock: trio.abc.Clock) -> None:
    async with fake_pair() as (client, fake):
        with pytest.raises(trio_echo.DeadlineExceeded, match="local deadline"):
            await client.call("sleep", 10, timeout=1.5)
        request = await fake.next_event()
        assert request == wire.Request(1, "sleep", [10], {"timeout_ms": 1500.0})
        assert await fake.next_event() == wire.Cancel(1)
        with pytest.raises(ValueError, match="timeout"):
            await client.call("echo", 1, timeout=0)


async def test_server_timeout_reply_raises_deadline_exceeded() -> None:
    async with fake_pair() as (client, fake), trio.open_nursery() as nursery:

        async def server_side() -> None:
            request = await fake.next_event()
            assert isinstance(request, wire.Request)
            await fake.send(wire.ErrorResponse(request.msgid, "timeout", "too slow"))

        nursery.start_soon(server_side)
        with pytest.raises(trio_echo.DeadlineExceeded, match="too slow"):
            await client.call("sleep", 10, timeout=60)


async def test_msgids_wrap_and_cancelled_ids_stay_reserved() -> None:
    top = wire.MAX_MSGID
    async with fake_pair() as (client, fake):
        client.core.next_msgid = top
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.call, "sleep", 10)
            assert await fake.next_event() == wire.Request(top, "sleep", [10])
            nursery.cancel_scope.cancel()
        assert await fake.next_event() == wire.Cancel(top)

        # top is reserved until its late reply arrives: the next call wraps to 0.
        client.core.next_msgid = top
        async with trio.open_nursery() as nursery:
            results: list[Any] = []

            async def call() -> None:
                results.append(await client.call("echo", "new"))

            nursery.start_soon(call)
            assert await fake.next_event() == wire.Request(0, "echo", ["new"])
            await fake.send(wire.Response(top, "late"), wire.Response(0, "new"))
        assert results == ["new"]

        # The late reply freed top.
        client.core.next_msgid = top
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.call, "echo", 3)
            assert await fake.next_event() == wire.Request(top, "echo", [3])
            await fake.send(wire.Response(top, 3))
        assert client.core.pending == {}


# --- errors ------------------------------------------------------------------------------


def test_every_error_code_has_an_exception() -> None:
    assert set(EXCEPTIONS) == {str(code) for code in wire.ErrorCode}


async def test_each_error_code_maps_to_its_exception_end_to_end() -> None:
    service = Service()

    @service.method
    def fail(code: str) -> None:
        """Answer with the given error code."""
        raise remote_error(code, f"failing with {code}", {"detail": code})

    async with tcp_client(Server(service)) as (client, _):
        for code, cls in EXCEPTIONS.items():
            with pytest.raises(cls) as info:
                await client.call("fail", code)
            assert isinstance(info.value, trio_echo.RemoteError)
            assert isinstance(info.value, trio_echo.TrioEchoError)
            assert (info.value.code, info.value.message) == (code, f"failing with {code}")
            assert info.value.data == {"detail": code}
        # Errors the server finds itself.
        with pytest.raises(trio_echo.UnknownMethod):
            await client.call("no_such_method")
        with pytest.raises(trio_echo.InvalidParams):
            await client.call("echo", 1, 2)
        with pytest.raises(trio_echo.InvalidParams):
            await client.call("sleep", -1)
        assert await client.call("echo", "still fine") == "still fine"


async def test_unknown_error_code_raises_remote_error_base() -> None:
    async with fake_pair() as (client, fake):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake.send, wire.ErrorResponse(1, "teapot", "short and stout"))
            with pytest.raises(trio_echo.RemoteError) as info:
                await client.call("brew")
        assert type(info.value) is trio_echo.RemoteError
        assert info.value.code == "teapot"


async def test_oversized_request_is_refused_locally() -> None:
    async with tcp_client(Server(max_frame=1024)) as (client, _):
        with pytest.raises(trio_echo.FrameTooLarge, match="not sent"):
            await client.call("echo", b"x" * 2000)
        assert await client.call("echo", b"x" * 500) == b"x" * 500


# --- connection loss and exception groups ---------------------------------------------------


async def test_connection_loss_fails_every_pending_call_at_once() -> None:
    server = Server()
    async with trio.open_nursery() as server_nursery:
        listeners = await server_nursery.start(server.serve, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        async with trio_echo.open_client("127.0.0.1", port) as client:
            failures: list[BaseException] = []

            async def call() -> None:
                try:
                    await client.call("sleep", 30)
                except trio_echo.ConnectionClosed as exc:
                    failures.append(exc)

            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    for _ in range(10):
                        nursery.start_soon(call)
                    await trio.testing.wait_all_tasks_blocked()
                    assert server.requests_in_flight == 10
                    server_nursery.cancel_scope.cancel()  # the server dies mid-call
            assert len(failures) == 10
            assert len({id(exc) for exc in failures}) == 10  # no shared traceback
            assert client.closed
            with pytest.raises(trio_echo.ConnectionClosed):
                await client.call("echo", 1)
            with pytest.raises(trio_echo.ConnectionClosed):
                await client.notify("echo", 1)


async def test_closing_cancels_pending_calls_on_the_server() -> None:
    async with tcp_server() as (server, port), trio.open_nursery() as outer:
        failed = trio.Event()

        async def call(client: trio_echo.Client) -> None:
            with pytest.raises(trio_echo.ConnectionClosed):
                await client.call("sleep", 30)
            failed.set()

        async with trio_echo.open_client("127.0.0.1", port) as client:
            outer.start_soon(call, client)
            await trio.testing.wait_all_tasks_blocked()
            assert server.requests_in_flight == 1
        await failed.wait()
        await trio.testing.wait_all_tasks_blocked()
        # Without the cancel the server would take the EOF as a half-close and
        # keep sleeping, to answer a client that is gone.
        assert server.requests_in_flight == 0
        assert server.errors == {"cancelled": 1}


async def test_outer_cancel_still_cancels_on_the_server() -> None:
    async with tcp_server() as (server, port):
        with trio.CancelScope() as scope:
            async with (
                trio_echo.open_client("127.0.0.1", port) as client,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(client.call, "sleep", 30)
                await trio.testing.wait_all_tasks_blocked()
                assert server.requests_in_flight == 1
                scope.cancel()  # cancels the client's own reader and writer too
                await trio.sleep_forever()
        assert scope.cancelled_caught
        await trio.testing.wait_all_tasks_blocked()
        assert server.requests_in_flight == 0
        assert server.errors == {"cancelled": 1}


async def test_peer_closing_mid_call() -> None:
    async with fake_pair() as (client, fake), trio.open_nursery() as nursery:

        async def server_side() -> None:
            assert isinstance(await fake.next_event(), wire.Request)
            await fake.stream.aclose()

        nursery.start_soon(server_side)
        with trio.fail_after(5), pytest.raises(trio_echo.ConnectionClosed):
            await client.call("echo", 1)


async def test_user_exception_comes_out_plain() -> None:
    async with tcp_server() as (_, port):
        with pytest.raises(KeyError) as info:
            async with trio_echo.open_client("127.0.0.1", port) as client:
                await client.call("ping")
                raise KeyError("mine")
        assert info.value.args == ("mine",)

        with pytest.raises(trio_echo.UnknownMethod):
            async with trio_echo.open_client("127.0.0.1", port) as client:
                await client.call("nope")

        # Cancellation from outside the block is absorbed by its scope as usual.
        with trio.move_on_after(0.05) as scope:
            async with trio_echo.open_client("127.0.0.1", port) as client:
                await client.call("sleep", 30)
        assert scope.cancelled_caught


async def test_server_loss_surfaces_as_plain_connection_closed() -> None:
    async with fake_pair() as (client, fake):
        await fake.stream.aclose()
        with pytest.raises(trio_echo.ConnectionClosed):
            await client.call("echo", 1)


# --- notifications ---------------------------------------------------------------------------


async def test_notifications_reach_the_callback_and_notify_is_flushed() -> None:
    seen: list[tuple[str, list[Any]]] = []
    got = trio.Event()

    def on_notification(method: str, params: list[Any]) -> None:
        seen.append((method, params))
        got.set()

    async with fake_pair(on_notification=on_notification) as (client, fake):
        await fake.send(
            wire.Notification("hello", [HELLO]),
            wire.Notification("log", ["hi", 1]),
        )
        await fake.stream.send_all(wire.encode_error(None, "malformed", "bad frame"))
        with trio.fail_after(5):
            while len(seen) < 2:
                await got.wait()
                got = trio.Event()
        await client.notify("audit", b"x")
    assert seen == [("log", ["hi", 1]), ("error", [{"code": "malformed", "message": "bad frame"}])]
    # The notification queued just before the block ended was sent on close.
    assert await fake.next_event() == wire.Notification("audit", [b"x"])


async def test_notify_reaches_the_real_server() -> None:
    async with tcp_server() as (server, port):
        async with trio_echo.open_client("127.0.0.1", port) as client:
            await client.notify("echo", "x")
        await trio.testing.wait_all_tasks_blocked()
        assert server.notifications_total == 1


async def test_raising_callback_closes_the_connection() -> None:
    def on_notification(method: str, params: list[Any]) -> None:
        raise RuntimeError("callback bug")

    async with fake_pair(on_notification=on_notification) as (client, fake):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fake.send, wire.Notification("log", []))
            with pytest.raises(trio_echo.ConnectionClosed, match="callback") as info:
                await client.call("echo", 1)
        assert isinstance(info.value.__cause__, RuntimeError)


# Run in a process of its own: the Ctrl-C goes to the main task of its trio.run.
_CTRL_C_AS_A_CALL_REGISTERS = r"""
import signal, sys
import trio, trio_echo

async def main(port):
    async with trio_echo.open_client("127.0.0.1", port) as client:
        conn = client._current
        real = conn._core.request

        def request(*args):  # a Ctrl-C landing just after the call registered
            conn._core.request = real
            made = real(*args)
            signal.raise_signal(signal.SIGINT)
            return made

        conn._core.request = request
        try:
            await client.call("echo", "first")
        except KeyboardInterrupt:
            pass
        else:
            sys.exit("no KeyboardInterrupt")
        me = trio.lowlevel.current_task()
        assert conn._reading is not me, "the read role is still taken"
        assert me not in conn.core.pending.values(), "a live msgid is left behind"
        assert await client.call("echo", "second") == "second"
        print("ok")

trio.run(main, int(sys.argv[1]))
"""


def test_ctrl_c_as_a_call_registers_lands_at_its_checkpoint() -> None:
    # The call path is KI-protected: the interrupt is delivered where the call waits,
    # and the call cancels itself as any cancelled call does, leaving nothing taken.
    with server_thread() as running:
        result = run_python(_CTRL_C_AS_A_CALL_REGISTERS, str(running.port))
    assert result.stdout.strip() == "ok", result.stderr
