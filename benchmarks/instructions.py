"""Count the CPU instructions the server spends per request (deterministic, noise-free).

Wall-clock benchmarks on a shared VM move by +-10% between runs, too much to judge a
change to the engine by. This script runs trio_echo's connection code behind an
in-memory stream that yields to Trio exactly like a socket does (one checkpoint per
receive and per send), feeds it the same reads over and over (``--per-read`` requests
each), and counts the instructions with ``valgrind --tool=callgrind``: twice, with
``--reads`` and 2 x ``--reads`` reads, so that start-up cancels out. The same is done for
two reference servers written here, so the figures come with a ratio:

* ``inline``: the least a Trio msgpack-rpc server can do (decode each read, answer every
  request inline, one ``send_all`` per read), like the "trio floor" of the goals;
* ``spawn``: the naive design (a task per request, replies through a sender task).

It measures the engine's own decoding, dispatch and batching. The in-memory stream is
not a socket, so the server takes the generic stream path here (``receive_some`` and
``send_all``, two checkpoints per read), not its direct socket path (one checkpoint per
read, see ``trio_echo/server/sockio.py``), and kernel time is not counted; over real sockets the
server does better against the references than these ratios say. Needs valgrind
(``apt-get install valgrind``)::

    python benchmarks/instructions.py                      # msgpack-rpc echo vs inline
    python benchmarks/instructions.py --mode framed
    python benchmarks/instructions.py --method aecho --reference spawn
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
from typing import Any

import msgpack
import trio

import trio_echo
from trio_echo import wire

PAYLOAD = b"x" * 64


class LoopStream(trio.abc.Stream):
    """Hands out the same read ``reads`` times, then EOF; counts the bytes sent."""

    def __init__(self, first: bytes, data: bytes, reads: int, keep: bool = False) -> None:
        self.first = first
        self.data = data
        self.reads = reads
        self.sent = 0
        #: Everything sent, if ``keep`` (to check the replies; not while counting).
        self.received_back = b""
        self.keep = keep

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.cancel_shielded_checkpoint()  # a socket read yields once
        if self.first:
            first, self.first = self.first, b""
            return first
        if not self.reads:
            return b""
        self.reads -= 1
        return self.data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.cancel_shielded_checkpoint()
        self.sent += len(data)
        if self.keep:
            self.received_back += bytes(data)

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def aecho(value: Any) -> Any:
    return value


def echo(value: Any) -> Any:
    return value


INLINE_METHODS = {"echo": echo}


async def inline_reference(stream: LoopStream, framed: bool) -> None:
    """Decode each read, answer each echo inline, send the replies of a read at once."""
    pack = msgpack.Packer().pack
    unpacker = msgpack.Unpacker()
    buffered = b""
    if framed:
        assert await stream.receive_some(65536) == wire.PREAMBLE  # (LoopStream sends it alone)
    while data := await stream.receive_some(65536):
        if framed:
            buffered += data
            messages: Any = []
            while len(buffered) >= 4:
                end = 4 + int.from_bytes(buffered[:4], "big")
                if len(buffered) < end:
                    break
                messages.append(msgpack.unpackb(buffered[4:end]))
                buffered = buffered[end:]
        else:
            unpacker.feed(data)
            messages = unpacker
        out = []
        for request in messages:
            if type(request) is list and len(request) == 4 and request[0] == 0:
                _, msgid, name, params = request
                handler = INLINE_METHODS.get(name)
                if handler is not None:
                    try:
                        body = pack([1, msgid, None, handler(*params)])
                    except Exception as exc:
                        body = pack([1, msgid, str(exc), None])
                    if framed:
                        out.append(len(body).to_bytes(4, "big"))
                    out.append(body)
        await stream.send_all(b"".join(out))


async def spawn_reference(stream: LoopStream, framed: bool) -> None:
    """A task per request; replies go through a channel to one sender task."""
    pack = msgpack.Packer().pack
    unpacker = msgpack.Unpacker()
    send, receive = trio.open_memory_channel[bytes](math.inf)

    async def sender() -> None:
        async for reply in receive:
            batch = [reply]
            while True:
                try:
                    batch.append(receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            await stream.send_all(b"".join(batch))

    async def call(msgid: int, params: list[Any]) -> None:
        with trio.CancelScope():
            body = pack([1, msgid, None, await aecho(*params)])
        send.send_nowait(len(body).to_bytes(4, "big") + body if framed else body)

    assert not framed, "the spawn reference speaks msgpack-rpc only"
    async with trio.open_nursery() as outer:
        outer.start_soon(sender)
        async with send, trio.open_nursery() as calls:
            while data := await stream.receive_some(65536):
                unpacker.feed(data)
                for _, msgid, _, params in unpacker:
                    calls.start_soon(call, msgid, params)


def workload(
    target: str,
    mode: str,
    method: str,
    per_read: int,
    reads: int,
    keep: bool = False,
    metrics: bool = False,
) -> LoopStream:
    """Serve ``reads`` reads of ``per_read`` requests with ``target``; return the stream."""
    framed = mode == "framed"
    requests = [wire.encode_request(i, method, [PAYLOAD], framed=framed) for i in range(per_read)]
    stream = LoopStream(wire.PREAMBLE if framed else b"", b"".join(requests), reads, keep)

    async def main() -> None:
        if target == "trio_echo":
            service = trio_echo.Service()
            service.method(aecho)
            await trio_echo.Server(service, metrics=metrics).serve_stream(stream)
        elif target == "inline":
            await inline_reference(stream, framed)
        else:
            await spawn_reference(stream, framed)

    trio.run(main)
    return stream


def count(target: str, args: argparse.Namespace, reads: int) -> int:
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, os.path.abspath(__file__), "--run", target,
        "--mode", args.mode, "--method", args.method,
        "--per-read", str(args.per_read), "--reads", str(reads),
        *(["--metrics"] if args.metrics else []),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", result.stderr)
    assert found, result.stderr[-2000:]
    return int(found.group(1))


def per_request(target: str, args: argparse.Namespace) -> float:
    reads: int = args.reads
    per_read: int = args.per_read
    small = count(target, args, reads)
    large = count(target, args, 2 * reads)
    return (large - small) / (reads * per_read)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["mprpc", "framed"], default="mprpc")
    parser.add_argument("--method", default="echo", help="echo (inline) or aecho (async def)")
    parser.add_argument("--reference", choices=["inline", "spawn"], default="inline")
    parser.add_argument("--per-read", type=int, default=16)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="trio_echo counts per-method metrics (--metrics-port)",
    )
    parser.add_argument("--run", choices=["trio_echo", "inline", "spawn"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        workload(args.run, args.mode, args.method, args.per_read, args.reads, metrics=args.metrics)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found (apt-get install valgrind)")
    ours = per_request("trio_echo", args)
    reference = per_request(args.reference, args)
    print(f"{args.mode} {args.method}, {args.per_read} requests per read:")
    print(f"  trio_echo          {ours:10,.0f} instructions/request")
    print(f"  {args.reference + ' reference':18} {reference:10,.0f} instructions/request")
    print(f"  reference / trio_echo = {reference / ours:.3f} (higher is better for trio_echo)")


if __name__ == "__main__":
    main()
