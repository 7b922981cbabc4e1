"""``--app`` and ``--app-dir`` through the real ``trio-echo serve``, also with ``--workers``."""

from __future__ import annotations

from pathlib import Path

import pytest

import trio_echo

from helpers import ServerProcess, run_cli

APP = """
import trio_echo

service = trio_echo.Service()
store: dict[str, str] = {}


@service.method
def put(key: str, value: str) -> None:
    store[key] = value


@service.method
def has(key: str) -> bool:
    return key in store
"""

WARNING = "runs in each of the 2 worker processes: module-level state"


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "kvapp.py").write_text(APP)
    (tmp_path / "elsewhere").mkdir()
    return tmp_path / "apps"


def test_app_is_imported_from_the_current_directory(app_dir: Path) -> None:
    with ServerProcess("--app", "kvapp:service", cwd=str(app_dir)) as srv:
        with trio_echo.connect("127.0.0.1", srv.port) as client:
            client.call("put", "k", "v")
            assert client.call("has", "k") is True
        assert srv.stop() == 0
    assert not any(WARNING in line for line in srv.log)


def test_app_dir_names_another_directory(app_dir: Path) -> None:
    elsewhere = str(app_dir.parent / "elsewhere")
    # A relative --app-dir is taken from the current directory.
    with ServerProcess("--app", "kvapp:service", "--app-dir", "../apps", cwd=elsewhere) as srv:
        with trio_echo.connect("127.0.0.1", srv.port) as client:
            assert client.call("has", "k") is False
        assert srv.stop() == 0


def test_an_app_not_found_says_where_it_looked(app_dir: Path) -> None:
    elsewhere = app_dir.parent / "elsewhere"
    done = run_cli("serve", "--port", "0", "--app", "kvapp:service", cwd=str(elsewhere))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"trio-echo serve: cannot load --app kvapp:service: no module named 'kvapp' in "
        f"{elsewhere} or on the Python path; --app-dir DIR looks in DIR instead"
    ]
    done = run_cli("serve", "--port", "0", "--app", "kvapp:service", "--app-dir", "nope",
                   cwd=str(elsewhere))  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "trio-echo serve: cannot load --app kvapp:service: --app-dir nope is not a directory"
    ]


def test_workers_each_import_the_app_and_its_state_is_per_process(app_dir: Path) -> None:
    elsewhere = str(app_dir.parent / "elsewhere")
    with ServerProcess(
        "--app", "kvapp:service", "--app-dir", str(app_dir), "--workers", "2", cwd=elsewhere
    ) as srv:
        # Connections are spread over the workers by the kernel: meet both.
        clients: dict[int, trio_echo.BlockingClient] = {}
        try:
            for _ in range(200):
                client = trio_echo.connect("127.0.0.1", srv.port)
                pid = client.call("stats")["pid"]
                if pid in clients:
                    client.close()
                else:
                    clients[pid] = client
                if len(clients) == 2:
                    break
            assert len(clients) == 2, "the kernel sent 200 connections to one worker"
            first, second = clients.values()
            first.call("put", "k", "v")
            # What README says: module-level state is per process.
            assert (first.call("has", "k"), second.call("has", "k")) == (True, False)
        finally:
            for client in clients.values():
                client.close()
        assert srv.stop() == 0
    assert sum(WARNING in line for line in srv.log) == 1, "".join(srv.log)
