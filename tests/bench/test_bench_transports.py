"""``trio-echo bench`` over TLS (non-blocking SSLSocket per connection) and Unix sockets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import Pki, server_thread

QUICK = ("--duration", "0.4", "--warmup", "0.1", "--workers", "1", "--quiet", "--json")


def bench(*args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "trio_echo", "bench", *QUICK, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, json.loads(proc.stdout) if proc.stdout else {}


@pytest.mark.parametrize(
    "mode_args",
    [
        ("--mode", "framed", "-P", "8"),
        ("--mode", "mprpc", "-P", "8"),
        ("--mode", "raw", "--size", "70000"),
    ],
)
def test_bench_over_tls(pki: Pki, mode_args: tuple[str, ...]) -> None:
    with server_thread(ssl_context=pki.server_context()) as srv:
        code, r = bench("--port", str(srv.port), "--tls-ca", pki.ca_file, "-c", "3", *mode_args)
        assert code == 0, r
        assert r["tls"] is True
        # Results are verified (the echoed payload byte for byte): no errors at all.
        assert r["requests"] > 0 and r["errors"] == 0, r
        assert srv.server.stats()["tls_handshake_failures"] == 0


def test_bench_over_mutual_tls_on_a_unix_socket(pki: Pki, tmp_path: Path) -> None:
    path = str(tmp_path / "bench.sock")
    with server_thread(unix=path, ssl_context=pki.server_context(mutual=True)):
        tls = ("--tls-ca", pki.ca_file, "--tls-cert", pki.client_cert_file)
        code, r = bench("--unix", path, *tls, "--tls-server-name", "localhost", "-c", "2")
        assert code == 0 and r["requests"] > 0 and r["errors"] == 0, r
        assert r["unix"] == path
        # Without the client certificate every connection is refused.
        code, r = bench("--unix", path, "--tls-ca", pki.ca_file, "--tls-server-name", "localhost")
        assert code == 1 and r["requests"] == 0


def test_bench_over_a_plain_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "plain.sock")
    with server_thread(unix=path):
        code, r = bench("--unix", path, "-c", "2", "-P", "4")
        assert code == 0 and r["requests"] > 0 and r["errors"] == 0, r
        assert r["tls"] is False
