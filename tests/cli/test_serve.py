"""``trio-echo serve`` in a subprocess and through main(): flags, --app, signals, limits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from trio_echo import wire
from trio_echo.cli import main
from trio_echo.wire import Notification, Response

from helpers import ServerProcess, SyncPeer, error_code, wait_for_log

IDLE_S = 0.3


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])  # SIGINT is Ctrl-C
def test_cli_signal_with_request_in_flight(sig: signal.Signals) -> None:
    with ServerProcess("--grace", "20") as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        with sock:
            peer_conn = wire.Connection()
            sock.sendall(
                peer_conn.initiate()
                + peer_conn.send(wire.Request(1, "sleep", [0.5]))
                + peer_conn.send(wire.Request(2, "ping", []))
            )
            events: list[wire.Event] = []
            while len(events) < 2:  # the pong proves the server has read the sleep
                peer_conn.receive_data(sock.recv(65536))
                events.extend(peer_conn.events())
            srv.proc.send_signal(sig)
            while True:
                data = sock.recv(65536)
                peer_conn.receive_data(data)
                events.extend(peer_conn.events())
                if not data:
                    break
        assert events[1:] == [Response(2, "pong"), Response(1, None)]
        assert srv.wait() == 0
    log = "".join(srv.log)
    assert "shutting down" in log and "Traceback" not in log


def test_cli_second_signal_exits_at_once() -> None:
    with ServerProcess("--grace", "60") as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        with sock:
            conn = wire.Connection()
            sock.sendall(conn.initiate() + conn.send(wire.Request(1, "sleep", [60])))
            sock.recv(65536)  # the hello
            srv.proc.send_signal(signal.SIGINT)
            # Signals do not queue: send the second once the first was handled.
            wait_for_log(srv.log, "shutting down gracefully")
            srv.proc.send_signal(signal.SIGINT)
            code = srv.wait(timeout=10)
    assert code == 1
    assert "Traceback" not in "".join(srv.log)


def test_cli_help_lists_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trio_echo", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in [
        "--host",
        "--port",
        "--mode",
        "--app",
        "--max-frame",
        "--max-inflight",
        "--threads",
        "--grace",
        "--log-level",
    ]:
        assert flag in out


def test_cli_app_serves_user_methods(tmp_path: os.PathLike[str]) -> None:
    app = os.path.join(tmp_path, "myapp.py")
    with open(app, "w") as f:
        f.write(
            "import trio_echo\n"
            "service = trio_echo.Service()\n"
            "@service.method\n"
            "def shout(text: str) -> str:\n"
            "    '''Upper-case the text.'''\n"
            "    return text.upper()\n"
        )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    with ServerProcess("--app", "myapp:service", env=env) as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        with sock:
            conn = wire.Connection()
            sock.sendall(conn.initiate() + conn.send(wire.Request(1, "shout", ["hey"])))
            events: list[wire.Event] = []
            while len(events) < 2:
                conn.receive_data(sock.recv(65536))
                events.extend(conn.events())
        assert events[1] == Response(1, "HEY")
        assert srv.stop() == 0


def test_cli_bad_app_is_a_clear_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trio_echo", "serve", "--app", "no_such_module_x:svc"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "cannot load --app" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_raises_a_low_open_files_limit() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    # Started with a soft limit of 256, the server lifts it for 1500 connections.
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_echo", "serve", "--port", "0", "--max-connections", "1500"],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=low_soft_limit,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "listening on" in line:
                break
        soft, _ = resource.prlimit(proc.pid, resource.RLIMIT_NOFILE)
        assert soft == min(1500 + 256, hard)
    finally:
        proc.terminate()
        proc.wait(30)
        assert proc.stderr is not None
        proc.stderr.close()


def test_cli_limit_flags_reach_the_server() -> None:
    with ServerProcess(
        "--max-connections", "1", "--max-requests", "1", "--max-frame", "1000",
        "--max-inflight", "7", "--idle-timeout", str(IDLE_S),
    ) as srv:  # fmt: skip
        peer = SyncPeer(srv.port)
        hello = peer.next_event()
        assert isinstance(hello, Notification)
        assert (hello.params[0]["max_frame"], hello.params[0]["max_inflight"]) == (1000, 7)
        refused = SyncPeer(srv.port)
        assert [error_code(e) for e in refused.until_eof()] == ["overloaded"]
        refused.close()
        peer.send(wire.Request(1, "sleep", [0.2]))
        assert error_code(peer.call(2, "echo", 1)) == "overloaded"  # max_requests 1
        assert peer.next_event() == Response(1, None)
        peer.sock.sendall((1001).to_bytes(4, "big"))
        assert [error_code(e) for e in peer.until_eof()] == ["frame_too_large"]
        peer.close()
        # The closed connection frees the only slot soon; then a client that says
        # nothing after the hello is closed by the idle timeout.
        for _ in range(100):
            silent = SyncPeer(srv.port)
            first = silent.next_event()
            if isinstance(first, Notification) and first.method == "hello":
                break
            silent.close()
        start = time.monotonic()
        assert silent.until_eof() == []
        assert IDLE_S * 0.5 <= time.monotonic() - start < IDLE_S + 3  # clock starts at accept
        silent.close()
        assert srv.stop() == 0


@pytest.mark.parametrize("flag", ["--idle-timeout", "--grace"])
@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_cli_rejects_a_bad_number_of_seconds(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", flag, value])
    assert exc.value.code == 2 and flag in capsys.readouterr().err
