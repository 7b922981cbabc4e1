"""The trio_echo wire protocol (versions 1 and 2), as a sans-IO core: bytes in, events out.

Nothing here does I/O or imports Trio. The server, the async client, the
blocking client and the benchmark all drive these pieces:

* :func:`sniff_mode` looks at a connection's first bytes and decides which of
  the three connection kinds it is (protocol.md §2).
* :class:`FrameDecoder` splits a framed byte stream into msgpack objects
  (§3); :class:`StreamDecoder` does the same for a bare msgpack-rpc stream.
  Both check sizes *before* buffering a body, and report bad input as
  :class:`ProtocolViolation` items in their output instead of raising, so one
  malformed frame never loses the good frames around it.
* :func:`parse_message` turns a decoded msgpack object into an event
  (:class:`Request`, :class:`Response`, ...), validating its shape (§4).
* The ``encode_*`` functions build the bytes of each message.
* Versions (§10, §11): a framed connection's version is its preamble's 8th
  byte. :data:`PROTOCOL_VERSIONS` lists those spoken; version 2 adds the
  ``goaway`` notification, the ``unavailable`` error code and streams (§12:
  the ``items``, ``credit`` and ``end`` messages, :func:`stream_options`) to
  version 1. :func:`parse_message` takes the connection's version: on
  version 1 the stream messages are unknown message types, as they always were.
* :class:`Connection` bundles all of this for a client (or a test peer) in the
  style of h11: ``send(event) -> bytes``, ``receive_data(bytes)``,
  ``next_event()``.

The server's hot path skips the event objects for well-formed requests and
works on the decoded lists directly; every other input goes through
:func:`parse_message`, so there is one definition of what is valid.
"""

from __future__ import annotations

import enum
import gc
import reprlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

__all__ = [
    "DEFAULT_MAX_CONTAINERS",
    "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_INFLIGHT",
    "DEFAULT_PORT",
    "HEADER_SIZE",
    "LARGE_MESSAGE",
    "LATEST_VERSION",
    "MAGIC",
    "MAX_CREDIT",
    "MAX_MSGID",
    "NEED_DATA",
    "PREAMBLE",
    "PREAMBLE_V2",
    "PROTOCOL_VERSION",
    "PROTOCOL_VERSIONS",
    "RECEIVE_SIZE",
    "STREAM_VERSION",
    "Cancel",
    "Connection",
    "Credit",
    "End",
    "ErrorCode",
    "ErrorResponse",
    "Event",
    "FrameDecoder",
    "GoawayReason",
    "Items",
    "LargeMessage",
    "MessageType",
    "Mode",
    "Notification",
    "OversizedFrame",
    "ProtocolViolation",
    "Request",
    "Response",
    "Role",
    "SlicedDecoder",
    "StreamDecoder",
    "StreamKind",
    "StreamMessage",
    "bounded",
    "check_preamble",
    "decode_message",
    "encode_cancel",
    "encode_credit",
    "encode_end",
    "encode_error",
    "encode_goaway",
    "encode_items",
    "encode_notification",
    "encode_request",
    "encode_response",
    "error_map",
    "frame",
    "items_head",
    "make_packer",
    "packb",
    "parse_goaway",
    "parse_message",
    "peek_msgid",
    "peek_type",
    "preamble",
    "preamble_version",
    "quote",
    "sniff_mode",
    "stream_options",
    "timeout_of",
    "unpackb",
]

# --- §2 Connection start ----------------------------------------------------

#: The 7 bytes every framed client opens with, before the version byte.
MAGIC: Final = b"\x00TECHO\x00"
#: Version 1, the version of :data:`PREAMBLE` (the 8th preamble byte).
PROTOCOL_VERSION: Final = 1
#: Every version this module speaks, oldest first (§10).
PROTOCOL_VERSIONS: Final = (1, 2)
#: The newest version, the one clients offer first.
LATEST_VERSION: Final = PROTOCOL_VERSIONS[-1]
#: The version 1 framed-mode preamble: MAGIC followed by the version byte.
PREAMBLE: Final = MAGIC + bytes([PROTOCOL_VERSION])
#: The version 2 preamble (§11).
PREAMBLE_V2: Final = MAGIC + bytes([2])
#: First bytes of a bare msgpack-rpc stream: a fixarray of 3 or 4 elements.
MPRPC_FIRST_BYTES: Final = frozenset({0x93, 0x94})
#: The TCP port a server listens on, and clients connect to, unless told otherwise.
DEFAULT_PORT: Final = 7000

# --- §3 Frames ----------------------------------------------------------------

#: Bytes in a frame header: an unsigned 32-bit big-endian body length.
HEADER_SIZE: Final = 4
_HEADER: Final = struct.Struct(">I")
#: Default upper bound on a frame body (and on one msgpack-rpc stream message).
DEFAULT_MAX_FRAME: Final = 4 * 1024 * 1024
#: Default number of requests and notifications running at once per connection.
DEFAULT_MAX_INFLIGHT: Final = 128
#: Bytes a server or client asks of its transport per read (not part of the
#: protocol: a good size for both ends of it).
RECEIVE_SIZE: Final = 64 * 1024
#: msgids are unsigned 32-bit integers.
MAX_MSGID: Final = 2**32 - 1
#: The most credit a stream may have outstanding, and the largest grant (§12).
MAX_CREDIT: Final = 2**31 - 1
#: The first protocol version with streams (§12).
STREAM_VERSION: Final = 2


class Mode(enum.Enum):
    """The three kinds of connection one port serves (protocol.md §2)."""

    #: Preamble, then length-prefixed msgpack frames.
    FRAMED = "framed"
    #: A bare msgpack-rpc stream, no preamble and no length prefix.
    MPRPC = "mprpc"
    #: Compat mode: every byte is echoed back unchanged.
    RAW = "raw"


class MessageType(enum.IntEnum):
    """The first element of every message array (protocol.md §4)."""

    REQUEST = 0
    RESPONSE = 1
    NOTIFICATION = 2
    CANCEL = 3
    #: Version 2 only (§12): ``[4, msgid, [item, ...]]``.
    ITEMS = 4
    #: Version 2 only (§12): ``[5, msgid, n]``.
    CREDIT = 5
    #: Version 2 only (§12): ``[6, msgid, nil | error]``.
    END = 6


class StreamKind(enum.StrEnum):
    """The ``"stream"`` option of a streaming call (§12): who sends items."""

    #: The server sends many items (an async generator on the server).
    SERVER = "server"
    #: The client sends many items; the handler returns one result.
    CLIENT = "client"
    #: Both send items.
    BIDI = "bidi"


class ErrorCode(enum.StrEnum):
    """Error codes carried on the wire as these exact strings (protocol.md §6)."""

    #: Undecodable msgpack, or a message of the wrong shape.
    MALFORMED = "malformed"
    #: A frame header (or a stream message) larger than ``max_frame``.
    FRAME_TOO_LARGE = "frame_too_large"
    #: The preamble's magic matched but its version byte is unknown.
    UNSUPPORTED_VERSION = "unsupported_version"
    #: No method of that name is registered.
    UNKNOWN_METHOD = "unknown_method"
    #: Wrong parameter count or types, or a bad option such as ``timeout_ms``.
    INVALID_PARAMS = "invalid_params"
    #: The handler raised.
    INTERNAL = "internal"
    #: The client cancelled the request.
    CANCELLED = "cancelled"
    #: The request ran past its ``timeout_ms``.
    TIMEOUT = "timeout"
    #: A server-wide limit was reached.
    OVERLOADED = "overloaded"
    #: Version 2: the server did not run the request (it was read after a
    #: ``goaway``); it is safe to retry it on another connection.
    UNAVAILABLE = "unavailable"


class GoawayReason(enum.StrEnum):
    """Why a server sent ``goaway`` (version 2, §11). Clients must accept any string."""

    #: The server is shutting down (SIGTERM/SIGINT).
    SHUTDOWN = "shutdown"
    #: The connection reached the server's ``--max-connection-age``.
    MAX_AGE = "max_age"
    #: The connection was idle for the server's ``--idle-timeout``; it closes soon.
    IDLE = "idle"


class Role(enum.Enum):
    """Which end of a connection a :class:`Connection` plays."""

    CLIENT = "client"
    SERVER = "server"


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`Connection.next_event` when more bytes are needed.
NEED_DATA: Final = _NeedData()


# --- §4 Messages as events ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """``[0, msgid, method, params]`` or ``[0, msgid, method, params, options]``."""

    msgid: int
    method: str
    params: list[Any]
    options: dict[Any, Any] | None = None


@dataclass(frozen=True, slots=True)
class Response:
    """A successful response, ``[1, msgid, nil, result]``."""

    msgid: int
    result: Any


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A failed response, ``[1, msgid, {"code", "message"[, "data"]}, nil]``."""

    msgid: int
    code: str
    message: str
    data: Any = None


@dataclass(frozen=True, slots=True)
class Notification:
    """``[2, method, params]``: no response is ever sent for it."""

    method: str
    params: list[Any]


@dataclass(frozen=True, slots=True)
class Cancel:
    """``[3, msgid]``: the client no longer wants the answer to ``msgid``."""

    msgid: int


@dataclass(frozen=True, slots=True)
class Items:
    """``[4, msgid, [item, ...]]`` (version 2, §12): items of a stream, one credit each."""

    msgid: int
    items: list[Any]


@dataclass(frozen=True, slots=True)
class Credit:
    """``[5, msgid, n]`` (version 2, §12): the receiver of items grants ``n`` more."""

    msgid: int
    n: int


@dataclass(frozen=True, slots=True)
class End:
    """``[6, msgid, error]`` (version 2, §12): the client sent its last item.

    ``error`` is None for a clean end, else the ``{"code", "message"[, "data"]}``
    map of why the client's producer failed.
    """

    msgid: int
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer sent something invalid.

    Decoders put this in their output where the bad input was. ``msgid`` is
    set when the bad message's msgid could be read (the error is then answered
    as a response). ``fatal`` means the stream cannot be resynchronised and
    the connection must close after the error is reported. ``stream`` marks
    a bad stream message (§12): ``msgid`` then names the stream it was for,
    which ends with this error if it is running; it is never a new request.
    """

    code: ErrorCode
    message: str
    msgid: int | None = None
    fatal: bool = False
    stream: bool = False


#: The messages that belong to a running stream (§12).
StreamMessage = Items | Credit | End

Event = (
    Request
    | Response
    | ErrorResponse
    | Notification
    | Cancel
    | Items
    | Credit
    | End
    | ProtocolViolation
)


# --- msgpack settings shared by every encoder and decoder -------------------------


def packb(obj: Any) -> bytes:
    """Encode one object the way the protocol wants (bin for bytes, str for str)."""
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def unpackb(data: bytes | memoryview) -> Any:
    """Decode exactly one msgpack object; raises ``ValueError`` on bad input.

    Map keys of any hashable type are allowed so that ``echo`` keeps maps with
    integer keys; str stays str and bin stays bytes.
    """
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def make_packer() -> Callable[[Any], bytes]:
    """A fast, reusable ``pack`` callable (about 4 KB); not thread-safe."""
    return msgpack.Packer(use_bin_type=True).pack  # type: ignore[no-any-return]


# --- §2 Sniffing -------------------------------------------------------------------


def preamble(version: int) -> bytes:
    """The preamble that opens a framed connection of ``version``."""
    if version not in PROTOCOL_VERSIONS:
        raise ValueError(f"protocol version {version} is not one of {PROTOCOL_VERSIONS}")
    return MAGIC + bytes([version])


def preamble_version(prefix: bytes | bytearray) -> int | None:
    """The version of the complete, supported preamble ``prefix`` starts with, else None."""
    if len(prefix) <= len(MAGIC) or prefix[: len(MAGIC)] != MAGIC:
        return None
    version = prefix[len(MAGIC)]
    return version if version in PROTOCOL_VERSIONS else None


def sniff_mode(prefix: bytes) -> Mode | ProtocolViolation | None:
    """Decide a connection's kind from its first bytes (auto mode).

    Returns ``None`` while ``prefix`` could still become the preamble, so
    the caller must read more. Decides as soon as a byte disagrees with the
    preamble, so a raw client sending one byte is never held back. Returns a
    fatal :class:`ProtocolViolation` (``unsupported_version``) when the magic
    matched but the version byte is not in :data:`PROTOCOL_VERSIONS`; for
    FRAMED, :func:`preamble_version` tells which version.
    """
    if not prefix:
        return None
    if prefix[0] in MPRPC_FIRST_BYTES:
        return Mode.MPRPC
    n = min(len(prefix), len(MAGIC))
    if prefix[:n] != MAGIC[:n]:
        return Mode.RAW
    if len(prefix) <= len(MAGIC):
        return None
    if prefix[len(MAGIC)] in PROTOCOL_VERSIONS:
        return Mode.FRAMED
    return _bad_version(prefix[len(MAGIC)])


def check_preamble(prefix: bytes) -> ProtocolViolation | bool | None:
    """For a server pinned to framed mode: ``True`` once a preamble of a supported
    version is whole, ``None`` while more bytes are needed, else a fatal violation."""
    n = min(len(prefix), len(PREAMBLE))
    if prefix[: min(n, len(MAGIC))] != MAGIC[: min(n, len(MAGIC))]:
        return ProtocolViolation(
            ErrorCode.MALFORMED,
            "expected the trio_echo preamble 00 54 45 43 48 4f 00 01 (or 02)",
            fatal=True,
        )
    if len(prefix) < len(PREAMBLE):
        return None
    if prefix[len(MAGIC)] not in PROTOCOL_VERSIONS:
        return _bad_version(prefix[len(MAGIC)])
    return True


def _bad_version(version: int) -> ProtocolViolation:
    spoken = " and ".join(str(v) for v in PROTOCOL_VERSIONS)
    return ProtocolViolation(
        ErrorCode.UNSUPPORTED_VERSION,
        f"protocol version {version} is not supported; this server speaks {spoken}",
        fatal=True,
    )


# --- §3 Decoders -------------------------------------------------------------------
#
# Theory of operation. A decoder turns bytes into messages without ever holding a
# partial message as decoded objects: a half-received message is kept as bytes (at
# most max_frame of them) and decoded only once it is complete, so memory follows
# the bytes a client sent, not the Python objects they would become (an empty array
# is 1 byte on the wire and ~60 bytes as a list). Framed mode knows where a message
# ends from its header; a bare msgpack-rpc stream finds the end with a msgpack
# Unpacker that only skips (skip() parses at C speed and builds nothing).
#
# Decoding a complete message is bounded too. Each container (array or map) a
# message holds costs memory and garbage-collector time, so a message may hold at
# most ``max_containers`` of them; a message of n bytes holds at most n, so only
# messages longer than max_containers bytes need counting. And a server hands
# messages longer than ``large`` bytes out still encoded, as LargeMessage, to be
# decoded a slice at a time by SlicedDecoder with a yield to the event loop between
# slices: the worst message a client can build (4 MiB of 1-byte values is 4 million
# objects) then costs other connections a few milliseconds at a time, not a second.

#: A server decodes messages longer than this a slice at a time (see SlicedDecoder).
LARGE_MESSAGE: Final = 64 * 1024
#: The bytes one step of SlicedDecoder parses.
SLICE: Final = 16 * 1024
#: Default bound on the arrays and maps one message may hold (a server limit).
DEFAULT_MAX_CONTAINERS: Final = 65536
#: A msgpack nil: fed after a read to prove the read ended at a message boundary.
_NIL: Final = b"\xc0"
#: Why a well-formed msgpack message that uses an array or map as a map key is refused.
MAP_KEY_UNSUPPORTED: Final = "an array or map used as a map key is not supported"
#: Enough bytes to read a message's array header, type and msgid (§4.8).
_HEAD: Final = 32
#: msgpack's uint 8/16/32/64 markers and their widths.
_UINT_WIDTH: Final = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame longer than the decoder's ``max_frame``, skipped (``skip_oversized=True``).

    Its body was not buffered: ``msgid`` was read from its first bytes (None
    if they do not start a response), the rest was discarded as it arrived.
    """

    length: int
    msgid: int | None


@dataclass(frozen=True, slots=True)
class LargeMessage:
    """One complete message, still encoded, too long to decode in one step.

    Decoders made with ``large=N`` hand out messages longer than N bytes this
    way; decode them with :class:`SlicedDecoder`.
    """

    data: bytes


class _TooManyContainers(Exception):
    pass


def _container_counter(max_containers: int) -> Callable[[Any], Any]:
    """A list_hook / object_hook that raises once a message built too many containers."""
    count = 0

    def hook(obj: Any) -> Any:
        nonlocal count
        count += 1
        if count > max_containers:
            raise _TooManyContainers
        return obj

    return hook


def _too_many(max_containers: int) -> ProtocolViolation:
    # Like a message over max_frame: a notice, then the connection closes (§6).
    return ProtocolViolation(
        ErrorCode.FRAME_TOO_LARGE,
        f"message holds more than {max_containers} arrays and maps (max_containers)",
        fatal=True,
    )


def decode_message(
    data: bytes | bytearray | memoryview,
    max_containers: int | None = None,
    *,
    stream: bool = False,
) -> Any:
    """Decode one complete message's bytes in one step.

    Returns the decoded object or a :class:`ProtocolViolation`: ``malformed``
    (not fatal, with the request's msgid when its first bytes are readable,
    §4.8) for bytes that are not exactly one msgpack object or use an array or
    map as a map key; ``frame_too_large`` (fatal, like a message over
    max_frame) for more than ``max_containers`` arrays and maps. With
    ``stream`` (a bare msgpack-rpc stream), bytes that do not decode are fatal
    too: only the map-key case, a valid msgpack object, is answered and
    survived.
    """
    if not data:
        return ProtocolViolation(ErrorCode.MALFORMED, "empty frame")
    try:
        if max_containers is None or len(data) <= max_containers:
            return msgpack.unpackb(data, strict_map_key=False)
        hook = _container_counter(max_containers)
        return msgpack.unpackb(data, strict_map_key=False, list_hook=hook, object_hook=hook)
    except _TooManyContainers:
        return _too_many(max_containers or 0)
    except Exception as exc:
        return _fatal_on_stream(_undecodable(exc, data), stream)


def _fatal_on_stream(v: ProtocolViolation, stream: bool) -> ProtocolViolation:
    if stream and not v.fatal and v.message != MAP_KEY_UNSUPPORTED:
        return ProtocolViolation(v.code, v.message, fatal=True)
    return v


class SlicedDecoder:
    """Decodes one :class:`LargeMessage` a slice of ``SLICE`` bytes per :meth:`step`.

    msgpack's Unpacker resumes where it stopped, so the slices add up to one
    decode; the caller yields to its event loop between steps. The result is
    what :func:`decode_message` would return for the same bytes.
    """

    __slots__ = ("_data", "_pos", "_stream", "_unpacker", "max_containers", "result")

    def __init__(
        self, message: LargeMessage, max_containers: int | None = None, *, stream: bool = False
    ) -> None:
        data = message.data
        n = len(data)
        hooks: dict[str, Any] = {}
        if max_containers is not None and n > max_containers:
            hook = _container_counter(max_containers)
            hooks = {"list_hook": hook, "object_hook": hook}
        # No length inside the message can exceed the message (nor a container
        # claim more items than it has bytes): a header cannot make the Unpacker
        # allocate more than the bytes allow.
        self._unpacker: msgpack.Unpacker | None = msgpack.Unpacker(
            raw=False,
            strict_map_key=False,
            max_buffer_size=n,
            max_str_len=n,
            max_bin_len=n,
            max_array_len=n,
            max_map_len=n // 2,
            max_ext_len=n,
            **hooks,
        )
        self._data = data
        self._pos = 0
        # On a bare stream, bytes that do not decode are fatal (see StreamDecoder).
        self._stream = stream
        self.max_containers = max_containers
        #: The decoded object (or a ProtocolViolation) once step() returned True.
        self.result: Any = None

    def step(self) -> bool:
        """Parse the next slice; True once :attr:`result` is set."""
        data = self._data
        unpacker = self._unpacker
        assert unpacker is not None, "step() after the result was set"
        end = min(self._pos + SLICE, len(data))
        unpacker.feed(memoryview(data)[self._pos : end])
        self._pos = end
        # A slice may build thousands of containers; a garbage collection started
        # among them would walk the half-built message (millions of slots), so the
        # collector waits for the end of the slice (it runs at the next allocation).
        collecting = gc.isenabled()
        gc.disable()
        try:
            obj = unpacker.unpack()
        except msgpack.OutOfData:
            if end < len(data):
                return False
            # As decode_message words it (msgpack's unpackb says "Unpack failed: ...").
            self.result = _undecodable(ValueError("Unpack failed: incomplete input"), data)
        except _TooManyContainers:
            self.result = _too_many(self.max_containers or 0)
        except Exception as exc:
            self.result = _undecodable(exc, data)
        else:
            if end < len(data) or unpacker.tell() < len(data):
                self.result = ProtocolViolation(
                    ErrorCode.MALFORMED,
                    "frame holds more than one msgpack object",
                    peek_msgid(data),
                )
            else:
                self.result = obj
        finally:
            if collecting:
                gc.enable()
        if type(self.result) is ProtocolViolation:
            self.result = _fatal_on_stream(self.result, self._stream)
        self._unpacker = None  # free its buffer and state
        return True


def peek_type(data: bytes | bytearray | memoryview) -> int | None:
    """The message type of an encoded message, from its first two bytes, if they
    are the usual fixarray + positive fixint (every message this protocol sends)."""
    if len(data) >= 2 and 0x92 <= data[0] <= 0x95 and data[1] <= 0x7F:
        return data[1]
    return None


def peek_msgid(data: bytes | bytearray | memoryview, kind: int = MessageType.REQUEST) -> int | None:
    """The msgid of an encoded request (or message of type ``kind``) whose first
    items are readable, else None.

    An undecodable request is answered as a response when its msgid can be
    read (§4.8); only the first bytes are parsed. A client reads a response's
    msgid this way from the start of a frame too large to take (see
    :class:`OversizedFrame`).
    """
    # The usual encodings by hand (a fixarray, the type, a uint msgid): no Unpacker.
    if len(data) >= 3 and data[0] in (0x94, 0x95) and data[1] == kind:
        first = data[2]
        if first <= 0x7F:
            return first
        width = _UINT_WIDTH.get(first)
        if width is not None and len(data) >= 3 + width:
            value = int.from_bytes(data[3 : 3 + width], "big")
            return value if value <= MAX_MSGID else None
    unpacker = msgpack.Unpacker(max_buffer_size=_HEAD)
    unpacker.feed(data[:_HEAD])
    try:
        if unpacker.read_array_header() < 2:
            return None
        kind_read = unpacker.unpack()
        msgid = unpacker.unpack()
    except Exception:
        return None
    if type(kind_read) is int and kind_read == kind and _valid_msgid(msgid):
        return msgid  # type: ignore[no-any-return]
    return None


class FrameDecoder:
    """Splits a framed byte stream into messages.

    :meth:`feed` returns, in order, one item per complete frame: the decoded
    object, a :class:`LargeMessage` (if ``large`` is set and the body is
    longer), or a :class:`ProtocolViolation` for a body that does not decode
    (see :func:`decode_message`). A header announcing more than ``max_frame``
    bytes yields a fatal ``frame_too_large`` violation before any of its body
    is buffered, and the decoder accepts nothing after it; with
    ``skip_oversized`` (a client's choice; the server never uses it) it yields
    an :class:`OversizedFrame` instead, once the body's first bytes have
    arrived, and discards the rest of that body as it comes. :meth:`split`
    returns the frames' bodies undecoded, and :meth:`rewind` undoes the
    decoding of a feed's last items, for a caller that may not keep them as
    objects.
    """

    __slots__ = (
        "_buf",
        "_count",
        "_last",
        "_need",
        "_skip",
        "dead",
        "large",
        "max_containers",
        "max_frame",
        "pending",
        "skip_oversized",
    )

    def __init__(
        self,
        max_frame: int = DEFAULT_MAX_FRAME,
        *,
        max_containers: int | None = None,
        large: int | None = None,
        skip_oversized: bool = False,
    ) -> None:
        self.max_frame = max_frame
        self.max_containers = max_containers
        self.large = large
        self.skip_oversized = skip_oversized
        # Bytes of a skipped frame's body still to discard.
        self._skip = 0
        # The start of an incomplete frame. It grows in place, so a frame
        # trickling in a byte at a time costs O(size), not O(size**2).
        self._buf = bytearray()
        # How many bytes _buf must hold before another frame can complete.
        self._need = HEADER_SIZE
        #: Bytes the incomplete frame holds or, once its header is read, will
        #: hold (the header's length: a server may budget for it up front).
        self.pending = 0
        #: Set after a fatal violation; the stream cannot be resynchronised.
        self.dead = False
        # The buffer the last feed parsed, from a frame boundary, and how many
        # items that feed returned (see rewind).
        self._last: bytes | bytearray = b""
        self._count = 0

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    @property
    def idle(self) -> bool:
        """True between frames: no partial frame held, none being skipped, not dead."""
        return not self._buf and not self._skip and not self.dead

    def release(self) -> bool:
        """Drop the last read kept for :meth:`rewind` (e.g. when idle); True if one was held."""
        held = bool(self._last)
        self._last = b""
        return held

    def feed(self, data: bytes | bytearray) -> list[Any]:
        """Add bytes; return the items of every frame they complete."""
        return self._frames(data, True)

    def split(self, data: bytes | bytearray) -> list[Any]:
        """Like :meth:`feed`, but each complete frame's body comes out as bytes, undecoded."""
        return self._frames(data, False)

    def _frames(self, data: bytes | bytearray, decode: bool) -> list[Any]:
        self._count = 0
        if self.dead:
            return []
        out: list[Any] = []
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return out
            data = data[self._skip :]
            self._skip = 0
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                self._account()
                return out
            buf: bytes | bytearray = bytes(self._buf)
            self._buf = bytearray()
        else:
            buf = data
        self._last = buf
        n = len(buf)
        off = 0
        max_frame = self.max_frame
        large = self.large if self.large is not None else max_frame
        limit = self.max_containers
        # Bodies up to this long are decoded at once; longer ones need a look first.
        quick = min(large, max_frame if limit is None else limit) if decode else -1
        view = None
        need = HEADER_SIZE
        unpack_header = _HEADER.unpack_from
        unpackb = msgpack.unpackb
        while n - off >= HEADER_SIZE:
            length = unpack_header(buf, off)[0]
            if length > max_frame:
                if self.skip_oversized:
                    # Wait for the body's first bytes (the msgid), then skip it.
                    start = off + HEADER_SIZE
                    head = min(length, _HEAD)
                    if n - start < head:
                        need = HEADER_SIZE + head
                        break
                    msgid = peek_msgid(buf[start : start + head], MessageType.RESPONSE)
                    out.append(OversizedFrame(length, msgid))
                    off = start + length
                    if off > n:
                        self._skip = off - n
                        off = n
                    continue
                self.dead = True
                out.append(
                    ProtocolViolation(
                        ErrorCode.FRAME_TOO_LARGE,
                        f"frame of {length} bytes exceeds max_frame ({max_frame})",
                        fatal=True,
                    )
                )
                break
            end = off + HEADER_SIZE + length
            if end > n:
                # The header was checked against max_frame above, so what
                # is buffered for this body is bounded.
                need = HEADER_SIZE + length
                break
            # Large bodies are sliced through a memoryview: no slice copy.
            if length > 2048:
                if view is None:
                    view = memoryview(buf)
                body: bytes | bytearray | memoryview = view[off + HEADER_SIZE : end]
            else:
                body = buf[off + HEADER_SIZE : end]
            if length <= quick:
                # The usual case: short enough to decode at once, without counting.
                try:
                    # raw=False is msgpack's default: str stays str (see unpackb()).
                    out.append(unpackb(body, strict_map_key=False))
                except Exception as exc:
                    out.append(decode_message(body) if not length else _undecodable(exc, body))
            elif not decode:
                out.append(bytes(body))
            elif length > large:
                out.append(LargeMessage(bytes(body)))
            else:
                item = decode_message(body, limit)
                out.append(item)
                if type(item) is ProtocolViolation and item.fatal:
                    self.dead = True
                    break
            off = end
        if off < n and not self.dead:
            self._buf = bytearray(view[off:] if view is not None else buf[off:])
            self._need = need
        if view is not None:
            view.release()
        if self._buf:
            self._account()
        else:
            self.pending = 0
        self._count = len(out)
        return out

    def _account(self) -> None:
        buffered = len(self._buf)
        self.pending = max(buffered, self._need) if buffered >= HEADER_SIZE else buffered

    def rewind(self, used: int) -> list[Any]:
        """The items of the last feed from index ``used`` on, undecoded.

        Each complete frame comes back as its body's bytes (a LargeMessage as
        itself); a fatal violation at the end stays as it is. For a server
        that may not hold decoded objects it cannot run yet.
        """
        buf = self._last
        off = 0
        unpack_header = _HEADER.unpack_from
        for _ in range(used):
            off += HEADER_SIZE + unpack_header(buf, off)[0]
        out: list[Any] = []
        large = self.large if self.large is not None else self.max_frame
        # Only what the feed returned: frames after one whose body was fatal (too
        # many containers) were never decoded, and must not be acted on.
        left = self._count - used
        while len(out) < left and len(buf) - off >= HEADER_SIZE:
            length = unpack_header(buf, off)[0]
            end = off + HEADER_SIZE + length
            if length > self.max_frame:
                out.append(
                    ProtocolViolation(
                        ErrorCode.FRAME_TOO_LARGE,
                        f"frame of {length} bytes exceeds max_frame ({self.max_frame})",
                        fatal=True,
                    )
                )
                break
            if end > len(buf):
                break
            body = bytes(buf[off + HEADER_SIZE : end])
            out.append(LargeMessage(body) if self.large is not None and length > large else body)
            off = end
        self._last = b""
        return out


def _undecodable(exc: BaseException, data: bytes | bytearray | memoryview) -> ProtocolViolation:
    if isinstance(exc, msgpack.ExtraData):
        message = "frame holds more than one msgpack object"
    elif isinstance(exc, TypeError) and "unhashable" in str(exc):
        message = MAP_KEY_UNSUPPORTED
    else:
        message = _describe(exc)
    return ProtocolViolation(ErrorCode.MALFORMED, message, peek_msgid(data))


def _describe(exc: BaseException) -> str:
    detail = str(exc) or type(exc).__name__
    return f"undecodable msgpack: {bounded(detail)}"


#: The hot-path Unpackers that StreamDecoders made with ``shared=True`` borrow, one
#: per max_frame (see StreamDecoder.__init__).
_SHARED_FAST: dict[int, msgpack.Unpacker] = {}


def _too_large(max_frame: int) -> str:
    """The text of a stream message over max_frame: one text however the bytes were
    split (the same message is refused on its header, on its size so far, or whole)."""
    return f"message of more than max_frame ({max_frame} bytes)"


class StreamDecoder:
    """Splits a bare msgpack-rpc byte stream into messages.

    A bare stream has no length prefix. While no message is pending, each
    read is decoded whole by a msgpack Unpacker at C speed (the hot path); a
    nil fed after it proves the read ended on a message boundary. A read that
    ends inside a message switches the decoder to bytes: the incomplete
    message is kept as bytes and a skip-only Unpacker finds where it ends,
    building nothing; complete messages are then decoded one by one. A message
    longer than ``max_frame`` bytes, and bytes that are not msgpack, are fatal
    (the stream cannot be resynchronised); a complete message that does not
    decode (an array as a map key, too many containers) is not. Output items
    are as for :class:`FrameDecoder`.
    """

    __slots__ = (
        "_fast",
        "_fast_read",
        "_fatal",
        "_fatal_now",
        "_last",
        "_last_fast",
        "_last_raw",
        "_scanned",
        "_scanner",
        "_shared",
        "_tail",
        "dead",
        "large",
        "max_containers",
        "max_frame",
        "pending",
    )

    #: Reads up to this long take the hot path when no message is pending.
    FAST_READ: Final = 64 * 1024

    def __init__(
        self,
        max_frame: int = DEFAULT_MAX_FRAME,
        *,
        max_containers: int | None = None,
        large: int | None = None,
        shared: bool = False,
    ) -> None:
        self.max_frame = max_frame
        self.max_containers = max_containers
        self.large = large
        # With `shared`, the hot path's Unpacker is borrowed from _SHARED_FAST for
        # each read and given back when the read ended on a message boundary (it
        # is then as fresh as a new one): a server with thousands of quiet
        # msgpack-rpc connections keeps one Unpacker, not one (~20 KB zeroed, plus
        # its 64 KiB buffer) per connection that has sent something lately (#15).
        self._shared = shared
        # A message decoded on the hot path lies within one read, and a message
        # of n bytes holds at most n arrays and maps: reads longer than
        # max_containers go the slow way, where containers are counted.
        self._fast_read = min(self.FAST_READ, max_frame, max_containers or self.FAST_READ)
        # Decodes whole reads while no message is pending. It costs ~45 KB, so
        # it is made on first use and freed by release() when the stream is quiet.
        self._fast: msgpack.Unpacker | None = None
        # The bytes of the pending (incomplete) message, from its first byte,
        # or None on a message boundary.
        self._tail: bytearray | None = None
        # Skips through _tail to find where the pending message ends; its
        # stream offset at _tail[0] is _scanned.
        self._scanner: msgpack.Unpacker | None = None
        self._scanned = 0
        #: Bytes of the pending message held.
        self.pending = 0
        self.dead = False
        # What the last feed's items were decoded from (see rewind): the read
        # the hot path decoded (its first _last_fast messages), then the
        # bytes of each message decoded one by one.
        self._last: bytes | bytearray = b""
        self._last_fast = 0
        self._last_raw: list[bytes] = []
        self._fatal: ProtocolViolation | None = None
        # The last feed ended with _fatal (see rewind).
        self._fatal_now = False

    @property
    def buffered(self) -> int:
        """Bytes of the incomplete message held."""
        return self.pending

    def feed(self, data: bytes | bytearray) -> list[Any]:
        """Add bytes; return the items of every message they complete."""
        out: list[Any] = []
        self._fatal_now = False
        if self.dead:
            return out
        if self._last_raw:
            self._last_raw = []
        # (A read no longer than max_frame cannot hold a message that is too large.)
        if self._tail is None and len(data) <= self._fast_read:
            fast = self._fast
            if fast is None:
                if self._shared:
                    # Taken out while in use: only a clean Unpacker is ever in there.
                    fast = _SHARED_FAST.pop(self.max_frame, None)
                    if fast is None:
                        fast = self._new_fast()
                else:
                    fast = self._fast = self._new_fast()
            fast.feed(data)
            try:
                out.extend(fast)
            except Exception as exc:
                if isinstance(exc, ValueError) and "exceeds max_" in str(exc):
                    # A header announcing more than max_frame: refused on the header.
                    # (The messages before it came from this read: see rewind.)
                    self._last = data
                    self._last_fast = len(out)
                    self._die(out, ErrorCode.FRAME_TOO_LARGE, _too_large(self.max_frame))
                    return out
            else:
                fast.feed(_NIL)
                try:
                    if fast.unpack() is None:  # the usual case: the read ended on a boundary
                        self._last = data
                        self._last_fast = len(out)
                        if self._shared:
                            _SHARED_FAST[self.max_frame] = fast
                        return out
                except Exception:
                    pass  # the nil went into a pending message (OutOfData, or worse)
            # The read ended inside a message (or held one that does not decode):
            # the Unpacker's state is spoiled; redo the rest of the read as bytes.
            self._fast = None
            self._last = data
            self._last_fast = len(out)
            data = data[_skip(data, len(out)) :]
        else:
            self._last = b""
            self._last_fast = 0
        self._scan(data, out, True)
        return out

    def split(self, data: bytes | bytearray) -> list[Any]:
        """Like :meth:`feed`, but each complete message comes out as bytes, undecoded."""
        out: list[Any] = []
        self._fatal_now = False
        if not self.dead:
            self._last, self._last_fast, self._last_raw = b"", 0, []
            self._scan(data, out, False)
        return out

    def rewind(self, used: int) -> list[Any]:
        """The items of the last feed from index ``used`` on, undecoded (see FrameDecoder)."""
        out: list[Any] = []
        data, fast = self._last, self._last_fast
        if used < fast:
            unpacker = msgpack.Unpacker(max_buffer_size=len(data))
            unpacker.feed(data)
            for _ in range(used):
                unpacker.skip()
            start = unpacker.tell()
            for _ in range(fast - used):
                unpacker.skip()
                end = unpacker.tell()
                out.append(bytes(data[start:end]))
                start = end
        large = self.large
        for raw in self._last_raw[max(0, used - fast) :]:
            out.append(LargeMessage(raw) if large is not None and len(raw) > large else raw)
        # The fatal violation is the feed's last item: given back unless it was used.
        if self._fatal_now and used <= fast + len(self._last_raw):
            out.append(self._fatal)
        self._last, self._last_fast, self._last_raw = b"", 0, []
        self._fatal_now = False
        return out

    def _new_fast(self) -> msgpack.Unpacker:
        limit = self.max_frame
        return msgpack.Unpacker(
            raw=False,
            strict_map_key=False,
            max_buffer_size=self.FAST_READ + 16,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=limit,
            max_map_len=limit // 2,
            max_ext_len=limit,
        )

    def _scan(self, data: bytes | bytearray, out: list[Any], decode: bool) -> None:
        """Bytes mode: find where messages end without decoding them; hand out each whole one."""
        tail = self._tail
        if tail is None:
            tail = self._tail = bytearray()
        scanner = self._scanner
        if scanner is None:
            scanner = self._scanner = msgpack.Unpacker(
                max_buffer_size=self.max_frame + self.FAST_READ + 16
            )
            self._scanned = 0
        base = self._scanned
        pos = 0
        max_frame = self.max_frame
        chunk = self.FAST_READ
        try:
            for start in range(0, len(data), chunk):
                piece = data[start : start + chunk]
                tail += piece
                scanner.feed(piece)
                while True:
                    try:
                        scanner.skip()
                    except msgpack.OutOfData:
                        break
                    end = scanner.tell() - base
                    if end - pos > max_frame:
                        self._die(out, ErrorCode.FRAME_TOO_LARGE, _too_large(max_frame))
                        return
                    raw = bytes(tail[pos:end])
                    pos = end
                    if not decode:
                        out.append(raw)
                        continue
                    self._last_raw.append(raw)
                    if self.large is not None and len(raw) > self.large:
                        out.append(LargeMessage(raw))
                        continue
                    item = decode_message(raw, self.max_containers, stream=True)
                    if type(item) is ProtocolViolation and item.fatal:
                        self._last_raw.pop()  # rewind gives back the violation, once
                        self._die(out, item.code, item.message)
                        return
                    out.append(item)
                if len(tail) - pos > max_frame:
                    break  # refused below, once max_frame bytes of one message arrived
        except Exception as exc:
            # Not msgpack (or nested too deep): a bare stream cannot resynchronise.
            if len(tail) - pos > max_frame:
                self._die(out, ErrorCode.FRAME_TOO_LARGE, _too_large(self.max_frame))
            else:
                self._die(out, ErrorCode.MALFORMED, _describe(exc))
            return
        if len(tail) - pos > max_frame:
            self._die(out, ErrorCode.FRAME_TOO_LARGE, _too_large(max_frame))
            return
        if pos:
            del tail[:pos]
            self._scanned = base + pos
        if not tail:
            self._tail = None  # on a boundary again: the next read takes the hot path
        self.pending = len(tail)

    @property
    def allocated(self) -> bool:
        """True while the decoder keeps an Unpacker (~45 KB), which release() frees."""
        return self._fast is not None or self._scanner is not None

    def release(self) -> bool:
        """Free the ~45 KB Unpackers if no partial message is held (e.g. when idle).

        Returns True if something was freed.
        """
        self._last, self._last_raw = b"", []  # kept for rewind, which a quiet stream won't need
        if self._tail is not None or (self._fast is None and self._scanner is None):
            return False
        self._fast = self._scanner = None
        return True

    def _die(self, out: list[Any], code: ErrorCode, message: str) -> None:
        self.dead = True
        self._fatal_now = True
        self._fast = self._scanner = None
        self._tail = None
        self.pending = 0
        self._fatal = ProtocolViolation(code, message, fatal=True)
        out.append(self._fatal)


def _skip(data: bytes | bytearray, count: int) -> int:
    """The offset just after the first ``count`` messages in ``data``."""
    if not count:
        return 0
    unpacker = msgpack.Unpacker(max_buffer_size=len(data))
    unpacker.feed(data)
    for _ in range(count):
        unpacker.skip()
    return unpacker.tell()  # type: ignore[no-any-return]


def bounded(text: str, limit: int = 100) -> str:
    """``text`` cut to ``limit`` characters (ending in ``...``), for quoting peer data."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _BoundedRepr(reprlib.Repr):
    """reprlib, plus bytes cut before they are converted (reprlib would repr them whole)."""

    def repr_bytes(self, x: bytes, level: int) -> str:
        s = repr(x[: self.maxstring])
        return s if len(x) <= self.maxstring else s[:-1] + "..." + s[-1]

    def repr_bytearray(self, x: bytearray, level: int) -> str:
        return f"bytearray({self.repr_bytes(bytes(x[: self.maxstring + 1]), level)})"


_REPR = _BoundedRepr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 6


def quote(value: Any, limit: int = 100) -> str:
    """A ``repr`` of a value a peer sent, at most ``limit`` characters, built in bounded time."""
    return bounded(_REPR.repr(value), limit)


# --- §4 Message validation ---------------------------------------------------------


def _valid_msgid(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_MSGID


def parse_message(obj: Any, version: int = PROTOCOL_VERSION) -> Event:
    """Validate one decoded msgpack object and return it as an event.

    Anything that is not a well-formed message becomes a non-fatal
    ``malformed`` :class:`ProtocolViolation`, carrying the msgid when one
    could be read so that the error can be answered as a response.
    ``version`` is the connection's: the stream messages (types 4 to 6,
    §12) exist from :data:`STREAM_VERSION` on, and are unknown types before.
    """
    if type(obj) is ProtocolViolation:
        return obj
    if type(obj) is not list or len(obj) < 2:
        return ProtocolViolation(ErrorCode.MALFORMED, "a message must be an array of 2 to 5 items")
    kind = obj[0]
    n = len(obj)
    if kind == MessageType.REQUEST and type(kind) is int:
        msgid = obj[1] if _valid_msgid(obj[1]) else None
        if msgid is None:
            return ProtocolViolation(ErrorCode.MALFORMED, "request msgid must be a uint32")
        if n not in (4, 5):
            return ProtocolViolation(ErrorCode.MALFORMED, "a request has 4 or 5 items", msgid)
        if type(obj[2]) is not str:
            return ProtocolViolation(ErrorCode.MALFORMED, "request method must be a str", msgid)
        if type(obj[3]) is not list:
            return ProtocolViolation(ErrorCode.MALFORMED, "request params must be an array", msgid)
        options = obj[4] if n == 5 else None
        if options is not None and type(options) is not dict:
            return ProtocolViolation(ErrorCode.MALFORMED, "request options must be a map", msgid)
        return Request(msgid, obj[2], obj[3], options)
    if kind == MessageType.RESPONSE and type(kind) is int:
        if n != 4 or not _valid_msgid(obj[1]):
            return ProtocolViolation(ErrorCode.MALFORMED, "a response is [1, msgid, error, result]")
        error = obj[2]
        if error is None:
            return Response(obj[1], obj[3])
        if type(error) is dict:
            code = error.get("code")
            message = error.get("message")
            return ErrorResponse(
                obj[1],
                code if type(code) is str else ErrorCode.INTERNAL,
                message if type(message) is str else str(message),
                error.get("data"),
            )
        # Plain msgpack-rpc peers send a bare error object; keep it readable.
        return ErrorResponse(obj[1], ErrorCode.INTERNAL, str(error), error)
    if kind == MessageType.NOTIFICATION and type(kind) is int:
        if n != 3 or type(obj[1]) is not str or type(obj[2]) is not list:
            return ProtocolViolation(ErrorCode.MALFORMED, "a notification is [2, method, params]")
        return Notification(obj[1], obj[2])
    if kind == MessageType.CANCEL and type(kind) is int:
        if n != 2 or not _valid_msgid(obj[1]):
            return ProtocolViolation(ErrorCode.MALFORMED, "a cancel is [3, msgid]")
        return Cancel(obj[1])
    if version >= STREAM_VERSION and type(kind) is int and 4 <= kind <= 6:
        return _parse_stream_message(obj)
    return ProtocolViolation(ErrorCode.MALFORMED, f"unknown message type {quote(kind)}")


_STREAM_SHAPES: Final = {
    MessageType.ITEMS: "items are [4, msgid, [item, ...]] with at least one item",
    MessageType.CREDIT: f"a credit is [5, msgid, n] with n from 1 to {MAX_CREDIT}",
    MessageType.END: 'an end is [6, msgid, nil] or [6, msgid, {"code": str, "message": str}]',
}


def _parse_stream_message(obj: list[Any]) -> Event:
    """Types 4 to 6 (version 2, §12)."""
    kind = obj[0]
    msgid = obj[1] if _valid_msgid(obj[1]) else None
    if len(obj) == 3 and msgid is not None:
        value = obj[2]
        if kind == MessageType.ITEMS:
            if type(value) is list and value:
                return Items(msgid, value)
        elif kind == MessageType.CREDIT:
            if type(value) is int and 1 <= value <= MAX_CREDIT:
                return Credit(msgid, value)
        elif value is None:
            return End(msgid)
        elif (
            type(value) is dict
            and type(value.get("code")) is str
            and value["code"]
            and type(value.get("message")) is str
        ):
            return End(msgid, value)
    return ProtocolViolation(
        ErrorCode.MALFORMED, _STREAM_SHAPES[MessageType(kind)], msgid, stream=True
    )


def stream_options(
    options: dict[Any, Any] | None,
) -> tuple[StreamKind, int | None] | ProtocolViolation | None:
    """A request's ``"stream"`` and ``"credit"`` options (§12): ``(kind, credit)``.

    None if the request is not a streaming call (no ``"stream"`` key).
    ``credit`` is None when absent, which only a client stream may leave out.
    Returns an ``invalid_params`` violation (without msgid) for an unknown
    kind, or a missing or out-of-range credit.
    """
    if not options or "stream" not in options:
        return None
    kind = options["stream"]
    if type(kind) is not str or kind not in _STREAM_KINDS:
        return ProtocolViolation(
            ErrorCode.INVALID_PARAMS,
            f'stream must be "server", "client" or "bidi", not {quote(kind)}',
        )
    stream = StreamKind(kind)
    credit = options.get("credit")
    if credit is None and stream is StreamKind.CLIENT:
        return stream, None
    if type(credit) is not int or not 0 <= credit <= MAX_CREDIT:
        return ProtocolViolation(
            ErrorCode.INVALID_PARAMS,
            f"a {kind} stream needs a credit from 0 to {MAX_CREDIT}, not {quote(credit)}",
        )
    return stream, credit


_STREAM_KINDS: Final = frozenset(k.value for k in StreamKind)


def timeout_of(options: dict[Any, Any] | None) -> float | ProtocolViolation | None:
    """The request's ``timeout_ms`` option in seconds (``None`` if absent).

    Returns an ``invalid_params`` violation (without msgid) if it is present
    but not a positive number.
    """
    if not options or "timeout_ms" not in options:
        return None
    value = options["timeout_ms"]
    if type(value) not in (int, float) or not value > 0 or value != value or value == float("inf"):
        return ProtocolViolation(
            ErrorCode.INVALID_PARAMS, f"timeout_ms must be a positive number, not {quote(value)}"
        )
    return float(value) / 1000.0


# --- Encoders ----------------------------------------------------------------------

Pack = Callable[[Any], bytes]


def frame(body: bytes, framed: bool = True) -> bytes:
    """Prefix a msgpack body with its 4-byte big-endian length (§3).

    With ``framed=False`` the body as it is: a msgpack-rpc stream has no prefix.
    """
    return len(body).to_bytes(HEADER_SIZE, "big") + body if framed else body


def encode_request(
    msgid: int,
    method: str,
    params: list[Any] | tuple[Any, ...],
    options: dict[str, Any] | None = None,
    *,
    framed: bool = True,
    pack: Pack = packb,
) -> bytes:
    """The bytes of a request message."""
    msg: list[Any] = [0, msgid, method, list(params)]
    if options:
        msg.append(options)
    return frame(pack(msg), framed)


def encode_response(msgid: int, result: Any, *, framed: bool = True, pack: Pack = packb) -> bytes:
    """The bytes of a successful response."""
    return frame(pack([1, msgid, None, result]), framed)


def error_map(code: str, message: str, data: Any = None) -> dict[str, Any]:
    """The error object of an error response or error notice."""
    err: dict[str, Any] = {"code": str(code), "message": message}
    if data is not None:
        err["data"] = data
    return err


def encode_error(
    msgid: int | None,
    code: str,
    message: str,
    data: Any = None,
    *,
    framed: bool = True,
    pack: Pack = packb,
) -> bytes:
    """An error response to ``msgid``, or an error notice if ``msgid`` is None."""
    err = error_map(code, message, data)
    if msgid is None:
        return frame(pack([2, "error", [err]]), framed)
    return frame(pack([1, msgid, err, None]), framed)


def encode_notification(
    method: str, params: list[Any] | tuple[Any, ...], *, framed: bool = True, pack: Pack = packb
) -> bytes:
    """The bytes of a notification."""
    return frame(pack([2, method, list(params)]), framed)


def encode_cancel(msgid: int, *, framed: bool = True, pack: Pack = packb) -> bytes:
    """The bytes of a cancel message."""
    return frame(pack([3, msgid]), framed)


def encode_items(msgid: int, items: list[Any] | tuple[Any, ...], *, pack: Pack = packb) -> bytes:
    """The version 2 ``items`` message, ``[4, msgid, [item, ...]]`` (§12)."""
    if not items:
        raise ValueError("an items message holds at least one item")
    return frame(pack([4, msgid, list(items)]))


def items_head(msgid: int, count: int, *, pack: Pack = packb) -> bytes:
    """The first bytes of an ``items`` message whose ``count`` items, each already
    packed, follow: a sender can pack items one by one as they come."""
    if count < 16:
        header = bytes([0x90 | count])
    elif count < 2**16:
        header = b"\xdc" + count.to_bytes(2, "big")
    else:
        header = b"\xdd" + count.to_bytes(4, "big")
    return b"\x93\x04" + pack(msgid) + header


def encode_credit(msgid: int, n: int, *, pack: Pack = packb) -> bytes:
    """The version 2 ``credit`` message, ``[5, msgid, n]`` (§12)."""
    if not 1 <= n <= MAX_CREDIT:
        raise ValueError(f"a credit grant is 1 to {MAX_CREDIT}, not {n}")
    return frame(pack([5, msgid, n]))


def encode_end(msgid: int, error: dict[str, Any] | None = None, *, pack: Pack = packb) -> bytes:
    """The version 2 ``end`` message, ``[6, msgid, nil | error]`` (§12)."""
    return frame(pack([6, msgid, error]))


def encode_goaway(reason: str, grace_ms: int, *, pack: Pack = packb) -> bytes:
    """The version 2 ``goaway`` notification, ``[2, "goaway", [{"reason", "grace_ms"}]]`` (§11)."""
    return frame(pack([2, "goaway", [{"reason": str(reason), "grace_ms": int(grace_ms)}]]))


def parse_goaway(event: Notification) -> tuple[str, int] | None:
    """``(reason, grace_ms)`` if ``event`` is a well-formed ``goaway``, else None.

    The reason is any str (a newer server may send a reason this module does
    not name in :class:`GoawayReason`); ``grace_ms`` is an int >= 0.
    """
    if event.method != "goaway" or len(event.params) != 1 or type(event.params[0]) is not dict:
        return None
    info = event.params[0]
    reason, grace_ms = info.get("reason"), info.get("grace_ms")
    if type(reason) is not str or type(grace_ms) is not int or grace_ms < 0:
        return None
    return reason, grace_ms


# --- A whole endpoint, h11 style ----------------------------------------------------------


@dataclass
class Connection:
    """One end of a trio_echo connection, with no I/O.

    A client in framed mode starts with :meth:`initiate` (the preamble). Feed
    received bytes to :meth:`receive_data` (``b""`` means EOF), then take
    events from :meth:`next_event` until it returns :data:`NEED_DATA`. Turn
    events into bytes with :meth:`send`. After EOF, :meth:`next_event` raises
    ``EOFError`` once the buffered events are consumed.

    A server-role connection expects the preamble first (a server pinned to
    framed mode); auto-mode sniffing is :func:`sniff_mode`.

    ``version`` is the protocol version: for a client, the one its preamble
    offers; for a server, the one the client's preamble named, once read.
    """

    our_role: Role = Role.CLIENT
    mode: Mode = Mode.FRAMED
    max_frame: int = DEFAULT_MAX_FRAME
    version: int = PROTOCOL_VERSION
    #: Framed mode: a frame longer than ``max_frame`` becomes an
    #: :class:`OversizedFrame` event and is skipped, instead of ending the
    #: connection with a fatal ``frame_too_large`` violation (for a client).
    skip_oversized: bool = False
    _decoder: FrameDecoder | StreamDecoder = field(init=False, repr=False)
    _events: list[Any] = field(init=False, repr=False, default_factory=list)
    _pos: int = field(init=False, repr=False, default=0)
    _preamble: bytes | None = field(init=False, repr=False, default=None)
    _eof: bool = field(init=False, repr=False, default=False)
    _pack: Pack = field(init=False, repr=False, default=packb)

    def __post_init__(self) -> None:
        if self.mode is Mode.RAW:
            raise ValueError("raw mode has no messages")
        if self.version not in PROTOCOL_VERSIONS:
            raise ValueError(f"protocol version {self.version} is not one of {PROTOCOL_VERSIONS}")
        framed = self.mode is Mode.FRAMED
        self._decoder = (
            FrameDecoder(self.max_frame, skip_oversized=self.skip_oversized)
            if framed
            else StreamDecoder(self.max_frame)
        )
        if framed and self.our_role is Role.SERVER:
            self._preamble = b""
        self._pack = make_packer()

    @property
    def framed(self) -> bool:
        """True in framed mode."""
        return self.mode is Mode.FRAMED

    def initiate(self) -> bytes:
        """The bytes a client sends first: the preamble in framed mode, else nothing."""
        return preamble(self.version) if self.framed and self.our_role is Role.CLIENT else b""

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the peer; ``b""`` signals end of stream."""
        if not data:
            self._eof = True
            return
        if self._preamble is not None:
            data = self._take_preamble(data)
            if not data:
                return
        if self._pos:
            del self._events[: self._pos]
            self._pos = 0
        self._events.extend(self._decoder.feed(data))

    def _take_preamble(self, data: bytes | bytearray) -> bytes:
        assert self._preamble is not None
        prefix = self._preamble + data
        verdict = check_preamble(prefix)
        if verdict is None:
            self._preamble = prefix
            return b""
        self._preamble = None
        if isinstance(verdict, ProtocolViolation):
            self._decoder.dead = True
            self._events.append(verdict)
            return b""
        self.version = prefix[len(MAGIC)]
        return prefix[len(PREAMBLE) :]

    def next_event(self) -> Event | OversizedFrame | _NeedData:
        """The next event, or :data:`NEED_DATA`.

        An :class:`OversizedFrame` comes only with ``skip_oversized``.

        Raises:
            EOFError: the peer closed and every event has been returned.
        """
        if self._pos < len(self._events):
            obj = self._events[self._pos]
            self._pos += 1
            if type(obj) is OversizedFrame:
                return obj
            return parse_message(obj, self.version if self.framed else PROTOCOL_VERSION)
        if self._eof:
            raise EOFError("the peer closed the connection")
        return NEED_DATA

    def events(self) -> Iterator[Event | OversizedFrame]:
        """Iterate over the events available now (stops at NEED_DATA or EOF)."""
        while True:
            try:
                event = self.next_event()
            except EOFError:
                return
            if event is NEED_DATA:
                return
            assert not isinstance(event, _NeedData)
            yield event

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a message."""
        return self._decoder.buffered

    @property
    def idle(self) -> bool:
        """True in framed mode when nothing is held: no event not yet returned, no
        partial frame, no preamble still expected, no EOF. The next bytes then start
        a frame, and a caller may decode whole frames itself (the clients' fast path
        for plain responses) and feed this connection only the rest."""
        decoder = self._decoder
        return (
            self._pos >= len(self._events)
            and type(decoder) is FrameDecoder
            and not decoder._buf  # FrameDecoder.idle, inlined: this runs per read
            and not decoder._skip
            and not decoder.dead
            and self._preamble is None
            and not self._eof
        )

    def send(self, event: Event) -> bytes:
        """The bytes that carry ``event`` to the peer.

        Raises:
            TypeError: ``event`` is a :class:`ProtocolViolation`, which is not
                a message (use :func:`encode_error`).
        """
        framed = self.framed
        pack = self._pack
        if type(event) is Request:
            return encode_request(
                event.msgid, event.method, event.params, event.options, framed=framed, pack=pack
            )
        if type(event) is Response:
            return encode_response(event.msgid, event.result, framed=framed, pack=pack)
        if type(event) is ErrorResponse:
            return encode_error(
                event.msgid, event.code, event.message, event.data, framed=framed, pack=pack
            )
        if type(event) is Notification:
            return encode_notification(event.method, event.params, framed=framed, pack=pack)
        if type(event) is Cancel:
            return encode_cancel(event.msgid, framed=framed, pack=pack)
        if type(event) in (Items, Credit, End):
            if not framed or self.version < STREAM_VERSION:
                raise TypeError(f"{type(event).__name__} needs a version 2 framed connection")
            if type(event) is Items:
                return encode_items(event.msgid, event.items, pack=pack)
            if type(event) is Credit:
                return encode_credit(event.msgid, event.n, pack=pack)
            assert type(event) is End
            return encode_end(event.msgid, event.error, pack=pack)
        raise TypeError(f"cannot send {event!r}")
