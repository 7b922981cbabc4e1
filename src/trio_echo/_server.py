"""The Trio server: accept loop, mode sniffing, and the per-connection engine.

Theory of operation
-------------------
Every connection is one task. It reads until :func:`wire.sniff_mode` decides
the connection's kind, then runs raw echo (a plain receive/send loop) or the
message engine, :class:`_MessageConnection`, for framed and msgpack-rpc
stream connections.

The message engine keeps the hot path short. One task reads. Each read is
decoded into messages at once; a well-formed request for a plain ``def``
handler is answered inline, and its encoded reply is appended to an outbox.
``async def`` handlers get a task of their own in the connection's nursery
(with a cancel scope registered under their msgid, so ``[3, msgid]`` and
``timeout_ms`` can reach them); ``blocking=True`` handlers go to a worker
thread through a shared capacity limiter. Whoever has a reply ready calls
:meth:`_MessageConnection._flush`: if no one is sending, it becomes the sender
and writes everything queued in one ``send_all`` until the outbox is empty;
otherwise it leaves its reply for the sender already at work. So replies
ready at one moment leave in one syscall, and no sender task or channel hop
sits between a handler and the socket.

Backpressure: the reader stops reading while ``max_inflight`` requests are
running on the connection or while the outbox holds more than
``OUTBOX_HIGH_WATER`` bytes; a client that does not read therefore stalls its
own requests in the kernel's buffers, not in our memory.

A server-wide reaper task wakes a few times per ``idle_timeout`` and closes
connections that have received nothing and owe nothing for that long; the
hot path only bumps a byte counter.
"""

from __future__ import annotations

import collections
import errno
import functools
import logging
import math
import os
import socket
import time
import types
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any, Final

import trio

from . import __version__, wire
from ._builtins import builtin_service
from ._errors import RemoteError
from ._service import HandlerKind, Method, Service
from .wire import ErrorCode, Mode

__all__ = ["Server", "serve", "serve_stream"]

log = logging.getLogger("trio_echo")

#: Bytes asked of the kernel per read.
RECEIVE_SIZE: Final = 65536
#: The reader pauses while more than this many reply bytes wait to be sent.
OUTBOX_HIGH_WATER: Final = 1024 * 1024
#: Idle worker tasks a connection keeps for its next async/blocking calls.
MAX_PARKED_WORKERS: Final = 4
#: A rejected connection (over max_connections) waits this long for a preamble.
REJECT_SNIFF_S: Final = 1.0
#: accept() failing for lack of resources (EMFILE...) is retried this often.
ACCEPT_RETRY_S: Final = 0.1
#: A warning that every refused connection would repeat is logged at most this often.
WARN_EVERY_S: Final = 10.0

# accept(2) errors that mean "out of resources for now", as in trio.serve_listeners.
_ACCEPT_CAPACITY_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)

_MAX_MSGID: Final = wire.MAX_MSGID
# Module globals are faster to reach than enum members on the hot path.
_INLINE: Final = HandlerKind.INLINE
_ASYNC: Final = HandlerKind.ASYNC
_REQUEST: Final = 0


def _mode_from_name(mode: str | Mode | None) -> Mode | None:
    if mode is None or mode == "auto":
        return None
    return mode if isinstance(mode, Mode) else Mode(mode)


class Server:
    """A trio_echo server: built-in methods plus a user :class:`Service`.

    Args:
        service: user methods, served beside the built-ins (``echo``,
            ``ping``, ``sleep``, ``stats``, ``methods``).
        mode: ``"auto"`` (sniff each connection) or ``"framed"``,
            ``"mprpc"``, ``"raw"`` to pin one kind.
        max_frame: largest frame body (or stream message) accepted, in bytes.
        max_inflight: requests and notifications running at once on one
            connection; past it the server stops reading that connection.
        threads: worker threads for ``blocking=True`` handlers.
        grace: seconds a graceful shutdown waits before cancelling what is left.
        max_connections: connections served at once; more are accepted and
            closed (a framed client first gets an ``overloaded`` notice).
        max_requests: requests and notifications in flight server-wide;
            past it requests are answered ``overloaded``.
        idle_timeout: seconds after which a connection that sent nothing and
            is owed nothing is closed (0 disables).
        debug: include tracebacks in ``internal`` error responses.

    Raises:
        ValueError: a user method's name clashes with a built-in.
    """

    def __init__(
        self,
        service: Service | None = None,
        *,
        mode: str | Mode | None = "auto",
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        max_inflight: int = wire.DEFAULT_MAX_INFLIGHT,
        threads: int = 16,
        grace: float = 10.0,
        max_connections: int = 10000,
        max_requests: int = 65536,
        idle_timeout: float = 300.0,
        debug: bool = False,
    ) -> None:
        if max_frame < 1 or max_inflight < 1 or threads < 1:
            raise ValueError("max_frame, max_inflight and threads must be positive")
        self.mode = _mode_from_name(mode)
        self.max_frame = max_frame
        self.max_inflight = max_inflight
        self.grace = grace
        self.max_connections = max_connections
        self.max_requests = max_requests
        self.idle_timeout = idle_timeout
        self.debug = debug
        self.limiter = trio.CapacityLimiter(threads)
        registry = builtin_service(self.stats, self.method_list)
        if service is not None:
            registry.include(service)
        self.service = registry
        self.methods: dict[str, Method] = registry.table()
        # The engine's fast paths: handlers with no annotations to check first.
        self.inline_methods: dict[str, Callable[..., Any]] = {
            m.name: m.fn for m in self.methods.values() if m.kind is _INLINE and not m.checks
        }
        self.pooled_methods: dict[str, Method] = {
            m.name: m for m in self.methods.values() if m.kind is not _INLINE and not m.checks
        }
        self.pack = wire.make_packer()
        self.hello = {
            "protocol": wire.PROTOCOL_VERSION,
            "server": f"trio_echo/{__version__}",
            "max_frame": max_frame,
            "max_inflight": max_inflight,
        }
        # Counters (see stats()).
        self.started_at = time.monotonic()
        self.connections_total = 0
        self.connections_rejected = 0
        self.requests_total = 0
        self.notifications_total = 0
        self.requests_in_flight = 0
        self.errors: dict[str, int] = {}
        self._bytes_in_closed = 0
        self._bytes_out_closed = 0
        self._conns: set[_ConnectionState] = set()
        self._draining = False
        self._shutdown = trio.Event()
        self._all_closed = trio.Event()
        self._listeners: list[trio.SocketListener] = []
        self._rejects_unlogged = 0
        self._reject_logged_at: float | None = None

    # --- public API --------------------------------------------------------------

    async def serve(
        self,
        host: str | None = "127.0.0.1",
        port: int = 7000,
        *,
        reuse_port: bool = False,
        backlog: int | None = None,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host``:``port`` and serve until shut down or cancelled.

        Shaped like :func:`trio.serve_tcp`: ``await nursery.start(server.serve,
        host, 0)`` returns the listeners once they accept connections.
        ``reuse_port`` sets ``SO_REUSEPORT`` so several processes can share
        the port. Returns after :meth:`shutdown` has drained every connection.
        """
        listeners = await open_listeners(host, port, reuse_port=reuse_port, backlog=backlog)
        await self.serve_listeners(listeners, task_status=task_status)

    async def serve_listeners(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve connections from already-open listeners (see :meth:`serve`)."""
        self._listeners = list(listeners)
        async with trio.open_nursery() as connections:
            connections.start_soon(self._reap_idle)
            async with trio.open_nursery() as accepting:
                for listener in self._listeners:
                    accepting.start_soon(self._accept_loop, listener, connections)
                task_status.started(self._listeners)
                await self._shutdown.wait()
                # Cancelling the accept loops closes the listeners.
                accepting.cancel_scope.cancel()
            await self._drain()
            connections.cancel_scope.cancel()

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection over any Trio stream (sniffing its kind), then close it."""
        state = _ConnectionState(self, stream)
        self.connections_total += 1
        self._conns.add(state)
        try:
            await state.run()
        except Exception:
            # A bug must cost one connection, never the server.
            log.exception("internal error on connection %s", state.peer)
        finally:
            self._conns.discard(state)
            self._bytes_in_closed += state.bytes_in
            self._bytes_out_closed += state.bytes_out
            if self._draining and not self._conns:
                self._all_closed.set()

    def shutdown(self) -> None:
        """Begin a graceful shutdown (idempotent).

        The server stops accepting and stops reading new requests, answers
        every request it has already received, closes each connection once
        nothing is in flight, and cancels whatever is left after ``grace``
        seconds; then :meth:`serve` returns.
        """
        self._shutdown.set()

    @property
    def shutting_down(self) -> bool:
        """True once :meth:`shutdown` was called."""
        return self._shutdown.is_set()

    def stats(self) -> dict[str, Any]:
        """A snapshot of the server's counters (the ``stats`` built-in)."""
        conns = self._conns
        return {
            "connections_open": len(conns),
            "connections_total": self.connections_total,
            "connections_rejected": self.connections_rejected,
            "requests_total": self.requests_total,
            "notifications_total": self.notifications_total,
            "requests_in_flight": self.requests_in_flight,
            "errors": dict(self.errors),
            "bytes_in": self._bytes_in_closed + sum(c.bytes_in for c in conns),
            "bytes_out": self._bytes_out_closed + sum(c.bytes_out for c in conns),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "pid": os.getpid(),
            "server": self.hello["server"],
        }

    def method_list(self) -> list[dict[str, str]]:
        """``{"name", "doc"}`` for every method (the ``methods`` built-in)."""
        return [{"name": m.name, "doc": m.doc} for m in self.methods.values()]

    # --- internals ----------------------------------------------------------------

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    async def _accept_loop(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        """Accept until cancelled (which closes the listener).

        Like :func:`trio.serve_listeners`, but out of descriptors (EMFILE and
        kin) it logs once per episode instead of a traceback every retry. The
        open connections are served meanwhile, and new ones wait in the
        kernel's backlog until descriptors free up.
        """
        failures = 0  # failed attempts in the current episode
        reported = False  # the current episode was logged
        last_report = -math.inf
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    failures += 1
                    now = trio.current_time()
                    if now - last_report >= WARN_EVERY_S:  # even if it flaps
                        last_report = now
                        reported = True
                        log.warning(
                            "accept failed: %s; serving the open connections and retrying "
                            "every %gs until resources free up",
                            exc.strerror or exc,
                            ACCEPT_RETRY_S,
                        )
                    await trio.sleep(ACCEPT_RETRY_S)
                    continue
                if failures:
                    if reported:
                        log.warning("accepting again (after %d failed accept attempts)", failures)
                    failures = 0
                    reported = False
                connections.start_soon(self._handle_accepted, stream)

    async def _handle_accepted(self, stream: trio.SocketStream) -> None:
        if len(self._conns) >= self.max_connections:
            self.connections_rejected += 1
            await self._reject(stream)
            return
        # trio's SocketStream already sets TCP_NODELAY.
        await self.serve_stream(stream)

    async def _reject(self, stream: trio.SocketStream) -> None:
        """Over max_connections: tell a framed client why, then close."""
        self.count_error(ErrorCode.OVERLOADED)
        self._rejects_unlogged += 1
        now = trio.current_time()
        if self._reject_logged_at is None or now - self._reject_logged_at >= WARN_EVERY_S:
            log.warning(
                "max_connections (%d) reached: refused %d connection(s)%s",
                self.max_connections,
                self._rejects_unlogged,
                "" if self._reject_logged_at is None else f" in the last {WARN_EVERY_S:g}s",
            )
            self._reject_logged_at = now
            self._rejects_unlogged = 0
        with trio.move_on_after(REJECT_SNIFF_S):
            prefix = b""
            try:
                while len(prefix) < len(wire.PREAMBLE):
                    data = await stream.receive_some(len(wire.PREAMBLE) - len(prefix))
                    if not data:
                        break
                    prefix += data
                    if not wire.PREAMBLE.startswith(prefix):
                        break
                if prefix == wire.PREAMBLE:
                    await stream.send_all(
                        wire.encode_error(
                            None,
                            ErrorCode.OVERLOADED,
                            f"server is at max_connections ({self.max_connections})",
                        )
                    )
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await trio.aclose_forcefully(stream)

    async def _drain(self) -> None:
        self._draining = True
        log.info("shutting down: draining %d connection(s)", len(self._conns))
        for conn in list(self._conns):
            conn.stop_reading()
        if self._conns:
            with trio.move_on_after(self.grace) as scope:
                await self._all_closed.wait()
            if scope.cancelled_caught:
                log.warning(
                    "grace period (%gs) over: cancelling %d connection(s)",
                    self.grace,
                    len(self._conns),
                )

    async def _reap_idle(self) -> None:
        """Close connections idle for idle_timeout; free quiet ones' decoder buffers.

        It runs even with idle_timeout = 0: a msgpack-rpc stream's decoder
        holds ~45 KB while it has seen bytes lately, and is trimmed here after
        a quiet tick, so thousands of idle connections stay cheap.
        """
        idle = self.idle_timeout if self.idle_timeout and self.idle_timeout > 0 else math.inf
        tick = min(1.0, idle / 4)
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            for conn in list(self._conns):
                if conn.bytes_in != conn.seen_bytes_in or conn.busy():
                    conn.seen_bytes_in = conn.bytes_in
                    conn.last_active = now
                    continue
                if conn.engine is not None:
                    conn.engine.decoder.release()
                if now - conn.last_active >= idle:
                    log.debug("closing idle connection %s", conn.peer)
                    conn.close_idle()


class _ConnectionState:
    """One connection from accept to close: sniffing, then raw echo or messages."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "engine",
        "in_read",
        "last_active",
        "peer",
        "raw",
        "read_scope",
        "seen_bytes_in",
        "server",
        "stop_requested",
        "stream",
        "whole_scope",
    )

    def __init__(self, server: Server, stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        self.bytes_in = 0
        self.bytes_out = 0
        self.seen_bytes_in = 0
        self.last_active = trio.current_time()
        self.engine: _MessageConnection | None = None
        self.raw = False
        self.stop_requested = False
        # read_scope covers the current read loop; shutdown cancels it only
        # while the reader sits in a receive (in_read), never mid-send.
        self.in_read = False
        self.read_scope = trio.CancelScope()
        self.whole_scope = trio.CancelScope()
        self.peer = _peer_name(stream)

    def busy(self) -> bool:
        """Owes the client something: a request in flight or a reply (or echo) unsent."""
        if self.raw:
            return self.bytes_out < self.bytes_in
        return self.engine is not None and self.engine.busy()

    def stop_reading(self) -> None:
        self.stop_requested = True
        if self.in_read:
            self.read_scope.cancel()

    def close_idle(self) -> None:
        self.whole_scope.cancel()

    async def run(self) -> None:
        stream = self.stream
        try:
            with self.whole_scope:
                try:
                    await self._run()
                except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
                    # A reset or a vanished peer is routine: one debug line, no traceback.
                    exc = group.exceptions[0]
                    log.debug("connection %s lost: %s", self.peer, _cause(exc))
        finally:
            if self.engine is not None:
                self.engine.abandon()
            await trio.aclose_forcefully(stream)

    async def receive(self) -> bytes:
        """One read (inside read_scope); ``b""`` at EOF or once shutdown began."""
        if self.stop_requested:
            return b""
        self.in_read = True
        data = await self.stream.receive_some(RECEIVE_SIZE)
        self.in_read = False
        self.bytes_in += len(data)
        return data  # type: ignore[return-value]  # sockets give bytes

    async def _run(self) -> None:
        with self.read_scope:
            verdict, prefix = await self._sniff()
        if verdict is None:
            return
        if verdict is Mode.RAW:
            await self._raw_echo(prefix)
            return
        framed = verdict is Mode.FRAMED
        if framed:
            prefix = prefix[len(wire.PREAMBLE) :]
        self.engine = _MessageConnection(self, framed)
        await self.engine.run(prefix)

    async def _sniff(self) -> tuple[Mode | None, bytes]:
        """Read until the connection's kind is known; (None, ...) means it is over."""
        server = self.server
        mode = server.mode
        prefix = b""
        verdict: Mode | wire.ProtocolViolation | bool | None
        while True:
            data = await self.receive()
            if not data:
                if prefix and mode in (None, Mode.RAW):
                    # Half-closed while we were still sniffing: echo what we hold.
                    await self._send(prefix)
                return None, prefix
            prefix += data
            if mode is None:
                verdict = wire.sniff_mode(prefix)
            elif mode is Mode.FRAMED:
                verdict = wire.check_preamble(prefix)
                if verdict is True:
                    verdict = Mode.FRAMED
            else:
                verdict = mode
            if verdict is None:
                continue
            if isinstance(verdict, wire.ProtocolViolation):
                server.count_error(verdict.code)
                log.info("connection %s rejected: %s", self.peer, verdict.message)
                await self._send(wire.encode_error(None, verdict.code, verdict.message))
                return None, prefix
            assert isinstance(verdict, Mode)
            return verdict, prefix

    async def _send(self, data: bytes) -> None:
        await self.stream.send_all(data)
        self.bytes_out += len(data)

    async def _raw_echo(self, first: bytes) -> None:
        """Compat mode: echo every byte back, in order, until EOF."""
        stream = self.stream
        receive_some = stream.receive_some
        send_all = stream.send_all
        self.raw = True
        await send_all(first)
        self.bytes_out += len(first)
        self.read_scope = trio.CancelScope()
        with self.read_scope:
            while not self.stop_requested:
                self.in_read = True
                data = await receive_some(RECEIVE_SIZE)
                self.in_read = False
                if not data:
                    break
                self.bytes_in += len(data)
                await send_all(data)
                self.bytes_out += len(data)


def _peer_name(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    if sock is None:
        return f"<{type(stream).__name__}>"
    try:
        name = sock.getpeername()
    except OSError:
        return "<unknown>"
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return str(cause or exc) or type(exc).__name__


class _Call:
    """An ``async def`` or blocking request (or notification) accepted on a connection."""

    __slots__ = (
        "awaitable",
        "cancelled_by_client",
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
        #: The worker's cancel scope while the call runs, else None.
        self.scope: trio.CancelScope | None = None


class _MessageConnection:
    """The framed / msgpack-rpc stream engine of one connection (see module doc)."""

    def __init__(self, state: _ConnectionState, framed: bool) -> None:
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
        self.outbox_bytes = 0
        self.sending = False
        self.room = trio.lowlevel.ParkingLot()
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
        self.pending: bytes | bytearray = b""
        # Messages decoded but not yet started because the connection was at
        # max_inflight; they go before anything read later.
        self.backlog: list[Any] = []
        self.nursery: trio.Nursery | None = None
        self.logged_violation = False
        self.closing = False

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
            self.pending = initial
            await self._lead()
            # This task may have handed reading to a worker (see _lead).
            await self.read_done.wait()
            # Half-close, shutdown or a fatal error: answer what is in flight, then close.
            while self.active:
                await self.room.park()
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
        server = self.server
        max_inflight = server.max_inflight
        receive_some = self.stream.receive_some
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
            backlog = self.backlog
            while True:
                if self.pending:
                    backlog.extend(self.decoder.feed(self.pending))
                    self.pending = b""
                if backlog:
                    done = self._process(backlog)
                    del backlog[:done]
                if self.queue:
                    await self._run_session(on_block)
                    if self.reader is not token:
                        if self.reader is not None or not self.reader_wanted:
                            # Another task reads now; send what this one answered.
                            if self.outbox:
                                await self._flush()
                            return
                        # Nobody took over while the handler ran: carry on reading.
                        self.reader_wanted = False
                        self.reader = token
                if self.outbox:
                    await self._flush()
                if self.closing:  # a fatal error, reached in order (backlog first)
                    break
                while self.active >= max_inflight or self.outbox_bytes >= OUTBOX_HIGH_WATER:
                    if state.stop_requested and not backlog:
                        break
                    # Shutdown may cut this wait short only if nothing read is
                    # pending: requests already read get answered like the rest.
                    state.in_read = not backlog
                    await self.room.park()
                    state.in_read = False
                if backlog:
                    continue
                if state.stop_requested:
                    break
                state.in_read = True
                data = await receive_some(RECEIVE_SIZE)
                state.in_read = False
                if not data:
                    break  # EOF: answer what is in flight, then close
                state.bytes_in += len(data)
                self.pending = data
        self.reader = None
        self.read_done.set()

    # --- dispatch ------------------------------------------------------------------------

    def _process(self, items: list[Any]) -> int:
        """Handle decoded messages in order (the hot path); return how many were handled.

        Stops early at a request or notification that would run past
        ``max_inflight``; the caller keeps the rest for later.
        """
        server = self.server
        inline = server.inline_methods
        pooled = server.pooled_methods
        max_inflight = server.max_inflight
        pack = server.pack
        framed = self.framed
        out = self.outbox
        calls = self.calls
        room = server.requests_in_flight < server.max_requests
        nbytes = 0
        max_msgid = _MAX_MSGID
        index = -1
        for obj in items:
            index += 1
            # Fast path: a well-formed request for a quick plain-def handler.
            # Anything it does not take goes through parse_message below, which
            # is the one definition of validity (so `kind is _REQUEST`, a
            # CPython small-int identity, can only send work to the slow path).
            if type(obj) is list and len(obj) == 4:
                kind, msgid, name, params = obj
                if (
                    kind is _REQUEST
                    and type(name) is str
                    and type(params) is list
                    and type(msgid) is int
                    and 0 <= msgid <= max_msgid
                    and room
                    and (not calls or msgid not in calls)
                ):
                    fn = inline.get(name)
                    if fn is not None:
                        server.requests_total += 1
                        try:
                            body = pack([1, msgid, None, fn(*params)])
                        except Exception as exc:
                            body = self._inline_failure(server.methods[name], msgid, params, exc)
                        if framed:
                            out.append(len(body).to_bytes(4, "big"))
                        out.append(body)
                        nbytes += len(body) + 4
                        continue
                    method = pooled.get(name)
                    if method is not None and self.active < max_inflight:
                        server.requests_total += 1
                        self.outbox_bytes += nbytes
                        nbytes = 0
                        self._queue_call(msgid, method, params, math.inf)
                        room = server.requests_in_flight < server.max_requests
                        continue
            self.outbox_bytes += nbytes
            nbytes = 0
            if (
                self.active >= max_inflight
                and type(obj) is list
                and obj
                and obj[0] in (wire.MessageType.REQUEST, wire.MessageType.NOTIFICATION)
            ):
                return index
            self._dispatch(wire.parse_message(obj))
            room = server.requests_in_flight < server.max_requests
        self.outbox_bytes += nbytes
        return len(items)

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
                    await self._run_session(self._on_block)
                elif self.outbox and not self.sending:
                    await self._flush()
                else:
                    break  # (a task already sending takes the outbox along)
            if self.workers_done or self.parked >= MAX_PARKED_WORKERS:
                return
            self.parked += 1
            await self.wake.park()

    def _on_block(self) -> None:
        """A handler is about to block its task: if work is left, have a worker wake."""
        if (self.queue or self.outbox or self.reader_wanted) and not self.waking:
            self._add_worker()

    async def _run_session(self, on_block: Callable[[], None]) -> None:
        """Run queued calls one after another inside one cancel scope.

        A cancel scope per call would cost more than an async echo itself,
        so calls share the worker's scope: ``[3, msgid]`` and ``timeout_ms``
        cancel the scope while their call is the one running in it, and the
        next call gets a fresh scope.
        """
        queue = self.queue
        call: _Call | None = None
        with trio.CancelScope() as scope:
            while queue:
                call = queue.popleft()
                timed = call.deadline != math.inf
                if call.cancelled_by_client or (timed and call.deadline <= trio.current_time()):
                    # Cancelled or expired while it waited for a worker: never started.
                    call.awaitable.close()
                    self._finish(call, None, self._cancel_error(call))
                    call = None
                    continue
                call.scope = scope
                if timed:
                    scope.deadline = call.deadline
                result: Any = None
                error: tuple[str, str, Any] | None = None
                try:
                    # `await call.awaitable`, written out: a handler that returns
                    # without yielding to Trio never needs another task.
                    coro = call.awaitable
                    try:
                        trap = coro.send(None)
                    except StopIteration as done:
                        result = done.value
                    else:
                        on_block()
                        result = await _resume(coro, trap)
                except Exception as exc:
                    error = self._failure(call.method, call.params, exc)
                call.scope = None
                if timed:
                    scope.deadline = math.inf
                self._finish(call, result, error)
                swallowed = (call.cancelled_by_client or timed) and scope.cancel_called
                call = None
                if swallowed:
                    break  # the handler swallowed a cancel: later calls get a fresh scope
        if call is not None:
            # Its handler was cancelled (by the client or timeout_ms).
            call.scope = None
            self._finish(call, None, self._cancel_error(call))

    def _finish(self, call: _Call, result: Any, error: tuple[str, str, Any] | None) -> None:
        """Account for a call that is over and queue its reply."""
        server = self.server
        msgid = call.msgid
        self.active -= 1
        server.requests_in_flight -= 1
        if self.room:
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
        self.outbox_bytes += len(body) + 4

    @staticmethod
    def _cancel_error(call: _Call) -> tuple[str, str, Any]:
        if call.cancelled_by_client:
            return ErrorCode.CANCELLED, "cancelled by the client", None
        return ErrorCode.TIMEOUT, f"{call.method.name}: timeout_ms exceeded", None

    # --- writing ---------------------------------------------------------------------------

    def _enqueue(self, data: bytes) -> None:
        self.outbox.append(data)
        self.outbox_bytes += len(data)

    async def _flush(self) -> None:
        """Send everything queued; if another task is sending, leave it to that task."""
        if self.sending:
            return
        self.sending = True
        state = self.state
        send_all = self.stream.send_all
        try:
            while self.outbox:
                out = self.outbox
                n = self.outbox_bytes
                self.outbox = []
                self.outbox_bytes = 0
                if self.room:  # tasks are waiting for room
                    self.room.unpark_all()
                await send_all(out[0] if len(out) == 1 else b"".join(out))
                state.bytes_out += n
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # The peer is gone: nothing more can be delivered on this connection.
            log.debug("connection %s lost while sending: %s", state.peer, _cause(exc))
            self.outbox = []
            self.outbox_bytes = 0
            state.whole_scope.cancel()
        finally:
            self.sending = False


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], trap: Any) -> Generator[Any, Any, Any]:
    """Finish ``await coro`` for a coroutine that already yielded ``trap`` to Trio.

    This is what ``await`` (``yield from``) does after the first step; the
    worker takes that first step itself to learn whether the handler blocks.
    """
    while True:
        try:
            value = yield trap
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # Cancelled included: the handler must see it
            try:
                trap = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                trap = coro.send(value)
            except StopIteration as done:
                return done.value


def _is_pack_error(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.endswith(("_server.py", "wire.py"))


async def open_listeners(
    host: str | None, port: int, *, reuse_port: bool = False, backlog: int | None = None
) -> list[trio.SocketListener]:
    """Open TCP listeners like :func:`trio.open_tcp_listeners`, optionally with SO_REUSEPORT."""
    if not reuse_port:
        return await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError(errno.ENOTSUP, "SO_REUSEPORT is not available on this platform")
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners = []
    for family, type_, proto, _, sockaddr in infos:
        sock = trio.socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            await sock.bind(sockaddr)
            sock.listen(backlog if backlog is not None else socket.SOMAXCONN)
        except BaseException:
            sock.close()
            raise
        listeners.append(trio.SocketListener(sock))
    return listeners


async def serve(
    service: Service | None = None,
    host: str | None = "127.0.0.1",
    port: int = 7000,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve ``service`` (plus the built-ins) on ``host``:``port`` until cancelled.

    ``await nursery.start(trio_echo.serve, service, "127.0.0.1", 0)`` returns
    the listeners, so port 0 works in tests. ``options`` are the keyword
    arguments of :class:`Server`. For graceful shutdown, make a
    :class:`Server` and call its :meth:`Server.shutdown`.
    """
    reuse_port = bool(options.pop("reuse_port", False))
    server = Server(service, **options)
    await server.serve(host, port, reuse_port=reuse_port, task_status=task_status)


async def serve_stream(
    stream: trio.abc.Stream, service: Service | None = None, **options: Any
) -> None:
    """Serve one connection over any Trio stream with a fresh :class:`Server`."""
    await Server(service, **options).serve_stream(stream)

