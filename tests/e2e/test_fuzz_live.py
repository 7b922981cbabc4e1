"""A live server under random and mutated input, over many connections in every mode.

For a bounded time (``TRIO_ECHO_FUZZ_SECONDS``, default 4), concurrent clients
open connections in framed, msgpack-rpc and raw mode and send a random mix of
well-formed requests, messages of the wrong shape (a wrong type at every
position), undecodable and truncated msgpack, huge ints, deep nesting, bad
frame lengths and oversize frames, split at random points, and then half-close,
close or reset. Each connection that ends cleanly is checked: raw echo returns
every byte; in the message modes everything the server sent decodes, and the
``ping`` probes sent before any input that may end the connection are each
answered once. Afterwards the server answers ``ping`` on a fresh connection,
its stats are back to zero connections and requests, and it logged no
internal error. The seed is printed (and taken from ``TRIO_ECHO_FUZZ_SEED``).
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import pytest
import trio
import trio.lowlevel

from trio_echo import Server, wire
from trio_echo.wire import Notification, Response

from helpers import eventually, framed_peer, quiet, reset, tcp_server

SECONDS = float(os.environ.get("TRIO_ECHO_FUZZ_SECONDS", "4"))
CLIENTS = 16
MAX_FRAME = 64 * 1024
PROBE_BASE = 3_000_000_000  # msgids of the ping probes, up to PROBE_BASE + 99
# (random messages use smaller ones, and 2**32 - 1: a ping with it may be answered twice)

METHODS = ["echo", "ping", "sleep", "stats", "methods", "nope", ""]
EDGE_INTS = [0, 1, -1, 127, 128, -32, -33, 255, 256, 2**16, 2**31 - 1, 2**32 - 1, 2**32]
EDGE_INTS += [2**63 - 1, -(2**63), 2**64 - 1]


class Fuzz:
    """Random pieces of input; each says whether the connection surely survives it."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def value(self, depth: int = 0) -> Any:
        rng = self.rng
        kind = rng.randrange(12 if depth < 3 else 8)
        if kind == 0:
            return None
        if kind == 1:
            return rng.choice([True, False])
        if kind == 2:
            return rng.choice(EDGE_INTS)
        if kind == 3:
            return rng.choice([0.0, -0.0, 1.5, float("inf"), float("-inf"), float("nan")])
        if kind == 4:
            return rng.choice(["", "x", "é€😀", "a" * rng.randrange(300)])
        if kind == 5:
            return rng.randbytes(rng.randrange(100))
        if kind == 6:
            return rng.randrange(-(2**40), 2**40)
        if kind == 7:
            return msgpack_ext(rng)
        if kind in (8, 9):
            return [self.value(depth + 1) for _ in range(rng.randrange(5))]
        return {self.key(): self.value(depth + 1) for _ in range(rng.randrange(4))}

    def key(self) -> Any:
        return self.rng.choice(["timeout_ms", "a", 1, -1, b"k", None, 1.5, True])

    def message(self) -> list[Any] | Any:
        """A message of a valid shape, often with one position mutated."""
        rng = self.rng
        msgid = rng.choice([rng.randrange(1000), 0, 2**32 - 1])
        method = rng.choice(METHODS)
        params: Any = (
            [rng.choice([0, 0.001, 0.01, 0.02])]
            if method == "sleep"
            else [self.value() for _ in range(rng.randrange(3))]
        )
        options = {"timeout_ms": rng.choice([1, 5, 50, 0, -1, "x", None, 2**64 - 1])}
        base: list[Any] = rng.choice(
            [
                [0, msgid, method, params],
                [0, msgid, method, params, options],
                [2, method, params],
                [3, msgid],
                [1, msgid, None, self.value()],
            ]
        )
        mutation = rng.randrange(6)
        if mutation == 0:
            return base
        if mutation == 1:  # a wrong type at one position
            base[rng.randrange(len(base))] = self.value()
        elif mutation == 2:
            base.append(self.value())
        elif mutation == 3:
            base.pop(rng.randrange(len(base)))
        elif mutation == 4:
            return self.value()  # not a message at all
        else:
            base[0] = rng.choice([4, -1, 2**32, "0", None, 0.0])
        return base

    def body(self) -> tuple[bytes, bool]:
        """The msgpack bytes of one message (or garbage); True if surely decodable."""
        rng = self.rng
        kind = rng.randrange(10)
        if kind < 6:
            body = wire.packb(self.message())
            return body, len(body) <= MAX_FRAME
        if kind == 6:  # truncated
            body = wire.packb(self.message())
            return body[: rng.randrange(len(body))], False
        if kind == 7:  # deep nesting
            return b"\x91" * rng.choice([10, 600, 5000, 50_000]) + b"\xc0", False
        if kind == 8:  # undecodable: never-used byte, bad utf-8, unhashable map key
            return rng.choice([b"\xc1", b"\xa3\xff\xfe\xfd", b"\x81\x91\x01\x02", b"\xd9"]), False
        return rng.randbytes(rng.randrange(1, 64)), False

    def frame(self) -> tuple[bytes, bool]:
        """A framed-mode piece; True if the stream surely stays in sync and open."""
        rng = self.rng
        body, _ = self.body()
        kind = rng.randrange(12)
        if kind < 8:
            return wire.frame(body[:MAX_FRAME]), True  # any body: at worst malformed
        if kind == 8:
            return b"\x00\x00\x00\x00", True  # empty frame: malformed, carries on
        if kind == 9:  # a length that lies about the body: the stream desyncs
            lie = max(0, len(body) + rng.choice([-3, -1, 1, 7]))
            return lie.to_bytes(4, "big") + body, False
        if kind == 10:  # oversize header: fatal
            return rng.choice([MAX_FRAME + 1, 2**32 - 1]).to_bytes(4, "big"), False
        return wire.frame(rng.randbytes(rng.randrange(1, 200))), True

    def probe(self, n: int, framed: bool) -> bytes:
        return wire.encode_request(PROBE_BASE + n, "ping", [], framed=framed)


def msgpack_ext(rng: random.Random) -> Any:
    import msgpack

    return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randrange(20)))


def decode_prefix(data: bytes, framed: bool) -> list[wire.Event]:
    """The complete messages at the start of ``data``: all must be well-formed."""
    conn = wire.Connection(mode=wire.Mode.FRAMED if framed else wire.Mode.MPRPC, max_frame=2**31)
    conn.receive_data(data)
    events = list(conn.events())
    assert not any(isinstance(e, wire.ProtocolViolation) for e in events), events
    return events


class Tally:
    def __init__(self) -> None:
        self.connections = 0
        self.checked = 0
        self.probes = 0
        self.by_mode: dict[str, int] = {}


async def one_connection(port: int, rng: random.Random, tally: Tally) -> None:
    fuzz = Fuzz(rng)
    mode = rng.choice(["framed", "framed", "mprpc", "mprpc", "raw", "version"])
    tally.by_mode[mode] = tally.by_mode.get(mode, 0) + 1
    pieces: list[bytes] = []
    expected_probes: list[int] = []
    sure = True  # every piece so far keeps the connection open and in sync
    if mode == "framed":
        pieces.append(wire.PREAMBLE)
    elif mode == "version":
        pieces.append(wire.MAGIC + bytes([rng.choice([0, 2, 255])]))
        sure = False
    elif mode == "mprpc":  # a 0x94 first byte makes it a msgpack-rpc stream
        pieces.append(fuzz.probe(99, framed=False))
        expected_probes.append(PROBE_BASE + 99)
    elif mode == "raw":
        pieces.append(bytes([rng.choice([b for b in range(256) if b not in (0, 0x93, 0x94)])]))
    for n in range(rng.randrange(1, 25)):
        if mode == "raw":
            pieces.append(rng.randbytes(rng.randrange(2000)))
            continue
        if rng.random() < 0.2:
            pieces.append(fuzz.probe(n, framed=mode != "mprpc"))
            if sure:
                expected_probes.append(PROBE_BASE + n)
            continue
        if mode == "mprpc":
            body, ok = fuzz.body()
            pieces.append(body)
        else:
            piece, ok = fuzz.frame()
            pieces.append(piece)
        sure = sure and ok
    data = b"".join(pieces)
    ending = rng.choice(["half-close", "half-close", "half-close", "close", "reset"])
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(6))))

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    tally.connections += 1
    received = bytearray()
    clean_eof = False
    send_failed = False

    async def reader() -> None:
        nonlocal clean_eof
        try:
            while chunk := await stream.receive_some(65536):
                received.extend(chunk)
            clean_eof = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            try:
                for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
                    await stream.send_all(data[start:end])
                    await trio.lowlevel.checkpoint()
                if ending == "half-close":
                    await stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                send_failed = True  # the server closed first (a fatal error): fine
            if ending == "reset":
                nursery.cancel_scope.cancel()
                reset(stream)
                return
            if ending == "close":
                nursery.cancel_scope.cancel()
            # half-close: the reader runs to the server's close.
    await stream.aclose()
    if ending != "half-close":
        return

    # Checks on what the server sent.
    if mode == "raw":
        assert data.startswith(bytes(received))
        if clean_eof and not send_failed:
            assert bytes(received) == data
        tally.checked += 1
        return
    events = decode_prefix(bytes(received), framed=mode != "mprpc")
    if mode in ("framed", "version") and events:
        first = events[0]
        assert isinstance(first, Notification) and first.method in ("hello", "error"), first
    for event in events:
        if isinstance(event, wire.ErrorResponse) and event.code == "internal":
            assert "cannot be encoded" in event.message, event  # only an unencodable echo
    if clean_eof and not send_failed:
        answered = [e.msgid for e in events if isinstance(e, Response) and e.result == "pong"]
        probes = [m for m in answered if PROBE_BASE <= m < PROBE_BASE + 100]
        assert sorted(probes) == sorted(set(probes))  # at most once each
        assert set(expected_probes) <= set(probes), (expected_probes, probes)
        tally.probes += len(expected_probes)
        tally.checked += 1


async def test_live_fuzz(caplog: pytest.LogCaptureFixture) -> None:
    seed = int(os.environ.get("TRIO_ECHO_FUZZ_SEED", random.randrange(2**32)))
    print(f"fuzz seed {seed} (rerun with TRIO_ECHO_FUZZ_SEED={seed})")
    caplog.set_level(logging.INFO, logger="trio_echo")
    tally = Tally()
    server = Server(max_frame=MAX_FRAME, max_inflight=8)
    async with tcp_server(server) as (_, port):
        deadline = trio.current_time() + SECONDS

        async def client(rng: random.Random) -> None:
            while trio.current_time() < deadline:
                await one_connection(port, rng, tally)

        async with trio.open_nursery() as nursery:
            for i in range(CLIENTS):
                nursery.start_soon(client, random.Random(seed * 1000 + i))
        await eventually(lambda: quiet(server))
        async with framed_peer(port) as peer:
            assert await peer.call(1, "ping") == Response(1, "pong")
            stats = await peer.call(2, "stats")
        assert isinstance(stats, Response)
        assert stats.result["connections_open"] == 1  # this one
        assert stats.result["requests_in_flight"] == 0
        assert stats.result["connections_total"] == tally.connections + 1
    assert quiet(server)
    print(f"fuzz: {tally.connections} connections {tally.by_mode}, {tally.checked} checked, "
          f"{tally.probes} probes answered, errors {server.stats()['errors']}")  # fmt: skip
    assert tally.connections > 50 and tally.checked > 20
    bugs = [r for r in caplog.records if r.exc_info or "internal error" in r.getMessage()]
    assert bugs == [], bugs[:3]
