"""The Node.js client (clients/js) passes its own tests against a live server.

This runs in CI, never skipped: it installs the client's locked dependencies
with ``npm ci`` when ``node_modules`` is missing, then runs ``node --test``
against a server started here on a free loopback port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from helpers import ROOT, Pki, server_thread

JS_DIR = ROOT / "clients" / "js"


def test_js_client_against_a_live_server(pki: Pki) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "Node.js and npm are required (see .ci/run)"
    if not (JS_DIR / "node_modules" / "@msgpack" / "msgpack").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, timeout=300)
    with (
        server_thread() as running,
        server_thread(ssl_context=pki.server_context(mutual=True)) as tls_server,
    ):
        env = {
            **os.environ,
            "TRIO_ECHO_HOST": "127.0.0.1",
            "TRIO_ECHO_PORT": str(running.port),
            # clients/js/test/tls.test.js: mutual TLS with trustme's certificates.
            "TRIO_ECHO_TLS_PORT": str(tls_server.port),
            "TRIO_ECHO_TLS_CA": pki.ca_file,
            "TRIO_ECHO_TLS_CLIENT": pki.client_cert_file,
            # clients/js/test/goaway_live.test.js starts a server of its own.
            "TRIO_ECHO_PYTHON": sys.executable,
        }
        done = subprocess.run(
            [node, "--test"],
            cwd=JS_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout and "# pass 0" not in done.stdout, done.stdout
    assert "# skipped 0" in done.stdout, done.stdout  # the TLS tests ran too
