"""The message engine of one framed or msgpack-rpc stream connection.

Theory of operation
-------------------
The engine keeps the hot path short. The task that reads decodes each read
at once. A well-formed request for a plain ``def`` handler is answered
inline and its encoded reply appended to an outbox. ``async def`` and
``blocking=True`` calls are queued, and the reading task runs them itself
right after the read (see "the worker pool" below), so a handler that never
blocks costs no task switch; when one does block, a worker task takes over
reading. ``blocking=True`` handlers run on a thread through the server's
capacity limiter. Whoever has replies ready calls
:meth:`MessageConnection._flush`: if no one is sending, it becomes the
sender and writes everything queued in one ``send_all`` until the outbox is
empty; otherwise it leaves its reply to the sender already at work. So
replies ready at one moment leave in one syscall, and no sender task or
channel sits between a handler and the socket. On a socket the replies are
first offered to the kernel with one non-blocking write, and a read costs one
trip through Trio's scheduler, not two (see ``sockio``); Trio's ``send_all``
is only needed when the socket's buffer is full.

Backpressure: the reader stops reading while ``max_inflight`` requests are
running on the connection or while the outbox holds more than
``OUTBOX_HIGH_WATER`` bytes; a client that does not read therefore stalls its
own requests in the kernel's buffers, not in our memory.
"""

from __future__ import annotations

import collections
import contextvars
import functools
import itertools
import logging
import math
import types
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final

import trio

from .. import wire
from ..errors import RemoteError
from ..wire import ErrorCode
from . import sockio as _sockio
from .service import HandlerKind, Method

if TYPE_CHECKING:
    from .connection import ConnectionState

__all__ = ["MessageConnection", "cause"]

log = logging.getLogger("trio_echo")

#: Bytes asked of the kernel per read.
RECEIVE_SIZE: Final = 65536
#: The reader pauses while more than this many reply bytes wait to be sent.
OUTBOX_HIGH_WATER: Final = 1024 * 1024
#: Idle worker tasks a connection keeps for its next async/blocking calls.
MAX_PARKED_WORKERS: Final = 4

# Module globals are faster to reach than enum members on the hot path.
_INLINE: Final = HandlerKind.INLINE
_ASYNC: Final = HandlerKind.ASYNC
_REQUEST: Final = 0
_MAX_MSGID: Final = wire.MAX_MSGID
# CPython compares two ints below 2**30 on a fast path, and MAX_MSGID is above
# it, so msgids are first compared with this.
_SMALL_INT_LIMIT: Final = 2**30
_NONE: Final[dict[str, Any]] = {}


class _Call:
    """An ``async def`` or blocking request (or notification) accepted on a connection."""

    __slots__ = (
        "awaitable",
        "cancelled_by_client",
        "context",
        "deadline",
        "method",
        "msgid",
        "params",
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


class MessageConnection:
    """The framed / msgpack-rpc stream engine of one connection (see module doc)."""

    def __init__(self, state: ConnectionState, framed: bool) -> None:
        server = state.server
        self.state = state
        self.server = server
        self.stream = state.stream
        self.framed = framed
        max_frame = server.max_frame
        self.decoder: wire.FrameDecoder | wire.StreamDecoder = (
            wire.FrameDecoder(max_frame) if framed else wire.StreamDecoder(max_frame)
        )
        self.calls: dict[int, _Call] = {}
        self.active = 0  # requests + notifications running on this connection
        self.outbox: list[bytes] = []
        # Bytes of outbox[:counted]; the rest is summed only when someone asks
        # (see _backed_up), which keeps a byte count off the per-reply path.
        self.outbox_bytes = 0
        self.counted = 0
        self.sending = False
        # Tasks wait in `room` for requests to finish or the outbox to drain;
        # `waiting` counts them, as ParkingLot's own truth test is a Python call.
        self.room = trio.lowlevel.ParkingLot()
        self.waiting = 0
        # The worker pool (see _add_worker).
        self.queue: collections.deque[_Call] = collections.deque()
        self.waking = 0  # workers woken or started that have not looked for work yet
        self.parked = 0
        self.wake = trio.lowlevel.ParkingLot()
        self.workers_done = False
        # Leader/follower reading (see _lead): the token of the task reading now.
        self.reader: object | None = None
        self.reader_wanted = False
        self.read_done = trio.Event()
        # Messages decoded but not yet started because the connection was at
        # max_inflight; they go before anything read later.
        self.backlog: list[Any] = []
        self.nursery: trio.Nursery | None = None
        self.logged_violation = False
        self.closing = False
        self.fd = _sockio.socket_fd(self.stream)
        self.receive = _sockio.receiver(self.stream)

    def busy(self) -> bool:
        return bool(self.active or self.outbox or self.sending)

    def abandon(self) -> None:
        """Account for calls cut short when the connection ends early.

        A reset, the idle reaper or the end of the grace period cancels the
        workers, so their calls never reach ``_finish``.
        """
        if self.active:
            self.server.requests_in_flight -= self.active
            self.active = 0
        while self.queue:
            self.queue.popleft().awaitable.close()

    # --- the read loop -------------------------------------------------------------------

    async def run(self, initial: bytes) -> None:
        server = self.server
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            if self.framed:
                self._enqueue(wire.encode_notification("hello", [server.hello], pack=server.pack))
            self.backlog.extend(self.decoder.feed(initial))
            await self._lead()
            # This task may have handed reading to a worker (see _lead).
            await self.read_done.wait()
            # Half-close, shutdown or a fatal error: answer what is in flight, then close.
            while self.active:
                await self._wait_for_room()
            self.workers_done = True
            self.wake.unpark_all()
        if self.outbox:
            await self._flush()

    async def _lead(self) -> None:
        """Hold the reader role: read, answer quick requests, run queued calls.

        Returns when reading is over (EOF, shutdown, a fatal error), or when
        a handler this task ran blocked and another task took over reading
        meanwhile (leader/follower: whoever is free reads). Running the calls
        of a read in the reading task itself means an async handler that
        does not block costs no task switch at all.
        """
        state = self.state
        token = object()
        self.reader = token

        def on_block() -> None:
            # A handler is about to block this task: let a worker read meanwhile.
            if self.reader is token:
                self.reader = None
                self.reader_wanted = True
                self._on_block()

        # The read loop has its own scope so that shutdown can stop it
        # while the calls already read run on and get answered.
        state.read_scope = trio.CancelScope()
        with state.read_scope:
            while True:
                # One cancel scope serves every call this task runs until one of
                # them is cancelled: a scope per read cost ~8% of an async echo.
                running: list[_Call | None] = [None]
                with trio.CancelScope() as scope:
                    over = await self._read_loop(token, on_block, scope, running)
                if self._interrupted(running):
                    continue  # a fresh scope for the next calls
                if over is None:
                    return  # another task reads now
                if over:
                    break
        self.reader = None
        self.read_done.set()

    async def _read_loop(
        self,
        token: object,
        on_block: Callable[[], None],
        scope: trio.CancelScope,
        running: list[_Call | None],
    ) -> bool | None:
        """The body of _lead. Returns True when reading is over, None when
        another task reads now, False when ``scope`` must be replaced."""
        state = self.state
        max_inflight = self.server.max_inflight
        receive = self.receive
        feed = self.decoder.feed
        process = self._process
        backlog = self.backlog
        while True:
            if self.reader is not token:
                # A handler this task ran blocked, and reading was offered to a worker.
                if self.reader is not None or not self.reader_wanted:
                    # Another task reads now; send what this one answered.
                    if self.outbox:
                        await self._flush()
                    return None
                # Nobody took over while the handler ran: carry on reading.
                self.reader_wanted = False
                self.reader = token
            if backlog:
                done = process(backlog)
                del backlog[:done]
            if self.queue:
                if not await self._run_session(on_block, scope, running):
                    return False
                continue
            if self.outbox and not self._write_now():
                await self._flush()
            if self.closing:  # a fatal error, reached in order (backlog first)
                return True
            while self.active >= max_inflight or (self.outbox and self._backed_up()):
                if state.stop_requested and not backlog:
                    break
                # Shutdown may cut this wait short only if nothing read is
                # pending: requests already read get answered like the rest.
                state.in_read = not backlog
                await self._wait_for_room()
                state.in_read = False
            if backlog:
                continue
            if state.stop_requested:
                return True
            state.in_read = True
            data = await receive(RECEIVE_SIZE)
            state.in_read = False
            if not data:
                return True  # EOF: answer what is in flight, then close
            state.bytes_in += len(data)
            # The hot path: decode and answer at once (the backlog is empty here).
            items = feed(data)
            done = process(items)
            if done < len(items):
                backlog.extend(items[done:])

    # --- dispatch ------------------------------------------------------------------------

    def _process(self, items: list[Any]) -> int:
        """Handle decoded messages in order (the hot path); return how many were handled.

        Stops early at a request or notification that would run past
        ``max_inflight``; the caller keeps the rest for later.
        """
        server = self.server
        # While the server is at max_requests, requests take the slow path
        # (which answers them `overloaded`).
        get = (
            server.inline_methods if server.requests_in_flight < server.max_requests else _NONE
        ).get
        pack = server.pack
        framed = self.framed
        append = self.outbox.append
        calls = self.calls
        max_msgid = _MAX_MSGID
        answered = 0  # requests answered inline
        other = 0  # messages handled otherwise
        for obj in items:
            # Fast path: a well-formed request for a quick plain-def handler.
            # Anything it does not take goes through parse_message below, which
            # is the one definition of validity. The checks are written for speed:
            # - unpacking raises for anything but 4 items (a notification, a
            #   cancel, a request with options), and get() for a name that
            #   cannot be a dict key; those take the slow path;
            # - `params.__class__ is list` also proves that obj was a list (the
            #   items of a str, bytes or map key cannot be lists), and
            #   `.__class__` is read faster than type() is called;
            # - `kind is _REQUEST` is a CPython small-int identity, so it can
            #   only send work to the slow path (False is not 0).
            try:
                kind, msgid, name, params = obj
                fn = get(name)
            except (ValueError, TypeError):
                kind = fn = None
            if (
                kind is _REQUEST
                and params.__class__ is list
                and msgid.__class__ is int
                and msgid >= 0
                and (msgid < _SMALL_INT_LIMIT or msgid <= max_msgid)
                and (not calls or msgid not in calls)
            ):
                if fn is not None:
                    answered += 1
                    try:
                        body = pack([1, msgid, None, fn(*params)])
                    except Exception as exc:
                        body = self._inline_failure(server.methods[name], msgid, params, exc)
                    if framed:
                        append(len(body).to_bytes(4, "big"))
                    append(body)
                    continue
                method = server.pooled_methods.get(name)
                if (
                    method is not None
                    and self.active < server.max_inflight
                    and server.requests_in_flight < server.max_requests
                ):
                    other += 1
                    server.requests_total += 1
                    self._queue_call(msgid, method, params, math.inf)
                    if server.requests_in_flight >= server.max_requests:
                        get = _NONE.get
                    continue
            if (
                self.active >= server.max_inflight
                and type(obj) is list
                and obj
                and obj[0] in (wire.MessageType.REQUEST, wire.MessageType.NOTIFICATION)
            ):
                server.requests_total += answered
                return answered + other
            other += 1
            self._dispatch(wire.parse_message(obj))
            if server.requests_in_flight >= server.max_requests:
                get = _NONE.get
        server.requests_total += answered
        return answered + other

    def _inline_failure(
        self, method: Method, msgid: int, params: list[Any], exc: Exception
    ) -> bytes:
        code, message, data = self._failure(method, params, exc)
        self.server.count_error(code)
        return self.server.pack([1, msgid, wire.error_map(code, message, data), None])

    def _failure(
        self, method: Method, params: list[Any], exc: BaseException
    ) -> tuple[str, str, Any]:
        """The error code, message and data for a handler that raised."""
        if isinstance(exc, RemoteError):
            return exc.code, exc.message, exc.data
        if isinstance(exc, TypeError):
            bad = method.bad_call(params)
            if bad is not None:
                return ErrorCode.INVALID_PARAMS, bad, None
        if isinstance(exc, (ValueError, TypeError, OverflowError)) and _is_pack_error(exc):
            message = f"{method.name}: result cannot be encoded as msgpack: {exc}"
            log.error("%s", message)
            return ErrorCode.INTERNAL, message, None
        log.error("method %s raised", method.name, exc_info=exc)
        data = None
        if self.server.debug:
            import traceback

            data = "".join(traceback.format_exception(exc))
        return ErrorCode.INTERNAL, f"{method.name}: {type(exc).__name__}: {exc}", data

    def _dispatch(self, event: wire.Event) -> None:
        """The general path: every message that is not a fast-path request."""
        server = self.server
        if type(event) is wire.Request:
            server.requests_total += 1
            self._start(event.msgid, event.method, event.params, event.options)
        elif type(event) is wire.Notification:
            server.notifications_total += 1
            self._start(None, event.method, event.params, None)
        elif type(event) is wire.Cancel:
            call = self.calls.get(event.msgid)
            if call is not None:
                call.cancelled_by_client = True
                if call.scope is not None:
                    call.scope.cancel()
        elif type(event) is wire.ProtocolViolation:
            self._violation(event)
        else:
            # A response or error response sent to the server.
            self._violation(
                wire.ProtocolViolation(ErrorCode.MALFORMED, "clients may not send responses")
            )

    def _violation(self, v: wire.ProtocolViolation) -> None:
        server = self.server
        server.count_error(v.code)
        level = logging.DEBUG if self.logged_violation else logging.INFO
        self.logged_violation = True
        log.log(level, "connection %s: %s: %s", self.state.peer, v.code, v.message)
        self._reply_error(v.msgid, v.code, v.message)
        if v.fatal:
            self.closing = True

    def _reply_error(self, msgid: int | None, code: str, message: str, data: Any = None) -> None:
        self._enqueue(
            wire.encode_error(msgid, code, message, data, framed=self.framed, pack=self.server.pack)
        )

    def _error(self, msgid: int | None, code: str, message: str) -> None:
        """Answer a request with an error (notifications only count it)."""
        self.server.count_error(code)
        if msgid is not None:
            self._reply_error(msgid, code, message)

    def _start(
        self, msgid: int | None, name: str, params: list[Any], options: dict[Any, Any] | None
    ) -> None:
        server = self.server
        method = server.methods.get(name)
        if method is None:
            self._error(msgid, ErrorCode.UNKNOWN_METHOD, f"unknown method {name!r}")
            return
        timeout = wire.timeout_of(options)
        if isinstance(timeout, wire.ProtocolViolation):
            self._error(msgid, timeout.code, timeout.message)
            return
        if msgid is not None and msgid in self.calls:
            self._error(msgid, ErrorCode.MALFORMED, f"msgid {msgid} is already in flight")
            return
        if server.requests_in_flight >= server.max_requests:
            self._error(
                msgid, ErrorCode.OVERLOADED, f"server has {server.max_requests} requests in flight"
            )
            return
        bad = method.check_params(params) if method.checks else None
        if bad is not None:
            self._error(msgid, ErrorCode.INVALID_PARAMS, bad)
            return
        if method.kind is _INLINE:
            self._run_inline(msgid, method, params)
            return
        self._queue_call(
            msgid, method, params, math.inf if timeout is None else trio.current_time() + timeout
        )

    def _queue_call(
        self, msgid: int | None, method: Method, params: list[Any], deadline: float
    ) -> None:
        """Hand an async or blocking call to the worker pool."""
        server = self.server
        if method.kind is _ASYNC:
            try:
                awaitable = method.fn(*params)
            except TypeError as exc:
                code, message, _ = self._failure(method, params, exc)
                self._error(msgid, code, message)
                return
        else:
            awaitable = trio.to_thread.run_sync(
                functools.partial(method.fn, *params),
                limiter=server.limiter,
                abandon_on_cancel=True,
            )
        call = _Call(msgid, method, params, awaitable, deadline)
        if msgid is not None:
            self.calls[msgid] = call
        self.active += 1
        server.requests_in_flight += 1
        self.queue.append(call)

    def _run_inline(self, msgid: int | None, method: Method, params: list[Any]) -> None:
        server = self.server
        try:
            result = method.fn(*params)
            if msgid is None:
                return
            body = server.pack([1, msgid, None, result])
        except Exception as exc:
            code, message, data = self._failure(method, params, exc)
            self.server.count_error(code)
            if msgid is not None:
                self._reply_error(msgid, code, message, data)
            return
        self._enqueue(wire.frame(body) if self.framed else body)

    # --- the worker pool for async and blocking handlers ----------------------------------
    #
    # Spawning a task per request costs more than the request itself. So the
    # task that reads also runs the async and blocking calls of each read,
    # one after another, before it reads again; a handler that never blocks
    # (an async echo) then costs no task switch at all. The invariant that
    # keeps a slow call from delaying a fast one: when a handler is about to
    # block its task (its first step yields to Trio), a worker task is
    # woken if anything is left to do (reading, queued calls, replies to
    # send). If the blocked task was the reader, that worker becomes the
    # reader (leader/follower), so the connection keeps being read while
    # the handler waits. Idle workers park, a few per connection at most.

    def _add_worker(self) -> None:
        """Wake a parked worker, or start a new one."""
        self.waking += 1
        if self.parked:
            self.parked -= 1
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
                    running: list[_Call | None] = [None]
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
            await self.wake.park()

    async def _wait_for_room(self) -> None:
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
        self, on_block: Callable[[], None], scope: trio.CancelScope, running: list[_Call | None]
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

    def _interrupted(self, running: list[_Call | None]) -> bool:
        """Finish the call whose handler a cancel scope just cut short, if any."""
        call = running[0]
        if call is None:
            return False
        # Its handler was cancelled (by the client or timeout_ms).
        call.scope = None
        self._finish(call, None, self._cancel_error(call))
        return True

    def _finish(self, call: _Call, result: Any, error: tuple[str, str, Any] | None) -> None:
        """Account for a call that is over and queue its reply."""
        server = self.server
        msgid = call.msgid
        self.active -= 1
        server.requests_in_flight -= 1
        if self.waiting:
            self.room.unpark_all()
        if msgid is None:
            if error is not None:
                server.count_error(error[0])
            return
        del self.calls[msgid]
        pack = server.pack
        if error is None:
            try:
                body = pack([1, msgid, None, result])
            except Exception as exc:
                error = self._failure(call.method, call.params, exc)
        if error is not None:
            server.count_error(error[0])
            body = pack([1, msgid, wire.error_map(*error), None])
        if self.framed:
            self.outbox.append(len(body).to_bytes(4, "big"))
        self.outbox.append(body)

    @staticmethod
    def _cancel_error(call: _Call) -> tuple[str, str, Any]:
        if call.cancelled_by_client:
            return ErrorCode.CANCELLED, "cancelled by the client", None
        return ErrorCode.TIMEOUT, f"{call.method.name}: timeout_ms exceeded", None

    # --- writing ---------------------------------------------------------------------------

    def _enqueue(self, data: bytes) -> None:
        self.outbox.append(data)

    def _backed_up(self) -> bool:
        """More than ``OUTBOX_HIGH_WATER`` bytes of replies wait to be sent."""
        out = self.outbox
        if self.counted < len(out):
            # Each reply is summed once, so a sender stuck for long costs O(replies).
            self.outbox_bytes += sum(map(len, itertools.islice(out, self.counted, None)))
            self.counted = len(out)
        return self.outbox_bytes >= OUTBOX_HIGH_WATER

    def _write_now(self) -> bool:
        """Send the outbox with one non-blocking write; False if ``_flush`` must finish.

        A task that reads or runs calls yields to Trio at its next read or
        park anyway, so replies the kernel takes at once need not go through
        ``send_all``, whose own checkpoint costs a trip through the scheduler
        per read (about a fifth of the server's work on small echoes).
        """
        if self.fd < 0 or self.sending:
            return False  # not a socket, or a sender is at work: keep the order
        data = self._take_outbox()
        try:
            sent = _sockio.write_now(self.fd, data)
        except OSError as exc:
            self._lost(exc)
            return True
        self.state.bytes_out += sent
        if sent < len(data):
            self.outbox = [data[sent:]]
            return False
        return True

    async def _flush(self) -> None:
        """Send everything queued; if another task is sending, leave it to that task."""
        if self.sending:
            return
        self.sending = True
        try:
            while self.outbox:
                data = self._take_outbox()
                await self.stream.send_all(data)
                self.state.bytes_out += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._lost(exc)
        finally:
            self.sending = False

    def _take_outbox(self) -> bytes:
        """Empty the outbox into one buffer to send; tasks waiting for room look again."""
        out = self.outbox
        self.outbox = []
        self.outbox_bytes = self.counted = 0
        if self.waiting:
            self.room.unpark_all()
        return out[0] if len(out) == 1 else b"".join(out)

    def _lost(self, exc: BaseException) -> None:
        """The peer is gone: nothing more can be delivered on this connection."""
        log.debug("connection %s lost while sending: %s", self.state.peer, cause(exc))
        self.outbox = []
        self.outbox_bytes = self.counted = 0
        self.state.whole_scope.cancel()


def cause(exc: BaseException) -> str:
    """What a Trio stream error was really about (the OSError behind it, say)."""
    underlying = exc.__cause__ or exc.__context__
    return str(underlying or exc) or type(exc).__name__


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


def _is_pack_error(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.endswith(("engine.py", "wire.py"))
