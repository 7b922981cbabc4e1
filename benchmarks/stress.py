"""A bounded stress run that proves no reply is lost: a mixed workload and a client-side ledger.

Many connections at once, each running one scenario after another until the
time is up:

========== =========================================================================
fast       pipelined ``echo`` of random msgpack values and ``ping`` (framed or msgpack-rpc)
slow       ``sleep`` (10-300 ms) mixed with ``echo``, answered out of order
cancel     long ``sleep`` calls cancelled with ``[3, msgid]`` (some race their reply)
timeout    ``sleep`` with a ``timeout_ms`` shorter (answered ``timeout``) or longer
slowread   64 KiB echoes, many in flight, read slowly: the server must apply backpressure
abrupt     requests in flight, then a TCP reset (the ledger leaves these out)
oversize   requests, then a frame header over ``max_frame``: every earlier request
           is answered, then ``frame_too_large``, then the close
raw        raw echo of random bytes
========== =========================================================================

and the attacks of issue #10, each a connection of its own whose replies the
ledger checks as strictly (the errors it must get, and nothing else):

========== =========================================================================
trickle    a long message of empty arrays sent whole but its last bytes, which then
           trickle in: held as bytes until complete, then echoed
amplify    requests with a huge bad ``timeout_ms``, replies left unread for a while:
           each is answered ``invalid_params`` in under 1 KiB
bomb       flat lists of 80,000 short strings (answered), then a message of more
           arrays than ``max_containers``: ``frame_too_large``, then the close
resetfull  ``max_inflight`` long sleeps and more waiting behind them, then a reset:
           the server must free them all (or it will not settle at the end)
statsflood hundreds of pipelined ``stats`` calls
cancelfull ``max_inflight`` long sleeps and more behind them, then a cancel for each:
           all answered ``cancelled`` at once, none runs its 50 s
========== =========================================================================

The ledger: every request sent on a connection that stayed up must get
exactly one reply, with its msgid and the right result (or the one error its
scenario expects). A reply for a msgid not in flight is a duplicate; a wrong
value is a mismatch; a request still unanswered when its connection ends is
lost. At the end the server must be back to zero connections and zero
requests in flight, and (when this script started it) must have logged no
traceback. Prints a summary table; exits 1 on any loss, mismatch, duplicate
or server fault.

    python benchmarks/stress.py                 # 60 s, starts its own server on a free port
    python benchmarks/stress.py --duration 10   # the CI run
    python benchmarks/stress.py --port 7000     # against a running server (loopback only)
"""

from __future__ import annotations

import argparse
import math
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from trio_echo import wire

HOST = "127.0.0.1"
SCENARIOS = ["fast", "slow", "cancel", "timeout", "slowread", "abrupt", "oversize", "raw"]
SCENARIOS += ["trickle", "amplify", "bomb", "resetfull", "statsflood", "cancelfull"]
WEIGHTS = [6, 3, 2, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 1]
#: Server options when this script starts the server.
SERVER_ARGS = ["--max-frame", "262144", "--max-inflight", "32", "--grace", "5"]
#: What the scenarios assume of the server (the defaults above).
MAX_FRAME = 262144
MAX_INFLIGHT = 32
MAX_CONTAINERS = 65536
#: A connection that has sent everything waits at most this long for its replies.
REPLY_WAIT_S = 30.0
#: The whole run is stopped (and fails) this long after the load should have ended.
HANG_GUARD_S = 60.0


# --- the ledger -----------------------------------------------------------------------------


@dataclass
class Tally:
    """Counts for one scenario."""

    connections: int = 0
    sent: int = 0
    ok: int = 0  # the right result
    expected_errors: int = 0  # the error the scenario expects (cancelled, timeout ...)
    lost: int = 0
    mismatched: int = 0
    duplicates: int = 0
    abandoned: int = 0  # sent on a connection the client reset on purpose
    bytes_echoed: int = 0
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.notes) < 5:
            self.notes.append(text)


@dataclass(frozen=True)
class Expect:
    """What may answer one request: a result, or one of some error codes."""

    result: Any = None
    errors: frozenset[str] = frozenset()
    result_ok: bool = True  # False: only an error is right
    #: If set, a result is right when this says so (instead of being equal to ``result``).
    check: Callable[[Any], bool] | None = None


class Ledger:
    """The requests in flight on one connection and what each may be answered with."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.pending: dict[int, Expect] = {}
        self.next_id = random.randrange(2**32 - 2**20)
        self.settled = trio.Event()
        self.room = trio.Semaphore(1 << 30)

    def new(self, expect: Expect) -> int:
        msgid = self.next_id
        self.next_id += 1
        self.pending[msgid] = expect
        self.tally.sent += 1
        return msgid

    def answer(self, event: wire.Event) -> None:
        tally = self.tally
        msgid = getattr(event, "msgid", None)
        if msgid is None or msgid not in self.pending:
            tally.duplicates += 1
            tally.note(f"reply for a msgid not in flight: {event!r:.200}")
            return
        expect = self.pending.pop(msgid)
        self.room.release()
        if isinstance(event, wire.Response):
            if expect.check is not None:
                right = expect.result_ok and expect.check(event.result)
            else:
                right = expect.result_ok and _same(event.result, expect.result)
            if right:
                tally.ok += 1
            else:
                tally.mismatched += 1
                tally.note(f"msgid {msgid}: got {event.result!r:.100}, wanted {expect!r:.100}")
        elif isinstance(event, wire.ErrorResponse) and event.code in expect.errors:
            tally.expected_errors += 1
        else:
            tally.mismatched += 1
            tally.note(f"msgid {msgid}: got {event!r:.200}, wanted {expect!r:.100}")
        if not self.pending:
            self.settled.set()

    def close(self, *, abandoned: bool = False) -> None:
        """The connection is over: whatever is still pending is lost (or abandoned)."""
        if abandoned:
            self.tally.abandoned += len(self.pending)
        elif self.pending:
            self.tally.lost += len(self.pending)
            self.tally.note(f"{len(self.pending)} unanswered, e.g. msgid {min(self.pending)}")
        self.pending.clear()


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


# --- a connection -------------------------------------------------------------------------


class Client:
    """One framed or msgpack-rpc connection: a reader task feeding the ledger."""

    def __init__(self, stream: trio.SocketStream, mode: wire.Mode, ledger: Ledger) -> None:
        self.stream = stream
        self.conn = wire.Connection(mode=mode, max_frame=2**31)
        self.ledger = ledger
        self.notices: list[str] = []
        self.hello: dict[str, Any] = {}
        self.eof = trio.Event()
        self.read_delay = 0.0
        self.read_size = 65536
        self.received = 0  # bytes
        self.first_read_delay = 0.0

    async def reader(self) -> None:
        try:
            await trio.sleep(self.first_read_delay)
            while True:
                data = await self.stream.receive_some(self.read_size)
                self.received += len(data)
                self.conn.receive_data(data)
                for event in self.conn.events():
                    self._on_event(event)
                if not data:
                    break
                if self.read_delay:
                    await trio.sleep(self.read_delay)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.eof.set()

    def _on_event(self, event: wire.Event) -> None:
        if isinstance(event, wire.Notification):
            if event.method == "hello":
                self.hello = event.params[0]
            else:
                self.notices.append(str(event.params[0].get("code")))
            return
        if isinstance(event, wire.ProtocolViolation):
            self.ledger.tally.mismatched += 1
            self.ledger.tally.note(f"server sent bad bytes: {event.message}")
            return
        self.ledger.answer(event)

    async def call(self, method: str, params: list[Any], expect: Expect, **options: Any) -> int:
        return await self.send_call(method, params, expect, options or None)

    async def send_call(
        self,
        method: str,
        params: list[Any],
        expect: Expect,
        options: dict[str, Any] | None = None,
        *,
        trickle: int = 0,
        delay: float = 0.0,
    ) -> int:
        """Send a request; with ``trickle``, its last that many bytes one piece at a time."""
        await self.ledger.room.acquire()
        msgid = self.ledger.new(expect)
        data = self.conn.send(wire.Request(msgid, method, params, options))
        if not trickle:
            await self.stream.send_all(data)
            return msgid
        await self.stream.send_all(data[:-trickle])
        for i in range(len(data) - trickle, len(data), max(1, trickle // 8)):
            await trio.sleep(delay)
            await self.stream.send_all(data[i : i + max(1, trickle // 8)])
        return msgid

    async def cancel(self, msgid: int) -> None:
        await self.stream.send_all(self.conn.send(wire.Cancel(msgid)))

    async def finish(self) -> None:
        """Half-close, then wait for every reply and the server's close."""
        await self.stream.send_eof()
        with trio.move_on_after(REPLY_WAIT_S):
            await self.eof.wait()
        self.ledger.close()


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**31, -(2**63), 2**64 - 1, rng.randrange(-(10**9), 10**9)])
    if kind == 3:
        return rng.choice([0.5, -1e300, 3.25])
    if kind == 4:
        return "".join(rng.choice("abcé€😀 ") for _ in range(rng.randrange(40)))
    if kind == 5:
        return rng.randbytes(rng.choice([0, 7, 100, 2000]))
    if kind == 6:
        return {str(i): random_value(rng, depth + 1) for i in range(rng.randrange(4))}
    if kind == 7:
        return {i: random_value(rng, depth + 1) for i in range(rng.randrange(3))}
    return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]


# --- the scenarios ----------------------------------------------------------------------------


Scenario = Callable[[int, random.Random, Tally], Awaitable[None]]


async def open_client(port: int, rng: random.Random, tally: Tally, window: int) -> Client:
    mode = wire.Mode.FRAMED if rng.random() < 0.7 else wire.Mode.MPRPC
    stream = await trio.open_tcp_stream(HOST, port)
    ledger = Ledger(tally)
    ledger.room = trio.Semaphore(window)
    client = Client(stream, mode, ledger)
    await stream.send_all(client.conn.initiate())
    tally.connections += 1
    if mode is wire.Mode.MPRPC:
        # A stream is sniffed by its first byte: 0x94 (a 4-item request) says
        # msgpack-rpc, while a 5-item request (with options) starts 0x95 = raw echo.
        await client.call("ping", [], Expect("pong"))
    return client


async def run_pipeline(
    port: int,
    rng: random.Random,
    tally: Tally,
    window: int,
    body: Callable[[Client], Awaitable[None]],
    setup: Callable[[Client], None] | None = None,
) -> None:
    client = await open_client(port, rng, tally, window)
    if setup is not None:
        setup(client)
    async with client.stream, trio.open_nursery() as nursery:
        nursery.start_soon(client.reader)
        try:
            await body(client)
            await client.finish()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            tally.note(f"connection broke: {exc!r}")
            client.ledger.close()
        nursery.cancel_scope.cancel()


async def fast(port: int, rng: random.Random, tally: Tally) -> None:
    async def body(client: Client) -> None:
        for _ in range(rng.randrange(50, 400)):
            if rng.random() < 0.2:
                await client.call("ping", [], Expect("pong"))
            else:
                value = random_value(rng)
                await client.call("echo", [value], Expect(value))

    await run_pipeline(port, rng, tally, rng.choice([1, 8, 64]), body)


async def slow(port: int, rng: random.Random, tally: Tally) -> None:
    async def body(client: Client) -> None:
        for _ in range(rng.randrange(10, 60)):
            if rng.random() < 0.5:
                await client.call("sleep", [rng.uniform(0.01, 0.3)], Expect(None))
            else:
                value = rng.randbytes(100)
                await client.call("echo", [value], Expect(value))

    await run_pipeline(port, rng, tally, 64, body)


async def cancel(port: int, rng: random.Random, tally: Tally) -> None:
    async def body(client: Client) -> None:
        for _ in range(rng.randrange(5, 30)):
            racing = rng.random() < 0.3
            seconds = rng.uniform(0.0, 0.02) if racing else rng.uniform(2, 10)
            expect = Expect(None, frozenset({"cancelled"}), result_ok=racing)
            msgid = await client.call("sleep", [seconds], expect)
            await trio.sleep(rng.uniform(0, 0.02))
            await client.cancel(msgid)

    await run_pipeline(port, rng, tally, 64, body)


async def timeout(port: int, rng: random.Random, tally: Tally) -> None:
    async def body(client: Client) -> None:
        for _ in range(rng.randrange(5, 30)):
            if rng.random() < 0.6:
                expect = Expect(None, frozenset({"timeout"}), result_ok=False)
                await client.call("sleep", [5], expect, timeout_ms=rng.randrange(5, 100))
            else:
                await client.call("sleep", [0.01], Expect(None), timeout_ms=5000)

    await run_pipeline(port, rng, tally, 64, body)


async def slowread(port: int, rng: random.Random, tally: Tally) -> None:
    def setup(client: Client) -> None:
        client.read_delay = 0.005
        client.read_size = 16384

    async def body(client: Client) -> None:
        for _ in range(rng.randrange(20, 120)):
            value = rng.randbytes(64 * 1024)
            await client.call("echo", [value], Expect(value))

    await run_pipeline(port, rng, tally, 200, body, setup)


async def abrupt(port: int, rng: random.Random, tally: Tally) -> None:
    async def body(client: Client) -> None:
        for _ in range(rng.randrange(1, 40)):
            if rng.random() < 0.5:
                await client.call("sleep", [rng.uniform(0, 1)], Expect(None))
            else:
                value = random_value(rng)
                await client.call("echo", [value], Expect(value))
        await trio.sleep(rng.uniform(0, 0.05))

    await then_reset(await open_client(port, rng, tally, 1000), body)


async def then_reset(client: Client, body: Callable[[Client], Awaitable[None]]) -> None:
    """Run ``body``, then vanish with a TCP reset (the ledger abandons what is pending)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.reader)
        try:
            await body(client)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()
    sock = client.stream.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    client.ledger.close(abandoned=True)


async def oversize(port: int, rng: random.Random, tally: Tally) -> None:
    client = await open_client(port, rng, tally, 1000)
    async with client.stream, trio.open_nursery() as nursery:
        nursery.start_soon(client.reader)
        for _ in range(rng.randrange(0, 30)):
            if rng.random() < 0.3:
                await client.call("sleep", [rng.uniform(0, 0.2)], Expect(None))
            else:
                value = random_value(rng)
                await client.call("echo", [value], Expect(value))
        max_frame = 262144
        if client.conn.framed:
            header = (max_frame + 1).to_bytes(4, "big")
        else:  # a msgpack-rpc stream: a bin32 of more than max_frame, sent whole
            header = b"\x94\x00\x00\xa4echo\x91\xc6" + (max_frame + 1).to_bytes(4, "big")
            header += bytes(max_frame + 1)
        await end_with(client, header, tally, "oversize frame")
        nursery.cancel_scope.cancel()


async def end_with(client: Client, fatal: bytes, tally: Tally, what: str) -> None:
    """Send bytes that end the connection: every earlier request must be answered,
    then ``frame_too_large``, then the close."""
    try:
        await client.stream.send_all(fatal)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    with trio.move_on_after(REPLY_WAIT_S):
        await client.eof.wait()
    if client.notices != ["frame_too_large"]:
        tally.mismatched += 1
        tally.note(f"{what}: notices {client.notices}")
    client.ledger.close()


async def raw(port: int, rng: random.Random, tally: Tally) -> None:
    tally.connections += 1
    first = bytes([rng.choice([b for b in range(1, 256) if b not in (0x93, 0x94)])])
    data = first + rng.randbytes(rng.choice([10, 1000, 100_000, 1_000_000]))
    got = bytearray()
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream, trio.open_nursery() as nursery:

        async def send() -> None:
            view = memoryview(data)
            while view:
                n = rng.randrange(1, 65536)
                await stream.send_all(view[:n])
                view = view[n:]
            await stream.send_eof()

        nursery.start_soon(send)
        with trio.move_on_after(REPLY_WAIT_S):
            while chunk := await stream.receive_some(65536):
                got += chunk
    tally.sent += 1
    if bytes(got) == data:
        tally.ok += 1
        tally.bytes_echoed += len(data)
    elif data.startswith(bytes(got)):
        tally.lost += 1
        tally.note(f"raw echo short: {len(got)} of {len(data)} bytes")
    else:
        tally.mismatched += 1
        tally.note("raw echo differs from what was sent")


# --- the attacks of issue #10 -----------------------------------------------------------------


async def trickle(port: int, rng: random.Random, tally: Tally) -> None:
    """A long message of 1-byte values, its end trickling in, among ordinary requests."""

    async def body(client: Client) -> None:
        for _ in range(rng.randrange(1, 4)):
            value = [[]] * rng.randrange(20_000, 60_000)  # up to ~60 KB, ~3 MiB as objects
            expect = Expect(value)
            await client.send_call(
                "echo", [value], expect, trickle=rng.randrange(8, 400), delay=0.02
            )
            await client.call("ping", [], Expect("pong"))

    await run_pipeline(port, rng, tally, 64, body)


async def amplify(port: int, rng: random.Random, tally: Tally) -> None:
    """Bad ``timeout_ms`` values of ~100 KB; nothing read for a while; small replies."""
    count = rng.randrange(3, 12)

    def setup(client: Client) -> None:
        client.first_read_delay = rng.uniform(0.2, 1.0)

    async def body(client: Client) -> None:
        bad = [False] * rng.randrange(50_000, 120_000)
        for _ in range(count):
            expect = Expect(None, frozenset({"invalid_params"}), result_ok=False)
            await client.call("ping", [], expect, timeout_ms=bad)

    client_box: list[Client] = []

    def remember(client: Client) -> None:
        setup(client)
        client_box.append(client)

    await run_pipeline(port, rng, tally, 64, body, remember)
    # Every reply under 1 KiB: an error quotes at most ~100 characters of the request.
    if client_box and client_box[0].received > count * 1024 + 512:
        tally.mismatched += 1
        tally.note(f"{count} bad timeout_ms replies took {client_box[0].received} bytes")


async def bomb(port: int, rng: random.Random, tally: Tally) -> None:
    """Flat lists of short strings (decoded a slice at a time), then a container bomb."""
    client = await open_client(port, rng, tally, 1000)
    async with client.stream, trio.open_nursery() as nursery:
        nursery.start_soon(client.reader)
        strings = ["ab"] * 80_000  # 240 KB: 80,000 objects in one message
        for _ in range(rng.randrange(1, 4)):
            await client.call("ping", [], Expect("pong"), x=strings)
            value = random_value(rng)
            await client.call("echo", [value], Expect(value))
        over = [[]] * (MAX_CONTAINERS + rng.randrange(1, 5000))
        request = wire.Request(client.ledger.next_id, "ping", [], {"x": over})
        await end_with(client, client.conn.send(request), tally, "container bomb")
        nursery.cancel_scope.cancel()


async def resetfull(port: int, rng: random.Random, tally: Tally) -> None:
    """A full connection (max_inflight sleeps of 60 s, more behind them) resets.

    Only the server's reset detection frees these calls before the end of the
    run: if it missed one, the final settle finds requests still in flight.
    """

    async def body(client: Client) -> None:
        for _ in range(MAX_INFLIGHT + rng.randrange(0, 20)):
            await client.call("sleep", [60], Expect(None))
        await trio.sleep(rng.uniform(0.05, 0.5))

    await then_reset(await open_client(port, rng, tally, 1000), body)


def _is_stats(result: Any) -> bool:
    return type(result) is dict and type(result.get("connections_open")) is int


async def statsflood(port: int, rng: random.Random, tally: Tally) -> None:
    async def body(client: Client) -> None:
        for _ in range(rng.randrange(100, 600)):
            await client.call("stats", [], Expect(check=_is_stats))

    await run_pipeline(port, rng, tally, 1000, body)


async def cancelfull(port: int, rng: random.Random, tally: Tally) -> None:
    """Cancels reach a full connection: for calls running and for calls waiting."""

    async def body(client: Client) -> None:
        cancelled = Expect(None, frozenset({"cancelled"}), result_ok=False)
        msgids = [
            await client.call("sleep", [50], cancelled)
            for _ in range(MAX_INFLIGHT + rng.randrange(1, 10))
        ]
        await trio.sleep(rng.uniform(0, 0.2))
        rng.shuffle(msgids)
        for msgid in msgids:
            await client.cancel(msgid)

    await run_pipeline(port, rng, tally, 1000, body)


SCENARIO_FUNCS: dict[str, Scenario] = {
    "fast": fast,
    "slow": slow,
    "cancel": cancel,
    "timeout": timeout,
    "slowread": slowread,
    "abrupt": abrupt,
    "oversize": oversize,
    "raw": raw,
    "trickle": trickle,
    "amplify": amplify,
    "bomb": bomb,
    "resetfull": resetfull,
    "statsflood": statsflood,
    "cancelfull": cancelfull,
}


# --- the server and the run -----------------------------------------------------------------


class ServerProcess:
    """``python -m trio_echo serve`` on a free loopback port, its stderr kept.

    ``command`` runs another server command instead (``--host`` and ``--port``
    are appended, then ``extra``); benchmarks/attacks.py uses it too.
    """

    def __init__(self, extra: list[str], command: list[str] | None = None) -> None:
        if command is None:
            command = [sys.executable, "-m", "trio_echo", "serve", *SERVER_ARGS]
        self.proc = subprocess.Popen(
            [*command, "--host", HOST, "--port", "0", *extra],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            match = re.search(r"listening on \S+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                break
        else:
            raise SystemExit("server exited before listening:\n" + "".join(self.log))
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def rss_mib(self, key: str = "VmRSS") -> float:
        """The server's resident memory now (or, with ``VmHWM``, at its peak), in MiB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        return math.nan

    def peak_rss_mib(self) -> float:
        return self.rss_mib("VmHWM")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.thread.join(5)
        return code


async def server_stats(port: int) -> dict[str, Any]:
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        conn = wire.Connection()
        await stream.send_all(conn.initiate() + conn.send(wire.Request(1, "stats", [])))
        while True:
            data = await stream.receive_some(65536)
            if not data:
                raise RuntimeError("the server closed the stats connection")
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, wire.Response):
                    result: dict[str, Any] = event.result
                    return result


async def run(
    port: int, duration: float, connections: int, seed: int, tallies: dict[str, Tally]
) -> list[str]:
    """Run the actors; return the scenarios still running when the hang guard fired."""
    deadline = trio.current_time() + duration
    running: dict[int, str] = {}

    async def actor(index: int) -> None:
        rng = random.Random(seed * 100_003 + index)
        # Each actor's first scenario is one in turn, so every scenario runs at least
        # once (with as many actors as scenarios); then they are drawn at random.
        name = SCENARIOS[index % len(SCENARIOS)]
        while trio.current_time() < deadline:
            running[index] = name
            await SCENARIO_FUNCS[name](port, rng, tallies[name])
            name = rng.choices(SCENARIOS, WEIGHTS)[0]
        running.pop(index, None)

    # A hang is a failure, never a stuck run.
    with trio.move_on_after(duration + HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            for index in range(connections):
                nursery.start_soon(actor, index)
    return sorted(running.values())


async def settle(port: int) -> dict[str, Any]:
    """Stats once the server has closed everything (only the stats connection open)."""
    stats: dict[str, Any] = {}
    with trio.move_on_after(15):
        while True:
            stats = await server_stats(port)
            if stats["connections_open"] == 1 and stats["requests_in_flight"] == 0:
                break
            await trio.sleep(0.05)
    if not stats:
        raise OSError("the server did not answer stats")
    return stats


def table(tallies: dict[str, Tally]) -> tuple[str, Tally]:
    columns = ["connections", "sent", "ok", "expected_errors", "lost", "mismatched"]
    columns += ["duplicates", "abandoned"]
    total = Tally()
    lines = [f"{'scenario':<10}" + "".join(f"{c:>16}" for c in columns)]
    for name, tally in tallies.items():
        lines.append(f"{name:<10}" + "".join(f"{getattr(tally, c):>16}" for c in columns))
        for c in columns:
            setattr(total, c, getattr(total, c) + getattr(tally, c))
    lines.append(f"{'total':<10}" + "".join(f"{getattr(total, c):>16}" for c in columns))
    return "\n".join(lines), total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (60)")
    parser.add_argument("--connections", type=int, default=48, help="concurrent actors (48)")
    parser.add_argument("--port", type=int, help="use the server on 127.0.0.1:PORT")
    parser.add_argument("--seed", type=int, default=None, help="random seed (printed)")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra `trio-echo serve` argument"
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"stress: {args.duration:g} s, {args.connections} actors, seed {seed}", flush=True)
    server = None if args.port else ServerProcess(args.server_arg)
    port = args.port or (server.port if server else 0)
    started = time.monotonic()
    failures: list[str] = []
    tallies = {name: Tally() for name in SCENARIOS}
    stats: dict[str, Any] = {}
    try:
        stuck = trio.run(run, port, args.duration, args.connections, seed, tallies)
        if stuck:
            failures.append(f"hung: {len(stuck)} connection(s) never finished ({stuck[:8]})")
        stats = trio.run(settle, port)
    except OSError as exc:
        failures.append(f"the run failed: {exc!r}")
    elapsed = time.monotonic() - started
    text, total = table(tallies)
    print(text)
    for name, tally in tallies.items():
        for note in tally.notes:
            print(f"  {name}: {note}")
    replies = total.ok + total.expected_errors
    print(
        f"\n{total.sent} requests in {elapsed:.1f} s ({total.sent / max(elapsed, 1e-9):,.0f}/s), "
        f"{replies} replies checked, {sum(t.bytes_echoed for t in tallies.values()):,} raw "
        f"bytes echoed"
    )
    if stats:
        print(
            f"server: connections_total {stats['connections_total']}, requests_total "
            f"{stats['requests_total']}, errors {dict(sorted(stats['errors'].items()))}"
        )
        if stats["connections_open"] != 1 or stats["requests_in_flight"] != 0:
            failures.append(
                f"server did not settle: {stats['connections_open'] - 1} connections open, "
                f"{stats['requests_in_flight']} requests in flight"
            )
    if server is not None:
        print(f"server: peak RSS {server.peak_rss_mib():.1f} MiB")
        if server.proc.poll() is not None:
            failures.append(f"the server died (exit {server.proc.returncode})")
        code = server.stop()
        log = "".join(server.log)
        if "Traceback" in log or " ERROR " in log:
            failures.append("the server logged an error or a traceback")
            print(log[-3000:])
        if code != 0:
            failures.append(f"the server exited {code} after SIGTERM")
    if total.lost or total.mismatched or total.duplicates:
        failures.append(
            f"{total.lost} lost, {total.mismatched} mismatched, {total.duplicates} duplicates"
        )
    if total.sent == 0:
        failures.append("nothing was sent")
    print(f"lost {total.lost}, mismatched {total.mismatched}, duplicates {total.duplicates}")
    if failures:
        print("FAIL: " + "; ".join(failures))
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
