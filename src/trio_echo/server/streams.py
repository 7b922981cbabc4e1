"""Streaming calls on the server (protocol version 2, protocol.md §12).

A stream is a call (:class:`StreamCall`) whose awaitable is
:meth:`Streams._run_stream`: it runs in the session's worker pool like any
``async def`` call, is cancelled through the same cancel scope (a cancel, a
deadline, a lost connection) and ends with the same one response
(``CallRunner._finish``). What a stream adds is held in a
:class:`ServerStream`: the credit each side has granted, the items received
and not yet taken, whether the client has ended its side.

Theory of operation
-------------------
**Sending** (server and bidi streams). An async generator is driven by
:meth:`Streams._produce`, which asks it for the next item only when the
client has granted a credit for it, so a producer never runs ahead of its
consumer. It takes each step of the generator by hand (as the worker pool
takes a handler's first step): items the generator yields without blocking
are packed one by one into a batch, and the batch leaves as one items
message when the credit or ``BATCH_BYTES`` runs out, when the generator is
about to block, or when it ends. A channel-style handler's
:meth:`ItemSenderImpl.send` waits for a credit the same way. Outgoing items go
through the session's outbox, in order with the final response, and a worker
task is woken to write them, so the items of one moment leave in one write.

**Receiving** (client and bidi streams). Items, credit and end are applied by
the reading task as they are read (:meth:`Streams._stream_message`), also
while the connection is at ``max_inflight`` (the session applies them while
it holds new requests back), so a full connection never waits on its own
credit. The server grants ``stream_credit`` items when the handler starts
(the go-ahead) and grants again what the handler took each time it has taken
half of that, so the items held for a stream never pass what was granted.

**Ending.** Cancel, ``timeout_ms``, a lost connection: the call's cancel scope
(the generator is closed, ``aclosing``-style, so its ``finally`` runs). A
protocol error on the stream: the call is cancelled and answered
``malformed``. The client half-closed (or the session stopped reading):
whatever waits on the client (credit, items) raises ``RequestCancelled``.
A producer waiting for credit longer than ``stream_idle_timeout``:
``DeadlineExceeded``.
"""

from __future__ import annotations

import collections
import math
import types
from collections.abc import AsyncGenerator, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final, TypeVar

import trio

from .. import wire
from ..errors import DeadlineExceeded, InternalError, InvalidParams, RequestCancelled, remote_error
from ..wire import ErrorCode, StreamKind
from .calls import Call
from .service import ItemReceiver, ItemSender, Method

if TYPE_CHECKING:
    from .context import ConnectionView, ServerContext

__all__ = [
    "BATCH_BYTES",
    "ItemReceiverImpl",
    "ItemSenderImpl",
    "ServerStream",
    "StreamCall",
    "Streams",
]

T = TypeVar("T")

#: An items message the server sends holds at most about this many bytes of items.
BATCH_BYTES: Final = 64 * 1024

_STREAM_TYPES: Final = frozenset(
    {wire.MessageType.ITEMS, wire.MessageType.CREDIT, wire.MessageType.END}
)


class ServerStream:
    """The stream state of one streaming call (see the module doc)."""

    __slots__ = (
        "buffer",
        "call",
        "consumed",
        "end_error",
        "ended",
        "error",
        "go_read",
        "kind",
        "lot",
        "msgid",
        "recv_credit",
        "refill",
        "send_credit",
        "started",
        "window",
    )

    def __init__(self, msgid: int, kind: StreamKind, credit: int, window: int) -> None:
        self.msgid = msgid
        self.kind = kind
        #: Items the client has granted and the server not yet sent.
        self.send_credit = credit if kind is not StreamKind.CLIENT else 0
        #: Items the server has granted and the client not yet sent.
        self.recv_credit = 0
        #: The server's receive window, and after how many taken items it grants again.
        self.window = window
        self.refill = max(1, window // 2)
        #: Items taken by the handler since the last grant.
        self.consumed = 0
        self.buffer: collections.deque[Any] = collections.deque()
        self.ended = False
        self.end_error: dict[str, Any] | None = None
        #: Why the stream was ended by the server (a protocol error): (code, message, data).
        self.error: tuple[str, str, Any] | None = None
        self.started = False
        #: The connection's bytes_in when the go-ahead was granted (-1: not yet).
        #: Items read up to then were sent before the client could have seen it.
        self.go_read = -1
        #: Tasks waiting for credit or items park here.
        self.lot = trio.lowlevel.ParkingLot()
        self.call: StreamCall | None = None

    @property
    def receives(self) -> bool:
        return self.kind is not StreamKind.SERVER

    @property
    def sends(self) -> bool:
        return self.kind is not StreamKind.CLIENT


class EarlyStream:
    """Credit and end that came for a stream request still waiting in the backlog."""

    __slots__ = ("credit", "end_error", "ended", "error")

    def __init__(self) -> None:
        self.credit = 0
        self.ended = False
        self.end_error: dict[str, Any] | None = None
        self.error: str | None = None


class StreamCall(Call):
    """A streaming call: a :class:`Call` with its :class:`ServerStream`."""

    __slots__ = ("stream",)

    def __init__(
        self,
        msgid: int,
        method: Method,
        params: list[Any],
        awaitable: Coroutine[Any, Any, Any],
        deadline: float,
        stream: ServerStream,
    ) -> None:
        super().__init__(msgid, method, params, awaitable, deadline)
        self.stream = stream


class ItemReceiverImpl(ItemReceiver[T]):
    """The :class:`ItemReceiver` a client or bidi stream's handler is given."""

    __slots__ = ("_session", "_stream")

    def __init__(self, session: Streams, stream: ServerStream) -> None:
        self._session = session
        self._stream = stream

    async def receive(self) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        stream = self._stream
        session = self._session
        while not stream.buffer:
            if stream.ended:
                error = stream.end_error
                if error is not None:
                    raise remote_error(str(error["code"]), str(error["message"]), error.get("data"))
                raise trio.EndOfChannel
            if session.input_over:
                raise RequestCancelled(
                    "the client half-closed the connection before it ended the stream"
                )
            await stream.lot.park()
            if stream.error is not None:
                raise remote_error(*stream.error)  # (its cancel is on its way too)
        item: T = stream.buffer.popleft()
        stream.consumed += 1
        if stream.consumed >= stream.refill and not stream.ended:
            session._grant(stream, stream.consumed)
        return item

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None


class ItemSenderImpl(ItemSender[T]):
    """The :class:`ItemSender` a channel-style server or bidi stream's handler is given."""

    __slots__ = ("_session", "_stream")

    def __init__(self, session: Streams, stream: ServerStream) -> None:
        self._session = session
        self._stream = stream

    async def send(self, item: T) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        stream = self._stream
        session = self._session
        if not stream.send_credit:
            await session._wait_credit(stream)
        data = session.ctx.pack(item)  # a TypeError is the handler's to see
        stream.send_credit -= 1
        session._send_items(stream, [data])
        session._push()
        if session._backed_up():
            await session._make_room()


class _Gatherer(ItemSender[T]):
    """A channel-style server stream called as a unary method: its items, gathered."""

    __slots__ = ("items", "limit", "name", "pack", "size")

    def __init__(self, method: Method, ctx: ServerContext) -> None:
        self.items: list[Any] = []
        self.size = 0
        self.limit = ctx.max_frame
        self.pack = ctx.pack
        self.name = method.name

    async def send(self, item: T) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self.add(item)

    def add(self, item: Any) -> None:
        self.size += len(self.pack(item))
        if self.size > self.limit:
            raise InvalidParams(
                f"{self.name} streams its items: gathered into one reply they pass "
                f"max_frame ({self.limit} bytes); call it as a server stream "
                "(protocol version 2)"
            )
        self.items.append(item)


class Streams:
    """Streaming calls of one session (a part of :class:`~.session.Session`)."""

    # Set by Session.__init__.
    ctx: ServerContext
    state: ConnectionView
    calls: dict[int, Call]
    active: int
    outbox: list[bytes]
    queue: collections.deque[Call]
    sending: bool
    waking: int
    backlog_msgids: dict[int, int]
    streams: dict[int, ServerStream]
    early: dict[int, EarlyStream]
    input_over: bool
    stream_version: bool

    if TYPE_CHECKING:
        # Provided by the other parts of Session.
        def _error(self, msgid: int | None, code: str, message: str, name: str = "") -> None: ...
        def _file(self, call: Call) -> None: ...
        def _violation(self, v: wire.ProtocolViolation) -> None: ...
        def _add_worker(self) -> None: ...
        def _backed_up(self) -> bool: ...
        async def _flush(self) -> None: ...
        async def _wait_for_room(self) -> None: ...

    # -- starting ----------------------------------------------------------------------

    def _start_stream(
        self,
        msgid: int | None,
        method: Method,
        params: list[Any],
        options: dict[Any, Any] | None,
        deadline: float,
    ) -> bool:
        """Start a streaming call, or answer why it cannot start; False if the request
        is a plain unary call after all (a unary method, with streams not spoken here)."""
        ctx = self.ctx
        parsed = wire.stream_options(options) if self.stream_version else None
        if isinstance(parsed, wire.ProtocolViolation):
            self._error(msgid, parsed.code, parsed.message, method.name)
            return True
        if parsed is None:
            if method.stream is None:
                return False  # a unary method; the stream option means nothing here
            if method.stream is not StreamKind.SERVER:
                self._error(
                    msgid,
                    ErrorCode.INVALID_PARAMS,
                    f"{method.name} is a {method.stream} stream: it needs protocol "
                    'version 2 streams (the request option "stream")',
                    method.name,
                )
                return True
            self._queue_stream_call(msgid, method, params, deadline, None)
            return True
        kind, credit = parsed
        if method.stream is not kind:
            what = "unary method" if method.stream is None else f"{method.stream} stream"
            self._error(
                msgid,
                ErrorCode.INVALID_PARAMS,
                f"{method.name} is a {what}, not a {kind} stream",
                method.name,
            )
            return True
        assert msgid is not None  # notifications have no options
        stream = ServerStream(msgid, kind, credit or 0, ctx.stream_credit)
        early = self.early.pop(msgid, None) if self.early else None
        if early is not None:
            if early.error is not None:
                ctx.count_error(ErrorCode.MALFORMED)
                self._error(msgid, ErrorCode.MALFORMED, early.error, method.name)
                return True
            if early.credit and stream.sends:
                stream.send_credit += early.credit
                if stream.send_credit > wire.MAX_CREDIT:
                    self._error(msgid, ErrorCode.MALFORMED, _TOO_MUCH_CREDIT, method.name)
                    return True
            stream.ended = early.ended
            stream.end_error = early.end_error
        self.streams[msgid] = stream
        self._queue_stream_call(msgid, method, params, deadline, stream)
        return True

    def _queue_stream_call(
        self,
        msgid: int | None,
        method: Method,
        params: list[Any],
        deadline: float,
        stream: ServerStream | None,
    ) -> None:
        if stream is None:
            call: Call = Call(msgid, method, params, self._gather(method, params), deadline)
        else:
            assert msgid is not None
            call = stream.call = StreamCall(
                msgid, method, params, self._run_stream(stream, method, params), deadline, stream
            )
        self._file(call)

    # -- running -----------------------------------------------------------------------

    async def _run_stream(self, stream: ServerStream, method: Method, params: list[Any]) -> Any:
        """The awaitable of a streaming call: the handler, fed and drained."""
        try:
            stream.started = True
            args: list[Any] = []
            for what in method.injected:
                if what == "receiver":
                    args.append(ItemReceiverImpl(self, stream))
                else:
                    args.append(ItemSenderImpl(self, stream))
            handler = method.fn(*args, *params)
            if stream.receives and not stream.ended:
                self._grant(stream, stream.window)  # the go-ahead
                stream.go_read = self.state.bytes_in
            result = None
            if method.generator:
                await self._produce(stream, handler)
            else:
                result = await handler
            if stream.error is not None:
                # A protocol error came after the handler's last checkpoint.
                raise remote_error(*stream.error)
            return None if stream.kind is StreamKind.SERVER else result
        finally:
            if self.streams.get(stream.msgid) is stream:
                del self.streams[stream.msgid]

    async def _gather(self, method: Method, params: list[Any]) -> list[Any]:
        """A server stream called as a unary method: all its items in one result (§12.8)."""
        gatherer: _Gatherer[Any] = _Gatherer(method, self.ctx)
        if not method.generator:
            await method.fn(gatherer, *params)
            return gatherer.items
        agen = method.fn(*params)
        try:
            async for item in agen:
                gatherer.add(item)
        finally:
            await agen.aclose()
        return gatherer.items

    async def _produce(self, stream: ServerStream, agen: AsyncGenerator[Any, None]) -> None:
        """Drive a generator: ask for an item only with a credit for it; batch what is ready.

        The inner loop takes the items the generator has ready at once, while
        credits last, with the credit counted in a local: only the reading task
        adds credit, and it runs only when this one yields (every ``await``
        below writes the count back first).
        """
        pack = self.ctx.pack
        anext = agen.__anext__
        batch: list[bytes] = []
        append = batch.append
        size = 0
        try:
            while True:
                credit = stream.send_credit
                if not credit:
                    if batch:
                        self._send_items(stream, batch)
                        batch.clear()
                        size = 0
                    await self._wait_credit(stream)
                    continue
                step = None
                while credit:
                    step = anext()
                    try:
                        trap = step.send(None)
                    except StopIteration as done:
                        item = done.value
                        step = None
                    else:
                        break  # about to block: the slow path below
                    try:
                        data = pack(item)
                    except Exception as exc:
                        raise _unencodable(exc) from exc
                    append(data)
                    size += len(data)
                    credit -= 1
                    if size >= BATCH_BYTES:
                        break
                stream.send_credit = credit
                if batch and (step is not None or size >= BATCH_BYTES):
                    # Blocking, or a full batch: what is ready leaves first.
                    self._send_items(stream, batch)
                    batch.clear()
                    size = 0
                    self._push()
                if step is None:
                    if size == 0 and self.outbox and self._backed_up():
                        await self._make_room()
                    continue
                item = await _step(step, trap)
                try:
                    data = pack(item)
                except Exception as exc:
                    raise _unencodable(exc) from exc
                append(data)
                size += len(data)
                stream.send_credit -= 1
        except StopAsyncIteration:
            pass  # the generator is done: the response follows the items
        finally:
            if batch:
                self._send_items(stream, batch)  # k items, then the error (or cancel)
            await agen.aclose()

    async def _wait_credit(self, stream: ServerStream) -> None:
        """Wait until the client grants a credit (sending what is queued first)."""
        if self.outbox:
            await self._flush()
        idle = self.ctx.stream_idle_timeout
        with trio.move_on_after(idle if idle > 0 else math.inf):
            while not stream.send_credit:
                if self.input_over:
                    raise RequestCancelled(
                        "the client half-closed the connection while the stream waited "
                        "for its credit"
                    )
                await stream.lot.park()
            return
        raise DeadlineExceeded(
            f"the stream waited for the client's credit longer than stream_idle_timeout "
            f"({idle:g} s)"
        )

    async def _make_room(self) -> None:
        """While too many reply bytes wait to be sent, help send them (backpressure)."""
        while self.outbox and self._backed_up():
            if self.sending:
                await self._wait_for_room()
            else:
                await self._flush()

    # -- sending -----------------------------------------------------------------------

    def _send_items(self, stream: ServerStream, batch: list[bytes]) -> None:
        """Queue one items message holding the packed items of ``batch``."""
        body = wire.items_head(stream.msgid, len(batch), pack=self.ctx.pack) + b"".join(batch)
        self.outbox.append(len(body).to_bytes(4, "big"))
        self.outbox.append(body)

    def _grant(self, stream: ServerStream, n: int) -> None:
        """Grant the client ``n`` more items on ``stream``."""
        stream.recv_credit += n
        stream.consumed = 0
        self.outbox.append(wire.encode_credit(stream.msgid, n, pack=self.ctx.pack))
        self._push()

    def _push(self) -> None:
        """Something was queued from inside a handler: have a worker send it.

        The worker runs once the handler yields, so what the handler queues
        until then leaves in one write.
        """
        if not self.sending and not self.waking:
            self._add_worker()

    # -- receiving ---------------------------------------------------------------------

    def _stream_message(self, event: wire.Items | wire.Credit | wire.End) -> None:
        """Apply items, credit or end from the client (also while the connection is full)."""
        msgid = event.msgid
        stream = self.streams.get(msgid)
        if stream is None:
            if msgid in self.backlog_msgids:
                self._early(msgid, event)
            return  # no such stream (any more): dropped (§12.4)
        if type(event) is wire.Credit:
            if not stream.sends:
                return  # a client stream's server sends nothing: the credit is moot
            total = stream.send_credit + event.n
            if total > wire.MAX_CREDIT:
                self._end_stream(stream, _TOO_MUCH_CREDIT)
                return
            if not stream.send_credit:
                stream.lot.unpark_all()
            stream.send_credit = total
            return
        if type(event) is wire.Items:
            items = event.items
            if stream.ended:
                self._end_stream(stream, "items after the client's end")
            elif stream.receives and stream.go_read in (-1, self.state.bytes_in):
                # No go-ahead yet, or read before it was queued (so sent): the rest
                # of the request's own read may be applied after its handler started.
                self._end_stream(stream, _BEFORE_GO_AHEAD)
            elif len(items) > stream.recv_credit:
                self._end_stream(
                    stream,
                    f"{len(items)} items with {stream.recv_credit} credits granted"
                    + ("" if stream.receives else " (a server stream receives none)"),
                )
            else:
                stream.recv_credit -= len(items)
                stream.buffer.extend(items)
                stream.lot.unpark_all()
            return
        assert type(event) is wire.End
        if stream.ended:
            self._end_stream(stream, "a second end")
            return
        stream.ended = True
        stream.end_error = event.error
        stream.lot.unpark_all()

    def _early(self, msgid: int, event: wire.Items | wire.Credit | wire.End) -> None:
        """A stream message for a request that waits for room: kept until it starts."""
        early = self.early.get(msgid)
        if early is None:
            early = self.early[msgid] = EarlyStream()
        if early.error is not None:
            return
        if type(event) is wire.Items:
            early.error = _BEFORE_GO_AHEAD
        elif type(event) is wire.Credit:
            early.credit += event.n
            if early.credit > wire.MAX_CREDIT:
                early.error = _TOO_MUCH_CREDIT
        else:
            assert type(event) is wire.End
            if early.ended:
                early.error = "a second end"
            early.ended = True
            early.end_error = event.error

    def _stream_violation(self, v: wire.ProtocolViolation) -> None:
        """A malformed items, credit or end message (§12.6)."""
        msgid = v.msgid
        if msgid is None:
            self._violation(v)  # no stream named: a notice
            return
        stream = self.streams.get(msgid)
        if stream is not None:
            self._end_stream(stream, v.message)
        elif msgid in self.backlog_msgids:
            early = self.early.get(msgid)
            if early is None:
                early = self.early[msgid] = EarlyStream()
            early.error = early.error or v.message
        # else: for no running stream; dropped like any message for it

    def _end_stream(self, stream: ServerStream, why: str) -> None:
        """A stream protocol error: cancel the call, which is answered ``malformed``."""
        if stream.error is not None:
            return
        stream.error = (ErrorCode.MALFORMED, f"stream protocol error: {why}", None)
        del self.streams[stream.msgid]  # nothing more is applied to it
        call = stream.call
        if call is not None:
            call.cancelled_by_client = True  # (answered with stream.error, see _cancel_error)
            if call.scope is not None:
                call.scope.cancel()

    def _end_of_input(self) -> None:
        """The session reads no more (EOF, shutdown, a fatal error): wake every stream
        that waits on the client, to end with ``cancelled``."""
        self.input_over = True
        for stream in list(self.streams.values()):
            stream.lot.unpark_all()


_BEFORE_GO_AHEAD: Final = "items before the server's go-ahead (its first credit)"
_TOO_MUCH_CREDIT: Final = f"more than {wire.MAX_CREDIT} credits outstanding"


def _unencodable(exc: Exception) -> InternalError:
    return InternalError(f"an item cannot be encoded as msgpack: {wire.bounded(str(exc), 200)}")


@types.coroutine
def _step(coro: Any, trap: Any) -> Generator[Any, Any, Any]:
    """Finish awaiting ``coro`` (an ``__anext__`` awaitable) after it yielded ``trap``.

    What ``await`` does after the first step, as ``calls._resume`` does for a
    handler, in the context already current.
    """
    while True:
        try:
            value = yield trap
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # Cancelled included: the generator must see it
            try:
                trap = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                trap = coro.send(value)
            except StopIteration as done:
                return done.value
