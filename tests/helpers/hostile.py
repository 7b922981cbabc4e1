"""Tools for attacking a server in a subprocess as a hostile client would (issue #10).

:class:`RawPeer` speaks raw bytes over a blocking socket and reports every reply
with its size on the wire; :class:`Pinger` measures other clients' latency from a
process of its own while a test attacks; :func:`write_app` writes a service module
for ``trio-echo serve --app``; :func:`rss_mib` reads the server's own memory numbers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack

from trio_echo import wire

from .faults import proc_status_kib


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (``VmRSS``) or its peak (``VmHWM``), in MiB."""
    return proc_status_kib(pid, field) / 1024


def settled_rss_mib(pid: int, timeout: float = 10) -> float:
    """A process's RSS once it has stopped growing (by 256 KiB or more in 0.3 s).

    For a baseline taken while the server may still be starting the tasks of
    requests it has accepted: nothing outside the process says when that is done.
    """
    deadline = time.monotonic() + timeout
    last = rss_mib(pid)
    while True:
        time.sleep(0.3)
        now = rss_mib(pid)
        if now - last < 0.25 or time.monotonic() > deadline:
            return now
        last = now


class RawPeer:
    """A blocking loopback socket that sends exactly the bytes it is given.

    ``framed``: it sends the preamble and reads the hello first. Replies come
    back from :meth:`reply` as ``(size on the wire, event)``. ``first`` is sent
    with the preamble, in the same write.
    """

    def __init__(
        self, port: int, *, framed: bool = True, timeout: float = 30, first: bytes = b""
    ) -> None:
        self.framed = framed
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buf = bytearray()
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=2**31)
        self._offset = 0
        if framed:
            try:
                self.sock.sendall(wire.PREAMBLE + first)
                _, hello = self.reply()
            except BaseException:
                self.sock.close()
                raise
            assert isinstance(hello, wire.Notification) and hello.method == "hello", hello

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            raise EOFError("the server closed the connection")
        if self.framed:
            self._buf += data
        else:
            self._unpacker.feed(data)

    def reply(self) -> tuple[int, wire.Event]:
        """The next message from the server and its size in bytes on the wire.

        Raises:
            EOFError: the server closed first.
        """
        if self.framed:
            while len(self._buf) < 4 or len(self._buf) < 4 + int.from_bytes(self._buf[:4], "big"):
                self._fill()
            size = 4 + int.from_bytes(self._buf[:4], "big")
            obj = wire.unpackb(bytes(self._buf[4:size]))
            del self._buf[:size]
            return size, wire.parse_message(obj)
        while True:
            try:
                obj = self._unpacker.unpack()
            except msgpack.OutOfData:
                self._fill()
                continue
            end = self._unpacker.tell()
            size, self._offset = end - self._offset, end
            return size, wire.parse_message(obj)

    def until_eof(self) -> list[tuple[int, wire.Event]]:
        """Every reply until the server closes."""
        seen = []
        while True:
            try:
                seen.append(self.reply())
            except EOFError:
                return seen

    def call(self, msgid: int, method: str, *params: Any) -> wire.Event:
        self.send(wire.encode_request(msgid, method, list(params), framed=self.framed))
        return self.reply()[1]

    def reset(self) -> None:
        """Vanish with a TCP reset."""
        from .faults import set_linger_zero

        set_linger_zero(self.sock)
        self.sock.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


class Peers:
    """Opens :class:`RawPeer` connections and closes them all at the end (a context manager)."""

    def __init__(self) -> None:
        self.opened: list[RawPeer] = []

    def __call__(
        self, port: int, *, framed: bool = True, timeout: float = 30, first: bytes = b""
    ) -> RawPeer:
        peer = RawPeer(port, framed=framed, timeout=timeout, first=first)
        self.opened.append(peer)
        return peer

    def __enter__(self) -> Peers:
        return self

    def __exit__(self, *exc: object) -> None:
        for peer in self.opened:
            peer.close()


# A client of its own, in its own process, so that what it measures is the
# server's latency and not the test process's: it pings every INTERVAL seconds
# until its stdin closes, then prints the round-trip times as JSON.
_PINGER = r"""
import json, select, socket, sys, time
sys.path[:0] = json.loads(sys.argv[3])
from trio_echo import wire
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=60)
interval = float(sys.argv[2])
conn = wire.Connection()
sock.sendall(conn.initiate())
def next_event():
    while True:
        event = conn.next_event()
        if event is not wire.NEED_DATA:
            return event
        conn.receive_data(sock.recv(65536))
assert next_event().method == "hello"
times = []
msgid = 0
print("ready", flush=True)
while not select.select([sys.stdin], [], [], interval)[0]:
    msgid += 1
    start = time.perf_counter()
    sock.sendall(conn.send(wire.Request(msgid, "ping", [])))
    assert next_event() == wire.Response(msgid, "pong")
    times.append(time.perf_counter() - start)
print(json.dumps(times), flush=True)
"""


class Pinger:
    """Another client pinging the server every ``interval`` s, from a process of its own."""

    def __init__(self, port: int, interval: float = 0.005) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PINGER, str(port), str(interval), json.dumps(sys.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> list[float]:
        """Stop pinging; every round-trip time measured, in seconds."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        times: list[float] = json.loads(self.proc.stdout.readline())
        self.proc.wait(30)
        self.proc.stdout.close()
        return times

    def __enter__(self) -> Pinger:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def percentile(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


#: A service for hostile tests, served with ``--app hostile_app:service``.
HOSTILE_APP = '''
import trio
import trio_echo

service = trio_echo.Service()

@service.method
def shout(text):
    """Raise with the client's text in the exception (a handler quoting its input)."""
    raise ValueError("bad text: " + repr(text))

@service.method
async def forever():
    """Never return."""
    await trio.sleep_forever()
'''


def server_env(app_folder: Path | None = None) -> dict[str, str]:
    """The environment of a server subprocess: ``hostile_app.py`` importable if
    ``app_folder`` is given (see :func:`write_app`).

    ``HOSTILE_SERVER_SRC=/path/to/src`` runs the servers from another source tree
    (a worktree of a commit before issue #10's fix, to see these tests fail there).
    """
    parts = [str(app_folder) if app_folder else "", os.environ.get("HOSTILE_SERVER_SRC", "")]
    parts.append(os.environ.get("PYTHONPATH", ""))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in parts if p))


def write_app(folder: Path) -> dict[str, str]:
    """Write ``hostile_app.py`` into ``folder``; return a :func:`server_env` that imports it."""
    (folder / "hostile_app.py").write_text(HOSTILE_APP)
    return server_env(folder)


def wait_until(predicate: Any, timeout: float, step: float = 0.02) -> float:
    """Poll ``predicate()`` until true; the seconds it took (AssertionError after ``timeout``)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true after {timeout} s")
        time.sleep(step)
    return time.monotonic() - start
