"""``--proxy-protocol``: read a connection's PROXY header before anything else.

The parsing is :mod:`trio_echo.proxy_protocol` (sans-IO); this is the Trio
side: bounded in time (:data:`PROXY_HEADER_TIMEOUT_S`) and in bytes (the
parser's limits), one log line for a connection that is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from ..proxy_protocol import ProxyHeader, ProxyHeaderParser, ProxyViolation

__all__ = ["PROXY_HEADER_TIMEOUT_S", "read_proxy_header"]

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
