"""What the worst messages a client can build cost the server: event-loop stall, memory, reply size.

For each attack, a fresh server (``python -m trio_echo serve``, or ``--server CMD`` to
measure another build) is started on a free loopback port. A *prober* connection
sends ``ping`` every 2 ms and records how long each answer took; meanwhile the
attack runs on other connections. Reported per attack:

* ``worst stall``: the longest ping round trip while the attack ran (the time
  other clients wait on the event loop; an idle ping takes ~0.1 ms here);
* ``RSS``: the server's resident memory before and at its peak (``VmHWM``);
* ``reply``: the bytes the server sent the attacker, against the bytes it sent.

Attacks (see issue 10 of the project for where they come from):

============== ===================================================================
object-bomb    framed ``ping`` with options ``{"x": [[]] * N}`` filling max_frame (4 MiB)
string-bomb    the same with ``["ab"] * N`` (2-char strings: the costliest scalars)
map-bomb       the same with ``[{}] * N``
trickle        msgpack-rpc stream ``[0, 1, "echo", [array32 of 4.19M empty arrays ...``
               sent slowly and never finished (held as bytes, not as objects)
echo-amplify   ``timeout_ms: [False] * N`` (an invalid_params reply quoting it)
============== ===================================================================

    python benchmarks/attacks.py                       # every attack, 3 connections each
    python benchmarks/attacks.py --attack object-bomb --connections 10
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
from stress import ServerProcess  # (benchmarks/ is on sys.path when run as a script)

HOST = "127.0.0.1"
MAX_FRAME = 4 * 1024 * 1024
PREAMBLE = b"\x00TECHO\x00\x01"


def frame(obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


def filler(item: Any, item_size: int, budget: int) -> list[Any]:
    """As many copies of ``item`` as fit in ``budget`` bytes of a message."""
    return [item] * (budget // item_size)


def request(options: dict[str, Any]) -> bytes:
    return frame([0, 1, "ping", [], options])


ATTACKS: dict[str, Callable[[], bytes]] = {
    "object-bomb": lambda: request({"x": filler([], 1, MAX_FRAME - 64)}),
    "string-bomb": lambda: request({"x": filler("ab", 3, MAX_FRAME - 64)}),
    "map-bomb": lambda: request({"x": filler({}, 1, MAX_FRAME - 64)}),
    "echo-amplify": lambda: request({"timeout_ms": filler(False, 1, MAX_FRAME - 64)}),
}


class Prober(threading.Thread):
    """Pings every 2 ms on its own framed connection; keeps the worst round trip."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(PREAMBLE)
        self.unpacker = msgpack.Unpacker(raw=False)
        self._read_frame()  # hello
        self.worst = 0.0
        self.samples: list[float] = []
        self.stopping = threading.Event()

    def _read_frame(self) -> Any:
        header = self._exactly(4)
        return msgpack.unpackb(self._exactly(int.from_bytes(header, "big")), raw=False)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("server closed the prober")
            data += chunk
        return data

    def run(self) -> None:
        msgid = 0
        while not self.stopping.is_set():
            msgid += 1
            start = time.perf_counter()
            self.sock.sendall(frame([0, msgid, "ping", []]))
            reply = self._read_frame()
            took = time.perf_counter() - start
            assert reply[1] == msgid and reply[3] == "pong", reply
            self.samples.append(took)
            self.worst = max(self.worst, took)
            time.sleep(0.002)


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """sendall, where the server closing first is an expected end (a fatal notice)."""
    try:
        sock.sendall(data)
    except OSError:
        pass


def run_framed(port: int, payload: bytes, connections: int) -> tuple[int, int]:
    """Send ``payload`` on each connection; read until the server is done; (sent, received)."""
    socks = []
    for _ in range(connections):
        sock = socket.create_connection((HOST, port))
        sock.sendall(PREAMBLE)
        socks.append(sock)
    received = 0
    senders = [threading.Thread(target=send_quietly, args=(s, payload)) for s in socks]
    for t in senders:
        t.start()
    for sock in socks:
        sock.settimeout(30)
        sock.shutdown(socket.SHUT_WR)
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except OSError:
            pass
    for t in senders:
        t.join()
    for sock in socks:
        sock.close()
    return len(payload) * connections, received


def run_trickle(port: int, connections: int, seconds: float = 3.0) -> tuple[int, int]:
    """A stream message announcing 4.19M empty arrays, 4.15M of them sent at once, then
    one a tick: it never ends (nor passes max_frame) while the attack lasts."""
    head = b"\x94\x00\x01\xa4echo\x91\xdd" + (4_190_000).to_bytes(4, "big")
    body = head + b"\x90" * 4_150_000
    socks = [socket.create_connection((HOST, port)) for _ in range(connections)]
    for sock in socks:
        sock.sendall(body)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for sock in socks:
            sock.sendall(b"\x90")
        time.sleep(0.1)
    for sock in socks:
        sock.close()
    return len(body) * connections, 0


def measure(command: list[str], attack: str, connections: int) -> dict[str, Any]:
    server = ServerProcess([], command)
    try:
        prober = Prober(server.port)
        prober.start()
        time.sleep(0.3)
        idle_worst = prober.worst
        prober.worst = 0.0
        before = server.rss_mib()
        if attack == "trickle":
            sent, received = run_trickle(server.port, connections)
            during = server.rss_mib()
        else:
            sent, received = run_framed(server.port, ATTACKS[attack](), connections)
            during = math.nan
        time.sleep(0.2)
        prober.stopping.set()
        prober.join(5)
        return {
            "attack": attack,
            "connections": connections,
            "idle_worst_ms": idle_worst * 1000,
            "worst_stall_ms": prober.worst * 1000,
            "p99_ms": sorted(prober.samples)[int(len(prober.samples) * 0.99)] * 1000
            if prober.samples
            else math.nan,
            "rss_before_mib": before,
            "rss_during_mib": during,
            "rss_peak_mib": server.rss_mib("VmHWM"),
            "sent": sent,
            "received": received,
            "log_bytes": sum(len(line) for line in server.log),
            "server": server,
        }
    finally:
        server.stop()


def longest_step(server: ServerProcess) -> str:
    """What benchmarks/stepclock.py printed at the server's exit, if it ran under it."""
    for line in server.log:
        match = re.search(r"longest task step ([\d.]+) ms", line)
        if match:
            return match.group(1)
    return "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", action="append", choices=[*ATTACKS, "trickle"])
    parser.add_argument("--connections", type=int, default=3)
    parser.add_argument(
        "--server",
        default=f"{sys.executable} -m trio_echo serve",
        help="the server command (--host/--port are appended)",
    )
    parser.add_argument(
        "--stepclock",
        action="store_true",
        help="run the server under benchmarks/stepclock.py and report its longest task "
        "step in CPU time (immune to other processes on the machine)",
    )
    args = parser.parse_args(argv)
    command = shlex.split(args.server)
    if args.stepclock:
        here = __file__.rsplit("/", 1)[0]
        command = [command[0], f"{here}/stepclock.py", "serve"]
    print(
        f"{'attack':13} {'conns':>5} {'idle ms':>8} {'worst stall ms':>15} {'p99 ms':>7} "
        f"{'RSS MiB before':>15} {'peak':>7} {'sent MB':>8} {'reply MB':>9} {'log KB':>7} "
        f"{'step CPU ms':>11}"
    )
    for attack in args.attack or [*ATTACKS, "trickle"]:
        r = measure(command, attack, args.connections)
        print(
            f"{r['attack']:13} {r['connections']:>5} {r['idle_worst_ms']:>8.1f} "
            f"{r['worst_stall_ms']:>15.1f} {r['p99_ms']:>7.1f} {r['rss_before_mib']:>15.1f} "
            f"{r['rss_peak_mib']:>7.1f} {r['sent'] / 1e6:>8.1f} {r['received'] / 1e6:>9.2f} "
            f"{r['log_bytes'] / 1e3:>7.1f} {longest_step(r['server']):>11}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
