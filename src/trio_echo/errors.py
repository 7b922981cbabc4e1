"""The exception hierarchy. No Trio import: the blocking client uses it too.

::

    TrioEchoError
    ├── RemoteError            the server answered with an error; .code, .message, .data
    │   ├── Malformed, FrameTooLarge, UnsupportedVersion, UnknownMethod,
    │   ├── InvalidParams, InternalError, RequestCancelled, DeadlineExceeded,
    │   ├── Overloaded, Unavailable   one subclass per protocol error code (protocol.md §6)
    │   └── your own           class KeyNotFound(RemoteError, code="key_not_found")
    ├── ConnectionClosed       the connection ended; pending calls fail with it
    └── ConnectFailed          no connection could be made (also a ConnectionError)
        └── ConnectTimeout     not within connect_timeout (also a TimeoutError)

Application error codes: a :class:`RemoteError` subclass names its code with
a class keyword. A handler that raises it answers with that code (and the
error's ``data``); a client process in which the class is defined raises it
for that code. The registry that maps codes to classes is filled as the
classes are defined.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, ClassVar

from .wire import ErrorCode, packb

__all__ = [
    "ConnectFailed",
    "ConnectTimeout",
    "ConnectionClosed",
    "DeadlineExceeded",
    "FrameTooLarge",
    "InternalError",
    "InvalidParams",
    "Malformed",
    "Overloaded",
    "PROTOCOL_CODES",
    "RemoteError",
    "RequestCancelled",
    "TrioEchoError",
    "Unavailable",
    "UnknownMethod",
    "UnsupportedVersion",
    "error_class",
    "remote_error",
]

#: The ten error codes of the protocol itself (protocol.md §6). Every other
#: string is an application code.
PROTOCOL_CODES: frozenset[str] = frozenset(code.value for code in ErrorCode)

# Types msgpack encodes without a look inside (the common ``data`` values).
_SCALARS = (str, bytes, int, float, bool, type(None))

# Application error classes by code, weakly held: a class that is gone (a
# test's local class, a reloaded module's old one) no longer answers for it.
_APP_CLASSES: weakref.WeakValueDictionary[str, type[RemoteError]] = weakref.WeakValueDictionary()


class TrioEchoError(Exception):
    """Base of every error trio_echo raises."""


class ConnectionClosed(TrioEchoError):
    """The connection is closed or was lost; calls pending on it fail with this."""


class ConnectFailed(TrioEchoError, ConnectionError):
    """A client could not connect to the server: refused, unreachable, unknown host, timeout.

    Both clients raise it, with a message naming the address (``cannot
    connect to 127.0.0.1:7000: connection refused ...``). It is an
    ``OSError`` too: ``errno`` is the cause's (``errno.ECONNREFUSED`` ...),
    and the original exception is its ``__cause__``.

    Attributes:
        address: what the client tried: ``host:port`` (``[::1]:7000``), or a
            Unix socket's path.
    """

    def __init__(self, message: str, address: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.address = address

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.args[0], self.address, self.errno))


class ConnectTimeout(ConnectFailed, TimeoutError):
    """No connection (and server hello) within ``connect_timeout``; also a ``TimeoutError``."""


class _DeprecatedCodeName:
    """``code_name``, the old name of the class's code; reading it warns."""

    def __get__(self, obj: RemoteError | None, owner: type[RemoteError]) -> str | None:
        warnings.warn(
            "RemoteError.code_name is deprecated: use the class attribute `code`",
            DeprecationWarning,
            stacklevel=2,
        )
        return owner._class_code


class RemoteError(TrioEchoError):
    """The server answered a call with an error.

    Clients raise the subclass for the code (``except trio_echo.UnknownMethod``),
    or a plain ``RemoteError`` for a code no class here names. A handler may
    raise one to answer with its code, message and data::

        raise trio_echo.InvalidParams("seconds must be between 0 and 60")

    Your own errors name an application code (any string that is not one of
    the protocol's ten) with a class keyword::

        class KeyNotFound(trio_echo.RemoteError, code="key_not_found"):
            \"\"\"No value is stored under that key.\"\"\"

        raise KeyNotFound(f"no key {key!r}", data={"key": key})

    A client process that defines ``KeyNotFound`` raises it for
    ``key_not_found`` (built from the message and data received, without
    calling your ``__init__``). A subclass of a class with a code inherits it.
    A subclass that ends up with no code, or that names one of the protocol's
    codes, raises ``TypeError`` when it is defined.

    Attributes:
        code: the wire error code, a str (also a class attribute: ``KeyNotFound.code``).
        message: the human-readable explanation.
        data: optional extra detail, any msgpack value, else ``None``.
    """

    #: The code this class stands for; None on RemoteError itself.
    _class_code: ClassVar[str | None] = None
    #: Deprecated alias of the class's ``code``.
    code_name: ClassVar[Any] = _DeprecatedCodeName()
    #: The code of a plain RemoteError raised without ``code=``.
    code: str = ErrorCode.INTERNAL.value
    # Defaults for a subclass whose __init__ does not call this one's.
    message: str = ""
    data: Any = None

    def __init_subclass__(cls, *, code: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        legacy = cls.__dict__.get("code_name")
        if code is None and isinstance(legacy, str):
            warnings.warn(
                f"{cls.__qualname__}: `code_name = ...` is deprecated; "
                f"write class {cls.__name__}(..., code={legacy!r})",
                DeprecationWarning,
                stacklevel=2,
            )
            code = legacy
        ours = cls.__module__ == __name__
        if code is None:
            code = cls._class_code  # inherited from a parent with a code
            if code is None:
                raise TypeError(
                    f"{cls.__qualname__} names no error code: write "
                    f'class {cls.__name__}(trio_echo.RemoteError, code="your_code")'
                )
        elif type(code) is not str or not code:
            raise TypeError(f"{cls.__qualname__}: code must be a non-empty str, not {code!r}")
        elif code in PROTOCOL_CODES and not ours:
            raise TypeError(
                f"{cls.__qualname__}: {code!r} is a protocol error code; an application "
                "error needs a code of its own (to answer with a protocol code, raise or "
                "subclass its class, e.g. trio_echo.InvalidParams, without code=)"
            )
        elif code not in PROTOCOL_CODES:
            # A class that names its code is the one clients raise for it; the
            # latest definition wins (a reloaded module replaces its classes).
            _APP_CLASSES[code] = cls
        cls._class_code = code
        cls.code = code
        if "code_name" in cls.__dict__:
            del cls.code_name  # the legacy attribute: the descriptor answers again

    def __init__(self, message: str = "", data: Any = None, *, code: str | None = None) -> None:
        """
        Args:
            message: the human-readable explanation (sent as the error's ``message``).
            data: extra detail for the client, any msgpack value (sent as ``data``).
            code: the code, for a plain ``RemoteError``; a subclass has its own.

        Raises:
            TypeError: ``data`` cannot be encoded as msgpack.
        """
        message = message if type(message) is str else str(message)
        if data is not None and type(data) not in _SCALARS:
            try:
                packb(data)
            except (TypeError, ValueError, OverflowError) as exc:
                raise TypeError(f"error data cannot be encoded as msgpack: {exc}") from None
        code = str(code or self._class_code or ErrorCode.INTERNAL)
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt like a received error, whatever the subclass's __init__ takes.
        return (_rebuild, (type(self), self.message, self.data, self.code))


class Malformed(RemoteError, code=ErrorCode.MALFORMED.value):
    """``malformed``: the server could not decode or understand a message."""


class FrameTooLarge(RemoteError, code=ErrorCode.FRAME_TOO_LARGE.value):
    """``frame_too_large``: a frame exceeded a ``max_frame`` (the server's, or the client's)."""


class UnsupportedVersion(RemoteError, code=ErrorCode.UNSUPPORTED_VERSION.value):
    """``unsupported_version``: the server does not speak this protocol version."""


class UnknownMethod(RemoteError, code=ErrorCode.UNKNOWN_METHOD.value):
    """``unknown_method``: no such method is registered."""


class InvalidParams(RemoteError, code=ErrorCode.INVALID_PARAMS.value):
    """``invalid_params``: wrong parameter count or types, or a bad option."""


class InternalError(RemoteError, code=ErrorCode.INTERNAL.value):
    """``internal``: the handler raised."""


class RequestCancelled(RemoteError, code=ErrorCode.CANCELLED.value):
    """``cancelled``: the request was cancelled (by this client or by shutdown)."""


class DeadlineExceeded(RemoteError, code=ErrorCode.TIMEOUT.value):
    """``timeout``: the call ran past its deadline, on the server or locally."""


class Overloaded(RemoteError, code=ErrorCode.OVERLOADED.value):
    """``overloaded``: a server-wide limit was reached; try again later."""


class Unavailable(RemoteError, code=ErrorCode.UNAVAILABLE.value):
    """``unavailable`` (protocol version 2): the server did not run the call.

    The server was going away (``goaway``) when the call reached it. The
    clients retry such a call on a new connection within its timeout, and
    raise this only once their attempts are used up.
    """


_PROTOCOL_CLASSES: dict[str, type[RemoteError]] = {
    cls.code: cls
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
        Unavailable,
    )
}


def error_class(code: str) -> type[RemoteError]:
    """The class clients raise for ``code``: its registered class, else :class:`RemoteError`."""
    return _PROTOCOL_CLASSES.get(code) or _APP_CLASSES.get(code) or RemoteError


def remote_error(code: str, message: str, data: Any = None) -> RemoteError:
    """The exception for an error received from the server (see :func:`error_class`).

    An application class is built without calling its own ``__init__``, whose
    signature is the service's business: ``.code``, ``.message`` and ``.data``
    are set as received.
    """
    cls = error_class(code)
    if cls is RemoteError or cls in _PROTOCOL_CLASSES.values():
        return cls(message, data, code=code)
    return _rebuild(cls, message, data, code)


def _rebuild(cls: type[RemoteError], message: str, data: Any, code: str) -> RemoteError:
    exc = cls.__new__(cls)
    exc.args = (f"{code}: {message}" if message else code,)
    exc.code = code
    exc.message = message
    exc.data = data
    return exc
