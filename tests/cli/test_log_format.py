"""``serve --log-format json``: one JSON object per line, with the structured fields."""

from __future__ import annotations

import json
import logging
import socket

from trio_echo import wire
from trio_echo.logs import JsonFormatter

from helpers import ServerProcess


def test_json_logs_end_to_end() -> None:
    with ServerProcess("--log-format", "json") as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(wire.MAGIC + b"\x07")  # an unknown version: rejected, logged at info
            while sock.recv(4096):
                pass
        assert srv.stop() == 0
    records = [json.loads(line) for line in srv.log if line.strip()]
    assert records, srv.log
    for record in records:
        assert {"ts", "level", "logger", "message"} <= record.keys()
        assert record["logger"] == "trio_echo"
    assert records[0]["message"].startswith("trio-echo listening on 127.0.0.1:")
    rejected = [r for r in records if "rejected" in r["message"]]
    assert len(rejected) == 1
    assert rejected[0]["level"] == "info"
    assert rejected[0]["code"] == "unsupported_version"
    assert rejected[0]["peer"].startswith("127.0.0.1:")
    assert records[-1]["message"] == "stopped"


def test_json_formatter_keeps_extra_fields_and_tracebacks() -> None:
    record = logging.LogRecord("trio_echo", logging.ERROR, __file__, 1, "boom %s", ("x",), None)
    record.peer = "10.0.0.1:5"
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    out = json.loads(JsonFormatter().format(record))
    assert out["message"] == "boom x" and out["level"] == "error" and out["peer"] == "10.0.0.1:5"
    assert out["ts"].endswith("+00:00")
    assert "ValueError: bad" in out["exc_info"]
