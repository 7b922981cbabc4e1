"""A gRPC unary echo server (``grpc.aio``), the alternative benchmarks/run.py compares with.

A generic handler with bytes in and bytes out (no protoc, no protobuf
messages): ``/trio_echo.bench.Echo/Echo`` returns its request. Its client is
``benchmarks/clients.py grpc`` (one caller) and ``grpc-concurrent`` (many
callers on one channel). Needs ``grpcio`` (the ``bench`` extra).

usage: python benchmarks/grpc_echo.py --port 9003
"""

from __future__ import annotations

import argparse
import asyncio

import grpc  # type: ignore[import-untyped, unused-ignore]

METHOD = "/trio_echo.bench.Echo/Echo"


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # type: ignore[type-arg]
    return request


async def serve(host: str, port: int) -> None:
    """Serve until cancelled."""
    handler = grpc.method_handlers_generic_handler(
        "trio_echo.bench.Echo",
        {"Echo": grpc.unary_unary_rpc_method_handler(echo)},  # bytes in, bytes out
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9003)
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass
