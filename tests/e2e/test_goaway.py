"""Protocol version 2 end to end: the real clients against the real server over loopback,
through --max-connection-age and a SIGTERM, with no call lost (protocol.md §11)."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import trio

import trio_echo
from trio_echo import Server

from helpers import ServerProcess, server_thread, tcp_server
from helpers.tls import Pki


async def test_async_client_rides_max_connection_age() -> None:
    """Connections are retired under load; every call still gets its own reply."""
    async with (
        tcp_server(Server(max_connection_age=0.3, grace=5)) as (server, port),
        trio_echo.open_client("127.0.0.1", port) as client,
    ):
        ledger: dict[tuple[int, int], object] = {}

        async def caller(task: int) -> None:
            for i in range(10**6):
                if trio.current_time() > deadline:
                    return
                ledger[task, i] = await client.call("echo", [task, i])

        deadline = trio.current_time() + 1.5
        async with trio.open_nursery() as nursery:
            for task in range(8):
                nursery.start_soon(caller, task)
        assert ledger and all(v == list(k) for k, v in ledger.items())
        stats = server.stats()
        assert stats["goaways"].get("max_age", 0) >= 2
        assert stats["connections_total"] >= 3
        # Requests that crossed a goaway were answered unavailable and sent again:
        # every error the server reported is one of those.
        assert set(stats["errors"]) <= {"unavailable"}


def test_blocking_client_rides_max_connection_age() -> None:
    with (
        server_thread(max_connection_age=0.3, grace=5) as srv,
        trio_echo.connect("127.0.0.1", srv.port) as client,
        ThreadPoolExecutor(4) as pool,
    ):
        deadline = time.monotonic() + 1.5

        def caller(t: int) -> int:
            n = 0
            while time.monotonic() < deadline:
                assert client.call("echo", [t, n]) == [t, n]
                n += 1
            return n

        assert all(n > 0 for n in pool.map(caller, range(4)))
        stats = srv.run_sync(srv.server.stats)
        assert stats["goaways"].get("max_age", 0) >= 2
        assert set(stats["errors"]) <= {"unavailable"}


@pytest.mark.parametrize("client_kind", ["async", "blocking"])
def test_sigterm_lets_pending_calls_finish_and_exits_0(client_kind: str) -> None:
    """SIGTERM: goaway to the version 2 client, its pending call answered, exit 0."""
    with ServerProcess("--grace", "10") as proc:
        if client_kind == "blocking":
            with trio_echo.connect("127.0.0.1", proc.port, connect_timeout=0.5) as client:
                assert client.server_info["protocol"] == 2
                with ThreadPoolExecutor(1) as pool:
                    pending = pool.submit(client.call, "sleep", 1)
                    time.sleep(0.2)  # the call is on its way (a real delay: it is a subprocess)
                    proc.proc.send_signal(signal.SIGTERM)
                    assert pending.result(10) is None
                # The only server is gone: no new connection can be made.
                with pytest.raises(trio_echo.ConnectionClosed):
                    client.call("ping")
        else:

            async def main() -> None:
                async with trio_echo.open_client(
                    "127.0.0.1", proc.port, connect_timeout=0.5
                ) as client:
                    result: list[object] = []
                    async with trio.open_nursery() as nursery:

                        async def pending() -> None:
                            result.append(await client.call("sleep", 1))

                        nursery.start_soon(pending)
                        await trio.sleep(0.2)
                        proc.proc.send_signal(signal.SIGTERM)
                    assert result == [None]
                    with pytest.raises(trio_echo.ConnectionClosed):
                        await client.call("ping")

            trio.run(main)
        assert proc.wait(20) == 0
    log = "".join(proc.log)
    assert "draining 1 connection(s)" in log
    assert "grace period" not in log  # nothing had to be cancelled


def test_a_goaway_never_reaches_user_code_in_threads() -> None:
    """Many threads calling while the server retires their connection every 0.2 s."""
    errors: list[BaseException] = []
    with (
        server_thread(max_connection_age=0.2, grace=5) as srv,
        trio_echo.connect("127.0.0.1", srv.port) as client,
    ):

        def worker(t: int) -> None:
            try:
                for i in range(200):
                    assert client.call("echo", i) == i
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert errors == []


async def test_over_tls_a_retired_connection_closes_after_its_last_reply(pki: Pki) -> None:
    """TLS cannot be half-closed: the client closes the old connection once its calls are
    answered instead, and calls still ride through every goaway."""
    server = Server(ssl_context=pki.server_context(), max_connection_age=0.3, grace=5)
    async with (
        tcp_server(server) as (_, port),
        trio_echo.open_client(
            "127.0.0.1", port, ssl_context=pki.client_context(), server_hostname="localhost"
        ) as client,
    ):
        deadline = trio.current_time() + 1.5

        async def caller(task: int) -> None:
            n = 0
            while trio.current_time() < deadline:
                assert await client.call("echo", [task, n]) == [task, n]
                n += 1

        async with trio.open_nursery() as nursery:
            for task in range(4):
                nursery.start_soon(caller, task)
        stats = server.stats()
        assert stats["goaways"].get("max_age", 0) >= 2
        # Retired connections did not linger until their grace ran out.
        assert stats["connections_open"] <= 2


def test_blocking_client_over_tls_rides_goaways(pki: Pki) -> None:
    with (
        server_thread(ssl_context=pki.server_context(), max_connection_age=0.3, grace=5) as srv,
        trio_echo.connect(
            "127.0.0.1", srv.port, ssl_context=pki.client_context(), server_hostname="localhost"
        ) as client,
    ):
        deadline = time.monotonic() + 1.5
        n = 0
        while time.monotonic() < deadline:
            assert client.call("echo", n) == n
            n += 1
        stats = srv.run_sync(srv.server.stats)
        assert stats["goaways"].get("max_age", 0) >= 2
        assert stats["connections_open"] <= 2
