"""The blocking client: plain sockets and threads, no Trio needed.

Theory of operation. A :class:`BlockingClient` owns one socket and the same
sans-IO :class:`~trio_echo.client.core.ClientCore` the async client uses.
Each call registers a :class:`concurrent.futures.Future` under a fresh msgid,
sends its request under a send lock, and waits on the future. One daemon
reader thread reads the socket and completes the futures by msgid, so any
number of threads can call at once on one connection. The core's state (the
pending table, the msgid counter) is touched only under ``_lock``; the socket
is written only under ``_send_lock`` (never held together with ``_lock``, so
a slow send never stalls the reader). A caller that gives up (``timeout``, or
``KeyboardInterrupt`` in a REPL) sends ``[3, msgid]`` and keeps the msgid
reserved until the late reply arrives.
"""

from __future__ import annotations

import signal
import socket
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Any

from ..errors import ConnectionClosed
from .connect import address, connect_failed
from .core import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_RECEIVE_MAX_FRAME,
    RECEIVE_SIZE,
    ClientBase,
    ClientCore,
    NotificationHandler,
    closed_by_us,
    connect_timed_out,
    connection_lost,
    local_deadline,
    lost_before_hello,
    send_failed,
    send_interrupted,
)
from .tls_socket import TLSSocket

__all__ = ["BlockingClient", "connect", "connect_unix"]


class BlockingClient(ClientBase[Future[Any]]):
    """A thread-safe connection to a trio_echo server; calls from many threads share it.

    Get one from :func:`connect`. Use it as a context manager, or call
    :meth:`close`.
    """

    def __init__(
        self,
        sock: socket.socket | TLSSocket,
        *,
        on_notification: NotificationHandler | None = None,
        max_frame: int = DEFAULT_RECEIVE_MAX_FRAME,
    ) -> None:
        """Take over a connected socket whose server has not been spoken to yet.

        ``sock`` may be a :class:`~trio_echo.client.tls_socket.TLSSocket`
        (then a Ctrl-C during a send closes the connection, since TLS
        records cannot be sent in part and resumed).

        Performs the handshake with the socket's current timeout.

        Raises:
            ConnectionClosed: the server closed the connection before its hello.
            TimeoutError: the socket's timeout passed before the hello.
        """
        self._sock = sock
        self._core: ClientCore[Future[Any]] = ClientCore(on_notification, max_frame)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        try:
            sock.sendall(self._core.initiate())
            while not self._core.receive_hello(sock.recv(RECEIVE_SIZE)):
                pass
        except ConnectionError as exc:  # reset or broken pipe; not a timeout
            raise lost_before_hello(exc) from exc
        sock.settimeout(None)
        self._reader = threading.Thread(
            target=self._read_loop, name=f"trio_echo reader {sock.getpeername()}", daemon=True
        )
        self._reader.start()

    def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        """Call ``method`` with positional ``params``; block until its result arrives.

        Args:
            method: the method name.
            *params: its parameters (any msgpack-able values).
            timeout: seconds. Sent to the server as ``timeout_ms`` and also
                enforced here; either way the call raises DeadlineExceeded.

        Raises:
            RemoteError: the server answered with an error; the subclass names
                the code. The connection stays usable.
            DeadlineExceeded: ``timeout`` passed (the connection stays usable).
            FrameTooLarge: the request exceeds the server's ``max_frame``; it
                was not sent and the connection stays usable.
            ConnectionClosed: the connection is closed or was lost. It stays closed.
            ValueError: ``timeout`` is not a positive number.
            TypeError: a parameter cannot be encoded as msgpack.
        """
        future: Future[Any] = Future()
        with self._lock:
            msgid, data = self._core.request(method, params, timeout, future)
        try:
            self._send(data)
            return future.result(timeout)
        except TimeoutError:
            if self._give_up(msgid, future):
                assert timeout is not None  # future.result() without one never times out
                raise local_deadline(method, timeout) from None
            return future.result()  # the reply won the race
        except BaseException:
            self._give_up(msgid, future)  # e.g. KeyboardInterrupt: cancel on the server too
            raise

    def notify(self, method: str, *params: Any) -> None:
        """Send a notification: the server runs ``method`` and never replies.

        Raises:
            FrameTooLarge: the message exceeds the server's ``max_frame``.
            ConnectionClosed: the connection is closed or was lost.
            TypeError: a parameter cannot be encoded as msgpack.
        """
        with self._lock:
            data = self._core.notification(method, params)
        self._send(data)

    def close(self) -> None:
        """Close the connection; pending calls fail with :class:`ConnectionClosed`.

        The server is sent a cancel for each pending call first. Closing twice
        is fine.
        """
        with self._lock:
            waiters, cancels = self._core.close()
        for future, error in waiters:
            future.set_exception(error)
        if cancels:
            try:
                self._send(cancels)
            except ConnectionClosed:
                pass
        self._fail(closed_by_us())
        self._shutdown()
        if threading.current_thread() is not self._reader:
            self._reader.join()
        self._sock.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        sent = [0]  # bytes gone out, still known after an interrupt
        try:
            with self._send_lock:
                self._send_at_once(data, sent)
                if sent[0] < len(data):
                    self._sock.sendall(memoryview(data)[sent[0] :])
        except OSError as exc:
            self._fail(send_failed(exc))
            self._core.check_open()
            raise  # pragma: no cover - check_open raised
        except BaseException:
            if sent[0] == len(data):
                raise  # Ctrl-C after the whole message went out: the stream is intact
            # Interrupted (Ctrl-C) in sendall: the stream may end in half a frame.
            self._fail(send_interrupted())
            self._shutdown()
            raise

    def _send_at_once(self, data: bytes, sent: list[int]) -> None:
        """Send what the kernel takes without blocking, recording how much in ``sent``.

        A request usually fits at once. On the main thread Ctrl-C is held back
        for that one non-blocking call, so that an interrupt arriving just as
        the message goes out (socket.sendall checks for signals after its last
        write) cannot leave us unsure whether the message went out whole.
        """
        masked = threading.current_thread() is threading.main_thread()
        if masked:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            sent[0] = self._sock.send(data, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            pass
        finally:
            if masked:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a held Ctrl-C is raised here

    def _shutdown(self) -> None:
        """Shut the socket down both ways; this also wakes the reader thread."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already disconnected

    def _give_up(self, msgid: int, future: Future[Any]) -> bool:
        """Abandon a call whose caller stopped waiting.

        Returns False if the call's outcome was already taken from the
        pending table (so it is, or is about to be, in ``future``).
        """
        with self._lock:
            owned = self._core.pending.get(msgid) is future
            cancel = self._core.abandon(msgid, future)
        if cancel is not None:
            try:
                self._send(cancel)
            except ConnectionClosed:
                pass
        return owned

    def _read_loop(self) -> None:
        core = self._core
        lock = self._lock
        try:
            while core.error is None:
                data = self._sock.recv(RECEIVE_SIZE)
                with lock:
                    replies = core.receive(data)
                for future, result, error in replies:
                    if error is None:
                        future.set_result(result)
                    else:
                        future.set_exception(error)
                core.settle()  # notifications; an error ends the loop
        except Exception as exc:  # OSError, or a bug: either way no call may hang
            self._fail(connection_lost(exc))
        if core.error is not None:
            self._fail(core.error)

    def _fail(self, error: ConnectionClosed) -> None:
        with self._lock:
            waiters = self._core.fail(error)
        for future, final in waiters:
            future.set_exception(final)


def connect(
    host: str,
    port: int,
    *,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT_S,
    on_notification: NotificationHandler | None = None,
    max_frame: int = DEFAULT_RECEIVE_MAX_FRAME,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> BlockingClient:
    """Connect to a trio_echo server and return a :class:`BlockingClient`.

    Returns once the server's hello has arrived::

        with trio_echo.connect("127.0.0.1", 7000) as client:
            print(client.call("echo", "hi"))

    Args:
        host: the server's host name or address.
        port: the server's port.
        connect_timeout: seconds allowed for connecting, the TLS handshake
            and the hello (``None`` waits forever).
        on_notification: called as ``on_notification(method, params)`` from
            the reader thread for every server notification except ``hello``.
            It must not block or call the client; if it raises, the
            connection is closed.
        max_frame: the largest reply accepted from the server, in bytes (16 MiB
            by default). A larger one fails only its call, with
            ``FrameTooLarge``; it is skipped unread and the connection stays usable.
        ssl_context: speak TLS with this client context (load a client
            certificate into it for mutual TLS).
        server_hostname: the name the server's certificate must carry;
            ``host`` by default.

    Raises:
        ConnectFailed: the connection could not be made (refused, unreachable,
            unknown host); the message names the address. An ``OSError``.
        ConnectTimeout: ``connect_timeout`` passed (a ``ConnectFailed`` and a
            ``TimeoutError``).
        ssl.SSLError: the TLS handshake failed (a subclass of ``OSError``).
        ConnectionClosed: the server closed the connection before its hello.
    """

    def open_socket() -> socket.socket:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    return _connect(
        open_socket,
        address(host, port),
        connect_timeout,
        on_notification,
        max_frame,
        ssl_context,
        server_hostname or host,
    )


def connect_unix(
    path: str,
    *,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT_S,
    on_notification: NotificationHandler | None = None,
    max_frame: int = DEFAULT_RECEIVE_MAX_FRAME,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> BlockingClient:
    """Connect to a trio_echo server on a Unix domain socket; like :func:`connect`."""

    def open_socket() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(connect_timeout)
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return sock

    return _connect(
        open_socket, path, connect_timeout, on_notification, max_frame, ssl_context, server_hostname
    )


def _connect(
    open_socket: Callable[[], socket.socket],
    where: str,
    connect_timeout: float | None,
    on_notification: NotificationHandler | None,
    max_frame: int,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
) -> BlockingClient:
    sock: socket.socket | None = None
    try:
        try:
            sock = open_socket()
        except TimeoutError:
            raise
        except OSError as exc:
            raise connect_failed(where, exc)  # noqa: B904 - its __cause__ is the root cause
        transport: socket.socket | TLSSocket = sock
        if ssl_context is not None:
            transport = TLSSocket(sock, ssl_context, server_hostname)
        return BlockingClient(transport, on_notification=on_notification, max_frame=max_frame)
    except TimeoutError:
        if sock is not None:
            sock.close()
        raise connect_timed_out(where, connect_timeout) from None
    except BaseException:
        if sock is not None:
            sock.close()
        raise
