"""Running ``async def`` and ``blocking=True`` calls: the worker pool of one session.

#
Spawning a task per request costs more than the request itself. So the
task that reads also runs the async and blocking calls of each read,
one after another, before it reads again; a handler that never blocks
(an async echo) then costs no task switch at all. The invariant that
keeps a slow call from delaying a fast one: when a handler is about to
block its task (its first step yields to Trio), a worker task is
woken if anything is left to do (reading, queued calls, replies to
send). If the blocked task was the reader, that worker becomes the
reader (leader/follower), so the connection keeps being read while
the handler waits. Idle workers park, a few per connection at most.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import math
import time
import types
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final

import trio

from .. import wire
from ..wire import ErrorCode
from . import metrics as _metrics
from .service import Method

if TYPE_CHECKING:
    from .context import ServerContext

__all__ = ["MAX_PARKED_WORKERS", "Call", "CallRunner", "pack_failure"]

log = logging.getLogger("trio_echo")

#: Idle worker tasks a connection keeps for its next async/blocking calls.
MAX_PARKED_WORKERS: Final = 4


class Call:
    """An ``async def`` or blocking request (or notification) accepted on a connection."""

    __slots__ = (
        "awaitable",
        "cancelled_by_client",
        "context",
        "deadline",
        "method",
        "msgid",
        "params",
        "received",
        "scope",
    )

    def __init__(
        self,
        msgid: int | None,
        method: Method,
        params: list[Any],
        awaitable: Coroutine[Any, Any, Any],
        deadline: float,
    ) -> None:
        self.msgid = msgid
        self.method = method
        self.params = params
        self.awaitable = awaitable
        #: When timeout_ms runs out (trio clock), counted from receipt.
        self.deadline = deadline
        self.cancelled_by_client = False
        #: The handler's own copy of the context, as a task of its own would have:
        #: context variables it sets do not leak into later calls on the connection.
        self.context = contextvars.copy_context()
        #: The worker's cancel scope while the call runs, else None.
        self.scope: trio.CancelScope | None = None
        #: When it was received (perf_counter, the start of its read's dispatch), set
        #: only when metrics time it.
        self.received = 0.0


class CallRunner:
    """Runs a session's queued calls (a part of :class:`~.session.Session`)."""

    # Set by Session.__init__.
    ctx: ServerContext
    framed: bool
    calls: dict[int, Call]
    active: int
    outbox: list[bytes]
    room: trio.lowlevel.ParkingLot | None
    waiting: int
    queue: collections.deque[Call]
    waking: int
    parked: int
    wake: trio.lowlevel.ParkingLot | None
    workers_done: bool
    reader_wanted: bool
    sending: bool
    wake_reader: trio.CancelScope | None
    nursery: trio.Nursery | None
    streams: dict[int, Any]

    if TYPE_CHECKING:
        # Provided by the other parts of Session.
        async def _lead(self) -> None: ...
        def _write_now(self) -> bool: ...
        async def _flush(self) -> None: ...
        def _failure(
            self, method: Method, params: list[Any], exc: BaseException
        ) -> tuple[str, str, Any]: ...

    def _add_worker(self) -> None:
        """Wake a parked worker, or start a new one."""
        self.waking += 1
        if self.parked:
            self.parked -= 1
            assert self.wake is not None  # (a worker parked there)
            self.wake.unpark(count=1)
        else:
            assert self.nursery is not None
            self.nursery.start_soon(self._worker)

    async def _worker(self) -> None:
        while True:
            self.waking -= 1
            while True:
                if self.reader_wanted:
                    self.reader_wanted = False
                    await self._lead()
                elif self.queue:
                    running: list[Call | None] = [None]
                    with trio.CancelScope() as scope:
                        await self._run_session(self._on_block, scope, running)
                    self._interrupted(running)
                elif self.outbox and not self.sending:
                    if not self._write_now():
                        await self._flush()
                else:
                    break  # (a task already sending takes the outbox along)
            if self.workers_done or self.parked >= MAX_PARKED_WORKERS:
                return
            self.parked += 1
            if self.wake is None:
                self.wake = trio.lowlevel.ParkingLot()  # made when first needed
            await self.wake.park()

    async def _wait_for_room(self) -> None:
        if self.room is None:
            self.room = trio.lowlevel.ParkingLot()  # made when first needed
        self.waiting += 1
        try:
            await self.room.park()
        finally:
            self.waiting -= 1

    def _on_block(self) -> None:
        """A handler is about to block its task: if work is left, have a worker wake."""
        if (self.queue or self.outbox or self.reader_wanted) and not self.waking:
            self._add_worker()

    async def _run_session(
        self, on_block: Callable[[], None], scope: trio.CancelScope, running: list[Call | None]
    ) -> bool:
        """Run queued calls one after another inside ``scope``, which the caller entered.

        A cancel scope per call would cost more than an async echo itself,
        so calls share their task's scope: ``[3, msgid]`` and ``timeout_ms``
        cancel the scope while their call is the one running in it (kept in
        ``running[0]``), and the caller then finishes that call and enters a
        fresh scope. Returns False if a handler swallowed a cancel, so the
        scope must be replaced before the next call.
        """
        queue = self.queue
        while queue:
            call = queue.popleft()
            timed = call.deadline != math.inf
            if call.cancelled_by_client or (timed and call.deadline <= trio.current_time()):
                # Cancelled or expired while it waited for a worker: never started.
                call.awaitable.close()
                if self.streams and call.msgid is not None:
                    self.streams.pop(call.msgid, None)  # (a stream's own cleanup never ran)
                self._finish(call, None, self._cancel_error(call))
                continue
            call.scope = scope
            if timed:
                scope.deadline = call.deadline
            running[0] = call
            result: Any = None
            error: tuple[str, str, Any] | None = None
            try:
                # `await call.awaitable`, written out: a handler that returns
                # without yielding to Trio never needs another task.
                coro = call.awaitable
                try:
                    trap = call.context.run(coro.send, None)
                except StopIteration as done:
                    result = done.value
                else:
                    on_block()
                    result = await _resume(coro, trap, call.context)
            except Exception as exc:
                error = self._failure(call.method, call.params, exc)
            running[0] = None
            call.scope = None
            if timed:
                scope.deadline = math.inf
            self._finish(call, result, error)
            if (call.cancelled_by_client or timed) and scope.cancel_called:
                return False  # the handler swallowed a cancel
        return True

    def _interrupted(self, running: list[Call | None]) -> bool:
        """Finish the call whose handler a cancel scope just cut short, if any."""
        call = running[0]
        if call is None:
            return False
        # Its handler was cancelled (by the client or timeout_ms).
        call.scope = None
        self._finish(call, None, self._cancel_error(call))
        return True

    def _finish(self, call: Call, result: Any, error: tuple[str, str, Any] | None) -> None:
        """Account for a call that is over and queue its reply."""
        ctx = self.ctx
        msgid = call.msgid
        self.active -= 1
        ctx.requests_in_flight -= 1
        if self.waiting:
            self.room.unpark_all()  # type: ignore[union-attr]  # (made by _wait_for_room)
        if self.wake_reader is not None:
            self.wake_reader.cancel()  # the reader listens while full: room for the backlog
        if msgid is None:
            if error is not None:
                ctx.count_error(error[0])
            if ctx.metrics is not None:
                _metrics.count(ctx.metrics, call.method.name, None, error[0] if error else "ok")
            return
        del self.calls[msgid]
        pack = ctx.pack
        body = b""
        if error is None:
            try:
                body = pack([1, msgid, None, result])
            except Exception as exc:
                error = pack_failure(call.method, exc)
        if ctx.metrics is not None:
            seconds = time.perf_counter() - call.received
            _metrics.count(
                ctx.metrics, call.method.name, msgid, error[0] if error else "ok", seconds
            )
        if error is not None:
            ctx.count_error(error[0])
            body = pack([1, msgid, wire.error_map(*error), None])
        if self.framed:
            self.outbox.append(len(body).to_bytes(4, "big"))
        self.outbox.append(body)

    @staticmethod
    def _cancel_error(call: Call) -> tuple[str, str, Any]:
        stream = getattr(call, "stream", None)  # a StreamCall (see .streams)
        if stream is not None and stream.error is not None:
            error: tuple[str, str, Any] = stream.error
            return error  # a stream protocol error ended it
        if call.cancelled_by_client:
            return ErrorCode.CANCELLED, "cancelled by the client", None
        return ErrorCode.TIMEOUT, f"{call.method.name}: timeout_ms exceeded", None


@types.coroutine
def _resume(
    coro: Coroutine[Any, Any, Any], trap: Any, context: contextvars.Context
) -> Generator[Any, Any, Any]:
    """Finish ``await coro`` for a coroutine that already yielded ``trap`` to Trio.

    This is what ``await`` (``yield from``) does after the first step; the
    worker takes that first step itself to learn whether the handler blocks.
    Every step runs in the call's own ``context``.
    """
    run = context.run
    while True:
        try:
            value = yield trap
        except GeneratorExit:
            run(coro.close)
            raise
        except BaseException as exc:  # Cancelled included: the handler must see it
            try:
                trap = run(coro.throw, exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                trap = run(coro.send, value)
            except StopIteration as done:
                return done.value


def pack_failure(method: Method, exc: Exception) -> tuple[str, str, Any]:
    """The error for a handler whose result msgpack cannot encode (logged, no traceback)."""
    message = f"{method.name}: result cannot be encoded as msgpack: {wire.bounded(str(exc), 200)}"
    log.error("%s", message)
    return ErrorCode.INTERNAL, message, None
