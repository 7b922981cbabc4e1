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
if it keeps dying). The first SIGINT/SIGTERM is passed on to every worker,
which drains gracefully; a second one is passed on too, so the workers stop
at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Final

import trio

from .listeners import UnixSocketFile, bind_unix_socket, check_listening_fd

__all__ = ["reserve_port", "supervise"]

log = logging.getLogger("trio_echo")

#: A worker that dies sooner than this after starting counts as crashing early.
EARLY_DEATH_S: Final = 1.0
#: Longest pause before restarting a worker that keeps dying early.
MAX_BACKOFF_S: Final = 5.0


def reserve_port(host: str | None, port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) a SO_REUSEPORT socket; return it and the port it holds."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], info[1], info[2])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(info[4])
    return sock, sock.getsockname()[1]


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: trio.Process | None = None
        self.started_at = 0.0
        self.early_deaths = 0


async def supervise(
    worker_argv: Sequence[str],
    count: int,
    host: str | None,
    port: int | None,
    *,
    unix: str | None = None,
    unix_mode: int = 0o600,
    fds: Sequence[int] = (),
) -> int:
    """Run ``count`` workers until a signal; return the exit code.

    ``worker_argv`` is the ``trio-echo serve`` command line of one worker,
    without its listeners (``--port``, ``--fd``) and ``--ready-fd``, which
    are added here. ``port`` None means no TCP listener; ``unix`` is bound
    here and shared, like the inherited listening descriptors ``fds``.

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
            return await _supervise(worker_argv, count, listen_argv, shared, ", ".join(where))
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
) -> int:
    restarts = 0
    stopping = False
    forced = False
    workers = [_Worker(i) for i in range(count)]

    async def start(worker: _Worker) -> None:
        read_fd, write_fd = os.pipe()
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
            worker.process = await trio.lowlevel.open_process(
                argv, pass_fds=(write_fd, *shared), stdin=subprocess.DEVNULL
            )
        finally:
            os.close(write_fd)
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
                for worker in workers:
                    if worker.process is not None and worker.process.returncode is None:
                        worker.process.send_signal(signal.SIGTERM)
                if not forced:
                    nursery.start_soon(_wait_all_then_cancel, workers, nursery.cancel_scope)
            # Unreachable: the signal loop only ends through the cancel above.
    codes = [w.process.returncode for w in workers if w.process is not None]
    failed = forced or any(code != 0 for code in codes)
    log.info("supervisor stopped (worker exit codes %s)", codes)
    return 1 if failed else 0


async def _wait_all_then_cancel(workers: list[_Worker], scope: trio.CancelScope) -> None:
    for worker in workers:
        if worker.process is not None:
            await worker.process.wait()
    scope.cancel()
