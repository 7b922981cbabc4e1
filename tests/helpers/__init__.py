"""What the tests share: peers, servers, the gate, codec and fault helpers.

Test modules import from here (``from helpers import Peer, tcp_server``), never
from each other. The modules: :mod:`.peers` (bare protocol peers),
:mod:`.servers` (servers in this run, in memory or on loopback, or in a
subprocess), :mod:`.server_thread` (a server in a background thread, for
clients that are not Trio tasks), :mod:`.gate` (methods that wait for the
test), :mod:`.codec` (comparing and encoding events), :mod:`.faults`
(polling, resets, logs, process memory), :mod:`.proxy` (PROXY protocol headers),
:mod:`.haproxy` (a real HAProxy in front of trio_echo servers), :mod:`.tls` (test
certificates).
"""

from __future__ import annotations

from pathlib import Path

from .codec import EXCEPTIONS, decode_all, encode, error_code, raw_bytes, same
from .faults import (
    eventually,
    open_fds,
    proc_status_kib,
    quiet,
    read_to_eof,
    reset,
    set_linger_zero,
    wait_for_log,
)
from .gate import Gate
from .peers import Peer, SyncPeer, framed_peer
from .server_thread import ServerThread, server_thread
from .servers import (
    ServerProcess,
    closes_before_hello,
    free_port,
    memory_server,
    run_cli,
    run_python,
    serve_fails,
    tcp_server,
)
from .tls import Pki, make_pki

#: The repository's root folder.
ROOT = Path(__file__).resolve().parents[2]

__all__ = [
    "EXCEPTIONS",
    "ROOT",
    "Gate",
    "Pki",
    "Peer",
    "ServerProcess",
    "ServerThread",
    "SyncPeer",
    "closes_before_hello",
    "decode_all",
    "encode",
    "error_code",
    "raw_bytes",
    "eventually",
    "framed_peer",
    "free_port",
    "make_pki",
    "memory_server",
    "serve_fails",
    "open_fds",
    "proc_status_kib",
    "quiet",
    "read_to_eof",
    "reset",
    "run_cli",
    "run_python",
    "same",
    "server_thread",
    "set_linger_zero",
    "tcp_server",
    "wait_for_log",
]
