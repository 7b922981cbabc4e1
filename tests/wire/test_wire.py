"""The sans-IO wire core (protocol.md §2-§6): pure bytes, no Trio."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_echo import wire
from trio_echo.wire import (
    HEADER_SIZE,
    MAGIC,
    MAX_MSGID,
    NEED_DATA,
    PREAMBLE,
    Cancel,
    Connection,
    ErrorCode,
    ErrorResponse,
    FrameDecoder,
    Mode,
    Notification,
    ProtocolViolation,
    Request,
    Response,
    Role,
    StreamDecoder,
)

from helpers import encode, same

# Modest example counts: the whole project suite has a time budget.
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Byte-at-a-time feeding is the slow part; fewer examples for those.
SPLITS = settings(PROPERTY, max_examples=80)

# --- helpers ---------------------------------------------------------------------------


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[i:j] for i, j in itertools.pairwise(bounds) if j > i]


def feed_all(decoder: FrameDecoder | StreamDecoder, chunks: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def one_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def settled(decoder: StreamDecoder, items: list[Any], other: StreamDecoder) -> list[Any]:
    """A stream decoder refuses a header announcing more than max_frame at once only in
    the first read of its message; later, once max_frame bytes of the message have
    arrived. If ``other`` (fed the same bytes, cut differently) refused at once while
    ``decoder`` still waits, feed ``decoder`` the bytes it takes to get there too."""
    if other.dead and not decoder.dead and decoder.pending:
        items = items + decoder.feed(b"\x90" * (decoder.max_frame + 1))
    return items


def same_stream_outcome(data: bytes, chunks: list[bytes], max_frame: int) -> None:
    """Fed whole or in ``chunks``, a stream decoder ends with the same items."""
    whole, split = StreamDecoder(max_frame), StreamDecoder(max_frame)
    whole_items = whole.feed(data)
    split_items = feed_all(split, chunks)
    whole_items = settled(whole, whole_items, split)
    split_items = settled(split, split_items, whole)
    # Only the wording of a malformed stream's end may depend on the split (that of
    # frame_too_large may not: one text for one limit), and its code in one case: a
    # header announcing more than max_frame items is refused at once (frame_too_large)
    # only in the read its message starts in; otherwise bytes that are not msgpack,
    # after it, may end the stream first (malformed).
    a, b = stream_summary(split_items), stream_summary(whole_items)
    ends = {fatal_code(a[-1]), fatal_code(b[-1])} if a and b else set()
    if ends != {ErrorCode.FRAME_TOO_LARGE, ErrorCode.MALFORMED} or a[:-1] != b[:-1]:
        assert a == b


def stream_summary(items: list[Any]) -> list[Any]:
    return [
        FatalEnd(i.code, i.message if i.code == ErrorCode.FRAME_TOO_LARGE else "")
        if type(i) is ProtocolViolation and i.fatal
        else i
        for i in items
    ]


@dataclass(frozen=True)
class FatalEnd:
    code: str
    message: str


def fatal_code(item: Any) -> str | None:
    return item.code if type(item) is FatalEnd else None


def decode_one(data: bytes, *, framed: bool) -> Any:
    decoder = FrameDecoder() if framed else StreamDecoder()
    items = decoder.feed(data)
    assert len(items) == 1, items
    assert decoder.buffered == 0
    return wire.parse_message(items[0])


def violation(event: object, code: ErrorCode, msgid: int | None = None) -> None:
    assert type(event) is ProtocolViolation, event
    assert event.code == code
    assert event.msgid == msgid


# --- strategies ------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-1000, 1000), inner, max_size=4)
    ),
    max_leaves=12,
)
msgids = st.integers(0, MAX_MSGID)
names = st.text(max_size=12)
params = st.lists(values, max_size=3)
codes = st.sampled_from(list(ErrorCode)).map(str) | st.text(min_size=1, max_size=10)
# encode_request leaves out an empty options map, so generate None or a non-empty one.
options = st.none() | st.dictionaries(st.text(max_size=10), values, min_size=1, max_size=3)

events = st.one_of(
    st.builds(Request, msgids, names, params, options),
    st.builds(Response, msgids, values),
    st.builds(ErrorResponse, msgids, codes, st.text(max_size=20), values),
    st.builds(Notification, names, params),
    st.builds(Cancel, msgids),
)


# --- (a) round trips -------------------------------------------------------------------


@PROPERTY
@given(event=events, framed=st.booleans())
def test_every_message_shape_round_trips(event: Any, framed: bool) -> None:
    data = encode(event, framed)
    mode = Mode.FRAMED if framed else Mode.MPRPC
    assert Connection(mode=mode).send(event) == data
    if framed:
        assert int.from_bytes(data[:HEADER_SIZE], "big") == len(data) - HEADER_SIZE
    assert same(decode_one(data, framed=framed), event)


@PROPERTY
@given(value=values)
def test_echo_values_keep_their_msgpack_types(value: Any) -> None:
    # bytes stay bytes, str stays str, int map keys stay ints, ints stay ints.
    for framed in (True, False):
        request = decode_one(wire.encode_request(7, "echo", [value], framed=framed), framed=framed)
        assert same(request, Request(7, "echo", [value]))
        reply = decode_one(wire.encode_response(7, value, framed=framed), framed=framed)
        assert same(reply, Response(7, value))


# Bodies written out by hand from the msgpack spec, as an independent check.
ROUND_TRIPS = [
    (Request(1, "echo", ["hi"]), "94 00 01 a4 65 63 68 6f 91 a2 68 69"),
    (Request(0, "ping", []), "94 00 00 a4 70 69 6e 67 90"),
    (Response(1, "hi"), "94 01 01 c0 a2 68 69"),
    (Response(5, b"\x00\xff"), "94 01 05 c0 c4 02 00 ff"),
    (Cancel(MAX_MSGID), "92 03 ce ff ff ff ff"),
    (Notification("ping", []), "93 02 a4 70 69 6e 67 90"),
    (
        ErrorResponse(3, "timeout", "late"),
        "94 01 03 82 a4 63 6f 64 65 a7 74 69 6d 65 6f 75 74"
        " a7 6d 65 73 73 61 67 65 a4 6c 61 74 65 c0",
    ),
]


@pytest.mark.parametrize(("event", "body_hex"), ROUND_TRIPS)
def test_round_trip_table(event: Any, body_hex: str) -> None:
    body = bytes.fromhex(body_hex)
    data = len(body).to_bytes(4, "big") + body
    assert Connection().send(event) == data
    assert Connection(mode=Mode.MPRPC).send(event) == body
    assert same(decode_one(data, framed=True), event)
    assert same(decode_one(body, framed=False), event)
    # Fed one byte at a time, the same single event comes out at the last byte.
    decoder = FrameDecoder()
    items = [decoder.feed(chunk) for chunk in one_at_a_time(data)]
    assert all(not got for got in items[:-1])
    assert same(wire.parse_message(items[-1][0]), event)


def test_error_helpers() -> None:
    assert wire.error_map("internal", "boom") == {"code": "internal", "message": "boom"}
    assert wire.error_map("internal", "boom", [1]) == {
        "code": "internal",
        "message": "boom",
        "data": [1],
    }
    # msgid None makes an error notice, [2, "error", [{code, message}]].
    notice = decode_one(wire.encode_error(None, ErrorCode.MALFORMED, "bad"), framed=True)
    assert same(notice, Notification("error", [{"code": "malformed", "message": "bad"}]))
    assert wire.frame(b"\xc0") == b"\x00\x00\x00\x01\xc0"
    assert wire.unpackb(wire.packb({1: b"x", "k": "v"})) == {1: b"x", "k": "v"}
    with pytest.raises(ValueError):
        wire.unpackb(b"\xc1")


def test_connection_send_refuses_a_violation() -> None:
    with pytest.raises(TypeError):
        Connection().send(ProtocolViolation(ErrorCode.MALFORMED, "x"))


# --- (b) split invariance --------------------------------------------------------------

message_streams = st.lists(events, max_size=5)


@SPLITS
@given(batch=message_streams, junk=st.binary(max_size=40), cuts=st.lists(st.integers(0, 600)))
def test_frame_splits_do_not_matter(batch: list[Any], junk: bytes, cuts: list[int]) -> None:
    # Good frames with arbitrary bytes in the middle: the items are the same
    # however the stream is cut up.
    good = [encode(e, True) for e in batch]
    data = b"".join(good[:2]) + junk + b"".join(good[2:])
    whole = FrameDecoder(max_frame=300).feed(data)
    assert feed_all(FrameDecoder(max_frame=300), one_at_a_time(data)) == whole
    assert feed_all(FrameDecoder(max_frame=300), split_at(data, cuts)) == whole
    if not junk and all(len(g) <= 300 + HEADER_SIZE for g in good):
        assert same([wire.parse_message(i) for i in whole], batch)


@SPLITS
@given(batch=message_streams, tail=st.binary(max_size=40), cuts=st.lists(st.integers(0, 600)))
def test_stream_splits_do_not_matter(batch: list[Any], tail: bytes, cuts: list[int]) -> None:
    data = b"".join(encode(e, False) for e in batch) + tail
    same_stream_outcome(data, one_at_a_time(data), wire.DEFAULT_MAX_FRAME)
    same_stream_outcome(data, split_at(data, cuts), wire.DEFAULT_MAX_FRAME)
    whole = StreamDecoder().feed(data)
    assert same([wire.parse_message(i) for i in whole[: len(batch)]], batch)


@SPLITS
@given(
    batches=st.tuples(message_streams, message_streams),
    tails=st.tuples(st.binary(max_size=40), st.binary(max_size=40)),
    cuts=st.tuples(st.lists(st.integers(0, 600)), st.lists(st.integers(0, 600))),
)
def test_shared_stream_decoders_decode_as_their_own(
    batches: tuple[list[Any], list[Any]],
    tails: tuple[bytes, bytes],
    cuts: tuple[list[int], list[int]],
) -> None:
    # Decoders with shared=True borrow one hot-path Unpacker (the server's
    # msgpack-rpc connections, #15): two streams fed alternately, each cut
    # anywhere, ending mid-message or in junk, decode as each would alone.
    data = [
        b"".join(encode(e, False) for e in batch) + tail
        for batch, tail in zip(batches, tails, strict=True)
    ]
    chunks = [split_at(d, c) for d, c in zip(data, cuts, strict=True)]
    alone = [feed_all(StreamDecoder(max_frame=300), c) for c in chunks]
    shared = [StreamDecoder(max_frame=300, shared=True) for _ in chunks]
    got: list[list[Any]] = [[], []]
    for pair in itertools.zip_longest(*chunks):
        for i, chunk in enumerate(pair):
            if chunk is not None:
                got[i] += shared[i].feed(chunk)
    assert got == alone


@SPLITS
@given(
    batch=message_streams,
    junk=st.binary(max_size=60),
    cuts=st.lists(st.integers(0, 600)),
    max_frame=st.integers(8, 80),
)
def test_stream_split_invariance_with_a_small_max_frame(
    batch: list[Any], junk: bytes, cuts: list[int], max_frame: int
) -> None:
    good = [encode(e, False) for e in batch]
    data = b"".join(good[:2]) + junk + b"".join(good[2:])
    same_stream_outcome(data, one_at_a_time(data), max_frame)
    same_stream_outcome(data, split_at(data, cuts), max_frame)
    whole = [
        (i.code, i.fatal) if type(i) is ProtocolViolation else i
        for i in StreamDecoder(max_frame).feed(data)
    ]
    if not junk:
        # Each message is accepted exactly when it fits in max_frame.
        fits = [len(g) <= max_frame for g in good]
        n = fits.index(False) if False in fits else len(good)
        assert len(whole) == n + (n < len(good))
        if n < len(good):
            assert whole[-1] == (ErrorCode.FRAME_TOO_LARGE, True)


def test_stream_decoder_feeds_large_inputs_in_chunks() -> None:
    value = b"x" * (3 * StreamDecoder.FAST_READ)
    data = wire.encode_request(1, "echo", [value], framed=False) * 2
    assert feed_all(StreamDecoder(), [data]) == [[0, 1, "echo", [value]]] * 2


# --- (c) arbitrary bytes: only documented violations, bounded buffers -------------------

DECODER_CODES = {ErrorCode.MALFORMED, ErrorCode.FRAME_TOO_LARGE}


def check_items(items: list[Any], codes: set[ErrorCode]) -> None:
    for item in items:
        if type(item) is ProtocolViolation:
            assert item.code in codes
            assert item.msgid is None or 0 <= item.msgid <= wire.MAX_MSGID


@PROPERTY
@given(
    data=st.binary(max_size=400),
    cuts=st.lists(st.integers(0, 400)),
    max_frame=st.integers(1, 64),
)
def test_any_bytes_into_a_frame_decoder(data: bytes, cuts: list[int], max_frame: int) -> None:
    decoder = FrameDecoder(max_frame)
    for chunk in split_at(data, cuts):
        items = decoder.feed(chunk)
        assert isinstance(items, list)
        check_items(items, DECODER_CODES)
        assert decoder.buffered <= max_frame + HEADER_SIZE
        if any(type(i) is ProtocolViolation and i.fatal for i in items):
            assert decoder.dead
            assert items[-1].code == ErrorCode.FRAME_TOO_LARGE
    # Framed violations are never fatal except frame_too_large.


@PROPERTY
@given(
    data=st.binary(max_size=400),
    cuts=st.lists(st.integers(0, 400)),
    max_frame=st.integers(1, 64),
)
def test_any_bytes_into_a_stream_decoder(data: bytes, cuts: list[int], max_frame: int) -> None:
    decoder = StreamDecoder(max_frame)
    for chunk in split_at(data, cuts):
        items = decoder.feed(chunk)
        check_items(items, DECODER_CODES)
        assert decoder.buffered <= max_frame
        for item in items[:-1]:
            assert type(item) is not ProtocolViolation  # stream violations are all fatal
        if items and type(items[-1]) is ProtocolViolation:
            assert items[-1].fatal
            assert decoder.dead
            assert decoder.feed(b"\x94\x00\x01\xa4ping\x90") == []


@PROPERTY
@given(
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 300)),
    role=st.sampled_from(Role),
    mode=st.sampled_from([Mode.FRAMED, Mode.MPRPC]),
    prefixed=st.booleans(),
)
def test_any_bytes_into_a_connection(
    data: bytes, cuts: list[int], role: Role, mode: Mode, prefixed: bool
) -> None:
    conn = Connection(our_role=role, mode=mode, max_frame=100)
    if prefixed:
        data = PREAMBLE + data
    seen: list[Any] = []
    for chunk in split_at(data, cuts):
        conn.receive_data(chunk)
        seen.extend(conn.events())
        assert conn.next_event() is NEED_DATA
        assert conn.buffered <= 100 + HEADER_SIZE
    conn.receive_data(b"")
    with pytest.raises(EOFError):
        conn.next_event()
    allowed = DECODER_CODES | {ErrorCode.UNSUPPORTED_VERSION}
    for event in seen:
        assert type(event) in (
            Request,
            Response,
            ErrorResponse,
            Notification,
            Cancel,
            ProtocolViolation,
        )
        if type(event) is ProtocolViolation:
            assert event.code in allowed
            assert event.msgid is None or 0 <= event.msgid <= MAX_MSGID


# --- (d) an oversize header is rejected before its body arrives ---------------------------


@pytest.mark.parametrize("max_frame", [1, 100, wire.DEFAULT_MAX_FRAME])
def test_oversize_header_rejected_on_the_header_alone(max_frame: int) -> None:
    decoder = FrameDecoder(max_frame)
    assert decoder.feed((max_frame).to_bytes(4, "big")[:3]) == []
    [item] = decoder.feed((max_frame + 1).to_bytes(4, "big")[3:])
    assert type(item) is ProtocolViolation
    assert item.code == ErrorCode.FRAME_TOO_LARGE
    assert item.fatal
    assert decoder.dead
    assert decoder.buffered == 0
    # Nothing is accepted afterwards, not even a good frame.
    assert decoder.feed(b"x" * 10 + wire.encode_cancel(1)) == []
    assert decoder.buffered == 0


def test_largest_frame_is_accepted_and_one_more_byte_is_not() -> None:
    body = wire.packb(b"y" * 20)
    assert FrameDecoder(len(body)).feed(wire.frame(body)) == [b"y" * 20]
    [item] = FrameDecoder(len(body) - 1).feed(wire.frame(body))
    assert item.code == ErrorCode.FRAME_TOO_LARGE


def test_good_frames_before_an_oversize_header_are_kept() -> None:
    data = wire.encode_cancel(1) + b"\xff\xff\xff\xff"
    items = FrameDecoder().feed(data)
    assert items[0] == [3, 1]
    assert items[1].code == ErrorCode.FRAME_TOO_LARGE


def test_partial_body_is_buffered_and_bounded() -> None:
    data = wire.encode_response(1, b"z" * 5000)
    decoder = FrameDecoder()
    assert decoder.feed(data[:-1]) == []
    assert decoder.buffered == len(data) - 1
    assert decoder.feed(data[-1:]) == [[1, 1, None, b"z" * 5000]]
    assert decoder.buffered == 0


def test_stream_message_over_max_frame_is_fatal_however_it_arrives() -> None:
    # Many small items: the Unpacker parses them as they arrive, so the size
    # must be counted from where the message began, not from what is unparsed.
    data = wire.encode_request(1, "echo", [list(range(100))] * 30, framed=False)
    assert len(data) > 1000
    for chunks in ([data], split_at(data, list(range(0, len(data), 100))), one_at_a_time(data)):
        decoder = StreamDecoder(max_frame=1000)
        items = feed_all(decoder, chunks)
        assert len(items) == 1
        assert items[0].code == ErrorCode.FRAME_TOO_LARGE
        assert items[0].fatal
        assert decoder.dead


def test_stream_length_header_beyond_max_frame_is_frame_too_large() -> None:
    # An array header announcing 2**30 items: fatal at once, nothing buffered.
    decoder = StreamDecoder(max_frame=1000)
    [item] = decoder.feed(b"\x94\x00\x01\xa4echo\xdd\x40\x00\x00\x00")
    assert item.code == ErrorCode.FRAME_TOO_LARGE
    # A bin header announcing more than max_frame: fatal once max_frame is passed.
    decoder = StreamDecoder(max_frame=1000)
    assert decoder.feed(b"\x94\x00\x01\xa4echo\x91\xc6\x40\x00\x00\x00") == []
    [item] = decoder.feed(b"a" * 1000)
    assert item.code == ErrorCode.FRAME_TOO_LARGE


def test_stream_message_of_exactly_max_frame_is_accepted() -> None:
    data = wire.encode_request(1, "echo", ["abc"], framed=False)
    assert (
        feed_all(StreamDecoder(len(data)), one_at_a_time(data * 2)) == [[0, 1, "echo", ["abc"]]] * 2
    )
    [item] = StreamDecoder(len(data) - 1).feed(data)
    assert item.code == ErrorCode.FRAME_TOO_LARGE


def test_stream_size_limit_is_exact_after_reads_that_end_mid_message() -> None:
    # Reads that complete several messages and end inside the next one: the
    # decoder notes where that one began only lazily, and must still accept
    # a message of exactly max_frame bytes and refuse one of max_frame + 1,
    # wherever the reads are cut.
    small = wire.encode_request(1, "echo", [[1, 2, 3]], framed=False)

    def sized(n: int) -> bytes:
        body = wire.encode_request(2, "echo", [list(range(5))], framed=False)
        pad = n - len(body) - 2  # the params grow by an item of 2+ bytes
        data = wire.encode_request(2, "echo", [list(range(5)), "x" * pad], framed=False)
        assert len(data) == n
        return data

    max_frame = 100
    for last, accepted in ((sized(max_frame), True), (sized(max_frame + 1), False)):
        data = small + small + sized(max_frame) + small + last
        for first in range(1, len(data), 7):
            for second in range(first, len(data), 5):
                items = feed_all(StreamDecoder(max_frame), split_at(data, [first, second]))
                assert len(items) == 5
                assert items[:4] == [msgpack.unpackb(m) for m in (small, small, sized(100), small)]
                if accepted:
                    assert items[4] == msgpack.unpackb(last)
                else:
                    assert items[4].code == ErrorCode.FRAME_TOO_LARGE


# --- (e) empty and garbage frames are non-fatal -------------------------------------------

BAD_BODIES = [
    (b"", "empty frame"),
    (b"\xc1", "undecodable"),  # 0xc1 is never used in msgpack
    (b"\x92\x01", "undecodable"),  # truncated array
    (b"\xa2\xff\xfe", "undecodable"),  # str that is not UTF-8
    (wire.packb(1) + wire.packb(2), "more than one msgpack object"),
]


@pytest.mark.parametrize(("body", "why"), BAD_BODIES)
def test_bad_frame_is_malformed_and_the_next_frame_decodes(body: bytes, why: str) -> None:
    data = wire.frame(body) + wire.encode_request(2, "ping", [])
    for chunks in ([data], one_at_a_time(data)):
        decoder = FrameDecoder()
        bad, good = feed_all(decoder, chunks)
        assert type(bad) is ProtocolViolation
        assert bad.code == ErrorCode.MALFORMED
        assert not bad.fatal
        assert bad.msgid is None
        assert why in bad.message
        assert good == [0, 2, "ping", []]
        assert not decoder.dead


def test_undecodable_stream_is_fatal() -> None:
    decoder = StreamDecoder()
    items = decoder.feed(wire.encode_cancel(1, framed=False) + b"\xc1" + b"\x93\x02\xa0\x90")
    assert items[0] == [3, 1]
    assert items[1].code == ErrorCode.MALFORMED
    assert items[1].fatal
    assert len(items) == 2
    assert decoder.dead
    assert decoder.buffered == 0


# --- (f) mode sniffing --------------------------------------------------------------------


def test_every_prefix_of_the_preamble_waits() -> None:
    assert bytes.fromhex("00 54 45 43 48 4f 00 01") == PREAMBLE
    assert PREAMBLE[:7] == MAGIC
    for n in range(len(PREAMBLE)):
        assert wire.sniff_mode(PREAMBLE[:n]) is None
        assert wire.check_preamble(PREAMBLE[:n]) is None


def test_full_preamble_is_framed() -> None:
    assert wire.sniff_mode(PREAMBLE) is Mode.FRAMED
    assert wire.sniff_mode(PREAMBLE + wire.encode_cancel(1)) is Mode.FRAMED
    assert wire.check_preamble(PREAMBLE) is True
    assert wire.check_preamble(PREAMBLE + b"\x00") is True


@pytest.mark.parametrize("prefix", [b"h", b"hello\n", b"\x00X", b"\x00TECH0", b"\x01", b"\xff"])
def test_a_disagreeing_byte_means_raw_at_once(prefix: bytes) -> None:
    assert wire.sniff_mode(prefix) is Mode.RAW


def test_each_disagreeing_position_decides_raw() -> None:
    for i in range(len(MAGIC)):
        wrong = bytes([PREAMBLE[i] ^ 0x20])
        if i == 0 and wrong[0] in (0x93, 0x94):
            continue
        assert wire.sniff_mode(PREAMBLE[:i] + wrong) is Mode.RAW
        verdict = wire.check_preamble(PREAMBLE[:i] + wrong)
        assert type(verdict) is ProtocolViolation
        assert verdict.code == ErrorCode.MALFORMED
        assert verdict.fatal


@pytest.mark.parametrize("first", [0x93, 0x94])
def test_fixarray_of_3_or_4_is_msgpack_rpc(first: int) -> None:
    assert wire.sniff_mode(bytes([first])) is Mode.MPRPC
    assert wire.sniff_mode(wire.encode_request(1, "ping", [], framed=False)) is Mode.MPRPC
    # A request with options is a fixarray of 5: not sniffed as msgpack-rpc.
    assert wire.sniff_mode(b"\x95") is Mode.RAW


@pytest.mark.parametrize("version", [1, 2])
def test_both_versions_are_framed(version: int) -> None:
    prefix = MAGIC + bytes([version])
    assert wire.sniff_mode(prefix) is Mode.FRAMED
    assert wire.check_preamble(prefix) is True
    assert wire.preamble_version(prefix + b"rest") == version
    assert wire.preamble(version) == prefix
    assert wire.preamble_version(prefix[:-1]) is None


@pytest.mark.parametrize("version", [0, 3, 0x54, 255])
def test_unknown_version_is_unsupported(version: int) -> None:
    prefix = MAGIC + bytes([version])
    for verdict in (wire.sniff_mode(prefix), wire.check_preamble(prefix)):
        assert type(verdict) is ProtocolViolation
        assert verdict.code == ErrorCode.UNSUPPORTED_VERSION
        assert verdict.fatal
        assert verdict.msgid is None


@PROPERTY
@given(data=st.binary(max_size=12))
def test_sniff_mode_agrees_with_the_rule(data: bytes) -> None:
    verdict = wire.sniff_mode(data)
    n = min(len(data), len(MAGIC))
    if not data:
        assert verdict is None
    elif data[0] in (0x93, 0x94):
        assert verdict is Mode.MPRPC
    elif data[:n] != MAGIC[:n]:
        assert verdict is Mode.RAW
    elif len(data) <= len(MAGIC):
        assert verdict is None
    elif data[7] in (1, 2):
        assert verdict is Mode.FRAMED
    else:
        assert type(verdict) is ProtocolViolation
    # Deciding never depends on bytes after the deciding one.
    if verdict is not None:
        assert wire.sniff_mode(data + b"\x93trailing") == verdict


# --- (g) message validation -----------------------------------------------------------------

GOOD = [
    ([0, 0, "m", []], Request(0, "m", [])),
    ([0, MAX_MSGID, "m", [1], {"timeout_ms": 5}], Request(MAX_MSGID, "m", [1], {"timeout_ms": 5})),
    ([0, 1, "m", [], None], Request(1, "m", [])),
    ([1, 2, None, [1]], Response(2, [1])),
    ([1, 2, {"code": "timeout", "message": "late"}, None], ErrorResponse(2, "timeout", "late")),
    ([1, 2, {"code": "x", "message": "m", "data": b"d"}, None], ErrorResponse(2, "x", "m", b"d")),
    ([2, "hello", [{"protocol": 1}]], Notification("hello", [{"protocol": 1}])),
    ([3, 4], Cancel(4)),
]


@pytest.mark.parametrize(("obj", "event"), GOOD)
def test_well_formed_messages(obj: Any, event: Any) -> None:
    assert same(wire.parse_message(obj), event)


def test_plain_msgpack_rpc_error_objects_stay_readable() -> None:
    # Other msgpack-rpc peers may put any object in the error slot.
    event = wire.parse_message([1, 3, "it broke", None])
    assert type(event) is ErrorResponse
    assert (event.msgid, event.code, event.message, event.data) == (
        3,
        "internal",
        "it broke",
        "it broke",
    )


BAD: list[tuple[Any, int | None]] = [
    # (object, msgid the violation must carry)
    ("not a list", None),
    (7, None),
    ({"a": 1}, None),
    ([], None),
    ([0], None),
    ([9, 1, "m", []], None),  # unknown message type
    ([True, 1, "m", []], None),  # bool is not a message type
    ([0.0, 1, "m", []], None),  # nor is a float
    ([0, -1, "m", []], None),  # msgid out of uint32 range
    ([0, 2**32, "m", []], None),
    ([0, True, "m", []], None),  # bool msgid
    ([0, 1.0, "m", []], None),
    ([0, "1", "m", []], None),
    ([0, 5, b"echo", []], 5),  # method must be str, not bin
    ([0, 5, 1, []], 5),
    ([0, 5, "m", "params"], 5),  # params must be an array
    ([0, 5, "m", {}], 5),
    ([0, 5, "m", [], []], 5),  # options must be a map
    ([0, 5, "m", [], 1], 5),
    ([0, 5, "m"], 5),  # too short
    ([0, 5, "m", [], {}, 1], 5),  # too long
    ([1, 5, None], None),  # response shape
    ([1, -5, None, 1], None),
    ([2, "m"], None),  # notification shape
    ([2, 1, []], None),
    ([2, "m", "x"], None),
    ([3, "x"], None),  # cancel shape
    ([3, 1, 2], None),
    ([3, 2**32], None),
]


@pytest.mark.parametrize(("obj", "msgid"), BAD)
def test_bad_shapes_are_malformed(obj: Any, msgid: int | None) -> None:
    event = wire.parse_message(obj)
    violation(event, ErrorCode.MALFORMED, msgid)
    assert not event.fatal
    # The same through a whole framed connection.
    conn = Connection(our_role=Role.SERVER)
    conn.receive_data(PREAMBLE + wire.frame(wire.packb(obj)))
    assert conn.next_event() == event


def test_parse_message_passes_violations_through() -> None:
    v = ProtocolViolation(ErrorCode.MALFORMED, "x")
    assert wire.parse_message(v) is v


@pytest.mark.parametrize(
    "bad", [0, -1, -0.5, math.nan, math.inf, -math.inf, "100", True, False, None, [1], b"1"]
)
def test_bad_timeout_ms_is_invalid_params(bad: Any) -> None:
    verdict = wire.timeout_of({"timeout_ms": bad})
    assert type(verdict) is ProtocolViolation
    assert verdict.code == ErrorCode.INVALID_PARAMS
    assert verdict.msgid is None


@pytest.mark.parametrize(
    ("options", "seconds"),
    [
        (None, None),
        ({}, None),
        ({"other": 1}, None),
        ({"timeout_ms": 1500}, 1.5),
        ({"timeout_ms": 0.5}, 0.0005),
        ({"timeout_ms": 2**64 - 1}, (2**64 - 1) / 1000),
    ],
)
def test_timeout_ms_in_seconds(options: dict[str, Any] | None, seconds: float | None) -> None:
    assert wire.timeout_of(options) == seconds


# --- (h) Connection roles -------------------------------------------------------------------


def test_client_opens_with_the_preamble_and_reads_hello_and_replies() -> None:
    client = Connection()
    assert client.initiate() == PREAMBLE
    hello = {"protocol": 1, "server": "x", "max_frame": 10, "max_inflight": 2}
    data = (
        wire.encode_notification("hello", [hello])
        + wire.encode_response(2, "pong")
        + wire.encode_error(1, ErrorCode.CANCELLED, "cancelled")
        + wire.encode_error(None, ErrorCode.MALFORMED, "empty frame")
    )
    for chunk in one_at_a_time(data):
        client.receive_data(chunk)
    assert list(client.events()) == [
        Notification("hello", [hello]),
        Response(2, "pong"),
        ErrorResponse(1, "cancelled", "cancelled"),
        Notification("error", [{"code": "malformed", "message": "empty frame"}]),
    ]
    assert client.next_event() is NEED_DATA
    client.receive_data(b"")
    with pytest.raises(EOFError):
        client.next_event()
    assert list(client.events()) == []


def test_server_role_requires_the_preamble_first() -> None:
    server = Connection(our_role=Role.SERVER)
    assert server.initiate() == b""
    request = wire.encode_request(1, "echo", [b"\x00"])
    data = PREAMBLE + request
    for chunk in one_at_a_time(data):
        server.receive_data(chunk)
    assert list(server.events()) == [Request(1, "echo", [b"\x00"])]
    # A request sent without the preamble is not taken as one.
    server = Connection(our_role=Role.SERVER)
    server.receive_data(request)
    [event] = server.events()
    violation(event, ErrorCode.MALFORMED)
    assert event.fatal
    server.receive_data(request)
    assert server.next_event() is NEED_DATA


def test_server_role_rejects_an_unknown_version() -> None:
    server = Connection(our_role=Role.SERVER)
    server.receive_data(MAGIC)
    assert server.next_event() is NEED_DATA
    server.receive_data(b"\x03" + wire.encode_cancel(1))
    [event] = server.events()
    violation(event, ErrorCode.UNSUPPORTED_VERSION)
    assert event.fatal


@pytest.mark.parametrize("version", [1, 2])
def test_connection_version_is_the_preambles(version: int) -> None:
    client = Connection(version=version)
    server = Connection(our_role=Role.SERVER)
    data = client.initiate() + client.send(Request(1, "ping", []))
    for i in range(len(data)):
        server.receive_data(data[i : i + 1])
    assert server.version == version
    assert list(server.events()) == [Request(1, "ping", [])]
    with pytest.raises(ValueError):
        Connection(version=3)


def test_goaway_round_trip_and_shape() -> None:
    for reason in [*wire.GoawayReason, "idle", "a reason from a later server"]:
        conn = Connection()
        conn.receive_data(wire.encode_goaway(reason, 1500))
        [event] = conn.events()
        assert isinstance(event, Notification)
        assert wire.parse_goaway(event) == (reason, 1500)
    for params in ([], [{}], [{"reason": "shutdown"}], [{"reason": 1, "grace_ms": 5}],
                   [{"reason": "shutdown", "grace_ms": -1}], [{"reason": "x", "grace_ms": 1.5}],
                   [{"reason": "x", "grace_ms": True}], ["shutdown", 5]):  # fmt: skip
        assert wire.parse_goaway(Notification("goaway", params)) is None, params
    assert wire.parse_goaway(Notification("hello", [{"reason": "x", "grace_ms": 1}])) is None


def test_stream_mode_connection_has_no_preamble() -> None:
    for role in Role:
        conn = Connection(our_role=role, mode=Mode.MPRPC)
        assert conn.initiate() == b""
        data = conn.send(Request(1, "ping", []))
        assert data == b"\x94\x00\x01\xa4ping\x90"
        peer = Connection(our_role=role, mode=Mode.MPRPC)
        peer.receive_data(data + data[:3])
        assert list(peer.events()) == [Request(1, "ping", [])]
        assert peer.buffered == 3


def test_raw_mode_has_no_connection() -> None:
    with pytest.raises(ValueError):
        Connection(mode=Mode.RAW)


def test_connection_respects_max_frame() -> None:
    conn = Connection(max_frame=10)
    conn.receive_data(wire.encode_response(1, "x" * 20) + wire.encode_response(2, 1))
    [event] = conn.events()
    violation(event, ErrorCode.FRAME_TOO_LARGE)
    assert event.fatal


def test_bytearray_input_is_accepted() -> None:
    data = bytearray(wire.encode_cancel(9) * 2)
    assert FrameDecoder().feed(data[:5]) == []
    decoder = FrameDecoder()
    decoder.feed(data[:5])
    assert decoder.feed(data[5:]) == [[3, 9], [3, 9]]
    assert StreamDecoder().feed(bytearray(b"\x92\x03\x09")) == [[3, 9]]


def test_ext_types_decode_as_msgpack_ext() -> None:
    # Unknown ext types are carried, not rejected (echo keeps them).
    body = wire.packb([1, 1, None, msgpack.ExtType(5, b"ab")])
    [obj] = FrameDecoder().feed(wire.frame(body))
    assert obj[3] == msgpack.ExtType(5, b"ab")


def test_stream_decoder_release_frees_only_when_idle() -> None:
    from trio_echo.wire import StreamDecoder, encode_request

    dec = StreamDecoder()
    msg = encode_request(1, "echo", ["x"], framed=False)
    assert dec.release() is False  # nothing allocated yet
    assert len(dec.feed(msg + msg[:3])) == 1
    assert dec.release() is False  # a partial message is held
    assert len(dec.feed(msg[3:])) == 1
    assert dec.release() is True
    assert dec.feed(msg * 2) == [[0, 1, "echo", ["x"]]] * 2  # a fresh Unpacker takes over
    assert dec.buffered == 0
