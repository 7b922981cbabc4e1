"""Comparing, encoding and decoding protocol events in tests."""

from __future__ import annotations

import os
from typing import Any

import trio_echo
from trio_echo import wire
from trio_echo.wire import (
    Cancel,
    Credit,
    End,
    ErrorResponse,
    Items,
    Notification,
    Request,
    Response,
)


def same(a: Any, b: Any) -> bool:
    """Equality that also tells 1, 1.0 and True, and str and bytes, apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, (Request, Response, ErrorResponse, Notification, Cancel, Items, Credit, End)):
        return all(same(getattr(a, f), getattr(b, f)) for f in a.__slots__)
    return bool(a == b)


def encode(event: Any, framed: bool) -> bytes:
    """An event's bytes through the module-level encoder meant for it.

    A ``Notification("error", [err])`` goes through ``encode_error(None, ...)``,
    the encoder of error notices.
    """
    if type(event) is Request:
        return wire.encode_request(
            event.msgid, event.method, event.params, event.options, framed=framed
        )
    if type(event) is Response:
        return wire.encode_response(event.msgid, event.result, framed=framed)
    if type(event) is ErrorResponse:
        return wire.encode_error(event.msgid, event.code, event.message, event.data, framed=framed)
    if type(event) is Cancel:
        return wire.encode_cancel(event.msgid, framed=framed)
    if type(event) in (Items, Credit, End):
        assert framed, "stream messages exist on framed connections only"
        if type(event) is Items:
            return wire.encode_items(event.msgid, event.items)
        if type(event) is Credit:
            return wire.encode_credit(event.msgid, event.n)
        return wire.encode_end(event.msgid, event.error)
    assert type(event) is Notification
    if event.method == "error" and len(event.params) == 1 and type(event.params[0]) is dict:
        [err] = event.params
        return wire.encode_error(None, err["code"], err["message"], err.get("data"), framed=framed)
    return wire.encode_notification(event.method, event.params, framed=framed)


def error_code(event: wire.Event) -> str | None:
    """The code of an error response or error notice, else None."""
    if isinstance(event, wire.ErrorResponse):
        return event.code
    if isinstance(event, wire.Notification) and event.method == "error":
        return str(event.params[0]["code"])
    return None


def decode_all(data: bytes, mode: wire.Mode = wire.Mode.FRAMED) -> list[wire.Event]:
    """Every event in ``data`` (a whole server-to-client byte stream)."""
    conn = wire.Connection(mode=mode, max_frame=2**31)
    conn.receive_data(data)
    conn.receive_data(b"")
    return list(conn.events())


#: The exception class a client raises for each error code.
EXCEPTIONS = {
    "malformed": trio_echo.Malformed,
    "frame_too_large": trio_echo.FrameTooLarge,
    "unsupported_version": trio_echo.UnsupportedVersion,
    "unknown_method": trio_echo.UnknownMethod,
    "invalid_params": trio_echo.InvalidParams,
    "internal": trio_echo.InternalError,
    "cancelled": trio_echo.RequestCancelled,
    "timeout": trio_echo.DeadlineExceeded,
    "overloaded": trio_echo.Overloaded,
    "unavailable": trio_echo.Unavailable,
}


def raw_bytes(n: int) -> bytes:
    """``n`` random bytes that a server in auto mode takes for raw echo.

    A first byte of 0x93/0x94 opens a msgpack-rpc stream (protocol.md §2): bare
    random data starts with one once in 128 tries.
    """
    return b"R" + os.urandom(n - 1)
