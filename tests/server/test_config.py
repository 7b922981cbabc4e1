"""ServerConfig: one default per setting, validated once, overridden by Server() and the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

import pytest
import trio

import trio_echo
from trio_echo import Server, ServerConfig, wire
from trio_echo.cli import build_parser
from trio_echo.cli.serve import config_from_args, flag_parser, worker_argv
from trio_echo.server.config import PORT, SETTINGS, Setting, setting

from helpers import memory_server


def test_defaults() -> None:
    config = ServerConfig()
    assert (config.host, config.port, config.mode) == ("127.0.0.1", wire.DEFAULT_PORT, "auto")
    assert (config.max_frame, config.max_inflight) == (4 * 1024 * 1024, 128)
    assert (config.max_connections, config.max_requests, config.threads) == (10000, 65536, 16)
    assert (config.idle_timeout, config.grace, config.workers) == (300.0, 10.0, 1)
    assert (config.reuse_port, config.proxy_protocol, config.debug) == (False, False, False)
    assert config.log_level == "info"
    assert (config.unix, config.unix_mode, config.tls_handshake_timeout) == (None, 0o600, 10.0)
    assert (config.tls_cert, config.tls_key, config.tls_client_ca) == (None, None, None)
    assert trio_echo.ServerConfig is trio_echo.server.ServerConfig is ServerConfig
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("port", 70000, "port must be an integer from 0 to 65535, not 70000"),
        ("port", -1, "port must be an integer from 0 to 65535, not -1"),
        ("max_frame", 0, "max_frame must be an integer >= 1, not 0"),
        ("max_inflight", 0, "max_inflight must be an integer >= 1"),
        ("max_connections", 0, "max_connections must be an integer >= 1"),
        ("max_requests", 1.5, "max_requests must be an integer >= 1, not 1.5"),
        ("threads", True, "threads must be an integer >= 1, not True"),
        ("workers", -1, "workers must be an integer >= 0"),
        ("idle_timeout", -1, "idle_timeout must be a number of seconds >= 0, not -1"),
        ("grace", math.nan, "grace must be a number of seconds >= 0, not nan"),
        ("grace", math.inf, "grace must be a number of seconds >= 0, not inf"),
        ("mode", "tcp", "mode must be one of auto, framed, mprpc, raw, not 'tcp'"),
        ("log_level", "loud", "log_level must be one of debug, info, warning, error"),
        ("unix_mode", 0o1777, "unix_mode must be octal permissions from 0 to 777, not 1777"),
        ("tls_handshake_timeout", -2, "tls_handshake_timeout must be a number of seconds"),
    ],
)
def test_bad_settings_are_a_clear_value_error(setting: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message):
        ServerConfig(**{setting: value})
    with pytest.raises(ValueError, match="^" + message):
        Server(**{setting: value})


def test_an_unknown_setting_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="max_conections"):
        Server(max_conections=3)


def test_mode_accepts_the_enum_and_none() -> None:
    assert ServerConfig(mode=wire.Mode.FRAMED).mode == "framed"  # type: ignore[arg-type]
    assert ServerConfig(mode=None).mode == "auto"  # type: ignore[arg-type]
    assert Server(mode=wire.Mode.MPRPC).mode is wire.Mode.MPRPC
    assert Server().mode is None


def test_server_takes_a_config_and_overrides() -> None:
    base = ServerConfig(max_connections=5, debug=True)
    server = Server(None, base, max_connections=7)
    assert server.config == dataclasses.replace(base, max_connections=7)
    assert (server.max_connections, server.debug) == (7, True)
    assert Server(config=base).config is base
    assert server.hello["max_frame"] == base.max_frame


async def test_serve_rejects_a_port_out_of_range() -> None:
    # It used to bind 70000 % 65536 = 4464.
    with pytest.raises(ValueError, match="port must be"):
        await trio_echo.serve(None, "127.0.0.1", 70000)
    with pytest.raises(ValueError, match="port must be"):
        await Server().serve("127.0.0.1", 65536)


async def test_serve_listens_where_the_config_says() -> None:
    server = Server(port=0)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve)
        host, port = listeners[0].socket.getsockname()[:2]
        assert host == "127.0.0.1" and port != 0
        server.shutdown()


async def test_the_config_reaches_the_connection() -> None:
    async with memory_server(Server(config=ServerConfig(max_frame=1000, max_inflight=3))) as (
        _,
        stream,
        _,
    ):
        conn = wire.Connection()
        await stream.send_all(conn.initiate())
        while (hello := conn.next_event()) is wire.NEED_DATA:
            conn.receive_data(await stream.receive_some())
        assert isinstance(hello, wire.Notification)
        assert (hello.params[0]["max_frame"], hello.params[0]["max_inflight"]) == (1000, 3)


def serve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_the_cli_overrides_only_the_flags_given() -> None:
    assert config_from_args(serve_args()) == ServerConfig()
    args = serve_args("--port", "0", "--max-frame", "1000", "--debug", "--mode", "raw")
    assert config_from_args(args) == ServerConfig(port=0, max_frame=1000, debug=True, mode="raw")
    assert not hasattr(args, "grace")  # not given: the config's default applies


def test_every_setting_has_its_flag_and_help_shows_the_config_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        serve_args("--help")
    out = " ".join(capsys.readouterr().out.split())
    flagged = [spec for spec in SETTINGS if spec.flag]
    assert {spec.name for spec in flagged} >= {"host", "port", "workers", "log_level"}
    assert "(default: 600)" in out and "(default: 7000)" in out
    for spec in flagged:
        assert spec.option in out
        assert f"(default: {spec.shown_default})" in out, spec.name


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--port", "70000"], "argument --port: must be an integer from 0 to 65535, not 70000"),
        (["--threads", "0"], "argument --threads: must be an integer >= 1, not 0"),
        (["--threads", "many"], "argument --threads: invalid int value: 'many'"),
        (["--mode", "tcp"], "argument --mode: invalid choice: 'tcp'"),
        (["--unix-mode", "1777"], "argument --unix-mode: must be octal permissions from 0 to 777"),
        (["--unix-mode", "rw"], "argument --unix-mode: invalid octal value: 'rw'"),
    ],
)
def test_the_cli_rejects_bad_values_with_the_config_rules(
    argv: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        serve_args(*argv)
    assert exc.value.code == 2 and error in capsys.readouterr().err


def test_workers_get_the_flags_given_and_share_the_listeners() -> None:
    args = serve_args(
        "--workers", "3", "--grace", "2.5", "--debug", "--app", "m:s", "--port", "9",
        "--unix", "/tmp/x.sock", "--unix-mode", "660", "--tls-cert", "c.pem",
    )  # fmt: skip
    assert config_from_args(args).unix_mode == 0o660
    assert worker_argv(args) == [
        "--tls-cert", "c.pem", "--grace", "2.5", "--debug", "--app", "m:s",
        "--workers", "1", "--reuse-port",
    ]  # fmt: skip
    assert worker_argv(serve_args()) == ["--workers", "1", "--reuse-port"]


def test_an_optional_setting_and_its_flag_parser() -> None:
    """How a future ``metrics_port: int | None = None`` would be checked and parsed."""
    spec = setting(None, PORT, "serve /metrics on this port", convert=int).metadata
    metrics_port = Setting("metrics_port", None, spec["help"], PORT, None, True, spec["convert"])
    assert metrics_port.problem(None) is None
    assert metrics_port.problem(9100) is None
    assert metrics_port.problem(70000) == "must be an integer from 0 to 65535, not 70000"
    parse = flag_parser(metrics_port)
    assert parse("9100") == 9100
    with pytest.raises(argparse.ArgumentTypeError, match="65535"):
        parse("70000")
    assert setting(None, help="a file").metadata["convert"] is str
