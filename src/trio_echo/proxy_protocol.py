"""The PROXY protocol header (v1 text and v2 binary), as a sans-IO parser.

A load balancer in TCP mode (HAProxy's ``send-proxy`` / ``send-proxy-v2``,
AWS NLB, Envoy, ...) connects to the server itself, so the server's socket
names the balancer, not the client. The balancer can open each connection
with a PROXY header that carries the real client's address, followed by the
client's own bytes. This module reads that header, as specified in HAProxy's
``doc/proxy-protocol.txt``; it does no I/O and imports no Trio.

Feed bytes to :meth:`ProxyHeaderParser.feed` until it returns a
:class:`ProxyHeader` (the bytes after the header are then in
:attr:`ProxyHeaderParser.trailing_data`) or a :class:`ProxyViolation`.
A server must only accept the header from a trusted balancer (anyone else
could forge it), and must then require it on every connection: a connection
without one, or with a malformed one, is to be closed.

Every input is bounded: a version 1 header is at most 107 bytes (the spec's
limit) and a version 2 header at most ``max_v2_size`` bytes, and the parser
decides as soon as a byte disagrees with both signatures, so it never holds
more than that.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_MAX_V2_SIZE",
    "V1_MAX_SIZE",
    "V2_SIGNATURE",
    "Command",
    "Family",
    "ProxyHeader",
    "ProxyHeaderParser",
    "ProxyViolation",
    "Transport",
]

#: Every version 1 header starts with these bytes ("PROXY" and one space).
V1_PREFIX: Final = b"PROXY "
#: The spec's upper bound on a version 1 header, CRLF included.
V1_MAX_SIZE: Final = 107
#: The 12 bytes every version 2 header starts with.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: Signature, version/command, family/transport and the 2-byte length.
V2_FIXED_SIZE: Final = 16
#: Default bound on a whole version 2 header (addresses plus TLVs), in bytes.
#: Real balancers send a few hundred at most; the format allows 65,551.
DEFAULT_MAX_V2_SIZE: Final = 4096

_V2_LENGTH: Final = struct.Struct(">H")
_INET: Final = struct.Struct(">4s4sHH")
_INET6: Final = struct.Struct(">16s16sHH")
_UNIX_PATH_SIZE: Final = 108


class Command(enum.Enum):
    """What the header says about the connection."""

    #: The connection was relayed for a client; the addresses are the client's.
    PROXY = "proxy"
    #: The balancer's own connection (a health check): use the socket's addresses.
    LOCAL = "local"


class Family(enum.Enum):
    """The address family of the relayed connection."""

    UNSPEC = "unspec"  # v1 "UNKNOWN", v2 AF_UNSPEC: no usable addresses
    INET = "inet"
    INET6 = "inet6"
    UNIX = "unix"


class Transport(enum.Enum):
    """The transport of the relayed connection (version 2 only; v1 is always STREAM)."""

    UNSPEC = "unspec"
    STREAM = "stream"
    DGRAM = "dgram"


#: An address: (host, port) for INET/INET6, a path for UNIX.
Address = tuple[str, int] | str


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A valid PROXY header.

    ``source`` and ``destination`` are ``None`` when the header carries no
    usable address (v1 ``UNKNOWN``, v2 ``LOCAL`` or ``AF_UNSPEC``): the
    receiver then uses the socket's own addresses, as the spec says.
    ``tlvs`` holds a version 2 header's type-length-value extensions as
    ``(type, value)`` pairs, unparsed.
    """

    version: int
    command: Command
    family: Family
    transport: Transport
    source: Address | None
    destination: Address | None
    tlvs: tuple[tuple[int, bytes], ...] = ()
    #: Bytes the header occupied on the wire.
    size: int = 0

    @property
    def client(self) -> str | None:
        """The real client as ``"host:port"`` (or a unix path), or None if not given."""
        if self.source is None:
            return None
        if isinstance(self.source, str):
            return self.source
        return f"{self.source[0]}:{self.source[1]}"


@dataclass(frozen=True, slots=True)
class ProxyViolation:
    """The bytes are not a valid PROXY header; the connection must be closed."""

    message: str


class ProxyHeaderParser:
    """Reads one PROXY header (v1 or v2) off the front of a connection.

    Call :meth:`feed` with each chunk received. It returns ``None`` while more
    bytes are needed, then once a :class:`ProxyHeader` or a
    :class:`ProxyViolation`; after that it must not be fed again. Bytes after
    a valid header are in :attr:`trailing_data`.
    """

    __slots__ = ("_buf", "_done", "max_v2_size", "trailing_data")

    def __init__(self, *, max_v2_size: int = DEFAULT_MAX_V2_SIZE) -> None:
        if max_v2_size < V2_FIXED_SIZE:
            raise ValueError(f"max_v2_size must be at least {V2_FIXED_SIZE}")
        self.max_v2_size = max_v2_size
        self._buf = bytearray()
        self._done = False
        #: The bytes that followed a valid header (the client's first bytes).
        self.trailing_data = b""

    def feed(self, data: bytes | bytearray) -> ProxyHeader | ProxyViolation | None:
        """Add received bytes; the header or violation once decided, else None.

        Raises:
            RuntimeError: fed again after a verdict.
        """
        if self._done:
            raise RuntimeError("the PROXY header was already decided")
        self._buf += data
        verdict = self._decide()
        if verdict is not None:
            self._done = True
            if isinstance(verdict, ProxyHeader):
                self.trailing_data = bytes(self._buf[verdict.size :])
            self._buf = bytearray()
        return verdict

    def _decide(self) -> ProxyHeader | ProxyViolation | None:
        buf = self._buf
        n = min(len(buf), len(V2_SIGNATURE))
        if buf[:n] == V2_SIGNATURE[:n]:
            return None if n < len(V2_SIGNATURE) else _parse_v2(buf, self.max_v2_size)
        n = min(len(buf), len(V1_PREFIX))
        if buf[:n] == V1_PREFIX[:n]:
            return None if n < len(V1_PREFIX) else _parse_v1(buf)
        return ProxyViolation(f"no PROXY header (the connection began {bytes(buf[:16])!r})")


# --- version 1: "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n" --------------------------


def _parse_v1(buf: bytearray) -> ProxyHeader | ProxyViolation | None:
    end = buf.find(b"\r\n", 0, V1_MAX_SIZE)
    if end < 0:
        if b"\n" in buf[:V1_MAX_SIZE]:
            return ProxyViolation("PROXY v1 header: a line must end in CRLF")
        if len(buf) >= V1_MAX_SIZE:
            return ProxyViolation(f"PROXY v1 header: no CRLF within {V1_MAX_SIZE} bytes")
        return None
    size = end + 2
    try:
        line = bytes(buf[len(V1_PREFIX) : end]).decode("ascii")
    except UnicodeDecodeError:
        return ProxyViolation("PROXY v1 header: not ASCII")
    parts = line.split(" ")
    if parts[0] == "UNKNOWN":
        # The spec: the receiver ignores whatever follows UNKNOWN on the line.
        return ProxyHeader(1, Command.PROXY, Family.UNSPEC, Transport.STREAM, None, None, size=size)
    if parts[0] not in ("TCP4", "TCP6"):
        return ProxyViolation(f"PROXY v1 header: unknown protocol {parts[0][:8]!r}")
    if len(parts) != 5:
        return ProxyViolation("PROXY v1 header: expected 'PROXY TCPn SRC DST SPORT DPORT'")
    family = Family.INET if parts[0] == "TCP4" else Family.INET6
    try:
        source = (_v1_address(parts[1], family), _v1_port(parts[3]))
        destination = (_v1_address(parts[2], family), _v1_port(parts[4]))
    except ValueError as exc:
        return ProxyViolation(f"PROXY v1 header: {exc}")
    return ProxyHeader(1, Command.PROXY, family, Transport.STREAM, source, destination, size=size)


def _v1_address(text: str, family: Family) -> str:
    # ipaddress refuses leading zeros in IPv4 (the spec forbids them: octal);
    # a scope ("%eth0") has no place in a header relayed from another host.
    if "%" in text:
        raise ValueError(f"bad address {text[:45]!r}")
    try:
        if family is Family.INET:
            return str(ipaddress.IPv4Address(text))
        return str(ipaddress.IPv6Address(text))
    except ipaddress.AddressValueError:
        raise ValueError(f"bad {family.value} address {text[:45]!r}") from None


def _v1_port(text: str) -> int:
    # Decimal, 0..65535, no sign and no leading zeros (the spec).
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or (text[0] == "0" and text != "0"):
        raise ValueError(f"bad port {text[:8]!r}")
    port = int(text)
    if port > 65535:
        raise ValueError(f"bad port {text!r}")
    return port


# --- version 2: a 16-byte fixed part, then addresses and TLVs -------------------------------

_FAMILIES: Final = {0: Family.UNSPEC, 1: Family.INET, 2: Family.INET6, 3: Family.UNIX}
_TRANSPORTS: Final = {0: Transport.UNSPEC, 1: Transport.STREAM, 2: Transport.DGRAM}
_ADDRESS_SIZE: Final = {
    Family.UNSPEC: 0,
    Family.INET: _INET.size,
    Family.INET6: _INET6.size,
    Family.UNIX: 2 * _UNIX_PATH_SIZE,
}


def _parse_v2(buf: bytearray, max_size: int) -> ProxyHeader | ProxyViolation | None:
    if len(buf) < V2_FIXED_SIZE:
        return None
    version, command_bits = buf[12] >> 4, buf[12] & 0x0F
    if version != 2:
        return ProxyViolation(f"PROXY v2 header: version {version} is not 2")
    if command_bits > 1:
        return ProxyViolation(f"PROXY v2 header: unknown command {command_bits}")
    family = _FAMILIES.get(buf[13] >> 4)
    transport = _TRANSPORTS.get(buf[13] & 0x0F)
    if family is None or transport is None:
        return ProxyViolation(f"PROXY v2 header: unknown family/transport byte {buf[13]:#04x}")
    length = _V2_LENGTH.unpack_from(buf, 14)[0]
    size = V2_FIXED_SIZE + length
    if size > max_size:
        return ProxyViolation(f"PROXY v2 header of {size} bytes exceeds the limit ({max_size})")
    if len(buf) < size:
        return None
    body = bytes(buf[V2_FIXED_SIZE:size])
    if command_bits == 0:
        # LOCAL: the balancer's own connection. The spec: skip the block, use
        # the socket's addresses.
        return ProxyHeader(2, Command.LOCAL, family, transport, None, None, size=size)
    address_size = _ADDRESS_SIZE[family]
    if length < address_size:
        return ProxyViolation(
            f"PROXY v2 header: {length} bytes cannot hold a {family.value} address block"
        )
    source: Address | None = None
    destination: Address | None = None
    if family is Family.INET:
        src, dst, sport, dport = _INET.unpack_from(body)
        source = (str(ipaddress.IPv4Address(src)), sport)
        destination = (str(ipaddress.IPv4Address(dst)), dport)
    elif family is Family.INET6:
        src, dst, sport, dport = _INET6.unpack_from(body)
        source = (str(ipaddress.IPv6Address(src)), sport)
        destination = (str(ipaddress.IPv6Address(dst)), dport)
    elif family is Family.UNIX:
        source = _unix_path(body[:_UNIX_PATH_SIZE])
        destination = _unix_path(body[_UNIX_PATH_SIZE:address_size])
    tlvs = _parse_tlvs(body[address_size:])
    if isinstance(tlvs, ProxyViolation):
        return tlvs
    return ProxyHeader(2, Command.PROXY, family, transport, source, destination, tlvs, size)


def _unix_path(raw: bytes) -> str:
    # NUL-padded; an abstract socket starts with NUL and is shown with "@".
    if raw[:1] == b"\x00":
        return "@" + raw[1:].rstrip(b"\x00").decode("utf-8", "backslashreplace")
    return raw.split(b"\x00", 1)[0].decode("utf-8", "backslashreplace")


def _parse_tlvs(data: bytes) -> tuple[tuple[int, bytes], ...] | ProxyViolation:
    tlvs = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            return ProxyViolation("PROXY v2 header: a truncated TLV")
        kind = data[offset]
        length = _V2_LENGTH.unpack_from(data, offset + 1)[0]
        start = offset + 3
        if start + length > len(data):
            return ProxyViolation("PROXY v2 header: a TLV overruns the header")
        tlvs.append((kind, data[start : start + length]))
        offset = start + length
    return tuple(tlvs)
