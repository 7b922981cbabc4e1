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

import os
import select
import socket
import types
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import trio

#: Writes through a stream's own send_all go in pieces of this size, so that the
#: write timeout sees progress, not only the end of a whole large reply.
WRITE_PIECE: Final = 64 * 1024


def socket_fd(stream: trio.abc.Stream) -> int:
    """The descriptor to read and write directly, or -1 to use the stream's methods."""
    if os.name != "posix" or type(stream) is not trio.SocketStream:
        return -1
    return stream.socket.fileno()


def receiver(stream: trio.abc.Stream) -> Callable[[int], Awaitable[bytes | bytearray]]:
    """The stream's ``receive_some``, or :func:`receive` on its socket when it has one."""
    fd = socket_fd(stream)
    # receive bound to fd as a method: called like the partial it stands for, in
    # one 48-byte object where a partial takes ~190 B of every connection (#15).
    return stream.receive_some if fd < 0 else types.MethodType(receive, fd)


async def receive(fd: int, max_bytes: int) -> bytes:
    """Like ``receive_some``: one checkpoint (where cancellation lands), then the read."""
    await trio.lowlevel.checkpoint()
    while (data := read_now(fd, max_bytes)) is None:
        await trio.lowlevel.wait_readable(fd)
    return data


def read_now(fd: int, max_bytes: int) -> bytes | None:
    """Read what the kernel has, without blocking; None if nothing is there yet.

    The BlockingIOError is caught here, in a frame that ends at once: caught in a
    coroutine that then waits for readability, it (and the frame object its
    traceback makes) would be kept for as long as the connection is idle (#15).
    """
    try:
        return os.read(fd, max_bytes)
    except BlockingIOError:
        return None


def write_now(fd: int, data: bytes | bytearray | memoryview) -> int:
    """Write what the kernel takes without blocking; return how many bytes that was.

    Raises OSError if the peer is gone (``BrokenPipeError``, ``ConnectionResetError``).
    """
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0


class Progress(Protocol):
    """What a send reports its progress to (the write timeout watches it)."""

    def sent(self, n: int) -> None: ...


async def send_all(
    stream: trio.abc.Stream, fd: int, data: bytes | bytearray | memoryview, progress: Progress
) -> None:
    """Send all of ``data``, reporting each piece the peer accepts to ``progress``.

    With a descriptor (see :func:`socket_fd`) the socket is written directly,
    waiting for writability only when the kernel takes nothing; otherwise the
    stream's own ``send_all`` gets ``WRITE_PIECE`` bytes at a time, so that a
    slow reader of a large reply still shows progress.
    """
    if fd < 0:
        if len(data) <= WRITE_PIECE:
            await stream.send_all(data)
            progress.sent(len(data))
            return
        view = memoryview(data)
        for start in range(0, len(view), WRITE_PIECE):
            piece = view[start : start + WRITE_PIECE]
            await stream.send_all(piece)
            progress.sent(len(piece))
        return
    view = memoryview(data)
    while view:
        sent = write_now(fd, view)
        if sent:
            progress.sent(sent)
            view = view[sent:]
        else:
            await trio.lowlevel.wait_writable(fd)


def peer_gone(stream: trio.abc.Stream) -> bool:
    """True once the peer has reset the connection or closed both directions of it.

    For a connection the server is not reading (its buffers are full), this is how
    the peer's leaving is noticed without consuming the bytes waiting in the
    kernel: the socket's pending error (``ECONNRESET`` after a TCP reset), or
    ``POLLHUP`` (a reset, or a Unix socket whose peer closed). A half-close is
    not "gone": its requests are still answered. Over TLS the socket under the
    ``SSLStream`` is looked at.
    """
    while not isinstance(stream, trio.SocketStream):
        inner = getattr(stream, "transport_stream", None)
        if inner is None:
            return False  # not over a socket (a memory stream in tests, say)
        stream = inner
    sock = stream.socket
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return any(mask & (select.POLLHUP | select.POLLERR) for _, mask in poller.poll(0))
    except OSError:
        return True
