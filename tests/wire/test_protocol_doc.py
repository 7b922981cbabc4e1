"""protocol.md and trio_echo.wire must agree (the document is the contract).

Every ```hex block of protocol.md is decoded with the wire module and compared
with its ```decoded block, then re-encoded and compared byte for byte. The
error-code table must list exactly the codes of :class:`wire.ErrorCode`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

import pytest

from trio_echo import wire
from trio_echo.wire import (
    Connection,
    ErrorCode,
    FrameDecoder,
    Mode,
    ProtocolViolation,
    StreamDecoder,
)

from helpers import ROOT, encode, same

DOC = ROOT / "protocol.md"
TEXT = DOC.read_text(encoding="utf-8")

FENCE = re.compile(r"^```(hex|decoded) ([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Vector:
    name: str
    kind: str
    data: bytes
    attrs: dict[str, str]
    decoded: Any  # the decoded block as a Python object; None if there is none
    has_decoded: bool


def _attrs(info: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in info.split()]
    assert all(len(p) == 2 for p in pairs), f"bad fence info string {info!r}"
    return {k: v for k, v in pairs}


def _vectors() -> dict[str, Vector]:
    hexes: dict[str, dict[str, str]] = {}
    data: dict[str, bytes] = {}
    decoded: dict[str, Any] = {}
    for lang, info, body in FENCE.findall(TEXT):
        attrs = _attrs(info)
        name = attrs["name"]
        if lang == "hex":
            assert name not in hexes, f"duplicate vector {name}"
            hexes[name] = attrs
            data[name] = bytes.fromhex(body)
        else:
            assert name not in decoded, f"duplicate decoded block {name}"
            decoded[name] = ast.literal_eval(body.strip())
    orphans = set(decoded) - set(hexes)
    assert not orphans, f"decoded blocks without a vector: {orphans}"
    return {
        name: Vector(name, attrs["kind"], data[name], attrs, decoded.get(name), name in decoded)
        for name, attrs in hexes.items()
    }


VECTORS = _vectors()

REQUIRED = {
    "preamble",
    "request",
    "request-timeout",
    "response",
    "error-response",
    "error-notice",
    "hello",
    "cancel",
    "notification",
    "stream-request",
    "preamble-v2",
    "hello-v2",
    "goaway",
    "unavailable-response",
    "request-server-stream",
    "items",
    "credit",
    "request-client-stream",
    "go-ahead",
    "end",
    "end-error",
    "request-bidi-stream",
}


def test_the_required_vectors_are_there() -> None:
    assert set(VECTORS) >= REQUIRED
    assert all(v.kind in {"preamble", "frame", "stream"} for v in VECTORS.values())


def decode(vector: Vector) -> list[Any]:
    if vector.kind == "frame":
        decoder: FrameDecoder | StreamDecoder = FrameDecoder()
    else:
        decoder = StreamDecoder()
    items = decoder.feed(vector.data)
    # The same items come out when the bytes arrive one at a time.
    trickled = FrameDecoder() if vector.kind == "frame" else StreamDecoder()
    one_by_one = [item for b in vector.data for item in trickled.feed(bytes([b]))]
    assert one_by_one == items
    return items


GOOD = sorted(n for n, v in VECTORS.items() if "error" not in v.attrs and v.kind != "preamble")
BAD = sorted(n for n, v in VECTORS.items() if "error" in v.attrs)


@pytest.mark.parametrize("name", GOOD)
def test_valid_vector_decodes_to_its_documented_message(name: str) -> None:
    vector = VECTORS[name]
    assert vector.has_decoded, f"{name} has no decoded block"
    [obj] = decode(vector)
    assert same(obj, vector.decoded)
    version = _version(vector)
    event = wire.parse_message(obj, version)
    assert type(event) is not ProtocolViolation, event
    framed = vector.kind == "frame"
    # Re-encoding gives the documented bytes, through the specific encoder,
    # through a Connection, and through plain msgpack.
    assert encode(event, framed) == vector.data
    mode = Mode.FRAMED if framed else Mode.MPRPC
    assert Connection(mode=mode, version=version).send(event) == vector.data
    body = wire.packb(vector.decoded)
    assert (wire.frame(body) if framed else body) == vector.data


@pytest.mark.parametrize("name", BAD)
def test_invalid_vector_gives_its_documented_error(name: str) -> None:
    vector = VECTORS[name]
    code = ErrorCode(vector.attrs["error"])
    fatal = {"yes": True, "no": False}[vector.attrs["fatal"]]
    msgid = int(vector.attrs["msgid"]) if "msgid" in vector.attrs else None
    if vector.kind == "preamble":
        verdicts = [wire.sniff_mode(vector.data), wire.check_preamble(vector.data)]
    elif vector.kind == "stream":
        # Stream garbage only counts after a valid opening (sniffing needs 0x93/0x94).
        opening = VECTORS["stream-request"].data
        items = StreamDecoder().feed(opening + vector.data)
        assert items[0] == VECTORS["stream-request"].decoded
        verdicts = items[1:]
    else:
        items = decode(vector)
        if vector.has_decoded:
            assert same(items[0], vector.decoded)
        verdicts = [wire.parse_message(item, _version(vector)) for item in items]
        # A non-fatal frame error leaves the connection usable.
        if not fatal:
            after = FrameDecoder()
            assert after.feed(vector.data + VECTORS["request"].data)[-1] == (
                VECTORS["request"].decoded
            )
    assert verdicts
    for verdict in verdicts:
        assert type(verdict) is ProtocolViolation, verdict
        assert (verdict.code, verdict.fatal, verdict.msgid) == (code, fatal, msgid)
        # A bad stream message names the stream it was for, never a new request.
        assert verdict.stream == (_version(vector) >= wire.STREAM_VERSION and msgid is not None)


def _version(vector: Vector) -> int:
    return int(vector.attrs.get("version", wire.PROTOCOL_VERSION))


STREAM_VECTORS = sorted(n for n, v in VECTORS.items() if _version(v) >= wire.STREAM_VERSION)


@pytest.mark.parametrize("name", STREAM_VECTORS)
def test_stream_messages_are_unknown_types_on_version_1(name: str) -> None:
    [obj] = decode(VECTORS[name])
    if obj[0] < wire.MessageType.ITEMS:
        return  # a request or response with stream options: valid on both versions
    verdict = wire.parse_message(obj, 1)
    assert type(verdict) is ProtocolViolation
    assert (verdict.code, verdict.msgid, verdict.stream) == (ErrorCode.MALFORMED, None, False)
    assert "unknown message type" in verdict.message
    with pytest.raises(TypeError):
        Connection().send(wire.parse_message(obj, 2))


def test_stream_request_vectors_carry_valid_stream_options() -> None:
    kinds = {}
    for name in ("request-server-stream", "request-client-stream", "request-bidi-stream"):
        event = wire.parse_message(decode(VECTORS[name])[0], 2)
        assert isinstance(event, wire.Request)
        options = wire.stream_options(event.options)
        assert isinstance(options, tuple), options
        kinds[name] = options
    assert kinds["request-server-stream"] == (wire.StreamKind.SERVER, 2)
    assert kinds["request-client-stream"] == (wire.StreamKind.CLIENT, None)
    assert kinds["request-bidi-stream"] == (wire.StreamKind.BIDI, 16)
    # §12.1 names exactly the kinds the code knows.
    table = re.search(r"^\| `stream` \|.*$", _section(12), re.MULTILINE)
    assert table is not None
    assert set(re.findall(r'`"([a-z]+)"`', table.group(0))) == {str(k) for k in wire.StreamKind}


def test_preamble_vector() -> None:
    vector = VECTORS["preamble"]
    assert vector.data == wire.PREAMBLE == Connection().initiate()
    assert wire.sniff_mode(vector.data) is Mode.FRAMED
    assert wire.check_preamble(vector.data) is True
    assert "00 54 45 43 48 4F 00 01" in TEXT


def test_stream_vectors_are_sniffed_as_msgpack_rpc() -> None:
    for vector in VECTORS.values():
        if vector.kind == "stream" and "error" not in vector.attrs:
            assert wire.sniff_mode(vector.data[:1]) is Mode.MPRPC


@pytest.mark.parametrize(("name", "version"), [("hello", 1), ("hello-v2", 2)])
def test_hello_vector_has_the_documented_keys(name: str, version: int) -> None:
    [info] = VECTORS[name].decoded[2]
    assert {"protocol", "server", "max_frame", "max_inflight"} <= set(info)
    assert info["protocol"] == version
    assert info["max_frame"] == wire.DEFAULT_MAX_FRAME
    assert info["max_inflight"] == wire.DEFAULT_MAX_INFLIGHT


def test_preamble_v2_vector() -> None:
    vector = VECTORS["preamble-v2"]
    assert vector.data == wire.PREAMBLE_V2 == wire.preamble(2) == Connection(version=2).initiate()
    assert wire.preamble_version(vector.data) == 2
    assert wire.sniff_mode(vector.data) is Mode.FRAMED
    assert wire.check_preamble(vector.data) is True
    server = Connection(wire.Role.SERVER)
    server.receive_data(vector.data + VECTORS["request"].data)
    assert server.version == 2
    assert server.next_event() == wire.Request(1, "echo", ["hi"])
    assert "00 54 45 43 48 4F 00 02" in _section(11)


def test_goaway_vector_is_what_the_encoder_sends() -> None:
    vector = VECTORS["goaway"]
    [info] = vector.decoded[2]
    assert wire.encode_goaway(info["reason"], info["grace_ms"]) == vector.data
    event = wire.parse_message(decode(vector)[0])
    assert isinstance(event, wire.Notification)
    assert wire.parse_goaway(event) == (wire.GoawayReason.SHUTDOWN, 10000)
    # Every documented reason is one the server can send.
    reasons = set(re.findall(r'`"([a-z_]+)"`', _section(11)))
    assert reasons == {str(r) for r in wire.GoawayReason}


def test_unavailable_vector_is_an_error_response() -> None:
    event = wire.parse_message(decode(VECTORS["unavailable-response"])[0])
    assert isinstance(event, wire.ErrorResponse)
    assert (event.msgid, event.code) == (7, ErrorCode.UNAVAILABLE)


def _section(number: int) -> str:
    match = re.search(rf"^## {number}\. .*?(?=^## )", TEXT, re.MULTILINE | re.DOTALL)
    assert match, f"protocol.md has no section {number}"
    return match.group(0)


def test_error_table_lists_exactly_the_error_codes() -> None:
    rows = re.findall(r"^\| `([a-z_]+)` \|", _section(6), re.MULTILINE)
    assert len(rows) == len(set(rows))
    assert set(rows) == {str(code) for code in ErrorCode}
    assert len(rows) == 10


def test_documented_defaults_match_the_code() -> None:
    limits = _section(8)
    assert f"| `max_frame` | {wire.DEFAULT_MAX_FRAME} " in limits
    assert f"| `max_inflight` | {wire.DEFAULT_MAX_INFLIGHT} per connection" in limits
    assert "4 MiB" in _section(3)
