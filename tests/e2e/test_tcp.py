"""End to end on loopback: netcat, bare sockets, many connections, msgpack-rpc peers, signals."""

from __future__ import annotations

import os
import socket

import msgpack
import pytest
import trio
import trio.testing

import trio_echo
from trio_echo import Server, Service, wire
from trio_echo.wire import Response

from helpers import Peer, ServerProcess, framed_peer, raw_bytes, run_python, tcp_server

NC = ["nc", "-N", "127.0.0.1"]


async def run_nc(port: int, data: bytes) -> bytes:
    result = await trio.run_process(
        [*NC, str(port)], stdin=data, capture_stdout=True, capture_stderr=True
    )
    return result.stdout  # type: ignore[no-any-return]


async def test_netcat_hello() -> None:
    async with tcp_server() as (_, port):
        with trio.fail_after(20):
            assert await run_nc(port, b"hello\n") == b"hello\n"


async def test_netcat_8_mib_with_half_close() -> None:
    data = raw_bytes(8 * 1024 * 1024)
    async with tcp_server() as (server, port):
        with trio.fail_after(60):
            got = await run_nc(port, data)
        assert len(got) == len(data)
        assert got == data
        assert server.stats()["bytes_out"] >= len(data)


async def test_fifty_netcats_at_once() -> None:
    results: dict[int, bytes] = {}
    async with tcp_server() as (_, port):

        async def one(i: int) -> None:
            results[i] = await run_nc(port, f"line {i}\n".encode() * 100)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(one, i)
    assert results == {i: f"line {i}\n".encode() * 100 for i in range(50)}


def bare_socket_client(port: int) -> list[list[object]]:
    """A framed client written with nothing but socket, struct-free slicing and msgpack."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with sock:
        sock.sendall(b"\x00TECHO\x00\x01")
        requests = [[0, 1, "sleep", [0.2]], [0, 2, "echo", ["hi"]], [0, 3, "ping", []]]
        for req in requests:
            body = msgpack.packb(req)
            sock.sendall(len(body).to_bytes(4, "big") + body)
        buf = b""
        messages: list[list[object]] = []
        while len(messages) < 4:
            chunk = sock.recv(65536)
            assert chunk, "server closed early"
            buf += chunk
            while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                n = int.from_bytes(buf[:4], "big")
                messages.append(msgpack.unpackb(buf[4 : 4 + n]))
                buf = buf[4 + n :]
        return messages


async def test_framed_peer_with_bare_sockets() -> None:
    async with tcp_server() as (_, port):
        with trio.fail_after(20):
            messages = await trio.to_thread.run_sync(bare_socket_client, port)
    assert messages[0][:2] == [2, "hello"]
    # The slow sleep is answered last, after the two quick requests.
    assert messages[1:] == [[1, 2, None, "hi"], [1, 3, None, "pong"], [1, 1, None, None]]


async def test_three_hundred_concurrent_framed_connections() -> None:
    async with tcp_server() as (server, port):
        seen: list[int] = []

        async def client(i: int) -> None:
            async with framed_peer(port) as peer:
                for k in range(5):
                    assert await peer.call(k, "echo", [i, k]) == Response(k, [i, k])
                seen.append(i)
                if len(seen) == 300:
                    all_served.set()
                # Hold the connection until all are open at once.
                await all_open.wait()

        all_served = trio.Event()
        all_open = trio.Event()
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(300):
                    nursery.start_soon(client, i)
                await all_served.wait()
                assert server.stats()["connections_open"] == 300
                all_open.set()
        assert sorted(seen) == list(range(300))


def mprpc_stream_client(port: int) -> list[object]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with sock:
        packer = msgpack.Packer()
        sock.sendall(
            packer.pack([0, 1, "echo", [b"\x00\xff"]])
            + packer.pack([2, "echo", ["notified"]])
            + packer.pack([0, 2, "nope", []])
            + packer.pack([0, 3, "echo", [{"k": [1, 2]}]])
        )
        unpacker = msgpack.Unpacker(raw=False)
        out: list[object] = []
        while len(out) < 3:
            data = sock.recv(65536)
            assert data
            unpacker.feed(data)
            out.extend(unpacker)
        return out


async def test_unframed_msgpack_rpc_stream() -> None:
    async with tcp_server() as (_, port):
        with trio.fail_after(20):
            out = await trio.to_thread.run_sync(mprpc_stream_client, port)
    assert out[0] == [1, 1, None, b"\x00\xff"]
    assert out[1][:2] == [1, 2] and out[1][2]["code"] == "unknown_method"  # type: ignore[index]
    assert out[2] == [1, 3, None, {"k": [1, 2]}]


PYNVIM_SCRIPT = """
import sys
from pynvim.msgpack_rpc import tcp_session

# pynvim opens with a nvim_set_client_info notification: unknown here, and ignored.
session = tcp_session("127.0.0.1", int(sys.argv[1]))
print(repr(session.request("echo", "from pynvim")))
print(repr(session.request("echo", [1, 2.5, None])))
session.close()
"""


def test_third_party_msgpack_rpc_client_pynvim() -> None:
    # pynvim's event loop wants a main thread of its own, so it runs in a subprocess.
    with ServerProcess() as srv:
        out = run_python(PYNVIM_SCRIPT, str(srv.port))
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["'from pynvim'", "[1, 2.5, None]"]
        assert srv.stop() == 0


async def test_serve_module_function_and_user_service() -> None:
    service = Service()

    @service.method
    async def add(a: int, b: int) -> int:
        return a + b

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio_echo.serve, service, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        async with framed_peer(port) as peer:
            assert await peer.call(1, "add", 20, 22) == Response(1, 42)
        nursery.cancel_scope.cancel()


async def test_graceful_shutdown_answers_what_was_received() -> None:
    server = Server(grace=30)
    async with tcp_server(server) as (_, port):
        async with framed_peer(port) as peer:
            await peer.request(1, "sleep", 0.5)
            await peer.request(2, "echo", "before")
            assert await peer.next_event() == Response(2, "before")
            server.shutdown()
            # The in-flight request is answered, then the connection closes.
            assert await peer.expect_close() == [Response(1, None)]
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)


async def test_grace_period_cancels_stragglers() -> None:
    server = Server(grace=0.2)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        async with framed_peer(port) as peer:
            await peer.request(1, "sleep", 30)
            assert await peer.call(2, "ping") == Response(2, "pong")  # the sleep is running
            with trio.fail_after(10):
                server.shutdown()
                assert await peer.expect_close() == []
        # serve() returned by itself once the grace period was over.
    assert server.stats()["connections_open"] == 0


async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.fail("IPv6 is expected on the CI machines")
    server = Server()
    async with trio.open_nursery() as nursery:
        try:
            listeners = await nursery.start(server.serve, "::1", 0)
        except OSError as exc:  # pragma: no cover - depends on the kernel
            pytest.fail(f"::1 not available: {exc}")
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("::1", port)
        async with stream:
            peer = Peer(stream)
            await peer.start()
            assert await peer.call(1, "ping") == Response(1, "pong")
        nursery.cancel_scope.cancel()


async def test_connection_reset_mid_request_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    import struct

    caplog.set_level("DEBUG", logger="trio_echo")
    async with tcp_server() as (server, port):
        for method, params in [("sleep", [5]), ("echo", [b"x" * 100_000])]:
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", port))
            conn = wire.Connection()
            await sock.send(conn.initiate())
            await sock.recv(65536)  # the hello: the server now runs the engine
            await sock.send(conn.send(wire.Request(1, method, params)))
            # SO_LINGER 0 turns close() into a TCP reset.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        async with framed_peer(port) as peer:
            with trio.fail_after(10):
                while server.stats()["connections_open"] != 1:  # noqa: ASYNC110 - no event
                    await trio.sleep(0.01)
            assert await peer.call(1, "ping") == Response(1, "pong")
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
    assert any("lost" in r.getMessage() for r in caplog.records if r.levelname == "DEBUG")


async def test_quiet_msgpack_rpc_connection_frees_its_decoder() -> None:
    server = Server(idle_timeout=0)  # trimming must not depend on the idle timeout
    async with tcp_server(server) as (_, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            peer = Peer(stream, wire.Mode.MPRPC)
            assert await peer.call(1, "echo", "x") == Response(1, "x")
            (conn,) = server._conns
            assert conn.session is not None
            decoder = conn.session.decoder
            assert isinstance(decoder, wire.StreamDecoder) and decoder.buffered == 0
            with trio.fail_after(10):
                while decoder.allocated:  # noqa: ASYNC110 - the reaper ticks
                    await trio.sleep(0.05)
            # The next message gets a fresh Unpacker.
            assert await peer.call(2, "echo", "y") == Response(2, "y")


async def test_replies_wait_while_the_send_buffer_is_full() -> None:
    """Replies that find the socket's buffer full go out when the peer reads,
    after what the kernel already held, whole and in order."""
    server_sock, client_sock = socket.socketpair()
    server_sock.setblocking(False)
    # Fill the server side's buffer, as if earlier replies were still unread.
    held = 0
    for size in (65536, 1):
        while True:
            try:
                held += server_sock.send(b"\0" * size)
            except BlockingIOError:
                break
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(server_sock))
    client = trio.SocketStream(trio.socket.from_stdlib_socket(client_sock))
    server = Server()
    async with trio.open_nursery() as nursery, client:
        nursery.start_soon(server.serve_stream, stream)
        payloads = [os.urandom(n) for n in (10, 3000, 3)]
        await client.send_all(
            b"".join(
                wire.encode_request(i, "echo", [p], framed=False) for i, p in enumerate(payloads)
            )
        )
        # The server reads them, finds the buffer full and waits to write.
        await trio.testing.wait_all_tasks_blocked()
        assert server.stats()["requests_total"] == len(payloads)
        buffered = bytearray()
        replies: list[object] = []
        with trio.fail_after(10):
            while len(replies) < len(payloads):
                data = await client.receive_some(65536)
                assert data, "closed before every reply came"
                buffered += data
                if len(buffered) > held:
                    unpacker = msgpack.Unpacker()
                    unpacker.feed(bytes(buffered[held:]))
                    replies = list(unpacker)
        assert not any(buffered[:held])
        assert replies == [[1, i, None, p] for i, p in enumerate(payloads)]
        nursery.cancel_scope.cancel()
