"""Limits end to end on loopback: connections, requests, memory, idle time, frame size.

Each test drives a limit past its bound and checks what the client sees, so it
fails if the mechanism behind the limit goes missing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import pytest
import trio

import trio_echo
from trio_echo import Server, wire
from trio_echo.wire import ErrorCode, ErrorResponse, Notification, Response

from helpers import (
    Gate,
    Peer,
    ServerProcess,
    SyncPeer,
    decode_all,
    error_code,
    eventually,
    framed_peer,
    proc_status_kib,
    quiet,
    raw_bytes,
    read_to_eof,
    tcp_server,
)

IDLE_S = 0.3


async def connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


# --- max_connections -----------------------------------------------------------------


async def test_max_connections_refuses_with_overloaded_then_serves_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_echo")
    async with tcp_server(max_connections=2) as (server, port):
        first = await connect(port)
        peer = Peer(first)
        await peer.start()
        second = await connect(port)
        await second.send_all(b"raw!")  # a raw echo client also holds a slot
        assert await second.receive_some(10) == b"raw!"

        # Past the limit: a framed client gets an overloaded notice, then the close...
        stream = await connect(port)
        await stream.send_all(wire.PREAMBLE)
        (notice,) = decode_all(await read_to_eof(stream))
        assert error_code(notice) == "overloaded"
        assert "max_connections" in notice.params[0]["message"]  # type: ignore[union-attr]
        # ...a raw client just the close (no echo), and a silent one the close within 1 s.
        raw = await connect(port)
        await raw.send_all(b"hello")
        assert await read_to_eof(raw) == b""
        silent = await connect(port)
        start = time.monotonic()
        assert await read_to_eof(silent, timeout=5) == b""
        assert time.monotonic() - start < 3

        # Many at once: every framed one is told, and the log says so once.
        async def refused() -> None:
            stream = await connect(port)
            await stream.send_all(wire.PREAMBLE)
            assert [error_code(e) for e in decode_all(await read_to_eof(stream))] == ["overloaded"]

        async with trio.open_nursery() as nursery:
            for _ in range(30):
                nursery.start_soon(refused)
        # The two served connections never noticed.
        assert await peer.call(1, "ping") == Response(1, "pong")
        await second.send_all(b"still here")
        assert await second.receive_some(20) == b"still here"
        stats = server.stats()
        assert stats["connections_open"] == 2
        assert stats["connections_rejected"] == 33
        assert stats["errors"]["overloaded"] == 33

        # Below the limit again: served again.
        await first.aclose()
        await eventually(lambda: server.stats()["connections_open"] == 1)
        async with framed_peer(port) as again:
            assert await again.call(2, "ping") == Response(2, "pong")
        await second.aclose()
    warnings = [r for r in caplog.records if "max_connections" in r.getMessage()]
    assert len(warnings) == 1  # not one line per refused connection


# --- max_requests --------------------------------------------------------------------


async def test_max_requests_is_server_wide_and_covers_every_handler_kind() -> None:
    gate = Gate()
    server = Server(gate.service, max_requests=3)
    try:
        async with (
            tcp_server(server) as (_, port),
            framed_peer(port) as a,
            framed_peer(port) as b,
            framed_peer(port) as c,
        ):
            # Three requests in flight on three connections: an async one, a
            # blocking one, and a notification.
            await a.request(1, "await_forever")
            await b.request(1, "wait_gate")
            await c.send(Notification("sleep", [30]))
            await eventually(lambda: server.stats()["requests_in_flight"] == 3)
            async with framed_peer(port) as d:
                for msgid, method, params in [
                    (1, "echo", ["inline"]),
                    (2, "aecho", ["async"]),
                    (3, "becho", ["blocking"]),
                    (4, "sleep", [0]),
                ]:
                    reply = await d.call(msgid, method, *params)
                    assert isinstance(reply, ErrorResponse), reply
                    assert (reply.msgid, reply.code) == (msgid, ErrorCode.OVERLOADED)
                await d.send(Notification("echo", [1]))  # refused too: only counted
                assert error_code(await d.call(5, "echo", 5)) == "overloaded"
                assert server.stats()["errors"]["overloaded"] == 6
                # Monitoring never goes dark: ping, stats and methods still answer.
                assert await d.call(8, "ping") == Response(8, "pong")
                stats = await d.call(9, "stats")
                assert isinstance(stats, Response) and stats.result["requests_in_flight"] == 3
                methods = await d.call(10, "methods")
                assert isinstance(methods, Response)
                assert "ping" in [m["name"] for m in methods.result]
                # Free one slot (cancel the async one): requests are served again.
                await a.send(wire.Cancel(1))
                assert error_code(await a.next_event()) == "cancelled"
                assert await d.call(6, "aecho", "back") == Response(6, "back")
                assert await d.call(7, "echo", "back") == Response(7, "back")
            gate.open()
            assert await b.next_event() == Response(1, "opened")
    finally:
        gate.open()


# --- max_inflight, bounded replies -------------------------------------------------------

PAYLOAD = 64 * 1024
REQUESTS = 1700  # 1700 x 64 KiB: more than 100 MiB each way


def payload(msgid: int) -> bytes:
    return msgid.to_bytes(4, "big") * (PAYLOAD // 4)


def test_a_client_that_reads_nothing_cannot_grow_the_server(tmp_path: Any) -> None:
    """100+ MiB of requests, nothing read: the server stops reading instead of buffering.

    A sender thread writes requests (inline, async and blocking echo handlers)
    until the kernel blocks it. If the server kept reading (or queued replies
    without bound) the thread would get all 100 MiB in at once and the
    server's RSS would grow by as much; instead the thread stalls after a few
    MiB. Then the client reads, and every reply arrives, complete and correct.
    """
    app = os.path.join(tmp_path, "echoes.py")
    with open(app, "w") as f:
        f.write(
            "import trio, trio_echo\n"
            "service = trio_echo.Service()\n"
            "@service.method\n"
            "async def aecho(value):\n"
            "    await trio.sleep(0)\n"
            "    return value\n"
            "@service.method(blocking=True)\n"
            "def becho(value):\n"
            "    return value\n"
        )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    )
    methods = ["echo", "aecho", "becho"]
    with ServerProcess("--app", "echoes:service", env=env) as srv:
        pid = srv.proc.pid
        peer = SyncPeer(srv.port)
        peer.next_event()  # hello
        for msgid in range(200):  # warm up the allocator with the same traffic
            method = methods[msgid % 3]
            assert peer.call(msgid, method, payload(msgid)) == Response(msgid, payload(msgid))
        base_kib = proc_status_kib(pid, "VmRSS")

        sock = peer.sock
        progress = {"sent": 0, "stalled_at": -1}
        stalled = threading.Event()

        def sender() -> None:
            sock.setblocking(False)
            import select

            for msgid in range(REQUESTS):
                data = memoryview(
                    peer.conn.send(wire.Request(msgid, methods[msgid % 3], [payload(msgid)]))
                )
                while data:
                    try:
                        n = sock.send(data)
                    except BlockingIOError:
                        _, writable, _ = select.select([], [sock], [], 1.0)
                        if not writable and not stalled.is_set():
                            progress["stalled_at"] = progress["sent"]
                            stalled.set()
                        continue
                    data = data[n:]
                    progress["sent"] += n
            stalled.set()

        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        assert stalled.wait(60)
        # The kernel stopped the sender long before 100 MiB: the server stopped reading.
        assert 0 < progress["stalled_at"] < 30 * 2**20, progress
        grown_mib = (proc_status_kib(pid, "VmRSS") - base_kib) / 1024
        assert grown_mib < 40, grown_mib

        # Now read everything: every reply, in order of msgid for each handler kind.
        sock.setblocking(True)
        seen = 0
        conn = wire.Connection(max_frame=2**31)
        deadline = time.monotonic() + 120
        while seen < REQUESTS:
            assert time.monotonic() < deadline
            try:
                chunk = sock.recv(1 << 20)
            except BlockingIOError:
                import select

                select.select([sock], [], [], 1.0)
                continue
            assert chunk, f"closed after {seen} replies"
            conn.receive_data(chunk)
            for event in conn.events():
                assert isinstance(event, Response), event
                assert event.result == payload(event.msgid)
                seen += 1
        thread.join(10)
        peak_mib = (proc_status_kib(pid, "VmHWM") - base_kib) / 1024
        assert peak_mib < 40, peak_mib
        peer.close()
        assert srv.stop() == 0


# --- idle timeout --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "framed", "mprpc", "raw"])
async def test_idle_timeout_closes_a_silent_connection_in_every_mode(mode: str) -> None:
    async with tcp_server(mode=mode, idle_timeout=IDLE_S) as (server, port):
        # Before the first byte.
        stream = await connect(port)
        start = time.monotonic()
        assert await read_to_eof(stream, timeout=5) == b""
        # (The server starts its clock at accept, which may run before this task resumes.)
        assert IDLE_S * 0.5 <= time.monotonic() - start < IDLE_S + 2
        # After some traffic.
        stream = await connect(port)
        if mode == "raw":
            await stream.send_all(b"hi")
            assert await read_to_eof(stream, timeout=5) == b"hi"
        else:
            async with stream:
                peer = Peer(stream, wire.Mode.MPRPC if mode == "mprpc" else wire.Mode.FRAMED)
                if mode != "mprpc":
                    await peer.start()
                assert await peer.call(1, "ping") == Response(1, "pong")
                assert await peer.expect_close() == []
        await eventually(lambda: quiet(server))


async def test_an_idle_version_2_connection_is_told_goaway_idle_then_closed() -> None:
    async with tcp_server(idle_timeout=IDLE_S) as (server, port):
        stream = await connect(port)
        async with stream:
            await stream.send_all(wire.PREAMBLE_V2)
            data = await read_to_eof(stream, timeout=10)
        events = decode_all(data)
        assert events[0] == Notification("hello", [server.hellos[2]])
        assert events[1:] == [Notification("goaway", [{"reason": "idle", "grace_ms": 1000}])]
        assert server.stats()["goaways"] == {"idle": 1}
        await eventually(lambda: quiet(server))


async def test_an_idle_close_is_invisible_to_a_version_2_client() -> None:
    async with tcp_server(idle_timeout=IDLE_S) as (server, port):
        client_cm = trio_echo.open_client("127.0.0.1", port)
        async with client_cm as client:
            assert client.server_info["protocol"] == 2
            assert await client.call("echo", 1) == 1
            await eventually(lambda: server.stats()["goaways"].get("idle") == 1)
            # The client moved on: the next call goes on a new connection, no error.
            assert await client.call("echo", 2) == 2
            assert server.stats()["connections_total"] == 2


async def test_idle_timeout_spares_a_request_in_flight_and_unsent_replies() -> None:
    async with tcp_server(idle_timeout=IDLE_S) as (server, port):
        # A request in flight for longer than the timeout is answered.
        async with framed_peer(port) as peer:
            await peer.request(1, "sleep", IDLE_S * 4)
            assert await peer.next_event() == Response(1, None)
            assert await peer.expect_close() == []  # then idle: closed

        # Replies the client does not read: the server blocks in send, not idle.
        framed = wire.Connection()
        blob = b"x" * (1 << 20)
        requests = framed.initiate() + b"".join(
            framed.send(wire.Request(i, "echo", [blob])) for i in range(24)
        )
        # Raw echo the client does not read: the echo is an unsent reply too.
        data = raw_bytes(24 << 20)
        # (Both connect only now: a connection silent for IDLE_S is rightly closed.)
        stream = await connect(port)
        raw = await connect(port)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, requests)
            nursery.start_soon(raw.send_all, data)
            # The interval under test: several idle timeouts with neither side moving.
            await trio.sleep(IDLE_S * 4)
            assert server.stats()["connections_open"] == 2
            peer = Peer(stream)
            peer.conn = framed
            replies = await peer.events(25)
            got = bytearray()
            with trio.fail_after(30):
                while len(got) < len(data):
                    got += await raw.receive_some(1 << 20)
        assert replies[1:] == [Response(i, blob) for i in range(24)]
        assert got == data
        await stream.aclose()
        await raw.aclose()


async def test_idle_timeout_zero_is_off() -> None:
    async with tcp_server(idle_timeout=0) as (_, port):
        stream = await connect(port)
        # The interval under test: well past any tick of a reaper that should not exist.
        await trio.sleep(0.6)
        await stream.send_all(b"still open")
        assert await stream.receive_some(100) == b"still open"
        await stream.aclose()


async def test_slowloris_holds_one_connections_bound_and_no_more() -> None:
    """A byte-at-a-time client keeps one slot and at most max_frame bytes, then is closed."""
    max_frame = 4096
    idle = 0.6  # trickling every 0.05 s stays far inside it, even on a loaded machine
    server = Server(idle_timeout=idle, max_frame=max_frame, max_connections=3)
    async with tcp_server(server) as (_, port):
        frame = wire.frame(wire.packb([0, 1, "echo", [b"y" * (max_frame - 20)]]))
        lorises = [await connect(port) for _ in range(3)]
        for loris in lorises:
            await loris.send_all(wire.PREAMBLE)
        await eventually(lambda: server.stats()["connections_open"] == 3)
        # A fourth client is refused: lorises cost a slot each, like anyone else.
        refused = await connect(port)
        await refused.send_all(wire.PREAMBLE)
        assert [error_code(e) for e in decode_all(await read_to_eof(refused))] == ["overloaded"]

        # Trickling faster than the idle timeout keeps a connection (while the two
        # silent ones are closed), and holds no more than max_frame bytes.
        loris = lorises[0]
        for i in range(30):
            await loris.send_all(frame[i : i + 1])
            await trio.sleep(0.05)
        assert server.stats()["connections_open"] == 1
        for silent in lorises[1:]:
            assert decode_all(await read_to_eof(silent))[1:] == []
        held = [c.session.decoder.buffered for c in server._conns if c.session is not None]
        assert len(held) == 1 and 0 < held[0] <= 30  # what it sent, not what it announced
        # Stopping mid-frame does not pin the connection: the idle timeout closes it.
        start = time.monotonic()
        events = decode_all(await read_to_eof(loris, timeout=5))
        assert [e for e in events if not isinstance(e, Notification)] == []
        assert time.monotonic() - start < idle + 2
        # A header that announces more than max_frame is refused on the header alone.
        stream = await connect(port)
        await stream.send_all(wire.PREAMBLE + (max_frame + 1).to_bytes(4, "big")[:3])
        await stream.send_all((max_frame + 1).to_bytes(4, "big")[3:])
        events = decode_all(await read_to_eof(stream))
        assert [error_code(e) for e in events[1:]] == ["frame_too_large"]
        await eventually(lambda: server.stats()["connections_open"] == 0)


# --- max_frame -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [wire.Mode.FRAMED, wire.Mode.MPRPC])
async def test_max_frame_is_checked_on_the_header(mode: wire.Mode) -> None:
    async with tcp_server(max_frame=1000) as (_, port):
        stream = await connect(port)
        conn = wire.Connection(mode=mode)
        ok = conn.send(wire.Request(1, "echo", [b"z" * 900]))
        if mode is wire.Mode.FRAMED:
            huge = (10**9).to_bytes(4, "big")  # a header for a 1 GB frame, no body
        else:
            # A bare stream has no frame header: [0, 2, "echo", [a bin32 announcing
            # 1 GB]] is refused once max_frame bytes of it have arrived, not 1 GB.
            huge = b"\x94\x00\x02\xa4echo\x91\xc6" + (10**9).to_bytes(4, "big") + b"a" * 1000
        await stream.send_all(conn.initiate() + ok + huge)
        events = decode_all(await read_to_eof(stream, timeout=5), mode)
        if mode is wire.Mode.FRAMED:
            events = events[1:]  # hello
        assert events[0] == Response(1, b"z" * 900)
        assert [error_code(e) for e in events[1:]] == ["frame_too_large"]
