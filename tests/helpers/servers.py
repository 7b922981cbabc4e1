"""Servers for tests: in this Trio run (in memory or on loopback), or in a subprocess."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import trio
import trio.testing

from trio_echo import Server


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


def run_cli(
    *args: str, cwd: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real ``trio-echo`` command (``python -m trio_echo ARGS``) to completion."""
    return subprocess.run(
        [sys.executable, "-m", "trio_echo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def run_python(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -c SCRIPT ARGS`` to completion in a fresh interpreter (for what needs
    a process of its own, or one where nothing has been imported yet)."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def serve_fails(*args: str, pass_fds: tuple[int, ...] = ()) -> tuple[int, str]:
    """Run ``python -m trio_echo serve ARGS`` expecting it to exit at startup: (code, stderr)."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "trio_echo", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        pass_fds=pass_fds,
    )
    return result.returncode, result.stderr


class ServerProcess:
    """``python -m trio_echo serve`` in a subprocess on a free port (use as a context manager).

    ``port=None`` leaves ``--port`` out (for ``--unix`` or ``--fd`` alone; then
    ``ready`` must match the listening line without a port and ``.port`` is 0).
    """

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        ready: str = r"listening on \S+:(\d+)",
        cwd: str | None = None,
        port: str | None = "0",
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trio_echo",
                "serve",
                *(["--port", port] if port else []),
                *args,
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
            pass_fds=pass_fds,
        )
        self.log: list[str] = []
        self.port = self._wait_for_port(ready)
        # Keep draining stderr so a chatty server never blocks on a full pipe.
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def _wait_for_port(self, ready: str) -> int:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            match = re.search(ready, line)
            if match:
                return int(match.group(1)) if match.groups() else 0
        raise RuntimeError("server exited before listening:\n" + "".join(self.log))

    def stop(self, sig: int | None = None, timeout: float = 30) -> int:
        """Signal the server (SIGTERM by default) and return its exit code."""
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


def free_port() -> int:
    """A loopback port that was free a moment ago (for a server that must be told its port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def closes_before_hello() -> Iterator[int]:
    """A loopback port whose one connection is accepted and closed before any hello."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def close_first() -> None:
            conn, _ = listener.accept()
            conn.close()

        thread = threading.Thread(target=close_first)
        thread.start()
        try:
            yield listener.getsockname()[1]
        finally:
            thread.join(10)
