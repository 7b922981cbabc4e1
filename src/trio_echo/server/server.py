"""The Trio server: listening, accepting, limits, idle reaping and shutdown.

A :class:`Server` owns the method table, the counters behind ``stats`` and
the server-wide limits. Each accepted connection becomes one task running a
:class:`~trio_echo.server.connection.ClientConnection` (sniffing, raw echo) which
hands framed and msgpack-rpc stream connections to a
:class:`~trio_echo.server.session.Session`.

A server-wide reaper task wakes about once a second: it closes connections
that have received nothing and owe nothing for ``idle_timeout``, and frees
the decoder buffers of quiet ones; the hot path only bumps a byte counter.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import math
import os
import ssl
import time
from collections.abc import Sequence
from typing import Any, Final

import trio

from .. import wire
from .._version import __version__
from ..wire import ErrorCode
from . import tlsconn
from .builtins import MONITORING, builtin_service
from .config import FROM_CONFIG, FromConfig, ServerConfig, given_settings
from .connection import ClientConnection, peer_name
from .context import ServerContext
from .listeners import open_tcp_listeners as open_listeners
from .metrics import UNKNOWN_METHOD, MethodMetrics, counted
from .proxy import PrefixedStream, read_proxy_header, take_proxy_header
from .service import Method, Service
from .session import RECEIVE_SIZE

__all__ = ["Server", "ServerConfig", "open_listeners", "serve", "serve_stream"]

log = logging.getLogger("trio_echo")

#: The name of each connection's task (the one Trio derives from the method).
_CONNECTION_TASK: Final = f"{__name__}.Server._serve"
#: A rejected connection (over max_connections) waits this long for a preamble.
REJECT_SNIFF_S: Final = 1.0
#: accept() failing for lack of resources (EMFILE...) is retried this often.
ACCEPT_RETRY_S: Final = 0.1
#: A warning that every refused connection would repeat is logged at most this often.
WARN_EVERY_S: Final = 10.0

# accept(2) errors that mean "out of resources for now", as in trio.serve_listeners.
_ACCEPT_CAPACITY_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)


class Server:
    """A trio_echo server: built-in methods plus a user :class:`Service`.

    Args:
        service: user methods, served beside the built-ins (``echo``,
            ``ping``, ``sleep``, ``stats``, ``methods``).
        config: the settings (:class:`ServerConfig`); its defaults if None.
        **overrides: settings to change from ``config``, by field name
            (``Server(service, max_connections=100, idle_timeout=0)``): ``mode``,
            ``max_frame``, ``max_inflight``, ``max_connections``,
            ``max_requests``, ``idle_timeout``, ``threads``, ``grace``,
            ``debug``, ``proxy_protocol`` ...; see :class:`ServerConfig`.

    Attributes:
        config: the settings in force.
        ssl_context: serve TLS only, with this server-side context (for
            mutual TLS, one with ``verify_mode = CERT_REQUIRED`` and the
            clients' CA loaded). The handshake counts against
            ``max_connections``, and lasts at most ``tls_handshake_timeout``.
        metrics: keep the per-method counters that Prometheus metrics show
            (:mod:`.metrics`); off, the hot path does not count per method.

    Raises:
        ValueError: a setting is out of range, or a user method's name
            clashes with a built-in.
        TypeError: an override is not a :class:`ServerConfig` field.
    """

    def __init__(
        self,
        service: Service | None = None,
        config: ServerConfig | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        metrics: bool = False,
        **overrides: Any,
    ) -> None:
        if config is None:
            config = ServerConfig(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        self.config = config
        # Settings the server itself reads, as attributes (as they have always
        # been); connections read theirs from the context (self.ctx) instead.
        self.mode = config.pinned_mode
        self.max_frame = config.max_frame
        self.max_inflight = config.max_inflight
        self.grace = config.grace
        self.max_connections = config.max_connections
        self.max_requests = config.max_requests
        self.idle_timeout = config.idle_timeout
        self.debug = config.debug
        self.proxy_protocol = config.proxy_protocol
        self.tls_handshake_timeout = config.tls_handshake_timeout
        self.ssl_context = ssl_context
        # TLS handshakes under way: they count against max_connections.
        self._handshaking = 0
        registry = builtin_service(self.stats, self.method_list)
        if service is not None:
            registry.include(service)
        self.service = registry
        self.methods: dict[str, Method] = registry.table()
        self.hello = {
            "protocol": wire.PROTOCOL_VERSION,
            "server": f"trio_echo/{__version__}",
            "max_frame": config.max_frame,
            "max_inflight": config.max_inflight,
        }
        #: What connections may touch: limits, method tables, counters.
        self.ctx = ServerContext(config, self.methods, MONITORING, self.hello)
        if metrics:
            # Per-method counters (plain ints); quick handlers get a timing wrapper.
            ctx = self.ctx
            ctx.metrics = {name: MethodMetrics() for name in [*self.methods, UNKNOWN_METHOD]}
            ctx.inline_methods = {
                name: counted(fn, ctx.metrics[name], ctx.metrics_batch)
                for name, fn in ctx.inline_methods.items()
            }
        # Counters (see stats()).
        self.started_at = time.monotonic()
        self.connections_total = 0
        self.connections_rejected = 0
        self.tls_handshake_failures = 0
        self._conns: set[ClientConnection] = set()
        self._draining = False
        self._shutdown = trio.Event()
        self._all_closed = trio.Event()
        self._listeners: list[trio.SocketListener] = []
        self._rejects_unlogged = 0
        self._reject_logged_at: float | None = None

    # --- public API --------------------------------------------------------------

    async def serve(
        self,
        host: str | FromConfig | None = FROM_CONFIG,
        port: int | FromConfig = FROM_CONFIG,
        *,
        reuse_port: bool | FromConfig = FROM_CONFIG,
        backlog: int | None = None,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host``:``port`` and serve until shut down or cancelled.

        Shaped like :func:`trio.serve_tcp`: ``await nursery.start(server.serve,
        host, 0)`` returns the listeners once they accept connections.
        ``reuse_port`` sets ``SO_REUSEPORT`` so several processes can share
        the port. Each defaults to the server's :attr:`config`. Returns after
        :meth:`shutdown` has drained every connection.

        Raises:
            ValueError: ``port`` is not 0 to 65535.
            OSError: the port cannot be listened on.
        """
        given = given_settings(host=host, port=port, reuse_port=reuse_port)
        config = dataclasses.replace(self.config, **given) if given else self.config
        listeners = await open_listeners(
            config.host, config.port, reuse_port=config.reuse_port, backlog=backlog
        )
        await self.serve_listeners(listeners, task_status=task_status)

    async def serve_listeners(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve connections from already-open listeners (see :meth:`serve`)."""
        self._listeners = list(listeners)
        async with trio.open_nursery() as connections:
            connections.start_soon(self._reap_idle)
            async with trio.open_nursery() as accepting:
                for listener in self._listeners:
                    accepting.start_soon(self._accept_loop, listener, connections)
                task_status.started(self._listeners)
                await self._shutdown.wait()
                # Cancelling the accept loops closes the listeners.
                accepting.cancel_scope.cancel()
            await self._drain()
            connections.cancel_scope.cancel()

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection over any Trio stream (sniffing its kind), then close it."""
        await self._serve(stream)

    async def _serve(self, stream: trio.abc.Stream, accepted: bool = False) -> None:
        """serve_stream; for an ``accepted`` connection, the task the accept loop started.

        An accepted connection is checked against max_connections and, with TLS,
        handshaken first. One coroutine for both, not one awaiting the other: a
        frame less on the stack of every idle connection (#15).
        """
        if accepted:
            assert isinstance(stream, trio.SocketStream)
            served = await self._admit(stream)
            if served is None:
                return
            stream = served
        state = ClientConnection(self.ctx, stream)
        self.connections_total += 1
        self._conns.add(state)
        try:
            await state.run()
        except Exception:
            # A bug must cost one connection, never the server.
            log.exception("internal error on connection %s", state.peer, extra={"peer": state.peer})
        finally:
            self._conns.discard(state)
            if self._draining and not self._conns:
                self._all_closed.set()

    def shutdown(self) -> None:
        """Begin a graceful shutdown (idempotent).

        The server stops accepting and stops reading new requests, answers
        every request it has already received, closes each connection once
        nothing is in flight, and cancels whatever is left after ``grace``
        seconds; then :meth:`serve` returns.
        """
        self._shutdown.set()

    @property
    def shutting_down(self) -> bool:
        """True once :meth:`shutdown` was called."""
        return self._shutdown.is_set()

    def stats(self) -> dict[str, Any]:
        """A snapshot of the server's counters (the ``stats`` built-in).

        O(1): running totals, whatever the number of connections.
        """
        ctx = self.ctx
        return {
            "connections_open": len(self._conns),
            "connections_total": self.connections_total,
            "connections_rejected": self.connections_rejected,
            "proxy_rejected": ctx.proxy_rejected,
            "requests_total": ctx.requests_total,
            "notifications_total": ctx.notifications_total,
            "tls_handshake_failures": self.tls_handshake_failures,
            "requests_in_flight": ctx.requests_in_flight,
            "errors": dict(ctx.errors),
            "bytes_in": ctx.bytes_in,
            "bytes_out": ctx.bytes_out,
            "buffered_bytes": ctx.buffered_bytes,
            "write_timeouts": ctx.write_timeouts,
            "goaways": dict(ctx.goaways),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "pid": os.getpid(),
            "server": self.hello["server"],
        }

    # The counters live in the context the connections share; these read them.

    @property
    def requests_in_flight(self) -> int:
        """Requests and notifications running now, server-wide."""
        return self.ctx.requests_in_flight

    @property
    def requests_total(self) -> int:
        return self.ctx.requests_total

    @property
    def notifications_total(self) -> int:
        return self.ctx.notifications_total

    @property
    def errors(self) -> dict[str, int]:
        """Errors reported since start, by code."""
        return self.ctx.errors

    @property
    def proxy_rejected(self) -> int:
        return self.ctx.proxy_rejected

    @property
    def hellos(self) -> dict[int, dict[str, Any]]:
        return self.ctx.hellos

    @property
    def metrics(self) -> dict[str, MethodMetrics] | None:
        """Per-method counters when the server was made with ``metrics=True``, else None."""
        return self.ctx.metrics

    def method_list(self) -> list[dict[str, str]]:
        """``{"name", "doc", "kind"}`` for every method (the ``methods`` built-in); ``kind``
        is ``"unary"``, ``"server"``, ``"client"`` or ``"bidi"`` (protocol.md §12)."""
        return [{"name": m.name, "doc": m.doc, "kind": m.kind_name} for m in self.methods.values()]

    # --- internals ----------------------------------------------------------------

    def count_error(self, code: str) -> None:
        self.ctx.count_error(code)

    async def _accept_loop(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        """Accept until cancelled (which closes the listener).

        Like :func:`trio.serve_listeners`, but out of descriptors (EMFILE and
        kin) it logs once per episode instead of a traceback every retry. The
        open connections are served meanwhile, and new ones wait in the
        kernel's backlog until descriptors free up.
        """
        failures = 0  # failed attempts in the current episode
        reported = False  # the current episode was logged
        last_report = -math.inf
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    failures += 1
                    now = trio.current_time()
                    if now - last_report >= WARN_EVERY_S:  # even if it flaps
                        last_report = now
                        reported = True
                        log.warning(
                            "accept failed: %s; serving the open connections and retrying "
                            "every %gs until resources free up",
                            exc.strerror or exc,
                            ACCEPT_RETRY_S,
                        )
                    await trio.sleep(ACCEPT_RETRY_S)
                    continue
                if failures:
                    if reported:
                        log.warning("accepting again (after %d failed accept attempts)", failures)
                    failures = 0
                    reported = False
                # The name Trio would give the task, made once: Trio formats it
                # anew for every task otherwise (~100 B per connection, #15).
                connections.start_soon(self._serve, stream, True, name=_CONNECTION_TASK)

    async def _admit(self, stream: trio.SocketStream) -> trio.abc.Stream | None:
        """An accepted connection's stream to serve, or None if it was refused (and closed)."""
        if len(self._conns) + self._handshaking >= self.max_connections:
            self.connections_rejected += 1
            # Over TLS the rejection (and its notice) goes through the handshake
            # too, all within REJECT_SNIFF_S.
            await self._reject(stream)
            return None
        # trio's SocketStream already sets TCP_NODELAY.
        if self.ssl_context is None:
            return stream
        # The PROXY header (in clear, before the handshake) and the handshake count
        # against max_connections.
        self._handshaking += 1
        tls: trio.SSLStream[Any] | None = None
        ok = False
        try:
            transport = await self._proxied(stream) if self.proxy_protocol else stream
            if transport is not None:
                tls = self._wrap_tls(transport)
                ok = await self._handshake(tls)
        except BaseException:  # cancelled: the server is stopping
            await trio.aclose_forcefully(tls or stream)
            raise
        finally:
            self._handshaking -= 1
        if ok and tls is not None and not self._draining:
            return tlsconn.TLSConnection(tls)
        await trio.aclose_forcefully(tls or stream)
        return None

    async def _proxied(self, stream: trio.SocketStream) -> PrefixedStream | None:
        """Take a TLS connection's PROXY header: the transport to run TLS over, or None."""
        taken = await take_proxy_header(
            functools.partial(stream.receive_some, RECEIVE_SIZE),
            peer_name(stream),
            self.ctx,
            lambda: self._draining,
        )
        if taken is None:
            return None
        client, first = taken
        return PrefixedStream(stream, first, client)

    def _wrap_tls(self, stream: trio.abc.Stream) -> trio.SSLStream[Any]:
        assert self.ssl_context is not None
        return trio.SSLStream(stream, self.ssl_context, server_side=True)

    async def _handshake(self, tls: trio.SSLStream[Any]) -> bool:
        """Complete a TLS handshake; log a failure once, at info.

        A plaintext client, a client certificate from another CA, or a
        client that stalls past tls_handshake_timeout is closed here,
        before any of its bytes reach the connection's sniffing and handlers.
        """
        failure = await tlsconn.handshake(tls, self.tls_handshake_timeout)
        if failure is None:
            return True
        self.tls_handshake_failures += 1
        peer = peer_name(tls)
        log.info(
            "connection %s: TLS handshake failed: %s",
            peer,
            failure,
            extra={"peer": peer, "event": "tls_handshake_failed"},
        )
        return False

    async def _reject(self, stream: trio.SocketStream) -> None:
        """Over max_connections: tell a framed client why, then close."""
        self.count_error(ErrorCode.OVERLOADED)
        self._rejects_unlogged += 1
        now = trio.current_time()
        if self._reject_logged_at is None or now - self._reject_logged_at >= WARN_EVERY_S:
            log.warning(
                "max_connections (%d) reached: refused %d connection(s)%s",
                self.max_connections,
                self._rejects_unlogged,
                "" if self._reject_logged_at is None else f" in the last {WARN_EVERY_S:g}s",
            )
            self._reject_logged_at = now
            self._rejects_unlogged = 0
        try:
            await self._tell_overloaded(stream)
        finally:
            await trio.aclose_forcefully(stream)  # also when cancelled: never leak the socket

    async def _tell_overloaded(self, stream: trio.SocketStream) -> None:
        """Send the overloaded notice to a framed client whose preamble comes within 1 s."""
        with trio.move_on_after(REJECT_SNIFF_S):
            prefix = b""
            transport: trio.abc.Stream = stream
            try:
                if self.proxy_protocol:
                    header = await read_proxy_header(
                        functools.partial(stream.receive_some, RECEIVE_SIZE), timeout=math.inf
                    )
                    if not isinstance(header, tuple):
                        return  # no valid header: just close
                    if self.ssl_context is not None:
                        transport = PrefixedStream(stream, header[1], None)
                    else:
                        prefix = header[1][: len(wire.PREAMBLE)]
                if self.ssl_context is not None:
                    transport = self._wrap_tls(transport)
                # Any version's preamble: the notice is a v1 frame, which every client reads.
                while len(prefix) < len(wire.PREAMBLE) and wire.MAGIC.startswith(prefix[:7]):
                    data = await transport.receive_some(len(wire.PREAMBLE) - len(prefix))
                    if not data:
                        break
                    prefix += data
                if wire.preamble_version(prefix) is not None:
                    await transport.send_all(
                        wire.encode_error(
                            None,
                            ErrorCode.OVERLOADED,
                            f"server is at max_connections ({self.max_connections})",
                        )
                    )
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _drain(self) -> None:
        self._draining = True
        log.info("shutting down: draining %d connection(s)", len(self._conns))
        grace_ms = int(self.grace * 1000)
        for conn in list(self._conns):
            # Version 2 connections get a goaway and drain while reading on
            # (protocol.md §11); the others stop reading, as they always have.
            conn.drain(grace_ms)
        if self._conns:
            with trio.move_on_after(self.grace) as scope:
                await self._all_closed.wait()
            if scope.cancelled_caught:
                log.warning(
                    "grace period (%gs) over: cancelling %d connection(s)",
                    self.grace,
                    len(self._conns),
                )

    async def _reap_idle(self) -> None:
        """Close idle connections and stuck writers; free quiet ones' decoder buffers.

        It runs even with idle_timeout = 0: a msgpack-rpc stream's decoder
        holds ~45 KB while it has seen bytes lately, and is trimmed here after
        a quiet tick, so thousands of idle connections stay cheap. A connection
        whose send has made no progress for write_timeout (a client that sends
        requests and never reads the replies) is closed here too; the hot path
        only bumps byte counters.
        """
        idle = self.idle_timeout if self.idle_timeout and self.idle_timeout > 0 else math.inf
        write_timeout = self.config.write_timeout
        stuck = write_timeout if write_timeout > 0 else math.inf
        tick = min(1.0, idle / 4, stuck / 4)
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            for conn in list(self._conns):
                if conn.sending() and conn.bytes_out == conn.seen_bytes_out:
                    if now - conn.stalled_since >= stuck:
                        conn.write_timed_out()
                        continue
                else:
                    conn.seen_bytes_out = conn.bytes_out
                    conn.stalled_since = now
                if conn.idle_goaway_at is not None:
                    conn.close_idle(now)  # told to go away: closed once its grace is over
                    continue
                if conn.bytes_in != conn.seen_bytes_in or conn.busy():
                    conn.seen_bytes_in = conn.bytes_in
                    conn.last_active = now
                    continue
                conn.trim()
                if now - conn.last_active >= idle:
                    log.debug("closing idle connection %s", conn.peer, extra={"peer": conn.peer})
                    conn.close_idle(now)


async def serve(
    service: Service | None = None,
    host: str | FromConfig | None = FROM_CONFIG,
    port: int | FromConfig = FROM_CONFIG,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve ``service`` (plus the built-ins) on ``host``:``port`` until cancelled.

    ``await nursery.start(trio_echo.serve, service, "127.0.0.1", 0)`` returns
    the listeners, so port 0 works in tests. ``host`` and ``port`` default to
    :class:`ServerConfig`'s; ``options`` are the keyword arguments of
    :class:`Server` (``config=`` or any setting). For graceful shutdown, make
    a :class:`Server` and call its :meth:`Server.shutdown`.

    Raises:
        ValueError: a setting is out of range (``port=70000`` ...).
    """
    server = Server(service, **options, **given_settings(host=host, port=port))
    await server.serve(task_status=task_status)


async def serve_stream(
    stream: trio.abc.Stream, service: Service | None = None, **options: Any
) -> None:
    """Serve one connection over any Trio stream with a fresh :class:`Server`."""
    await Server(service, **options).serve_stream(stream)
