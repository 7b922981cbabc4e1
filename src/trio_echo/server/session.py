"""The session of one framed or msgpack-rpc stream connection: reading, the backlog, limits.

Theory of operation
-------------------
The engine keeps the hot path short. The task that reads decodes each read
at once. A well-formed request for a plain ``def`` handler is answered
inline and its encoded reply appended to an outbox. ``async def`` and
``blocking=True`` calls are queued, and the reading task runs them itself
right after the read (the worker pool, :mod:`.calls`), so a handler that never
blocks costs no task switch; when one does block, a worker task takes over
reading. ``blocking=True`` handlers run on a thread through the server's
capacity limiter. Whoever has replies ready calls
:meth:`Outbox._flush` (:mod:`.outbox`): if no one is sending, it becomes the
sender and writes everything queued in one ``send_all`` until the outbox is
empty; otherwise it leaves its reply to the sender already at work. So
replies ready at one moment leave in one syscall, and no sender task or
channel sits between a handler and the socket. On a socket the replies are
first offered to the kernel with one non-blocking write, and a read costs one
trip through Trio's scheduler, not two (see ``sockio``); Trio's ``send_all``
is only needed when the socket's buffer is full.

Backpressure and hostile input: the reader stops reading while the outbox
holds more than ``OUTBOX_HIGH_WATER`` bytes (a client that does not read
stalls its own requests in the kernel's buffers, and ``write_timeout`` closes
it if it never reads). At ``max_inflight`` a connection keeps reading, up to
``FULL_READ_BUDGET`` bytes: new requests wait undecoded, as bytes, in
``backlog`` (the decoder gives back what it decoded past the limit, see
``wire.FrameDecoder.rewind``), while cancels are applied at once and a reset is
seen at once; past the budget TCP backpressure takes over and the socket is
checked once a second for the peer's leaving. Every byte a connection holds
(a partial message, the backlog) counts against the server-wide
``max_buffered_bytes``.
A message longer than ``wire.LARGE_MESSAGE`` is decoded a slice at a time with
a checkpoint between slices, a few at once server-wide, so that one message
cannot stall the event loop.
"""

from __future__ import annotations

import collections
import errno
import logging
import time
from typing import TYPE_CHECKING, Any, Final

import trio

from .. import wire
from ..wire import ErrorCode
from . import metrics as _metrics
from . import sockio as _sockio
from .calls import Call, CallRunner
from .dispatch import Dispatcher
from .goaway import Goaway
from .outbox import Outbox
from .streams import EarlyStream, ServerStream, Streams

if TYPE_CHECKING:
    from .context import ConnectionView

__all__ = ["FULL_READ_BUDGET", "RECEIVE_SIZE", "Session"]

log = logging.getLogger("trio_echo")

#: Bytes asked of the kernel per read.
RECEIVE_SIZE: Final = wire.RECEIVE_SIZE
#: At max_inflight a connection keeps reading (cancels, resets) until it holds this
#: many bytes of undecoded requests and partial message; then TCP backpressure.
FULL_READ_BUDGET: Final = 1024 * 1024
#: A full connection past its budget is checked for a reset this often.
RESET_POLL_S: Final = 1.0

_REQUEST: Final = 0
_RESPONSE: Final = wire.MessageType.RESPONSE.value
_CANCEL: Final = wire.MessageType.CANCEL.value
_ITEMS: Final = wire.MessageType.ITEMS.value
_END: Final = wire.MessageType.END.value
_LARGE: Final = wire.LargeMessage

#: Stands in for an empty deque that was never needed (see Session.__init__).
NO_DEQUE: Final[collections.deque[Any]] = ()  # type: ignore[assignment]
#: Stands in for an empty set of msgids that was never needed.
NO_MSGIDS: Final[set[int]] = frozenset()  # type: ignore[assignment]


class _Leader:
    """A reading task's token (Session.reader), called when a handler it runs is
    about to block. One small object where a closure and a token took ~200 B (#15)."""

    __slots__ = ("session",)

    def __init__(self, session: Session) -> None:
        self.session = session

    def __call__(self) -> None:
        # A handler is about to block this task: let a worker read meanwhile.
        session = self.session
        if session.reader is self:
            session.reader = None
            session.reader_wanted = True
            session._on_block()


class Session(Dispatcher, CallRunner, Outbox, Goaway, Streams):
    """The framed / msgpack-rpc message session of one connection (see the module doc).

    Its parts live in their own modules: :class:`~.dispatch.Dispatcher` (the
    hot path and starting calls), :class:`~.calls.CallRunner` (the worker pool),
    :class:`~.outbox.Outbox` (sending replies), :class:`~.goaway.Goaway`
    (draining a version 2 session) and :class:`~.streams.Streams` (streaming
    calls, version 2); this class owns their state,
    the read loop and what a connection holds (the backlog, the budgets).
    """

    # Slots, not a __dict__: a dict of ~40 attributes took ~1.5 KB of every idle
    # connection. (The parts have no __slots__, so a __dict__ is still there, empty
    # unless metrics replace _process for the connection.)
    __slots__ = (
        "active",
        "age_scope",
        "backlog",
        "backlog_bytes",
        "backlog_msgids",
        "calls",
        "cancelled_early",
        "closing",
        "counted",
        "ctx",
        "decoder",
        "early",
        "eof",
        "fd",
        "framed",
        "going_away",
        "held",
        "input_over",
        "logged_violation",
        "nursery",
        "outbox",
        "outbox_bytes",
        "parked",
        "queue",
        "read_done",
        "read_over",
        "reader",
        "reader_wanted",
        "receive",
        "room",
        "sending",
        "state",
        "stream",
        "stream_backlog",
        "stream_version",
        "streams",
        "version",
        "waiting",
        "wake",
        "wake_reader",
        "waking",
        "workers_done",
    )

    def __init__(self, state: ConnectionView, framed: bool) -> None:
        ctx = state.ctx
        self.state = state
        self.ctx = ctx
        self.stream = state.stream
        self.framed = framed
        #: The protocol version messages are read in (msgpack-rpc streams speak 1).
        self.version = state.version if framed else wire.PROTOCOL_VERSION
        #: Streams (protocol.md §12) exist on version 2 framed connections.
        self.stream_version = self.version >= wire.STREAM_VERSION
        max_frame, max_containers, large = ctx.max_frame, ctx.max_containers, wire.LARGE_MESSAGE
        self.decoder: wire.FrameDecoder | wire.StreamDecoder = (
            wire.FrameDecoder(max_frame, max_containers=max_containers, large=large)
            if framed
            # shared: one hot-path Unpacker for all msgpack-rpc connections (#15).
            else wire.StreamDecoder(
                max_frame, max_containers=max_containers, large=large, shared=True
            )
        )
        self.calls: dict[int, Call] = {}
        self.active = 0  # requests + notifications running on this connection
        self.outbox: list[bytes] = []
        # Bytes of outbox[:counted]; the rest is summed only when someone asks
        # (see _backed_up), which keeps a byte count off the per-reply path.
        self.outbox_bytes = 0
        self.counted = 0
        self.sending = False
        # What an idle connection holds is kept small (issue #15: 10,000 idle
        # connections in one process): the parking lots, the Event and the deques
        # below are made when first needed. An empty deque costs ~600 B, so the
        # queue and the backlog start as NO_DEQUE, an empty tuple, replaced by a
        # deque on the first append (the only operation the tuple lacks).
        # Tasks wait in `room` for requests to finish or the outbox to drain;
        # `waiting` counts them, as ParkingLot's own truth test is a Python call.
        self.room: trio.lowlevel.ParkingLot | None = None
        self.waiting = 0
        # The worker pool (see _add_worker).
        self.queue: collections.deque[Call] = NO_DEQUE
        self.waking = 0  # workers woken or started that have not looked for work yet
        self.parked = 0
        self.wake: trio.lowlevel.ParkingLot | None = None
        self.workers_done = False
        # Leader/follower reading (see _lead): the token of the task reading now.
        self.reader: object | None = None
        self.reader_wanted = False
        # Reading is over; read_done is made only if run() must wait for that.
        self.read_over = False
        self.read_done: trio.Event | None = None
        # Messages read but not started, still encoded (bytes, a LargeMessage or,
        # last, a fatal violation), because the connection was at max_inflight
        # or they need a large decode; they go before anything read later.
        self.backlog: collections.deque[Any] = NO_DEQUE
        self.backlog_bytes = 0
        # msgid -> how many requests with it wait in the backlog, and the ones
        # among them a cancel reached before they started (NO_MSGIDS until one does).
        self.backlog_msgids: dict[int, int] = {}
        self.cancelled_early: set[int] = NO_MSGIDS
        # Streaming calls by msgid, and what came for stream requests still in the
        # backlog (see .streams); large stream messages wait in stream_backlog, to be
        # decoded a slice at a time and applied whether or not there is room.
        self.streams: dict[int, ServerStream] = {}
        self.early: dict[int, EarlyStream] = {}
        # (A list: rarely used, and an empty one costs a tenth of an empty deque.)
        self.stream_backlog: list[Any] = []
        # Set once the session reads no more: streams waiting on the client end.
        self.input_over = False
        # Bytes this connection counts against ctx.buffered_bytes.
        self.held = 0
        # The reader's receive while the connection is full: cancelled when room frees.
        self.wake_reader: trio.CancelScope | None = None
        self.eof = False
        self.nursery: trio.Nursery | None = None
        self.logged_violation = False
        self.closing = False
        # Protocol version 2: why goaway was sent, once it was (see .goaway).
        self.going_away: wire.GoawayReason | None = None
        # Covers --max-connection-age's timer, which must not outlive the session
        # (made with the timer).
        self.age_scope: trio.CancelScope | None = None
        self.fd = _sockio.socket_fd(self.stream)
        self.receive = _sockio.receiver(self.stream)
        if ctx.metrics is not None:
            # With metrics on, each batch of messages is timed (see metrics.counted).
            self._process = self._process_metered  # type: ignore[method-assign]

    def busy(self) -> bool:
        return bool(
            self.active or self.outbox or self.sending or self.backlog or self.stream_backlog
        )

    def trim(self) -> None:
        """Free what a quiet connection need not keep (the decoder's buffers)."""
        self.decoder.release()

    def abandon(self) -> None:
        """Account for calls cut short when the connection ends early.

        A reset, the idle reaper or the end of the grace period cancels the
        workers, so their calls never reach ``_finish``.
        """
        if self.active:
            self.ctx.requests_in_flight -= self.active
            self.active = 0
        while self.queue:
            self.queue.popleft().awaitable.close()
        if self.backlog:
            self.backlog.clear()
        self.stream_backlog.clear()
        self.backlog_bytes = 0
        self.ctx.buffered_bytes -= self.held
        self.held = 0

    async def run(self, initial: bytes) -> None:
        ctx = self.ctx
        state = self.state
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            # The nursery's scope is the connection's whole scope from now on
            # (ClientConnection.run left its own before the session began): one
            # cancel scope less per connection (#15). Cancelling it ends the session.
            state.whole_scope = nursery.cancel_scope
            if self.framed:
                hello = ctx.hellos[self.state.version]
                self._enqueue(wire.encode_notification("hello", [hello], pack=ctx.pack))
                if self.state.version >= 2 and ctx.max_connection_age > 0:
                    self.age_scope = trio.CancelScope()
                    nursery.start_soon(self._run_age_timer)
            items = self.decoder.feed(initial)
            del initial  # (the caller dropped its reference: see ClientConnection._run)
            done = self._process(items)
            if done < len(items):
                self._hold(self.decoder.rewind(done))
            del items  # decoded objects must not outlive their read (see _read_loop)
            self._account()
            await self._lead()
            # This task may have handed reading to a worker (see _lead).
            if self.read_over:
                await trio.lowlevel.checkpoint()  # (as waiting on a set Event would)
            else:
                self.read_done = trio.Event()
                await self.read_done.wait()
            # Half-close, shutdown or a fatal error: answer what is in flight, then close.
            while self.active:
                await self._wait_for_room()
            self.workers_done = True
            if self.wake is not None:
                self.wake.unpark_all()
            if self.age_scope is not None:
                self.age_scope.cancel()
        if self.outbox and not nursery.cancel_scope.cancel_called:
            # The last replies; closing the connection (whole_scope) stops this send too.
            with trio.CancelScope() as state.whole_scope:
                await self._flush()

    async def _run_age_timer(self) -> None:
        assert self.age_scope is not None
        with self.age_scope:
            await self._age_out(self.ctx.max_connection_age, self.ctx.grace)

    async def _lead(self) -> None:
        """Hold the reader role: read, answer quick requests, run queued calls.

        Returns when reading is over (EOF, shutdown, a fatal error), or when
        a handler this task ran blocked and another task took over reading
        meanwhile (leader/follower: whoever is free reads). Running the calls
        of a read in the reading task itself means an async handler that
        does not block costs no task switch at all. (The read loop is written
        inline, not in a coroutine of its own: a frame less while idle, #15.)
        """
        state = self.state
        ctx = self.ctx
        max_inflight = ctx.max_inflight
        receive = self.receive
        fd = self.fd
        read_now = _sockio.read_now
        # (self.decoder.feed and self._process are not kept in locals: each bound
        # method would cost 64 B for as long as the connection is idle, #15.)
        token = on_block = _Leader(self)
        self.reader = token
        while True:
            # One cancel scope serves every call this task runs until one of
            # them is cancelled: a scope per read cost ~8% of an async echo.
            # It is also the read scope, which shutdown cancels only while this
            # task waits to read (state.in_read), never while a call runs: so the
            # calls already read run on and get answered. (One scope, not two
            # nested: each costs ~600 B while the connection is idle.)
            running: list[Call | None] = [None]
            # True when reading is over, None when another task reads now,
            # False when the scope must be replaced.
            over: bool | None = True
            with trio.CancelScope() as scope:
                state.read_scope = scope
                while True:
                    if self.reader is not token:
                        # A handler this task ran blocked, and reading was offered to a worker.
                        if self.reader is not None or not self.reader_wanted:
                            # Another task reads now; send what this one answered.
                            if self.outbox:
                                await self._flush()
                            over = None
                            break
                        # Nobody took over while the handler ran: carry on reading.
                        self.reader_wanted = False
                        self.reader = token
                    if self.backlog or self.stream_backlog:
                        await self._drain()
                    if self.queue:
                        if not await self._run_session(on_block, scope, running):
                            over = False
                            break
                        continue
                    if self.outbox and not self._write_now():
                        await self._flush()
                    if self.closing:  # a fatal error, reached in order (backlog first)
                        over = True
                        break
                    while self.outbox and self._backed_up():
                        if state.stop_requested and not self.backlog:
                            break
                        # Shutdown may cut this wait short only if nothing read is
                        # pending: requests already read get answered like the rest.
                        state.in_read = not self.backlog
                        await self._wait_for_room()
                        state.in_read = False
                    if self.eof or state.stop_requested:
                        if not self.backlog:
                            over = True  # EOF or shutdown: answer what is in flight, then close
                            break
                        if self.streams and not self.input_over:
                            self._end_of_input()  # streams waiting on the client must not hold room
                        await self._wait_for_room()  # requests already read are answered too
                        continue
                    if self.active >= max_inflight and self.going_away is None:
                        await self._listen_while_full()
                        continue
                    state.in_read = True
                    if fd < 0:
                        data = await receive(RECEIVE_SIZE)
                    else:
                        # sockio.receive, written out: a coroutine less while idle (#15).
                        await trio.lowlevel.checkpoint()
                        while (got := read_now(fd, RECEIVE_SIZE)) is None:
                            await trio.lowlevel.wait_readable(fd)
                        data = got
                    state.in_read = False
                    if not data:
                        over = True  # EOF: answer what is in flight, then close
                        break
                    n = len(data)
                    state.bytes_in += n
                    ctx.bytes_in += n
                    # The hot path: decode and answer at once (the backlog is empty here).
                    items = self.decoder.feed(data)
                    done = self._process(items)
                    if done < len(items):
                        self._hold(self.decoder.rewind(done))
                    # Drop the read's decoded objects before the next await: kept until the
                    # next read, a 60 KiB message of empty arrays holds ~4 MiB of objects for
                    # as long as its connection is idle or full (issue #10).
                    del items, data
                    if self.held or self.decoder.pending:
                        self._account()
            if self._interrupted(running):
                continue  # a fresh scope for the next calls
            if scope.cancelled_caught:
                break  # shutdown stopped the read
            if over is None:
                return  # another task reads now
            if over:
                break
        self.reader = None
        if self.streams:
            self._end_of_input()
        self.read_over = True
        if self.read_done is not None:
            self.read_done.set()

    def _process_metered(self, items: list[Any]) -> int:
        """Dispatcher._process, then the batch's quick calls observed (metrics on only)."""
        start = self.ctx.batch_started = time.perf_counter()
        done = Dispatcher._process(self, items)
        batch = self.ctx.metrics_batch
        if batch:
            _metrics.settle(batch, time.perf_counter() - start)
        return done

    async def _listen_while_full(self) -> None:
        """At max_inflight: read on, holding new requests as bytes, until room frees.

        Cancels are applied as they arrive, and a reset ends the connection at
        once. Past FULL_READ_BUDGET bytes held, the rest stays in the kernel
        (TCP backpressure) and the socket is checked once a second for the peer's
        leaving (sockio.peer_gone).
        """
        state = self.state
        if self.held >= FULL_READ_BUDGET:
            state.in_read = not self.backlog
            with trio.move_on_after(RESET_POLL_S):
                await self._wait_for_room()
            state.in_read = False
            if _sockio.peer_gone(self.stream):
                raise ConnectionResetError(errno.ECONNRESET, "the peer is gone")
            return
        with trio.CancelScope() as wake:
            self.wake_reader = wake
            state.in_read = not self.backlog
            try:
                data = await self.receive(RECEIVE_SIZE)
            finally:
                self.wake_reader = None
                state.in_read = False
        if wake.cancelled_caught:
            return  # a call finished: room for the backlog
        if not data:
            self.eof = True  # half-closed: answer what was read, then close
            if self.streams:
                self._end_of_input()
            return
        state.bytes_in += len(data)
        self.ctx.bytes_in += len(data)
        self._hold(self.decoder.split(data))
        self._account()

    def _hold(self, raws: list[Any]) -> None:
        """Keep messages that cannot start yet as bytes; apply cancels among them now,
        and the messages of running streams (items, credit, end: version 2)."""
        if not raws:
            return
        backlog = self.backlog
        if backlog is NO_DEQUE:
            backlog = self.backlog = collections.deque()
        for raw in raws:
            data = raw.data if type(raw) is _LARGE else raw
            if type(data) is not bytes:  # a fatal violation: nothing follows it
                backlog.append(raw)
                continue
            kind = wire.peek_type(data)
            if kind is not None and _ITEMS <= kind <= _END and self.stream_version:
                if type(raw) is _LARGE or self.stream_backlog:
                    # Decoded a slice at a time (see _drain), in order with the rest.
                    self.stream_backlog.append(raw)
                    self.backlog_bytes += len(data)
                else:
                    self._dispatch(wire.parse_message(wire.decode_message(data), self.version))
                continue
            if kind == _CANCEL:
                event = wire.parse_message(wire.decode_message(data))
                if type(event) is wire.Cancel:
                    self._cancel(event.msgid)
                    continue
            elif kind == _REQUEST:
                msgid = wire.peek_msgid(data)
                if msgid is not None:
                    self.backlog_msgids[msgid] = self.backlog_msgids.get(msgid, 0) + 1
            backlog.append(raw)
            self.backlog_bytes += len(data)

    async def _drain(self) -> None:
        """Start what the backlog holds, in order, while there is room.

        The stream messages held go first, room or not (see _hold).
        """
        backlog = self.backlog
        ctx = self.ctx
        while self.stream_backlog and not self.closing:
            raw = self.stream_backlog.pop(0)
            large = type(raw) is _LARGE
            self.backlog_bytes -= len(raw.data if large else raw)
            obj = await self._decode_large(raw) if large else wire.decode_message(raw)
            self._dispatch(wire.parse_message(obj, self.version))
        while backlog and not self.closing:
            raw = backlog[0]
            large = type(raw) is _LARGE
            data = raw.data if large else raw
            if type(data) is not bytes:
                backlog.popleft()
                self._dispatch(data)  # the fatal violation that ended the input
                break
            kind = wire.peek_type(data)
            if (
                kind != _CANCEL
                and kind != _RESPONSE
                and self.active >= ctx.max_inflight
                and self.going_away is None  # after a goaway nothing starts: no room needed
            ):
                break  # a request or notification (or what may be one): no room yet
            backlog.popleft()
            self.backlog_bytes -= len(data)
            msgid = None
            if kind == _REQUEST:
                msgid = wire.peek_msgid(data)
                if msgid is not None and self._leaves_backlog(msgid):
                    self.early.pop(msgid, None)
                    continue  # cancelled before it started: answered then, never run
            if large:
                obj = await self._decode_large(raw)
            else:
                obj = wire.decode_message(data, ctx.max_containers, stream=not self.framed)
            self._process([obj])
            if self.early and msgid is not None and msgid not in self.backlog_msgids:
                self.early.pop(msgid, None)  # kept for a stream that did not start
        self._account()

    def _leaves_backlog(self, msgid: int) -> bool:
        """Book a request with ``msgid`` out of the backlog; True if it was cancelled there."""
        left = self.backlog_msgids[msgid] - 1
        if left:
            self.backlog_msgids[msgid] = left
        else:
            del self.backlog_msgids[msgid]
        if msgid in self.cancelled_early:
            self.cancelled_early.remove(msgid)
            return True
        return False

    async def _decode_large(self, message: wire.LargeMessage) -> Any:
        """Decode a long message a slice at a time, yielding between slices."""
        async with self.ctx.decoding:  # a few at once, server-wide (memory)
            decoder = wire.SlicedDecoder(message, self.ctx.max_containers, stream=not self.framed)
            while not decoder.step():
                await trio.lowlevel.checkpoint()
        return decoder.result

    def _account(self) -> None:
        """Count what the connection holds against the server's ingress budget."""
        held = self.decoder.pending + self.backlog_bytes
        delta = held - self.held
        if not delta:
            return
        ctx = self.ctx
        self.held = held
        ctx.buffered_bytes += delta
        if delta > 0 and ctx.buffered_bytes > ctx.max_buffered_bytes and not self.closing:
            ctx.warn_once(
                "max_buffered_bytes",
                "max_buffered_bytes (%d) reached: closing connection %s (it held %d bytes)",
                ctx.max_buffered_bytes,
                self.state.peer,
                held,
            )
            self._violation(
                wire.ProtocolViolation(
                    ErrorCode.OVERLOADED,
                    f"the server's buffers for incoming messages are full "
                    f"(max_buffered_bytes {ctx.max_buffered_bytes})",
                    fatal=True,
                )
            )
            # Nothing held is started now: give the bytes back at once.
            if self.backlog:
                self.backlog.clear()
            self.stream_backlog.clear()
            self.backlog_bytes = 0
            ctx.buffered_bytes -= self.held
            self.held = 0
