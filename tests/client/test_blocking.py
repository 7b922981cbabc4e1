"""The blocking client, from plain threads, against a real server in a background thread."""

from __future__ import annotations

import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import trio_echo
from trio_echo import wire
from trio_echo.client.blocking import BlockingConnection, _Waiter

from helpers import EXCEPTIONS, Gate, ServerThread, SyncPeer, closes_before_hello, server_thread


def test_call_server_info_and_close(srv: ServerThread) -> None:
    with trio_echo.connect("127.0.0.1", srv.port) as client:
        assert client.server_info == srv.server.hellos[2]
        assert client.call("echo", "x") == "x"
        assert client.call("echo", b"\x00\x01") == b"\x00\x01"
        assert client.call("ping") == "pong"
        client.notify("echo", 1)
    assert client.closed
    with pytest.raises(trio_echo.ConnectionClosed):
        client.call("ping")
    srv.settle()
    assert srv.server.notifications_total == 1


def test_eight_threads_share_one_connection(srv: ServerThread, gate: Gate) -> None:
    with trio_echo.connect("127.0.0.1", srv.port) as client, ThreadPoolExecutor(8) as pool:
        # Thread 0's call stays in flight while the other 7 threads make 700 calls.
        blocked = pool.submit(client.call, "block")
        srv.run(gate.entered.wait)

        def worker(n: int) -> bool:
            return all(client.call("echo", [n, i]) == [n, i] for i in range(100))

        assert all(pool.map(worker, range(1, 8)))
        assert not blocked.done()
        srv.run_sync(gate.open)
        assert blocked.result(timeout=10) == "opened"


def test_each_error_code_maps_to_its_exception(srv: ServerThread) -> None:
    with trio_echo.connect("127.0.0.1", srv.port) as client:
        for code, cls in EXCEPTIONS.items():
            with pytest.raises(cls) as info:
                client.call("fail", code)
            assert (info.value.code, info.value.message) == (code, f"failing with {code}")
        with pytest.raises(trio_echo.UnknownMethod):
            client.call("nope")
        assert client.call("echo", 1) == 1


def test_timeout_cancels_on_the_server(srv: ServerThread) -> None:
    with trio_echo.connect("127.0.0.1", srv.port) as client:
        with pytest.raises(trio_echo.DeadlineExceeded):
            client.call("block", timeout=0.1)
        srv.settle()
        stats = client.call("stats")
        assert stats["requests_in_flight"] == 0
        assert set(stats["errors"]) <= {"timeout", "cancelled"}
        assert client.call("echo", 2) == 2
        with pytest.raises(ValueError, match="timeout"):
            client.call("echo", 1, timeout=-1)


@pytest.mark.parametrize("reconnect", [True, False])
def test_connection_loss_fails_pending_calls(
    srv: ServerThread, gate: Gate, reconnect: bool
) -> None:
    with (
        trio_echo.connect(
            "127.0.0.1", srv.port, reconnect=reconnect, connect_timeout=0.5
        ) as client,
        ThreadPoolExecutor(4) as pool,
    ):
        calls = [pool.submit(client.call, "block") for _ in range(4)]
        srv.run(gate.entered.wait)
        srv.kill()
        for call in calls:
            with pytest.raises(trio_echo.ConnectionClosed):
                call.result(timeout=10)
        # Without reconnect the client is closed for good; with it, the next call
        # tries to connect again (and, the server being gone, gives up).
        assert client.closed is not reconnect
        with pytest.raises(trio_echo.ConnectionClosed):
            client.call("ping")


def test_ctrl_c_in_a_call_cancels_it_on_the_server(srv: ServerThread, gate: Gate) -> None:
    def interrupt_when_running() -> None:
        srv.run(gate.entered.wait)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    assert threading.current_thread() is threading.main_thread()
    with trio_echo.connect("127.0.0.1", srv.port) as client:
        interrupter = threading.Thread(target=interrupt_when_running)
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            client.call("block")
        interrupter.join()
        srv.settle()
        stats = client.call("stats")
        assert stats["requests_in_flight"] == 0 and stats["errors"] == {"cancelled": 1}
        assert client.core.pending == {}  # the late "cancelled" reply was dropped


def _ctrl_c() -> None:
    """Ctrl-C in the main thread (this one): pthread_kill raises KeyboardInterrupt itself."""
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


class _SendOnce:
    """Stands in for a connection's socket for one send (``_send``), then puts it back."""

    def __init__(self, conn: BlockingConnection) -> None:
        self.conn = conn
        self.real = conn._sock
        conn._sock = self  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def done(self) -> socket.socket:
        self.conn._sock = self.real
        return self.real  # type: ignore[return-value]


@pytest.mark.parametrize("when", ["before the send", "after the send"])
def test_ctrl_c_as_a_request_goes_out_keeps_the_connection(srv: ServerThread, when: str) -> None:
    # Ctrl-C arriving as the request is written, before the kernel took any of it or
    # after it took all of it: the stream holds no half frame, so the connection stays.
    # (reconnect is on by default: the test checks that it is the same connection.)
    class InterruptOnce(_SendOnce):
        def send(self, data: bytes, flags: int = 0) -> int:
            real = self.done()
            if when == "before the send":
                _ctrl_c()
            real.send(data, flags)
            _ctrl_c()
            raise AssertionError("not reached")

    with trio_echo.connect("127.0.0.1", srv.port) as client:
        conn = client._current
        InterruptOnce(conn)
        with pytest.raises(KeyboardInterrupt):
            client.call("echo", "first")
        assert client._current is conn and not conn.closed
        assert client.call("echo", "second") == "second"
        assert client._current is conn and not conn.closed


@pytest.mark.parametrize("where", ["after the request is made", "as the lock is released"])
def test_ctrl_c_before_the_send_leaves_no_role_or_msgid_taken(
    srv: ServerThread, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Ctrl-C that lands as a call registers (just after the core made the request,
    # before the caller stored its msgid; or as it releases the lock, holding the read
    # role): the call's msgid is given up and the role let go of, so the next call does
    # not wait forever for a reader that will never read.
    with trio_echo.connect("127.0.0.1", srv.port) as client:
        conn = client._current
        if where == "after the request is made":
            real_request = conn._core.request

            def request(*args: Any) -> Any:
                monkeypatch.setattr(conn._core, "request", real_request)  # once
                real_request(*args)
                raise KeyboardInterrupt

            monkeypatch.setattr(conn._core, "request", request)
        else:
            real_lock = conn._lock

            class InterruptOnRelease:
                def __enter__(self) -> None:
                    real_lock.acquire()

                def __exit__(self, *exc: object) -> None:
                    real_lock.release()
                    conn._lock = real_lock  # once
                    raise KeyboardInterrupt

            conn._lock = InterruptOnRelease()  # type: ignore[assignment]
        with pytest.raises(KeyboardInterrupt):
            client.call("echo", "first")
        assert not isinstance(conn._reading, _Waiter)
        # Never sent: its cancel is ignored by the server, so the msgid stays reserved.
        assert list(conn.core.pending.values()) == [None]
        # With a timeout the call waits for the reader thread (a dead leader would keep it
        # from reading); without one it leads.
        assert client.call("echo", "second", timeout=10) == "second"
        assert client.call("echo", "third") == "third"
        assert client._current is conn and not conn.closed


def test_ctrl_c_with_part_of_a_request_sent_closes_the_connection(srv: ServerThread) -> None:
    # Interrupted with part of the request written: the rest can never follow, and
    # anything sent next would be read as its remainder. The connection is given up.
    class PartThenInterrupt(_SendOnce):
        def send(self, data: bytes, flags: int = 0) -> int:
            return self.real.send(data[:3], flags)

        def sendall(self, data: bytes) -> None:
            self.done().send(bytes(data[:2]))
            _ctrl_c()

    with trio_echo.connect("127.0.0.1", srv.port, reconnect=False) as client:
        conn = client._current
        PartThenInterrupt(conn)
        with pytest.raises(KeyboardInterrupt):
            client.call("echo", "x" * 100)
        assert conn.closed
        with pytest.raises(trio_echo.ConnectionClosed, match="interrupted"):
            client.call("echo", "again")


def test_close_cancels_pending_calls_on_the_server(srv: ServerThread, gate: Gate) -> None:
    with ThreadPoolExecutor(1) as pool:
        client = trio_echo.connect("127.0.0.1", srv.port)
        call = pool.submit(client.call, "block")
        srv.run(gate.entered.wait)
        client.close()
        with pytest.raises(trio_echo.ConnectionClosed):
            call.result(timeout=10)
    srv.settle()
    assert srv.server.requests_in_flight == 0
    assert srv.server.errors == {"cancelled": 1}


def test_oversized_request_is_refused_locally() -> None:
    with (
        server_thread(max_frame=1000) as running,
        trio_echo.connect("127.0.0.1", running.port) as client,
    ):
        with pytest.raises(trio_echo.FrameTooLarge):
            client.call("echo", b"x" * 2000)
        assert client.call("echo", "ok") == "ok"


def test_connect_failures() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(OSError):
            trio_echo.connect("127.0.0.1", port)
        sock.listen()  # accepts (in the kernel) but never says hello
        with pytest.raises(TimeoutError, match="timed out"):
            trio_echo.connect("127.0.0.1", port, connect_timeout=0.2)


def test_close_before_hello() -> None:
    with closes_before_hello() as port, pytest.raises(trio_echo.ConnectionClosed, match="before"):
        trio_echo.connect("127.0.0.1", port)


def test_notifications_reach_the_callback() -> None:
    seen: list[tuple[str, list[Any]]] = []
    got = threading.Event()

    def on_notification(method: str, params: list[Any]) -> None:
        seen.append((method, params))
        got.set()

    with (
        server_thread() as running,
        trio_echo.connect("127.0.0.1", running.port, on_notification=on_notification) as c,
    ):
        c.notify("no_such_method")  # notifications never answer, even errors
        c._current._sock.sendall(b"\x00\x00\x00\x01\xc1")  # an undecodable frame
        assert got.wait(timeout=10)
        assert c.call("ping") == "pong"
    assert seen == [("error", [{"code": "malformed", "message": seen[0][1][0]["message"]}])]


def test_local_timeout_sends_cancel_and_reserves_the_msgid() -> None:
    client_sock, server_sock = socket.socketpair()
    peer = SyncPeer.serving(server_sock)
    peer.send(wire.Notification("hello", [{"protocol": 1, "max_frame": 1 << 20}]))
    with trio_echo.BlockingClient(client_sock) as client, ThreadPoolExecutor(1) as pool:
        with pytest.raises(trio_echo.DeadlineExceeded, match="local deadline"):
            client.call("sleep", 10, timeout=0.05)
        assert peer.next_event() == wire.Request(1, "sleep", [10], {"timeout_ms": 50.0})
        assert peer.next_event() == wire.Cancel(1)

        client.core.next_msgid = 1  # 1 is still reserved, so the next call gets 2
        call = pool.submit(client.call, "echo", "new")
        assert peer.next_event() == wire.Request(2, "echo", ["new"])
        peer.send(wire.Response(1, "late"), wire.Response(2, "new"))
        assert call.result(timeout=10) == "new"

        call = pool.submit(client.call, "echo", "lost")
        assert isinstance(peer.next_event(), wire.Request)
        server_sock.close()
        with pytest.raises(trio_echo.ConnectionClosed):
            call.result(timeout=10)
