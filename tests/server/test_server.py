"""The connection engine over in-memory streams: multiplexing, cancel, errors, limits."""

from __future__ import annotations

import contextvars
import threading
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

import trio_echo
from trio_echo import Server, Service, wire
from trio_echo.wire import ErrorCode, ErrorResponse, Notification, Response

from helpers import Peer, memory_server


def user_service() -> Service:
    service = Service()

    @service.method
    async def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    @service.method
    def boom() -> None:
        raise RuntimeError("kaboom")

    @service.method
    async def aboom() -> None:
        await trio.lowlevel.checkpoint()
        raise KeyError("gone")

    @service.method(blocking=True)
    def thread_id() -> int:
        return threading.get_ident()

    @service.method
    def unencodable() -> Any:
        return {1, 2}

    @service.method
    async def wait_forever() -> None:
        await trio.sleep_forever()

    return service


async def test_hello_then_echo_keeps_types() -> None:
    async with memory_server() as (_, stream, _n):
        peer = Peer(stream)
        info = await peer.start()
        assert info["protocol"] == 1
        assert info["max_frame"] == wire.DEFAULT_MAX_FRAME
        assert info["max_inflight"] == wire.DEFAULT_MAX_INFLIGHT
        assert info["server"].startswith("trio_echo/")
        value = {"s": "str", "b": b"\x00bytes", 1: [1.5, None, True, -(2**63)]}
        assert await peer.call(1, "echo", value) == Response(1, value)
        assert await peer.call(2, "ping") == Response(2, "pong")


async def test_replies_out_of_order(autojump_clock: trio.abc.Clock) -> None:
    async with memory_server() as (_, stream, _n):
        peer = Peer(stream)
        await peer.start()
        await peer.request(1, "sleep", 5)
        await peer.request(2, "sleep", 1)
        await peer.request(3, "echo", "fast")
        first, second, third = await peer.events(3)
        assert first == Response(3, "fast")
        assert second == Response(2, None)
        assert third == Response(1, None)


async def test_cancel_answers_cancelled_and_frees_the_request(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with memory_server() as (server, stream, _n):
        peer = Peer(stream)
        await peer.start()
        await peer.request(7, "sleep", 60)
        await trio.testing.wait_all_tasks_blocked()
        assert server.stats()["requests_in_flight"] == 1
        await peer.send(wire.Cancel(7), wire.Cancel(12345))  # unknown msgid: ignored
        reply = await peer.next_event()
        assert isinstance(reply, ErrorResponse) and reply.code == ErrorCode.CANCELLED
        assert reply.msgid == 7
        assert await peer.call(8, "ping") == Response(8, "pong")
        assert server.stats()["requests_in_flight"] == 0
        assert trio.current_time() < 1  # answered at once, not after the sleep


async def test_cancel_after_reply_is_ignored() -> None:
    async with memory_server() as (_, stream, _n):
        peer = Peer(stream)
        await peer.start()
        assert await peer.call(1, "sleep", 0) == Response(1, None)
        await peer.send(wire.Cancel(1))
        assert await peer.call(2, "ping") == Response(2, "pong")


async def test_timeout_ms(autojump_clock: trio.abc.Clock) -> None:
    async with memory_server() as (server, stream, _n):
        peer = Peer(stream)
        await peer.start()
        reply = await peer.call(1, "sleep", 30, timeout_ms=250)
        assert isinstance(reply, ErrorResponse) and reply.code == ErrorCode.TIMEOUT
        assert 0.25 <= trio.current_time() < 1
        assert await peer.call(2, "sleep", 0.1, timeout_ms=5000) == Response(2, None)
        assert server.stats()["errors"] == {"timeout": 1}


@pytest.mark.parametrize("bad", [0, -5, "100", True, float("nan"), float("inf"), None])
async def test_bad_timeout_ms_is_invalid_params(bad: Any) -> None:
    async with memory_server() as (_, stream, _n):
        peer = Peer(stream)
        await peer.start()
        reply = await peer.call(1, "sleep", 0, timeout_ms=bad)
        assert isinstance(reply, ErrorResponse) and reply.code == ErrorCode.INVALID_PARAMS


async def test_notifications_get_no_reply_but_count() -> None:
    async with memory_server() as (server, stream, _n):
        peer = Peer(stream)
        await peer.start()
        await peer.send(
            Notification("echo", [1]),
            Notification("no_such_method", []),
            Notification("sleep", [-1]),
        )
        assert await peer.call(1, "ping") == Response(1, "pong")
        stats = server.stats()
        assert stats["notifications_total"] == 3
        assert stats["errors"] == {"unknown_method": 1, "invalid_params": 1}


async def test_user_methods_and_handler_kinds() -> None:
    async with memory_server(Server(user_service())) as (_, stream, _n):
        peer = Peer(stream)
        await peer.start()
        assert await peer.call(1, "add", 2, 3) == Response(1, 5)
        reply = await peer.call(2, "thread_id")
        assert isinstance(reply, Response)
        assert reply.result != threading.get_ident()  # ran on a worker thread
        names = await peer.call(3, "methods")
        assert isinstance(names, Response)
        docs = {m["name"]: m["doc"] for m in names.result}
        assert docs["add"] == "Add two numbers."
        assert {"echo", "ping", "sleep", "stats", "methods"} <= set(docs)


@pytest.mark.parametrize(
    ("method", "params", "code"),
    [
        ("nope", [], ErrorCode.UNKNOWN_METHOD),
        ("add", [1], ErrorCode.INVALID_PARAMS),  # too few
        ("add", [1, 2, 3], ErrorCode.INVALID_PARAMS),  # too many
        ("add", [1, "2"], ErrorCode.INVALID_PARAMS),  # wrong type per annotation
        ("add", [True, 2], ErrorCode.INVALID_PARAMS),  # bool is not int on the wire
        ("echo", [], ErrorCode.INVALID_PARAMS),  # inline handler, wrong count
        ("sleep", [61], ErrorCode.INVALID_PARAMS),  # handler rejects the value
        ("sleep", ["x"], ErrorCode.INVALID_PARAMS),
        ("thread_id", [1], ErrorCode.INVALID_PARAMS),  # blocking handler
        ("boom", [], ErrorCode.INTERNAL),
        ("aboom", [], ErrorCode.INTERNAL),
        ("unencodable", [], ErrorCode.INTERNAL),
    ],
)
async def test_error_responses(method: str, params: list[Any], code: ErrorCode) -> None:
    async with memory_server(Server(user_service())) as (server, stream, _n):
        peer = Peer(stream)
        await peer.start()
        reply = await peer.call(9, method, *params)
        assert isinstance(reply, ErrorResponse), reply
        assert (reply.msgid, reply.code) == (9, code)
        assert reply.message
        assert "Traceback" not in reply.message
        assert reply.data is None  # no traceback leaks without debug
        assert server.stats()["errors"] == {code.value: 1}
        # The connection carries on.
        assert await peer.call(10, "ping") == Response(10, "pong")


async def test_debug_puts_traceback_in_data() -> None:
    async with memory_server(Server(user_service(), debug=True)) as (_, stream, _n):
        peer = Peer(stream)
        await peer.start()
        reply = await peer.call(1, "boom")
        assert isinstance(reply, ErrorResponse) and "Traceback" in reply.data


async def test_malformed_frames_keep_the_connection() -> None:
    async with memory_server() as (server, stream, _n):
        peer = Peer(stream)
        await peer.start()
        await stream.send_all(
            wire.frame(b"\xc1")  # never-used msgpack byte
            + b"\x00\x00\x00\x00"  # empty frame
            + wire.frame(wire.packb({"not": "a message"}))
            + wire.frame(wire.packb([0, 5, 42, []]))  # method not a str: msgid readable
            + wire.frame(wire.packb([1, 5, None, 1]))  # responses are not for servers
            + wire.frame(wire.packb([9, 9]))
        )
        got = await peer.events(6)
        notices = [e for e in got if isinstance(e, Notification)]
        responses = [e for e in got if isinstance(e, ErrorResponse)]
        assert len(notices) == 5 and all(n.method == "error" for n in notices)
        assert all(n.params[0]["code"] == "malformed" for n in notices)
        assert responses == [ErrorResponse(5, "malformed", "request method must be a str")]
        assert await peer.call(1, "ping") == Response(1, "pong")
        assert server.stats()["errors"] == {"malformed": 6}


async def test_msgid_range_on_the_fast_path() -> None:
    # The inline fast path checks msgids in two steps (below 2**30, then up to
    # MAX_MSGID): every edge is answered or refused exactly as the protocol says.
    async with memory_server() as (server, stream, _n):
        peer = Peer(stream)
        await peer.start()
        for msgid in (0, 2**30 - 1, 2**30, wire.MAX_MSGID):
            assert await peer.call(msgid, "echo", msgid) == Response(msgid, msgid)
        for bad in (wire.MAX_MSGID + 1, -1, True):
            await stream.send_all(wire.frame(wire.packb([0, bad, "echo", [1]])))
            [reply] = await peer.events(1)
            assert isinstance(reply, Notification) and reply.params[0]["code"] == "malformed"
        assert server.stats()["errors"] == {"malformed": 3}


async def test_duplicate_msgid_in_flight(autojump_clock: trio.abc.Clock) -> None:
    async with memory_server() as (_, stream, _n):
        peer = Peer(stream)
        await peer.start()
        await peer.request(1, "sleep", 1)
        await peer.request(1, "echo", "again")
        dup = await peer.next_event()
        assert isinstance(dup, ErrorResponse) and dup.code == ErrorCode.MALFORMED
        assert await peer.next_event() == Response(1, None)  # the first kept running


async def test_frame_too_large_closes_before_reading_the_body() -> None:
    async with memory_server(max_frame=1000) as (_, stream, _n):
        peer = Peer(stream)
        assert (await peer.start())["max_frame"] == 1000
        await peer.request(1, "echo", "fine")
        await stream.send_all((1001).to_bytes(4, "big"))  # header only: no body sent
        events = await peer.expect_close()
        assert events[0] == Response(1, "fine")
        assert isinstance(events[1], Notification)
        assert events[1].params[0]["code"] == "frame_too_large"


async def test_unsupported_version() -> None:
    async with memory_server() as (_, stream, _n):
        await stream.send_all(wire.MAGIC + b"\x03")
        peer = Peer(stream)
        (notice,) = await peer.expect_close()
        assert isinstance(notice, Notification)
        assert notice.params[0]["code"] == "unsupported_version"


async def test_max_requests_overloaded(autojump_clock: trio.abc.Clock) -> None:
    async with memory_server(max_requests=1) as (_server, stream, _n):
        peer = Peer(stream)
        await peer.start()
        await peer.request(1, "sleep", 1)
        await trio.testing.wait_all_tasks_blocked()
        reply = await peer.call(2, "echo", "x")
        assert isinstance(reply, ErrorResponse) and reply.code == ErrorCode.OVERLOADED
        assert await peer.next_event() == Response(1, None)
        assert await peer.call(3, "echo", "x") == Response(3, "x")


async def test_max_inflight_stops_reading(autojump_clock: trio.abc.Clock) -> None:
    async with memory_server(max_inflight=2) as (server, stream, _n):
        peer = Peer(stream)
        assert (await peer.start())["max_inflight"] == 2
        await peer.request(1, "sleep", 1)
        await peer.request(2, "sleep", 2)
        await peer.request(3, "sleep", 0.5)
        await trio.testing.wait_all_tasks_blocked()
        # Two requests fill the connection; the third waits until one ends.
        assert server.stats()["requests_total"] == 2
        assert server.stats()["requests_in_flight"] == 2
        assert await peer.next_event() == Response(1, None)
        assert await peer.next_event() == Response(3, None)
        assert trio.current_time() == pytest.approx(1.5)
        assert await peer.next_event() == Response(2, None)
        # Past the limit the server stops reading: bytes stay in the stream.
        for msgid in range(10, 13):
            await peer.request(msgid, "sleep", 1)
        await peer.request(13, "echo", b"x" * 1000)
        await trio.testing.wait_all_tasks_blocked()
        assert server.stats()["requests_total"] == 5


async def test_half_close_gets_every_reply(autojump_clock: trio.abc.Clock) -> None:
    async with memory_server() as (_, stream, _n):
        peer = Peer(stream)
        await peer.start()
        await peer.request(1, "sleep", 2)
        await peer.request(2, "echo", "x")
        await stream.send_eof()
        assert await peer.expect_close() == [Response(2, "x"), Response(1, None)]


async def test_msgpack_rpc_stream_mode(autojump_clock: trio.abc.Clock) -> None:
    async with memory_server() as (_, stream, _n):
        peer = Peer(stream, wire.Mode.MPRPC)
        assert await peer.call(1, "echo", b"raw bytes") == Response(1, b"raw bytes")
        await peer.request(2, "sleep", 1)
        await peer.send(Notification("echo", [1]))
        assert await peer.call(3, "ping") == Response(3, "pong")
        assert await peer.next_event() == Response(2, None)


async def test_msgpack_rpc_stream_undecodable_closes() -> None:
    async with memory_server() as (_, stream, _n):
        peer = Peer(stream, wire.Mode.MPRPC)
        assert await peer.call(1, "ping") == Response(1, "pong")
        await stream.send_all(b"\xc1")
        (notice,) = await peer.expect_close()
        assert isinstance(notice, Notification) and notice.params[0]["code"] == "malformed"


async def test_msgpack_rpc_stream_too_large_closes() -> None:
    async with memory_server(max_frame=100) as (_, stream, _n):
        peer = Peer(stream, wire.Mode.MPRPC)
        await peer.request(1, "echo", b"x" * 200)
        (notice,) = await peer.expect_close()
        assert isinstance(notice, Notification)
        assert notice.params[0]["code"] == "frame_too_large"


async def test_raw_echo_decides_on_first_disagreeing_byte() -> None:
    async with memory_server() as (_, stream, _n):
        await stream.send_all(b"h")
        with trio.fail_after(5):
            assert await stream.receive_some(10) == b"h"  # not held for 8 bytes
        await stream.send_all(b"\x00TECHO\x00\x01 is just data now")
        got = b""
        while len(got) < 25:
            got += await stream.receive_some(100)
        assert got == b"\x00TECHO\x00\x01 is just data now"


async def test_raw_echo_partial_preamble_then_half_close() -> None:
    async with memory_server() as (_, stream, _n):
        await stream.send_all(b"\x00TEC")
        await stream.send_eof()
        got = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(100):
                got += chunk
        assert got == b"\x00TEC"


async def test_pinned_raw_mode_echoes_preamble_and_mprpc_bytes() -> None:
    async with memory_server(mode="raw") as (_, stream, _n):
        data = wire.PREAMBLE + bytes([0x94]) + b"tail"
        await stream.send_all(data)
        await stream.send_eof()
        got = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(100):
                got += chunk
        assert got == data


@pytest.mark.parametrize(
    ("opening", "code"),
    [(b"hello world\n", "malformed"), (wire.MAGIC + b"\x07", "unsupported_version")],
)
async def test_pinned_framed_mode_rejects_other_openings(opening: bytes, code: str) -> None:
    async with memory_server(mode="framed") as (_, stream, _n):
        await stream.send_all(opening)
        (notice,) = await Peer(stream).expect_close()
        assert isinstance(notice, Notification) and notice.params[0]["code"] == code


async def test_pinned_mprpc_mode() -> None:
    async with memory_server(mode="mprpc") as (_, stream, _n):
        peer = Peer(stream, wire.Mode.MPRPC)
        assert await peer.call(4, "echo", "x") == Response(4, "x")


def test_service_rejects_duplicates_and_async_blocking() -> None:
    service = Service()

    @service.method
    def f() -> None: ...

    with pytest.raises(ValueError, match="already registered"):
        service.add(f)

    async def g() -> None: ...

    with pytest.raises(TypeError, match="blocking"):
        service.add(g, blocking=True)
    clash = Service()
    clash.add(f, name="echo")
    with pytest.raises(ValueError, match="echo"):
        Server(clash)


async def test_serve_stream_module_function() -> None:
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio_echo.serve_stream, server_side)
        peer = Peer(client)
        await peer.start()
        assert await peer.call(1, "ping") == Response(1, "pong")
        await client.aclose()


async def test_async_replies_leave_while_a_slow_async_call_blocks(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with memory_server(Server(user_service())) as (_, stream, _n):
        peer = Peer(stream)
        await peer.start()
        # One read: a quick async call, a slow one, then another quick one.
        await peer.send(
            wire.Request(1, "add", [1, 2]),
            wire.Request(2, "sleep", [5]),
            wire.Request(3, "add", [3, 4]),
        )
        assert await peer.next_event() == Response(1, 3)
        assert await peer.next_event() == Response(3, 7)
        assert trio.current_time() < 1  # not held back behind the sleep
        assert await peer.next_event() == Response(2, None)


request_tag: contextvars.ContextVar[str] = contextvars.ContextVar("request_tag", default="")


async def test_each_async_call_has_its_own_context(autojump_clock: trio.abc.Clock) -> None:
    """Context variables set by an async handler stay with that call, as in a task of its own."""
    service = Service()

    @service.method
    async def tag(value: str, pause: float) -> str:
        seen = request_tag.get()
        request_tag.set(value)
        await trio.sleep(pause)  # others run meanwhile on the same connection
        return f"{seen}|{request_tag.get()}"

    token = request_tag.set("server")  # the connection's context is inherited
    try:
        async with memory_server(Server(service)) as (_, stream, _n):
            peer = Peer(stream)
            await peer.start()
            # One read: quick calls that never block, and blocking ones that overlap.
            await peer.send(
                wire.Request(1, "tag", ["a", 0]),
                wire.Request(2, "tag", ["b", 2]),
                wire.Request(3, "tag", ["c", 1]),
                wire.Request(4, "tag", ["d", 0]),
            )
            replies = {e.msgid: e for e in await peer.events(4)}
            assert replies == {
                1: Response(1, "server|a"),
                2: Response(2, "server|b"),
                3: Response(3, "server|c"),
                4: Response(4, "server|d"),
            }
    finally:
        request_tag.reset(token)


async def test_many_blocked_async_calls_each_get_a_worker(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with memory_server(Server(user_service())) as (server, stream, _n):
        peer = Peer(stream)
        await peer.start()
        await peer.send(*(wire.Request(i, "sleep", [1]) for i in range(50)))
        replies = await peer.events(50)
        assert sorted(r.msgid for r in replies if isinstance(r, Response)) == list(range(50))
        assert trio.current_time() == pytest.approx(1)  # all ran at once
        # The idle pool shrinks back to a few parked workers.
        await trio.testing.wait_all_tasks_blocked()
        assert server.stats()["requests_in_flight"] == 0


async def test_cancel_and_timeout_of_calls_waiting_for_a_worker(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with memory_server(Server(user_service())) as (_, stream, _n):
        peer = Peer(stream)
        await peer.start()
        # In one read: a cancel for a call that has not reached a worker yet.
        await peer.send(
            wire.Request(1, "add", [1, 1]),
            wire.Request(2, "wait_forever", [], {"timeout_ms": 100}),
            wire.Request(3, "wait_forever", []),
            wire.Cancel(3),
        )
        got = {e.msgid: e for e in await peer.events(3) if not isinstance(e, Notification)}
        assert got[1] == Response(1, 2)
        assert isinstance(got[2], ErrorResponse) and got[2].code == "timeout"
        assert isinstance(got[3], ErrorResponse) and got[3].code == "cancelled"


async def test_handler_that_swallows_cancellation_does_not_poison_later_calls(
    autojump_clock: trio.abc.Clock,
) -> None:
    service = Service()

    @service.method
    async def stubborn() -> str:
        try:
            await trio.sleep(10)
        except trio.Cancelled:
            return "ignored the cancel"  # bad manners, but it must not hurt others
        return "slept"

    @service.method
    async def nap() -> str:
        await trio.sleep(1)
        return "rested"

    async with memory_server(Server(service)) as (_, stream, _n):
        peer = Peer(stream)
        await peer.start()
        await peer.request(1, "stubborn")
        await trio.testing.wait_all_tasks_blocked()
        await peer.send(wire.Cancel(1))
        assert await peer.next_event() == Response(1, "ignored the cancel")
        assert await peer.call(2, "nap") == Response(2, "rested")
        assert await peer.call(3, "nap", timeout_ms=5000) == Response(3, "rested")


async def test_a_result_msgpack_cannot_encode_is_told_apart_from_a_raising_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The handler ran fine; only its result cannot go on the wire. Every handler kind
    says so in the reply, and the log has one line for it, not a traceback (a check by
    traceback frame once missed it: with compiled msgpack the last frame is msgpack's)."""
    service = Service()

    @service.method
    def quick() -> Any:
        return object()

    @service.method
    def checked(n: int) -> Any:  # annotated: the slower inline path
        return {n: object()}

    @service.method
    async def later() -> Any:
        return object()

    @service.method(blocking=True)
    def threaded() -> Any:
        return object()

    caplog.set_level("DEBUG", logger="trio_echo")
    async with memory_server(Server(service)) as (server, stream, _n):
        peer = Peer(stream)
        await peer.start()
        for msgid, (method, params) in enumerate(
            [("quick", []), ("checked", [1]), ("later", []), ("threaded", [])], 1
        ):
            reply = await peer.call(msgid, method, *params)
            assert isinstance(reply, ErrorResponse), reply
            assert reply.code == ErrorCode.INTERNAL
            assert reply.message.startswith(f"{method}: result cannot be encoded as msgpack: ")
        assert server.stats()["errors"] == {"internal": 4}
        assert await peer.call(9, "ping") == Response(9, "pong")
    logged = [r for r in caplog.records if "cannot be encoded" in r.getMessage()]
    assert len(logged) == 4
    assert not any(r.exc_info for r in logged)
    assert not any(r.exc_info for r in caplog.records if r.levelname == "ERROR")
