"""Several trio_echo servers behind a real HAProxy, under load (issue #13's "Behind HAProxy").

A load of 20 async client tasks and 4 blocking-client threads, each with its own
client, calls ``echo`` and ``sleep(0.05)`` in turn through HAProxy for the whole
test, and writes every call in a ledger: what was sent, what came back (or
what was raised), when, and on which connection. Then:

1. a rolling restart (each server in turn: SIGTERM, exit 0, started again):
   every call gets its own correct reply;
2. a crash (SIGKILL): only calls pending on that server fail, with
   ConnectionClosed, and calls succeed again within a few seconds;
3. rebalancing: with one server up, then a second, ``--max-connection-age 2``
   moves connections to the new one within 10 s, without a failed call.
"""

from __future__ import annotations

import re
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

import trio_echo

from helpers.haproxy import Fleet

ASYNC_TASKS = 20
THREADS = 4
#: Every call is bounded, so that a bug shows as a failure, not a hang.
CALL_TIMEOUT_S = 30.0


@dataclass
class Entry:
    """One call, as the client saw it."""

    who: str
    seq: int
    method: str
    sent: Any
    port: int  # the local port of the connection the call started on
    started: float
    ended: float = 0.0
    result: Any = None
    error: BaseException | None = None

    @property
    def correct(self) -> bool:
        expected = self.sent if self.method == "echo" else None
        return self.error is None and self.result == expected


@dataclass
class Load:
    """The clients and their ledger; :meth:`start` in the background, :meth:`stop` to end."""

    port: int
    ledger: list[Entry] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    ready: threading.Barrier = field(
        default_factory=lambda: threading.Barrier(THREADS + 2)  # threads, trio, the test
    )
    threads: list[threading.Thread] = field(default_factory=list)
    crashed: list[BaseException] = field(default_factory=list)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._guarded, args=(trio.run, self._tasks))]
        self.threads += [
            threading.Thread(target=self._guarded, args=(self._thread, n)) for n in range(THREADS)
        ]
        for thread in self.threads:
            thread.start()
        self.ready.wait(60)  # every client connected

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)
            assert not thread.is_alive(), "a load thread did not finish"
        assert self.crashed == [], "".join(
            line for exc in self.crashed[:2] for line in traceback.format_exception(exc)
        )

    def _guarded(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # a bug in the load itself: reported by stop()
            self.crashed.append(exc)
            self.ready.abort()

    def _call_args(self, who: str, seq: int) -> tuple[str, Any]:
        return ("echo", [who, seq]) if seq % 2 == 0 else ("sleep", 0.05)

    async def _tasks(self) -> None:
        async with trio.open_nursery() as nursery:
            for n in range(ASYNC_TASKS):
                nursery.start_soon(self._task, f"a{n}")
            await trio.to_thread.run_sync(self.ready.wait, 60)

    async def _task(self, who: str) -> None:
        async with trio_echo.open_client("127.0.0.1", self.port) as client:
            seq = 0
            while not self.stopping.is_set():
                method, arg = self._call_args(who, seq)
                stream = client._current._stream
                entry = Entry(who, seq, method, arg, _port(stream), time.monotonic())
                try:
                    entry.result = await client.call(method, arg, timeout=CALL_TIMEOUT_S)
                except trio_echo.TrioEchoError as exc:
                    entry.error = exc
                entry.ended = time.monotonic()
                self.ledger.append(entry)
                seq += 1

    def _thread(self, n: int) -> None:
        who = f"b{n}"
        with trio_echo.connect("127.0.0.1", self.port) as client:
            self.ready.wait(60)
            seq = 0
            while not self.stopping.is_set():
                method, arg = self._call_args(who, seq)
                entry = Entry(who, seq, method, arg, _port(client._current._sock), time.monotonic())
                try:
                    entry.result = client.call(method, arg, timeout=CALL_TIMEOUT_S)
                except trio_echo.TrioEchoError as exc:
                    entry.error = exc
                entry.ended = time.monotonic()
                self.ledger.append(entry)
                seq += 1

    def calls_after(self, moment: float) -> list[Entry]:
        return [e for e in self.ledger if e.started >= moment]

    def check_every_call_correct(self) -> None:
        failures = [e for e in self.ledger if not e.correct]
        assert failures == [], failures[:5]
        for who in {e.who for e in self.ledger}:
            seqs = [e.seq for e in self.ledger if e.who == who]
            assert seqs == list(range(len(seqs))), who  # one reply per call, none lost


def _port(transport: Any) -> int:
    """The local port of a connection's socket (0 once it is closed: the call reconnects)."""
    sock = getattr(getattr(transport, "transport_stream", transport), "socket", transport)
    try:
        return int(sock.getsockname()[1])
    except OSError:
        return 0


def client_ports(log: list[str]) -> set[int]:
    """The clients' own ports a server saw in the PROXY headers (its debug log)."""
    return {
        int(m.group(1)) for line in log for m in [re.search(r"is from [\d.]+:(\d+)", line)] if m
    }


def test_rolling_restart_loses_no_call(tmp_path: Path) -> None:
    with Fleet(tmp_path, 3, "--grace", "10") as fleet:
        load = Load(fleet.port)
        load.start()
        try:
            time.sleep(1)
            for i in range(3):
                assert fleet.stop(i, signal.SIGTERM) == 0
                fleet.start(i)
                time.sleep(1)  # calls flow through all three before the next stop
        finally:
            load.stop()
        load.check_every_call_correct()
        assert len(load.ledger) > 500
        # Connections really moved: each retired server told its clients to go away.
        logs = "".join("".join(s.log) for s in fleet.retired)
        assert logs.count("draining") == 3
        assert "grace period" not in logs  # nothing had to be cut short


def test_crash_fails_only_the_calls_pending_there(tmp_path: Path) -> None:
    with Fleet(tmp_path, 3, "--log-level", "debug") as fleet:
        load = Load(fleet.port)
        load.start()
        try:
            time.sleep(1)
            victim = fleet.servers[0]
            assert victim is not None
            killed_at = time.monotonic()
            fleet.kill(0)
            time.sleep(4)
            recovered_at = time.monotonic() - 1
        finally:
            load.stop()
        failed = [e for e in load.ledger if not e.correct]
        assert failed, "some calls were pending on the killed server"
        victims = client_ports(victim.log)
        for entry in failed:
            assert isinstance(entry.error, trio_echo.ConnectionClosed), entry
            assert entry.started <= killed_at + 0.5 <= entry.ended + 0.5, entry  # pending then
            assert entry.port in victims, entry  # on a connection to the killed server
        # A few seconds later everything works again, through the other two.
        after = load.calls_after(recovered_at)
        assert after and all(e.correct for e in after), [e for e in after if not e.correct][:5]


def test_max_connection_age_rebalances_onto_a_new_server(tmp_path: Path) -> None:
    with Fleet(tmp_path, 2, "--max-connection-age", "2", up=[0]) as fleet:
        load = Load(fleet.port)
        load.start()
        try:
            fleet.start(1)
            deadline = time.monotonic() + 10
            while int(fleet.server_stats()["s2"]["scur"]) < 5:
                assert time.monotonic() < deadline, fleet.server_stats()["s2"]
                time.sleep(0.1)
            moved_at = time.monotonic()
            time.sleep(1)  # and calls go on, through both
        finally:
            load.stop()
        load.check_every_call_correct()
        assert load.calls_after(moved_at)
