"""The async Trio client: one connection, many concurrent calls.

Theory of operation. A :class:`Client` owns one stream and one sans-IO
:class:`~trio_echo.client.core.ClientCore` (the wire.Connection, msgids and
the table of pending calls, shared with the blocking client). Two internal
tasks run per connection, never one per call:

* the **reader** is the only task that calls ``receive_some``. It feeds the
  bytes to the core and hands each response straight to the task that is
  waiting for it, found by msgid in the pending table;
* the **writer** is the only task that calls ``send_all``. Callers append
  encoded frames to ``_outbox`` and return to waiting at once, so the frames
  queued while the writer was busy leave in one ``send_all``, and a caller
  that is cancelled can queue its ``[3, msgid]`` cancel without blocking.

A waiting caller parks with ``trio.lowlevel.wait_task_rescheduled`` (no
``Event`` per call). When it is cancelled, its msgid stays in the pending
table marked abandoned, so it is never reused until the late reply arrives (and is
dropped) or the connection ends.

The internal tasks never raise: a failure is recorded on the client, every
pending call fails at once with :class:`ConnectionClosed`, and the tasks exit.
So the body of ``async with open_client(...)`` sees plain exceptions, never an
``ExceptionGroup`` made by the client's nursery.
"""

from __future__ import annotations

import functools
import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import outcome
import trio

from .._groups import background
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
    lost,
    lost_before_hello,
    send_failed,
)

__all__ = [
    "Client",
    "NotificationHandler",
    "open_client",
    "open_client_over_stream",
    "open_unix_client",
]

#: Once this many bytes wait in the outbox, new calls wait for the writer.
OUTBOX_HIGH_WATER_BYTES: Final = 1024 * 1024
#: How long a clean close waits for queued frames to leave, in seconds.
FLUSH_TIMEOUT_S: Final = 10.0
#: The same when the ``async with`` body raised or was cancelled.
ERROR_FLUSH_TIMEOUT_S: Final = 0.25


class Client(ClientBase[trio.lowlevel.Task]):
    """A connection to a trio_echo server on which any number of tasks call at once.

    Get one from :func:`open_client` or :func:`open_client_over_stream`; do
    not construct it directly.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        on_notification: NotificationHandler | None = None,
        max_frame: int = DEFAULT_RECEIVE_MAX_FRAME,
    ) -> None:
        self._stream = stream
        self._core: ClientCore[trio.lowlevel.Task] = ClientCore(on_notification, max_frame)
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        self._writing = False
        self._send_broken = False
        self._send_scope: trio.CancelScope | None = None
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._drained_lot = trio.lowlevel.ParkingLot()
        # Cancelled to stop the reader and writer; never the body's scope.
        self._tasks_scope = trio.CancelScope()

    # -- public API ------------------------------------------------------------------

    async def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        """Call ``method`` with positional ``params`` and return its result.

        Many tasks may call at once; their requests share the connection and
        are answered in any order. If the caller is cancelled, a cancel
        message is sent to the server and the call returns at once; its late
        reply is dropped.

        Args:
            method: the method name.
            *params: its parameters (any msgpack-able values).
            timeout: seconds. Sent to the server as ``timeout_ms`` and also
                enforced here; either way the call raises DeadlineExceeded.

        Raises:
            RemoteError: the server answered with an error; the subclass names
                the code (``UnknownMethod``, ``InvalidParams``, ...). The
                connection stays usable.
            DeadlineExceeded: ``timeout`` passed (the connection stays usable).
            FrameTooLarge: the request is larger than the server's
                ``max_frame``; it was not sent and the connection stays usable.
            ConnectionClosed: the connection is closed or was lost, before or
                during the call. It stays closed.
            ValueError: ``timeout`` is not a positive number.
            TypeError: a parameter cannot be encoded as msgpack.
        """
        await self._wait_for_outbox_room()
        task = trio.lowlevel.current_task()
        msgid, data = self._core.request(method, params, timeout, task)
        self._queue(data)
        if timeout is None:
            return await self._wait_for_reply(msgid, task)
        with trio.move_on_after(timeout):
            return await self._wait_for_reply(msgid, task)
        raise local_deadline(method, timeout)

    async def notify(self, method: str, *params: Any) -> None:
        """Send a notification: the server runs ``method`` and never replies.

        The message is queued for the writer task; :meth:`aclose` (and a clean
        exit from ``async with``) sends whatever is still queued first.

        Raises:
            FrameTooLarge: the message is larger than the server's ``max_frame``.
            ConnectionClosed: the connection is closed or was lost.
            TypeError: a parameter cannot be encoded as msgpack.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._wait_for_outbox_room()
        self._queue(self._core.notification(method, params))
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def aclose(self) -> None:
        """Close the connection. Pending calls fail with :class:`ConnectionClosed`.

        The server is sent a cancel for each pending call, and the frames
        already queued (notifications, cancels) go first, when the connection
        is healthy (for at most ``FLUSH_TIMEOUT_S``). Closing twice is fine.
        """
        await self._close(FLUSH_TIMEOUT_S)

    async def _close(self, flush_s: float) -> None:
        try:
            if not self.closed:
                waiters, cancels = self._core.close()
                for task, error in waiters:
                    trio.lowlevel.reschedule(task, outcome.Error(error))
                if cancels:
                    self._queue(cancels)
                with trio.move_on_after(flush_s):
                    await self._flush()
        finally:
            self._fail(closed_by_us())
            await trio.aclose_forcefully(self._stream)

    async def _flush(self) -> None:
        """Send what is queued ourselves: the writer may be gone (cancelled with the body)."""
        while self._writing and not self.closed:
            await self._drained_lot.park()
        if self._outbox and not self.closed and not self._send_broken:
            self._writing = True  # the writer must keep off the stream from now on
            await self._stream.send_all(b"".join(self._outbox))

    # -- sending -------------------------------------------------------------------------

    def _queue(self, data: bytes) -> None:
        self._outbox.append(data)
        self._outbox_bytes += len(data)
        if len(self._outbox) == 1:
            self._writer_lot.unpark()

    async def _wait_for_outbox_room(self) -> None:
        self._core.check_open()
        while self._outbox_bytes > OUTBOX_HIGH_WATER_BYTES:
            await self._drained_lot.park()
            self._core.check_open()

    async def _writer(self) -> None:
        outbox = self._outbox
        try:
            while True:
                while not outbox or self._writing:
                    await self._writer_lot.park()
                data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
                outbox.clear()
                self._outbox_bytes = 0
                self._writing = True
                # Shielded, so that cancelling the body (and with it this task)
                # never cuts a frame short; _fail() cancels a send for good.
                self._send_scope = trio.CancelScope(shield=True)
                with self._send_scope:
                    await self._stream.send_all(data)
                if self._send_scope.cancelled_caught:
                    self._send_broken = True
                    return
                self._writing = False
                self._drained_lot.unpark_all()
        except Exception as exc:  # never into the nursery: see the module docstring
            self._fail(send_failed(exc))

    # -- receiving -----------------------------------------------------------------------

    async def _wait_for_reply(self, msgid: int, task: trio.lowlevel.Task) -> Any:
        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            # Cancelled while waiting: keep the msgid reserved and tell the server.
            cancel = self._core.abandon(msgid, task)
            if cancel is not None:
                self._queue(cancel)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    async def _handshake(self) -> None:
        """Send the preamble and wait for the server's hello."""
        core = self._core
        try:
            await self._stream.send_all(core.initiate())
            while not core.receive_hello(await self._stream.receive_some(RECEIVE_SIZE)):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise lost_before_hello(exc) from exc

    async def _reader(self) -> None:
        core = self._core
        reschedule = trio.lowlevel.reschedule
        try:
            data: bytes | bytearray | None = None  # first, the events that arrived with the hello
            while True:
                for task, result, error in core.receive(data):
                    reschedule(
                        task, outcome.Value(result) if error is None else outcome.Error(error)
                    )
                finished = core.settle()
                if finished is not None:
                    self._fail(finished)
                    return
                data = await self._stream.receive_some(RECEIVE_SIZE)
        except Exception as exc:  # never into the nursery: see the module docstring
            self._fail(connection_lost(exc))

    # -- ending --------------------------------------------------------------------------

    def _fail(self, error: ConnectionClosed) -> None:
        """End the connection: fail every pending call, stop the internal tasks."""
        for task, final in self._core.fail(error):
            trio.lowlevel.reschedule(task, outcome.Error(final))
        self._outbox.clear()
        self._outbox_bytes = 0
        self._drained_lot.unpark_all()
        self._tasks_scope.cancel()
        if self._send_scope is not None:
            self._send_scope.cancel()

    async def _run_tasks(self) -> None:
        """The reader and the writer, under a scope that only :meth:`_fail` cancels."""
        with self._tasks_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader)
                nursery.start_soon(self._writer)


@asynccontextmanager
async def _run(client: Client) -> AsyncIterator[Client]:
    """Run the client's reader and writer around the ``async with`` body."""
    async with background(client._run_tasks):
        ok = False
        try:
            yield client
            ok = True
        finally:
            if ok:
                await client.aclose()
            else:
                # The body raised or was cancelled: close promptly, and do
                # not let a cancelled cleanup replace the body's exception.
                with trio.CancelScope(shield=True):
                    await client._close(ERROR_FLUSH_TIMEOUT_S)


@asynccontextmanager
async def open_client_over_stream(
    stream: trio.abc.Stream,
    *,
    on_notification: NotificationHandler | None = None,
    max_frame: int = DEFAULT_RECEIVE_MAX_FRAME,
) -> AsyncIterator[Client]:
    """Speak the framed protocol over any Trio stream (TLS, unix sockets, tests).

    Sends the preamble, waits for the server's hello, then yields a
    :class:`Client`. The client owns ``stream`` and closes it on exit. Wrap
    the ``async with`` in ``trio.fail_after`` to bound the wait for the hello.

    Args:
        stream: a connected stream; nothing may have been sent on it yet.
        on_notification: called as ``on_notification(method, params)`` from
            the reader task for every server notification except ``hello``
            (for example ``("error", [{"code": ..., "message": ...}])``). It
            must not block; if it raises, the connection is closed.
        max_frame: the largest reply accepted from the server, in bytes (16 MiB
            by default). A larger one fails only its call, with
            ``FrameTooLarge``; it is skipped unread and the connection stays usable.

    Raises:
        ConnectionClosed: the server closed the connection (or sent something
            else) before its hello; the stream is closed.
    """
    client = await _started(stream, on_notification, max_frame)
    async with _run(client):
        yield client


async def _started(
    stream: trio.abc.Stream, on_notification: NotificationHandler | None, max_frame: int
) -> Client:
    """A client past the server's hello; ``stream`` is closed if that fails."""
    client = Client(stream, on_notification=on_notification, max_frame=max_frame)
    try:
        await client._handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return client


@asynccontextmanager
async def open_client(
    host: str,
    port: int,
    *,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT_S,
    on_notification: NotificationHandler | None = None,
    max_frame: int = DEFAULT_RECEIVE_MAX_FRAME,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> AsyncIterator[Client]:
    """Connect to a trio_echo server over TCP and yield a :class:`Client`.

    Returns once the server's hello has arrived; the connection is closed
    when the ``async with`` block exits (pending calls then fail with
    :class:`ConnectionClosed`)::

        async with trio_echo.open_client("127.0.0.1", 7000) as client:
            print(await client.call("echo", "hi"))

    Args:
        host: the server's host name or address.
        port: the server's port.
        connect_timeout: seconds allowed for connecting, the TLS handshake
            and the hello (``None`` waits forever).
        on_notification: see :func:`open_client_over_stream`.
        max_frame: the largest reply accepted from the server, in bytes (16 MiB
            by default). A larger one fails only its call, with
            ``FrameTooLarge``; it is skipped unread and the connection stays usable.
        ssl_context: speak TLS with this client context (for instance
            ``ssl.create_default_context(cafile=...)``; load a client
            certificate into it for mutual TLS).
        server_hostname: the name the server's certificate must carry;
            ``host`` by default.

    Raises:
        ConnectFailed: the connection could not be made (refused, unreachable,
            unknown host); the message names the address. An ``OSError``.
        ConnectTimeout: ``connect_timeout`` passed (a ``ConnectFailed`` and a
            ``TimeoutError``).
        ssl.SSLError: the TLS handshake failed (``ssl.SSLCertVerificationError``
            for a certificate that does not verify); a subclass of ``OSError``.
        ConnectionClosed: the server closed the connection before its hello.
    """
    client = await _connected(
        functools.partial(trio.open_tcp_stream, host, port),
        address(host, port),
        connect_timeout,
        ssl_context,
        server_hostname or host,
        on_notification,
        max_frame,
    )
    async with _run(client):
        yield client


@asynccontextmanager
async def open_unix_client(
    path: str,
    *,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT_S,
    on_notification: NotificationHandler | None = None,
    max_frame: int = DEFAULT_RECEIVE_MAX_FRAME,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> AsyncIterator[Client]:
    """Connect to a trio_echo server on a Unix domain socket and yield a :class:`Client`.

    Like :func:`open_client`; with ``ssl_context``, ``server_hostname`` names
    the certificate to expect (or the context must not check host names).
    """
    client = await _connected(
        functools.partial(trio.open_unix_socket, path),
        path,
        connect_timeout,
        ssl_context,
        server_hostname,
        on_notification,
        max_frame,
    )
    async with _run(client):
        yield client


async def _connected(
    open_stream: Callable[[], Awaitable[trio.abc.Stream]],
    where: str,
    connect_timeout: float | None,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    on_notification: NotificationHandler | None,
    max_frame: int,
) -> Client:
    """Connect, do the TLS handshake if asked, and wait for the hello, within connect_timeout."""
    client: Client | None = None
    with trio.move_on_after(math.inf if connect_timeout is None else connect_timeout):
        # On a timeout, the opener, _tls and _started close what they opened.
        try:
            stream = await open_stream()
        except OSError as exc:
            raise connect_failed(where, exc)  # noqa: B904 - its __cause__ is the root cause
        if ssl_context is not None:
            stream = await _tls(stream, ssl_context, server_hostname)
        client = await _started(stream, on_notification, max_frame)
    if client is None:
        raise connect_timed_out(where, connect_timeout)
    return client


async def _tls(
    stream: trio.abc.Stream, ctx: ssl.SSLContext, server_hostname: str | None
) -> trio.SSLStream[trio.abc.Stream]:
    """``stream`` after a TLS handshake; closed, and the ``ssl.SSLError`` raised, if it fails."""
    tls = trio.SSLStream(stream, ctx, server_hostname=server_hostname)
    try:
        await tls.do_handshake()
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        if isinstance(exc.__cause__, OSError):
            raise exc.__cause__ from None
        raise lost("the connection was lost during the TLS handshake", exc) from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return tls
