"""TLS and mutual TLS on the server: real loopback sockets, certificates from trustme."""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgpack
import pytest
import trio

from trio_echo import Server, wire
from trio_echo.server import sockio
from trio_echo.wire import Notification, Response

from helpers import Peer, Pki, ServerProcess, raw_bytes, serve_fails, tcp_server
from helpers.proxy import inet, v1, v2


class _HeaderFirst(trio.abc.Stream):
    """A client's TCP stream that sends ``header`` in the same write as its first bytes
    (the TLS ClientHello), as a balancer's send and its client's data can arrive."""

    def __init__(self, stream: trio.SocketStream, header: bytes) -> None:
        self.stream = stream
        self.header = header

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        data, self.header = self.header + bytes(data), b""
        await self.stream.send_all(data)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


async def tls_stream(
    port: int,
    ctx: ssl.SSLContext,
    server_hostname: str = "localhost",
    *,
    proxy_header: bytes = b"",
    with_hello: bool = True,
) -> trio.SSLStream[trio.abc.Stream]:
    """A handshaken TLS client; behind a balancer's ``proxy_header`` if given (in clear,
    before the handshake: in the same write as the ClientHello, or alone first)."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    transport: trio.abc.Stream = tcp
    if proxy_header and with_hello:
        transport = _HeaderFirst(tcp, proxy_header)
    elif proxy_header:
        await tcp.send_all(proxy_header)
    stream = trio.SSLStream(transport, ctx, server_hostname=server_hostname)
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


@asynccontextmanager
async def tls_peer(port: int, ctx: ssl.SSLContext) -> AsyncIterator[Peer]:
    async with await tls_stream(port, ctx) as stream:
        peer = Peer(stream)
        await peer.start()
        yield peer


async def read_until_eof(stream: trio.abc.Stream) -> bytes:
    """Everything until the server closes; a reset or TLS failure counts as the close."""
    got = b""
    with trio.fail_after(10):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return got
            if not data:
                return got
            got += data


async def test_framed_mprpc_and_raw_inside_tls(pki: Pki) -> None:
    async with tcp_server(ssl_context=pki.server_context()) as (server, port):
        ctx = pki.client_context()
        async with tls_peer(port, ctx) as peer:
            reply = await peer.call(1, "echo", b"\x00\xff secret")
            assert isinstance(reply, Response) and reply.result == b"\x00\xff secret"
        # msgpack-rpc stream mode: sniffed from the first decrypted byte.
        async with await tls_stream(port, ctx) as stream:
            await stream.send_all(msgpack.packb([0, 9, "ping", []]))
            unpacker = msgpack.Unpacker(raw=False)
            with trio.fail_after(10):
                while not (got := list(unpacker)):
                    unpacker.feed(await stream.receive_some(1024))
            assert got == [[1, 9, None, "pong"]]
        # Raw echo of 1 MiB: the bytes only come back right if the connection used the
        # SSLStream's methods rather than writing to the socket directly (sockio).
        data = raw_bytes(1 << 20)
        async with await tls_stream(port, ctx) as stream:
            got_back = b""
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.send_all, data)
                with trio.fail_after(20):
                    while len(got_back) < len(data):
                        got_back += await stream.receive_some(65536)
            assert got_back == data
        stats = server.stats()
        assert stats["connections_total"] == 3
        assert stats["tls_handshake_failures"] == 0


def test_sockio_leaves_tls_streams_to_their_methods() -> None:
    a, _ = trio.testing.memory_stream_pair()
    ctx = ssl.create_default_context()
    assert sockio.socket_fd(trio.SSLStream(a, ctx, server_hostname="x")) == -1


async def test_limits_apply_inside_tls(pki: Pki) -> None:
    async with (
        tcp_server(ssl_context=pki.server_context(), max_frame=1000) as (_, port),
        tls_peer(port, pki.client_context()) as peer,
    ):
        await peer.stream.send_all((1001).to_bytes(4, "big"))
        events = await peer.expect_close()
        notice = events[0]
        assert isinstance(notice, Notification) and notice.method == "error"
        assert notice.params[0]["code"] == "frame_too_large"


async def test_plaintext_client_on_tls_port_is_closed_and_logged_once(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_echo")
    async with tcp_server(ssl_context=pki.server_context()) as (server, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(wire.PREAMBLE + b"\x00\x00\x00\x05")
            # Nothing of ours is ever answered: the handshake fails and the server closes.
            got = await read_until_eof(stream)
        assert not got.startswith(wire.PREAMBLE)
        # The server logged it before closing; its stats never saw a connection.
        failures = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
        assert len(failures) == 1
        assert failures[0].levelno == logging.INFO
        stats = server.stats()
        assert stats["tls_handshake_failures"] == 1
        assert stats["connections_total"] == 0
        assert stats["requests_total"] == 0


async def test_stalled_handshake_is_closed_and_counts_against_max_connections(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_echo")
    server = Server(ssl_context=pki.server_context(), tls_handshake_timeout=1.0, max_connections=1)
    async with tcp_server(server) as (_, port):
        stalled = await trio.open_tcp_stream("127.0.0.1", port)
        async with stalled:
            await stalled.send_all(b"\x16\x03")  # the start of a record, then nothing
            # While it stalls it holds the only connection slot: a proper TLS client is
            # refused (accepted and closed) without reaching a handler.
            with trio.fail_after(10):
                refused = await tls_stream(port, pki.client_context())
                assert await read_until_eof(refused) == b""
                await refused.aclose()
            assert server.connections_rejected == 1
            start = trio.current_time()
            assert await read_until_eof(stalled) == b""
            assert trio.current_time() - start < 5
        logged = [r.getMessage() for r in caplog.records]
        assert any("TLS handshake failed: not finished within 1s" in m for m in logged)
        # The slot is free again.
        async with tls_peer(port, pki.client_context()) as peer:
            assert isinstance(await peer.call(1, "ping"), Response)


async def test_mutual_tls_admits_only_the_ca_s_clients(pki: Pki) -> None:
    async with tcp_server(ssl_context=pki.server_context(mutual=True)) as (server, port):
        async with tls_peer(port, pki.client_context(pki.client_cert_file)) as peer:
            reply = await peer.call(1, "echo", "trusted")
            assert isinstance(reply, Response) and reply.result == "trusted"
        for certfile in (pki.other_client_cert_file, None):
            ctx = pki.client_context(certfile)
            with trio.fail_after(10):
                try:
                    # TLS 1.3: the client may finish its half of the handshake before the
                    # server has checked its certificate; the refusal then arrives as an
                    # alert in place of the hello.
                    async with await tls_stream(port, ctx) as stream:
                        await stream.send_all(wire.PREAMBLE)
                        assert await read_until_eof(stream) == b""
                except (trio.BrokenResourceError, ssl.SSLError):
                    pass
        stats = server.stats()
        assert stats["connections_total"] == 1  # only the trusted client reached sniffing
        assert stats["requests_total"] == 1
        assert stats["tls_handshake_failures"] == 2


async def test_tls_client_on_a_plaintext_port_fails_quickly() -> None:
    """Raw echo sends the ClientHello back: the client sees a malformed handshake and stops."""
    async with tcp_server() as (server, port):
        ctx = ssl.create_default_context()
        with trio.fail_after(10):
            with pytest.raises(trio.BrokenResourceError) as info:
                await tls_stream(port, ctx)
        assert isinstance(info.value.__cause__, ssl.SSLError)
        with trio.fail_after(10):
            while server.stats()["connections_open"]:  # noqa: ASYNC110 - no event for it
                await trio.sleep(0.01)
        assert server.stats()["requests_total"] == 0


def test_openssl_s_client_gets_its_bytes_echoed(pki: Pki) -> None:
    args = ("--tls-cert", pki.cert_file, "--tls-key", pki.key_file)
    with ServerProcess(*args, ready=r"listening on \S+:(\d+) \(mode auto, TLS") as srv:
        proc = subprocess.Popen(
            [
                "openssl",
                "s_client",
                "-quiet",
                "-connect",
                f"127.0.0.1:{srv.port}",
                "-CAfile",
                pki.ca_file,
                "-verify_return_error",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"hello over tls\n")
            proc.stdin.flush()
            # -quiet keeps the connection open after stdin's EOF, so read just the echo.
            assert proc.stdout.readline() == b"hello over tls\n"
        finally:
            proc.kill()
            proc.communicate()
        assert srv.stop() == 0


def test_tls_options_are_checked_at_startup(pki: Pki, tmp_path: Path) -> None:
    code, stderr = serve_fails("--tls-cert", pki.cert_file)
    assert code == 2
    assert "--tls-cert and --tls-key go together" in stderr
    code, stderr = serve_fails("--tls-cert", str(tmp_path / "nope.pem"), "--tls-key", pki.key_file)
    assert code == 2
    assert stderr.startswith("trio-echo serve: cannot load the TLS files:")
    assert len(stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("header", "with_hello"),
    [
        (v1("TCP4", "203.0.113.7", "192.0.2.1", 41000, 7000), False),
        (v2(addresses=inet("203.0.113.7", "192.0.2.1", 41000, 7000)), True),
        (v2(command=0), True),  # LOCAL: a balancer's own check, named by the socket
    ],
)
async def test_proxy_header_then_tls_names_the_real_client(
    pki: Pki, header: bytes, with_hello: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # --proxy-protocol with TLS: a TCP-mode balancer (HAProxy send-proxy-v2) passes the
    # client's TLS through and puts the PROXY header in clear before it.
    caplog.set_level(logging.DEBUG, logger="trio_echo")
    async with tcp_server(ssl_context=pki.server_context(), proxy_protocol=True) as (server, port):
        stream = await tls_stream(
            port, pki.client_context(), proxy_header=header, with_hello=with_hello
        )
        async with stream:
            peer = Peer(stream)
            await peer.start()
            reply = await peer.call(1, "echo", "through the balancer")
            assert isinstance(reply, Response) and reply.result == "through the balancer"
            (conn,) = server._conns
            if header.startswith(b"PROXY") or header[12] & 0x0F:
                assert conn.peer == "203.0.113.7:41000"
                assert "is from 203.0.113.7:41000 (PROXY header)" in caplog.text
            else:
                assert conn.peer.startswith("127.0.0.1:")
        expected = {"proxy_rejected": 0, "tls_handshake_failures": 0, "connections_total": 1}
        assert server.stats().items() >= expected.items()


async def test_tls_without_its_proxy_header_is_refused_before_the_handshake(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_echo")
    async with tcp_server(ssl_context=pki.server_context(), proxy_protocol=True) as (server, port):
        # The ClientHello is not a PROXY header: closed, never handshaken.
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
            await tls_stream(port, pki.client_context())
        refused = [m for m in caplog.messages if "refused (--proxy-protocol)" in m]
        assert len(refused) == 1
        expected = {"proxy_rejected": 1, "tls_handshake_failures": 0, "connections_total": 0}
        assert server.stats().items() >= expected.items()


async def test_proxied_tls_client_over_max_connections_is_told_inside_tls(pki: Pki) -> None:
    header = v2(addresses=inet("203.0.113.7", "192.0.2.1", 41000, 7000))
    server = Server(ssl_context=pki.server_context(), proxy_protocol=True, max_connections=1)
    async with tcp_server(server) as (_, port):
        ctx = pki.client_context()
        async with await tls_stream(port, ctx, proxy_header=header) as held:
            first = Peer(held)
            await first.start()
            refused = await tls_stream(port, ctx, proxy_header=header)
            async with refused:
                await refused.send_all(wire.PREAMBLE)
                got = await read_until_eof(refused)
            assert b"overloaded" in got
            assert server.connections_rejected == 1
            assert isinstance(await first.call(1, "ping"), Response)


def test_cli_serves_proxy_protocol_with_tls(pki: Pki) -> None:
    args = ("--proxy-protocol", "--tls-cert", pki.cert_file, "--tls-key", pki.key_file)
    header = v1("TCP6", "2001:db8::7", "2001:db8::1", 41000, 7000)
    with ServerProcess(*args, "--log-level", "debug") as srv:
        ctx = pki.client_context()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as tcp:
            tcp.sendall(header)
            with ctx.wrap_socket(tcp, server_hostname="localhost") as tls:
                tls.sendall(wire.PREAMBLE + wire.encode_request(1, "echo", ["hi"]))
                got = b""
                while b"hi" not in got:
                    data = tls.recv(65536)
                    assert data, got
                    got += data
        assert srv.stop() == 0
    assert any("is from 2001:db8::7:41000 (PROXY header)" in line for line in srv.log), srv.log
