"""Protocol version 2's goaway: draining one session without losing a request (protocol.md §11).

:meth:`Goaway.goaway` sends ``[2, "goaway", [{"reason", "grace_ms"}]]`` on a
version 2 framed session and turns the session into a draining one: it keeps
reading (so that the client's half-close, and its cancels, arrive), answers
every request read from then on ``unavailable`` at once without running it
(:meth:`Goaway._refuse`, which the dispatcher hands each read to), drops
notifications (counted under ``unavailable``), and still answers the calls it
had started. The session ends at the client's EOF as any other; if the client
never sends one, whoever sent the goaway ends it when ``grace_ms`` runs out
(the server's shutdown, or :meth:`Goaway._age_out` for ``--max-connection-age``).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Final

import trio

from .. import wire
from ..wire import ErrorCode, GoawayReason

if TYPE_CHECKING:
    from .context import ConnectionView, ServerContext

__all__ = ["AGE_JITTER", "Goaway"]

#: ``--max-connection-age`` is drawn per connection within ±10 % of its value, so
#: that connections opened together (after a restart) do not all go at once.
AGE_JITTER: Final = 0.1

_REQUEST: Final = wire.MessageType.REQUEST.value
_NOTIFICATION: Final = wire.MessageType.NOTIFICATION.value
_ITEMS: Final = wire.MessageType.ITEMS.value
_END: Final = wire.MessageType.END.value


class Goaway:
    """Draining a version 2 session (a part of :class:`~.session.Session`)."""

    # Set by Session.__init__.
    ctx: ServerContext
    state: ConnectionView
    framed: bool
    closing: bool
    going_away: GoawayReason | None
    version: int
    stream_version: bool
    wake_reader: trio.CancelScope | None
    nursery: trio.Nursery | None

    if TYPE_CHECKING:
        # Provided by the other parts of Session.
        def _enqueue(self, data: bytes) -> None: ...
        async def _flush(self) -> None: ...
        def _dispatch(self, event: wire.Event) -> None: ...
        def _error(self, msgid: int | None, code: str, message: str, name: str = "") -> None: ...
        def _hold(self, raws: list[Any]) -> None: ...

    def goaway(self, reason: GoawayReason, grace_ms: int) -> bool:
        """Tell a version 2 client to go away; True if sent.

        Nothing is sent to a version 1 or msgpack-rpc stream session (they
        have no goaway: the caller drains them as before), nor twice.
        """
        if not self.framed or self.state.version < 2 or self.going_away is not None:
            return False
        if self.closing or self.nursery is None:
            return False  # ending anyway (a fatal error), or not started
        self.going_away = reason
        ctx = self.ctx
        ctx.goaways[reason] = ctx.goaways.get(reason, 0) + 1
        self._enqueue(wire.encode_goaway(reason, grace_ms, pack=ctx.pack))
        # The reader may sit in a receive: send it now, from a task of the session.
        self.nursery.start_soon(self._flush)
        if self.wake_reader is not None:
            # At max_inflight, requests wait in the backlog: they are answered now.
            self.wake_reader.cancel()
        return True

    def _refuse(self, items: list[Any]) -> int:
        """After a goaway: answer requests ``unavailable``, drop notifications; the rest
        (cancels, violations) as always. Returns how many items were handled (all)."""
        ctx = self.ctx
        message = f"the server is going away ({self.going_away}); send it again elsewhere"
        for obj in items:
            if type(obj) is wire.LargeMessage:
                # Not worth decoding: its first bytes say what it is.
                kind, msgid = wire.peek_type(obj.data), wire.peek_msgid(obj.data)
                if self.stream_version and kind is not None and _ITEMS <= kind <= _END:
                    # Items for a running stream: applied, decoded a slice at a time.
                    self._hold([obj])
                    continue
                if kind == _REQUEST and msgid is not None:
                    ctx.requests_total += 1
                    self._error(msgid, ErrorCode.UNAVAILABLE, message)
                elif kind == _NOTIFICATION:
                    ctx.notifications_total += 1
                    self._error(None, ErrorCode.UNAVAILABLE, message)
                else:
                    self._dispatch(
                        wire.ProtocolViolation(ErrorCode.MALFORMED, "not a request", msgid)
                    )
                continue
            event = wire.parse_message(obj, self.version)
            if type(event) is wire.Request:
                ctx.requests_total += 1
                self._error(event.msgid, ErrorCode.UNAVAILABLE, message, event.method)
            elif type(event) is wire.Notification:
                ctx.notifications_total += 1
                self._error(None, ErrorCode.UNAVAILABLE, message, event.method)
            else:
                self._dispatch(event)
        return len(items)

    async def _age_out(self, age: float, grace: float) -> None:
        """``--max-connection-age``: goaway after ``age`` (±10 %), end the session
        ``grace`` seconds later if the client has not left by then."""
        await trio.sleep(age * random.uniform(1 - AGE_JITTER, 1 + AGE_JITTER))
        if self.goaway(GoawayReason.MAX_AGE, int(grace * 1000)):
            await trio.sleep(grace)
            # Calls still running are cancelled and get no reply (protocol.md §11.3).
            self.state.whole_scope.cancel()
