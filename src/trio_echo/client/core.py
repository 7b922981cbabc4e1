"""Client bookkeeping shared by the async and the blocking client, with no I/O.

:class:`ClientCore` wraps a client-role :class:`~trio_echo.wire.Connection`
and adds what every client needs: the hello handshake, msgid allocation, the
table of pending calls (msgid -> waiter, whatever a waiter is for the caller:
a Trio task or a thread's future), matching replies to waiters, and turning
error responses into :class:`RemoteError` subclasses. The async client drives
it from one Trio task; the blocking client from a reader thread, under a lock.

The two clients are transports over it: they own the I/O and the way a
waiter is woken, and take everything else from here, in the same steps:

* **handshake**: send :meth:`ClientCore.initiate`, then feed what arrives to
  :meth:`~ClientCore.receive_hello` until it returns True; a transport error
  becomes :func:`lost_before_hello`;
* **reader step**: feed each read to :meth:`~ClientCore.receive`, wake the
  waiter of each reply it returns, then :meth:`~ClientCore.settle` (deliver
  notifications; a returned error means the connection is finished);
* **failing**: :meth:`~ClientCore.fail` hands back every pending waiter with
  the error to wake it with, so that all of them fail at once;
* **closing**: :meth:`~ClientCore.close` abandons every waiting call (its
  msgid stays reserved), hands back the waiters with :func:`closed_by_us`
  errors and the cancels to send first; then the transport fails the rest
  with :func:`closed_by_us` and closes its stream.

Every message a client raises on its own is made by a function below.

Protocol version 2 (protocol.md §11). A core offers a version in its preamble;
an older server refuses version 2 with ``unsupported_version``, which
:meth:`ClientCore.receive_hello` raises as :class:`VersionRefused` so that
the transport connects again with version 1. A ``goaway`` sets
:attr:`ClientCore.goaway`: from then on the core refuses new calls
(:class:`GoingAway`) while the pending ones finish, and the transport
half-closes the connection once it has written what it owes. What happens
across connections is decided here too: :class:`Attempts` (whether a call
goes again on another connection, within its own deadline) and
:class:`Backoff` (when to try connecting again); :class:`ClientFront` is
what both clients expose of the connection they use now.

Streams (protocol version 2, protocol.md §12). :meth:`ClientCore.open_stream`
registers a :class:`StreamState` under the stream's msgid (in the pending
table too, so the msgid stays taken); :meth:`ClientCore.receive` files the
items and credit the server sends into it and finishes it with the final
response, calling the transport's ``wake`` each time, instead of handing a
reply back. The transport's stream object takes items with
:meth:`ClientCore.stream_take`, which returns the credit to grant once half the
window was consumed (so credit follows what the application consumed, not
what arrived), and sends with :meth:`ClientCore.stream_items` and
:meth:`ClientCore.stream_end`.
"""

from __future__ import annotations

import collections
import errno
import math
import random
import struct
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

import msgpack

from .. import wire
from ..errors import (
    ConnectionClosed,
    ConnectTimeout,
    DeadlineExceeded,
    FrameTooLarge,
    Malformed,
    RemoteError,
    RequestCancelled,
    Unavailable,
    UnsupportedVersion,
    remote_error,
)
from ..wire import RECEIVE_SIZE

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_RECEIVE_MAX_FRAME",
    "DEFAULT_STREAM_WINDOW",
    "RECEIVE_SIZE",
    "UNAVAILABLE_RETRIES",
    "Attempts",
    "Backoff",
    "ClientBase",
    "ClientCore",
    "ClientFront",
    "GoingAway",
    "NotificationHandler",
    "StreamFront",
    "StreamState",
    "VersionRefused",
    "closed_by_us",
    "connect_timed_out",
    "connection_lost",
    "fresh",
    "local_deadline",
    "lost",
    "lost_before_hello",
    "send_failed",
    "send_interrupted",
]

#: A callback for server notifications other than ``hello``: ``(method, params)``.
NotificationHandler = Callable[[str, list[Any]], None]

#: Default bound on one frame received from the server.
DEFAULT_RECEIVE_MAX_FRAME: Final = 4 * wire.DEFAULT_MAX_FRAME
#: Default bound on connecting plus waiting for the server's hello, in seconds.
DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0
#: A first frame longer than this cannot be a hello: the peer is no trio_echo server.
MAX_HELLO_BYTES: Final = 64 * 1024
#: A call answered ``unavailable`` is sent again at most this many times (§11.4).
UNAVAILABLE_RETRIES: Final = 3
#: Reconnecting after a lost connection: the first wait, in seconds, doubling up
#: to BACKOFF_MAX_S between failed attempts, each randomised by ±BACKOFF_JITTER.
BACKOFF_FIRST_S: Final = 0.05
BACKOFF_MAX_S: Final = 5.0
BACKOFF_JITTER: Final = 0.2

#: The credit a client stream starts with, and grants again each time half of it
#: was consumed (FbThrift's rule). Items wait in the client up to this many: a
#: window of 16 made a stream round-trip bound (25k items/s of 64 B, no faster
#: than unary calls); 128 gives ~4x (benchmarks/streams.py). FbThrift's default
#: chunk buffer is 100. Pass a smaller ``window`` for large items.
DEFAULT_STREAM_WINDOW: Final = 128

W = TypeVar("W")

_HEADER: Final = struct.Struct(">I")
_unpackb: Final = msgpack.unpackb
_MAX_MSGID: Final = wire.MAX_MSGID

#: A reply matched to its waiter: ``(waiter, result, error)``; ``error`` is None on success.
Reply = tuple[W, Any, RemoteError | None]


def lost(what: str, exc: BaseException) -> ConnectionClosed:
    """A :class:`ConnectionClosed` saying ``what`` happened, caused by ``exc``."""
    error = ConnectionClosed(f"{what}: {exc or type(exc).__name__}")
    error.__cause__ = exc
    return error


def fresh(error: ConnectionClosed) -> ConnectionClosed:
    """A copy of ``error`` to raise: callers must not share one traceback."""
    exc = ConnectionClosed(*error.args)
    exc.__cause__ = error.__cause__
    return exc


def lost_before_hello(exc: BaseException) -> ConnectionClosed:
    """The transport failed during the handshake."""
    return lost("the connection was lost before the server's hello", exc)


def connection_lost(exc: BaseException) -> ConnectionClosed:
    """Reading failed (a reset, or a bug: either way no call may hang)."""
    return lost("the connection was lost", exc)


def send_failed(exc: BaseException) -> ConnectionClosed:
    """Writing failed."""
    return lost("sending failed", exc)


def send_interrupted() -> ConnectionClosed:
    """A send was cut short: the stream may end in half a frame."""
    return ConnectionClosed("a send was interrupted; the connection is unusable")


def closed_by_us() -> ConnectionClosed:
    """What calls pending at :meth:`close`, and calls after it, fail with."""
    return ConnectionClosed("the client closed the connection")


def local_deadline(method: str, timeout: float) -> DeadlineExceeded:
    """A call's ``timeout`` passed before its reply came."""
    return DeadlineExceeded(f"{method}: no reply within {timeout:g} s (local deadline)")


def connect_timed_out(where: str, timeout: float | None) -> ConnectTimeout:
    """Connecting, a TLS handshake and the hello took longer than ``connect_timeout``."""
    return ConnectTimeout(
        f"cannot connect to {where}: timed out after {timeout:g} s "
        "(connecting and waiting for the server's hello)",
        where,
        errno.ETIMEDOUT,
    )


def _idle(reason: str) -> str:
    """What to add to a goaway's error text when the reason is ``idle``."""
    if reason != wire.GoawayReason.IDLE:
        return ""
    return ": it closes an idle connection (trio-echo serve --idle-timeout); connect again"


class GoingAway(ConnectionClosed):
    """The server said ``goaway`` on this connection: it takes no new call.

    A reconnecting client sends the call on a new connection instead; one
    that may not reconnect raises this (a :class:`ConnectionClosed`).
    """


class VersionRefused(ConnectionClosed):
    """The server does not speak the protocol version offered (an older server)."""


class Backoff:
    """How long to wait before the next connection attempt.

    Nothing after a success or a ``goaway`` (the server asked us to move).
    After a lost connection, and between failed attempts: 50 ms, doubling
    up to 5 s, each wait randomised by ±20 % so that the clients of a
    crashed server do not come back in one wave.
    """

    def __init__(self, rng: Callable[[], float] = random.random) -> None:
        self._rng = rng
        self._next = 0.0

    def delay(self) -> float:
        """Seconds to wait before the next attempt (0 for none)."""
        return self._next * (1 - BACKOFF_JITTER + 2 * BACKOFF_JITTER * self._rng())

    def lost(self) -> None:
        """A connection was lost without a goaway: do not come back at once."""
        self._next = self._next or BACKOFF_FIRST_S

    def failed(self) -> None:
        """An attempt failed: wait longer before the next one."""
        self._next = min(BACKOFF_MAX_S, max(BACKOFF_FIRST_S, self._next * 2))

    def succeeded(self) -> None:
        self._next = 0.0


class Attempts:
    """The tries of one call across connections (protocol.md §11.4).

    ``timeout`` bounds the whole call, retries included: each try gets what is
    left of it (also as ``timeout_ms``). A call refused by a connection that
    is going away goes to the next connection (it was never sent); a call
    answered ``unavailable`` goes again at most :data:`UNAVAILABLE_RETRIES`
    times. Either only if the client may reconnect.

    Raises:
        ValueError: ``timeout`` is not a positive number.
    """

    __slots__ = ("deadline", "method", "timeout", "tries", "unavailable")

    def __init__(self, method: str, timeout: float | None, now: float) -> None:
        timeout_options(timeout)  # a bad timeout is refused before anything else
        self.method = method
        self.timeout = timeout
        self.deadline = math.inf if timeout is None else now + timeout
        self.unavailable = 0
        self.tries = 0

    def remaining(self, now: float) -> float | None:
        """The timeout of the next try (None: no timeout).

        Raises:
            DeadlineExceeded: the call's time is up.
        """
        self.tries += 1
        if self.timeout is None:
            return None
        left = self.deadline - now
        if left <= 0:
            raise self.expired()
        # A first try made at once is sent the timeout as given (50 ms, not 49.99).
        return self.timeout if self.tries == 1 and self.timeout - left < 0.001 else left

    def expired(self) -> DeadlineExceeded:
        assert self.timeout is not None
        return local_deadline(self.method, self.timeout)

    def again(self, exc: Exception, reconnect: bool) -> bool:
        """After ``exc`` from one try: whether the call goes again on another connection."""
        if not reconnect:
            return False
        if isinstance(exc, GoingAway):
            return True
        if isinstance(exc, Unavailable) and self.unavailable < UNAVAILABLE_RETRIES:
            self.unavailable += 1
            return True
        return False


def timeout_options(timeout: float | None) -> dict[str, Any] | None:
    """The request options carrying ``timeout`` (seconds) as ``timeout_ms``.

    Raises:
        ValueError: ``timeout`` is not a positive, finite number.
    """
    if timeout is None:
        return None
    if not timeout > 0 or math.isinf(timeout):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return {"timeout_ms": timeout * 1000.0}


class StreamState:
    """The client's side of one stream (protocol.md §12), with no I/O.

    Attributes:
        buffer: items received and not yet taken by the application.
        send_credit: items the server lets the client send now (its go-ahead and grants).
        done: the final response arrived (``result`` or ``error``), or the stream
            ended here (cancelled, the connection lost: ``error``).
        wake: the transport's callback, called whenever any of this changes.
    """

    __slots__ = (
        "buffer",
        "consumed",
        "done",
        "ended",
        "error",
        "go_ahead",
        "kind",
        "method",
        "msgid",
        "recv_credit",
        "refill",
        "result",
        "send_credit",
        "sent",
        "taken",
        "wake",
        "window",
    )

    def __init__(
        self,
        msgid: int,
        method: str,
        kind: wire.StreamKind,
        window: int,
        wake: Callable[[], object],
    ) -> None:
        self.msgid = msgid
        self.method = method
        self.kind = kind
        self.window = window
        self.refill = max(1, window // 2)
        self.buffer: collections.deque[Any] = collections.deque()
        #: Credit granted to the server and not yet used by its items.
        self.recv_credit = window if kind is not wire.StreamKind.CLIENT else 0
        self.consumed = 0
        self.send_credit = 0
        self.go_ahead = False
        self.ended = False
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        #: Items taken by the application, and sent, so far.
        self.taken = 0
        self.sent = 0
        self.wake = wake

    @property
    def receives(self) -> bool:
        """The server sends items on it (a server or bidi stream)."""
        return self.kind is not wire.StreamKind.CLIENT

    @property
    def sends(self) -> bool:
        """The client sends items on it (a client or bidi stream)."""
        return self.kind is not wire.StreamKind.SERVER


class StreamFront:
    """What both clients' stream objects expose of their :class:`StreamState`."""

    _state: StreamState

    @property
    def msgid(self) -> int:
        return self._state.msgid

    @property
    def done(self) -> bool:
        """True once the final response has arrived (or the stream ended here)."""
        return self._state.done

    @property
    def result(self) -> Any:
        """The call's result, once :attr:`done`: nil (None) for a server stream, the
        handler's return value for a client or bidi stream.

        Raises:
            RuntimeError: the stream has not ended yet.
            RemoteError: the call ended with this error (and the others as for a call).
        """
        state = self._state
        if not state.done:
            raise RuntimeError(f"{state.method}: the stream has not ended yet")
        if state.error is not None:
            raise state.error
        return state.result


class ClientCore(Generic[W]):
    """The sans-IO half of a client connection; see the module docstring.

    Attributes:
        server_info: the server's hello map, once :meth:`receive_hello` returned True.
        pending: msgid -> waiter, or ``None`` for a call whose caller gave up;
            such a msgid stays reserved until its late reply arrives.
        error: set once the connection is finished (EOF, or bad input).
    """

    def __init__(
        self,
        on_notification: NotificationHandler | None,
        max_frame: int,
        version: int = wire.PROTOCOL_VERSION,
    ) -> None:
        # A reply longer than max_frame fails its call alone (see receive).
        self.conn = wire.Connection(
            wire.Role.CLIENT, max_frame=max_frame, version=version, skip_oversized=True
        )
        self.max_frame = max_frame
        self.pack = wire.make_packer()
        self.on_notification = on_notification
        self.server_info: dict[str, Any] = {}
        self.server_max_frame = wire.DEFAULT_MAX_FRAME
        self.pending: dict[int, W | None] = {}
        #: The open streams by msgid (also in ``pending``, which keeps their msgid taken).
        self.streams: dict[int, StreamState] = {}
        self.next_msgid = 1
        self.error: ConnectionClosed | None = None
        self.notifications: list[wire.Notification] = []
        #: ``(reason, grace_ms)`` once the server said goaway (version 2).
        self.goaway: tuple[str, int] | None = None
        #: Set once the transport half-closed (after a goaway): nothing more is sent.
        self.half_closed = False
        self._head = b""
        self._last_notice = ""
        # conn.idle as of the end of the last receive() that fed it (only receive
        # feeds it after the hello): whole frames may then be decoded here.
        self._conn_idle = False

    # -- the handshake -------------------------------------------------------------------

    def initiate(self) -> bytes:
        """The bytes to send first (the preamble); then feed replies to :meth:`receive_hello`."""
        return self.conn.initiate()

    def receive_hello(self, data: bytes | bytearray) -> bool:
        """Feed bytes read before the hello (``b""`` = EOF); True once it has arrived.

        Raises:
            ConnectionClosed: the server closed, refused, or is not a trio_echo
                framed server (a raw echo server sends the preamble back).
        """
        self.conn.receive_data(bytes(data))
        if len(self._head) < wire.HEADER_SIZE:
            self._head += data
            length = int.from_bytes(self._head[: wire.HEADER_SIZE], "big")
            if len(self._head) >= wire.HEADER_SIZE and length > MAX_HELLO_BYTES:
                raise ConnectionClosed(
                    "the peer is not a trio_echo framed server (it answered "
                    f"{self._head[:8].hex(' ')}; a raw echo server sends the preamble back)"
                )
        try:
            event = self.conn.next_event()
        except EOFError:
            raise ConnectionClosed("the server closed the connection before its hello") from None
        if event is wire.NEED_DATA:
            return False
        if isinstance(event, wire.Notification) and event.method == "hello":
            info = event.params[0] if event.params else None
            if not isinstance(info, dict):
                raise ConnectionClosed(f"the server's hello is malformed: {event.params!r}")
            self.server_info = info
            max_frame = info.get("max_frame")
            if type(max_frame) is int and max_frame > 0:
                self.server_max_frame = max_frame
            return True
        if self.conn.version > 1 and _notice_code(event) == wire.ErrorCode.UNSUPPORTED_VERSION:
            raise VersionRefused(f"the server refused protocol version {self.conn.version}")
        raise ConnectionClosed(f"expected the server's hello, got {_describe(event)}")

    # -- sending -------------------------------------------------------------------------

    def request(
        self, method: str, params: tuple[Any, ...], timeout: float | None, waiter: W
    ) -> tuple[int, bytes]:
        """Register ``waiter`` under a fresh msgid; return the msgid and the request's bytes.

        Raises:
            ConnectionClosed: the connection is finished.
            GoingAway: the server said goaway (a ConnectionClosed; nothing registered).
            FrameTooLarge: the request exceeds the server's ``max_frame`` (not registered).
            ValueError: a bad ``timeout``.
            TypeError: a parameter cannot be encoded as msgpack.
        """
        if self.error is not None or self.goaway is not None:
            self.check_usable()
        options = None if timeout is None else timeout_options(timeout)
        pending = self.pending
        msgid = self.next_msgid
        if msgid in pending or msgid >= _MAX_MSGID:
            msgid = self._allocate_msgid()
        else:
            self.next_msgid = msgid + 1
        # wire.encode_request, inlined (a tuple packs as the same msgpack array).
        if options is None:
            body = self.pack([0, msgid, method, params])
        else:
            body = self.pack([0, msgid, method, params, options])
        if len(body) > self.server_max_frame:
            self._check_size(body)
        pending[msgid] = waiter
        return msgid, _HEADER.pack(len(body)) + body

    def notification(self, method: str, params: tuple[Any, ...]) -> bytes:
        """The bytes of a notification.

        Raises:
            ConnectionClosed: the connection is finished.
            GoingAway: the server said goaway (a ConnectionClosed).
            FrameTooLarge: it exceeds the server's ``max_frame``.
        """
        self.check_usable()
        data = wire.encode_notification(method, params, pack=self.pack)
        self._check_size(memoryview(data)[wire.HEADER_SIZE :])
        return data

    def abandon(self, msgid: int, waiter: W) -> bytes | None:
        """The caller of ``msgid`` gave up: keep the msgid reserved, return the cancel to send.

        Returns None if the reply already arrived, or nothing can be sent any more.
        """
        if self.pending.get(msgid) is not waiter:
            return None
        self.pending[msgid] = None
        if self.error is not None or self.half_closed:
            return None
        return wire.encode_cancel(msgid, pack=self.pack)

    def close(self) -> tuple[list[tuple[W, ConnectionClosed]], bytes]:
        """Give up every waiting call, as the client closes; their msgids stay reserved.

        Returns their waiters, each with the error to wake it with, and the
        cancels to send, so that the server stops their handlers instead of
        finishing them for nobody. Nothing once the connection is finished.
        Open streams end here (woken, with the same error).
        """
        if self.error is not None:
            return [], b""
        live = [(m, w) for m, w in self.pending.items() if w is not None]
        for msgid, _ in live:
            self.pending[msgid] = None
        cancels = b""
        if not self.half_closed:
            cancels = b"".join(wire.encode_cancel(m, pack=self.pack) for m, _ in live)
        self._end_streams(closed_by_us())
        return [(w, closed_by_us()) for _, w in live if type(w) is not StreamState], cancels

    # -- streams (protocol version 2) -------------------------------------------------------

    def open_stream(
        self,
        method: str,
        params: tuple[Any, ...],
        kind: wire.StreamKind | str,
        window: int,
        timeout: float | None,
        wake: Callable[[], object],
    ) -> tuple[StreamState, bytes]:
        """Register a stream under a fresh msgid; return it and its request's bytes.

        Raises:
            UnsupportedVersion: the connection speaks protocol version 1 (no streams).
            ValueError: an unknown ``kind``, a ``window`` out of range, a bad ``timeout``.
            and as :meth:`request`.
        """
        if self.error is not None or self.goaway is not None:
            self.check_usable()
        if self.conn.version < wire.STREAM_VERSION:
            raise UnsupportedVersion(
                f"{method}: streams need protocol version 2; this server speaks "
                f"version {self.conn.version}"
            )
        stream_kind = wire.StreamKind(kind)
        if type(window) is not int or not 1 <= window <= wire.MAX_CREDIT:
            raise ValueError(f"window must be an integer from 1 to {wire.MAX_CREDIT}")
        options: dict[str, Any] = timeout_options(timeout) or {}
        options["stream"] = stream_kind.value
        if stream_kind is not wire.StreamKind.CLIENT:
            options["credit"] = window
        msgid = self._allocate_msgid()
        body = self.pack([0, msgid, method, params, options])
        self._check_size(body)
        state = StreamState(msgid, method, stream_kind, window, wake)
        self.pending[msgid] = state  # type: ignore[assignment]  # keeps the msgid taken
        self.streams[msgid] = state
        return state, _HEADER.pack(len(body)) + body

    def stream_take(self, state: StreamState) -> tuple[Any, bytes | None]:
        """The next received item (the buffer must not be empty), and the credit to
        send with it: once half the window was consumed, what was consumed."""
        item = state.buffer.popleft()
        state.taken += 1
        state.consumed += 1
        if state.consumed < state.refill or state.done or self.error is not None:
            return item, None
        if self.half_closed:
            return item, None
        grant, state.consumed = state.consumed, 0
        state.recv_credit += grant
        return item, wire.encode_credit(state.msgid, grant, pack=self.pack)

    def stream_items(self, state: StreamState, items: list[Any]) -> bytes:
        """The bytes of ``items`` (at most :attr:`StreamState.send_credit` of them).

        Raises:
            FrameTooLarge: larger than the server's ``max_frame`` (nothing used).
            TypeError: an item cannot be encoded as msgpack.
        """
        assert 0 < len(items) <= state.send_credit, "no credit for these items"
        body = self.pack([4, state.msgid, items])
        self._check_size(body)
        state.send_credit -= len(items)
        state.sent += len(items)
        return _HEADER.pack(len(body)) + body

    def stream_end(self, state: StreamState, error: RemoteError | None = None) -> bytes | None:
        """The bytes of the client's end (an error tells the handler the producer failed);
        None if it was sent already or nothing can be sent any more."""
        if state.ended or state.done or self.error is not None or self.half_closed:
            state.ended = True
            return None
        state.ended = True
        err = None if error is None else wire.error_map(error.code, error.message, error.data)
        return wire.encode_end(state.msgid, err, pack=self.pack)

    def stream_cancel(self, state: StreamState) -> bytes | None:
        """The application leaves the stream before its end: end it here (its msgid stays
        taken until the late response) and return the cancel to send, if any."""
        if state.done:
            return None
        self._finish_stream(state, None, RequestCancelled("the stream was left before its end"))
        self.pending[state.msgid] = None
        if self.error is not None or self.half_closed:
            return None
        return wire.encode_cancel(state.msgid, pack=self.pack)

    def _finish_stream(self, state: StreamState, result: Any, error: BaseException | None) -> None:
        state.done = True
        state.result = result
        state.error = error
        self.streams.pop(state.msgid, None)
        state.wake()

    def _end_streams(self, error: ConnectionClosed) -> None:
        for state in list(self.streams.values()):
            self._finish_stream(state, None, fresh(error))

    def _stream_event(self, event: wire.Items | wire.Credit) -> None:
        state = self.streams.get(event.msgid)
        if state is None:
            return  # a stream left or finished: dropped (protocol.md §12.4)
        if type(event) is wire.Credit:
            state.send_credit += event.n
            state.go_ahead = True
            state.wake()
            return
        assert type(event) is wire.Items
        items = event.items
        if len(items) > state.recv_credit:
            # The server broke the flow control: end the stream here, keep the msgid.
            self._finish_stream(
                state,
                None,
                Malformed(
                    f"{state.method}: the server sent {len(items)} items with "
                    f"{state.recv_credit} credits granted"
                ),
            )
            self.pending[state.msgid] = None
            return
        state.recv_credit -= len(items)
        state.buffer.extend(items)
        state.wake()

    def check_open(self) -> None:
        """Raises: ConnectionClosed: the connection is finished."""
        if self.error is not None:
            raise fresh(self.error)

    def check_usable(self) -> None:
        """Raises: ConnectionClosed: finished; GoingAway: the server said goaway."""
        self.check_open()
        if self.goaway is not None:
            reason, grace_ms = self.goaway
            raise GoingAway(
                f"the server is going away ({reason}, {grace_ms} ms of grace){_idle(reason)}"
            )

    def closed_after_goaway(self) -> ConnectionClosed:
        """The error for what is left once a connection the server said goaway on is done."""
        reason = self.goaway[0] if self.goaway is not None else "?"
        return ConnectionClosed(f"closed after the server's goaway ({reason}){_idle(reason)}")

    @property
    def usable(self) -> bool:
        """Open, and not going away: a new call may use it."""
        return self.error is None and self.goaway is None

    def has_live_calls(self) -> bool:  # (open streams count: they are in ``pending``)
        """Some call still waits for its reply here (abandoned ones aside)."""
        return any(w is not None for w in self.pending.values())

    def _check_size(self, body: bytes | memoryview) -> None:
        size = len(body)
        if size > self.server_max_frame:
            raise FrameTooLarge(
                f"message of {size} bytes exceeds the server's max_frame "
                f"({self.server_max_frame}); it was not sent"
            )

    def _allocate_msgid(self) -> int:
        pending = self.pending
        if len(pending) > wire.MAX_MSGID:  # pragma: no cover - 4 billion calls in flight
            raise RuntimeError("every msgid is in flight")
        msgid = self.next_msgid
        while msgid in pending:
            msgid = msgid + 1 if msgid < wire.MAX_MSGID else 0
        self.next_msgid = msgid + 1 if msgid < wire.MAX_MSGID else 0
        return msgid

    # -- receiving -----------------------------------------------------------------------

    def receive(self, data: bytes | bytearray | None) -> list[Reply[W]]:
        """Feed bytes (``b""`` = EOF); return the replies they complete, with their waiters.

        ``None`` feeds nothing and handles events already buffered (those that
        came with the hello). Late replies to abandoned calls are dropped.
        Server notifications other than ``hello`` are queued in
        :attr:`notifications`. On EOF or bad input :attr:`error` is set; the
        caller then fails what is pending.
        """
        conn = self.conn
        pending = self.pending
        if self.error is not None:
            return []  # finished: what still arrives is ignored
        if data and self._conn_idle:
            replies, data = self._plain_responses(data)
            if not data:
                return replies
        else:
            replies = []
        if data is not None:
            conn.receive_data(bytes(data))
        while True:
            try:
                event = conn.next_event()
            except EOFError:  # the server closed, and every reply before that is handled
                self.error = ConnectionClosed(self._closed_by_server())
                return replies
            kind = type(event)
            if kind is wire.Response or kind is wire.ErrorResponse:
                assert isinstance(event, wire.Response | wire.ErrorResponse)
                waiter = pending.pop(event.msgid, None)
                if waiter is None:
                    continue  # a late reply to an abandoned call (or junk): dropped
                if isinstance(waiter, StreamState):
                    if isinstance(event, wire.Response):
                        self._finish_stream(waiter, event.result, None)
                    else:
                        error = remote_error(event.code, event.message, event.data)
                        self._finish_stream(waiter, None, error)
                    continue
                if isinstance(event, wire.Response):
                    replies.append((waiter, event.result, None))
                else:
                    error = remote_error(event.code, event.message, event.data)
                    replies.append((waiter, None, error))
            elif event is wire.NEED_DATA:
                self._conn_idle = conn.idle
                return replies
            elif kind is wire.Items or kind is wire.Credit:
                assert isinstance(event, wire.Items | wire.Credit)
                self._stream_event(event)
            elif kind is wire.OversizedFrame:
                assert isinstance(event, wire.OversizedFrame)
                # Skipped unread: only its call fails; the connection carries on.
                waiter = pending.pop(event.msgid, None) if event.msgid is not None else None
                if isinstance(waiter, StreamState):
                    self._finish_stream(waiter, None, self._reply_too_large(event.length))
                elif waiter is not None:
                    replies.append((waiter, None, self._reply_too_large(event.length)))
            elif isinstance(event, wire.Notification):
                if event.method == "error":
                    self._last_notice = f" after an error notice: {_describe(event)}"
                elif event.method == "goaway" and conn.version >= 2:
                    # Handled here, never shown to the callback (protocol.md §11.4).
                    goaway = wire.parse_goaway(event)
                    if goaway is None:
                        self.error = ConnectionClosed(f"malformed goaway from the server: {event}")
                        return replies
                    self.goaway = self.goaway or goaway
                    continue
                if event.method != "hello":
                    self.notifications.append(event)
            else:
                self.error = ConnectionClosed(f"protocol error from the server: {_describe(event)}")
                return replies

    def _plain_responses(self, data: bytes | bytearray) -> tuple[list[Reply[W]], bytes]:
        """The fast path of :meth:`receive`, for bytes that start a frame.

        Takes whole frames off the front of ``data`` for as long as each is a
        successful response within ``max_frame`` (what ``conn`` would make a
        :class:`wire.Response` of, checked the same way); returns their replies
        and the bytes from the first other frame on, for ``conn`` to handle.
        """
        pending = self.pending
        replies: list[Reply[W]] = []
        n = len(data)
        off = 0
        max_frame = self.max_frame
        unpack_header = _HEADER.unpack_from
        while n - off >= 4:
            start = off + 4
            end = start + unpack_header(data, off)[0]
            if end > n or end - start > max_frame:
                break
            try:
                # Without strict_map_key=False (a keyword costs more than the rest of
                # the check): a map with other than str keys goes to conn, which takes it.
                obj = _unpackb(data[start:end])
            except Exception:
                break
            if type(obj) is not list or len(obj) != 4:
                break
            kind, msgid, err, result = obj
            if (
                type(kind) is not int
                or kind != 1
                or err is not None
                or type(msgid) is not int
                or not 0 <= msgid <= _MAX_MSGID
            ):
                break
            off = end
            waiter = pending.pop(msgid, None)
            if waiter is not None:  # else a late reply to an abandoned call: dropped
                if isinstance(waiter, StreamState):
                    self._finish_stream(waiter, result, None)
                    continue
                replies.append((waiter, result, None))
        return replies, bytes(data[off:]) if off < n else b""

    def settle(self) -> ConnectionClosed | None:
        """End a reader step: deliver the queued notifications; return :attr:`error`.

        Once it returns an error the connection is finished: the transport
        fails what is pending (:meth:`fail`) and stops reading.
        """
        if self.notifications:
            self.deliver_notifications()
        return self.error

    def _reply_too_large(self, length: int) -> FrameTooLarge:
        return FrameTooLarge(
            f"the reply is {length} bytes, more than this client's max_frame "
            f"({self.max_frame}); it was skipped and the connection stays usable "
            "(pass a larger max_frame= to open_client or connect to accept it)"
        )

    def _closed_by_server(self) -> str:
        """Why the server closed, as far as this end can tell."""
        if self._last_notice:
            return f"the server closed the connection{self._last_notice}"
        if not self.pending:
            # Protocol v1 has no way to say "idle"; a v2 server will send a
            # goaway notice first (reason "idle"), and the client reconnect.
            return (
                "the server closed the connection while no call was waiting on it: it may "
                "have closed an idle connection (trio-echo serve --idle-timeout, 300 s by "
                "default); connect again"
            )
        return "the server closed the connection"

    def deliver_notifications(self) -> None:
        """Pass queued notifications to the callback; if it raises, set :attr:`error`."""
        notes, self.notifications = self.notifications, []
        if self.on_notification is None:
            return
        for note in notes:
            try:
                self.on_notification(note.method, note.params)
            except Exception as exc:
                if self.error is None:
                    self.error = lost("the notification callback raised", exc)
                return

    def fail(self, error: ConnectionClosed) -> list[tuple[W, ConnectionClosed]]:
        """Finish the connection with ``error`` (unless it already is finished).

        Returns every waiter still pending, each with its own copy of the
        error that finished the connection, to be woken with at once.
        """
        if self.error is None:
            self.error = error
        final = self.error
        pending, self.pending = self.pending, {}
        self._end_streams(final)
        return [
            (w, fresh(final))
            for w in pending.values()
            if w is not None and type(w) is not StreamState
        ]


class ClientBase(Generic[W]):
    """What both clients expose of their core."""

    _core: ClientCore[W]

    @property
    def server_info(self) -> dict[str, Any]:
        """The server's hello map: ``protocol``, ``server``, ``max_frame``, ``max_inflight``."""
        return self._core.server_info

    @property
    def closed(self) -> bool:
        """True once the connection has ended (closed by us, by the server, or lost)."""
        return self._core.error is not None

    @property
    def core(self) -> ClientCore[W]:
        """The sans-IO :class:`ClientCore` this client drives, to inspect in tests and
        while debugging (``pending``, ``next_msgid``); the transport alone feeds it."""
        return self._core


class ClientFront(Generic[W]):
    """What both clients expose of the connection they use now (they replace it
    after a goaway or a loss)."""

    _current: ClientBase[W]
    _closed: bool
    _reconnect: bool

    @property
    def server_info(self) -> dict[str, Any]:
        """The current connection's hello map: ``protocol``, ``server``, ``max_frame`` ..."""
        return self._current.server_info

    @property
    def closed(self) -> bool:
        """True once closed by us; without ``reconnect``, also once the connection was lost."""
        return self._closed or (not self._reconnect and self._current.closed)

    @property
    def core(self) -> ClientCore[W]:
        """The current connection's sans-IO :class:`ClientCore`, to inspect in tests
        and while debugging (``pending``, ``next_msgid``)."""
        return self._current.core


def _notice_code(event: object) -> str | None:
    """The code of an error notice, else None."""
    if isinstance(event, wire.Notification) and event.method == "error" and event.params:
        err = event.params[0]
        if isinstance(err, dict) and isinstance(err.get("code"), str):
            return str(err["code"])
    return None


def _describe(event: object) -> str:
    if isinstance(event, wire.ProtocolViolation):
        return f"{event.code}: {event.message}"
    if isinstance(event, wire.Notification) and event.method == "error" and event.params:
        err = event.params[0]
        if isinstance(err, dict):
            return f"error notice {err.get('code')}: {err.get('message')}"
    return repr(event)
