"""The clients over TLS, mutual TLS and Unix sockets: async, blocking and the CLI."""

from __future__ import annotations

import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trio

import trio_echo
from trio_echo import Server
from trio_echo.server.listeners import open_unix_listener

from helpers import Pki, ServerProcess, server_thread, tcp_server


async def test_async_client_over_tls_and_mutual_tls(pki: Pki) -> None:
    async with tcp_server(ssl_context=pki.server_context(mutual=True)) as (server, port):
        ctx = pki.client_context(pki.client_cert_file)
        async with trio_echo.open_client(
            "127.0.0.1", port, ssl_context=ctx, server_hostname="localhost"
        ) as client:
            assert client.server_info["protocol"] == 2
            results: dict[int, object] = {}

            async def one(i: int) -> None:
                results[i] = await client.call("echo", i)

            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(one, i)
            assert results == {i: i for i in range(200)}
            with pytest.raises(trio_echo.DeadlineExceeded):
                await client.call("sleep", 5, timeout=0.1)
            assert await client.call("ping") == "pong"
        # host is the server name by default: the certificate also names 127.0.0.1.
        async with trio_echo.open_client("127.0.0.1", port, ssl_context=ctx) as client:
            assert await client.call("echo", b"\x00") == b"\x00"
        assert server.stats()["tls_handshake_failures"] == 0


async def test_async_client_refuses_a_certificate_for_another_name(pki: Pki) -> None:
    async with tcp_server(ssl_context=pki.server_context()) as (_, port):
        with pytest.raises(ssl.SSLCertVerificationError):
            async with trio_echo.open_client(
                "127.0.0.1", port, ssl_context=pki.client_context(), server_hostname="example.org"
            ):
                pass  # pragma: no cover


async def test_async_unix_client(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")
    server = Server()
    listener, file = open_unix_listener(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, [listener])
        async with trio_echo.open_unix_client(path) as client:
            assert await client.call("echo", "over unix") == "over unix"
            with pytest.raises(trio_echo.DeadlineExceeded):
                await client.call("sleep", 5, timeout=0.05)
        nursery.cancel_scope.cancel()
    file.remove()


def test_blocking_client_over_tls_shared_by_threads(pki: Pki) -> None:
    with server_thread(ssl_context=pki.server_context()) as srv:
        ctx = pki.client_context()
        with trio_echo.connect("127.0.0.1", srv.port, ssl_context=ctx) as client:
            failures: list[BaseException] = []

            def worker(t: int) -> None:
                try:
                    for i in range(100):
                        value = f"{t}-{i}" * (1 + i % 50)
                        assert client.call("echo", value) == value
                except BaseException as exc:  # pragma: no cover - reported below
                    failures.append(exc)

            threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert failures == []
            with pytest.raises(trio_echo.DeadlineExceeded):
                client.call("sleep", 5, timeout=0.1)
            big = bytes(range(256)) * 4096  # 1 MiB: many TLS records each way
            assert client.call("echo", big) == big
        assert srv.server.stats()["requests_total"] == 802


def test_blocking_client_tls_failure_is_an_ssl_error(pki: Pki) -> None:
    with server_thread(ssl_context=pki.server_context(mutual=True)) as srv:
        # No client certificate: refused by the server (TLS 1.3 may only tell at the hello).
        with pytest.raises((ssl.SSLError, trio_echo.ConnectionClosed)):
            trio_echo.connect("127.0.0.1", srv.port, ssl_context=pki.client_context())
        # An unknown CA: refused by the client.
        with pytest.raises(ssl.SSLCertVerificationError):
            trio_echo.connect("127.0.0.1", srv.port, ssl_context=ssl.create_default_context())


def test_blocking_unix_client(tmp_path: Path) -> None:
    path = str(tmp_path / "b.sock")
    with server_thread(unix=path), trio_echo.connect_unix(path) as client:
        assert client.call("echo", [1, "two"]) == [1, "two"]
        with pytest.raises(trio_echo.DeadlineExceeded):
            client.call("sleep", 5, timeout=0.05)
        assert client.call("ping") == "pong"


def trio_echo_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_echo", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_call_and_methods_over_tls_and_unix(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "cli.sock"
    args = ("--tls-cert", pki.cert_file, "--tls-key", pki.key_file, "--tls-client-ca", pki.ca_file)
    ready = r"listening on unix:\S+, 127\.0\.0\.1:(\d+) \(mode auto, TLS"
    with ServerProcess(*args, "--unix", str(path), ready=ready) as srv:
        tls = ("--tls-ca", pki.ca_file, "--tls-cert", pki.client_cert_file)
        result = trio_echo_cli("call", "--port", str(srv.port), *tls, "echo", '{"a": 1}')
        assert (result.returncode, result.stdout) == (0, '{"a": 1}\n'), result.stderr
        # Over the Unix socket, still TLS: the certificate's name is given explicitly.
        result = trio_echo_cli(
            "methods", "--unix", str(path), *tls, "--tls-server-name", "localhost"
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("echo")
        # Without a client certificate: a connection failure, one line, exit 2.
        result = trio_echo_cli("call", "--port", str(srv.port), "--tls-ca", pki.ca_file, "ping")
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1
        # Plaintext against the TLS port: the same.
        result = trio_echo_cli("call", "--port", str(srv.port), "--connect-timeout", "5", "ping")
        assert result.returncode == 2
        assert srv.stop() == 0


def test_cli_call_over_a_plain_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "plain.sock"
    with ServerProcess("--unix", str(path), port=None, ready=r"listening on unix:\S+") as srv:
        result = trio_echo_cli("call", "--unix", str(path), "echo", "hi")
        assert (result.returncode, result.stdout) == (0, '"hi"\n'), result.stderr
        assert srv.stop() == 0
