"""``trio-echo serve``: run a server until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from typing import Any

import trio

from .. import tls, wire
from ..server.listeners import (
    ListenerError,
    UnixSocketFile,
    describe,
    fd_listener,
    open_tcp_listeners,
    open_unix_listener,
    systemd_fds,
)
from ..server.server import Server
from ..server.service import Service

__all__ = ["configure", "load_app", "run"]

log = logging.getLogger("trio_echo")

DEFAULT_PORT = 7000


def configure(sub: Any) -> None:
    """Add the ``serve`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run a server",
        description=(
            "Serve the built-in methods (echo, ping, sleep, stats, methods) and an "
            "optional user service. One port serves framed clients, plain msgpack-rpc "
            "streams and raw echo (netcat). SIGINT/SIGTERM shut down gracefully; a "
            "second signal exits at once."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"TCP port (0 = any free port); default {DEFAULT_PORT}, unless --unix, --fd "
        "or socket activation give the listeners (then TCP only if --port is given too)",
    )
    p.add_argument(
        "--unix",
        metavar="PATH",
        help="listen on a Unix domain socket at PATH (a stale socket file is replaced)",
    )
    p.add_argument(
        "--unix-mode",
        type=_octal_mode,
        default=0o600,
        metavar="OCTAL",
        help="permissions of the --unix socket file (default 600)",
    )
    p.add_argument(
        "--fd",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="serve the inherited listening socket N (repeatable); LISTEN_FDS/LISTEN_PID "
        "(systemd socket activation) are honoured without it",
    )
    p.add_argument("--tls-cert", metavar="FILE", help="serve TLS only, with this certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
    p.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="require client certificates signed by this CA (mutual TLS)",
    )
    p.add_argument(
        "--tls-handshake-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="close a TLS client that has not finished its handshake by then (0 = never)",
    )
    p.add_argument(
        "--mode",
        choices=["auto", "framed", "mprpc", "raw"],
        default="auto",
        help="auto tells the three connection kinds apart by their first bytes; "
        "the others pin one kind",
    )
    p.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        help="a trio_echo.Service to serve beside the built-ins, e.g. mymodule:service",
    )
    p.add_argument(
        "--max-frame",
        type=_positive_int,
        default=wire.DEFAULT_MAX_FRAME,
        metavar="BYTES",
        help="largest frame (or stream message) accepted; larger ones get frame_too_large",
    )
    p.add_argument(
        "--max-inflight",
        type=_positive_int,
        default=wire.DEFAULT_MAX_INFLIGHT,
        metavar="N",
        help="requests running at once per connection; past it the server stops reading",
    )
    p.add_argument(
        "--max-connections",
        type=_positive_int,
        default=10000,
        metavar="N",
        help="connections served at once; more are accepted and closed",
    )
    p.add_argument(
        "--max-requests",
        type=_positive_int,
        default=65536,
        metavar="N",
        help="requests in flight server-wide; past it requests get overloaded",
    )
    p.add_argument(
        "--idle-timeout",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="close a connection that has sent nothing, and is owed nothing, this long "
        "(also before its first byte; 0 = never)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=16,
        metavar="N",
        help="worker threads for blocking=True handlers",
    )
    p.add_argument(
        "--grace",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="on shutdown, how long to wait for requests in flight before cancelling them",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing the port via SO_REUSEPORT, each with its own "
        "Trio loop (0 = one per core)",
    )
    p.add_argument(
        "--reuse-port",
        action="store_true",
        help="set SO_REUSEPORT so that several servers can share the port",
    )
    p.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="expect a PROXY protocol header (v1 or v2, e.g. HAProxy's send-proxy-v2) first "
        "on every connection, and log the client it names; connections without one are "
        "closed. Only behind a trusted load balancer",
    )
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="logging level",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="include tracebacks in internal error responses",
    )
    p.set_defaults(run=run)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _octal_mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be octal permissions such as 600, not {text}"
        ) from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"must be octal permissions from 0 to 777, not {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, not {text}")
    return value


def load_app(spec: str) -> Service:
    """Import ``MODULE:ATTR`` and return the :class:`Service` it names.

    Raises:
        ValueError: the spec is malformed or does not name a Service.
        ImportError: the module cannot be imported.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--app must look like MODULE:ATTR, not {spec!r}")
    if "" not in sys.path and "." not in sys.path:
        # Like `python -m`, let users name modules in the current directory.
        sys.path.insert(0, "")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if callable(obj) and not isinstance(obj, Service):
        obj = obj()
    if not isinstance(obj, Service):
        raise ValueError(f"{spec} is a {type(obj).__name__}, not a trio_echo.Service")
    return obj


def ssl_context_from_args(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server's TLS context, or None for plaintext.

    Raises:
        ListenerError: the options are incomplete or a file is unusable.
    """
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise ListenerError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise ListenerError("--tls-cert and --tls-key go together")
    if args.proxy_protocol:
        raise ListenerError(
            "--proxy-protocol cannot be combined with TLS yet: terminate TLS at the balancer"
        )
    try:
        return tls.server_context(args.tls_cert, args.tls_key, client_ca=args.tls_client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ListenerError(f"cannot load the TLS files: {exc}") from exc


def server_from_args(args: argparse.Namespace) -> Server:
    """Build the :class:`Server` that ``args`` describe."""
    service = load_app(args.app) if args.app else None
    return Server(
        service,
        mode=args.mode,
        max_frame=args.max_frame,
        max_inflight=args.max_inflight,
        threads=args.threads,
        grace=args.grace,
        max_connections=args.max_connections,
        max_requests=args.max_requests,
        idle_timeout=args.idle_timeout,
        debug=args.debug,
        proxy_protocol=args.proxy_protocol,
        ssl_context=ssl_context_from_args(args),
        tls_handshake_timeout=args.tls_handshake_timeout,
    )


def setup_logging(level: str) -> None:
    """Log one line per event to stderr."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``trio-echo serve``; returns the exit code."""
    setup_logging(args.log_level)
    try:
        server = server_from_args(args)
    except ListenerError as exc:
        print(f"trio-echo serve: {exc}", file=sys.stderr)
        return 2
    except (ImportError, AttributeError, ValueError) as exc:
        print(f"trio-echo serve: cannot load --app {args.app}: {exc}", file=sys.stderr)
        return 2
    raise_fd_limit(args.max_connections)
    workers = args.workers if args.workers > 0 else (os.cpu_count() or 1)
    try:
        fds = [*systemd_fds(), *args.fd]
        port = listen_port(args, fds)
        if workers > 1:
            from ..server.supervisor import supervise

            return trio.run(
                functools.partial(
                    supervise,
                    worker_argv(args),
                    workers,
                    args.host,
                    port,
                    unix=args.unix,
                    unix_mode=args.unix_mode,
                    fds=fds,
                )
            )
        return trio.run(
            functools.partial(
                serve_until_signalled,
                server,
                args.host,
                port,
                reuse_port=args.reuse_port,
                ready_fd=args.ready_fd,
                unix=args.unix,
                unix_mode=args.unix_mode,
                fds=fds,
            )
        )
    except ListenerError as exc:
        print(f"trio-echo serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"trio-echo serve: {exc}", file=sys.stderr)
        return 1


def listen_port(args: argparse.Namespace, fds: list[int]) -> int | None:
    """The TCP port to bind, or None: without --port, only when no other listener is given."""
    if args.port is not None:
        return int(args.port)
    return None if args.unix or fds else DEFAULT_PORT


def raise_fd_limit(max_connections: int) -> None:
    """Raise the soft open-files limit towards the hard one, so that the
    default ``--max-connections`` is reachable where the soft limit is 1024."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + 256  # listeners, worker threads, logs, pipes
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as exc:
            log.warning("could not raise the open-files limit from %d: %s", soft, exc)


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The ``serve`` options of one worker process (listeners and ready fd excepted)."""
    argv = [
        "--host", args.host,
        "--mode", args.mode,
        "--max-frame", str(args.max_frame),
        "--max-inflight", str(args.max_inflight),
        "--max-connections", str(args.max_connections),
        "--max-requests", str(args.max_requests),
        "--idle-timeout", str(args.idle_timeout),
        "--threads", str(args.threads),
        "--grace", str(args.grace),
        "--tls-handshake-timeout", str(args.tls_handshake_timeout),
        "--log-level", args.log_level,
        "--workers", "1",
        "--reuse-port",
    ]  # fmt: skip
    for option in ("tls_cert", "tls_key", "tls_client_ca"):
        if getattr(args, option) is not None:
            argv += ["--" + option.replace("_", "-"), getattr(args, option)]
    if args.app:
        argv += ["--app", args.app]
    if args.debug:
        argv.append("--debug")
    if args.proxy_protocol:
        argv.append("--proxy-protocol")
    return argv


async def open_all_listeners(
    host: str,
    port: int | None,
    *,
    reuse_port: bool = False,
    unix: str | None = None,
    unix_mode: int = 0o600,
    fds: Sequence[int] = (),
) -> tuple[list[trio.SocketListener], UnixSocketFile | None]:
    """Every listener the options name: inherited descriptors, the Unix socket, TCP."""
    listeners = [fd_listener(fd) for fd in fds]
    unix_file = None
    try:
        if unix is not None:
            listener, unix_file = open_unix_listener(unix, mode=unix_mode)
            listeners.append(listener)
        if port is not None:
            listeners += await open_tcp_listeners(host, port, reuse_port=reuse_port)
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        if unix_file is not None:
            unix_file.remove()
        raise
    return listeners, unix_file


async def serve_until_signalled(
    server: Server,
    host: str,
    port: int | None,
    *,
    reuse_port: bool = False,
    ready_fd: int | None = None,
    unix: str | None = None,
    unix_mode: int = 0o600,
    fds: Sequence[int] = (),
) -> int:
    """Serve until SIGINT/SIGTERM, then drain; a second signal stops at once.

    Listens on TCP ``host``:``port`` (unless ``port`` is None), on the Unix
    socket ``unix`` (removed again when the server stops) and on the
    inherited listening descriptors ``fds``. Returns 0 after a graceful
    shutdown, 1 after a forced one.
    """
    forced = False
    watched = [signal.SIGINT, signal.SIGTERM]
    if ready_fd is not None:
        # A --workers worker obeys its supervisor's SIGTERM only: a Ctrl-C in a
        # terminal reaches the whole process group, and the supervisor passes
        # it on as SIGTERM, so counting both would force a stop at once.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        watched = [signal.SIGTERM]
    listeners, unix_file = await open_all_listeners(
        host, port, reuse_port=reuse_port, unix=unix, unix_mode=unix_mode, fds=fds
    )
    try:
        with trio.open_signal_receiver(*watched) as signals:
            async with trio.open_nursery() as nursery:

                async def serve_then_stop(
                    task_status: trio.TaskStatus[list[trio.SocketListener]],
                ) -> None:
                    await server.serve_listeners(listeners, task_status=task_status)
                    nursery.cancel_scope.cancel()  # drained: stop watching for signals

                await nursery.start(serve_then_stop)
                mode = server.mode.value if server.mode else "auto"
                log.info(
                    "trio-echo listening on %s (mode %s%s, pid %d)",
                    describe(listeners),
                    mode,
                    ", TLS" if server.ssl_context is not None else "",
                    os.getpid(),
                )
                if ready_fd is not None:
                    # Tell the supervisor (--workers) that this worker accepts connections.
                    os.write(ready_fd, b"1")
                    os.close(ready_fd)
                    nursery.start_soon(_drain_when_orphaned, server)
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not server.shutting_down:
                        log.info("%s: shutting down gracefully (again to stop at once)", name)
                        server.shutdown()
                    else:
                        log.warning("%s: stopping now", name)
                        forced = True
                        nursery.cancel_scope.cancel()
    finally:
        if unix_file is not None:
            unix_file.remove()
    log.info("stopped%s", " (forced)" if forced else "")
    return 1 if forced else 0


async def _drain_when_orphaned(server: Server) -> None:
    """A worker whose supervisor died drains and exits instead of lingering."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 - no event exists for this
        await trio.sleep(1)
    log.warning("supervisor (pid %d) is gone: shutting down", parent)
    server.shutdown()
