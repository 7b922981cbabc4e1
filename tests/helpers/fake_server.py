"""A scripted trio_echo server on loopback, for client tests of protocol version 2.

Each accepted connection gets its preamble checked (a version the fake does
not speak gets the ``unsupported_version`` notice, as an older server would
answer), its hello (naming the connection's index), and then a thread that
runs the test's handler. The handler drives the connection by hand through a
:class:`FakeConnection`: read requests, answer them, say ``goaway``, answer
``unavailable``, reset. Plain threads and sockets, so that Trio tests and
blocking-client tests share it.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from trio_echo import wire

from .faults import set_linger_zero
from .peers import SyncPeer

#: The handlers' time limit for one read, in seconds.
TIMEOUT_S = 10.0


class FakeConnection:
    """One accepted connection, past its hello."""

    def __init__(self, peer: SyncPeer, index: int, version: int) -> None:
        self.peer = peer
        self.index = index
        self.version = version
        self.requests: list[wire.Request] = []
        #: Set when the client half-closed or closed (the handler read EOF).
        self.eof = threading.Event()

    def next_event(self) -> wire.Event | None:
        """The next event from the client; None at EOF."""
        try:
            event = self.peer.next_event()
        except (EOFError, OSError):
            self.eof.set()
            return None
        if isinstance(event, wire.Request):
            self.requests.append(event)
        return event

    def next_request(self) -> wire.Request | None:
        """The next request (notifications and cancels are skipped); None at EOF."""
        while (event := self.next_event()) is not None:
            if isinstance(event, wire.Request):
                return event
        return None

    def send(self, *events: wire.Event) -> None:
        self.peer.send(*events)

    def reply(self, msgid: int, result: Any) -> None:
        self.send(wire.Response(msgid, result))

    def error(self, msgid: int, code: str, message: str = "") -> None:
        self.send(wire.ErrorResponse(msgid, code, message or code))

    def goaway(self, reason: str = "shutdown", grace_ms: int = 10_000) -> None:
        self.peer.sock.sendall(wire.encode_goaway(reason, grace_ms))

    def close(self) -> None:
        try:
            self.peer.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def reset(self) -> None:
        """Vanish with a TCP reset, as a crashed server would (call it from the handler)."""
        set_linger_zero(self.peer.sock)
        self.peer.sock.close()

    def serve_echo(self) -> None:
        """Answer every request with its first parameter until EOF."""
        while (request := self.next_request()) is not None:
            self.reply(request.msgid, request.params[0] if request.params else None)


Handler = Callable[[FakeConnection], None]


class FakeServer:
    """Accepts connections on a loopback port and hands each to ``handler`` in a thread."""

    def __init__(self, handler: Handler, versions: Sequence[int] = (1, 2)) -> None:
        self.handler = handler
        self.versions = tuple(versions)
        self.connections: list[FakeConnection] = []
        self.new_connection = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.port = 0
        self.listen()

    def listen(self) -> None:
        """Accept connections (again, on the same port once it was chosen)."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._start(self._accept_loop, listener)

    def stop_listening(self) -> None:
        """Refuse new connections; the open ones carry on."""
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop
            except OSError:
                pass
            self._listener.close()
            self._listener = None

    def wait_for_connections(self, n: int, timeout: float = TIMEOUT_S) -> FakeConnection:
        """Block until ``n`` connections got past their hello; return the n-th."""
        with self.new_connection:
            if not self.new_connection.wait_for(lambda: len(self.connections) >= n, timeout):
                raise TimeoutError(f"{len(self.connections)} connection(s), not {n}")
            return self.connections[n - 1]

    def close(self) -> None:
        self.stop_listening()
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(TIMEOUT_S)
        for sock in self._sockets:
            sock.close()

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return  # stop_listening()
            self._sockets.append(sock)
            self._start(self._serve, sock)

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(TIMEOUT_S)
        try:
            opening = b""
            while len(opening) < len(wire.PREAMBLE):
                data = sock.recv(len(wire.PREAMBLE) - len(opening))
                if not data:
                    return
                opening += data
        except OSError:
            return
        assert opening.startswith(wire.MAGIC), opening
        version = opening[-1]
        if version not in self.versions:
            sock.sendall(wire.encode_error(None, "unsupported_version", f"no version {version}"))
            sock.shutdown(socket.SHUT_WR)
            return
        peer = SyncPeer.serving(sock, TIMEOUT_S)
        peer.conn.receive_data(opening)  # the server-role Connection reads the version too
        with self.new_connection:
            conn = FakeConnection(peer, len(self.connections), version)
            self.connections.append(conn)
            self.new_connection.notify_all()
        hello = {"protocol": version, "server": "fake", "max_frame": 1 << 20, "index": conn.index}
        try:
            conn.send(wire.Notification("hello", [hello]))
            self.handler(conn)
        except OSError:
            pass  # the client went away, or the test reset the connection


@contextmanager
def fake_server(handler: Handler, versions: Sequence[int] = (1, 2)) -> Iterator[FakeServer]:
    server = FakeServer(handler, versions)
    try:
        yield server
    finally:
        server.close()
