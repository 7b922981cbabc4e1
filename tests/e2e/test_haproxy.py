"""deploy/haproxy.cfg: valid, its health check speaks our protocol, and a real HAProxy
in front of trio_echo servers relays clients with their real address."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest
import trio

import trio_echo
from trio_echo import wire
from trio_echo.wire import Notification

from helpers import ROOT, Pki, tcp_server
from helpers.haproxy import HAPROXY, SHIPPED, Fleet
from helpers.proxy import v2


def test_shipped_config_is_valid() -> None:
    result = subprocess.run(
        [HAPROXY, "-c", "-f", str(SHIPPED)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout


def check_bytes() -> tuple[bytes, bytes]:
    """What the shipped health check sends, and what it expects back."""
    config = SHIPPED.read_text()
    [send] = re.findall(r"^\s*tcp-check send-binary ([0-9a-f]+)$", config, re.M)
    [expect] = re.findall(r"^\s*tcp-check expect binary ([0-9a-f]+)$", config, re.M)
    return bytes.fromhex(send), bytes.fromhex(expect)


def test_health_check_is_a_framed_ping_and_expects_its_pong() -> None:
    send, expect = check_bytes()
    assert send == wire.PREAMBLE + wire.encode_request(1, "ping", [])
    assert expect == wire.encode_response(1, "pong")


async def test_health_check_bytes_against_a_server() -> None:
    """The check's exchange, behind HAProxy's LOCAL header: hello first, then the pong."""
    send, expect = check_bytes()
    async with tcp_server(proxy_protocol=True) as (_, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(v2(command=0, family=0, transport=0) + send)
            received = b""
            with trio.fail_after(10):
                while expect not in received:
                    received += await stream.receive_some(65536)
    conn = wire.Connection()
    conn.receive_data(received)
    events = list(conn.events())
    assert isinstance(events[0], Notification) and events[0].method == "hello"
    assert events[1:] == [wire.Response(1, "pong")]
    # The pattern cannot be found inside the hello, whatever the server's settings.
    assert expect not in received[: received.index(expect)]


@pytest.mark.parametrize("send_proxy", ["send-proxy-v2", "send-proxy"])
def test_clients_through_haproxy_are_balanced_and_named(tmp_path: Path, send_proxy: str) -> None:
    """HAProxy's real PROXY headers (v2 and v1) name each client's own address and port."""
    with Fleet(tmp_path, 2, "--log-level", "debug", send_proxy=send_proxy) as fleet:
        clients = [trio_echo.connect("127.0.0.1", fleet.port) for _ in range(4)]
        try:
            assert [c.call("echo", i) for i, c in enumerate(clients)] == [0, 1, 2, 3]
            pids = [c.call("stats")["pid"] for c in clients]
            client_ports = [c._current._sock.getsockname()[1] for c in clients]
        finally:
            for c in clients:
                c.close()
        # leastconn: two each.
        assert sorted(pids.count(s.proc.pid) for s in fleet.servers if s) == [2, 2]
        logs = "".join("".join(s.log) for s in fleet.servers if s)
    for port in client_ports:
        assert re.search(rf"is from 127\.0\.0\.1:{port} \(PROXY header\)", logs), (port, logs)
    # The health checks (PROXY v2 LOCAL, or v1 for send-proxy) are accepted too.
    assert "refused" not in logs


def test_tls_passes_through_haproxy_with_proxy_headers(tmp_path: Path, pki: Pki) -> None:
    """HAProxy in TCP mode passes the clients' TLS through to servers run with
    --proxy-protocol and TLS: the PROXY v2 header in clear, then the handshake with the
    server itself. Its health checks go the same way (check-ssl)."""
    tls_args = ("--tls-cert", pki.cert_file, "--tls-key", pki.key_file, "--log-level", "debug")
    check_ssl = f" check-ssl ca-file {pki.ca_file} verifyhost localhost"
    with Fleet(tmp_path, 2, *tls_args, server_options=check_ssl) as fleet:
        ctx = pki.client_context()
        clients = [
            trio_echo.connect("127.0.0.1", fleet.port, ssl_context=ctx, server_hostname="localhost")
            for _ in range(2)
        ]
        try:
            assert [c.call("echo", i) for i, c in enumerate(clients)] == [0, 1]
            client_ports = [c._current._sock.sock.getsockname()[1] for c in clients]  # type: ignore[union-attr]
        finally:
            for c in clients:
                c.close()
        logs = "".join("".join(s.log) for s in fleet.servers if s)
    for port in client_ports:
        assert re.search(rf"is from 127\.0\.0\.1:{port} \(PROXY header\)", logs), (port, logs)
    assert "refused" not in logs and "handshake failed" not in logs


def test_a_server_that_stops_is_taken_out(tmp_path: Path) -> None:
    """SIGTERM closes the server's listener: HAProxy redispatches, then marks it DOWN."""
    with Fleet(tmp_path, 2) as fleet:
        assert fleet.stop(0, signal.SIGTERM) == 0
        # Until the checks notice, a connect to s1 is refused and retried on s2.
        for _ in range(5):
            with trio_echo.connect("127.0.0.1", fleet.port) as client:
                assert client.call("stats")["pid"] == fleet.servers[1].proc.pid  # type: ignore[union-attr]
        fleet.wait_for_state(0, "DOWN")
        fleet.start(0)
        assert fleet.state(0) == "UP"


def test_readme_shows_the_checks_bytes() -> None:
    """README's byte diagram of the health check is the one the configuration uses."""
    text = (ROOT / "README.md").read_text()
    send, expect = check_bytes()
    shown = {
        word: bytes.fromhex("".join(re.findall(r"\b[0-9a-f]{2}\b", line)))
        for word in ("send", "expect")
        for line in re.findall(rf"^\s*{word}\s+((?:[0-9a-f]{{2}}\s+)+)", text, re.M)
    }
    assert shown == {"send": send, "expect": expect}
