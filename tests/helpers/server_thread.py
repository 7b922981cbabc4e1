"""A real server on a loopback port, run by ``trio.run`` in a background thread.

For tests of clients that are not Trio tasks: the blocking client, the CLI in
a subprocess, the Node.js client.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import trio
import trio.testing

from trio_echo import Server, Service
from trio_echo.server.listeners import open_unix_listener

T = TypeVar("T")


@dataclass
class ServerThread:
    """A running server: its port, the Server object, and a way into its Trio run."""

    server: Server
    port: int
    token: trio.lowlevel.TrioToken
    scope: trio.CancelScope

    def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run an async function in the server's Trio thread and return its result."""
        return trio.from_thread.run(fn, trio_token=self.token)

    def run_sync(self, fn: Callable[[], T]) -> T:
        """Run a sync function in the server's Trio thread (for Trio objects)."""
        return trio.from_thread.run_sync(fn, trio_token=self.token)

    def settle(self) -> None:
        """Wait until every task in the server's run is blocked (all input handled)."""
        self.run(trio.testing.wait_all_tasks_blocked)

    def kill(self) -> None:
        """Stop the server at once, dropping every connection."""
        self.run_sync(self.scope.cancel)


@contextmanager
def server_thread(
    service: Service | None = None, *, unix: str | None = None, **options: Any
) -> Iterator[ServerThread]:
    """Serve on a free loopback port (or the Unix socket ``unix``) in a background thread.

    The server stops on exit. With ``unix``, ``.port`` is 0.
    """
    started: queue.Queue[ServerThread | BaseException] = queue.Queue()
    server = Server(service, **options)

    async def main() -> None:
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    if unix is None:
                        listeners = await nursery.start(server.serve, "127.0.0.1", 0)
                        port = listeners[0].socket.getsockname()[1]
                    else:
                        listener, _ = open_unix_listener(unix)
                        await nursery.start(server.serve_listeners, [listener])
                        port = 0
                    token = trio.lowlevel.current_trio_token()
                    started.put(ServerThread(server, port, token, scope))
        except BaseException as exc:  # pragma: no cover - reported to the test
            started.put(exc)
            raise

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    running = started.get(timeout=10)
    if isinstance(running, BaseException):  # pragma: no cover
        raise running
    try:
        yield running
    finally:
        try:
            running.kill()
        except trio.RunFinishedError:
            pass  # killed by the test already
        thread.join(timeout=10)
        assert not thread.is_alive()
