"""The sans-IO client core: the steps both clients take from it, driven with bytes alone."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_echo import ConnectionClosed, ConnectTimeout, DeadlineExceeded, wire
from trio_echo.client.core import (
    ClientCore,
    closed_by_us,
    connect_timed_out,
    connection_lost,
    local_deadline,
    lost_before_hello,
    send_failed,
    send_interrupted,
)

HELLO = wire.Notification("hello", [{"protocol": 1, "server": "test", "max_frame": 1000}])


class Waiter:
    """Stands for a Trio task or a thread's future."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def started(**kwargs: Any) -> tuple[ClientCore[Waiter], wire.Connection]:
    """A core past the handshake, and the server end it talks to."""
    core: ClientCore[Waiter] = ClientCore(kwargs.get("on_notification"), 1 << 20)
    server = wire.Connection(wire.Role.SERVER)
    server.receive_data(core.initiate())
    assert server.next_event() is wire.NEED_DATA  # the preamble alone: no event
    hello = server.send(HELLO)
    assert not core.receive_hello(hello[:3])
    assert core.receive_hello(hello[3:])
    assert core.server_info["server"] == "test" and core.server_max_frame == 1000
    return core, server


def events(server: wire.Connection, data: bytes) -> list[wire.Event]:
    server.receive_data(data)
    return list(server.events())


def test_reader_step_matches_replies_and_settle_delivers_notifications() -> None:
    seen: list[tuple[str, list[Any]]] = []
    core, server = started(on_notification=lambda method, params: seen.append((method, params)))
    a, b = Waiter("a"), Waiter("b")
    msgid_a, data_a = core.request("echo", ("x",), None, a)
    msgid_b, data_b = core.request("nope", (), None, b)
    assert events(server, data_a + data_b) == [
        wire.Request(msgid_a, "echo", ["x"]),
        wire.Request(msgid_b, "nope", []),
    ]
    replies = core.receive(
        server.send(wire.ErrorResponse(msgid_b, "unknown_method", "no"))
        + server.send(wire.Notification("note", [1]))
        + server.send(wire.Response(msgid_a, "x"))
    )
    assert [(w, r) for w, r, _ in replies] == [(b, None), (a, "x")]
    assert replies[0][2] is not None and replies[0][2].code == "unknown_method"
    assert seen == []  # notifications wait for settle(), outside a transport's lock
    assert core.settle() is None
    assert seen == [("note", [1])]
    assert core.pending == {}


# What a result can be, maps with int keys too (the clients' fast decoder leaves
# those to the wire connection, which takes them).
RESULTS = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=5)
    | st.binary(max_size=5) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=3) | st.integers(-5, 5), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


@given(
    results=st.lists(st.tuples(RESULTS, st.booleans()), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
)
def test_replies_are_the_same_however_the_bytes_are_split(
    results: list[tuple[Any, bool]], cuts: list[int]
) -> None:
    """Whole frames of plain responses take the core's own decoder; anything else
    (an error, a split frame, a map with int keys) the wire connection: the replies
    must not tell which."""
    core, server = started()
    first = Waiter("first")  # one reply first: what comes next starts a frame
    assert core.receive(server.send(wire.Response(core.request("ping", (), None, first)[0], 1)))
    waiters = [Waiter(str(i)) for i in range(len(results))]
    msgids = [core.request("echo", (), None, w)[0] for w in waiters]
    data = b"".join(
        server.send(
            wire.ErrorResponse(msgid, "app_error", "no", result)
            if failed
            else wire.Response(msgid, result)
        )
        for msgid, (result, failed) in zip(msgids, results, strict=True)
    )
    points = sorted({cut % len(data) for cut in cuts} - {0})
    got = []
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        got += core.receive(data[start:end])  # never b"": that is the end of the stream
    assert [(w, r if e is None else e.data, e is not None) for w, r, e in got] == [
        (w, result, failed) for w, (result, failed) in zip(waiters, results, strict=True)
    ]
    assert not core.pending and core.error is None


def test_a_raising_notification_callback_finishes_the_connection() -> None:
    def callback(method: str, params: list[Any]) -> None:
        raise RuntimeError("oops")

    core, server = started(on_notification=callback)
    core.receive(server.send(wire.Notification("note", [])))
    error = core.settle()
    assert isinstance(error, ConnectionClosed)
    assert str(error) == "the notification callback raised: oops"


def test_close_abandons_every_call_keeps_their_msgids_and_cancels_them() -> None:
    core, server = started()
    a, b, c = Waiter("a"), Waiter("b"), Waiter("c")
    msgid_a, _ = core.request("sleep", (1,), None, a)
    msgid_b, _ = core.request("sleep", (1,), None, b)
    msgid_c, _ = core.request("sleep", (1,), None, c)
    assert core.abandon(msgid_c, c) == wire.encode_cancel(msgid_c)  # c gave up already
    waiters, cancels = core.close()
    assert [w for w, _ in waiters] == [a, b]
    errors = [e for _, e in waiters]
    assert errors[0] is not errors[1]  # each waiter raises its own exception
    assert all(str(e) == "the client closed the connection" for e in errors)
    assert events(server, cancels) == [wire.Cancel(msgid_a), wire.Cancel(msgid_b)]
    assert core.pending == {msgid_a: None, msgid_b: None, msgid_c: None}  # still reserved
    assert core.fail(closed_by_us()) == []  # nobody left to wake
    assert core.close() == ([], b"")  # closing twice is fine


def test_fail_wakes_every_pending_call_at_once_with_its_own_error() -> None:
    core, _ = started()
    a, b = Waiter("a"), Waiter("b")
    core.request("sleep", (1,), None, a)
    core.request("sleep", (1,), None, b)
    reset = ConnectionResetError("reset by peer")
    woken = core.fail(connection_lost(reset))
    assert [w for w, _ in woken] == [a, b]
    assert woken[0][1] is not woken[1][1]
    for _, error in woken:
        assert str(error) == "the connection was lost: reset by peer"
        assert error.__cause__ is reset
    # The first error stays the connection's: later calls and fails see it.
    assert core.fail(closed_by_us()) == []
    with pytest.raises(ConnectionClosed, match="was lost"):
        core.request("ping", (), None, Waiter("late"))
    assert str(core.settle()) == "the connection was lost: reset by peer"


def test_the_error_texts() -> None:
    exc = BrokenPipeError("broken")
    before = lost_before_hello(exc)
    assert str(before) == "the connection was lost before the server's hello: broken"
    assert str(send_failed(exc)) == "sending failed: broken"
    assert send_failed(exc).__cause__ is exc
    assert str(send_interrupted()) == "a send was interrupted; the connection is unusable"
    deadline = local_deadline("sleep", 0.5)
    assert isinstance(deadline, DeadlineExceeded)
    assert deadline.message == "sleep: no reply within 0.5 s (local deadline)"
    timed_out = connect_timed_out("h:1", 2.0)
    assert str(timed_out) == (
        "cannot connect to h:1: timed out after 2 s (connecting and waiting for the server's hello)"
    )
    assert isinstance(timed_out, ConnectTimeout) and isinstance(timed_out, TimeoutError)
