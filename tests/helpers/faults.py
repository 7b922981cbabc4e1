"""Helpers for the limits, faults and fuzz tests: polling, resets, logs, process memory."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable

import trio

from trio_echo import Server


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
