"""The exception hierarchy. No Trio import: the blocking client uses it too.

::

    TrioEchoError
    ├── RemoteError            the server answered with an error; .code, .message, .data
    │   ├── Malformed, FrameTooLarge, UnsupportedVersion, UnknownMethod,
    │   ├── InvalidParams, InternalError, RequestCancelled, DeadlineExceeded,
    │   └── Overloaded         one subclass per protocol.md error code
    └── ConnectionClosed       the connection ended; pending calls fail with it
"""

from __future__ import annotations

from typing import Any, ClassVar

from .wire import ErrorCode

__all__ = [
    "ConnectionClosed",
    "DeadlineExceeded",
    "FrameTooLarge",
    "InternalError",
    "InvalidParams",
    "Malformed",
    "Overloaded",
    "RemoteError",
    "RequestCancelled",
    "TrioEchoError",
    "UnknownMethod",
    "UnsupportedVersion",
    "remote_error",
]


class TrioEchoError(Exception):
    """Base of every error trio_echo raises."""


class ConnectionClosed(TrioEchoError):
    """The connection is closed or was lost; calls pending on it fail with this."""


class RemoteError(TrioEchoError):
    """The server answered a call with an error.

    Clients raise the subclass for the code (``except trio_echo.UnknownMethod``).
    A handler may raise one too, to answer with that code and message::

        raise trio_echo.InvalidParams("seconds must be between 0 and 60")

    Attributes:
        code: the wire error code (a str, see :class:`trio_echo.wire.ErrorCode`).
        message: the server's human-readable explanation.
        data: optional extra detail sent by the server, else ``None``.
    """

    #: The error code this class stands for (``None`` on the base class).
    code_name: ClassVar[str | None] = None

    def __init__(self, message: str, data: Any = None, *, code: str | None = None) -> None:
        code = code or self.code_name or ErrorCode.INTERNAL
        super().__init__(f"{code}: {message}")
        self.code: str = str(code)
        self.message = message
        self.data = data


class Malformed(RemoteError):
    """``malformed``: the server could not decode or understand a message."""

    code_name = ErrorCode.MALFORMED


class FrameTooLarge(RemoteError):
    """``frame_too_large``: a frame exceeded the server's ``max_frame``."""

    code_name = ErrorCode.FRAME_TOO_LARGE


class UnsupportedVersion(RemoteError):
    """``unsupported_version``: the server does not speak this protocol version."""

    code_name = ErrorCode.UNSUPPORTED_VERSION


class UnknownMethod(RemoteError):
    """``unknown_method``: no such method is registered."""

    code_name = ErrorCode.UNKNOWN_METHOD


class InvalidParams(RemoteError):
    """``invalid_params``: wrong parameter count or types, or a bad option."""

    code_name = ErrorCode.INVALID_PARAMS


class InternalError(RemoteError):
    """``internal``: the handler raised."""

    code_name = ErrorCode.INTERNAL


class RequestCancelled(RemoteError):
    """``cancelled``: the request was cancelled (by this client or by shutdown)."""

    code_name = ErrorCode.CANCELLED


class DeadlineExceeded(RemoteError):
    """``timeout``: the call ran past its deadline, on the server or locally."""

    code_name = ErrorCode.TIMEOUT


class Overloaded(RemoteError):
    """``overloaded``: a server-wide limit was reached; try again later."""

    code_name = ErrorCode.OVERLOADED


_BY_CODE: dict[str, type[RemoteError]] = {
    cls.code_name: cls
    for cls in (
        Malformed,
        FrameTooLarge,
        UnsupportedVersion,
        UnknownMethod,
        InvalidParams,
        InternalError,
        RequestCancelled,
        DeadlineExceeded,
        Overloaded,
    )
    if cls.code_name is not None
}


def remote_error(code: str, message: str, data: Any = None) -> RemoteError:
    """The :class:`RemoteError` subclass for ``code`` (the base class for unknown codes)."""
    return _BY_CODE.get(code, RemoteError)(message, data, code=code)
