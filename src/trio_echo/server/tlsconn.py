"""The server's side of a TLS connection: a bounded handshake and a polite close.

TLS wraps the byte stream unchanged: once :func:`handshake` has succeeded the
connection is served like any other (sniffing, modes, limits), through the
:class:`trio.SSLStream`'s own methods (:mod:`.sockio` reads and writes a
socket directly only for a plain ``trio.SocketStream``).
"""

from __future__ import annotations

import math
import ssl
from typing import Final

import trio

__all__ = ["TLSConnection", "handshake"]

#: How long closing may wait to hand the peer its close_notify.
CLOSE_NOTIFY_S: Final = 1.0


async def handshake(tls: trio.SSLStream[trio.SocketStream], timeout: float) -> str | None:
    """Run the handshake for at most ``timeout`` seconds (0 = no limit).

    Returns None on success, else why it failed, in a few words (the reason
    OpenSSL gives, e.g. ``WRONG_VERSION_NUMBER`` for a plaintext client).
    """
    with trio.move_on_after(timeout or math.inf):
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            why = exc.__cause__ or exc
            if isinstance(why, ssl.SSLError) and why.reason:
                return str(why.reason)
            return str(why) or type(why).__name__
        return None
    return f"not finished within {timeout:g}s"


class TLSConnection(trio.abc.Stream):
    """A handshaken :class:`trio.SSLStream` whose :meth:`aclose` still says goodbye.

    The connection code closes its stream with :func:`trio.aclose_forcefully`,
    which would drop the TLS ``close_notify``; then a standard client sees
    the close as a truncation (an error), not as EOF. Here the close_notify
    is sent anyway, shielded and bounded by :data:`CLOSE_NOTIFY_S`.
    """

    def __init__(self, tls: trio.SSLStream[trio.SocketStream]) -> None:
        self.tls = tls
        #: The TCP or Unix socket stream underneath (the connection's peer name comes from it).
        self.transport_stream = tls.transport_stream
        # The SSLStream's own bound methods: no extra call per read or write.
        self.receive_some = tls.receive_some  # type: ignore[method-assign]
        self.send_all = tls.send_all  # type: ignore[method-assign]

    # Shadowed per instance in __init__; here for the abstract base class.
    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.tls.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.tls.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.tls.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(CLOSE_NOTIFY_S):
                try:
                    await self.tls.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            # Timed out, or failed before closing the transport: close it now.
            await trio.aclose_forcefully(self.transport_stream)
