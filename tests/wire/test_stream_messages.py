"""The stream messages of version 2 in the wire core: shapes, options, encoders (§12)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_echo import wire
from trio_echo.wire import (
    MAX_CREDIT,
    Credit,
    End,
    ErrorCode,
    Items,
    ProtocolViolation,
    StreamKind,
)

from helpers import same

MSGIDS = st.integers(0, wire.MAX_MSGID)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=10,
)


ERR = {"code": "x", "message": "m", "data": [1]}


@pytest.mark.parametrize(
    ("obj", "event"),
    [
        ([4, 1, [None]], Items(1, [None])),
        ([4, wire.MAX_MSGID, [1, "a", b"b"]], Items(wire.MAX_MSGID, [1, "a", b"b"])),
        ([5, 0, 1], Credit(0, 1)),
        ([5, 7, MAX_CREDIT], Credit(7, MAX_CREDIT)),
        ([6, 3, None], End(3)),
        ([6, 3, {"code": "x", "message": ""}], End(3, {"code": "x", "message": ""})),
        ([6, 3, ERR], End(3, ERR)),
    ],
)
def test_well_formed_stream_messages(obj: list[Any], event: wire.Event) -> None:
    assert wire.parse_message(obj, 2) == event


@pytest.mark.parametrize(
    ("obj", "msgid"),
    [
        ([4, 1, []], 1),
        ([4, 1, None], 1),
        ([4, 1, [1], 2], 1),
        ([4, 1], 1),
        ([5, 2, 0], 2),
        ([5, 2, -1], 2),
        ([5, 2, MAX_CREDIT + 1], 2),
        ([5, 2, 1.0], 2),
        ([5, 2, True], 2),
        ([6, 3, "eof"], 3),
        ([6, 3, {"code": "x"}], 3),
        ([6, 3, {"code": "", "message": "m"}], 3),
        ([6, 3, {"code": 1, "message": "m"}], 3),
        ([4, -1, [1]], None),
        ([5, "1", 1], None),
        ([6, 2**32, None], None),
    ],
)
def test_malformed_stream_messages_name_their_stream(obj: list[Any], msgid: int | None) -> None:
    verdict = wire.parse_message(obj, 2)
    assert type(verdict) is ProtocolViolation
    assert (verdict.code, verdict.msgid, verdict.stream, verdict.fatal) == (
        ErrorCode.MALFORMED,
        msgid,
        True,
        False,
    )


@pytest.mark.parametrize("kind", [4, 5, 6, 7])
def test_types_4_to_6_do_not_exist_on_version_1(kind: int) -> None:
    verdict = wire.parse_message([kind, 1, [1]], 1)
    assert type(verdict) is ProtocolViolation
    assert not verdict.stream and verdict.msgid is None
    assert wire.parse_message([7, 1, [1]], 2) == ProtocolViolation(
        ErrorCode.MALFORMED, "unknown message type 7"
    )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (None, None),
        ({}, None),
        ({"timeout_ms": 5}, None),
        ({"stream": "server", "credit": 0}, (StreamKind.SERVER, 0)),
        ({"stream": "bidi", "credit": MAX_CREDIT}, (StreamKind.BIDI, MAX_CREDIT)),
        ({"stream": "client"}, (StreamKind.CLIENT, None)),
        ({"stream": "client", "credit": 3}, (StreamKind.CLIENT, 3)),
    ],
)
def test_stream_options(options: dict[str, Any] | None, expected: Any) -> None:
    assert wire.stream_options(options) == expected


@pytest.mark.parametrize(
    "options",
    [
        {"stream": "server"},
        {"stream": "bidi", "credit": None},
        {"stream": "server", "credit": -1},
        {"stream": "server", "credit": MAX_CREDIT + 1},
        {"stream": "server", "credit": 1.0},
        {"stream": "server", "credit": True},
        {"stream": "client", "credit": -1},
        {"stream": "unary", "credit": 1},
        {"stream": None},
        {"stream": b"server", "credit": 1},
    ],
)
def test_bad_stream_options_are_invalid_params(options: dict[str, Any]) -> None:
    verdict = wire.stream_options(options)
    assert type(verdict) is ProtocolViolation
    assert verdict.code == ErrorCode.INVALID_PARAMS and verdict.msgid is None


@given(MSGIDS, st.lists(VALUES, min_size=1, max_size=70))
def test_items_round_trip(msgid: int, items: list[Any]) -> None:
    data = wire.encode_items(msgid, items)
    # A sender may pack the items one by one after items_head.
    body = wire.items_head(msgid, len(items)) + b"".join(wire.packb(i) for i in items)
    assert data == wire.frame(body)
    [obj] = wire.FrameDecoder().feed(data)
    event = wire.parse_message(obj, 2)
    assert type(event) is Items and event.msgid == msgid and same(event.items, items)


def test_items_head_for_every_array_header() -> None:
    for count in (1, 15, 16, 65535, 65536):
        items = [None] * count
        assert wire.items_head(9, count) + b"\xc0" * count == wire.packb([4, 9, items])


@given(MSGIDS, st.integers(1, MAX_CREDIT))
def test_credit_round_trip(msgid: int, n: int) -> None:
    [obj] = wire.FrameDecoder().feed(wire.encode_credit(msgid, n))
    assert wire.parse_message(obj, 2) == Credit(msgid, n)


def test_encoders_refuse_what_the_protocol_forbids() -> None:
    with pytest.raises(ValueError):
        wire.encode_items(1, [])
    with pytest.raises(ValueError):
        wire.encode_credit(1, 0)
    with pytest.raises(ValueError):
        wire.encode_credit(1, MAX_CREDIT + 1)
    with pytest.raises(TypeError):
        wire.Connection(version=1).send(Credit(1, 1))
    with pytest.raises(TypeError):
        wire.Connection(mode=wire.Mode.MPRPC, version=2).send(Items(1, [1]))


def test_a_version_2_connection_reads_stream_messages_and_v1_does_not() -> None:
    data = wire.encode_items(1, [1, 2]) + wire.encode_credit(1, 4) + wire.encode_end(1)
    v2 = wire.Connection(wire.Role.CLIENT, version=2)
    v2.receive_data(data)
    assert list(v2.events()) == [Items(1, [1, 2]), Credit(1, 4), End(1)]
    v1 = wire.Connection(wire.Role.CLIENT, version=1)
    v1.receive_data(data)
    assert all(type(e) is ProtocolViolation for e in v1.events())
