"""A gRPC unary echo server (``grpc.aio``), the alternative benchmarks/run.py compares with.

A generic handler with bytes in and bytes out (no protoc, no protobuf
messages): ``/trio_echo.bench.Echo/Echo`` returns its request, and
``/trio_echo.bench.Echo/Ticks`` is a server stream (``benchmarks/streams.py``):
its request is two big-endian uint32, ``n`` and ``size``, and it sends ``n``
items of ``size`` bytes (the item's number in the first 8), as trio_echo's
``ticks(n, 0, size)`` does. Its client is
``benchmarks/clients.py grpc`` (one caller) and ``grpc-concurrent`` (many
callers on one channel). Needs ``grpcio`` (the ``bench`` extra).

usage: python benchmarks/grpc_echo.py --port 9003
"""

from __future__ import annotations

import argparse
import asyncio
import struct
from collections.abc import AsyncIterator

import grpc  # type: ignore[import-untyped, unused-ignore]

METHOD = "/trio_echo.bench.Echo/Echo"
TICKS = "/trio_echo.bench.Echo/Ticks"
TICKS_REQUEST = struct.Struct(">II")


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
    return request


async def ticks(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:  # type: ignore[type-arg]
    n, size = TICKS_REQUEST.unpack(request)
    pad = bytes(max(size - 8, 0))
    for i in range(n):
        yield i.to_bytes(8, "big") + pad


def handler() -> grpc.GenericRpcHandler:
    """The generic handler serving ``Echo`` and ``Ticks``."""
    return grpc.method_handlers_generic_handler(
        "trio_echo.bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),  # bytes in, bytes out
            "Ticks": grpc.unary_stream_rpc_method_handler(ticks),
        },
    )


async def serve(host: str, port: int, ready: bool = False) -> None:
    """Serve until cancelled; with ``ready``, print ``port N`` once listening (port 0: any)."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    if ready:
        print("port", bound, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9003)
    parser.add_argument("--ready", action="store_true", help="print 'port N' once listening")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.host, args.port, args.ready))
    except KeyboardInterrupt:
        pass
