"""Reading and writing a connected socket with fewer trips through Trio's scheduler.

Trio's ``SocketStream.receive_some`` and ``send_all`` each pass through the
scheduler once even when the kernel has the data or the room already. The
server's connection loops read, answer and write, so they can do with one such
trip per read instead of two: :func:`receive` yields once, then reads (waiting
for readability only if nothing is there yet), and :func:`write_now` offers the
replies to the kernel without yielding. Yielding *before* the read matters: it
gives the peer time to send, so the read rarely finds nothing and needs no
epoll registration (writing without yielding and then reading at once doubled
the syscalls per request).

The descriptor comes from :func:`socket_fd`, which admits only a plain
``trio.SocketStream`` on POSIX; anything else (a memory stream in tests, TLS,
Windows) uses the stream's own methods (:func:`receiver` picks). The
connection closes its stream only after its loops, and every task that
writes, have finished, so the descriptor is valid whenever these functions
use it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable

import trio


def socket_fd(stream: trio.abc.Stream) -> int:
    """The descriptor to read and write directly, or -1 to use the stream's methods."""
    if os.name != "posix" or type(stream) is not trio.SocketStream:
        return -1
    return stream.socket.fileno()


def receiver(stream: trio.abc.Stream) -> Callable[[int], Awaitable[bytes | bytearray]]:
    """The stream's ``receive_some``, or :func:`receive` on its socket when it has one."""
    fd = socket_fd(stream)
    return stream.receive_some if fd < 0 else functools.partial(receive, fd)


async def receive(fd: int, max_bytes: int) -> bytes:
    """Like ``receive_some``: one checkpoint (where cancellation lands), then the read."""
    await trio.lowlevel.checkpoint()
    while True:
        try:
            return os.read(fd, max_bytes)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)


def write_now(fd: int, data: bytes | bytearray | memoryview) -> int:
    """Write what the kernel takes without blocking; return how many bytes that was.

    Raises OSError if the peer is gone (``BrokenPipeError``, ``ConnectionResetError``).
    """
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
