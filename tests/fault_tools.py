"""Helpers for the limits, faults and fuzz tests: polling, resets, a blocking peer, RSS."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import trio

from trio_echo import Server, Service, wire


async def eventually(predicate: Callable[[], bool], timeout: float = 10) -> None:
    """Poll ``predicate`` until it holds, failing after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - counters have no event to wait on
            await trio.sleep(0.01)


def quiet(server: Server) -> bool:
    """No connection open and no request in flight."""
    stats = server.stats()
    return stats["connections_open"] == 0 and stats["requests_in_flight"] == 0


def set_linger_zero(sock: socket.socket | trio.socket.SocketType) -> None:
    """Make the next close() send a TCP reset instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def reset(stream: trio.SocketStream) -> None:
    """Vanish with a TCP reset: SO_LINGER 0, then close."""
    set_linger_zero(stream.socket)
    stream.socket.close()


async def read_to_eof(stream: trio.abc.Stream, timeout: float = 10) -> bytes:
    """Everything the peer sends until it closes (a reset counts as a close); then close."""
    got = bytearray()
    async with stream:
        with trio.fail_after(timeout):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                got += chunk
    return bytes(got)


def error_code(event: wire.Event) -> str | None:
    """The code of an error response or error notice, else None."""
    if isinstance(event, wire.ErrorResponse):
        return event.code
    if isinstance(event, wire.Notification) and event.method == "error":
        return str(event.params[0]["code"])
    return None


def decode_all(data: bytes, mode: wire.Mode = wire.Mode.FRAMED) -> list[wire.Event]:
    """Every event in ``data`` (a whole server-to-client byte stream)."""
    conn = wire.Connection(mode=mode, max_frame=2**31)
    conn.receive_data(data)
    conn.receive_data(b"")
    return list(conn.events())


class SyncPeer:
    """A blocking socket client with a bare :class:`wire.Connection` (for subprocess servers)."""

    def __init__(self, port: int, mode: wire.Mode = wire.Mode.FRAMED, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.conn = wire.Connection(mode=mode)
        self.sock.sendall(self.conn.initiate())

    def send(self, *events: wire.Event) -> None:
        self.sock.sendall(b"".join(self.conn.send(e) for e in events))

    def next_event(self) -> wire.Event:
        """The next event; raises EOFError at a close."""
        while True:
            event = self.conn.next_event()
            if event is not wire.NEED_DATA:
                assert not isinstance(event, type(wire.NEED_DATA))
                return event
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            self.conn.receive_data(data)

    def call(self, msgid: int, method: str, *params: Any) -> wire.Event:
        self.send(wire.Request(msgid, method, list(params)))
        return self.next_event()

    def until_eof(self) -> list[wire.Event]:
        events = []
        while True:
            try:
                events.append(self.next_event())
            except EOFError:
                return events

    def close(self) -> None:
        self.sock.close()


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM...), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for_log(lines: list[str], needle: str, timeout: float = 10) -> str:
    """Wait (polling, bounded) until a line containing ``needle`` shows up in ``lines``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(lines):
            if needle in line:
                return line
        time.sleep(0.01)
    raise AssertionError(f"{needle!r} not logged:\n" + "".join(lines[-20:]))


class Gate:
    """A threading.Event that a test opens to let blocked handlers finish."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.entered = 0

    def wait(self) -> None:
        self.entered += 1
        self.event.wait(30)


def kinds_service(gate: Gate) -> Service:
    """One method of each handler kind that waits, and one of each that raises."""
    service = Service()

    @service.method
    async def await_forever() -> None:
        await trio.sleep_forever()

    @service.method(blocking=True)
    def wait_gate() -> str:
        gate.wait()
        return "opened"

    @service.method
    def raise_inline() -> None:
        raise RuntimeError("inline kaboom")

    @service.method
    async def raise_async() -> None:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("async kaboom")

    @service.method(blocking=True)
    def raise_blocking() -> None:
        raise RuntimeError("blocking kaboom")

    @service.method
    async def aecho(value: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return value

    @service.method(blocking=True)
    def becho(value: Any) -> Any:
        return value

    return service
