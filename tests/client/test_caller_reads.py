"""The clients' caller-reads path: a caller that finds no other call pending writes its
request and reads its own reply itself, on a real socket (a socketpair, the fake server
at the other end), while later callers wait for it as followers."""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trio_echo
from trio_echo import wire

from helpers import Peer, SyncPeer, eventually

HELLO = {"protocol": 1, "server": "fake", "max_frame": wire.DEFAULT_MAX_FRAME, "max_inflight": 128}


@asynccontextmanager
async def socket_pair(**client_kwargs: Any) -> AsyncIterator[tuple[trio_echo.Client, Peer]]:
    """A client over one end of a real socketpair; a fake server (past its hello) at the other."""
    a, b = trio.socket.socketpair()
    async with trio.SocketStream(b) as server_stream:
        server = Peer(server_stream, role=wire.Role.SERVER)
        await server.send(wire.Notification("hello", [HELLO]))
        stream = trio.SocketStream(a)
        async with trio_echo.open_client_over_stream(stream, **client_kwargs) as client:
            assert client._current._fd >= 0  # the path under test
            yield client, server


async def request(server: Peer) -> wire.Request:
    event = await server.next_event()
    assert isinstance(event, wire.Request), event
    return event


async def reading_caller(client: trio_echo.Client) -> trio.lowlevel.Task:
    """The task holding the read role once every task is blocked: it must be a caller."""
    await trio.testing.wait_all_tasks_blocked()
    holder = client._current._reading
    assert holder is not None and holder is not client._current._reader_task
    return holder


# --- async ------------------------------------------------------------------------------


async def test_sequential_calls_read_their_own_replies() -> None:
    async with socket_pair() as (client, server):
        for n in range(3):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server_echoes_one, server)
                assert await client.call("echo", n) == n
            assert client._current._reading is None  # freed at once: the next call takes it
        assert client.core.pending == {}


async def server_echoes_one(server: Peer) -> None:
    req = await request(server)
    await server.send(wire.Response(req.msgid, req.params[0]))


@pytest.mark.parametrize("leader_first", [True, False])
async def test_followers_get_their_replies_from_the_reading_caller(leader_first: bool) -> None:
    results: dict[str, Any] = {}
    async with socket_pair() as (client, server), trio.open_nursery() as nursery:

        async def call(name: str) -> None:
            results[name] = await client.call("echo", name)

        nursery.start_soon(call, "leader")
        first = await request(server)
        leader = await reading_caller(client)
        nursery.start_soon(call, "f1")
        nursery.start_soon(call, "f2")
        others = [await request(server), await request(server)]
        await trio.testing.wait_all_tasks_blocked()
        assert client._current._reading is leader  # the followers wait; the leader still reads
        order = [first, *others] if leader_first else [*others, first]
        for req in order:
            await server.send(wire.Response(req.msgid, req.params[0]))
    assert results == {"leader": "leader", "f1": "f1", "f2": "f2"}
    assert client.core.pending == {}


async def test_callers_woken_together_call_again_through_the_queue() -> None:
    # Rounds of concurrent calls, each round answered at once: once several callers
    # were woken together, none of them takes the read role for itself when it calls
    # again (that would split the round's requests in two writes and move the role
    # every round); the reader task reads. A lone caller reads for itself again.
    callers, rounds = 5, 3
    async with socket_pair() as (client, server):
        conn = client._current

        async def caller(name: int) -> None:
            for n in range(rounds):
                assert await client.call("echo", [name, n]) == [name, n]

        async with trio.open_nursery() as nursery:
            for name in range(callers):
                nursery.start_soon(caller, name)
            for n in range(rounds):
                reqs = [await request(server) for _ in range(callers)]
                await trio.testing.wait_all_tasks_blocked()
                if n:
                    assert conn._reading is conn._reader_task
                await server.send(*[wire.Response(r.msgid, r.params[0]) for r in reqs])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_echoes_one, server)
            assert await client.call("echo", "alone") == "alone"  # through the reader, once
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.call, "echo", "alone again")
            req = await request(server)
            await reading_caller(client)  # a lone caller reads for itself again
            await server.send(wire.Response(req.msgid, req.params[0]))


async def test_cancelled_while_reading_sends_cancel_and_keeps_the_msgid() -> None:
    async with socket_pair() as (client, server):
        with trio.move_on_after(0.05) as scope:
            await client.call("sleep", 10)
        assert scope.cancelled_caught
        req = await request(server)
        assert await server.next_event() == wire.Cancel(req.msgid)
        assert client.core.pending == {req.msgid: None}  # reserved until the late reply
        client.core.next_msgid = req.msgid
        async with trio.open_nursery() as nursery:
            nursery.start_soon(late_then_echo, server, req.msgid)
            assert await client.call("echo", "new") == "new"
        assert client.core.pending == {}


async def late_then_echo(server: Peer, late: int) -> None:
    req = await request(server)
    assert req.msgid != late
    await server.send(wire.Response(late, "late"), wire.Response(req.msgid, req.params[0]))


async def test_timeout_while_reading() -> None:
    async with socket_pair() as (client, server):
        with pytest.raises(trio_echo.DeadlineExceeded, match="local deadline"):
            await client.call("sleep", 10, timeout=0.05)
        req = await request(server)
        assert req.options == {"timeout_ms": 50.0}
        assert await server.next_event() == wire.Cancel(req.msgid)


async def test_connection_loss_while_a_caller_reads_fails_every_call_at_once() -> None:
    errors: list[BaseException] = []
    async with socket_pair() as (client, server), trio.open_nursery() as nursery:

        async def call() -> None:
            with pytest.raises(trio_echo.ConnectionClosed) as info:
                await client.call("sleep", 10)
            errors.append(info.value)

        nursery.start_soon(call)
        await request(server)
        await reading_caller(client)
        for _ in range(3):
            nursery.start_soon(call)
        for _ in range(3):
            await request(server)
        await server.stream.aclose()
    assert len(errors) == 4
    assert all("closed the connection" in str(e) for e in errors)
    assert len({id(e) for e in errors}) == 4  # each caller raises its own copy
    assert client.closed


async def test_aclose_while_a_caller_reads() -> None:
    async with socket_pair() as (client, server), trio.open_nursery() as nursery:

        async def call() -> None:
            with pytest.raises(trio_echo.ConnectionClosed, match="client closed"):
                await client.call("sleep", 10)

        nursery.start_soon(call)
        req = await request(server)
        await reading_caller(client)
        await client.aclose()
        assert await server.next_event() == wire.Cancel(req.msgid)


async def test_error_reply_and_notification_to_a_reading_caller() -> None:
    seen: list[tuple[str, list[Any]]] = []
    async with (
        socket_pair(on_notification=lambda m, p: seen.append((m, p))) as (client, server),
        trio.open_nursery() as nursery,
    ):

        async def answer() -> None:
            req = await request(server)
            error = wire.ErrorResponse(req.msgid, "invalid_params", "no")
            await server.send(wire.Notification("news", [1]), error)

        nursery.start_soon(answer)
        with pytest.raises(trio_echo.InvalidParams):
            await client.call("echo")
        assert seen == [("news", [1])]  # delivered before the call returned


async def test_an_idle_connection_is_still_read() -> None:
    got = trio.Event()
    seen: list[str] = []

    def on_notification(method: str, params: list[Any]) -> None:
        seen.append(method)
        got.set()

    async with socket_pair(on_notification=on_notification) as (client, server):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_echoes_one, server)
            assert await client.call("echo", 1) == 1
        # No call is made any more: the reader task takes the role back and reads.
        await server.send(wire.Notification("later", []))
        with trio.fail_after(10):
            await got.wait()
        assert seen == ["later"]
        await server.stream.aclose()
        await eventually(lambda: client.closed)  # the close is seen, with no call made


async def test_a_request_too_large_for_one_write_is_finished_by_the_writer() -> None:
    big = b"x" * (3 << 20)  # far more than a socketpair buffers
    async with socket_pair() as (client, server), trio.open_nursery() as nursery:
        nursery.start_soon(server_echoes_one, server)
        assert await client.call("echo", big) == big


async def test_many_tasks_racing_for_the_read_role() -> None:
    async with socket_pair() as (client, server), trio.open_nursery() as nursery:

        async def serve() -> None:
            while True:
                req = await request(server)
                if req.msgid % 3:
                    await trio.lowlevel.checkpoint()  # answers come in bursts and out of order
                await server.send(wire.Response(req.msgid, req.params[0]))

        nursery.start_soon(serve)

        async def caller(n: int) -> None:
            for i in range(30):
                assert await client.call("echo", [n, i]) == [n, i]
                if i % 7 == n % 7:
                    await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as callers:
            for n in range(20):
                callers.start_soon(caller, n)
        assert client.core.pending == {}
        nursery.cancel_scope.cancel()


# --- blocking ---------------------------------------------------------------------------


@contextmanager
def blocking_pair(**kwargs: Any) -> Iterator[tuple[trio_echo.BlockingClient, SyncPeer]]:
    """A blocking client over a socketpair, a fake server at the other end; both closed after."""
    a, b = socket.socketpair()
    server = SyncPeer.serving(b)
    try:
        server.send(wire.Notification("hello", [HELLO]))
        with trio_echo.BlockingClient(a, **kwargs) as client:
            yield client, server
    finally:
        a.close()
        server.close()


def requests(server: SyncPeer, n: int) -> list[wire.Request]:
    out = []
    for _ in range(n):
        event = server.next_event()
        assert isinstance(event, wire.Request), event
        out.append(event)
    return out


def wait_for(predicate: Any) -> None:
    for _ in range(1000):
        if predicate():
            return
        threading.Event().wait(0.01)
    raise AssertionError("timed out")


def test_blocking_sequential_calls_lead() -> None:
    with blocking_pair() as (client, server), ThreadPoolExecutor(1) as pool:
        for n in range(5):
            call = pool.submit(client.call, "echo", n)
            [req] = requests(server, 1)
            if n:  # the first call found the reader thread reading; the others lead
                waiter = client.core.pending[req.msgid]
                wait_for(lambda w=waiter: client._current._reading is w)  # type: ignore[misc]
            server.send(wire.Response(req.msgid, n))
            assert call.result(timeout=10) == n


@pytest.mark.parametrize("leader_first", [True, False])
def test_blocking_threads_racing_with_a_leader(leader_first: bool) -> None:
    with blocking_pair() as (client, server), ThreadPoolExecutor(4) as pool:
        warm = pool.submit(client.call, "echo", 0)  # answered by the reader thread
        [req] = requests(server, 1)
        server.send(wire.Response(req.msgid, 0))
        assert warm.result(timeout=10) == 0
        wait_for(lambda: client._current._reading is None)
        lead = pool.submit(client.call, "echo", "lead")
        [first] = requests(server, 1)
        wait_for(lambda: client._current._reading is client.core.pending.get(first.msgid))
        followers = [pool.submit(client.call, "echo", n) for n in range(3)]
        others = requests(server, 3)
        order = [first, *others] if leader_first else [*others, first]
        server.send(*(wire.Response(r.msgid, r.params[0]) for r in order))
        assert lead.result(timeout=10) == "lead"
        assert [f.result(timeout=10) for f in followers] == [0, 1, 2]
        assert client.core.pending == {}


def test_blocking_many_threads_many_calls() -> None:
    def serve() -> None:
        try:
            while True:
                req = server.next_event()
                assert isinstance(req, wire.Request)
                server.send(wire.Response(req.msgid, req.params[0]))
        except (EOFError, OSError):
            pass

    with blocking_pair() as (client, server), ThreadPoolExecutor(8) as pool:
        serving = threading.Thread(target=serve)
        serving.start()

        def worker(n: int) -> bool:
            return all(client.call("echo", [n, i]) == [n, i] for i in range(200))

        assert all(pool.map(worker, range(8)))
        assert client.core.pending == {}
        client.close()
        serving.join(10)


def test_blocking_connection_loss_while_a_caller_leads() -> None:
    with blocking_pair() as (client, server), ThreadPoolExecutor(4) as pool:
        warm = pool.submit(client.call, "echo", 0)
        [req] = requests(server, 1)
        server.send(wire.Response(req.msgid, 0))
        warm.result(timeout=10)
        wait_for(lambda: client._current._reading is None)
        calls = [pool.submit(client.call, "sleep", 10)]
        [first] = requests(server, 1)
        wait_for(lambda: client._current._reading is client.core.pending.get(first.msgid))
        calls += [pool.submit(client.call, "sleep", 10) for _ in range(3)]
        requests(server, 3)
        server.close()
        for call in calls:
            with pytest.raises(trio_echo.ConnectionClosed):
                call.result(timeout=10)
        assert client.closed


def test_blocking_close_while_a_caller_leads() -> None:
    with blocking_pair() as (client, server), ThreadPoolExecutor(1) as pool:
        warm = pool.submit(client.call, "echo", 0)
        [req] = requests(server, 1)
        server.send(wire.Response(req.msgid, 0))
        warm.result(timeout=10)
        wait_for(lambda: client._current._reading is None)
        call = pool.submit(client.call, "sleep", 10)
        [req] = requests(server, 1)
        wait_for(lambda: client._current._reading is client.core.pending.get(req.msgid))
        client.close()
        with pytest.raises(trio_echo.ConnectionClosed, match="client closed"):
            call.result(timeout=10)
        assert server.next_event() == wire.Cancel(req.msgid)


def test_blocking_notifications_go_to_the_reader_thread() -> None:
    threads: list[str] = []
    got = threading.Event()

    def on_notification(method: str, params: list[Any]) -> None:
        threads.append(threading.current_thread().name)
        got.set()

    with (
        blocking_pair(on_notification=on_notification) as (client, server),
        ThreadPoolExecutor(1) as pool,
    ):
        warm = pool.submit(client.call, "echo", 0)
        [req] = requests(server, 1)
        server.send(wire.Response(req.msgid, 0))
        warm.result(timeout=10)
        wait_for(lambda: client._current._reading is None)
        call = pool.submit(client.call, "echo", 1)
        [req] = requests(server, 1)
        wait_for(lambda: client._current._reading is client.core.pending.get(req.msgid))
        # The leader meets a notice: the reader thread runs the callback and reads on.
        server.send(wire.Notification("news", []), wire.Response(req.msgid, 1))
        assert call.result(timeout=10) == 1
        assert got.wait(10)
        # Later, idle: still read, by the reader thread.
        got.clear()
        server.send(wire.Notification("later", []))
        assert got.wait(10)
    assert len(threads) == 2 and all(t.startswith("trio_echo reader") for t in threads)
