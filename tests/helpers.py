"""Test helpers: a bare sans-IO peer over any Trio stream, and server fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from trio_echo import Server, wire


class Peer:
    """A test client made of a Trio stream and a bare :class:`wire.Connection`."""

    def __init__(self, stream: trio.abc.Stream, mode: wire.Mode = wire.Mode.FRAMED) -> None:
        self.stream = stream
        self.conn = wire.Connection(wire.Role.CLIENT, mode)
        self.pending: list[wire.Event] = []

    async def start(self) -> dict[str, Any]:
        """Send the preamble; return the hello info (framed mode)."""
        await self.stream.send_all(self.conn.initiate())
        hello = await self.next_event()
        assert isinstance(hello, wire.Notification) and hello.method == "hello", hello
        info: dict[str, Any] = hello.params[0]
        return info

    async def send(self, *events: wire.Event) -> None:
        await self.stream.send_all(b"".join(self.conn.send(e) for e in events))

    async def request(self, msgid: int, method: str, *params: Any, **options: Any) -> None:
        await self.send(wire.Request(msgid, method, list(params), options or None))

    async def next_event(self) -> wire.Event:
        """The next event; raises EOFError if the server closed first."""
        with trio.fail_after(10):
            while True:
                event = self.conn.next_event()
                if event is not wire.NEED_DATA:
                    assert not isinstance(event, type(wire.NEED_DATA))
                    return event
                self.conn.receive_data(await self.stream.receive_some(65536))

    async def events(self, n: int) -> list[wire.Event]:
        return [await self.next_event() for _ in range(n)]

    async def call(self, msgid: int, method: str, *params: Any, **options: Any) -> wire.Event:
        await self.request(msgid, method, *params, **options)
        return await self.next_event()

    async def expect_close(self) -> list[wire.Event]:
        """Read until EOF; return the events that came before it."""
        seen = []
        with trio.fail_after(10):
            while True:
                try:
                    seen.append(await self.next_event())
                except EOFError:
                    return seen


@asynccontextmanager
async def memory_server(
    server: Server | None = None, **options: Any
) -> AsyncIterator[tuple[Server, trio.testing.MemoryStapledStream[Any], trio.Nursery]]:
    """A server serving one in-memory connection; yields (server, client stream, nursery)."""
    server = server or Server(**options)
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_stream, server_side)
        yield server, client, nursery
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def tcp_server(
    server: Server | None = None, **options: Any
) -> AsyncIterator[tuple[Server, int]]:
    """A server on a free loopback port; yields (server, port)."""
    server = server or Server(**options)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve, "127.0.0.1", 0)
        yield server, listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def framed_peer(port: int) -> AsyncIterator[Peer]:
    """A framed peer connected over loopback, past the hello."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        peer = Peer(stream)
        await peer.start()
        yield peer


class ServerProcess:
    """``python -m trio_echo serve`` in a subprocess on a free port (use as a context manager)."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        ready: str = r"listening on \S+:(\d+)",
        cwd: str | None = None,
    ) -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trio_echo", "serve", "--port", "0", *args],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.log: list[str] = []
        self.port = self._wait_for_port(ready)
        # Keep draining stderr so a chatty server never blocks on a full pipe.
        import threading

        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def _wait_for_port(self, ready: str) -> int:
        import re

        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            match = re.search(ready, line)
            if match:
                return int(match.group(1))
        raise RuntimeError("server exited before listening:\n" + "".join(self.log))

    def stop(self, sig: int | None = None, timeout: float = 30) -> int:
        """Signal the server (SIGTERM by default) and return its exit code."""
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._drain.join(5)
        return code

    def wait(self, timeout: float = 30) -> int:
        """Wait for the server to exit by itself; return its exit code."""
        code = self.proc.wait(timeout)
        self._drain.join(5)
        return code

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._drain.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
