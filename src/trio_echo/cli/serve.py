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
from collections.abc import Callable, Sequence
from typing import Any

import trio

from .. import tls
from ..logs import setup_logging
from ..server.config import SETTINGS, ServerConfig, Setting
from ..server.listeners import (
    ListenerError,
    UnixSocketFile,
    describe,
    fd_listener,
    open_tcp_listeners,
    open_unix_listener,
    systemd_fds,
    tcp_listen_error,
)
from ..server.metrics import (
    TrioEchoCollector,
    answer_metrics_requests,
    snapshot,
    start_metrics_server,
)
from ..server.server import Server
from ..server.service import Service

__all__ = ["configure", "load_app", "run"]

log = logging.getLogger("trio_echo")


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
    p.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        help="a trio_echo.Service to serve beside the built-ins, e.g. mymodule:service; "
        "MODULE is imported from the current directory (or --app-dir), then the Python path",
    )
    p.add_argument(
        "--app-dir",
        metavar="DIR",
        help="import --app from DIR instead of the current directory (put first on the "
        "Python path, as uvicorn's --app-dir)",
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
    # One flag per ServerConfig field. Their argparse default is "absent", so
    # that only the flags given override the config (hypercorn's way); --help
    # shows the config's defaults.
    for spec in SETTINGS:
        if not spec.flag:
            continue
        shown = f"{spec.help} (default: {spec.shown_default})"
        if isinstance(spec.default, bool):
            p.add_argument(spec.option, action="store_true", default=argparse.SUPPRESS, help=shown)
        else:
            p.add_argument(
                spec.option,
                type=flag_parser(spec),
                choices=spec.choices,
                metavar=spec.metavar,
                default=argparse.SUPPRESS,
                help=shown,
            )
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    # A --workers worker answers the supervisor's metrics requests on this socket.
    p.add_argument("--metrics-fd", type=int, help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def flag_parser(spec: Setting) -> Callable[[str], Any]:
    """Turns a flag's text into the setting's type, checked as ServerConfig checks it."""
    convert = spec.convert

    def parse(text: str) -> Any:
        value = convert(text)  # a ValueError here reads "invalid int value: ..."
        # argparse itself checks choices, after this, with its usual message.
        problem = None if spec.choices else spec.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = getattr(convert, "__name__", "setting")
    return parse


def load_app(spec: str, app_dir: str | None = None) -> Service:
    """Import ``MODULE:ATTR`` and return the :class:`Service` it names.

    MODULE is looked for in ``app_dir`` (else the current directory), then
    on the rest of the Python path, as ``python -m`` looks for modules.

    Raises:
        ValueError: the spec is malformed, ``app_dir`` is not a directory, or
            the spec does not name a Service.
        ImportError: the module cannot be imported.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--app must look like MODULE:ATTR, not {spec!r}")
    if app_dir is not None:
        where = os.path.abspath(app_dir)
        if not os.path.isdir(where):
            raise ValueError(f"--app-dir {app_dir} is not a directory")
        if where not in sys.path:
            sys.path.insert(0, where)
    else:
        where = os.getcwd()
        if "" not in sys.path and "." not in sys.path:
            sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or module_name.split(".")[0] != exc.name.split(".")[0]:
            raise  # the app was found; something it imports is missing
        hint = "" if app_dir is not None else "; --app-dir DIR looks in DIR instead"
        raise ModuleNotFoundError(
            f"no module named {exc.name!r} in {where} or on the Python path{hint}",
            name=exc.name,
        ) from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if callable(obj) and not isinstance(obj, Service):
        obj = obj()
    if not isinstance(obj, Service):
        raise ValueError(f"{spec} is a {type(obj).__name__}, not a trio_echo.Service")
    return obj


def ssl_context_from_config(config: ServerConfig) -> ssl.SSLContext | None:
    """The server's TLS context, or None for plaintext.

    Raises:
        ListenerError: the options are incomplete or a file is unusable.
    """
    if config.tls_cert is None and config.tls_key is None:
        if config.tls_client_ca is not None:
            raise ListenerError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise ListenerError("--tls-cert and --tls-key go together")
    try:
        return tls.server_context(config.tls_cert, config.tls_key, client_ca=config.tls_client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ListenerError(f"cannot load the TLS files: {exc}") from exc


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The :class:`ServerConfig` of ``args``: the defaults, overridden by the flags given."""
    return ServerConfig(**{spec.name: getattr(args, spec.name) for spec in given(args)})


def given(args: argparse.Namespace) -> list[Setting]:
    """The settings whose flags were given on the command line."""
    return [spec for spec in SETTINGS if spec.flag and hasattr(args, spec.name)]


def run(args: argparse.Namespace) -> int:
    """Run ``trio-echo serve``; returns the exit code."""
    config = config_from_args(args)
    setup_logging(config.log_level, config.log_format)
    try:
        ssl_context = ssl_context_from_config(config)
        metrics = metrics_address(config)
        server = Server(
            load_app(args.app, args.app_dir) if args.app else None,
            config,
            ssl_context=ssl_context,
            metrics=metrics is not None or args.metrics_fd is not None,
        )
    except ListenerError as exc:
        print(f"trio-echo serve: {exc}", file=sys.stderr)
        return 2
    except (ImportError, AttributeError, ValueError) as exc:
        print(f"trio-echo serve: cannot load --app {args.app}: {exc}", file=sys.stderr)
        return 2
    raise_fd_limit(config.max_connections)
    workers = config.workers if config.workers > 0 else (os.cpu_count() or 1)
    if workers > 1 and args.app:
        log.warning(
            "--app %s runs in each of the %d worker processes: module-level state (a dict "
            "used as a store, counters, caches) is per process, not shared; keep shared "
            "state in an external store (a database, Redis, ...)",
            args.app,
            workers,
        )
    try:
        fds = [*systemd_fds(), *args.fd]
        port = listen_port(args, config, fds)
        if workers > 1:
            from ..server.supervisor import supervise

            return trio.run(
                functools.partial(
                    supervise,
                    worker_argv(args),
                    workers,
                    config.host,
                    port,
                    unix=config.unix,
                    unix_mode=config.unix_mode,
                    fds=fds,
                    metrics=metrics,
                )
            )
        return trio.run(
            functools.partial(
                serve_until_signalled,
                server,
                port,
                ready_fd=args.ready_fd,
                fds=fds,
                metrics=metrics,
                metrics_fd=args.metrics_fd,
            )
        )
    except ListenerError as exc:
        print(f"trio-echo serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"trio-echo serve: {exc}", file=sys.stderr)
        return 1


def metrics_address(config: ServerConfig) -> tuple[str, int] | None:
    """Where to serve /metrics, or None.

    Raises:
        ListenerError: prometheus-client is not installed.
    """
    if config.metrics_port is None:
        return None
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ListenerError(
            "--metrics-port needs prometheus-client: pip install 'trio-echo[metrics]'"
        ) from None
    return config.metrics_host, config.metrics_port


def listen_port(args: argparse.Namespace, config: ServerConfig, fds: list[int]) -> int | None:
    """The TCP port to bind, or None: without --port, only when no other listener is given."""
    if hasattr(args, "port") or not (config.unix or fds):
        return config.port
    return None


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
    """The ``serve`` options of one worker process: the flags given, but one worker
    sharing the supervisor's listeners (``--port``, ``--fd`` and ``--ready-fd``
    are added by it)."""
    argv = []
    for spec in given(args):
        if spec.name in (
            "port",
            "unix",
            "unix_mode",
            "workers",
            "reuse_port",
            "metrics_port",  # the supervisor serves the metrics of every worker
            "metrics_host",
        ):
            continue
        value = getattr(args, spec.name)
        argv += [spec.option] if isinstance(value, bool) else [spec.option, str(value)]
    if args.app:
        argv += ["--app", args.app]
    if args.app_dir:
        argv += ["--app-dir", os.path.abspath(args.app_dir)]
    return [*argv, "--workers", "1", "--reuse-port"]


async def open_all_listeners(
    host: str | None,
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
            try:
                listeners += await open_tcp_listeners(host, port, reuse_port=reuse_port)
            except OSError as exc:
                raise tcp_listen_error(host, port, exc) from exc
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        if unix_file is not None:
            unix_file.remove()
        raise
    return listeners, unix_file


async def serve_until_signalled(
    server: Server,
    port: int | None,
    *,
    ready_fd: int | None = None,
    fds: Sequence[int] = (),
    metrics: tuple[str, int] | None = None,
    metrics_fd: int | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM, then drain; a second signal stops at once.

    Listens on TCP ``port`` (unless it is None) at the config's host, on the
    config's Unix socket (removed again when the server stops) and on the
    inherited listening descriptors ``fds``. With ``metrics`` (host, port)
    it serves Prometheus metrics there; a ``--workers`` worker answers its
    supervisor's metrics requests on ``metrics_fd`` instead. Returns 0 after
    a graceful shutdown, 1 after a forced one.
    """
    config = server.config
    forced = False
    watched = [signal.SIGINT, signal.SIGTERM]
    worker = ready_fd is not None
    if worker:
        # A --workers worker drains on SIGTERM, however many arrive, and stops at
        # once only on its supervisor's SIGUSR1 (see supervisor.py). A Ctrl-C in a
        # terminal, `kill -TERM -PGID` and systemd's KillMode=control-group reach
        # every process of the group, and the supervisor passes the signal on too:
        # counting both as "again" would force a stop instead of a drain.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Ignored, too, once the signal receiver below hands SIGTERM back: the copy a
        # group-wide signal sends through the supervisor can arrive after this worker
        # drained, as it exits, and must not turn its clean exit into a kill (-15).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        watched = [signal.SIGTERM, signal.SIGUSR1]
    listeners, unix_file = await open_all_listeners(
        config.host,
        port,
        reuse_port=config.reuse_port,
        unix=config.unix,
        unix_mode=config.unix_mode,
        fds=fds,
    )
    stop_metrics: Callable[[], None] | None = None
    try:
        with trio.open_signal_receiver(*watched) as signals:
            async with trio.open_nursery() as nursery:

                async def serve_then_stop(
                    task_status: trio.TaskStatus[list[trio.SocketListener]],
                ) -> None:
                    await server.serve_listeners(listeners, task_status=task_status)
                    nursery.cancel_scope.cancel()  # drained: stop watching for signals

                await nursery.start(serve_then_stop)
                if metrics is not None:
                    stop_metrics = _serve_metrics(server, *metrics)
                if metrics_fd is not None:
                    nursery.start_soon(answer_metrics_requests, server, metrics_fd)
                mode = server.config.mode
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
                    if not server.shutting_down and signum != signal.SIGUSR1:
                        log.info(
                            "%s: shutting down gracefully%s",
                            name,
                            "" if worker else " (again to stop at once)",
                        )
                        server.shutdown()
                    elif worker and signum == signal.SIGTERM:
                        log.debug("%s again: still draining (the supervisor stops workers)", name)
                    else:
                        log.warning("%s: stopping now", name)
                        forced = True
                        nursery.cancel_scope.cancel()
    finally:
        if stop_metrics is not None:
            await trio.to_thread.run_sync(stop_metrics)
        if unix_file is not None:
            unix_file.remove()
    log.info("stopped%s", " (forced)" if forced else "")
    return 1 if forced else 0


def _serve_metrics(server: Server, host: str, port: int) -> Callable[[], None]:
    """Start the /metrics endpoint (a thread); return the function that stops it."""
    token = trio.lowlevel.current_trio_token()

    def take() -> dict[str, Any] | None:
        try:
            return trio.from_thread.run_sync(snapshot, server, trio_token=token)
        except trio.RunFinishedError:
            return None

    _, bound, stop = start_metrics_server(TrioEchoCollector(take), host, port)
    where = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
    log.info("metrics on http://%s/metrics", where)
    return stop


async def _drain_when_orphaned(server: Server) -> None:
    """A worker whose supervisor died drains and exits instead of lingering."""
    parent = os.getppid()
    while os.getppid() == parent:  # noqa: ASYNC110 - no event exists for this
        await trio.sleep(1)
    log.warning("supervisor (pid %d) is gone: shutting down", parent)
    server.shutdown()
