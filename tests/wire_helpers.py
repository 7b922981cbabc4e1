"""Helpers shared by the wire-codec tests (test_wire.py, test_protocol_doc.py)."""

from __future__ import annotations

from typing import Any

from trio_echo import wire
from trio_echo.wire import Cancel, ErrorResponse, Notification, Request, Response


def same(a: Any, b: Any) -> bool:
    """Equality that also tells 1, 1.0 and True, and str and bytes, apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, (Request, Response, ErrorResponse, Notification, Cancel)):
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
    assert type(event) is Notification
    if event.method == "error" and len(event.params) == 1 and type(event.params[0]) is dict:
        [err] = event.params
        return wire.encode_error(None, err["code"], err["message"], err.get("data"), framed=framed)
    return wire.encode_notification(event.method, event.params, framed=framed)
