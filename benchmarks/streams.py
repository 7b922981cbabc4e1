"""Server streams against unary calls and against gRPC, on one connection, in one run.

Three measurements of 64-byte items, each on one connection, repeated in
alternating order so that the machine's drift hits them all alike:

* **trio_echo stream**: ``ticks(2**31-1, 0, 64)``, a server stream consumed as fast
  as it comes with a credit window of ``--window`` (``trio-echo bench --stream``'s
  client: a plain socket, refilled at half the window);
* **trio_echo unary**: ``echo`` of a 64-byte bin, ``--pipeline`` calls in flight;
* **trio_echo client stream**: the same stream consumed by ``trio_echo``'s async
  client (``async with client.stream(...)``, ``async for``, its default window):
  what a Python user's loop gets, beside gRPC's own Python client;
* **gRPC stream**: ``grpc.aio``'s server stream of the same items
  (``benchmarks/grpc_echo.py``'s ``Ticks``), consumed by a ``grpc.aio`` client
  on one channel: what a user would otherwise pick. Needs ``grpcio`` (the
  ``bench`` extra).

With ``taskset`` and two CPUs or more, the servers run on CPU 0 and the clients
on CPU 1. Prints a Markdown table of the medians and the ratios; the goal of
issue #14 is a trio_echo stream at least 3x its unary rate.

    python benchmarks/streams.py                 # 5 rounds of 3 s each
    python benchmarks/streams.py --quick         # a smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from trio_echo.bench.stream import measure_stream, measure_unary
from trio_echo.client.core import DEFAULT_STREAM_WINDOW

HERE = Path(__file__).resolve().parent
SIZE = 64


def pin_prefix() -> list[str]:
    """The taskset prefix that puts a server on CPU 0 (the clients then go to CPU 1)."""
    if shutil.which("taskset") and len(os.sched_getaffinity(0)) >= 2:
        return ["taskset", "-c", "0"]
    return []


def start(argv: list[str], ready: str) -> tuple[subprocess.Popen[str], int]:
    """Start a server whose stderr (or stdout) says ``ready`` with its port; return both."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    for line in proc.stdout:
        match = re.search(ready, line)
        if match:
            return proc, int(match.group(1))
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError(f"{argv[-1]} did not start")


class ItemClock:
    """Counts a stream's items: a warm-up, then ``duration`` seconds of them.

    The clock is read every 1,024 items (one item in 1,024 is checked too).
    """

    def __init__(self, duration: float, warmup: float) -> None:
        self.duration = duration
        self.count = 0
        self.base: int | None = None
        self.start = time.perf_counter() + warmup
        self.end = 0.0

    def tick(self, item: bytes) -> tuple[int, float] | None:
        """Count ``item``; the items and seconds measured once the time is up."""
        self.count += 1
        if self.count & 1023:
            return None
        if len(item) != SIZE:
            raise RuntimeError("bad item")
        now = time.perf_counter()
        if self.base is None:
            if now >= self.start:
                self.base, self.start, self.end = self.count, now, now + self.duration
        elif now >= self.end:
            return self.count - self.base, now - self.start
        return None


def grpc_stream_rate(port: int, duration: float, warmup: float) -> tuple[int, float]:
    """Items per second of the gRPC server stream, one channel, one call."""
    import grpc  # type: ignore[import-untyped, unused-ignore]
    from grpc_echo import TICKS, TICKS_REQUEST

    async def main() -> tuple[int, float]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream(TICKS)(TICKS_REQUEST.pack(2**32 - 1, SIZE))
            clock = ItemClock(duration, warmup)
            async for item in call:
                if measured := clock.tick(item):
                    call.cancel()
                    return measured
            raise RuntimeError("the gRPC stream ended early")

    return asyncio.run(main())


def client_stream_rate(port: int, duration: float, warmup: float) -> tuple[int, float]:
    """Items per second of ``ticks`` consumed by the async client with its default window."""
    import trio

    import trio_echo

    async def main() -> tuple[int, float]:
        async with (
            trio_echo.open_client("127.0.0.1", port) as client,
            client.stream("ticks", 2**31 - 1, 0, SIZE) as stream,
        ):
            clock = ItemClock(duration, warmup)
            async for item in stream:
                if measured := clock.tick(item):
                    return measured  # leaving the block cancels
        raise RuntimeError("the stream ended early")

    return trio.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--pipeline", type=int, default=32)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="1 round of 0.5 s")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 0.5, 0.1
    pin = pin_prefix()
    servers = []
    try:
        trio_server, trio_port = start(
            [*pin, sys.executable, "-m", "trio_echo", "serve", "--port", "0"],
            r"listening on \S+:(\d+)",
        )
        servers.append(trio_server)
        try:
            import grpc  # type: ignore[import-untyped, unused-ignore]  # noqa: F401

            grpc_server, grpc_port = start(
                [*pin, sys.executable, "grpc_echo.py", "--port", "0", "--ready"], r"port (\d+)"
            )
            servers.append(grpc_server)
        except ImportError:
            grpc_port = 0
            print("grpcio is not installed (the bench extra): no gRPC figures", file=sys.stderr)
        if pin:
            os.sched_setaffinity(0, {1})
        runs: dict[str, Callable[[], tuple[int, float]]] = {
            "trio_echo stream": lambda: measure_stream(
                "127.0.0.1", trio_port, SIZE, args.window, args.duration, args.warmup
            ),
            "trio_echo unary": lambda: measure_unary(
                "127.0.0.1", trio_port, SIZE, args.pipeline, args.duration, args.warmup
            ),
            "trio_echo client stream": lambda: client_stream_rate(
                trio_port, args.duration, args.warmup
            ),
        }
        if grpc_port:
            runs["gRPC stream"] = lambda: grpc_stream_rate(grpc_port, args.duration, args.warmup)
        rates: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else reversed(names):
                count, seconds = runs[name]()
                rates[name].append(count / seconds)
                print(f"round {r + 1}: {name:18} {count / seconds:12,.0f} /s", file=sys.stderr)
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(10)
    median = {name: statistics.median(values) for name, values in rates.items()}
    unary = median["trio_echo unary"]
    stream = median["trio_echo stream"]
    print(f"| one connection, {SIZE} B items | per second (median of {args.rounds}) | ratio |")
    print("|---|---:|---:|")
    print(f"| trio_echo server stream (window {args.window}) | {stream:,.0f} items | 1 |")
    print(f"| trio_echo unary echo ({args.pipeline} in flight) | {unary:,.0f} calls | "
          f"{stream / unary:.2f}x fewer |")  # fmt: skip
    client = median["trio_echo client stream"]
    print(f"| trio_echo async client's stream (`async for`, window {DEFAULT_STREAM_WINDOW}) | "
          f"{client:,.0f} items | {stream / client:.2f}x fewer |")  # fmt: skip
    if "gRPC stream" in median:
        grpc_rate = median["gRPC stream"]
        print(f"| gRPC server stream (grpc.aio, its own Python client) | {grpc_rate:,.0f} items | "
              f"{stream / grpc_rate:.2f}x fewer |")  # fmt: skip
        print(f"\ntrio_echo's async client / gRPC's client = {client / grpc_rate:.2f}")
    goal = "met" if stream >= 3 * unary else "NOT met"
    print(f"\nstream / unary = {stream / unary:.2f} (goal >= 3: {goal})")
    if args.json:
        print(json.dumps({"median_per_s": median, "rounds": rates}))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
