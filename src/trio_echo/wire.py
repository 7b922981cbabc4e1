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
  ``goaway`` notification and the ``unavailable`` error code to version 1.
* :class:`Connection` bundles all of this for a client (or a test peer) in the
  style of h11: ``send(event) -> bytes``, ``receive_data(bytes)``,
  ``next_event()``.

The server's hot path skips the event objects for well-formed requests and
works on the decoded lists directly; every other input goes through
:func:`parse_message`, so there is one definition of what is valid.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack

__all__ = [
    "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_INFLIGHT",
    "DEFAULT_PORT",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_MSGID",
    "NEED_DATA",
    "LATEST_VERSION",
    "PREAMBLE",
    "PREAMBLE_V2",
    "PROTOCOL_VERSION",
    "PROTOCOL_VERSIONS",
    "Cancel",
    "Connection",
    "ErrorCode",
    "ErrorResponse",
    "Event",
    "GoawayReason",
    "FrameDecoder",
    "MessageType",
    "Mode",
    "Notification",
    "ProtocolViolation",
    "Request",
    "Response",
    "Role",
    "StreamDecoder",
    "encode_cancel",
    "encode_error",
    "encode_goaway",
    "encode_notification",
    "encode_request",
    "encode_response",
    "frame",
    "packb",
    "parse_goaway",
    "parse_message",
    "preamble",
    "preamble_version",
    "sniff_mode",
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
#: msgids are unsigned 32-bit integers.
MAX_MSGID: Final = 2**32 - 1


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
class ProtocolViolation:
    """The peer sent something invalid.

    Decoders put this in their output where the bad input was. ``msgid`` is
    set when the bad message's msgid could be read (the error is then answered
    as a response). ``fatal`` means the stream cannot be resynchronised and
    the connection must close after the error is reported.
    """

    code: ErrorCode
    message: str
    msgid: int | None = None
    fatal: bool = False


Event = Request | Response | ErrorResponse | Notification | Cancel | ProtocolViolation


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


class FrameDecoder:
    """Splits a framed byte stream into decoded msgpack objects.

    :meth:`feed` returns, in order, one item per complete frame: the decoded
    object, or a :class:`ProtocolViolation` for a frame whose body is not
    exactly one msgpack object (or is empty). A header announcing more than
    ``max_frame`` bytes yields a fatal ``frame_too_large`` violation before
    any of its body is buffered, and the decoder accepts nothing after it.
    """

    __slots__ = ("_buf", "_need", "dead", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        # The start of an incomplete frame. It grows in place, so a frame
        # trickling in a byte at a time costs O(size), not O(size**2).
        self._buf = bytearray()
        # How many bytes _buf must hold before another frame can complete.
        self._need = HEADER_SIZE
        #: Set after a fatal violation; the stream cannot be resynchronised.
        self.dead = False

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def release(self) -> bool:
        """Nothing to free: an idle FrameDecoder holds no buffer (see StreamDecoder)."""
        return False

    def feed(self, data: bytes | bytearray) -> list[Any]:
        """Add bytes; return the items of every frame they complete."""
        if self.dead:
            return []
        out: list[Any] = []
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return out
            buf: bytes | bytearray = bytes(self._buf)
            self._buf = bytearray()
        else:
            buf = data
        n = len(buf)
        off = 0
        max_frame = self.max_frame
        view = None
        need = HEADER_SIZE
        unpack_header = _HEADER.unpack_from
        unpackb = msgpack.unpackb
        while n - off >= HEADER_SIZE:
            length = unpack_header(buf, off)[0]
            if length > max_frame:
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
            if length == 0:
                out.append(ProtocolViolation(ErrorCode.MALFORMED, "empty frame"))
            else:
                # Large bodies are decoded through a memoryview: no slice copy.
                if length > 2048:
                    if view is None:
                        view = memoryview(buf)
                    body: bytes | bytearray | memoryview = view[off + HEADER_SIZE : end]
                else:
                    body = buf[off + HEADER_SIZE : end]
                try:
                    # raw=False is msgpack's default: str stays str (see unpackb()).
                    out.append(unpackb(body, strict_map_key=False))
                except Exception as exc:
                    out.append(_undecodable(exc))
            off = end
        if off < n and not self.dead:
            self._buf = bytearray(view[off:] if view is not None else buf[off:])
            self._need = need
        if view is not None:
            view.release()
        return out


def _undecodable(exc: BaseException) -> ProtocolViolation:
    if isinstance(exc, msgpack.ExtraData):
        return ProtocolViolation(ErrorCode.MALFORMED, "frame holds more than one msgpack object")
    return ProtocolViolation(ErrorCode.MALFORMED, _describe(exc))


def _describe(exc: BaseException) -> str:
    detail = str(exc) or type(exc).__name__
    return f"undecodable msgpack: {detail}"


class StreamDecoder:
    """Splits a bare msgpack-rpc byte stream into decoded objects.

    A bare stream has no length prefix, so any undecodable byte is fatal (the
    stream cannot be resynchronised), and so is a message larger than
    ``max_frame``. Output items are as for :class:`FrameDecoder`.
    """

    __slots__ = ("_fed", "_scan", "_start", "_unpacker", "dead", "max_frame")

    #: A feed that may hold a too-large message goes to the Unpacker this much
    #: at a time, which bounds its buffer.
    CHUNK: Final = 64 * 1024

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        # The Unpacker costs ~45 KB, so it is created on first use only.
        self._unpacker: msgpack.Unpacker | None = None
        # Stream offsets: bytes fed so far, and where the message being
        # decoded began. (Unpacker.tell() is no use for the latter: it also
        # counts the bytes of a message the Unpacker has only partly parsed.)
        self._fed = 0
        self._start = 0
        # None when _start is exact. Otherwise (data, base, count): _start is
        # a message boundary inside `data` (whose first byte is stream offset
        # `base`), `count` complete messages follow it in `data`, and the
        # message being decoded begins after them (see _exact_start).
        self._scan: tuple[bytes | bytearray, int, int] | None = None
        self.dead = False

    @property
    def buffered(self) -> int:
        """Bytes of the incomplete message held (raw or partly decoded)."""
        if self._unpacker is None:
            return 0
        self._exact_start()
        return self._fed - self._start

    def feed(self, data: bytes | bytearray) -> list[Any]:
        """Add bytes; return the items of every message they complete."""
        out: list[Any] = []
        unpacker = self._unpacker
        if unpacker is None or self._fed + len(data) - self._start > self.max_frame:
            self._feed_slowly(data, out)
        else:
            self._feed_within_limit(unpacker, data, out)  # the usual case: one read
        return out

    def _feed_within_limit(
        self, unpacker: msgpack.Unpacker, data: bytes | bytearray, out: list[Any]
    ) -> bool:
        """Feed ``data`` and decode every message it completes, at C speed.

        The caller checked that everything from the first incomplete message
        on fits in max_frame (_start is never past that message's start), so
        no message here can be too large and the Unpacker's buffer stays
        within max_frame. Only the position of the message left incomplete
        matters, and only if it grows large: note the end of the first message
        completed and how many follow it (see _exact_start), and let the
        Unpacker decode the rest. (Unpacker.tell() cannot say where an
        incomplete message began: it also counts the bytes parsed of it.)
        Returns False if the stream turned out to be fatally bad.
        """
        base = self._fed
        unpacker.feed(data)
        self._fed = base + len(data)
        before = len(out)
        try:
            for obj in unpacker:
                out.append(obj)
                break
            else:
                return True  # nothing completed: the incomplete message is the same one
            self._start = unpacker.tell()
            self._scan = None
            out.extend(unpacker)
        except Exception as exc:
            if len(out) > before:
                self._scan = (data, base, len(out) - before - 1)
            self._fail(unpacker, exc, out)
            return False
        if len(out) - before > 1:
            self._scan = (data, base, len(out) - before - 1)
        return True

    def _exact_start(self) -> None:
        """Make _start exact: skip the complete messages that _scan says follow it."""
        if self._scan is None:
            return
        data, base, count = self._scan
        self._scan = None
        scratch = msgpack.Unpacker(max_buffer_size=len(data))
        scratch.feed(memoryview(data)[self._start - base :])
        for _ in range(count):
            scratch.skip()
        self._start += scratch.tell()

    def _feed_slowly(self, data: bytes | bytearray, out: list[Any]) -> None:
        """A first feed, or a message that may exceed max_frame: a chunk at a time."""
        if self.dead:
            return
        if self._unpacker is None:
            # No single length inside a message can exceed the message.
            limit = self.max_frame
            self._unpacker = msgpack.Unpacker(
                raw=False,
                strict_map_key=False,
                max_buffer_size=limit + 2 * self.CHUNK,
                max_str_len=limit,
                max_bin_len=limit,
                max_array_len=limit,
                max_map_len=limit // 2,
                max_ext_len=limit,
            )
        unpacker = self._unpacker
        for start in range(0, len(data), self.CHUNK):
            chunk = data[start : start + self.CHUNK]
            if self._fed + len(chunk) - self._start <= self.max_frame:
                ok = self._feed_within_limit(unpacker, chunk, out)
            else:
                unpacker.feed(chunk)
                self._fed += len(chunk)
                ok = self._drain_counting(unpacker, out)
            if not ok:
                return

    def _drain_counting(self, unpacker: msgpack.Unpacker, out: list[Any]) -> bool:
        """Decode message by message, checking each one's size against max_frame."""
        self._exact_start()
        max_frame = self.max_frame
        while True:
            try:
                obj = unpacker.unpack()
            except msgpack.OutOfData:
                break
            except Exception as exc:
                self._fail(unpacker, exc, out)
                return False
            end = unpacker.tell()
            if end - self._start > max_frame:
                self._die(
                    out,
                    ErrorCode.FRAME_TOO_LARGE,
                    f"message of {end - self._start} bytes exceeds max_frame ({max_frame})",
                )
                return False
            self._start = end
            out.append(obj)
        if self._fed - self._start > max_frame:
            self._die(
                out,
                ErrorCode.FRAME_TOO_LARGE,
                f"message of more than {max_frame} bytes exceeds max_frame",
            )
            return False
        return True

    def _fail(self, unpacker: msgpack.Unpacker, exc: Exception, out: list[Any]) -> None:
        # tell() stops at the bad byte. An error past max_frame, or a length
        # header announcing more than max_frame, means the message was too
        # large before it was bad: report that, as a byte-at-a-time feed would.
        self._exact_start()
        if unpacker.tell() - self._start > self.max_frame or (
            isinstance(exc, ValueError) and "exceeds max_" in str(exc)
        ):
            self._die(out, ErrorCode.FRAME_TOO_LARGE, f"message exceeds max_frame: {exc}")
        else:
            self._die(out, ErrorCode.MALFORMED, _describe(exc))

    def release(self) -> bool:
        """Free the ~45 KB Unpacker if no partial message is held (e.g. when idle).

        The next :meth:`feed` makes a new one. Returns True if it was freed.
        """
        if self._unpacker is None:
            return False
        self._exact_start()
        if self._fed != self._start:
            return False
        self._unpacker = None
        self._fed = self._start = 0  # offsets restart with the next Unpacker
        return True

    def _die(self, out: list[Any], code: ErrorCode, message: str) -> None:
        self.dead = True
        self._unpacker = None
        out.append(ProtocolViolation(code, message, fatal=True))


# --- §4 Message validation ---------------------------------------------------------


def _valid_msgid(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_MSGID


def parse_message(obj: Any) -> Event:
    """Validate one decoded msgpack object and return it as an event.

    Anything that is not a well-formed message becomes a non-fatal
    ``malformed`` :class:`ProtocolViolation`, carrying the msgid when one
    could be read so that the error can be answered as a response.
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
    return ProtocolViolation(ErrorCode.MALFORMED, f"unknown message type {kind!r}")


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
            ErrorCode.INVALID_PARAMS, f"timeout_ms must be a positive number, not {value!r}"
        )
    return float(value) / 1000.0


# --- Encoders ----------------------------------------------------------------------

Pack = Callable[[Any], bytes]


def frame(body: bytes) -> bytes:
    """Prefix a msgpack body with its 4-byte big-endian length (§3)."""
    return len(body).to_bytes(HEADER_SIZE, "big") + body


def _out(body: bytes, framed: bool) -> bytes:
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
    return _out(pack(msg), framed)


def encode_response(msgid: int, result: Any, *, framed: bool = True, pack: Pack = packb) -> bytes:
    """The bytes of a successful response."""
    return _out(pack([1, msgid, None, result]), framed)


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
        return _out(pack([2, "error", [err]]), framed)
    return _out(pack([1, msgid, err, None]), framed)


def encode_notification(
    method: str, params: list[Any] | tuple[Any, ...], *, framed: bool = True, pack: Pack = packb
) -> bytes:
    """The bytes of a notification."""
    return _out(pack([2, method, list(params)]), framed)


def encode_cancel(msgid: int, *, framed: bool = True, pack: Pack = packb) -> bytes:
    """The bytes of a cancel message."""
    return _out(pack([3, msgid]), framed)


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
        self._decoder = (FrameDecoder if framed else StreamDecoder)(self.max_frame)
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

    def next_event(self) -> Event | _NeedData:
        """The next event, or :data:`NEED_DATA`.

        Raises:
            EOFError: the peer closed and every event has been returned.
        """
        if self._pos < len(self._events):
            obj = self._events[self._pos]
            self._pos += 1
            return parse_message(obj)
        if self._eof:
            raise EOFError("the peer closed the connection")
        return NEED_DATA

    def events(self) -> Iterator[Event]:
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
        raise TypeError(f"cannot send {event!r}")
