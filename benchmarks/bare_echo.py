"""The baseline for benchmarks/run.py: a bare Trio raw echo server.

``trio.serve_tcp`` with one task per connection doing ``receive_some`` /
``send_all``: the least any Trio server can do per byte, so trio_echo's raw
compat mode is compared against it.

usage: python benchmarks/bare_echo.py [--host 127.0.0.1] [--port 9002]
"""

from __future__ import annotations

import argparse

import trio


async def echo(stream: trio.SocketStream) -> None:
    """Send back every byte received until the peer closes."""
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # the peer reset the connection


async def main(host: str, port: int) -> None:
    """Serve until cancelled."""
    await trio.serve_tcp(echo, port, host=host)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9002)
    args = parser.parse_args()
    try:
        trio.run(main, args.host, args.port)
    except KeyboardInterrupt:
        pass
