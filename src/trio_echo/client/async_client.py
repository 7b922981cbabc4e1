"""The async Trio client: many concurrent calls on one connection at a time.

Theory of operation. A :class:`Connection` owns one stream and one sans-IO
:class:`~trio_echo.client.core.ClientCore` (the wire.Connection, msgids and
the table of pending calls, shared with the blocking client). Two internal
tasks run per connection, never one per call:

* the **reader** reads the stream whenever no caller does (below). It feeds
  the bytes to the core and hands each response straight to the task that is
  waiting for it, found by msgid in the pending table;
* the **writer** is the only task that calls ``send_all``. Callers append
  encoded frames to ``_outbox`` and return to waiting at once, so the frames
  queued while the writer was busy leave in one ``send_all``, and a caller
  that is cancelled can queue its ``[3, msgid]`` cancel without blocking.

The caller reads (leader/follower, as the server does). On a plain TCP or Unix
socket, a call made while no other call is pending skips both hand-offs: the
caller writes its request to the socket itself (what the kernel does not take
at once goes to the writer), takes the *read role* from the idle reader, and
reads until its own reply arrives, waking any other caller whose reply comes
first. Calls made meanwhile wait as followers, as above. When the caller
returns, the role is free; the reader takes it back only once no call has been
made for ``IDLE_S`` (or at once, if calls are still waiting), so a loop of
sequential calls never switches tasks, while an idle connection is still read
(server notices, a goaway, a close) within ``IDLE_S``. One task holds the role
at a time.

A waiting caller parks with ``trio.lowlevel.wait_task_rescheduled`` (no
``Event`` per call). When it is cancelled, its msgid stays in the pending
table marked abandoned, so it is never reused until the late reply arrives (and is
dropped) or the connection ends.

The :class:`Client` users hold stands for an address rather than a
connection: calls go to its current connection, and it makes a new one when
the server says ``goaway`` (protocol version 2) or, with ``reconnect``, when
the connection is lost. A connection told to go away takes no new call; its
writer half-closes it once the queue is empty, its pending calls finish
there, and it closes when the last one is answered. Connecting again happens
in one task at a time, spaced by the core's :class:`Backoff`; a call waits
for it at most ``connect_timeout``.

Streams (protocol version 2, protocol.md §12): :meth:`Client.stream` opens one
as a context manager, so that leaving the block early always cancels it. The
core files what the server sends on it into its
:class:`~trio_echo.client.core.StreamState` and wakes the :class:`Stream`'s
parking lot; the stream queues its credit, items and end for the writer like
any message. Credit is granted as the application takes items, never as they
arrive, so a slow consumer holds the server's producer back.

Ctrl-C: the call path is KI-protected (``trio.lowlevel.enable_ki_protection``),
so a KeyboardInterrupt reaches a call where it waits for its reply, and the
call cancels itself there as any cancelled call does, never halfway through
its bookkeeping (which would leave its msgid or the read role taken).

The internal tasks never raise: a failure is recorded on the connection,
every pending call fails at once with :class:`ConnectionClosed`, and the
tasks exit. So the body of ``async with open_client(...)`` sees plain
exceptions, never an ``ExceptionGroup`` made by the client's nursery.
"""

from __future__ import annotations

import functools
import math
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import outcome
import trio
import trio.lowlevel

from .. import wire
from .._groups import background
from ..errors import ConnectionClosed, DeadlineExceeded, RemoteError, Unavailable
from .connect import address, connect_failed
from .core import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_RECEIVE_MAX_FRAME,
    DEFAULT_STREAM_WINDOW,
    RECEIVE_SIZE,
    Attempts,
    Backoff,
    ClientBase,
    ClientCore,
    ClientFront,
    GoingAway,
    NotificationHandler,
    StreamFront,
    StreamState,
    VersionRefused,
    closed_by_us,
    connect_timed_out,
    connection_lost,
    fresh,
    lost,
    lost_before_hello,
    send_failed,
)

__all__ = [
    "Client",
    "Connection",
    "NotificationHandler",
    "Stream",
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
#: After a caller read its own reply, the reader task takes the read role back
#: only once no call has been made for this long, in seconds.
IDLE_S: Final = 0.005
_NO_REPLY: Final = object()
#: The tries of a call without a timeout, on its first try (never changed there).
_UNTIMED: Final = Attempts("", None, 0.0)

#: Opens one connection offering a protocol version, within a timeout in seconds.
Dial = Callable[[int, float | None], Awaitable["Connection"]]


class _Result(outcome.Outcome[Any]):
    """A reply's result, for ``trio.lowlevel.reschedule``: an :class:`outcome.Value`
    made in a fraction of its time. (``outcome.Value`` is a frozen attrs class: making
    and unwrapping one took about a tenth of a call's time with 100 tasks calling.)
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value
        self._unwrapped = False

    def unwrap(self) -> Any:
        if self._unwrapped:
            raise outcome.AlreadyUsedError
        self._unwrapped = True
        return self.value

    def send(self, gen: Any) -> Any:  # the rest of the Outcome interface, as Value's
        return gen.send(self.unwrap())

    async def asend(self, agen: Any) -> Any:
        return await agen.asend(self.unwrap())


class Connection(ClientBase[trio.lowlevel.Task]):
    """One connection to a trio_echo server, on which any number of tasks call at once.

    The :class:`Client` makes and replaces these; do not construct one directly.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        on_notification: NotificationHandler | None = None,
        max_frame: int = DEFAULT_RECEIVE_MAX_FRAME,
        version: int = wire.PROTOCOL_VERSION,
    ) -> None:
        self._stream = stream
        self._core: ClientCore[trio.lowlevel.Task] = ClientCore(on_notification, max_frame, version)
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        self._writing = False
        self._send_broken = False
        self._send_scope: trio.CancelScope | None = None
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._drained_lot = trio.lowlevel.ParkingLot()
        # Cancelled to stop the reader and writer; never the body's scope.
        self._tasks_scope = trio.CancelScope()
        # Set once the server said goaway: the writer half-closes when idle.
        self._retiring = False
        # The caller-reads path (module docstring): the socket's descriptor (-1: no such
        # path, the reader alone reads), the task holding the read role, the reader task,
        # the scope a caller cancels to take the role from it, and whether a call read
        # its own reply since the reader last looked.
        self._fd = _socket_fd(stream)
        self._reading: trio.lowlevel.Task | None = None
        self._reader_task: trio.lowlevel.Task | None = None
        self._read_scope = trio.CancelScope()
        self._reader_lot = trio.lowlevel.ParkingLot()
        self._called = False
        # Several callers were woken at once and have not all called again yet (the
        # reader clears it once it waited for the socket, after they ran). Meanwhile a
        # new call takes the queue even if nothing is pending: had the first of them
        # written and read for itself, each round of concurrent calls would be split
        # in two writes, and the read role would change hands every round.
        self._crowd = False

    # -- calls -----------------------------------------------------------------------

    @trio.lowlevel.enable_ki_protection
    def call(
        self, method: str, params: tuple[Any, ...], timeout: float | None, attempts: Attempts
    ) -> Awaitable[Any]:
        """One try of a call on this connection (see :meth:`Client.call`): await the result.

        A plain function returning what to await, not a coroutine: a call that
        waits for its reply then sits one frame less deep, and every wake-up
        passes through each frame (with 100 tasks calling, that is most of
        a call's cost above Trio's own).

        Raises:
            GoingAway: the server said goaway first; the request was not sent.
        """
        core = self._core
        if (
            not core.pending
            and not self._crowd
            and self._fd >= 0
            and not self._outbox
            and not self._writing
        ):
            return self._call_reading(method, params, timeout, attempts)
        if self._outbox_bytes > OUTBOX_HIGH_WATER_BYTES:
            return self._call_when_room(method, params, timeout, attempts)
        task = trio.lowlevel.current_task()
        msgid, data = core.request(method, params, timeout, task)
        outbox = self._outbox  # _queue(data), inlined: this runs per call
        outbox.append(data)
        self._outbox_bytes += len(data)
        if len(outbox) == 1:
            self._writer_lot.unpark()
        if self._reading is None:
            self._reader_lot.unpark()  # someone must read the reply
        # A partial, not a closure: a closure's variables would be cells for the whole
        # of this function, on every call, the caller-reads path's too.
        abort = functools.partial(self._abort_waiting, msgid, task)
        if timeout is None:  # awaited at once by Client.call, the only caller
            return trio.lowlevel.wait_task_rescheduled(abort)  # noqa: ASYNC105
        return self._wait_for_reply(abort, timeout, attempts)

    def _abort_waiting(
        self, msgid: int, task: trio.lowlevel.Task, _: trio.lowlevel.RaiseCancelT
    ) -> trio.lowlevel.Abort:
        """A waiting caller was cancelled: keep its msgid reserved and tell the server."""
        cancel = self._core.abandon(msgid, task)
        if cancel is not None:
            self._queue(cancel)
        return trio.lowlevel.Abort.SUCCEEDED

    @trio.lowlevel.enable_ki_protection
    async def _wait_for_reply(
        self, abort: Callable[[trio.lowlevel.RaiseCancelT], trio.lowlevel.Abort],
        timeout: float, attempts: Attempts,
    ) -> Any:  # fmt: skip
        with trio.move_on_after(timeout):
            return await trio.lowlevel.wait_task_rescheduled(abort)
        raise attempts.expired()

    @trio.lowlevel.enable_ki_protection
    async def _call_when_room(
        self, method: str, params: tuple[Any, ...], timeout: float | None, attempts: Attempts
    ) -> Any:
        await self._wait_for_outbox_room()
        return await self.call(method, params, timeout, attempts)

    def open_stream(
        self,
        method: str,
        params: tuple[Any, ...],
        kind: str,
        window: int,
        timeout: float | None,
        deadline: float,
    ) -> Stream:
        """Send a stream's request (see :meth:`Client.stream`)."""
        lot = trio.lowlevel.ParkingLot()
        state, data = self._core.open_stream(method, params, kind, window, timeout, lot.unpark_all)
        self._queue(data)
        if self._reading is None:
            self._reader_lot.unpark()  # someone must read what comes back
        return Stream(self, state, lot, deadline, timeout)

    async def notify(self, method: str, params: tuple[Any, ...]) -> None:
        """Queue a notification for the writer (see :meth:`Client.notify`)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._wait_for_outbox_room()
        self._queue(self._core.notification(method, params))
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def _close(self, flush_s: float) -> None:
        try:
            if not self.closed:
                waiters, cancels = self._core.close()
                for task, error in waiters:
                    self._wake(task, outcome.Error(error))
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
                    if self._retiring and not outbox and not self._writing:
                        await self._half_close()
                        return
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

    async def _half_close(self) -> None:
        """After a goaway, with everything owed written: send EOF (protocol.md §11.4).

        A stream that cannot half-close (TLS) stays open until the reader
        closes it with the last reply.
        """
        if not isinstance(self._stream, trio.abc.HalfCloseableStream):
            return
        self._core.half_closed = True  # no cancel can follow the EOF
        with trio.CancelScope(shield=True):
            await self._stream.send_eof()

    def _retire(self) -> None:
        """The server said goaway: no new calls here; the writer half-closes when idle."""
        self._retiring = True
        self._writer_lot.unpark()

    # -- the caller reads ----------------------------------------------------------------

    @trio.lowlevel.enable_ki_protection
    async def _call_reading(
        self, method: str, params: tuple[Any, ...], timeout: float | None, attempts: Attempts
    ) -> Any:
        """A call made while no other is pending: write it, read its reply, in this task."""
        core = self._core
        task = trio.lowlevel.current_task()
        msgid, data = core.request(method, params, timeout, task)
        # Take the read role. The reader holds it only while idle, waiting in its scope.
        if self._reading is not None:
            self._read_scope.cancel()
        self._reading = task
        self._called = True
        try:
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._fail(send_failed(_broken(exc)))
                raise fresh(self._core.error or send_failed(exc)) from None
            if sent < len(data):
                self._queue(data[sent:])  # the writer sends the rest, before anything else
            if timeout is None:
                return await self._read_own_reply(msgid, task)
            with trio.move_on_after(timeout):
                return await self._read_own_reply(msgid, task)
            raise attempts.expired()
        finally:
            if self._reading is task:
                self._reading = None
                if core.pending:
                    self._reader_lot.unpark()  # others wait for replies: the reader takes over

    @trio.lowlevel.enable_ki_protection
    async def _read_own_reply(self, msgid: int, task: trio.lowlevel.Task) -> Any:
        """Read until the reply to ``msgid`` arrives, waking the callers of the others."""
        core = self._core
        fd = self._fd
        try:
            while True:
                await trio.lowlevel.wait_readable(fd)  # the call's checkpoint, every time
                if core.error is not None:
                    raise fresh(core.error)  # failed meanwhile, by another task
                try:
                    data = os.read(fd, RECEIVE_SIZE)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._fail(connection_lost(_broken(exc)))
                    raise fresh(core.error or connection_lost(exc)) from None
                replies = core.receive(data)
                if (
                    len(replies) == 1
                    and replies[0][0] is task
                    and not core.notifications
                    and core.error is None
                    and core.goaway is None
                ):
                    result, error = replies[0][1], replies[0][2]  # the usual case
                else:
                    result, error = self._deliver(replies, task)
                    if result is _NO_REPLY:
                        if core.pending.get(msgid) is not task:  # failed, or given up by aclose()
                            raise fresh(core.error or closed_by_us())
                        continue
                if error is not None:
                    raise error
                return result
        except trio.ClosedResourceError:
            # _fail() woke us (notify_closing) as it failed every call.
            raise fresh(core.error or closed_by_us()) from None
        except BaseException:
            # Cancelled (or the time ran out): keep the msgid reserved and tell the server.
            cancel = core.abandon(msgid, task)
            if cancel is not None:
                self._queue(cancel)
            raise

    def _deliver(
        self, replies: list[tuple[trio.lowlevel.Task, Any, RemoteError | None]], me: Any
    ) -> tuple[Any, RemoteError | None]:
        """Wake the callers of ``replies`` but ``me``, settle the core; return me's outcome.

        The outcome is ``(_NO_REPLY, None)`` if ``me``'s reply is not among them.
        """
        mine: tuple[Any, RemoteError | None] = (_NO_REPLY, None)
        for waiter, result, error in replies:
            if waiter is me:
                mine = (result, error)
            else:
                self._crowd = True  # another caller, woken: calls are concurrent
                trio.lowlevel.reschedule(
                    waiter, _Result(result) if error is None else outcome.Error(error)
                )
        core = self._core
        if core.notifications or core.error is not None or core.goaway is not None:
            self._settled()  # as the reader would
        return mine

    # -- receiving -----------------------------------------------------------------------

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
        me = self._reader_task = trio.lowlevel.current_task()
        try:
            data: bytes | bytearray | None = None  # first, the events that arrived with the hello
            while True:
                replies = core.receive(data)
                if len(replies) > 1:
                    self._crowd = True  # they will call again together (see __init__)
                for task, result, error in replies:
                    reschedule(task, _Result(result) if error is None else outcome.Error(error))
                if self._settled():
                    return
                if self._fd < 0:
                    data = await self._stream.receive_some(RECEIVE_SIZE)
                    continue
                if self._reading is not me:
                    await self._take_read_role()
                    self._reading = me
                data = None  # stays None if a caller takes the role (cancelling the scope)
                with trio.CancelScope() as self._read_scope:
                    data = await self._read_while_holding(me)
        except Exception as exc:  # never into the nursery: see the module docstring
            self._fail(connection_lost(_broken(exc) if isinstance(exc, OSError) else exc))

    def _settled(self) -> bool:
        """After a read: deliver notices, act on the end or a goaway; True once it is over."""
        core = self._core
        finished = core.settle()
        if finished is not None:
            self._fail(finished)
            return True
        if core.goaway is not None:
            if not self._retiring:
                self._retire()
            if not core.has_live_calls():
                # Everything asked here is answered: done with it.
                self._fail(core.closed_after_goaway())
                return True
        return False

    async def _take_read_role(self) -> None:
        """Wait until the read role is free and the reader should read (module docstring)."""
        while True:
            if self._reading is None:
                if self._core.pending or not self._called:
                    return
                self._called = False  # a caller read its own reply lately: let it go on
            with trio.move_on_after(IDLE_S):
                await self._reader_lot.park()

    async def _read_while_holding(self, me: trio.lowlevel.Task) -> bytes | None:
        """The next read, or None once a caller took the read role (cancelling our scope)."""
        while self._reading is me:
            try:
                return os.read(self._fd, RECEIVE_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._fd)
                self._crowd = False  # the callers woken before the wait have run
        return None

    # -- ending --------------------------------------------------------------------------

    def _wake(self, task: trio.lowlevel.Task, result: outcome.Outcome[Any]) -> None:
        """Wake a waiting caller with ``result``; the one reading its own reply, differently.

        That caller waits in ``wait_readable``, not for a reschedule: it is
        woken with ``ClosedResourceError`` (the stream is closed next) and
        raises the connection's error itself; if it is running, it sees it.
        """
        if task is not self._reading:
            trio.lowlevel.reschedule(task, result)
        elif task is not trio.lowlevel.current_task():
            trio.lowlevel.notify_closing(self._fd)

    def _fail(self, error: ConnectionClosed) -> None:
        """End the connection: fail every pending call, stop the internal tasks."""
        for task, final in self._core.fail(error):
            self._wake(task, outcome.Error(final))
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
        # Ended (lost, or done after a goaway): let the stream go now. (When an
        # outer scope cancels these tasks, Cancelled skips this: _close() may
        # still have cancels to send.)
        await trio.aclose_forcefully(self._stream)


class Stream(StreamFront):
    """One open stream of a :class:`Client` (protocol version 2), from :meth:`Client.stream`.

    Receive the server's items with ``async for item in stream`` (or
    :meth:`receive`); send items with :meth:`send` and finish sending with
    :meth:`end`; :meth:`finish` does both ends of the job and returns the
    result. The client grants the server credit as items are taken here, so
    at most ``window`` items wait in memory for a consumer that is slow.
    """

    def __init__(
        self,
        conn: Connection,
        state: StreamState,
        lot: trio.lowlevel.ParkingLot,
        deadline: float,
        timeout: float | None,
    ) -> None:
        self._conn = conn
        self._state = state
        self._lot = lot
        self._deadline = deadline
        self._timeout = timeout

    async def receive(self) -> Any:
        """The next item the server sent, waiting for it if need be.

        Raises:
            trio.EndOfChannel: the stream ended successfully (then see :attr:`result`).
            RemoteError: it ended with an error (``DeadlineExceeded`` for ``timeout``).
            ConnectionClosed: the connection was lost.
            TypeError: a client stream, on which the server sends no items.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        state = self._state
        if not state.receives:
            raise TypeError(f"{state.method}: a client stream receives no items")
        while not state.buffer:
            if state.done:
                if state.error is not None:
                    raise state.error
                raise trio.EndOfChannel
            await self._wait()
        item, credit = self._conn._core.stream_take(state)
        if credit is not None:
            self._conn._queue(credit)
        return item

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def send(self, item: Any) -> None:
        """Send one item, once the server has granted a credit for it (its first grant
        is its go-ahead).

        Raises:
            RemoteError: the stream ended with an error before the item could go.
            ConnectionClosed: the connection was lost, or the stream is over.
            RuntimeError: after :meth:`end`.
            TypeError: a server stream (the client sends no items), or an item
                that cannot be encoded as msgpack.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        state = self._state
        if not state.sends:
            raise TypeError(f"{state.method}: a server stream takes no items from the client")
        if state.ended:
            raise RuntimeError(f"{state.method}: send() after end()")
        while not state.send_credit:
            if state.done:
                if state.error is not None:
                    raise state.error
                raise ConnectionClosed(f"{state.method}: the stream is over")
            await self._wait()
        conn = self._conn
        if conn._outbox_bytes > OUTBOX_HIGH_WATER_BYTES:
            await conn._wait_for_outbox_room()
        conn._queue(conn._core.stream_items(state, [item]))

    async def end(self, error: RemoteError | None = None) -> None:
        """Tell the server the client has sent its last item.

        ``error`` (a :class:`RemoteError`, with its code, message and data) says
        instead that the client's producer failed: the handler sees it as an
        exception, never as a clean end. Ending twice is fine.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        data = self._conn._core.stream_end(self._state, error)
        if data is not None:
            self._conn._queue(data)

    async def finish(self) -> Any:
        """End the client's side (if it sends), let the server's remaining items go
        (granting credit for them), and return the result when the response comes."""
        state = self._state
        if state.sends and not state.ended:
            await self.end()
        while not state.done or state.buffer:
            if state.buffer:
                await self.receive()  # discarded: the caller asked for the result
            else:
                await self._wait()
        await trio.lowlevel.checkpoint()
        return self.result

    async def _wait(self) -> None:
        """Park until the core files something for this stream, within the deadline."""
        with trio.move_on_at(self._deadline):
            await self._lot.park()
            return
        self._local_deadline()

    def _local_deadline(self) -> None:
        state = self._state
        error = DeadlineExceeded(
            f"{state.method}: the stream did not end within {self._timeout:g} s (local deadline)"
        )
        self._abandon()
        state.error = error
        raise error

    def _abandon(self) -> None:
        """Leave the stream: cancel it on the server (if it is not over)."""
        conn = self._conn
        cancel = conn._core.stream_cancel(self._state)
        if cancel is not None and not conn.closed:
            conn._queue(cancel)


def _socket_fd(stream: trio.abc.Stream) -> int:
    """The descriptor a caller may read and write directly, or -1 (TLS, memory streams...)."""
    if os.name != "posix" or type(stream) is not trio.SocketStream:
        return -1
    return stream.socket.fileno()


def _broken(exc: OSError) -> trio.BrokenResourceError:
    """``exc`` as SocketStream reports it, so that errors read the same on either path."""
    error = trio.BrokenResourceError(f"socket connection broken: {exc}")
    error.__cause__ = exc
    return error


class _Connecting:
    """One round of connection attempts, shared by every call that waits for it."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: ConnectionClosed | None = None


class Client(ClientFront[trio.lowlevel.Task]):
    """A client of one trio_echo server address; any number of tasks call at once.

    Calls share its current connection. When the server says ``goaway``
    (protocol version 2: it is shutting down, or the connection is old) new
    calls go to a new connection while the pending ones finish on the old
    one; a call the server answered ``unavailable`` is sent again there. When
    the connection is lost, the calls pending on it fail with
    :class:`ConnectionClosed`, and the next call connects again (unless
    ``reconnect=False``). Get one from :func:`open_client`,
    :func:`open_unix_client` or :func:`open_client_over_stream`; do not
    construct it directly.
    """

    _current: Connection

    def __init__(
        self,
        first: Connection,
        dial: Dial | None,
        where: str,
        *,
        reconnect: bool,
        connect_timeout: float | None,
    ) -> None:
        # Set by _run, the client's background task, which runs every connection's tasks.
        self._nursery: trio.Nursery | None = None
        self._dial = dial
        self._where = where
        self._reconnect = reconnect and dial is not None
        self._connect_timeout = math.inf if connect_timeout is None else connect_timeout
        self._connections: set[Connection] = set()
        self._connecting: _Connecting | None = None
        self._backoff = Backoff()
        self._closed = False
        self._current = first
        self._connections.add(first)

    # -- public API ------------------------------------------------------------------

    @trio.lowlevel.enable_ki_protection
    async def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        """Call ``method`` with positional ``params`` and return its result.

        Many tasks may call at once; their requests share the connection and
        are answered in any order. If the caller is cancelled, a cancel
        message is sent to the server and the call returns at once; its late
        reply is dropped. A call the server answered ``unavailable`` (it was
        going away and did not run it) is sent again on a new connection, at
        most ``UNAVAILABLE_RETRIES`` times, within ``timeout``.

        Args:
            method: the method name.
            *params: its parameters (any msgpack-able values).
            timeout: seconds for the whole call, retries included. Sent to the
                server as ``timeout_ms`` (what is left of it) and also
                enforced here; either way the call raises DeadlineExceeded.

        Raises:
            RemoteError: the server answered with an error; the subclass names
                the code (``UnknownMethod``, ``InvalidParams``, ...). The
                connection stays usable.
            Unavailable: answered ``unavailable`` on every try.
            DeadlineExceeded: ``timeout`` passed (the connection stays usable).
            FrameTooLarge: the request is larger than the server's
                ``max_frame``; it was not sent and the connection stays usable.
            ConnectionClosed: the connection was lost during the call (the
                server may or may not have run it); or no connection could be
                made within ``connect_timeout``; or the client is closed.
            ValueError: ``timeout`` is not a positive number.
            TypeError: a parameter cannot be encoded as msgpack.
        """
        conn = self._current
        core = conn._core
        if timeout is None and core.error is None and core.goaway is None and not self._closed:
            # The usual case, without the bookkeeping of tries (made if it goes again).
            try:
                return await conn.call(method, params, None, _UNTIMED)
            except (GoingAway, Unavailable) as exc:
                attempts = Attempts(method, timeout, trio.current_time())
                attempts.tries = 1
                if not attempts.again(exc, self._reconnect):
                    raise
        else:
            attempts = Attempts(method, timeout, trio.current_time())
        while True:
            conn = await self._connection(attempts)
            try:
                return await conn.call(
                    method, params, attempts.remaining(trio.current_time()), attempts
                )
            except (GoingAway, Unavailable) as exc:
                if not attempts.again(exc, self._reconnect):
                    raise

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        *params: Any,
        kind: str = "server",
        window: int = DEFAULT_STREAM_WINDOW,
        timeout: float | None = None,
    ) -> AsyncIterator[Stream]:
        """Open a stream (protocol version 2): ``async with client.stream(...) as s``.

        ``kind`` is the method's: ``"server"`` (``async for item in s``),
        ``"client"`` (``await s.send(item)``, then ``await s.finish()`` for the
        result) or ``"bidi"`` (both). Leaving the block before the stream's
        end cancels it on the server. ``window`` is the credit the client
        grants the server: at most that many items wait here unconsumed, and
        half of it is granted again each time half was taken. ``timeout`` (in
        seconds) covers the whole call, as ``timeout_ms`` on the server and here.

        Raises:
            UnsupportedVersion: the server speaks only protocol version 1.
            ConnectionClosed, ValueError, FrameTooLarge: as for :meth:`call`.
        """
        attempts = Attempts(method, timeout, trio.current_time())
        conn = await self._connection(attempts)
        stream = conn.open_stream(method, params, kind, window, timeout, attempts.deadline)
        try:
            yield stream
        finally:
            if not stream.done:
                stream._abandon()

    async def notify(self, method: str, *params: Any) -> None:
        """Send a notification: the server runs ``method`` and never replies.

        The message is queued for the writer task; :meth:`aclose` (and a clean
        exit from ``async with``) sends whatever is still queued first.

        Raises:
            FrameTooLarge: the message is larger than the server's ``max_frame``.
            ConnectionClosed: no connection (closed, or lost and not remade).
            TypeError: a parameter cannot be encoded as msgpack.
        """
        attempts = Attempts(method, None, trio.current_time())
        while True:
            conn = await self._connection(attempts)
            try:
                return await conn.notify(method, params)
            except GoingAway:
                if not self._reconnect:
                    raise

    async def aclose(self) -> None:
        """Close every connection. Pending calls fail with :class:`ConnectionClosed`.

        The server is sent a cancel for each pending call, and the frames
        already queued (notifications, cancels) go first, when the connection
        is healthy (for at most ``FLUSH_TIMEOUT_S``). Closing twice is fine.
        """
        await self._close(FLUSH_TIMEOUT_S)

    # -- connections -----------------------------------------------------------------

    async def _close(self, flush_s: float) -> None:
        self._closed = True
        for conn in [self._current, *self._connections]:
            await conn._close(flush_s)

    async def _run(self) -> None:
        """The client's background task: the connections' tasks and the rounds of
        connection attempts run in its nursery. It never raises."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._run_connection, self._current)
            await trio.sleep_forever()

    def _install(self, conn: Connection) -> None:
        """Make ``conn`` the current connection and run its tasks."""
        assert self._nursery is not None
        self._current = conn
        self._connections.add(conn)
        self._nursery.start_soon(self._run_connection, conn)

    async def _run_connection(self, conn: Connection) -> None:
        try:
            await conn._run_tasks()
        finally:
            self._connections.discard(conn)

    async def _connection(self, attempts: Attempts) -> Connection:
        """The connection for a new call: the current one, or a new one.

        A call waits for a new connection at most ``connect_timeout`` (and
        never past its own deadline), through as many rounds of attempts as
        fit in that time.

        Raises:
            ConnectionClosed: the client is closed, or may not reconnect
                (GoingAway if the server said goaway), or no connection was
                made within ``connect_timeout``.
            DeadlineExceeded: the call's timeout passed first.
        """
        give_up_at = math.inf
        error: ConnectionClosed | None = None
        while True:
            if self._closed:
                raise closed_by_us()
            conn = self._current
            if conn.core.usable:
                return conn
            if not self._reconnect:
                conn.core.check_usable()
            if conn.core.goaway is None:
                self._backoff.lost()  # lost, not moved away from: do not come back at once
            now = trio.current_time()
            if give_up_at == math.inf:
                give_up_at = now + self._connect_timeout
            if now >= attempts.deadline:
                raise attempts.expired()
            if now >= give_up_at:
                raise (
                    fresh(error)
                    if error is not None
                    else ConnectionClosed(
                        f"no connection to {self._where} within {self._connect_timeout:g} s"
                    )
                )
            error = await self._connected(min(give_up_at, attempts.deadline)) or error

    async def _connected(self, until: float) -> ConnectionClosed | None:
        """Wait (until ``until`` at most) for a round of connection attempts, starting
        one if none runs; the round's error if it failed."""
        while self._nursery is None:  # _run has not started yet
            await trio.lowlevel.checkpoint()
        if self._connecting is None:
            self._connecting = _Connecting()
            self._nursery.start_soon(self._connect, self._connecting)
        connecting = self._connecting
        with trio.move_on_at(until):
            await connecting.done.wait()
        return connecting.error

    async def _connect(self, connecting: _Connecting) -> None:
        """Connect again, spaced by the backoff, for at most ``connect_timeout``.

        Runs in the client's nursery, so a caller that gives up does not stop
        it; it never raises (the error is for the waiting calls).
        """
        assert self._dial is not None
        give_up_at = trio.current_time() + self._connect_timeout
        try:
            while True:
                await trio.sleep(min(self._backoff.delay(), give_up_at - trio.current_time()))
                try:
                    conn = await _offer_versions(
                        self._dial, max(give_up_at - trio.current_time(), 0.001)
                    )
                except Exception as exc:  # OSError, ConnectionClosed, ...: try again
                    self._backoff.failed()
                    if self._closed or trio.current_time() >= give_up_at:
                        connecting.error = lost(f"cannot connect to {self._where}", exc)
                        return
                    continue
                self._backoff.succeeded()
                if self._closed:
                    await conn._close(0)
                else:
                    self._install(conn)
                return
        finally:
            self._connecting = None
            connecting.done.set()


async def _offer_versions(dial: Dial, timeout: float | None) -> Connection:
    """A connection of the newest protocol version the server speaks (protocol.md §11.1)."""
    try:
        return await dial(wire.LATEST_VERSION, timeout)
    except VersionRefused:
        return await dial(wire.PROTOCOL_VERSION, timeout)


@asynccontextmanager
async def _run(
    first: Connection,
    dial: Dial | None,
    where: str,
    *,
    reconnect: bool = False,
    connect_timeout: float | None = None,
) -> AsyncIterator[Client]:
    """Run a client (its connections' tasks, its reconnections) around the ``async with`` body."""
    client = Client(first, dial, where, reconnect=reconnect, connect_timeout=connect_timeout)
    async with background(client._run):
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
    version: int = wire.LATEST_VERSION,
) -> AsyncIterator[Client]:
    """Speak the framed protocol over any Trio stream (TLS, unix sockets, tests).

    Sends the preamble, waits for the server's hello, then yields a
    :class:`Client`. The client owns ``stream`` and closes it on exit. Wrap
    the ``async with`` in ``trio.fail_after`` to bound the wait for the hello.
    With one stream there is nothing to reconnect: after the server's
    ``goaway`` the pending calls finish and new calls raise
    :class:`ConnectionClosed`.

    Args:
        stream: a connected stream; nothing may have been sent on it yet.
        on_notification: called as ``on_notification(method, params)`` from
            the reader task for every server notification except ``hello``
            and ``goaway`` (for example ``("error", [{"code": ..., "message":
            ...}])``). It must not block; if it raises, the connection is closed.
        max_frame: the largest reply accepted from the server, in bytes (16 MiB
            by default). A larger one fails only its call, with
            ``FrameTooLarge``; it is skipped unread and the connection stays usable.
        version: the protocol version to offer (2; 1 for a server that speaks
            only version 1, which refuses 2 and closes the stream).

    Raises:
        ConnectionClosed: the server closed the connection (or sent something
            else) before its hello; the stream is closed.
    """
    first = await _started(stream, on_notification, max_frame, version)
    async with _run(first, None, f"<{type(stream).__name__}>") as client:
        yield client


async def _started(
    stream: trio.abc.Stream,
    on_notification: NotificationHandler | None,
    max_frame: int,
    version: int,
) -> Connection:
    """A connection past the server's hello; ``stream`` is closed if that fails."""
    conn = Connection(stream, on_notification=on_notification, max_frame=max_frame, version=version)
    try:
        await conn._handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return conn


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
    reconnect: bool = True,
) -> AsyncIterator[Client]:
    """Connect to a trio_echo server over TCP and yield a :class:`Client`.

    Returns once the server's hello has arrived; the connections are closed
    when the ``async with`` block exits (pending calls then fail with
    :class:`ConnectionClosed`)::

        async with trio_echo.open_client("127.0.0.1", 7000) as client:
            print(await client.call("echo", "hi"))

    The client offers protocol version 2 and falls back to 1 for an older
    server. It follows the server's ``goaway`` to a new connection and, when
    a connection is lost, connects again for the next call (see
    :class:`Client`). The first connection is not retried: if it fails, this
    raises at once.

    Args:
        host: the server's host name or address (or a load balancer's).
        port: the server's port.
        connect_timeout: seconds allowed for connecting, the TLS handshake
            and the hello (``None`` waits forever); later, how long a call
            waits for a new connection (attempts are spaced 50 ms, doubling
            to 5 s).
        on_notification: see :func:`open_client_over_stream`.
        max_frame: the largest reply accepted from the server, in bytes (16 MiB
            by default). A larger one fails only its call, with
            ``FrameTooLarge``; it is skipped unread and the connection stays usable.
        ssl_context: speak TLS with this client context (for instance
            ``ssl.create_default_context(cafile=...)``; load a client
            certificate into it for mutual TLS).
        server_hostname: the name the server's certificate must carry;
            ``host`` by default.
        reconnect: False keeps one connection: once it is lost (or the server
            said goaway), calls raise :class:`ConnectionClosed`.

    Raises:
        ConnectFailed: the connection could not be made (refused, unreachable,
            unknown host); the message names the address. An ``OSError``.
        ConnectTimeout: ``connect_timeout`` passed (a ``ConnectFailed`` and a
            ``TimeoutError``).
        ssl.SSLError: the TLS handshake failed (``ssl.SSLCertVerificationError``
            for a certificate that does not verify); a subclass of ``OSError``.
        ConnectionClosed: the server closed the connection before its hello.
    """
    where = address(host, port)
    dial = _dialer(
        functools.partial(trio.open_tcp_stream, host, port),
        where,
        ssl_context,
        server_hostname or host,
        on_notification,
        max_frame,
    )
    first = await _offer_versions(dial, connect_timeout)
    async with _run(
        first, dial, where, reconnect=reconnect, connect_timeout=connect_timeout
    ) as client:
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
    reconnect: bool = True,
) -> AsyncIterator[Client]:
    """Connect to a trio_echo server on a Unix domain socket and yield a :class:`Client`.

    Like :func:`open_client`; with ``ssl_context``, ``server_hostname`` names
    the certificate to expect (or the context must not check host names).
    """
    dial = _dialer(
        functools.partial(trio.open_unix_socket, path),
        path,
        ssl_context,
        server_hostname,
        on_notification,
        max_frame,
    )
    first = await _offer_versions(dial, connect_timeout)
    async with _run(
        first, dial, path, reconnect=reconnect, connect_timeout=connect_timeout
    ) as client:
        yield client


def _dialer(
    open_stream: Callable[[], Awaitable[trio.abc.Stream]],
    where: str,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    on_notification: NotificationHandler | None,
    max_frame: int,
) -> Dial:
    """How to open one more connection to ``where``."""

    async def dial(version: int, connect_timeout: float | None) -> Connection:
        """Connect, do the TLS handshake if asked, and wait for the hello, within
        connect_timeout."""
        conn: Connection | None = None
        with trio.move_on_after(math.inf if connect_timeout is None else connect_timeout):
            # On a timeout, the opener, _tls and _started close what they opened.
            try:
                stream = await open_stream()
            except OSError as exc:
                raise connect_failed(where, exc)  # noqa: B904 - its __cause__ is the root cause
            if ssl_context is not None:
                stream = await _tls(stream, ssl_context, server_hostname)
            conn = await _started(stream, on_notification, max_frame, version)
        if conn is None:
            raise connect_timed_out(where, connect_timeout)
        return conn

    return dial


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
