"""``trio-echo serve --workers N``: one Trio loop per core, sharing a port.

The supervisor starts N worker processes. Each runs an ordinary server that
binds the same host and port with ``SO_REUSEPORT``, so the kernel spreads
new connections across them, and each tells the supervisor through a pipe
once it is listening. The supervisor holds the port (bound, not listening)
for its whole life, which is how ``--port 0`` works with several workers.

A Unix socket cannot be shared with ``SO_REUSEPORT``: the supervisor binds
it once (and removes it at the end), and passes the listening descriptor to
every worker (``--fd N``), as it does with descriptors inherited from
systemd. The workers then all accept on the one socket, and the kernel hands
each new connection to one of them.

A worker that dies is logged, counted and restarted (with a short backoff
if it keeps dying). The first SIGINT/SIGTERM is passed on to every worker as
SIGTERM, and they drain gracefully; a second one is passed on as SIGUSR1, and
they stop at once. A worker counts any number of SIGTERMs as one drain, so a
signal sent to the whole process group (a terminal's Ctrl-C, ``kill -TERM
-PGID``, systemd's default ``KillMode=control-group``), which reaches the
workers both directly and through the supervisor, still drains.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

import trio

from .listeners import UnixSocketFile, bind_unix_socket, check_listening_fd, tcp_listen_error
from .metrics import (
    TrioEchoCollector,
    ask_worker,
    counters_only,
    merge_snapshots,
    start_metrics_server,
)

__all__ = ["reserve_port", "supervise"]

log = logging.getLogger("trio_echo")

#: A worker that dies sooner than this after starting counts as crashing early.
EARLY_DEATH_S: Final = 1.0
#: A worker that exited with code 0 is restarted only if the supervisor is not
#: asked to stop within this many seconds.
CLEAN_EXIT_WAIT_S: Final = 2.0
#: Longest pause before restarting a worker that keeps dying early.
MAX_BACKOFF_S: Final = 5.0


def reserve_port(host: str | None, port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) a SO_REUSEPORT socket; return it and the port it holds.

    Raises:
        ListenerError: the address does not resolve, is taken, ... (one line).
    """
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(info[0], info[1], info[2])
    except OSError as exc:
        raise tcp_listen_error(host, port, exc) from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(info[4])
    except OSError as exc:
        sock.close()
        raise tcp_listen_error(host, port, exc) from exc
    return sock, sock.getsockname()[1]


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: trio.Process | None = None
        self.started_at = 0.0
        self.early_deaths = 0
        #: The supervisor's end of the worker's metrics socketpair (with --metrics-port).
        self.metrics: trio.SocketStream | None = None
        self.metrics_lock = trio.Lock()
        #: The worker's last snapshot: what it still counts for once it is gone.
        self.last: dict[str, Any] | None = None


async def supervise(
    worker_argv: Sequence[str],
    count: int,
    host: str | None,
    port: int | None,
    *,
    unix: str | None = None,
    unix_mode: int = 0o600,
    fds: Sequence[int] = (),
    metrics: tuple[str, int] | None = None,
) -> int:
    """Run ``count`` workers until a signal; return the exit code.

    ``worker_argv`` is the ``trio-echo serve`` command line of one worker,
    without its listeners (``--port``, ``--fd``) and ``--ready-fd``, which
    are added here. ``port`` None means no TCP listener; ``unix`` is bound
    here and shared, like the inherited listening descriptors ``fds``.
    With ``metrics`` (host, port) the supervisor serves ``/metrics`` for the
    whole server: the sum of its workers' counters (see :mod:`.metrics`).

    Raises:
        ListenerError: a listener cannot be set up (see :mod:`.listeners`).
    """
    for fd in fds:
        check_listening_fd(fd).detach()  # checked only: the workers get it
    shared = list(fds)
    unix_sock: socket.socket | None = None
    unix_file: UnixSocketFile | None = None
    try:
        if unix is not None:
            unix_sock, unix_file = bind_unix_socket(unix, mode=unix_mode)
            shared.append(unix_sock.fileno())
        holder: socket.socket | None = None
        if port is not None:
            holder, port = reserve_port(host, port)
        with contextlib.ExitStack() as held:
            if holder is not None:
                held.enter_context(holder)
            where = [f"fd {fd}" for fd in fds]
            if unix is not None:
                where.insert(0, f"unix:{unix}")
            listen_argv = [arg for fd in shared for arg in ("--fd", str(fd))]
            if port is not None:
                shown = host or "*"
                where.insert(0, f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}")
                listen_argv += ["--port", str(port)]
            return await _supervise(
                worker_argv, count, listen_argv, shared, ", ".join(where), metrics
            )
    finally:
        if unix_sock is not None:
            unix_sock.close()
        if unix_file is not None:
            unix_file.remove()


async def _supervise(
    worker_argv: Sequence[str],
    count: int,
    listen_argv: Sequence[str],
    shared: Sequence[int],
    where: str,
    metrics: tuple[str, int] | None = None,
) -> int:
    restarts = 0
    stopping = False
    stop_metrics: Callable[[], None] | None = None
    forced = False
    workers = [_Worker(i) for i in range(count)]

    retired: dict[str, Any] = merge_snapshots([])  # what dead workers had counted

    async def start(worker: _Worker) -> None:
        nonlocal retired
        read_fd, write_fd = os.pipe()
        theirs: socket.socket | None = None
        try:
            argv = [
                sys.executable,
                "-m",
                "trio_echo",
                "serve",
                *worker_argv,
                *listen_argv,
                "--ready-fd",
                str(write_fd),
            ]
            pass_fds = [write_fd, *shared]
            if metrics is not None:
                if worker.last is not None:
                    retired = merge_snapshots([retired, counters_only(worker.last)])
                    worker.last = None
                ours, theirs = socket.socketpair()
                worker.metrics = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
                argv += ["--metrics-fd", str(theirs.fileno())]
                pass_fds.append(theirs.fileno())
            worker.process = await trio.lowlevel.open_process(
                argv, pass_fds=pass_fds, stdin=subprocess.DEVNULL
            )
        finally:
            os.close(write_fd)
            if theirs is not None:
                theirs.close()
        worker.started_at = trio.current_time()
        # The worker writes one byte once it listens; EOF means it died first.
        async with trio.lowlevel.FdStream(read_fd) as ready:
            await ready.receive_some(1)

    async def watch(worker: _Worker) -> None:
        nonlocal restarts
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            if stopping:
                return
            restarts += 1
            lived = trio.current_time() - worker.started_at
            worker.early_deaths = worker.early_deaths + 1 if lived < EARLY_DEATH_S else 0
            delay = min(MAX_BACKOFF_S, 0.1 * 2**worker.early_deaths) if worker.early_deaths else 0
            if code == 0:
                # A clean exit is a drain that a signal asked for: one sent to the whole
                # process group reaches the supervisor too, maybe only after the worker
                # has drained. Restarting at once would start a worker just to stop it.
                delay = max(delay, CLEAN_EXIT_WAIT_S)
            log.error(
                "worker %d (pid %d) exited with code %s; restarting it in %.1fs "
                "(%d restart(s) so far)",
                worker.index,
                worker.process.pid,
                code,
                delay,
                restarts,
            )
            await trio.sleep(delay)
            if stopping:
                return
            await start(worker)

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as starting:
                for worker in workers:
                    starting.start_soon(start, worker)
            if metrics is not None:

                async def gather() -> dict[str, Any]:
                    snaps = [retired]
                    for worker in workers:
                        snaps.append(await _ask(worker))
                    return merge_snapshots(snaps)

                token = trio.lowlevel.current_trio_token()

                def take() -> dict[str, Any] | None:
                    try:
                        return trio.from_thread.run(gather, trio_token=token)
                    except trio.RunFinishedError:
                        return None

                _, bound, stop_metrics = start_metrics_server(TrioEchoCollector(take), *metrics)
                log.info("metrics on http://%s:%d/metrics (all workers)", metrics[0], bound)
            log.info(
                "trio-echo supervisor listening on %s with %d workers (pid %d)",
                where,
                count,
                os.getpid(),
            )
            for worker in workers:
                nursery.start_soon(watch, worker)

            async for signum in signals:
                name = signal.Signals(signum).name
                if stopping:
                    log.warning("%s: stopping the workers now", name)
                    forced = True
                else:
                    log.info("%s: draining %d workers", name, count)
                    stopping = True
                # Workers drain on SIGTERM (repeats included: a group-wide signal
                # reaches them directly too) and stop at once on SIGUSR1.
                passed_on = signal.SIGUSR1 if forced else signal.SIGTERM
                for worker in workers:
                    if worker.process is not None and worker.process.returncode is None:
                        worker.process.send_signal(passed_on)
                if not forced:
                    nursery.start_soon(_wait_all_then_cancel, workers, nursery.cancel_scope)
            # Unreachable: the signal loop only ends through the cancel above.
    if stop_metrics is not None:
        await trio.to_thread.run_sync(stop_metrics)
    codes = [w.process.returncode for w in workers if w.process is not None]
    failed = forced or any(code != 0 for code in codes)
    log.info("supervisor stopped (worker exit codes %s)", codes)
    return 1 if failed else 0


async def _ask(worker: _Worker) -> dict[str, Any]:
    """A worker's snapshot, or its last one if it does not answer within a second."""
    stream = worker.metrics
    if stream is not None:
        async with worker.metrics_lock:
            with trio.move_on_after(1.0):
                try:
                    worker.last = await ask_worker(stream)
                except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError, OSError):
                    pass
    return worker.last or merge_snapshots([])


async def _wait_all_then_cancel(workers: list[_Worker], scope: trio.CancelScope) -> None:
    for worker in workers:
        if worker.process is not None:
            await worker.process.wait()
    scope.cancel()
