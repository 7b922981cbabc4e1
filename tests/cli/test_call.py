"""``trio-echo call`` and ``trio-echo methods``: in a subprocess and through main()."""

from __future__ import annotations

import json
import threading

import pytest

from trio_echo.cli import main
from trio_echo.cli.call import parse_arg, to_json

from helpers import Gate, ServerThread, closes_before_hello, free_port
from helpers import run_cli as cli


def test_subprocess_success_remote_error_and_refused(srv: ServerThread) -> None:
    port = str(srv.port)
    done = cli("call", "--port", port, "echo", '{"n": [1, 2.5, null], "b": {"$bytes": "AP8="}}')
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout) == {"n": [1, 2.5, None], "b": {"$bytes": "AP8="}}

    failed = cli("call", "--port", port, "fail", "overloaded")
    assert (failed.returncode, failed.stdout) == (1, "")
    assert failed.stderr == "overloaded: failing with overloaded\n"

    refused = cli("call", "--port", str(free_port()), "ping")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr.startswith("trio-echo: cannot connect to 127.0.0.1:")
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr


def test_args_are_json_else_strings(srv: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    port = str(srv.port)
    for arg, shown in [
        ("3", "3"),
        ('"3"', '"3"'),
        ("hello world", '"hello world"'),
        ("[1, true, null]", "[1, true, null]"),
        ('{"$bytes": "aGk="}', '{"$bytes": "aGk="}'),
        ("ünï", '"ünï"'),
    ]:
        assert main(["call", "--port", port, "echo", arg]) == 0
        assert capsys.readouterr().out == shown + "\n"


def test_timeout_and_unknown_method_exit_1(
    srv: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    port = str(srv.port)
    assert main(["call", "--port", port, "--timeout", "0.05", "block"]) == 1
    assert capsys.readouterr().err.startswith("timeout: ")
    assert main(["call", "--port", port, "nope", "1"]) == 1
    assert capsys.readouterr().err == "unknown_method: unknown method 'nope'\n"
    assert main(["call", "--port", port, "echo", "1", "2"]) == 1
    assert capsys.readouterr().err.startswith("invalid_params: ")


def test_connection_lost_mid_call_exits_2(
    srv: ServerThread, gate: Gate, capsys: pytest.CaptureFixture[str]
) -> None:
    status: list[int] = []
    caller = threading.Thread(
        target=lambda: status.append(main(["call", "--port", str(srv.port), "block"]))
    )
    caller.start()
    srv.run(gate.entered.wait)
    srv.kill()
    caller.join(timeout=10)
    assert status == [2]
    err = capsys.readouterr().err
    assert err.startswith("trio-echo: connection to 127.0.0.1:") and err.count("\n") == 1


def test_no_hello_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with closes_before_hello() as port:
        assert main(["call", "--port", str(port), "ping"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trio-echo: cannot connect") and err.count("\n") == 1


def test_methods_lists_names_and_docs(
    srv: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["methods", "--port", str(srv.port)]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert names[:5] == ["echo", "ping", "sleep", "stats", "methods"]
    assert "block" in names and "fail" in names
    assert any(line.startswith("block") and line.endswith("Wait for the test.") for line in lines)

    assert main(["methods", "--port", str(srv.port), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"name": "fail", "doc": "Answer with the given error code.", "kind": "unary"} in listed

    assert main(["methods", "--port", str(free_port())]) == 2


def test_json_conversions() -> None:
    assert parse_arg('{"$bytes": "not base64!"}') == {"$bytes": "not base64!"}
    assert parse_arg('[{"$bytes": ""}]') == [b""]
    assert to_json({1: b"\x00", (1, 2): None, b"k": 1.5}) == {
        1: {"$bytes": "AA=="},
        "[1, 2]": None,
        '{"$bytes": "aw=="}': 1.5,
    }
