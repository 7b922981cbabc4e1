"""One connection from accept to close: sniffing its kind, then raw echo or messages."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from .. import wire
from ..wire import Mode
from . import sockio as _sockio
from .engine import RECEIVE_SIZE, MessageConnection, cause
from .proxy import proxy_prelude

if TYPE_CHECKING:
    from .server import Server

__all__ = ["ConnectionState"]

log = logging.getLogger("trio_echo")


class ConnectionState:
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
        "version",
        "whole_scope",
    )

    def __init__(self, server: Server, stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        self.bytes_in = 0
        self.bytes_out = 0
        self.seen_bytes_in = 0
        self.last_active = trio.current_time()
        self.engine: MessageConnection | None = None
        self.raw = False
        #: The protocol version of a framed connection (1 until its preamble says 2).
        self.version = wire.PROTOCOL_VERSION
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
                    log.debug(
                        "connection %s lost: %s", self.peer, cause(exc), extra={"peer": self.peer}
                    )
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
        verdict: Mode | None = None  # stays None if shutdown cancels the read below
        with self.read_scope:
            first: bytes | None = b""
            if self.server.proxy_protocol:
                first = await proxy_prelude(self)
            if first is not None:
                verdict, prefix = await self._sniff(first)
        if verdict is None:
            return
        if verdict is Mode.RAW:
            await self._raw_echo(prefix)
            return
        framed = verdict is Mode.FRAMED
        if framed:
            self.version = prefix[len(wire.MAGIC)]  # 1 or 2: sniffing checked it
            prefix = prefix[len(wire.PREAMBLE) :]
        self.engine = MessageConnection(self, framed)
        await self.engine.run(prefix)

    async def _sniff(self, first: bytes = b"") -> tuple[Mode | None, bytes]:
        """Read until the connection's kind is known; (None, ...) means it is over.

        ``first`` holds bytes already read (those after a PROXY header).
        """
        server = self.server
        mode = server.mode
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
                server.count_error(verdict.code)
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
        self.bytes_out += len(data)

    async def _raw_echo(self, first: bytes) -> None:
        """Compat mode: echo every byte back, in order, until EOF."""
        stream = self.stream
        send_all = stream.send_all
        receive = _sockio.receiver(stream)
        fd = _sockio.socket_fd(stream)
        write_now = _sockio.write_now
        self.raw = True
        await send_all(first)
        self.bytes_out += len(first)
        self.read_scope = trio.CancelScope()
        with self.read_scope:
            while not self.stop_requested:
                self.in_read = True
                data = await receive(RECEIVE_SIZE)
                self.in_read = False
                if not data:
                    break
                self.bytes_in += len(data)
                sent = write_now(fd, data) if fd >= 0 else 0
                if sent < len(data):
                    await send_all(memoryview(data)[sent:])
                self.bytes_out += len(data)


def _peer_name(stream: trio.abc.Stream) -> str:
    # A TLS connection's socket is its transport's.
    sock = getattr(getattr(stream, "transport_stream", stream), "socket", None)
    if sock is None:
        return f"<{type(stream).__name__}>"
    try:
        name = sock.getpeername()
    except OSError:
        return "<unknown>"
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)
