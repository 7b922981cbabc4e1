"""A real HAProxy in front of N trio_echo servers, all on loopback, for end-to-end tests.

The HAProxy configuration is generated from the shipped deploy/haproxy.cfg:
the same defaults, timeouts and health check, with its frontend bound to a
listening socket this process opened on port 0 and handed over as a file
descriptor (``bind fd@N``, so no port race), an admin socket in a temporary
folder, faster checks, and one ``server`` line per trio_echo server.

Each server is ``python -m trio_echo serve --port 0 --proxy-protocol`` in a
subprocess. A server started again gets a fresh port from the OS, and HAProxy
is told over its admin socket (``set server ... addr``), as an orchestrator
would when a restarted instance comes back elsewhere. Only the processes
started here are ever signalled, by their PID.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .servers import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
BACKEND = "trio_echo_servers"
#: Health check interval in the generated configuration (the shipped one says 1s).
CHECK_INTERVAL = "200ms"


def generate_config(
    shipped: str,
    *,
    bind_fd: int,
    admin_socket: Path,
    servers: Sequence[tuple[str, int]],
    server_options: str = "",
) -> str:
    """The shipped configuration, pointed at this machine's loopback servers."""
    out: list[str] = []
    seen = set()
    for line in shipped.splitlines():
        words = line.split()
        key = words[0] if words else ""
        if key == "global":
            out += [line, f"    stats socket {admin_socket} mode 600 level admin"]
            continue
        if key == "bind":
            line = f"    bind fd@{bind_fd}"
        elif key == "maxconn":
            line = "    maxconn 2000"
        elif key == "default-server":
            line = re.sub(r"\binter \S+", f"inter {CHECK_INTERVAL}", line)
        elif key == "server":
            continue  # replaced by this machine's servers, below
        seen.add(key)
        out.append(line)
    missing = {"bind", "default-server", "tcp-check", "balance"} - seen
    assert not missing, f"deploy/haproxy.cfg has no {missing} line any more"
    out += [
        f"    server s{i + 1} {host}:{port}{server_options}"
        for i, (host, port) in enumerate(servers)
    ]
    return "\n".join(out) + "\n"


class Fleet:
    """N trio_echo servers behind one HAProxy; ``port`` is HAProxy's.

    Use as a context manager. ``up`` names the servers started at once (all
    by default); the others are DOWN until :meth:`start`. ``send_proxy`` is
    the PROXY protocol option on the server lines (``send-proxy`` for v1);
    ``server_options`` more options for them (`` check-ssl ca-file ...`` for
    servers that speak TLS, which HAProxy then passes through).
    """

    def __init__(
        self,
        tmp_path: Path,
        n: int,
        *server_args: str,
        up: Sequence[int] | None = None,
        send_proxy: str = "send-proxy-v2",
        server_options: str = "",
        timeout: float = 20.0,
    ) -> None:
        self.tmp_path = tmp_path
        self.send_proxy = send_proxy
        self.server_options = server_options
        self.server_args = ("--proxy-protocol", *server_args)
        self.timeout = timeout
        self.servers: list[ServerProcess | None] = [None] * n
        self.retired: list[ServerProcess] = []
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.listener = socket.socket()
        try:
            self._start(n, range(n) if up is None else up)
        except BaseException:
            self.close()
            raise

    def _start(self, n: int, up: Sequence[int]) -> None:
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(512)
        self.port: int = self.listener.getsockname()[1]
        for i in up:
            self.servers[i] = ServerProcess(*self.server_args)
        addresses = [("127.0.0.1", s.port if s is not None else free_port()) for s in self.servers]
        self.admin_socket = self.tmp_path / "haproxy.sock"
        config = self.tmp_path / "haproxy.cfg"
        config.write_text(
            generate_config(
                SHIPPED.read_text(),
                bind_fd=self.listener.fileno(),
                admin_socket=self.admin_socket,
                servers=addresses,
                server_options=self.server_options,
            ).replace(" send-proxy-v2 ", f" {self.send_proxy} ")
        )
        self.log_path = self.tmp_path / "haproxy.log"
        with open(self.log_path, "wb") as log:
            self.haproxy = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=[self.listener.fileno()],
            )
        self.wait_until(lambda: self.admin_socket.exists(), "HAProxy's admin socket")
        for i in up:
            self.wait_for_state(i, "UP")

    # -- HAProxy's view ------------------------------------------------------------------

    def admin(self, command: str) -> str:
        """One command on HAProxy's admin socket; its answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.admin_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        return b"".join(chunks).decode()

    def server_stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` rows of the backend's servers, by name (s1, s2, ...)."""
        text = self.admin("show stat").lstrip("# ")
        return {
            row["svname"]: row
            for row in csv.DictReader(io.StringIO(text))
            if row["pxname"] == BACKEND and row["svname"] not in ("BACKEND", "FRONTEND")
        }

    def state(self, i: int) -> str:
        """HAProxy's status of server ``i``: "UP", "DOWN", "UP 1/2" (going down) ..."""
        return self.server_stats()[f"s{i + 1}"]["status"]

    def wait_for_state(self, i: int, state: str) -> None:
        self.wait_until(lambda: self.state(i) == state, f"server s{i + 1} {state}")

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Poll ``condition`` (HAProxy offers no event to wait on), bounded in time."""
        deadline = time.monotonic() + self.timeout
        while not condition():
            if self.haproxy is not None and self.haproxy.poll() is not None:
                raise RuntimeError(
                    f"HAProxy exited while waiting for {what}:\n{self.haproxy_log()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {self.timeout} s:\n{self.haproxy_log()}")
            time.sleep(0.05)

    def haproxy_log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    # -- the servers ------------------------------------------------------------------------

    def start(self, i: int, *extra_args: str) -> ServerProcess:
        """Start server ``i`` (again) on a fresh port, point HAProxy at it, wait until UP."""
        assert self.servers[i] is None or self.servers[i].proc.poll() is not None  # type: ignore[union-attr]
        server = ServerProcess(*self.server_args, *extra_args)
        self.servers[i] = server
        answer = self.admin(f"set server {BACKEND}/s{i + 1} addr 127.0.0.1 port {server.port}")
        assert "changed" in answer or "no need to change" in answer, answer
        self.wait_for_state(i, "UP")
        return server

    def stop(self, i: int, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal server ``i`` and wait for it to exit; its exit code."""
        server = self.servers[i]
        assert server is not None
        code = server.stop(sig, timeout)
        self.retired.append(server)
        return code

    def kill(self, i: int) -> int:
        return self.stop(i, signal.SIGKILL)

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop HAProxy and every server started here (by PID), and close the listener."""
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(10)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait()
        for server in [*self.servers, *self.retired]:
            if server is not None:
                server.__exit__()
        self.listener.close()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
