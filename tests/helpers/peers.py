"""Bare protocol peers: a Trio stream or a blocking socket driven by a bare wire.Connection.

They speak exactly what a test tells them to, so tests can send what no real
client would (bad frames, duplicate msgids, half a message) and see every event.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from trio_echo import wire
from trio_echo.testing import Peer

__all__ = ["Peer", "SyncPeer", "framed_peer"]


@asynccontextmanager
async def framed_peer(port: int) -> AsyncIterator[Peer]:
    """A framed peer connected over loopback, past the hello."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        peer = Peer(stream)
        await peer.start()
        yield peer


class SyncPeer:
    """A blocking socket with a bare :class:`wire.Connection` (for servers in other threads
    or processes).

    ``SyncPeer(port)`` connects to a server and sends the preamble;
    ``SyncPeer.serving(sock)`` plays the server on a connected socket (for client tests).
    """

    def __init__(
        self,
        port: int,
        mode: wire.Mode = wire.Mode.FRAMED,
        timeout: float = 10,
        version: int = wire.PROTOCOL_VERSION,
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.conn = wire.Connection(mode=mode, version=version)
        self.sock.sendall(self.conn.initiate())

    def __enter__(self) -> SyncPeer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    @classmethod
    def serving(cls, sock: socket.socket, timeout: float = 10) -> SyncPeer:
        """The server end of a connected socket (a ``socketpair``'s other end, say)."""
        peer = cls.__new__(cls)
        peer.sock = sock
        peer.conn = wire.Connection(wire.Role.SERVER)
        sock.settimeout(timeout)
        return peer

    def send(self, *events: wire.Event) -> None:
        self.sock.sendall(b"".join(self.conn.send(e) for e in events))

    def next_event(self) -> wire.Event:
        """The next event; raises EOFError at a close."""
        while True:
            event = self.conn.next_event()
            if event is not wire.NEED_DATA:
                assert not isinstance(event, type(wire.NEED_DATA))
                return event
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            self.conn.receive_data(data)

    def call(self, msgid: int, method: str, *params: Any) -> wire.Event:
        self.send(wire.Request(msgid, method, list(params)))
        return self.next_event()

    def until_eof(self) -> list[wire.Event]:
        events = []
        while True:
            try:
                events.append(self.next_event())
            except EOFError:
                return events

    def close(self) -> None:
        self.sock.close()
