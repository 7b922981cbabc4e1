"""FrameDecoder(skip_oversized=True): a frame over max_frame is skipped, not fatal (clients)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from trio_echo import wire
from trio_echo.wire import FrameDecoder, OversizedFrame

BIG = wire.encode_response(7, b"x" * 5000)  # a 5000-byte result: over a max_frame of 1000
SMALL_BEFORE = wire.encode_response(6, "before")
SMALL_AFTER = wire.encode_response(8, "after")
STREAM = SMALL_BEFORE + BIG + SMALL_AFTER
EXPECTED = [[1, 6, None, "before"], OversizedFrame(len(BIG) - 4, 7), [1, 8, None, "after"]]


def feed_in_pieces(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[Any]:
    out: list[Any] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out += decoder.feed(data[start:cut])
        start = cut
        # Never more than a header and the first bytes of the skipped body are held.
        assert decoder.buffered <= max(len(SMALL_BEFORE), len(SMALL_AFTER), 4 + 32)
    return out


def test_an_oversized_frame_is_skipped_and_the_next_one_decoded() -> None:
    decoder = FrameDecoder(1000, skip_oversized=True)
    assert decoder.feed(STREAM) == EXPECTED
    assert not decoder.dead


@given(st.lists(st.integers(0, len(STREAM)), max_size=30))
def test_any_split_gives_the_same_items(cuts: list[int]) -> None:
    assert feed_in_pieces(FrameDecoder(1000, skip_oversized=True), STREAM, cuts) == EXPECTED


def test_byte_at_a_time() -> None:
    decoder = FrameDecoder(1000, skip_oversized=True)
    assert feed_in_pieces(decoder, STREAM, list(range(len(STREAM)))) == EXPECTED


def test_the_msgid_is_read_only_from_a_response() -> None:
    decoder = FrameDecoder(10, skip_oversized=True)
    note = wire.encode_notification("error", [{"code": "x", "message": "y" * 50}])
    msgid_any_width = wire.encode_response(2**32 - 1, "z" * 50)
    assert decoder.feed(note + msgid_any_width) == [
        OversizedFrame(len(note) - 4, None),
        OversizedFrame(len(msgid_any_width) - 4, 2**32 - 1),
    ]


def test_without_the_option_it_is_fatal_as_before() -> None:
    decoder = FrameDecoder(1000)
    items = decoder.feed(STREAM)
    assert items[0] == [1, 6, None, "before"]
    assert isinstance(items[1], wire.ProtocolViolation) and items[1].fatal
    assert items[1].code == wire.ErrorCode.FRAME_TOO_LARGE
    assert decoder.dead and decoder.feed(SMALL_AFTER) == []


def test_a_client_connection_reports_it_as_an_event() -> None:
    conn = wire.Connection(wire.Role.CLIENT, max_frame=1000, skip_oversized=True)
    conn.receive_data(STREAM)
    assert list(conn.events()) == [
        wire.Response(6, "before"),
        OversizedFrame(len(BIG) - 4, 7),
        wire.Response(8, "after"),
    ]
