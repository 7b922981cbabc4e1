"""The decoders against hostile input (issue #10): properties, whatever the bytes and splits.

* A decoder never holds more than ``max_frame`` bytes of a partial message.
* :class:`wire.SlicedDecoder` gives what :func:`wire.decode_message` gives for the
  same bytes, however small the slices.
* ``rewind`` gives back exactly the messages a feed decoded past a point, as
  bytes: decoding them again gives the same items.
* A message never holds more than ``max_containers`` arrays and maps, on any path.
"""

from __future__ import annotations

import itertools
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_echo import wire
from trio_echo.wire import (
    HEADER_SIZE,
    FrameDecoder,
    LargeMessage,
    ProtocolViolation,
    SlicedDecoder,
    StreamDecoder,
    decode_message,
)

# Modest example counts: the whole project suite has a time budget.
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- inputs --------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers(0, 9)), inner, max_size=4),
    ),
    max_leaves=30,
)
#: Valid msgpack that no decoder may build: an array or a map as a map key.
MAP_KEYS = [b"\x81\x91\x01\x02", b"\x81\x80\x02", b"\x92\x01\x81\x92\x01\x02\xc0"]
#: Bodies: msgpack values (requests and not), the map-key cases, container-heavy
#: arrays, bytes that are not msgpack at all, and messages cut short.
bodies = st.one_of(
    values.map(wire.packb),
    st.builds(lambda m, i: wire.packb([0, i, "echo", [m]]), values, st.integers(0, 2**32 - 1)),
    st.sampled_from(MAP_KEYS),
    st.integers(0, 40).map(lambda n: wire.packb([[]] * n)),
    st.binary(min_size=1, max_size=40),
    values.map(wire.packb).map(lambda b: b[: max(1, len(b) // 2)]),
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[i:j] for i, j in itertools.pairwise(bounds) if j > i]


def framed_stream(draw: st.DrawFn) -> bytes:
    """Frames of those bodies, with now and then a header of any length or loose bytes."""
    parts = draw(
        st.lists(
            st.one_of(
                bodies.map(wire.frame),
                st.integers(0, 2**32 - 1).map(lambda n: n.to_bytes(4, "big")),
                st.binary(max_size=8),
            ),
            max_size=12,
        )
    )
    return b"".join(parts)


def framed_case(
    data: st.DataObject, limit: tuple[int, int | None, int | None]
) -> tuple[bytes, FrameDecoder]:
    """A framed byte stream, and a decoder with the drawn limits (max_frame, max_containers,
    large) for it."""
    max_frame, max_containers, large = limit
    decoder = FrameDecoder(max_frame, max_containers=max_containers, large=large)
    return framed_stream(data.draw), decoder


def canon(item: Any) -> Any:
    """A decoded item in a form that compares exactly (repacked, so NaN == NaN)."""
    if type(item) in (ProtocolViolation, LargeMessage):
        return item
    return ("value", wire.packb(item))


def sliced(message: LargeMessage, max_containers: int | None, stream: bool) -> Any:
    decoder = SlicedDecoder(message, max_containers, stream=stream)
    while not decoder.step():
        pass
    return decoder.result


def redecode(raws: list[Any], max_containers: int | None, stream: bool) -> list[Any]:
    """Decode what ``rewind`` gave back, as the server will."""
    out = []
    for raw in raws:
        if type(raw) is bytes:
            out.append(canon(decode_message(raw, max_containers, stream=stream)))
        else:
            out.append(canon(raw))  # a LargeMessage, or the fatal violation that ended input
    return out


def items_as_given(items: list[Any]) -> list[Any]:
    return [canon(i) for i in items]


limits = st.tuples(
    st.integers(1, 300),  # max_frame
    st.one_of(st.none(), st.integers(1, 40)),  # max_containers
    st.one_of(st.none(), st.integers(1, 60)),  # large
)


# --- a partial message is bytes, at most max_frame of them ---------------------------------------


@PROPERTY
@given(data=st.data(), limit=limits, cuts=st.lists(st.integers(0, 2000), max_size=30))
def test_a_frame_decoder_never_holds_more_than_one_frame(
    data: st.DataObject, limit: tuple[int, int | None, int | None], cuts: list[int]
) -> None:
    stream, decoder = framed_case(data, limit)
    for chunk in split_at(stream, cuts):
        # The server feeds while it has room and splits (no decoding) while it is full.
        if data.draw(st.booleans()):
            decoder.feed(chunk)
        else:
            decoder.split(chunk)
        assert decoder.buffered <= decoder.pending <= HEADER_SIZE + decoder.max_frame
        if decoder.dead:
            assert decoder.pending == decoder.buffered == 0


@PROPERTY
@given(
    messages=st.lists(bodies, max_size=12),
    limit=limits,
    cuts=st.lists(st.integers(0, 2000), max_size=30),
    modes=st.lists(st.booleans(), min_size=1),
)
def test_a_stream_decoder_never_holds_more_than_max_frame(
    messages: list[bytes],
    limit: tuple[int, int | None, int | None],
    cuts: list[int],
    modes: list[bool],
) -> None:
    max_frame, max_containers, large = limit
    decoder = StreamDecoder(max_frame, max_containers=max_containers, large=large)
    for chunk, decode in zip(split_at(b"".join(messages), cuts), itertools.cycle(modes)):
        if decode:
            decoder.feed(chunk)
        else:
            decoder.split(chunk)
        assert decoder.buffered == decoder.pending <= max_frame


def test_the_reviewers_trickle_is_held_as_bytes() -> None:
    """Repro 1 at decoder level: an array of 4,177,920 items announced, its 1-byte items
    arriving a read at a time: the decoder holds the bytes and builds nothing until
    the message is whole; then it comes out still encoded, to be decoded a slice at
    a time (and refused there: it holds more than max_containers arrays)."""
    decoder = StreamDecoder(large=wire.LARGE_MESSAGE, max_containers=wire.DEFAULT_MAX_CONTAINERS)
    items = wire.DEFAULT_MAX_FRAME - 16384
    message = bytes.fromhex("94 00 01 a4 65 63 68 6f 91 dd") + items.to_bytes(4, "big")
    message += b"\x90" * items
    for start in range(0, len(message) - 65536, 65536):
        assert decoder.feed(message[start : start + 65536]) == []
        assert decoder.pending == start + 65536  # the bytes, and nothing built from them
    [whole] = decoder.feed(message[start + 65536 :])
    assert whole == LargeMessage(message) and decoder.pending == 0
    result = sliced(whole, wire.DEFAULT_MAX_CONTAINERS, True)
    assert (result.code, result.fatal) == ("frame_too_large", True)


def test_the_reviewers_exact_bytes_are_refused_on_the_header() -> None:
    """With 4,200,000 items announced, the array cannot fit in max_frame bytes."""
    decoder = StreamDecoder(large=wire.LARGE_MESSAGE, max_containers=wire.DEFAULT_MAX_CONTAINERS)
    head = bytes.fromhex("94 00 01 a4 65 63 68 6f 91 dd") + (4_200_000).to_bytes(4, "big")
    [refused] = decoder.feed(head + b"\x90" * 60_000)
    assert (refused.code, refused.fatal) == ("frame_too_large", True) and decoder.dead


def test_stream_rewind_after_a_refused_header_gives_back_this_reads_messages() -> None:
    """Found by the properties below: when the hot path refused a header, rewind gave
    back messages of the *previous* read (run twice by a full server) and lost the
    ones of this read."""
    decoder = StreamDecoder(large=wire.LARGE_MESSAGE, max_containers=wire.DEFAULT_MAX_CONTAINERS)
    first = b"".join(wire.encode_request(i, "ping", [], framed=False) for i in (1, 2, 3))
    assert len(decoder.feed(first)) == 3
    head = bytes.fromhex("94 00 09 a4 65 63 68 6f 91 dd") + (4_200_000).to_bytes(4, "big")
    second = [wire.encode_request(i, "sleep", [1], framed=False) for i in (4, 5)]
    items = decoder.feed(b"".join(second) + head)
    assert [wire.parse_message(i) for i in items[:2]] == [
        wire.Request(4, "sleep", [1]),
        wire.Request(5, "sleep", [1]),
    ]
    assert decoder.rewind(1) == [second[1], items[2]]


# --- SlicedDecoder decodes what decode_message decodes -------------------------------------------


@PROPERTY
@given(
    body=bodies,
    extra=st.one_of(st.just(b""), bodies, st.binary(max_size=5)),
    max_containers=st.one_of(st.none(), st.integers(1, 40)),
    slice_size=st.integers(1, 50),
    stream=st.booleans(),
)
def test_sliced_decoding_matches_decoding_at_once(
    body: bytes, extra: bytes, max_containers: int | None, slice_size: int, stream: bool
) -> None:
    data = body + extra  # sometimes two objects, or one and some junk
    with mock.patch.object(wire, "SLICE", slice_size):
        result = sliced(LargeMessage(data), max_containers, stream)
    assert canon(result) == canon(decode_message(data, max_containers, stream=stream))


def test_sliced_decoding_counts_containers_across_slices() -> None:
    data = wire.packb([0, 1, "ping", [], {"x": [[]] * 2000}])
    with mock.patch.object(wire, "SLICE", 100):
        assert sliced(LargeMessage(data), 2004, False)[4]["x"] == [[]] * 2000
        result = sliced(LargeMessage(data), 2003, False)
    assert isinstance(result, ProtocolViolation)
    assert (result.code, result.fatal) == ("frame_too_large", True)


# --- rewind gives back exactly the undecoded messages --------------------------------------------


@PROPERTY
@given(data=st.data(), limit=limits, cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_frame_rewind_gives_back_what_the_feed_decoded(
    data: st.DataObject, limit: tuple[int, int | None, int | None], cuts: list[int]
) -> None:
    stream, decoder = framed_case(data, limit)
    for chunk in split_at(stream, cuts):
        items = decoder.feed(chunk)
        used = data.draw(st.integers(0, len(items)))
        raws = decoder.rewind(used)
        assert redecode(raws, decoder.max_containers, False) == items_as_given(items[used:])


@PROPERTY
@given(
    data=st.data(),
    messages=st.lists(bodies, max_size=12),
    limit=limits,
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_stream_rewind_gives_back_what_the_feed_decoded(
    data: st.DataObject,
    messages: list[bytes],
    limit: tuple[int, int | None, int | None],
    cuts: list[int],
) -> None:
    max_frame, max_containers, large = limit
    decoder = StreamDecoder(max_frame, max_containers=max_containers, large=large)
    for chunk in split_at(b"".join(messages), cuts):
        items = decoder.feed(chunk)
        used = data.draw(st.integers(0, len(items)))
        raws = decoder.rewind(used)
        assert redecode(raws, max_containers, True) == items_as_given(items[used:])


@PROPERTY
@given(data=st.data(), limit=limits, cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_rewinding_loses_nothing_that_follows(
    data: st.DataObject, limit: tuple[int, int | None, int | None], cuts: list[int]
) -> None:
    """Rewound items, then what later feeds decode, are the items of an undisturbed decoder."""
    stream, plain = framed_case(data, limit)
    max_frame, max_containers, large = limit
    rewound = FrameDecoder(max_frame, max_containers=max_containers, large=large)
    want: list[Any] = []
    got: list[Any] = []
    for chunk in split_at(stream, cuts):
        want += items_as_given(plain.feed(chunk))
        items = rewound.feed(chunk)
        used = data.draw(st.integers(0, len(items)))
        got += items_as_given(items[:used])
        got += redecode(rewound.rewind(used), max_containers, False)
    assert got == want


# --- max_containers holds on every path ----------------------------------------------------------


def count_containers(obj: Any) -> int:
    if isinstance(obj, list):
        return 1 + sum(count_containers(i) for i in obj)
    if isinstance(obj, dict):
        return 1 + sum(count_containers(k) + count_containers(v) for k, v in obj.items())
    return 0


@PROPERTY
@given(
    messages=st.lists(bodies, max_size=12),
    max_containers=st.integers(1, 40),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
    framed=st.booleans(),
)
def test_no_decoded_message_holds_more_than_max_containers(
    messages: list[bytes], max_containers: int, cuts: list[int], framed: bool
) -> None:
    """Whether a read took a decoder's hot path or its slow one, whole or in pieces."""
    data = b"".join(wire.frame(m) if framed else m for m in messages)
    decoder = (FrameDecoder if framed else StreamDecoder)(max_containers=max_containers)
    for chunk in split_at(data, cuts):
        for item in decoder.feed(chunk):
            if type(item) is ProtocolViolation:
                if "max_containers" in item.message:
                    assert (item.code, item.fatal) == ("frame_too_large", True)
            else:
                assert count_containers(item) <= max_containers
