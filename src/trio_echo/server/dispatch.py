"""Dispatching decoded messages: the hot path, validation, starting calls, errors.

:meth:`Dispatcher._process` takes the messages of a read in order. A
well-formed request for a quick plain ``def`` handler is answered on the spot
and its reply appended to the outbox (the fast path, written for CPython's
fast paths: see the comments in it); everything else goes through
:func:`wire.parse_message`, the one definition of what is valid, and
:meth:`Dispatcher._start`, which checks the method, options, limits and
parameters and runs the handler inline or queues it for the worker pool
(:mod:`.calls`).
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import time
import traceback
from typing import TYPE_CHECKING, Any, Final

import trio

from .. import wire
from ..errors import RemoteError
from ..wire import ErrorCode
from . import metrics as _metrics
from .calls import Call, pack_failure
from .service import HandlerKind, Method, unknown_method_message

if TYPE_CHECKING:
    from .context import ConnectionView, ServerContext

__all__ = ["Dispatcher"]

log = logging.getLogger("trio_echo")

# Module globals are faster to reach than enum members on the hot path.
_INLINE: Final = HandlerKind.INLINE
_ASYNC: Final = HandlerKind.ASYNC
_STREAM: Final = HandlerKind.STREAM
_REQUEST: Final = 0
_LARGE: Final = wire.LargeMessage
_MAX_MSGID: Final = wire.MAX_MSGID
# CPython compares two ints below 2**30 on a fast path, and MAX_MSGID is above
# it, so msgids are first compared with this.
_SMALL_INT_LIMIT: Final = 2**30
_NONE: Final[dict[str, Any]] = {}


class Dispatcher:
    """Handles decoded messages (a part of :class:`~.session.Session`)."""

    # Set by Session.__init__.
    ctx: ServerContext
    state: ConnectionView
    framed: bool
    calls: dict[int, Call]
    active: int
    outbox: list[bytes]
    queue: collections.deque[Call]
    backlog_msgids: dict[int, int]
    cancelled_early: set[int]
    logged_violation: bool
    closing: bool
    going_away: wire.GoawayReason | None
    version: int

    if TYPE_CHECKING:
        # Provided by the other parts of Session.
        def _enqueue(self, data: bytes) -> None: ...
        def _refuse(self, items: list[Any]) -> int: ...
        def _start_stream(
            self,
            msgid: int | None,
            method: Method,
            params: list[Any],
            options: dict[Any, Any] | None,
            deadline: float,
        ) -> bool: ...
        def _stream_message(self, event: wire.Items | wire.Credit | wire.End) -> None: ...
        def _stream_violation(self, v: wire.ProtocolViolation) -> None: ...

    def _process(self, items: list[Any]) -> int:
        """Handle decoded messages in order (the hot path); return how many were handled.

        Stops early at a request or notification that would run past
        ``max_inflight``; the caller keeps the rest for later.
        """
        if self.going_away is not None:  # protocol v2: nothing new starts (see .goaway)
            return self._refuse(items)
        ctx = self.ctx
        # While the server is at max_requests, requests take the slow path
        # (which answers them `overloaded`, monitoring excepted).
        get = (ctx.inline_methods if ctx.requests_in_flight < ctx.max_requests else _NONE).get
        pack = ctx.pack
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
                    # Calling and packing fail in different ways, so they are tried
                    # apart (a try block costs nothing on Python 3.11+).
                    try:
                        result = fn(*params)
                    except Exception as exc:
                        body = self._inline_failure(ctx.methods[name], msgid, params, exc)
                    else:
                        try:
                            body = pack([1, msgid, None, result])
                        except Exception as exc:
                            body = self._unencodable(ctx.methods[name], msgid, exc, True)
                    if framed:
                        append(len(body).to_bytes(4, "big"))
                    append(body)
                    continue
                method = ctx.pooled_methods.get(name)
                if (
                    method is not None
                    and self.active < ctx.max_inflight
                    and ctx.requests_in_flight < ctx.max_requests
                ):
                    other += 1
                    ctx.requests_total += 1
                    self._queue_call(msgid, method, params, math.inf)
                    if ctx.requests_in_flight >= ctx.max_requests:
                        get = _NONE.get
                    continue
            if obj.__class__ is _LARGE or (
                self.active >= ctx.max_inflight
                and type(obj) is list
                and obj
                and obj[0] in (wire.MessageType.REQUEST, wire.MessageType.NOTIFICATION)
            ):
                # No room (or a long message to decode a slice at a time): the
                # caller keeps this and the rest, undecoded, for later.
                ctx.requests_total += answered
                return answered + other
            other += 1
            self._dispatch(wire.parse_message(obj, self.version))
            if ctx.requests_in_flight >= ctx.max_requests:
                get = _NONE.get
        ctx.requests_total += answered
        return answered + other

    def _inline_failure(
        self, method: Method, msgid: int, params: list[Any], exc: Exception
    ) -> bytes:
        code, message, data = self._failure(method, params, exc)
        self.ctx.count_error(code)
        if self.ctx.metrics is not None:
            _metrics.count(self.ctx.metrics, method.name, msgid, code)
        return self.ctx.pack([1, msgid, wire.error_map(code, message, data), None])

    def _unencodable(
        self, method: Method, msgid: int, exc: Exception, counted: bool = False
    ) -> bytes:
        """The error response for a result msgpack cannot encode.

        ``counted``: the fast path's metrics wrapper already counted the call as
        a success (see metrics.counted); it is taken back.
        """
        code, message, data = pack_failure(method, exc)
        self.ctx.count_error(code)
        if self.ctx.metrics is not None:
            if counted:
                self.ctx.metrics[method.name].batched -= 1
            _metrics.count(self.ctx.metrics, method.name, msgid, code)
        return self.ctx.pack([1, msgid, wire.error_map(code, message, data), None])

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
        # The exception's text may quote what the client sent: it is cut short,
        # in the reply and in the log (the traceback's frames are the server's own).
        summary = f"{type(exc).__name__}: {wire.bounded(str(exc), 200)}"
        trace = "Traceback (most recent call last):\n" + "".join(
            traceback.format_tb(exc.__traceback__)
        )
        record = log.makeRecord(
            log.name, logging.ERROR, __file__, 0, "method %s raised", (method.name,),
            (type(exc), exc, exc.__traceback__), extra={"method": method.name},
        )  # fmt: skip
        record.exc_text = trace + summary  # what handlers print for exc_info: bounded
        log.handle(record)
        data = trace + summary if self.ctx.debug else None
        return ErrorCode.INTERNAL, f"{method.name}: {summary}", data

    def _dispatch(self, event: wire.Event) -> None:
        """The general path: every message that is not a fast-path request."""
        ctx = self.ctx
        if type(event) is wire.Request:
            ctx.requests_total += 1
            self._start(event.msgid, event.method, event.params, event.options)
        elif type(event) is wire.Notification:
            ctx.notifications_total += 1
            if ctx.metrics is not None:
                stats = ctx.metrics.get(event.method) or ctx.metrics[_metrics.UNKNOWN_METHOD]
                stats.notifications += 1
            self._start(None, event.method, event.params, None)
        elif type(event) is wire.Cancel:
            self._cancel(event.msgid)
        elif type(event) is wire.Items or type(event) is wire.Credit or type(event) is wire.End:
            self._stream_message(event)
        elif type(event) is wire.ProtocolViolation:
            if event.stream:
                self._stream_violation(event)
            else:
                self._violation(event)
        else:
            # A response or error response sent to the server.
            self._violation(
                wire.ProtocolViolation(ErrorCode.MALFORMED, "clients may not send responses")
            )

    def _cancel(self, msgid: int) -> None:
        """``[3, msgid]``: cancel that call if it runs, or before it starts if it waits."""
        call = self.calls.get(msgid)
        if call is not None:
            call.cancelled_by_client = True
            if call.scope is not None:
                call.scope.cancel()
        elif msgid in self.backlog_msgids and msgid not in self.cancelled_early:
            # Still waiting, undecoded, at max_inflight: answered now (protocol.md
            # §4.5), and skipped when its turn comes.
            try:
                self.cancelled_early.add(msgid)
            except AttributeError:  # the first one: see Session.__init__ (NO_MSGIDS)
                self.cancelled_early = {msgid}
            self.ctx.requests_total += 1
            self._error(msgid, ErrorCode.CANCELLED, "cancelled by the client")

    def _violation(self, v: wire.ProtocolViolation) -> None:
        self.ctx.count_error(v.code)
        level = logging.DEBUG if self.logged_violation else logging.INFO
        self.logged_violation = True
        log.log(
            level,
            "connection %s: %s: %s",
            self.state.peer,
            v.code,
            v.message,
            extra={"peer": self.state.peer, "code": v.code},
        )
        self._reply_error(v.msgid, v.code, v.message)
        if v.fatal:
            self.closing = True

    def _reply_error(self, msgid: int | None, code: str, message: str, data: Any = None) -> None:
        self._enqueue(
            wire.encode_error(msgid, code, message, data, framed=self.framed, pack=self.ctx.pack)
        )

    def _error(self, msgid: int | None, code: str, message: str, name: str = "") -> None:
        """Answer a request with an error (notifications only count it).

        ``name`` is the method's, for the per-method metrics.
        """
        self.ctx.count_error(code)
        if self.ctx.metrics is not None:
            _metrics.count(self.ctx.metrics, name, msgid, code)
        if msgid is not None:
            self._reply_error(msgid, code, message)

    def _start(
        self, msgid: int | None, name: str, params: list[Any], options: dict[Any, Any] | None
    ) -> None:
        ctx = self.ctx
        method = ctx.methods.get(name)
        if method is None:
            self._error(
                msgid, ErrorCode.UNKNOWN_METHOD, unknown_method_message(name, ctx.methods), name
            )
            return
        timeout = wire.timeout_of(options)
        if isinstance(timeout, wire.ProtocolViolation):
            self._error(msgid, timeout.code, timeout.message, name)
            return
        if msgid is not None and msgid in self.calls:
            self._error(msgid, ErrorCode.MALFORMED, f"msgid {msgid} is already in flight", name)
            return
        if ctx.requests_in_flight >= ctx.max_requests and name not in ctx.unlimited:
            self._error(
                msgid,
                ErrorCode.OVERLOADED,
                f"server has {ctx.max_requests} requests in flight",
                name,
            )
            return
        bad = method.check_params(params) if method.checks else None
        if bad is not None:
            self._error(msgid, ErrorCode.INVALID_PARAMS, bad, name)
            return
        if (method.kind is _STREAM or (options and "stream" in options)) and self._start_stream(
            msgid,
            method,
            params,
            options,
            math.inf if timeout is None else trio.current_time() + timeout,
        ):
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
        ctx = self.ctx
        if method.kind is _ASYNC:
            try:
                awaitable = method.fn(*params)
            except TypeError as exc:
                code, message, _ = self._failure(method, params, exc)
                self._error(msgid, code, message, method.name)
                return
        else:
            awaitable = trio.to_thread.run_sync(
                functools.partial(method.fn, *params),
                limiter=ctx.limiter,
                abandon_on_cancel=True,
            )
        self._file(Call(msgid, method, params, awaitable, deadline))

    def _file(self, call: Call) -> None:
        """Count a call in flight and queue it for the worker pool."""
        ctx = self.ctx
        if ctx.metrics is not None:
            call.received = ctx.batch_started  # time.perf_counter() of its read's batch
        if call.msgid is not None:
            self.calls[call.msgid] = call
        self.active += 1
        ctx.requests_in_flight += 1
        try:
            self.queue.append(call)
        except AttributeError:  # the first queued call: see Session.__init__ (NO_DEQUE)
            self.queue = collections.deque((call,))

    def _run_inline(self, msgid: int | None, method: Method, params: list[Any]) -> None:
        ctx = self.ctx
        start = time.perf_counter() if ctx.metrics is not None else 0.0
        try:
            result = method.fn(*params)
        except Exception as exc:
            code, message, data = self._failure(method, params, exc)
            ctx.count_error(code)
            if ctx.metrics is not None:
                _metrics.count(ctx.metrics, method.name, msgid, code)
            if msgid is not None:
                self._reply_error(msgid, code, message, data)
            return
        seconds = time.perf_counter() - start
        if msgid is None:
            if ctx.metrics is not None:
                _metrics.count(ctx.metrics, method.name, msgid, "ok", seconds)
            return
        try:
            body = ctx.pack([1, msgid, None, result])
        except Exception as exc:
            body = self._unencodable(method, msgid, exc)
        else:
            if ctx.metrics is not None:
                _metrics.count(ctx.metrics, method.name, msgid, "ok", seconds)
        self._enqueue(wire.frame(body) if self.framed else body)
