"""``trio-echo serve --workers N``: SO_REUSEPORT workers, restarts, graceful drain."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

from trio_echo import wire
from trio_echo.wire import Response

from helpers import ServerProcess


class SyncPeer:
    """A framed peer on a blocking socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.conn = wire.Connection()
        self.sock.sendall(self.conn.initiate())
        hello = self.next()
        assert isinstance(hello, wire.Notification) and hello.method == "hello"

    def next(self) -> wire.Event:
        while True:
            event = self.conn.next_event()
            if event is not wire.NEED_DATA:
                assert not isinstance(event, type(wire.NEED_DATA))
                return event
            self.conn.receive_data(self.sock.recv(65536))

    def send(self, msgid: int, method: str, *params: object) -> None:
        self.sock.sendall(self.conn.send(wire.Request(msgid, method, list(params))))

    def call(self, msgid: int, method: str, *params: object) -> wire.Event:
        self.send(msgid, method, *params)
        return self.next()

    def close(self) -> None:
        self.sock.close()


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
    peers = [SyncPeer(port) for _ in range(n)]
    try:
        for peer in peers:
            reply = peer.call(1, "stats")
            assert isinstance(reply, Response)
            pids.append(reply.result["pid"])
    finally:
        for peer in peers:
            peer.close()
    return pids


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
        peers = [SyncPeer(srv.port) for _ in range(10)]
        for i, peer in enumerate(peers):
            peer.send(i, "sleep", 0.5)
            assert peer.call(100 + i, "ping") == Response(100 + i, "pong")
        srv.proc.send_signal(signal.SIGTERM)
        for i, peer in enumerate(peers):
            assert peer.next() == Response(i, None)
            peer.close()
        assert srv.wait() == 0
    assert "Traceback" not in "".join(srv.log)
