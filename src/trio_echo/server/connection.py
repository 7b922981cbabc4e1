"""One connection from accept to close: sniffing its kind, then raw echo or messages."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final

import trio

from .. import wire
from ..wire import Mode
from . import sockio as _sockio
from .outbox import cause
from .proxy import PrefixedStream, take_proxy_header
from .session import RECEIVE_SIZE, Session

if TYPE_CHECKING:
    from .context import ServerContext

__all__ = ["IDLE_GOAWAY_GRACE_S", "ClientConnection"]

log = logging.getLogger("trio_echo")

#: An idle version 2 connection is closed this long after its goaway("idle"), if
#: the client has not closed it first (it should, once it has read the goaway).
IDLE_GOAWAY_GRACE_S: Final = 1.0


class ClientConnection:
    """One connection from accept to close: sniffing, then raw echo or messages."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "ctx",
        "idle_goaway_at",
        "in_read",
        "last_active",
        "peer",
        "raw",
        "read_scope",
        "seen_bytes_in",
        "seen_bytes_out",
        "sending_raw",
        "session",
        "stalled_since",
        "stop_requested",
        "stream",
        "version",
        "whole_scope",
    )

    def __init__(self, ctx: ServerContext, stream: trio.abc.Stream) -> None:
        self.ctx = ctx
        self.stream = stream
        self.bytes_in = 0
        self.bytes_out = 0
        self.seen_bytes_in = 0
        # The write timeout (see Server._reap): bytes_out at the reaper's last
        # look, and since when a send has made no progress.
        self.seen_bytes_out = 0
        self.stalled_since = 0.0
        self.sending_raw = False
        # When an idle version 2 connection was told goaway("idle"), else None.
        self.idle_goaway_at: float | None = None
        self.last_active = trio.current_time()
        self.session: Session | None = None
        self.raw = False
        #: The protocol version of a framed connection (1 until its preamble says 2).
        self.version = wire.PROTOCOL_VERSION
        self.stop_requested = False
        # read_scope covers the current read loop; shutdown cancels it only
        # while the reader sits in a receive (in_read), never mid-send.
        self.in_read = False
        self.read_scope = trio.CancelScope()
        self.whole_scope = trio.CancelScope()
        self.peer = peer_name(stream)

    def busy(self) -> bool:
        """Owes the client something: a request in flight or a reply (or echo) unsent."""
        if self.raw:
            return self.bytes_out < self.bytes_in
        return self.session is not None and self.session.busy()

    def sent(self, n: int) -> None:
        """The peer accepted ``n`` more bytes (the write timeout's sign of progress)."""
        self.bytes_out += n
        self.ctx.bytes_out += n

    def sending(self) -> bool:
        """A send is under way (it may be stuck on a peer that does not read)."""
        if self.raw:
            return self.sending_raw
        return self.session is not None and self.session.sending

    def stop_reading(self) -> None:
        self.stop_requested = True
        if self.in_read:
            self.read_scope.cancel()

    def drain(self, grace_ms: int) -> None:
        """The server is shutting down: a version 2 session gets ``goaway`` and reads
        on until the client's EOF; any other connection stops reading."""
        session = self.session
        if session is None or not session.goaway(wire.GoawayReason.SHUTDOWN, grace_ms):
            self.stop_reading()

    def close_idle(self, now: float) -> None:
        """Idle for idle_timeout: close; a version 2 client is told first (goaway "idle").

        The goaway lets the client move its next call to a new connection
        without seeing an error; the connection closes at the client's EOF, or
        at the reaper's next look once IDLE_GOAWAY_GRACE_S has passed.
        """
        if self.idle_goaway_at is None:
            session = self.session
            grace_ms = int(IDLE_GOAWAY_GRACE_S * 1000)
            if session is not None and session.goaway(wire.GoawayReason.IDLE, grace_ms):
                self.idle_goaway_at = now
                return
        elif now - self.idle_goaway_at < IDLE_GOAWAY_GRACE_S:
            return
        self.whole_scope.cancel()

    def trim(self) -> None:
        """Free what a quiet connection need not keep (asked by the idle reaper)."""
        if self.session is not None:
            self.session.trim()

    def write_timed_out(self) -> None:
        """The peer accepted no byte of what it is owed for ``write_timeout``: close it."""
        ctx = self.ctx
        ctx.write_timeouts += 1
        log.info(
            "connection %s: no byte of its replies accepted for %gs; closing it (write_timeout)",
            self.peer,
            ctx.write_timeout,
        )
        self.whole_scope.cancel()

    async def run(self) -> None:
        stream = self.stream
        try:
            try:
                with self.whole_scope:
                    session = await self._run()
                if session is not None:
                    if self.whole_scope.cancel_called:
                        session.close()  # closed (idle, shutdown) before it began
                    else:
                        # Not inside whole_scope: the session's nursery takes its
                        # place (see Session.run), one cancel scope less (#15).
                        await session
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
                # A reset or a vanished peer is routine: one debug line, no traceback.
                exc = group.exceptions[0]
                log.debug(
                    "connection %s lost: %s", self.peer, cause(exc), extra={"peer": self.peer}
                )
        finally:
            if self.session is not None:
                self.session.abandon()
            await trio.aclose_forcefully(stream)

    async def receive(self) -> bytes:
        """One read (inside read_scope); ``b""`` at EOF or once shutdown began."""
        if self.stop_requested:
            return b""
        self.in_read = True
        data = await self.stream.receive_some(RECEIVE_SIZE)
        self.in_read = False
        self.bytes_in += len(data)
        self.ctx.bytes_in += len(data)
        return data  # type: ignore[return-value]  # sockets give bytes

    async def _run(self) -> Coroutine[Any, Any, None] | None:
        # Returns the session to await for a framed or msgpack-rpc connection.
        # Shutdown cancels read_scope while the sniff waits for bytes: then there
        # is no verdict, and the connection just closes.
        verdict: Mode | None = None
        prefix = b""
        with self.read_scope:
            first: bytes | None = b""
            # (Over TLS the server took the header before the handshake: see PrefixedStream.)
            if self.ctx.proxy_protocol and not isinstance(
                getattr(self.stream, "transport_stream", None), PrefixedStream
            ):
                first = await self._proxy_prelude()
            if first is not None:
                verdict, prefix = await self._sniff(first)
        if verdict is None:
            return None
        if verdict is Mode.RAW:
            await self._raw_echo(prefix)
            return None
        framed = verdict is Mode.FRAMED
        if framed:
            self.version = prefix[len(wire.MAGIC)]  # 1 or 2: sniffing checked it
            prefix = prefix[len(wire.PREAMBLE) :]
        self.session = Session(self, framed)
        # Awaited by run(), so that an idle connection's stack is one frame shorter (#15).
        return self.session.run(prefix)

    async def _proxy_prelude(self) -> bytes | None:
        """Take the connection's PROXY header: name the real client in ``peer``.

        Returns the bytes after the header, for sniffing; None if the connection
        must be closed (counted in ``stats()["proxy_rejected"]`` when refused).
        """
        taken = await take_proxy_header(
            self.receive, self.peer, self.ctx, lambda: self.stop_requested
        )
        if taken is None:
            return None
        client, first = taken
        if client is not None:
            self.peer = client
        return first

    async def _sniff(self, first: bytes = b"") -> tuple[Mode | None, bytes]:
        """Read until the connection's kind is known; (None, ...) means it is over.

        ``first`` holds bytes already read (those after a PROXY header).
        """
        ctx = self.ctx
        mode = ctx.mode
        prefix = b""
        verdict: Mode | wire.ProtocolViolation | bool | None
        while True:
            data, first = first or await self.receive(), b""
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
                ctx.count_error(verdict.code)
                log.info(
                    "connection %s rejected: %s",
                    self.peer,
                    verdict.message,
                    extra={"peer": self.peer, "code": verdict.code},
                )
                await self._send(wire.encode_error(None, verdict.code, verdict.message))
                return None, prefix
            assert isinstance(verdict, Mode)
            return verdict, prefix

    async def _send(self, data: bytes) -> None:
        await self.stream.send_all(data)
        self.sent(len(data))

    async def _raw_echo(self, first: bytes) -> None:
        """Compat mode: echo every byte back, in order, until EOF."""
        stream = self.stream
        ctx = self.ctx
        receive = _sockio.receiver(stream)
        fd = _sockio.socket_fd(stream)
        write_now = _sockio.write_now
        send_all = _sockio.send_all
        self.raw = True
        self.sending_raw = True
        await send_all(stream, fd, first, self)
        self.sending_raw = False
        self.read_scope = trio.CancelScope()
        with self.read_scope:
            while not self.stop_requested:
                self.in_read = True
                data = await receive(RECEIVE_SIZE)
                self.in_read = False
                if not data:
                    break
                n = len(data)
                self.bytes_in += n
                ctx.bytes_in += n
                sent = write_now(fd, data) if fd >= 0 else 0
                if sent:
                    self.sent(sent)
                if sent < n:
                    self.sending_raw = True
                    await send_all(stream, fd, memoryview(data)[sent:], self)
                    self.sending_raw = False


def peer_name(stream: trio.abc.Stream) -> str:
    """The address a connection's logs name: ``host:port``, a Unix path, or ``<...>``."""
    # A TLS connection's socket is its transport's; behind a balancer's PROXY header
    # (taken before the handshake) the client is the one the header named.
    transport = getattr(stream, "transport_stream", stream)
    if isinstance(transport, PrefixedStream) and transport.client is not None:
        return transport.client
    sock = getattr(transport, "socket", None)
    if sock is None:
        return f"<{type(stream).__name__}>"
    try:
        name = sock.getpeername()
    except OSError:
        return "<unknown>"
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name) or "unix"
