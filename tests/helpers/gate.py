"""The one gate: server methods that wait until the test lets them through."""

from __future__ import annotations

import threading
from typing import Any

import trio

from trio_echo import Service
from trio_echo.errors import remote_error


class Gate:
    """Server methods that wait until the test opens the gate, and some that fail.

    ``gate.service`` holds, beside the built-ins:

    * ``block()``: ``async def``; sets :attr:`entered`, then waits for the gate;
    * ``wait_gate()``: ``blocking=True``; waits for the gate on a worker thread;
    * ``await_forever()``: ``async def`` that never returns;
    * ``raise_inline()``, ``raise_async()``, ``raise_blocking()``: one raising
      handler of each kind;
    * ``aecho(value)``, ``becho(value)``: echoes run as ``async def`` and ``blocking=True``;
    * ``fail(code)``: answers with that error code.

    :attr:`entered` is a :class:`trio.Event` of the server's Trio run, so a test
    whose server runs in another thread waits for it with
    ``srv.run(gate.entered.wait)`` and opens the gate with ``srv.run_sync(gate.open)``.
    """

    def __init__(self) -> None:
        #: Set when ``block`` starts waiting.
        self.entered = trio.Event()
        #: How many ``wait_gate`` calls have reached the gate.
        self.threads_waiting = 0
        self._opened = trio.Event()
        self._opened_for_threads = threading.Event()
        self.service = _service(self)

    def open(self) -> None:
        """Let every waiting handler finish. Call it in the server's Trio run."""
        self._opened.set()
        self._opened_for_threads.set()

    async def wait(self) -> None:
        """Wait for the gate in a Trio task (the server's)."""
        self.entered.set()
        await self._opened.wait()

    def wait_in_thread(self) -> None:
        """Wait for the gate on a worker thread (bounded, so that no test hangs)."""
        self.threads_waiting += 1
        self._opened_for_threads.wait(30)


def _service(gate: Gate) -> Service:
    service = Service()

    @service.method
    async def block() -> str:
        """Wait for the test."""
        await gate.wait()
        return "opened"

    @service.method(blocking=True)
    def wait_gate() -> str:
        gate.wait_in_thread()
        return "opened"

    @service.method
    def fail(code: str) -> None:
        """Answer with the given error code."""
        raise remote_error(code, f"failing with {code}")

    @service.method
    async def await_forever() -> None:
        await trio.sleep_forever()

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
