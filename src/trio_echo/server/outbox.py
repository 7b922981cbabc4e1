"""Replies on their way out of one session: the outbox and the one task that sends it.

Whoever has replies ready calls :meth:`Outbox._flush`: if no one is sending, it
becomes the sender and writes everything queued in one write until the
outbox is empty; otherwise it leaves its reply to the sender already at work.
So replies ready at one moment leave in one syscall, and no sender task or
channel sits between a handler and the socket. On a socket the replies are
first offered to the kernel with one non-blocking write (:meth:`Outbox._write_now`);
waiting for room in the socket's buffer is only needed when it is full.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Final

import trio

from . import sockio as _sockio

if TYPE_CHECKING:
    from .context import ConnectionView

__all__ = ["OUTBOX_HIGH_WATER", "Outbox", "cause"]

log = logging.getLogger("trio_echo")

#: The reader pauses while more than this many reply bytes wait to be sent.
OUTBOX_HIGH_WATER: Final = 1024 * 1024


class Outbox:
    """The replies a session owes, and sending them (a part of :class:`~.session.Session`)."""

    # Set by Session.__init__.
    state: ConnectionView
    stream: trio.abc.Stream
    fd: int
    outbox: list[bytes]
    outbox_bytes: int
    counted: int
    sending: bool
    room: trio.lowlevel.ParkingLot | None
    waiting: int

    def _enqueue(self, data: bytes) -> None:
        self.outbox.append(data)

    def _backed_up(self) -> bool:
        """More than ``OUTBOX_HIGH_WATER`` bytes of replies wait to be sent."""
        out = self.outbox
        if self.counted < len(out):
            # Each reply is summed once, so a sender stuck for long costs O(replies).
            self.outbox_bytes += sum(map(len, itertools.islice(out, self.counted, None)))
            self.counted = len(out)
        return self.outbox_bytes >= OUTBOX_HIGH_WATER

    def _write_now(self) -> bool:
        """Send the outbox with one non-blocking write; False if ``_flush`` must finish.

        A task that reads or runs calls yields to Trio at its next read or
        park anyway, so replies the kernel takes at once need not go through
        ``send_all``, whose own checkpoint costs a trip through the scheduler
        per read (about a fifth of the server's work on small echoes).
        """
        if self.fd < 0 or self.sending:
            return False  # not a socket, or a sender is at work: keep the order
        data = self._take_outbox()
        try:
            sent = _sockio.write_now(self.fd, data)
        except OSError as exc:
            self._lost(exc)
            return True
        self.state.sent(sent)
        if sent < len(data):
            self.outbox = [data[sent:]]
            return False
        return True

    async def _flush(self) -> None:
        """Send everything queued; if another task is sending, leave it to that task."""
        if self.sending:
            return
        self.sending = True
        try:
            while self.outbox:
                data = self._take_outbox()
                if self.fd < 0 and len(data) <= _sockio.WRITE_PIECE:
                    await self.stream.send_all(data)  # (the generic path, inlined)
                    self.state.sent(len(data))
                else:
                    await _sockio.send_all(self.stream, self.fd, data, self.state)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._lost(exc)
        finally:
            self.sending = False

    def _take_outbox(self) -> bytes:
        """Empty the outbox into one buffer to send; tasks waiting for room look again."""
        out = self.outbox
        self.outbox = []
        self.outbox_bytes = self.counted = 0
        if self.waiting:
            self.room.unpark_all()  # type: ignore[union-attr]  # (made by _wait_for_room)
        return out[0] if len(out) == 1 else b"".join(out)

    def _lost(self, exc: BaseException) -> None:
        """The peer is gone: nothing more can be delivered on this connection."""
        log.debug("connection %s lost while sending: %s", self.state.peer, cause(exc))
        self.outbox = []
        self.outbox_bytes = self.counted = 0
        self.state.whole_scope.cancel()


def cause(exc: BaseException) -> str:
    """What a Trio stream error was really about (the OSError behind it, say)."""
    underlying = exc.__cause__ or exc.__context__
    return str(underlying or exc) or type(exc).__name__
