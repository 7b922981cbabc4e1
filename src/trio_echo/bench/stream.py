"""``trio-echo bench --stream``: a server stream's items/s against unary echo, one connection.

Two measurements on one connection each, with plain blocking sockets and the
sans-IO wire module (no client library in the way), so that the figures are
the server's and the protocol's:

* **unary**: ``echo`` of a ``size``-byte bin, ``pipeline`` requests kept in flight;
* **stream**: the built-in ``ticks(2**31 - 1, 0, size)``, a server stream of
  ``size``-byte items, consumed as fast as they come, with ``window`` credits
  granted and refilled each time half of them were consumed (as the clients
  do), cancelled when the time is up.

The stream's items travel many to a message (the server batches what is ready
within the client's credit), so its items/s should be well above the unary
rate: :attr:`StreamReport.ratio`.
"""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass
from typing import Any, Final

from .. import wire

__all__ = [
    "StreamReport",
    "format_stream_report",
    "measure_stream",
    "measure_unary",
    "run_stream_bench",
]

#: Bytes asked of the socket per read.
READ_SIZE: Final = 256 * 1024


@dataclass
class StreamReport:
    """What ``trio-echo bench --stream`` measured (``--json`` prints :meth:`to_json`)."""

    size: int
    pipeline: int
    window: int
    duration_s: float
    unary_per_s: float
    stream_items_per_s: float

    @property
    def ratio(self) -> float:
        """Stream items per second over unary echoes per second."""
        return self.stream_items_per_s / self.unary_per_s if self.unary_per_s else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": round(self.ratio, 3)}


def _open(host: str, port: int, timeout: float) -> tuple[socket.socket, wire.FrameDecoder]:
    """A version 2 framed connection past the hello."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(wire.PREAMBLE_V2)
    decoder = wire.FrameDecoder(2**31)
    while True:
        data = sock.recv(READ_SIZE)
        if not data:
            raise ConnectionError("the server closed the connection before its hello")
        items = decoder.feed(data)
        if items:
            hello = items[0]
            if not (isinstance(hello, list) and hello[:2] == [2, "hello"]):
                raise ConnectionError(f"expected the server's hello, got {hello!r}")
            if hello[2][0].get("protocol") != 2:
                raise ConnectionError("the server does not speak protocol version 2 (streams)")
            return sock, decoder


def measure_unary(
    host: str, port: int, size: int, pipeline: int, duration: float, warmup: float
) -> tuple[int, float]:
    """Echoes completed and the seconds measured (after ``warmup``)."""
    sock, decoder = _open(host, port, 10.0)
    payload = bytes(size)
    pack = wire.make_packer()
    requests = [wire.frame(pack([0, i, "echo", [payload]])) for i in range(pipeline)]
    with sock:
        sock.sendall(b"".join(requests))
        clock = _Clock(warmup, duration)
        done = 0
        while True:
            data = sock.recv(READ_SIZE)
            if not data:
                raise ConnectionError("the server closed the connection")
            replies = decoder.feed(data)
            again = []
            for reply in replies:
                if reply[2] is not None or reply[3] != payload:
                    raise RuntimeError(f"unexpected reply {wire.quote(reply)}")
                again.append(requests[reply[1]])
            done += len(replies)
            if clock.over(done):
                return clock.result(done)
            sock.sendall(b"".join(again))


def measure_stream(
    host: str, port: int, size: int, window: int, duration: float, warmup: float
) -> tuple[int, float]:
    """Items received and the seconds measured (after ``warmup``)."""
    sock, decoder = _open(host, port, 10.0)
    options = {"stream": "server", "credit": window}
    refill = max(1, window // 2)
    with sock:
        sock.sendall(wire.encode_request(1, "ticks", [wire.MAX_CREDIT, 0, size], options))
        clock = _Clock(warmup, duration)
        received = consumed = 0
        while True:
            data = sock.recv(READ_SIZE)
            if not data:
                raise ConnectionError("the server closed the connection")
            for message in decoder.feed(data):
                if message[0] != wire.MessageType.ITEMS:
                    raise RuntimeError(f"unexpected message {wire.quote(message)}")
                # One item per message is checked: every item would slow the client.
                first = message[2][0]
                if not isinstance(first, bytes) or len(first) != size:
                    raise RuntimeError(f"not a {size}-byte item: {wire.quote(first)}")
                n = len(message[2])
                received += n
                consumed += n
            if consumed >= refill:
                sock.sendall(wire.encode_credit(1, consumed))
                consumed = 0
            if clock.over(received):
                sock.sendall(wire.encode_cancel(1))
                return clock.result(received)


class _Clock:
    """A warm-up, then ``duration`` seconds counted from the first look after it."""

    def __init__(self, warmup: float, duration: float) -> None:
        self.duration = duration
        self.warm_until = time.perf_counter() + warmup
        self.start = 0.0
        self.end = 0.0
        self.base: int | None = None
        self.now = 0.0

    def over(self, count: int) -> bool:
        """Look at the clock with ``count`` done so far; True once the time is up."""
        self.now = now = time.perf_counter()
        if self.base is None:
            if now >= self.warm_until:
                self.base, self.start, self.end = count, now, now + self.duration
            return False
        return now >= self.end

    def result(self, count: int) -> tuple[int, float]:
        assert self.base is not None
        return count - self.base, self.now - self.start


def run_stream_bench(
    host: str,
    port: int,
    *,
    size: int = 64,
    pipeline: int = 32,
    window: int = 256,
    duration: float = 5.0,
    warmup: float = 1.0,
) -> StreamReport:
    """Both measurements, one after the other; see the module docstring."""
    echoes, unary_s = measure_unary(host, port, size, pipeline, duration, warmup)
    items, stream_s = measure_stream(host, port, size, window, duration, warmup)
    return StreamReport(
        size=size,
        pipeline=pipeline,
        window=window,
        duration_s=duration,
        unary_per_s=echoes / unary_s,
        stream_items_per_s=items / stream_s,
    )


def format_stream_report(report: StreamReport) -> str:
    """The human-readable report."""
    unary = f"unary echo ({report.pipeline} in flight)"
    stream = f"server stream (window {report.window})"
    return "\n".join(
        [
            f"one connection, {report.size}-byte items, {report.duration_s:g} s each",
            f"  {unary:<30} {report.unary_per_s:>12,.0f} calls/s",
            f"  {stream:<30} {report.stream_items_per_s:>12,.0f} items/s",
            f"  {'stream / unary':<30} {report.ratio:>12.2f}x",
        ]
    )
