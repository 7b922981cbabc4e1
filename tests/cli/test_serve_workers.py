"""``trio-echo serve --workers N``: SO_REUSEPORT workers, restarts, graceful drain."""

from __future__ import annotations

import os
import re
import signal
import time

from trio_echo import wire
from trio_echo.server.supervisor import EARLY_DEATH_S
from trio_echo.wire import Response

from helpers import ServerProcess, SyncPeer, run_python


def framed_peer(port: int) -> SyncPeer:
    """A framed peer on a blocking socket, past the server's hello."""
    peer = SyncPeer(port, timeout=15)
    hello = peer.next_event()
    assert isinstance(hello, wire.Notification) and hello.method == "hello"
    return peer


def wait_until_dead(pid: int) -> None:
    """Until the kernel has closed the process's sockets (it is gone or a zombie)."""
    for _ in range(500):
        try:
            with open(f"/proc/{pid}/status") as f:
                if re.search(r"State:\s+Z", f.read()):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} did not die")


def worker_pids(port: int, n: int) -> list[int]:
    pids = []
    peers = [framed_peer(port) for _ in range(n)]
    try:
        for peer in peers:
            reply = peer.call(1, "stats")
            assert isinstance(reply, Response)
            pids.append(reply.result["pid"])
    finally:
        for peer in peers:
            peer.close()
    return pids


def wait_for_line(srv: ServerProcess, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + 20
    while sum(text in line for line in srv.log) < count:
        assert time.monotonic() < deadline, f"no {text!r} in the log"
        time.sleep(0.01)


def test_workers_share_the_port_restart_and_drain() -> None:
    # The supervisor logs its line once every worker listens.
    ready = r"supervisor listening on \S+:(\d+)"
    with ServerProcess("--workers", "2", "--grace", "20", ready=ready) as srv:
        pids = worker_pids(srv.port, 40)
        # SO_REUSEPORT hashes each connection to a worker: both get some.
        assert len(set(pids)) == 2
        assert srv.proc.pid not in pids

        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        wait_until_dead(victim)
        # Connections keep being served, and a replacement worker appears.
        seen: set[int] = set()
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:
            seen.update(worker_pids(srv.port, 10))
        assert victim not in seen
        assert len(seen) == 2
        assert any(re.search(rf"worker \d \(pid {victim}\) exited", line) for line in srv.log)

        # SIGTERM drains every worker: requests in flight are answered.
        peers = [framed_peer(srv.port) for _ in range(10)]
        for i, peer in enumerate(peers):
            peer.send(wire.Request(i, "sleep", [0.5]))
            assert peer.call(100 + i, "ping") == Response(100 + i, "pong")
        srv.proc.send_signal(signal.SIGTERM)
        for i, peer in enumerate(peers):
            assert peer.next_event() == Response(i, None)
            peer.close()
        assert srv.wait() == 0
    assert "Traceback" not in "".join(srv.log)


def test_a_signal_to_the_whole_process_group_drains_the_workers() -> None:
    # systemd's KillMode=control-group, `kill -TERM -PGID` and a terminal's Ctrl-C
    # reach the workers directly AND through the supervisor: still one drain.
    # The signals are sent one after the other (workers first, as a group signal
    # may arrive), so that the kernel cannot merge the two a worker receives.
    ready = r"supervisor listening on \S+:(\d+)"
    with ServerProcess("--workers", "2", "--grace", "20", ready=ready) as srv:
        pids = set(worker_pids(srv.port, 20))
        assert len(pids) == 2
        peers = [framed_peer(srv.port) for _ in range(6)]
        for i, peer in enumerate(peers):
            peer.send(wire.Request(i, "sleep", [1.0]))
            assert peer.call(100 + i, "ping") == Response(100 + i, "pong")
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        wait_for_line(srv, "SIGTERM: shutting down gracefully", count=2)
        srv.proc.send_signal(signal.SIGTERM)
        for i, peer in enumerate(peers):
            assert peer.next_event() == Response(i, None)  # answered, not cut off
            peer.close()
        assert srv.wait() == 0, "".join(srv.log)
    log = "".join(srv.log)
    assert "stopping now" not in log and "Traceback" not in log


def test_workers_that_drained_before_the_supervisor_heard_the_signal_are_not_restarted() -> None:
    # A group-wide SIGTERM whose copy to the supervisor comes after the idle workers
    # have already drained and exited.
    ready = r"supervisor listening on \S+:(\d+)"
    with ServerProcess("--workers", "2", "--grace", "20", ready=ready) as srv:
        pids = set(worker_pids(srv.port, 20))
        time.sleep(EARLY_DEATH_S)  # (older workers: no crash-loop backoff before a restart)
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        wait_for_line(srv, "exited with code 0", count=2)
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.wait() == 0, "".join(srv.log)
    started = [line for line in srv.log if "trio-echo listening on" in line]
    assert len(started) == 2, "".join(srv.log)  # the two first workers, no others


# A worker (serve_until_signalled with a ready fd) in a process of its own.
_WORKER_SIGNALLED_AFTER_ITS_DRAIN = r"""
import os, signal
import trio
from trio_echo import Server
from trio_echo.cli.serve import serve_until_signalled

async def main():
    ready, ready_w = os.pipe()

    async def stop_once_listening():
        await trio.to_thread.run_sync(os.read, ready, 1)  # the worker's "listening" byte
        os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's drain

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_once_listening)
        code = await serve_until_signalled(Server(), 0, ready_fd=ready_w)
    print("drained", code, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # a late copy of a group-wide SIGTERM, as it exits
    print("still exiting cleanly", flush=True)

trio.run(main)
"""


def test_a_worker_that_drained_ignores_a_late_sigterm_as_it_exits() -> None:
    # The race a fresh-clone run met: a worker drained (SIGTERM from the group) and was
    # exiting when the supervisor's copy of the signal arrived; Trio had handed SIGTERM
    # back to its default action, the worker died of it (-15) and the supervisor exited 1.
    result = run_python(_WORKER_SIGNALLED_AFTER_ITS_DRAIN)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["drained 0", "still exiting cleanly"]


def test_a_second_signal_to_the_supervisor_stops_the_workers_at_once() -> None:
    ready = r"supervisor listening on \S+:(\d+)"
    with ServerProcess("--workers", "2", "--grace", "30", ready=ready) as srv:
        peer = framed_peer(srv.port)
        peer.send(wire.Request(1, "sleep", [30]))
        assert peer.call(2, "ping") == Response(2, "pong")
        srv.proc.send_signal(signal.SIGTERM)
        wait_for_line(srv, "draining 2 workers")
        srv.proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        assert srv.wait() == 1
        assert time.monotonic() - start < 10  # not the 30 s grace
        peer.close()
    assert "stopping now" in "".join(srv.log)
