"""``trio-echo serve``: run a server until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import signal
import sys
from typing import Any

import trio

from .. import wire
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
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (0 = any free port)")
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
    except (ImportError, AttributeError, ValueError) as exc:
        print(f"trio-echo serve: cannot load --app {args.app}: {exc}", file=sys.stderr)
        return 2
    raise_fd_limit(args.max_connections)
    workers = args.workers if args.workers > 0 else (os.cpu_count() or 1)
    try:
        if workers > 1:
            from ..server.supervisor import supervise

            return trio.run(supervise, worker_argv(args), workers, args.host, args.port)
        return trio.run(
            functools.partial(
                serve_until_signalled,
                server,
                args.host,
                args.port,
                reuse_port=args.reuse_port,
                ready_fd=args.ready_fd,
            )
        )
    except OSError as exc:
        print(f"trio-echo serve: {exc}", file=sys.stderr)
        return 1


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
    """The ``serve`` options of one worker process (port and ready fd excepted)."""
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
        "--log-level", args.log_level,
        "--workers", "1",
        "--reuse-port",
    ]  # fmt: skip
    if args.app:
        argv += ["--app", args.app]
    if args.debug:
        argv.append("--debug")
    if args.proxy_protocol:
        argv.append("--proxy-protocol")
    return argv


async def serve_until_signalled(
    server: Server,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    ready_fd: int | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM, then drain; a second signal stops at once.

    Returns 0 after a graceful shutdown, 1 after a forced one.
    """
    forced = False
    watched = [signal.SIGINT, signal.SIGTERM]
    if ready_fd is not None:
        # A --workers worker obeys its supervisor's SIGTERM only: a Ctrl-C in a
        # terminal reaches the whole process group, and the supervisor passes
        # it on as SIGTERM, so counting both would force a stop at once.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        watched = [signal.SIGTERM]
    with trio.open_signal_receiver(*watched) as signals:
        async with trio.open_nursery() as nursery:

            async def serve_then_stop(
                task_status: trio.TaskStatus[list[trio.SocketListener]],
            ) -> None:
                await server.serve(host, port, reuse_port=reuse_port, task_status=task_status)
                nursery.cancel_scope.cancel()  # drained: stop watching for signals

            listeners = await nursery.start(serve_then_stop)
            addrs = ", ".join(_addr(sock.socket.getsockname()) for sock in listeners)
            mode = server.mode.value if server.mode else "auto"
            log.info("trio-echo listening on %s (mode %s, pid %d)", addrs, mode, os.getpid())
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
    log.info("stopped%s", " (forced)" if forced else "")
    return 1 if forced else 0


async def _drain_when_orphaned(server: Server) -> None:
    """A worker whose supervisor died drains and exits instead of lingering."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 - no event exists for this
        await trio.sleep(1)
    log.warning("supervisor (pid %d) is gone: shutting down", parent)
    server.shutdown()


def _addr(name: Any) -> str:
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(name)
