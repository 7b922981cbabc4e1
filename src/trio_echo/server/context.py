"""What a connection may touch of its server: limits, method tables, the packer, counters.

The :class:`~trio_echo.server.server.Server` makes one :class:`ServerContext`
and hands it to every connection. Connections read its limits and tables and
bump its counters; they never see the server itself, so imports run one way
(server -> connection -> session -> context, service and the sans-IO wire).
The counters are plain attributes, updated in place on the hot path and read
by ``stats()``, which is therefore O(1) whatever the number of connections.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final, Protocol

import trio

from .. import wire
from .config import ServerConfig
from .metrics import MethodMetrics
from .service import HandlerKind, Method

__all__ = ["ConnectionView", "ServerContext"]

log = logging.getLogger("trio_echo")

#: Large messages (see wire.SlicedDecoder) decoded at once, server-wide: each may
#: need tens of MiB of objects while it is decoded (a 4 MiB message of 2-character
#: strings is ~70 MiB of str objects), so one at a time; the others wait their turn.
LARGE_DECODES: Final = 1
#: A warning that every connection could repeat is logged at most this often.
WARN_EVERY_S: Final = 10.0


class ServerContext:
    """A server's limits, method tables, packer and counters (see the module doc)."""

    __slots__ = (
        "_warned_at",
        "batch_started",
        "buffered_bytes",
        "bytes_in",
        "bytes_out",
        "debug",
        "decoding",
        "errors",
        "goaways",
        "grace",
        "hellos",
        "inline_methods",
        "limiter",
        "max_buffered_bytes",
        "max_connection_age",
        "max_containers",
        "max_frame",
        "max_inflight",
        "max_requests",
        "methods",
        "metrics",
        "metrics_batch",
        "mode",
        "notifications_total",
        "pack",
        "pooled_methods",
        "proxy_protocol",
        "proxy_rejected",
        "requests_in_flight",
        "requests_total",
        "stream_credit",
        "stream_idle_timeout",
        "unlimited",
        "write_timeout",
        "write_timeouts",
    )

    def __init__(
        self,
        config: ServerConfig,
        methods: dict[str, Method],
        unlimited: frozenset[str],
        hello: dict[str, Any],
    ) -> None:
        self.mode = config.pinned_mode
        self.methods = methods
        #: Methods answered even at max_requests (monitoring must not go dark).
        self.unlimited = unlimited
        # The engine's fast paths: handlers with no annotations to check first.
        self.inline_methods: dict[str, Callable[..., Any]] = {
            m.name: m.fn for m in methods.values() if m.kind is HandlerKind.INLINE and not m.checks
        }
        self.pooled_methods: dict[str, Method] = {
            m.name: m
            for m in methods.values()
            if m.kind in (HandlerKind.ASYNC, HandlerKind.BLOCKING) and not m.checks
        }
        #: The hello map of each protocol version: only "protocol" differs.
        self.hellos = {v: {**hello, "protocol": v} for v in wire.PROTOCOL_VERSIONS}
        # The settings connections read, as plain attributes: the engine's fast
        # path reads some of them for every request.
        self.max_frame = config.max_frame
        self.max_inflight = config.max_inflight
        self.max_requests = config.max_requests
        self.max_containers = config.max_containers
        self.max_buffered_bytes = config.max_buffered_bytes
        self.write_timeout = config.write_timeout
        self.stream_credit = config.stream_credit
        self.stream_idle_timeout = config.stream_idle_timeout
        self.max_connection_age = config.max_connection_age
        self.grace = config.grace
        self.proxy_protocol = config.proxy_protocol
        self.debug = config.debug
        self.pack = wire.make_packer()
        self.limiter = trio.CapacityLimiter(config.threads)
        self.decoding = trio.Semaphore(LARGE_DECODES)
        # Counters (see Server.stats).
        self.requests_total = 0
        self.notifications_total = 0
        self.requests_in_flight = 0
        self.errors: dict[str, int] = {}
        self.bytes_in = 0
        self.bytes_out = 0
        #: Bytes of partial messages and undecoded backlog held, all connections.
        self.buffered_bytes = 0
        self.write_timeouts = 0
        self.proxy_rejected = 0
        #: goaway notifications sent, by reason (protocol version 2).
        self.goaways: dict[str, int] = {}
        #: Per-method counters (see .metrics) when metrics are on, else None.
        self.metrics: dict[str, MethodMetrics] | None = None
        #: The methods whose quick calls wait to be timed as a batch (see metrics.counted).
        self.metrics_batch: list[MethodMetrics] = []
        #: When the batch being dispatched started (perf_counter): calls it starts were
        #: received then (one clock read per read, not per call).
        self.batch_started = 0.0
        self._warned_at: dict[str, float] = {}

    def count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def warn_once(self, key: str, message: str, *args: Any) -> None:
        """Log a warning that many connections could repeat, at most once per WARN_EVERY_S."""
        now = trio.current_time()
        last = self._warned_at.get(key)
        if last is None or now - last >= WARN_EVERY_S:
            self._warned_at[key] = now
            log.warning(message, *args)


class ConnectionView(Protocol):
    """What a session (and its parts) may touch of the connection it serves.

    :class:`~trio_echo.server.connection.ClientConnection` is one; naming the
    shape here keeps the imports one way (connection -> session, never back).
    """

    ctx: ServerContext
    stream: trio.abc.Stream
    peer: str
    #: The framed protocol version (1 or 2).
    version: int
    bytes_in: int
    #: Set while the reader waits in a receive that shutdown may cancel.
    in_read: bool
    read_scope: trio.CancelScope
    whole_scope: trio.CancelScope
    stop_requested: bool

    def sent(self, n: int) -> None:
        """The peer accepted ``n`` more bytes."""
