"""Test your service without a network: a real server and client over an in-memory stream.

In the spirit of grpclib's ``testing.ChannelFor``: :func:`open_test_client`
serves a :class:`~trio_echo.Service` with a real :class:`~trio_echo.Server`
over :func:`trio.testing.memory_stream_pair` and yields the real async client
connected to it, so a test exercises everything but the sockets::

    async def test_add():
        async with trio_echo.testing.open_test_client(service) as client:
            assert await client.call("add", 1, 2) == 3

No port, no thread, no real time: it works under pytest-trio's
``autojump_clock``. :func:`open_test_peer` gives a :class:`Peer` instead, which
sends and receives protocol messages as they are (any msgid, bad frames, half
a message) for tests of the protocol itself.

For a test over real loopback sockets, serve on port 0 and ask the listeners
for the port::

    listeners = await nursery.start(trio_echo.serve, service, "127.0.0.1", 0)
    port = trio_echo.testing.listening_port(listeners)

Nothing here needs pytest.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import trio
import trio.testing

from . import wire
from ._groups import background
from .client.async_client import Client, open_client_over_stream
from .client.core import NotificationHandler
from .server.server import Server
from .server.service import Service

__all__ = ["Peer", "listening_port", "open_test_client", "open_test_peer"]

#: How long a :class:`Peer` waits for an event before it fails, in seconds.
DEFAULT_PEER_TIMEOUT_S = 10.0


@asynccontextmanager
async def open_test_client(
    service: Service | Server | None = None,
    *,
    lockstep: bool = False,
    on_notification: NotificationHandler | None = None,
    **server_options: Any,
) -> AsyncIterator[Client]:
    """Serve ``service`` in memory and yield a :class:`~trio_echo.Client` connected to it.

    Args:
        service: your methods (served beside the built-ins), or a whole
            :class:`~trio_echo.Server` (to look at its ``stats()`` after).
        lockstep: use :func:`trio.testing.lockstep_stream_pair` (no buffering
            at all, to test backpressure) instead of a memory stream pair.
        on_notification: as for :func:`trio_echo.open_client`.
        **server_options: settings of the server made for ``service``
            (``max_frame=100``, ``debug=True`` ...; see :class:`~trio_echo.ServerConfig`).

    Exceptions raised in the ``async with`` body come out as they are, not in
    an exception group. The server stops when the block ends.
    """
    server, client_stream, server_stream = _pair(service, lockstep, server_options)
    async with (
        background(functools.partial(server.serve_stream, server_stream)),
        open_client_over_stream(client_stream, on_notification=on_notification) as client,
    ):
        yield client


@asynccontextmanager
async def open_test_peer(
    service: Service | Server | None = None,
    *,
    mode: wire.Mode = wire.Mode.FRAMED,
    lockstep: bool = False,
    **server_options: Any,
) -> AsyncIterator[Peer]:
    """Serve ``service`` in memory and yield a :class:`Peer` connected to it.

    In framed mode the peer has sent the preamble and read the hello (its
    map is :attr:`Peer.server_info`); in ``wire.Mode.MPRPC`` it starts sending at
    once. Arguments as for :func:`open_test_client`.
    """
    server, client_stream, server_stream = _pair(service, lockstep, server_options)
    async with background(functools.partial(server.serve_stream, server_stream)), client_stream:
        peer = Peer(client_stream, mode)
        if mode is wire.Mode.FRAMED:
            await peer.start()
        yield peer


def listening_port(listeners: Sequence[trio.SocketListener]) -> int:
    """The TCP port the first of ``listeners`` listens on (those ``serve`` hands back).

    With ``await nursery.start(trio_echo.serve, service, "127.0.0.1", 0)``
    (port 0: the system picks a free one), this is the port it picked.
    """
    port: int = listeners[0].socket.getsockname()[1]
    return port


class Peer:
    """A protocol peer: a Trio stream driven through a bare :class:`wire.Connection`.

    It sends exactly the messages it is given and returns every event the
    other side sends, in order, so tests can check the protocol itself. A
    client by default; ``role=wire.Role.SERVER`` plays a fake server (to test
    a client). Reads fail with :class:`trio.TooSlowError` after ``timeout``
    seconds without an event, so a test never hangs.

    Attributes:
        stream: the stream it talks over (send raw bytes with ``stream.send_all``).
        conn: its :class:`wire.Connection`.
        server_info: the server's hello map, once :meth:`start` has read it.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        mode: wire.Mode = wire.Mode.FRAMED,
        role: wire.Role = wire.Role.CLIENT,
        version: int = wire.PROTOCOL_VERSION,
        *,
        timeout: float = DEFAULT_PEER_TIMEOUT_S,
    ) -> None:
        self.stream = stream
        self.conn = wire.Connection(role, mode, version=version)
        self.timeout = timeout
        self.server_info: dict[str, Any] = {}

    async def start(self) -> dict[str, Any]:
        """Send the preamble; return the server's hello map (framed mode).

        Raises:
            AssertionError: the first message was not a hello.
        """
        await self.stream.send_all(self.conn.initiate())
        hello = await self.next_event()
        if not (isinstance(hello, wire.Notification) and hello.method == "hello"):
            raise AssertionError(f"expected the server's hello, got {hello!r}")
        self.server_info = hello.params[0]
        return self.server_info

    async def send(self, *events: wire.Event) -> None:
        """Send ``events`` in one write."""
        await self.stream.send_all(b"".join(self.conn.send(e) for e in events))

    async def request(self, msgid: int, method: str, *params: Any, **options: Any) -> None:
        """Send a request; ``options`` are its options map (``timeout_ms=100``)."""
        await self.send(wire.Request(msgid, method, list(params), options or None))

    async def next_event(self) -> wire.Event:
        """The next event.

        Raises:
            EOFError: the other side closed first.
            trio.TooSlowError: nothing came within ``timeout`` seconds.
        """
        with trio.fail_after(self.timeout):
            while (event := self.conn.next_event()) is wire.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            return cast(wire.Event, event)

    async def events(self, n: int) -> list[wire.Event]:
        """The next ``n`` events."""
        return [await self.next_event() for _ in range(n)]

    async def call(self, msgid: int, method: str, *params: Any, **options: Any) -> wire.Event:
        """Send a request and return the next event (its reply, if nothing else is in flight)."""
        await self.request(msgid, method, *params, **options)
        return await self.next_event()

    async def expect_close(self) -> list[wire.Event]:
        """Read until the other side closes; return the events that came before."""
        seen = []
        with trio.fail_after(self.timeout):
            while True:
                try:
                    seen.append(await self.next_event())
                except EOFError:
                    return seen


def _pair(
    service: Service | Server | None, lockstep: bool, server_options: dict[str, Any]
) -> tuple[Server, trio.abc.Stream, trio.abc.Stream]:
    if isinstance(service, Server):
        if server_options:
            raise TypeError("server options go to the Server you made, not here")
        server = service
    else:
        server = Server(service, **server_options)
    make = trio.testing.lockstep_stream_pair if lockstep else trio.testing.memory_stream_pair
    client_stream, server_stream = make()
    return server, client_stream, server_stream
