"""The blocking client: plain sockets and threads, no Trio needed.

Theory of operation. A :class:`BlockingConnection` owns one socket and the
same sans-IO :class:`~trio_echo.client.core.ClientCore` the async client
uses. Each call registers a :class:`_Waiter` (a locked lock that the reply
releases) under a fresh msgid and sends its request under a send lock. Then,
on a plain socket, the caller reads its own reply (leader/follower, as the
server does) if no one else holds the *read role*: it receives in its own
thread, completing any other caller's waiter whose reply comes first, until
its own arrives, so a thread calling in a loop never hands off to another
thread. Callers that find the role taken (and calls with a ``timeout``) wait
on their waiter as followers. A daemon reader thread takes the role whenever
calls wait for replies with no caller reading, and when no call has been made
for ``IDLE_S``, so that an idle connection is still read (server notices, a
goaway, a close); it alone runs ``on_notification``. A leader that meets a
notification, a goaway or the end of the connection hands the role to it.
Over TLS the reader thread alone reads. The core's state (the pending table,
the msgid counter, the read role) is touched only under ``_lock``; the socket
is written only under ``_send_lock`` (never held together with ``_lock``, so
a slow send never stalls a reader). A caller that gives up (``timeout``, or
``KeyboardInterrupt`` in a REPL) sends ``[3, msgid]`` and keeps the msgid
reserved until the late reply arrives.

The :class:`BlockingClient` users hold stands for an address: calls go to
its current :class:`BlockingConnection`, and it makes a new one when the
server says ``goaway`` (protocol version 2) or, with ``reconnect``, when the
connection is lost. Connecting again is done by the calling thread that
finds no usable connection, under ``_connect_lock`` (the others wait for
it), spaced by the core's :class:`Backoff`. A connection told to go away
takes no new call; once nothing is left to send on it (``_unsent``), it is
half-closed, and it closes when its last pending call is answered.

Streams (protocol version 2): :meth:`BlockingClient.stream` is a context
manager around a :class:`BlockingStream`. Whoever reads (the reader thread, or
a caller reading its own reply) files the server's items and credit into the
stream's :class:`~trio_echo.client.core.StreamState` under ``_lock`` and
notifies the stream's condition (on that same lock); the stream's thread
takes items, and grants credit as it takes them, under the lock too.
"""

from __future__ import annotations

import contextlib
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Final

from .. import wire
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
    lost,
    lost_before_hello,
    send_failed,
    send_interrupted,
)
from .tls_socket import TLSSocket

__all__ = ["BlockingClient", "BlockingConnection", "BlockingStream", "connect", "connect_unix"]

#: Opens one connection offering a protocol version, within a timeout in seconds.
BlockingDial = Callable[[int, float | None], "BlockingConnection"]

#: After a caller read its own reply, the reader thread reads again only once no
#: call has been made for this long, in seconds (or at once if calls are waiting).
IDLE_S: Final = 0.005
#: The read role's holder when it is the reader thread (else a leader's _Waiter, or None).
_READER: Final = "reader thread"
_RECEIVE: Final = (RECEIVE_SIZE,)
_DONTWAIT: Final = (socket.MSG_DONTWAIT,)
#: The tries of a call without a timeout, on its first try (never changed there).
_UNTIMED: Final = Attempts("", None, 0.0)


class _Waiter:
    """One call's outcome: a lock held until the reply (or the failure) releases it."""

    __slots__ = ("_lock", "error", "result")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.result: Any = None
        self.error: BaseException | None = None

    @property
    def waiting(self) -> bool:
        return self._lock.locked()

    def set(self, result: Any, error: BaseException | None) -> None:
        """Complete the call (once: its waiter leaves the pending table as it happens)."""
        self.result = result
        self.error = error
        self._lock.release()

    def wait(self, timeout: float | None) -> bool:
        """Block until completed (interruptible by Ctrl-C); False if ``timeout`` passed first."""
        return self._lock.acquire(timeout=-1 if timeout is None else timeout)

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class BlockingConnection(ClientBase[_Waiter]):
    """One thread-safe connection to a trio_echo server; calls from many threads share it.

    The :class:`BlockingClient` makes and replaces these; do not construct one directly.
    """

    def __init__(
        self,
        sock: socket.socket | TLSSocket,
        *,
        on_notification: NotificationHandler | None = None,
        max_frame: int = DEFAULT_RECEIVE_MAX_FRAME,
        version: int = wire.PROTOCOL_VERSION,
    ) -> None:
        """Take over a connected socket whose server has not been spoken to yet.

        ``sock`` may be a :class:`~trio_echo.client.tls_socket.TLSSocket`
        (then a Ctrl-C during a send closes the connection, since TLS
        records cannot be sent in part and resumed).

        Performs the handshake with the socket's current timeout.

        Raises:
            ConnectionClosed: the server closed the connection before its hello.
            VersionRefused: the server does not speak ``version`` (a ConnectionClosed).
            TimeoutError: the socket's timeout passed before the hello.
        """
        self._sock = sock
        self._core: ClientCore[_Waiter] = ClientCore(on_notification, max_frame, version)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        # Messages made (under _lock) but not yet written: after a goaway the
        # connection is half-closed only once this is 0 (see _retire_if_idle).
        self._unsent = 0
        self._released = False
        # The read role (module docstring): who holds it, whether a call was made since
        # the reader thread last looked, where the reader thread waits for the role, and
        # whether closing the socket waits for a leader to let go of it.
        self._reading: _Waiter | str | None = _READER
        self._called = False
        self._idle = threading.Condition(self._lock)
        self._release_later = False
        # Callers read their own replies only on a plain socket: a Ctrl-C in the middle
        # of TLSSocket.recv could lose bytes it had already taken from the kernel.
        self._callers_read = type(sock) is socket.socket
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

    def call(
        self, method: str, params: tuple[Any, ...], timeout: float | None, attempts: Attempts
    ) -> Any:
        """One try of a call on this connection (see :meth:`BlockingClient.call`).

        Raises:
            GoingAway: the server said goaway first; the request was not sent.
        """
        waiter = _Waiter()
        msgid = -1  # until registered
        in_time = True
        try:
            # In the try, so that a Ctrl-C landing anywhere from here on (a REPL user
            # stopping a loop of calls) never leaves the read role or a live msgid taken.
            with self._lock:
                msgid, data = self._core.request(method, params, timeout, waiter)
                self._called = True
                lead = self._reading is None and timeout is None and self._callers_read
                if lead:
                    # A leader's request is not counted in _unsent: only the holder of
                    # the read role can see a goaway, so none can wait for this send.
                    self._reading = waiter
                else:
                    self._unsent += 1
                    if self._reading is None:
                        self._idle.notify()  # the reader thread reads the reply
            if lead:
                self._send(data)
                self._read_own_reply(waiter)
            else:
                self._send_made(data)
                in_time = waiter.wait(timeout)
        except BaseException:
            # e.g. KeyboardInterrupt: cancel on the server too (GoingAway: nothing to do).
            self._give_up(msgid if msgid >= 0 else self._msgid_of(waiter), waiter)
            self._free_role(waiter)
            raise
        if not in_time:
            if self._give_up(msgid, waiter):
                raise attempts.expired() from None
            waiter.wait(None)  # the reply won the race
        return waiter.outcome()

    def open_stream(
        self,
        method: str,
        params: tuple[Any, ...],
        kind: str,
        window: int,
        timeout: float | None,
        deadline: float,
    ) -> BlockingStream:
        """Send a stream's request (see :meth:`BlockingClient.stream`)."""
        changed = threading.Condition(self._lock)
        with self._lock:
            state, data = self._core.open_stream(
                method, params, kind, window, timeout, changed.notify_all
            )
            self._unsent += 1
            self._called = True
            if self._reading is None:
                self._idle.notify()  # the reader thread reads what comes back
        self._send_made(data)
        return BlockingStream(self, state, changed, deadline, timeout)

    def _send_stream_message(self, make: Callable[[], bytes | None]) -> None:
        """Make a stream message under the lock (counted as unsent), then send it."""
        with self._lock:
            data = make()
            if data is None:
                return
            self._unsent += 1
        self._send_made(data)

    def notify(self, method: str, params: tuple[Any, ...]) -> None:
        """Send a notification (see :meth:`BlockingClient.notify`)."""
        with self._lock:
            data = self._core.notification(method, params)
            self._unsent += 1
        self._send_made(data)

    def close(self) -> None:
        """Close the connection; pending calls fail with :class:`ConnectionClosed`.

        The server is sent a cancel for each pending call first. Closing twice
        is fine.
        """
        with self._lock:
            waiters, cancels = self._core.close()
        for waiter, error in waiters:
            waiter.set(None, error)
        if cancels:
            self._send_cancel(cancels)
        self._fail(closed_by_us())
        self._shutdown()
        if threading.current_thread() is not self._reader:
            self._reader.join()
        self._release()

    # -- internals -----------------------------------------------------------------------

    def _send_made(self, data: bytes) -> None:
        """Send a message counted in ``_unsent``; then half-close if a goaway waits for it."""
        try:
            self._send(data)
        finally:
            with self._lock:
                self._unsent -= 1
            if self._core.goaway is not None:  # read after the decrement: see _settled
                self._retire_if_idle()

    def _send_cancel(self, data: bytes) -> None:
        """Send cancels, unless the connection is half-closed or finished (then they are moot)."""
        try:
            with self._send_lock:
                if self._core.half_closed or self._core.error is not None:
                    return
                self._sock.sendall(data)
        except OSError as exc:
            self._fail(send_failed(exc))

    def _retire_if_idle(self) -> None:
        """After a goaway, with nothing left to send: half-close (protocol.md §11.4).

        A TLS connection is not half-closed (a bare TCP FIN would cut the TLS
        stream): it closes with its last reply instead.
        """
        if not isinstance(self._sock, socket.socket):
            return
        with self._lock:
            core = self._core
            if core.goaway is None or self._unsent or core.half_closed or core.error is not None:
                return
            core.half_closed = True  # no cancel is sent after this
        with self._send_lock:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # already disconnected: the reader will see it

    def _release(self) -> None:
        """Close the socket, once (by close(), or by the reader when the connection ended).

        Under the send lock, so that no other thread is inside a send on the
        descriptor (which a new connection could otherwise be given).
        """
        with self._send_lock:
            with self._lock:
                if self._released:
                    return
                if isinstance(self._reading, _Waiter):
                    # A caller may be about to receive on the descriptor: it closes
                    # the socket as it lets go of the read role (_free_role).
                    self._release_later = True
                    return
                self._released = True
            self._sock.close()

    def _send(self, data: bytes) -> None:
        """Send all of ``data``: at once if the kernel takes it, else in ``sendall``.

        A Ctrl-C (main thread) cannot leave us unsure whether the message went
        out whole: the first, non-blocking send stores its byte count into
        ``sent`` from C (``list.extend`` over ``map``), and C code between the
        two runs no signal handler, so the count is known even if the interrupt
        lands the moment the send returns. (The same holds for the reads in
        ``_read_own_reply``; no ``pthread_sigmask`` round trip is needed.)
        """
        sent: list[int] = []  # bytes gone out, still known after an interrupt
        sock = self._sock
        try:
            with self._send_lock:
                try:
                    sent.extend(map(sock.send, (data,), _DONTWAIT))
                except (BlockingIOError, InterruptedError):
                    sent.append(0)
                if sent[0] < len(data):
                    sock.sendall(memoryview(data)[sent[0] :])
        except OSError as exc:
            self._fail(send_failed(exc))
            self._core.check_open()
            raise  # pragma: no cover - check_open raised
        except BaseException:
            if not sent or sent[0] == len(data):
                # Ctrl-C before the first send took a byte, or after the whole message
                # went out: the stream holds no half frame, the connection carries on.
                raise
            # Interrupted (Ctrl-C) in sendall: the stream may end in half a frame.
            self._fail(send_interrupted())
            self._shutdown()
            raise

    def _shutdown(self) -> None:
        """Shut the socket down both ways; this also wakes whoever is receiving."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already disconnected

    def _give_up(self, msgid: int, future: _Waiter) -> bool:
        """Abandon a call whose caller stopped waiting.

        Returns False if the call's outcome was already taken from the
        pending table (so it is, or is about to be, in ``future``).
        """
        with self._lock:
            owned = self._core.pending.get(msgid) is future
            cancel = self._core.abandon(msgid, future)
        if cancel is not None:
            self._send_cancel(cancel)
        return owned

    def _msgid_of(self, waiter: _Waiter) -> int:
        """The msgid ``waiter`` is registered under (-1 if none): for an interrupt that
        landed before the caller stored it."""
        with self._lock:
            for msgid, other in self._core.pending.items():
                if other is waiter:
                    return msgid
        return -1

    def _read_own_reply(self, waiter: _Waiter) -> None:
        """Receive, as the holder of the read role, until ``waiter`` has its outcome.

        Frees the role as it returns. A Ctrl-C (main thread) interrupts the wait
        in ``recv`` before any byte is taken, or lands once ``list.extend``
        stored what ``recv`` returned: C code between the two runs no signal
        handler, so no byte is lost.
        """
        recv = self._sock.recv
        while True:
            got: list[bytes] = []
            try:
                got.extend(map(recv, _RECEIVE))
            except OSError as exc:
                self._fail(connection_lost(exc))  # completes every waiter, this one too
                self._free_role(waiter)
                waiter.wait(None)
                return
            except BaseException:
                if got:  # a Ctrl-C that came with the data: keep the data
                    self._take(got[0], waiter)
                raise
            took = self._take(got[0], waiter)
            if took is None:
                waiter.wait(None)  # the reader thread took over: wait as a follower
                return
            if took:
                return

    def _take(self, data: bytes, waiter: _Waiter) -> bool | None:
        """Feed a leader's read to the core and complete the replies in it.

        Returns True once ``waiter`` has its outcome (the role is then free),
        False to read on, None if the reader thread has the role now (notices,
        the end of the connection) or the connection failed meanwhile.
        """
        core = self._core
        with self._lock:
            if self._reading is not waiter:
                return None
            replies = [] if core.error is not None else core.receive(data)
            mine: bool | None = False
            if core.notifications or core.error is not None or core.goaway is not None:
                self._reading = None  # the reader thread handles them
                self._idle.notify()
                mine = None
            else:
                for reply in replies:
                    if reply[0] is waiter:
                        mine = True
                        self._reading = None
                        if core.pending:
                            self._idle.notify()  # calls still wait: the reader takes over
                        break
            later = self._release_later and self._reading is None
        for other, result, error in replies:
            if other is waiter and mine:  # this thread returns it: no one waits on its lock
                waiter.result = result
                waiter.error = error
            else:
                other.set(result, error)
        if later:
            self._release()
        return mine

    def _free_role(self, waiter: _Waiter) -> None:
        """A leader stops reading: free the read role, for the reader if calls still wait."""
        with self._lock:
            if self._reading is not waiter:
                return
            self._reading = None
            if self._core.pending or self._core.error is not None:
                self._idle.notify()
            later = self._release_later
        if later:
            self._release()

    def _wait_for_role(self) -> bool:
        """Reader thread: wait until it should read (module docstring); False once finished."""
        core = self._core
        with self._lock:
            while core.error is None:
                if self._reading is _READER:
                    return True
                if self._reading is None:
                    if core.pending or core.notifications or core.goaway or not self._called:
                        self._reading = _READER
                        return True
                    self._called = False  # a caller read its reply lately: let it go on
                self._idle.wait(IDLE_S)
        return False

    def _read_loop(self) -> None:
        core = self._core
        lock = self._lock
        try:
            while self._wait_for_role():
                if self._settled():  # what a leader handed over (notices, a goaway)
                    break
                data = self._sock.recv(RECEIVE_SIZE)
                with lock:
                    replies = core.receive(data)
                    if replies and not core.pending and core.usable and not core.notifications:
                        self._reading = None  # calls are being made: let the callers read
                for waiter, result, error in replies:
                    waiter.set(result, error)
                if self._settled():
                    break
        except Exception as exc:  # OSError, or a bug: either way no call may hang
            self._fail(connection_lost(exc))
        if core.error is not None:
            self._fail(core.error)
        # The connection is over, whoever ended it: let the socket go.
        self._shutdown()
        self._release()

    def _settled(self) -> bool:
        """Reader thread, after a read: notices, the end, a goaway; True once it is over."""
        core = self._core
        core.settle()  # notifications; an error ends the loop
        if core.error is not None:
            return True
        if core.goaway is not None:
            self._retire_if_idle()
            with self._lock:
                done = not core.has_live_calls() and not self._unsent
            if done:  # everything asked here is answered: done with it
                self._fail(core.closed_after_goaway())
                return True
        return False

    def _fail(self, error: ConnectionClosed) -> None:
        with self._lock:
            waiters = self._core.fail(error)
            leader = isinstance(self._reading, _Waiter)
            self._idle.notify_all()
        for waiter, final in waiters:
            waiter.set(None, final)
        if leader:
            self._shutdown()  # a caller may be in recv: wake it


class BlockingStream(StreamFront):
    """One open stream of a :class:`BlockingClient` (protocol version 2), from
    :meth:`BlockingClient.stream`; the blocking twin of the async client's ``Stream``.

    ``for item in stream`` receives the server's items; :meth:`send`, :meth:`end`
    and :meth:`finish` send. Credit is granted as items are taken.
    """

    def __init__(
        self,
        conn: BlockingConnection,
        state: StreamState,
        changed: threading.Condition,
        deadline: float,
        timeout: float | None,
    ) -> None:
        self._conn = conn
        self._state = state
        self._changed = changed
        self._deadline = deadline
        self._timeout = timeout
        # A cancel made when the local deadline passed, sent once _lock is released.
        self._cancel_due: bytes | None = None

    def receive(self) -> Any:
        """The next item the server sent, waiting for it if need be.

        Raises:
            EOFError: the stream ended successfully (then see :attr:`result`).
            RemoteError: it ended with an error (``DeadlineExceeded`` for ``timeout``).
            ConnectionClosed: the connection was lost.
            TypeError: a client stream, on which the server sends no items.
        """
        state = self._state
        conn = self._conn
        if not state.receives:
            raise TypeError(f"{state.method}: a client stream receives no items")
        with self._deadline_checked(), conn._lock:
            while not state.buffer:
                if state.done:
                    if state.error is not None:
                        raise state.error
                    raise EOFError(f"{state.method}: the stream has ended")
                self._wait()
            item, credit = conn._core.stream_take(state)
            if credit is not None:
                conn._unsent += 1
        if credit is not None:
            conn._send_made(credit)
        return item

    def __iter__(self) -> BlockingStream:
        return self

    def __next__(self) -> Any:
        try:
            return self.receive()
        except EOFError:
            raise StopIteration from None

    def send(self, item: Any) -> None:
        """Send one item once the server has granted a credit for it.

        Raises:
            RemoteError, ConnectionClosed: the stream ended first.
            RuntimeError: after :meth:`end`.
            TypeError: a server stream, or an item msgpack cannot encode.
        """
        state = self._state
        conn = self._conn
        if not state.sends:
            raise TypeError(f"{state.method}: a server stream takes no items from the client")
        if state.ended:
            raise RuntimeError(f"{state.method}: send() after end()")
        with self._deadline_checked(), conn._lock:
            while not state.send_credit:
                if state.done:
                    if state.error is not None:
                        raise state.error
                    raise ConnectionClosed(f"{state.method}: the stream is over")
                self._wait()
            data = conn._core.stream_items(state, [item])
            conn._unsent += 1
        conn._send_made(data)

    def end(self, error: RemoteError | None = None) -> None:
        """Tell the server the client sent its last item (or, with ``error``, that its
        producer failed). Ending twice is fine."""
        self._conn._send_stream_message(lambda: self._conn._core.stream_end(self._state, error))

    def finish(self) -> Any:
        """End the client's side (if it sends), let the remaining items go, and return
        the result when the response comes."""
        state = self._state
        if state.sends and not state.ended:
            self.end()
        while True:
            with self._deadline_checked(), self._conn._lock:
                if state.done and not state.buffer:
                    break
                if not state.buffer:
                    self._wait()
                    continue
            self.receive()
        return self.result

    @contextlib.contextmanager
    def _deadline_checked(self) -> Iterator[None]:
        """Around a ``with _lock`` block that may wait: send the cancel that a passed
        deadline made, once the lock is released."""
        try:
            yield
        finally:
            cancel, self._cancel_due = self._cancel_due, None
            if cancel is not None:
                self._conn._send_made(cancel)

    def _wait(self) -> None:
        """Wait (``_lock`` held) until the stream changes, within the deadline."""
        conn = self._conn
        if conn._reading is None:
            conn._idle.notify()  # make sure someone reads
        left = self._deadline - time.monotonic()
        if left <= 0:
            state = self._state
            error = DeadlineExceeded(
                f"{state.method}: the stream did not end within {self._timeout:g} s "
                "(local deadline)"
            )
            cancel = conn._core.stream_cancel(state)
            state.error = error
            if cancel is not None:
                conn._unsent += 1
                self._cancel_due = cancel  # sent by _deadline_checked, without the lock
            raise error
        self._changed.wait(min(left, 1.0) if left != math.inf else 1.0)

    def _abandon(self) -> None:
        self._conn._send_stream_message(lambda: self._conn._core.stream_cancel(self._state))


class BlockingClient(ClientFront[_Waiter]):
    """A thread-safe client of one trio_echo server address; many threads call at once.

    Calls share its current connection. When the server says ``goaway``
    (protocol version 2) new calls go to a new connection while the pending
    ones finish on the old one, and a call answered ``unavailable`` is sent
    again there. When the connection is lost, the calls pending on it fail
    with :class:`ConnectionClosed` and the next call connects again (unless
    ``reconnect=False``). Get one from :func:`connect` or
    :func:`connect_unix`; use it as a context manager, or call :meth:`close`.
    """

    _current: BlockingConnection

    def __init__(
        self,
        sock: socket.socket | TLSSocket,
        *,
        on_notification: NotificationHandler | None = None,
        max_frame: int = DEFAULT_RECEIVE_MAX_FRAME,
        version: int = wire.LATEST_VERSION,
    ) -> None:
        """Take over a connected socket whose server has not been spoken to yet.

        Performs the handshake (offering ``version``) with the socket's
        current timeout. With no address to connect to again, the client
        keeps this one connection (as with ``reconnect=False``).

        Raises:
            ConnectionClosed: the server closed the connection before its hello.
            TimeoutError: the socket's timeout passed before the hello.
        """
        first = BlockingConnection(
            sock, on_notification=on_notification, max_frame=max_frame, version=version
        )
        self._setup(first, None, "<socket>", reconnect=False, connect_timeout=None)

    @classmethod
    def _dialled(
        cls,
        first: BlockingConnection,
        dial: BlockingDial,
        where: str,
        *,
        reconnect: bool,
        connect_timeout: float | None,
    ) -> BlockingClient:
        """A client that can connect to ``where`` again with ``dial``."""
        client = cls.__new__(cls)
        client._setup(first, dial, where, reconnect=reconnect, connect_timeout=connect_timeout)
        return client

    def _setup(
        self,
        first: BlockingConnection,
        dial: BlockingDial | None,
        where: str,
        *,
        reconnect: bool,
        connect_timeout: float | None,
    ) -> None:
        self._dial = dial
        self._where = where
        self._reconnect = reconnect and dial is not None
        self._connect_timeout = math.inf if connect_timeout is None else connect_timeout
        self._current = first
        self._connections = [first]
        self._connect_lock = threading.Lock()
        self._backoff = Backoff()
        self._closed = False

    def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        """Call ``method`` with positional ``params``; block until its result arrives.

        A call the server answered ``unavailable`` (it was going away and did
        not run it) is sent again on a new connection, at most
        ``UNAVAILABLE_RETRIES`` times, within ``timeout``.

        Args:
            method: the method name.
            *params: its parameters (any msgpack-able values).
            timeout: seconds for the whole call, retries included. Sent to the
                server as ``timeout_ms`` (what is left of it) and also
                enforced here; either way the call raises DeadlineExceeded.

        Raises:
            RemoteError: the server answered with an error; the subclass names
                the code. The connection stays usable.
            Unavailable: answered ``unavailable`` on every try.
            DeadlineExceeded: ``timeout`` passed (the connection stays usable).
            FrameTooLarge: the request exceeds the server's ``max_frame``; it
                was not sent and the connection stays usable.
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
                return conn.call(method, params, None, _UNTIMED)
            except (GoingAway, Unavailable) as exc:
                attempts = Attempts(method, timeout, time.monotonic())
                attempts.tries = 1
                if not attempts.again(exc, self._reconnect):
                    raise
        else:
            attempts = Attempts(method, timeout, time.monotonic())
        while True:
            conn = self._connection(attempts)
            try:
                return conn.call(method, params, attempts.remaining(time.monotonic()), attempts)
            except (GoingAway, Unavailable) as exc:
                if not attempts.again(exc, self._reconnect):
                    raise

    @contextlib.contextmanager
    def stream(
        self,
        method: str,
        *params: Any,
        kind: str = "server",
        window: int = DEFAULT_STREAM_WINDOW,
        timeout: float | None = None,
    ) -> Iterator[BlockingStream]:
        """Open a stream (protocol version 2): ``with client.stream(...) as s: for item in s``.

        As the async :meth:`Client.stream <trio_echo.Client.stream>`: ``kind``
        is the method's (``"server"``, ``"client"``, ``"bidi"``), leaving the
        block before the end cancels the stream on the server, ``window`` is
        the credit granted, ``timeout`` covers the whole call.

        Raises:
            UnsupportedVersion: the server speaks only protocol version 1.
            ConnectionClosed, ValueError, FrameTooLarge: as for :meth:`call`.
        """
        attempts = Attempts(method, timeout, time.monotonic())
        conn = self._connection(attempts)
        stream = conn.open_stream(method, params, kind, window, timeout, attempts.deadline)
        try:
            yield stream
        finally:
            if not stream.done:
                stream._abandon()

    def notify(self, method: str, *params: Any) -> None:
        """Send a notification: the server runs ``method`` and never replies.

        Raises:
            FrameTooLarge: the message exceeds the server's ``max_frame``.
            ConnectionClosed: no connection (closed, or lost and not remade).
            TypeError: a parameter cannot be encoded as msgpack.
        """
        attempts = Attempts(method, None, time.monotonic())
        while True:
            conn = self._connection(attempts)
            try:
                return conn.notify(method, params)
            except GoingAway:
                if not self._reconnect:
                    raise

    def close(self) -> None:
        """Close every connection; pending calls fail with :class:`ConnectionClosed`.

        The server is sent a cancel for each pending call first. Closing twice
        is fine.
        """
        self._closed = True
        with self._connect_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connection(self, attempts: Attempts) -> BlockingConnection:
        """The connection for a new call: the current one, or a new one (made here).

        Raises:
            ConnectionClosed: the client is closed, or may not reconnect
                (GoingAway if the server said goaway), or no connection was
                made within ``connect_timeout``.
            DeadlineExceeded: the call's timeout passed first.
        """
        while True:
            if self._closed:
                raise closed_by_us()
            conn = self._current
            if conn.core.usable:
                return conn
            if not self._reconnect:
                conn.core.check_usable()
            wait = min(attempts.deadline, time.monotonic() + self._connect_timeout)
            if not self._connect_lock.acquire(timeout=_lock_timeout(wait - time.monotonic())):
                if time.monotonic() >= attempts.deadline:
                    raise attempts.expired()
                raise ConnectionClosed(
                    f"no connection to {self._where} within {self._connect_timeout:g} s"
                )
            try:
                if self._current is conn and not self._closed:  # nobody made one meanwhile
                    self._connect_again(conn, attempts)
            finally:
                self._connect_lock.release()

    def _connect_again(self, old: BlockingConnection, attempts: Attempts) -> None:
        """Make a new current connection, spaced by the backoff, within ``connect_timeout``
        and the call's own deadline. Called with ``_connect_lock`` held."""
        assert self._dial is not None
        if old.core.goaway is None:
            self._backoff.lost()  # lost, not moved away from: do not come back at once
        limit = min(time.monotonic() + self._connect_timeout, attempts.deadline)
        error: Exception | None = None
        while (now := time.monotonic()) < limit:
            time.sleep(min(self._backoff.delay(), limit - now))
            try:
                conn = _offer_versions(self._dial, max(limit - time.monotonic(), 0.001))
            except Exception as exc:  # OSError, ConnectionClosed, ...: try again
                self._backoff.failed()
                error = exc
                continue
            self._backoff.succeeded()
            if self._closed:  # closed meanwhile, by another thread
                conn.close()
                raise closed_by_us()
            self._connections = [c for c in self._connections if not c.closed] + [conn]
            self._current = conn
            return
        if limit == attempts.deadline:
            raise attempts.expired() from error
        if error is not None:
            raise lost(f"cannot connect to {self._where}", error) from error
        raise ConnectionClosed(f"no connection to {self._where} within {self._connect_timeout:g} s")


def _lock_timeout(seconds: float) -> float:
    """A ``Lock.acquire`` timeout: -1 (forever) for an infinite wait."""
    if math.isinf(seconds):
        return -1
    return max(seconds, 0.0)


def _offer_versions(dial: BlockingDial, timeout: float | None) -> BlockingConnection:
    """A connection of the newest protocol version the server speaks (protocol.md §11.1)."""
    try:
        return dial(wire.LATEST_VERSION, timeout)
    except VersionRefused:
        return dial(wire.PROTOCOL_VERSION, timeout)


def connect(
    host: str,
    port: int,
    *,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT_S,
    on_notification: NotificationHandler | None = None,
    max_frame: int = DEFAULT_RECEIVE_MAX_FRAME,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    reconnect: bool = True,
) -> BlockingClient:
    """Connect to a trio_echo server and return a :class:`BlockingClient`.

    Returns once the server's hello has arrived::

        with trio_echo.connect("127.0.0.1", 7000) as client:
            print(client.call("echo", "hi"))

    The client offers protocol version 2 and falls back to 1 for an older
    server. It follows the server's ``goaway`` to a new connection and, when
    a connection is lost, connects again for the next call (see
    :class:`BlockingClient`). The first connection is not retried: if it
    fails, this raises at once.

    Args:
        host: the server's host name or address (or a load balancer's).
        port: the server's port.
        connect_timeout: seconds allowed for connecting, the TLS handshake
            and the hello (``None`` waits forever); later, how long a call
            waits for a new connection (attempts are spaced 50 ms, doubling
            to 5 s).
        on_notification: called as ``on_notification(method, params)`` from
            the reader thread for every server notification except ``hello``
            and ``goaway``. It must not block or call the client; if it
            raises, the connection is closed.
        max_frame: the largest reply accepted from the server, in bytes (16 MiB
            by default). A larger one fails only its call, with
            ``FrameTooLarge``; it is skipped unread and the connection stays usable.
        ssl_context: speak TLS with this client context (load a client
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
        ssl.SSLError: the TLS handshake failed (a subclass of ``OSError``).
        ConnectionClosed: the server closed the connection before its hello.
    """

    def open_socket(timeout: float | None) -> socket.socket:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    where = address(host, port)
    dial = _dialer(
        open_socket, where, on_notification, max_frame, ssl_context, server_hostname or host
    )
    return BlockingClient._dialled(
        _offer_versions(dial, connect_timeout),
        dial,
        where,
        reconnect=reconnect,
        connect_timeout=connect_timeout,
    )


def connect_unix(
    path: str,
    *,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT_S,
    on_notification: NotificationHandler | None = None,
    max_frame: int = DEFAULT_RECEIVE_MAX_FRAME,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    reconnect: bool = True,
) -> BlockingClient:
    """Connect to a trio_echo server on a Unix domain socket; like :func:`connect`."""

    def open_socket(timeout: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return sock

    dial = _dialer(open_socket, path, on_notification, max_frame, ssl_context, server_hostname)
    return BlockingClient._dialled(
        _offer_versions(dial, connect_timeout),
        dial,
        path,
        reconnect=reconnect,
        connect_timeout=connect_timeout,
    )


def _dialer(
    open_socket: Callable[[float | None], socket.socket],
    where: str,
    on_notification: NotificationHandler | None,
    max_frame: int,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
) -> BlockingDial:
    """How to open one more connection to ``where``."""

    def dial(version: int, connect_timeout: float | None) -> BlockingConnection:
        sock: socket.socket | None = None
        try:
            try:
                sock = open_socket(connect_timeout)
            except TimeoutError:
                raise
            except OSError as exc:
                raise connect_failed(where, exc)  # noqa: B904 - its __cause__ is the root cause
            transport: socket.socket | TLSSocket = sock
            if ssl_context is not None:
                transport = TLSSocket(sock, ssl_context, server_hostname)
            return BlockingConnection(
                transport, on_notification=on_notification, max_frame=max_frame, version=version
            )
        except TimeoutError:
            if sock is not None:
                sock.close()
            raise connect_timed_out(where, connect_timeout) from None
        except BaseException:
            if sock is not None:
                sock.close()
            raise

    return dial
