"""``trio-echo call`` and ``trio-echo methods``: one request from the shell.

Both use the blocking client. Arguments are JSON (falling back to plain
strings) and results are printed as JSON, with bytes shown as
``{"$bytes": "<base64>"}`` (the same form is accepted in arguments).

Exit codes: 0 success; 1 the server answered with an error (a timeout
included), printed to stderr as ``CODE: MESSAGE``, then the error's ``data``
as one line of JSON if it has any; 2 the connection failed
(refused, lost, no hello), printed as one line without a traceback.

``call --stream`` calls a streaming method (protocol version 2): it asks
``methods()`` for the method's kind, prints a server's items one JSON line
each as they come, and sends one item per line of standard input (JSON, else
a string) to a client or bidi stream, then prints the result.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

import msgpack

from .. import wire
from ..client.blocking import BlockingClient, BlockingStream, connect, connect_unix
from ..errors import ConnectFailed, ConnectionClosed, InvalidParams, RemoteError
from .argtypes import port, positive_float
from .client_options import add_transport_args, ssl_context_from_args

__all__ = ["configure", "from_json", "parse_arg", "to_json"]

#: Exit status when the server answered with an error.
EXIT_REMOTE_ERROR = 1
#: Exit status when the connection failed.
EXIT_CONNECTION = 2

_BYTES_KEY = "$bytes"

ENCODING_HELP = (
    "Each ARG is parsed as JSON, falling back to a plain string: 3 is an int, "
    "'\"3\"' and hello are strings, '[1, \"a\"]' is an array. Bytes are written "
    'and shown as {"$bytes": "<base64>"}. The result is printed as JSON. Exit '
    "status: 0 success, 1 error response (CODE: MESSAGE on stderr, then the "
    "error's data as JSON if any), 2 "
    "connection failure."
)


def configure(sub: Any) -> None:
    """Add the ``call`` and ``methods`` subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "call",
        help="call a method on a server and print the result as JSON",
        description="Call METHOD with ARGs on a trio_echo server. " + ENCODING_HELP,
    )
    _connection_args(p)
    p.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        help="deadline for the call, sent to the server as timeout_ms (default: none)",
    )
    p.add_argument(
        "--stream",
        action="store_true",
        help="call a streaming method (protocol version 2): print each item the server "
        "sends as one line of JSON as it comes; a client or bidi stream sends one item per "
        "line of standard input (JSON, else a string), then the result is printed",
    )
    p.add_argument("method", metavar="METHOD", help="the method to call, e.g. echo")
    p.add_argument("args", metavar="ARG", nargs="*", help="parameters (JSON, else a string)")
    p.set_defaults(run=run_call)

    p = sub.add_parser(
        "methods",
        help="list a server's methods with their docs",
        description="List the methods a trio_echo server serves, with their docs.",
    )
    _connection_args(p)
    p.add_argument("--json", action="store_true", help="print the raw list as JSON")
    p.set_defaults(run=run_methods)


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="server address (default: %(default)s)")
    p.add_argument(
        "--port", type=port, default=wire.DEFAULT_PORT, help="server port (default: %(default)s)"
    )
    p.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="time allowed for connecting and the server's hello (default: %(default)s)",
    )
    add_transport_args(p)


# --- JSON <-> msgpack values ---------------------------------------------------------


def parse_arg(text: str) -> Any:
    """One command-line argument: JSON if it parses, else the plain string."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return from_json(value)


def from_json(value: Any) -> Any:
    """Turn ``{"$bytes": "<base64>"}`` objects (at any depth) into bytes."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(_BYTES_KEY), str):
            try:
                return base64.b64decode(value[_BYTES_KEY], validate=True)
            except binascii.Error:
                pass  # not base64: keep the map as it is
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def to_json(value: Any) -> Any:
    """A JSON-ready copy of a decoded msgpack value.

    bytes become ``{"$bytes": "<base64>"}``; map keys that are not str, int,
    float, bool or nil become their JSON text; msgpack extension values
    become ``{"$ext": type, "data": "<base64>"}``; anything else its ``str``.
    """
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return {_BYTES_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {_json_key(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, msgpack.ExtType):
        return {"$ext": value.code, "data": base64.b64encode(value.data).decode("ascii")}
    return str(value)


def _json_key(key: Any) -> Any:
    if key is None or isinstance(key, str | int | float | bool):
        return key
    return json.dumps(to_json(key), sort_keys=True)


# --- commands -------------------------------------------------------------------------


def run_call(args: argparse.Namespace) -> int:
    """``trio-echo call``; returns the exit status."""
    params = [parse_arg(a) for a in args.args]
    if args.stream:
        try:
            status, _ = _request(args, lambda c: _call_stream(c, args, params))
        except _OutputGone:
            # The reader of our output left (`| head`): so do we, quietly.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        return status
    status, result = _request(args, lambda c: c.call(args.method, *params, timeout=args.timeout))
    if status == 0:
        print(json.dumps(to_json(result), ensure_ascii=False))
    return status


def _call_stream(client: BlockingClient, args: argparse.Namespace, params: list[Any]) -> None:
    """``call --stream``: the method's kind from ``methods()``, then the stream."""
    kinds = {
        m.get("name"): m.get("kind", "unary") for m in client.call("methods") if isinstance(m, dict)
    }
    kind = kinds.get(args.method)
    if kind is None:
        client.call(args.method, *params)  # the server's own unknown_method answer
        return
    if kind not in ("server", "client", "bidi"):
        raise InvalidParams(
            f"{args.method} is a {kind} method, not a stream: call it without --stream"
        )
    with client.stream(args.method, *params, kind=kind, timeout=args.timeout) as stream:
        if kind == "server":
            _print_items(stream)
            return
        lines = (parse_arg(line.rstrip("\n")) for line in sys.stdin if line.strip())
        if kind == "client":
            _send_items(stream, lines)
            result = stream.finish()
        else:
            # Items come back while stdin is read: the sending runs in a thread of its own.
            sender = threading.Thread(target=_send_items, args=(stream, lines), daemon=True)
            sender.start()
            _print_items(stream)
            result = stream.result
        if result is not None or kind == "client":
            print(json.dumps(to_json(result), ensure_ascii=False), flush=True)


class _OutputGone(Exception):
    """Standard output was closed by its reader (``| head``): not a connection error."""


def _print_items(stream: BlockingStream) -> None:
    try:
        for item in stream:
            print(json.dumps(to_json(item), ensure_ascii=False), flush=True)
    except BrokenPipeError:
        raise _OutputGone from None  # leaving the stream's block cancels it


def _send_items(stream: BlockingStream, items: Iterable[Any]) -> None:
    try:
        for item in items:
            stream.send(item)
    except (RemoteError, ConnectionClosed):
        return  # the stream ended: its own error is reported by the reading side
    stream.end()


def run_methods(args: argparse.Namespace) -> int:
    """``trio-echo methods``; returns the exit status."""
    status, methods = _request(args, lambda c: c.call("methods"))
    if status != 0:
        return status
    if args.json or not isinstance(methods, list):
        print(json.dumps(to_json(methods), ensure_ascii=False, indent=2))
        return 0
    rows = [m for m in methods if isinstance(m, dict)]
    width = max((len(str(m.get("name"))) for m in rows), default=0)
    for m in rows:
        doc = str(m.get("doc") or "").strip().splitlines()
        kind = m.get("kind", "unary")
        shown = ("" if kind == "unary" else f"[{kind} stream] ") + (doc[0] if doc else "")
        print(f"{m.get('name')!s:<{width}}  {shown}".rstrip())
    return 0


def _request(args: argparse.Namespace, fn: Callable[[BlockingClient], Any]) -> tuple[int, Any]:
    """Connect and return ``(0, fn(client))``, or a failure's exit status and None.

    Failures are reported on stderr in one line, never as a traceback.
    """
    where = args.unix or f"{args.host}:{args.port}"
    try:
        ctx = ssl_context_from_args(args)
    except (ValueError, OSError) as exc:
        return _fail(EXIT_CONNECTION, f"trio-echo: TLS options: {_one_line(exc)}")
    try:
        if args.unix:
            client = connect_unix(
                args.unix,
                connect_timeout=args.connect_timeout,
                ssl_context=ctx,
                server_hostname=args.tls_server_name or (args.host if ctx else None),
            )
        else:
            client = connect(
                args.host,
                args.port,
                connect_timeout=args.connect_timeout,
                ssl_context=ctx,
                server_hostname=args.tls_server_name,
            )
    except ConnectFailed as exc:  # its message names the address
        return _fail(EXIT_CONNECTION, f"trio-echo: {_one_line(exc)}")
    except (OSError, ConnectionClosed) as exc:
        return _fail(EXIT_CONNECTION, f"trio-echo: cannot connect to {where}: {_one_line(exc)}")
    with client:
        try:
            return 0, fn(client)
        except RemoteError as exc:
            shown = f"{exc.code}: {_one_line(exc.message)}"
            if exc.data is not None:
                shown += "\n" + json.dumps(to_json(exc.data), ensure_ascii=False)
            return _fail(EXIT_REMOTE_ERROR, shown)
        except (OSError, ConnectionClosed) as exc:
            return _fail(
                EXIT_CONNECTION, f"trio-echo: connection to {where} lost: {_one_line(exc)}"
            )


def _one_line(text: object) -> str:
    return " ".join(str(text).split()) or type(text).__name__


def _fail(status: int, message: str) -> tuple[int, None]:
    print(message, file=sys.stderr)
    return status, None
