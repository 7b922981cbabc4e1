"""PROXY protocol headers for tests, encoded from HAProxy's doc/proxy-protocol.txt.

Written apart from the parser (trio_echo.proxy_protocol) so that each checks the other.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence

from trio_echo.proxy_protocol import V2_SIGNATURE


def v1(proto: str, src: str = "", dst: str = "", sport: int = 0, dport: int = 0) -> bytes:
    """A version 1 line: ``PROXY TCP4 src dst sport dport\\r\\n`` (or ``PROXY UNKNOWN``)."""
    if proto == "UNKNOWN":
        return b"PROXY UNKNOWN\r\n"
    return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode()


def v2(
    *,
    command: int = 1,
    family: int = 1,
    transport: int = 1,
    addresses: bytes = b"",
    tlvs: Sequence[tuple[int, bytes]] = (),
    version: int = 2,
) -> bytes:
    """A version 2 header; ``family`` 0-3 is UNSPEC, INET, INET6, UNIX; ``command`` 0 is LOCAL."""
    body = addresses + b"".join(bytes([t]) + struct.pack(">H", len(v)) + v for t, v in tlvs)
    return (
        V2_SIGNATURE
        + bytes([version << 4 | command, family << 4 | transport])
        + struct.pack(">H", len(body))
        + body
    )


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    """A v2 INET or INET6 address block."""
    return (
        ipaddress.ip_address(src).packed
        + ipaddress.ip_address(dst).packed
        + struct.pack(">HH", sport, dport)
    )


def unix(src: bytes, dst: bytes) -> bytes:
    """A v2 UNIX address block (two NUL-padded 108-byte paths)."""
    return src.ljust(108, b"\x00") + dst.ljust(108, b"\x00")
