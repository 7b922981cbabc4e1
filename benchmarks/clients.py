"""Drive a server with one kind of client for a while; print calls/s as one JSON line.

The client side of benchmarks/run.py: each kind is a way a user would call a
server from Python, all doing the same unary echo of ``--size`` bytes:

* ``bare``: a plain blocking socket, ``sendall`` a framed request, ``recv``
  the framed reply, decode it: the least any Python caller can do per call,
  the baseline of the sequential kinds;
* ``bare-trio``: the same exchange from one Trio task (``os.write``, then
  ``wait_readable`` and ``os.read``): the least a Trio caller can do, since
  waiting for a reply costs it one trip through Trio's scheduler;
* ``async``: one Trio task calling ``await client.call("echo", payload)`` in a loop;
* ``blocking``: one thread calling ``client.call("echo", payload)`` in a loop;
* ``async-concurrent``: ``--tasks`` Trio tasks sharing one ``open_client`` connection;
* ``bare-concurrent``: the baseline of that one: one thread keeping ``--tasks``
  framed requests in flight on a plain socket (pipelined, matched by msgid);
* ``grpc`` / ``grpc-concurrent``: ``grpc.aio`` unary calls on one channel to
  ``benchmarks/grpc_echo.py`` (``--tasks`` concurrent callers);
* ``mprpc-peer``: a msgpack-rpc peer's own client (``--peer`` names which),
  in that peer's environment.

Which ``trio_echo`` is used is the one on ``sys.path``: benchmarks/run.py
sets ``PYTHONPATH`` to compare two checkouts.

    python benchmarks/clients.py async --port 7000 --duration 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

KINDS = (
    "bare",
    "bare-trio",
    "async",
    "blocking",
    "async-concurrent",
    "bare-concurrent",
    "grpc",
    "grpc-concurrent",
    "mprpc-peer",
)
PREAMBLE = b"\x00TECHO\x00\x01"


#: The client's CPU seconds at the start and the end of the measured window.
WINDOW_CPU = [0.0, 0.0]
#: The same for the server (``--server-pid``), when given.
SERVER_CPU = [0.0, 0.0]
SERVER_PID = [0]


def mark(i: int) -> None:
    """Note the CPU seconds at the start (0) or the end (1) of the measured window."""
    t = os.times()
    WINDOW_CPU[i] = t.user + t.system
    if SERVER_PID[0]:
        SERVER_CPU[i] = process_cpu_s(SERVER_PID[0])


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process, from /proc (0 where there is none)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_loop(call: Callable[[], None], warmup: float, duration: float) -> tuple[int, float]:
    """Call ``call`` for ``warmup`` s, then count calls for ``duration`` s: (calls, seconds)."""
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        call()
    n = 0
    mark(0)
    t0 = time.perf_counter()
    end = t0 + duration
    while True:
        for _ in range(16):
            call()
        n += 16
        now = time.perf_counter()
        if now >= end:
            mark(1)
            return n, now - t0


# -- bare sockets ------------------------------------------------------------------------


def bare_socket(port: int) -> socket.socket:
    """A connected socket past the server's hello."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(PREAMBLE)
    recv_frame(sock, bytearray())  # the hello
    return sock


def recv_frame(sock: socket.socket, buf: bytearray) -> bytes:
    """The next frame's body; ``buf`` keeps what arrived beyond it."""
    while True:
        if len(buf) >= 4:
            n = 4 + int.from_bytes(buf[:4], "big")
            if len(buf) >= n:
                body = bytes(buf[4:n])
                del buf[:n]
                return body
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        buf += data


def run_bare(args: argparse.Namespace, payload: bytes) -> tuple[int, float]:
    import msgpack

    sock = bare_socket(args.port)
    packb, unpackb = msgpack.packb, msgpack.unpackb
    buf = bytearray()
    msgid = [0]

    def call() -> None:
        msgid[0] += 1
        body = packb([0, msgid[0], "echo", [payload]])
        sock.sendall(struct.pack(">I", len(body)) + body)
        reply = unpackb(recv_frame(sock, buf))
        if reply[1] != msgid[0] or reply[2] is not None or reply[3] != payload:
            raise RuntimeError(f"bad reply {reply!r}")

    try:
        return timed_loop(call, args.warmup, args.duration)
    finally:
        sock.close()


def run_bare_trio(args: argparse.Namespace, payload: bytes) -> tuple[int, float]:
    """The ``bare`` exchange from one Trio task: one ``wait_readable`` per reply."""
    import msgpack
    import trio

    sock = bare_socket(args.port)
    sock.setblocking(False)
    fd = sock.fileno()
    packb, unpackb = msgpack.packb, msgpack.unpackb
    buf = bytearray()
    msgid = [0]

    async def call(method: str, data: bytes) -> Any:
        msgid[0] += 1
        body = packb([0, msgid[0], method, [data]])
        os.write(fd, struct.pack(">I", len(body)) + body)
        while True:
            await trio.lowlevel.wait_readable(fd)
            buf.extend(os.read(fd, 65536))
            if len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                break
        n = 4 + int.from_bytes(buf[:4], "big")
        reply = unpackb(bytes(buf[4:n]))
        del buf[:n]
        if reply[1] != msgid[0] or reply[2] is not None:
            raise RuntimeError(f"bad reply {reply!r}")
        return reply[3]

    async def main() -> tuple[int, float]:
        return await counted(call, args, payload, 1)

    try:
        return trio.run(main)
    finally:
        sock.close()


def run_bare_concurrent(args: argparse.Namespace, payload: bytes) -> tuple[int, float]:
    """``--tasks`` requests kept in flight on one plain socket, one thread."""
    import msgpack

    sock = bare_socket(args.port)
    packb = msgpack.packb
    buf = bytearray()
    next_id = 0

    def request() -> bytes:
        nonlocal next_id
        next_id += 1
        body = packb([0, next_id, "echo", [payload]])
        return struct.pack(">I", len(body)) + body

    sock.sendall(b"".join(request() for _ in range(args.tasks)))
    done = 0
    counting_from = 0
    t0 = time.perf_counter()
    start = t0 + args.warmup
    end = start + args.duration
    t = t0
    try:
        while t < end:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            buf += data
            out = []
            while len(buf) >= 4:
                n = 4 + int.from_bytes(buf[:4], "big")
                if len(buf) < n:
                    break
                reply = msgpack.unpackb(bytes(buf[4:n]))
                del buf[:n]
                if reply[2] is not None or reply[3] != payload:
                    raise RuntimeError(f"bad reply {reply!r}")
                done += 1
                out.append(request())
            sock.sendall(b"".join(out))
            t = time.perf_counter()
            if not counting_from and t >= start:
                counting_from, start = done, t
                mark(0)
        mark(1)
        return done - counting_from, t - start
    finally:
        sock.close()


# -- trio_echo's clients -----------------------------------------------------------------


def run_blocking(args: argparse.Namespace, payload: bytes) -> tuple[int, float]:
    import trio_echo

    with trio_echo.connect("127.0.0.1", args.port) as client:

        def call() -> None:
            if client.call("echo", payload) != payload:
                raise RuntimeError("bad reply")

        return timed_loop(call, args.warmup, args.duration)


def run_async(args: argparse.Namespace, payload: bytes) -> tuple[int, float]:
    import trio

    import trio_echo

    async def main() -> tuple[int, float]:
        async with trio_echo.open_client("127.0.0.1", args.port) as client:
            return await counted(client.call, args, payload, 1 if args.kind == "async" else None)

    return trio.run(main)


async def counted(
    call: Callable[..., Any],
    args: argparse.Namespace,
    payload: bytes,
    tasks: int | None,
    loop: str = "trio",
) -> tuple[int, float]:
    """``tasks`` (or ``--tasks``) tasks calling in a loop: (calls in the window, seconds).

    ``loop``: the tasks are Trio's (a nursery) or asyncio's (``gather``).
    """
    count = [0]
    t0 = time.perf_counter()
    start, end = t0 + args.warmup, t0 + args.warmup + args.duration
    window: list[float] = []

    async def caller() -> None:
        perf = time.perf_counter
        while True:
            for _ in range(8):
                if await call("echo", payload) != payload:
                    raise RuntimeError("bad reply")
            now = perf()
            if now >= start:
                if not window:
                    window.append(now)
                    mark(0)
                    count[0] = 0
                if now >= end:
                    if WINDOW_CPU[1] < WINDOW_CPU[0]:
                        mark(1)
                    return
            count[0] += 8

    if loop == "trio":
        import trio

        async with trio.open_nursery() as nursery:
            for _ in range(tasks or args.tasks):
                nursery.start_soon(caller)
    else:
        import asyncio

        await asyncio.gather(*(caller() for _ in range(tasks or args.tasks)))
    return count[0], time.perf_counter() - window[0]


# -- gRPC --------------------------------------------------------------------------------


def run_grpc(args: argparse.Namespace, payload: bytes) -> tuple[int, float]:
    import asyncio

    import grpc  # type: ignore[import-untyped]

    async def main() -> tuple[int, float]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{args.port}") as channel:
            echo = channel.unary_unary("/trio_echo.bench.Echo/Echo")
            await echo(payload)

            async def call(method: str, data: bytes) -> Any:
                return await echo(data)

            tasks = 1 if args.kind == "grpc" else args.tasks
            return await counted(call, args, payload, tasks, loop="asyncio")

    return asyncio.run(main())


# -- the msgpack-rpc peers ---------------------------------------------------------------


def run_peer(args: argparse.Namespace, payload: bytes) -> tuple[int, float]:
    """The peer's own client, one caller in a loop (run in that peer's venv)."""
    if args.peer == "mprpc":
        from mprpc import RPCClient  # type: ignore[import-not-found]

        mclient = RPCClient("127.0.0.1", args.port)
        return timed_loop(lambda: check(mclient.call("echo", payload), payload), args.warmup,
                          args.duration)  # fmt: skip
    if args.peer == "msgpackrpc":
        import msgpackrpc  # type: ignore[import-not-found]

        pclient = msgpackrpc.Client(msgpackrpc.Address("127.0.0.1", args.port))
        return timed_loop(lambda: check(pclient.call("echo", payload), payload), args.warmup,
                          args.duration)  # fmt: skip
    if args.peer == "aiorpc":
        import asyncio

        from aiorpc import RPCClient as AClient  # type: ignore[import-not-found]

        async def main() -> tuple[int, float]:
            import msgpack
            from aiorpc.connection import Connection  # type: ignore[import-not-found]

            aclient = AClient("127.0.0.1", args.port)
            # Its own connect passes loop= to asyncio.open_connection, which Python 3.10
            # removed: connect for it, as it would, and hand it the streams.
            reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
            aclient._conn = Connection(reader, writer, msgpack.Unpacker(raw=False, use_list=False))

            async def call(method: str, data: bytes) -> bytes:
                check(await aclient.call(method, data), data)  # it may answer a str
                return data

            try:
                return await counted(call, args, payload, 1, loop="asyncio")
            finally:
                aclient.close()

        return asyncio.run(main())
    raise SystemExit(f"unknown peer {args.peer!r}")


def check(result: Any, payload: bytes) -> None:
    if result != payload and result != payload.decode("latin-1"):
        raise RuntimeError(f"bad reply {result!r}")


RUNNERS: dict[str, Callable[[argparse.Namespace, bytes], tuple[int, float]]] = {
    "bare": run_bare,
    "bare-concurrent": run_bare_concurrent,
    "bare-trio": run_bare_trio,
    "async": run_async,
    "async-concurrent": run_async,
    "blocking": run_blocking,
    "grpc": run_grpc,
    "grpc-concurrent": run_grpc,
    "mprpc-peer": run_peer,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--size", type=int, default=64, help="payload bytes")
    p.add_argument("--tasks", type=int, default=100, help="callers of the concurrent kinds")
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--peer", default="", help="mprpc-peer: mprpc, msgpackrpc or aiorpc")
    p.add_argument("--server-pid", type=int, default=0, help="report this process's CPU too")
    args = p.parse_args(argv)
    SERVER_PID[0] = args.server_pid
    payload = bytes(range(256)) * (args.size // 256) + bytes(range(args.size % 256))
    if args.kind == "mprpc-peer":
        payload = b"x" * args.size  # the peers may answer bytes as str
    calls, seconds = RUNNERS[args.kind](args, payload)
    cpu = WINDOW_CPU[1] - WINDOW_CPU[0]
    out = {
        "kind": args.kind,
        "calls": calls,
        "seconds": round(seconds, 3),
        "calls_per_s": round(calls / seconds, 1),
        # The client's own CPU in the measured window: per call, and in % of one CPU.
        "client_cpu_us_per_call": round(1e6 * cpu / max(calls, 1), 1),
        "client_cpu_pct": round(100 * cpu / seconds, 1),
    }
    if args.server_pid:  # the server's CPU in the same window, in % of one CPU
        out["server_cpu_pct"] = round(100 * (SERVER_CPU[1] - SERVER_CPU[0]) / seconds, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
