"""``--proxy-protocol``: read a connection's PROXY header before anything else.

The parsing is :mod:`trio_echo.proxy_protocol` (sans-IO); this is the Trio
side: bounded in time (:data:`PROXY_HEADER_TIMEOUT_S`) and in bytes (the
parser's limits), one log line for a connection that is refused.

With TLS the header comes in clear before the handshake (a balancer in TCP
mode passing TLS through, HAProxy's ``send-proxy-v2``): the server reads it
from the socket first, then runs TLS over a :class:`PrefixedStream` that
hands the handshake the bytes read past the header.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

import trio

from ..proxy_protocol import ProxyHeader, ProxyHeaderParser, ProxyViolation

if TYPE_CHECKING:
    from .context import ServerContext

__all__ = ["PROXY_HEADER_TIMEOUT_S", "PrefixedStream", "read_proxy_header", "take_proxy_header"]

log = logging.getLogger("trio_echo")

#: A balancer sends the header as soon as it has connected; a connection that
#: has not delivered all of it within this many seconds is closed.
PROXY_HEADER_TIMEOUT_S: Final = 5.0


async def read_proxy_header(
    receive: Callable[[], Awaitable[bytes | bytearray]],
    *,
    timeout: float = PROXY_HEADER_TIMEOUT_S,
) -> tuple[ProxyHeader, bytes] | ProxyViolation | None:
    """Read the PROXY header through ``receive`` (which returns ``b""`` at EOF).

    Returns the header and the bytes that followed it (the client's first
    bytes); a :class:`ProxyViolation` for a connection that must be closed
    because its header is missing, malformed or too slow; or None if the
    peer closed before sending a byte (a balancer's plain TCP check).
    """
    parser = ProxyHeaderParser()
    seen = 0
    verdict: ProxyHeader | ProxyViolation | None = None
    with trio.move_on_after(timeout):
        while verdict is None:
            data = await receive()
            if not data:
                if not seen:
                    return None
                verdict = ProxyViolation(f"the connection ended after {seen} byte(s) of header")
                break
            seen += len(data)
            verdict = parser.feed(data)
    if verdict is None:
        verdict = ProxyViolation(f"no complete PROXY header within {timeout:g} s")
    if isinstance(verdict, ProxyViolation):
        return verdict
    return verdict, parser.trailing_data


async def take_proxy_header(
    receive: Callable[[], Awaitable[bytes | bytearray]],
    peer: str,
    ctx: ServerContext,
    stopping: Callable[[], bool],
) -> tuple[str | None, bytes] | None:
    """A connection's PROXY header, logged: (the real client or None, the bytes after it).

    None if the connection must be closed: it ended before a byte or the
    server is stopping (``stopping()``), or it was refused (logged once at
    warning level and counted in ``stats()["proxy_rejected"]``).
    """
    result = await read_proxy_header(receive)
    if result is None or stopping():
        log.debug("connection %s closed before its PROXY header", peer)
        return None
    if isinstance(result, ProxyViolation):
        ctx.proxy_rejected += 1
        log.warning("connection %s refused (--proxy-protocol): %s", peer, result.message)
        return None
    header, first = result
    if header.client is not None:
        log.debug("connection %s is from %s (PROXY header)", peer, header.client)
    return header.client, first


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A socket stream whose first bytes were read already (those after a PROXY
    header): the transport a TLS connection's handshake runs over.

    ``socket`` is the socket underneath; ``client`` the real client the header
    named (None: the socket's own peer).
    """

    def __init__(self, stream: trio.SocketStream, first: bytes, client: str | None) -> None:
        self.stream = stream
        self.socket = stream.socket
        self.client = client
        self._first = first

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if not self._first:
            return await self.stream.receive_some(max_bytes)
        await trio.lowlevel.checkpoint()
        n = len(self._first) if max_bytes is None else max_bytes
        data, self._first = self._first[:n], self._first[n:]
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()
