"""Many concurrent calls on one connection, with timing printed.

    trio-echo serve &
    python clients/concurrent_calls.py [--host H] [--port 7000] [--calls 10000] [--tasks 100]

Uses only the public API. Two runs on one connection:

1. ``--calls`` echo calls from ``--tasks`` tasks: the calls share the
   connection, and requests queued at the same moment leave in one write.
2. 100 concurrent ``sleep(0.2)`` calls: they overlap on the server, so the
   whole batch takes about 0.2 s, not 20 s.
"""

from __future__ import annotations

import argparse
import time

import trio

import trio_echo


async def main(host: str, port: int, calls: int, tasks: int) -> None:
    async with trio_echo.open_client(host, port) as client:
        print(f"connected to {client.server_info['server']} at {host}:{port}")

        async def worker(first: int) -> None:
            for i in range(first, calls, tasks):
                assert await client.call("echo", i) == i

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for first in range(tasks):
                nursery.start_soon(worker, first)
        elapsed = time.perf_counter() - start
        print(
            f"{calls} echo calls from {tasks} tasks: {elapsed:.3f} s, "
            f"{calls / elapsed:,.0f} calls/s, {elapsed / calls * 1e6:.1f} us/call"
        )

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(client.call, "sleep", 0.2)
        print(f"100 concurrent sleep(0.2) calls: {time.perf_counter() - start:.3f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=trio_echo.wire.DEFAULT_PORT)
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument("--tasks", type=int, default=100)
    args = parser.parse_args()
    trio.run(main, args.host, args.port, args.calls, args.tasks)
