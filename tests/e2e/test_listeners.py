"""Listeners: Unix domain sockets, inherited descriptors (--fd), systemd socket activation."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
import trio

from trio_echo import Server, wire
from trio_echo.server.listeners import ListenerError, open_unix_listener, systemd_fds
from trio_echo.wire import Response

from helpers import Peer, ServerProcess, SyncPeer, raw_bytes, serve_fails

UNIX_READY = r"trio-echo listening on unix:\S+"


def unix_call(path: str | Path, method: str, *params: object) -> object:
    """One framed call over a Unix socket with a bare blocking socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    conn = wire.Connection(wire.Role.CLIENT, wire.Mode.FRAMED)
    try:
        sock.sendall(conn.initiate() + conn.send(wire.Request(1, method, list(params))))
        events: list[wire.Event] = []
        while len(events) < 2:  # hello, then the response
            event = conn.next_event()
            if event is wire.NEED_DATA:
                data = sock.recv(65536)
                assert data, "server closed"
                conn.receive_data(data)
            else:
                events.append(event)  # type: ignore[arg-type]
    finally:
        sock.close()
    reply = events[1]
    assert isinstance(reply, Response), reply
    return reply.result


def nc_unix(path: str | Path, data: bytes) -> bytes:
    result = subprocess.run(
        ["nc", "-N", "-U", str(path)], input=data, capture_output=True, timeout=20, check=True
    )
    return result.stdout


async def test_three_modes_over_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    server = Server()
    listener, file = open_unix_listener(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, [listener])
        # framed
        async with await trio.open_unix_socket(path) as stream:
            peer = Peer(stream)
            await peer.start()
            reply = await peer.call(1, "echo", b"\x00unix")
            assert isinstance(reply, Response) and reply.result == b"\x00unix"
        # plain msgpack-rpc stream
        async with await trio.open_unix_socket(path) as stream:
            await stream.send_all(msgpack.packb([0, 7, "ping", []]))
            unpacker = msgpack.Unpacker(raw=False)
            with trio.fail_after(10):
                while True:
                    unpacker.feed(await stream.receive_some(1024))
                    got = list(unpacker)
                    if got:
                        break
            assert got == [[1, 7, None, "pong"]]
        # raw echo with netcat
        data = raw_bytes(200_000)
        assert await trio.to_thread.run_sync(nc_unix, path, data) == data
        assert server.stats()["connections_total"] == 3
        server.shutdown()
    file.remove()
    assert not await trio.Path(path).exists()


def test_unix_socket_cli_lifecycle(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with ServerProcess(
        "--unix", str(path), "--unix-mode", "660", port=None, ready=UNIX_READY
    ) as srv:
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        assert unix_call(path, "echo", "hi") == "hi"
        assert nc_unix(path, b"netcat\n") == b"netcat\n"
        # A second server on the same path: one line, exit 2, the first keeps its socket.
        code, stderr = serve_fails("--unix", str(path))
        assert code == 2
        assert stderr.strip().splitlines() == [
            f"trio-echo serve: another server is listening on unix socket {path}"
        ]
        assert unix_call(path, "ping") == "pong"
        assert srv.stop() == 0
    # Removed on a clean shutdown.
    assert not path.exists()


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening, then closed: what a killed server leaves
    dead.close()
    assert path.exists()
    with ServerProcess("--unix", str(path), port=None, ready=UNIX_READY) as srv:
        assert unix_call(path, "ping") == "pong"
        assert srv.stop() == 0


def test_path_that_is_not_a_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "precious.txt"
    path.write_text("keep me")
    code, stderr = serve_fails("--unix", str(path))
    assert code == 2
    assert stderr.strip() == f"trio-echo serve: {path} exists and is not a socket; not replacing it"
    assert path.read_text() == "keep me"


def test_unix_and_an_explicit_port_serve_both(tmp_path: Path) -> None:
    path = tmp_path / "both.sock"
    ready = r"trio-echo listening on unix:\S+, 127\.0\.0\.1:(\d+)"
    with ServerProcess("--unix", str(path), ready=ready) as srv:
        assert unix_call(path, "echo", 1) == 1
        peer = SyncPeer(srv.port, timeout=10)
        try:
            hello = peer.next_event()
            assert isinstance(hello, wire.Notification)
            reply = peer.call(2, "stats")
            assert isinstance(reply, Response)
            assert reply.result["connections_total"] == 2
        finally:
            peer.close()
        assert srv.stop() == 0
    assert not path.exists()


def test_fd_serves_an_inherited_listening_socket() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    try:
        fd = sock.fileno()
        with ServerProcess(
            "--fd", str(fd), port=None, pass_fds=(fd,), ready=r"listening on 127\.0\.0\.1:(\d+)"
        ) as srv:
            assert srv.port == port
            peer = SyncPeer(port, timeout=10)
            try:
                peer.next_event()
                reply = peer.call(1, "echo", "inherited")
                assert isinstance(reply, Response) and reply.result == "inherited"
            finally:
                peer.close()
            assert srv.stop() == 0
    finally:
        sock.close()


def test_fd_that_is_not_a_listening_socket_is_refused(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as f:
        fd = f.fileno()
        code, stderr = serve_fails("--fd", str(fd), pass_fds=(fd,))
    assert code == 2
    assert stderr.startswith(f"trio-echo serve: descriptor {fd} is not a socket")


def test_systemd_fds_reads_and_unsets_the_environment() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert systemd_fds(env) == [3, 4]
    assert env == {}
    # Meant for another process (a parent that did not unset them): ignored.
    assert systemd_fds({"LISTEN_PID": "1", "LISTEN_FDS": "1"}) == []
    assert systemd_fds({}) == []
    with pytest.raises(ListenerError):
        systemd_fds({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "x"})


def test_socket_activation_end_to_end(tmp_path: Path) -> None:
    """systemd-socket-activate binds the socket, execs the server on the first connection."""
    path = tmp_path / "activated.sock"
    proc = subprocess.Popen(
        [
            "systemd-socket-activate",
            "--listen",
            str(path),
            sys.executable,
            "-m",
            "trio_echo",
            "serve",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        # "Listening on PATH as 3." once the socket exists.
        for line in proc.stderr:
            if "Listening on" in line:
                break
        # The first connection makes it exec the server, which takes over the socket.
        assert unix_call(path, "echo", "activated") == "activated"
        for line in proc.stderr:
            if "trio-echo listening on" in line:
                assert f"unix:{path}" in line
                assert "127.0.0.1:7000" not in line  # no TCP without --port
                break
        assert unix_call(path, "ping") == "pong"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        # The socket belongs to the activator (systemd): the server leaves it alone.
        assert path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_workers_share_one_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "workers.sock"
    ready = r"supervisor listening on unix:\S+ with 2 workers"
    with ServerProcess("--workers", "2", "--unix", str(path), port=None, ready=ready) as srv:
        pids = {unix_call(path, "stats")["pid"] for _ in range(30)}  # type: ignore[index]
        assert pids  # every call was served by a worker, not the supervisor
        assert srv.proc.pid not in pids
        assert srv.stop() == 0
    assert not path.exists()


def test_the_systemd_units_name_real_options() -> None:
    from trio_echo.cli.main import build_parser
    from trio_echo.cli.serve import config_from_args

    from helpers import ROOT

    service = (ROOT / "deploy" / "trio-echo.service").read_text()
    exec_start = next(line for line in service.splitlines() if line.startswith("ExecStart="))
    argv = exec_start.split()[1:]
    assert argv[0] == "serve"
    args = build_parser().parse_args(argv)
    assert not hasattr(args, "port")  # the sockets come from trio-echo.socket
    config = config_from_args(args)
    assert (config.log_format, config.metrics_port) == ("json", 9464)
    socket_unit = (ROOT / "deploy" / "trio-echo.socket").read_text()
    assert "ListenStream=" in socket_unit
