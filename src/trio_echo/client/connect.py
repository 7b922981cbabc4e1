"""Why a connect failed, in one exception both clients raise: :class:`ConnectFailed`."""

from __future__ import annotations

import errno
import socket

from ..errors import ConnectFailed

__all__ = ["address", "connect_failed"]


def address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connect_failed(where: str, exc: OSError) -> ConnectFailed:
    """The :class:`ConnectFailed` to raise for ``exc``, naming the address and the cause.

    ``where`` is ``host:port`` (see :func:`address`) or a Unix socket's path.

    Trio reports a failed connect as an ``OSError`` whose ``__cause__`` is an
    ``ExceptionGroup`` of one error per address tried: the first of those is
    the cause kept, so no group hides in the traceback.
    """
    cause: BaseException = exc
    while isinstance(cause.__cause__, BaseExceptionGroup):
        cause = cause.__cause__.exceptions[0]
    while isinstance(cause, BaseExceptionGroup):
        cause = cause.exceptions[0]
    number = cause.errno if isinstance(cause, OSError) else None
    if isinstance(cause, socket.gaierror):
        why = f"cannot resolve the host name ({cause.strerror or cause})"
    elif number == errno.ECONNREFUSED:  # on a Unix socket too
        why = "connection refused (no server is listening there: is it running?)"
    elif number == errno.ENOENT:  # a Unix socket path
        why = "no such socket file (is the server running, with --unix at that path?)"
    elif isinstance(cause, OSError) and cause.strerror:
        why = cause.strerror[:1].lower() + cause.strerror[1:]
    else:
        why = str(cause) or type(cause).__name__
    error = ConnectFailed(f"cannot connect to {where}: {why}", where, number)
    error.__cause__ = cause
    return error
