"""trio_echo: fast multiplexed request/response over TCP, built on Trio.

Server: :func:`serve`, :class:`Server`, :class:`Service`. Async client:
:func:`open_client`, :func:`open_client_over_stream`, :class:`Client`.
Blocking client: :func:`connect`. The sans-IO protocol core is the public
submodule :mod:`trio_echo.wire`; :mod:`trio_echo.testing` serves a service
in memory for your tests.

The names are imported on first use (a module ``__getattr__``), so that
``import trio_echo`` and ``trio_echo.connect`` (the blocking client) do not
import Trio or the server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

from ._version import __version__ as __version__

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ resolves these
    from . import testing as testing
    from . import wire as wire
    from .client.async_client import Client as Client
    from .client.async_client import open_client as open_client
    from .client.async_client import open_client_over_stream as open_client_over_stream
    from .client.async_client import open_unix_client as open_unix_client
    from .client.blocking import BlockingClient as BlockingClient
    from .client.blocking import connect as connect
    from .client.blocking import connect_unix as connect_unix
    from .client.core import NotificationHandler as NotificationHandler
    from .errors import ConnectFailed as ConnectFailed
    from .errors import ConnectionClosed as ConnectionClosed
    from .errors import ConnectTimeout as ConnectTimeout
    from .errors import DeadlineExceeded as DeadlineExceeded
    from .errors import FrameTooLarge as FrameTooLarge
    from .errors import InternalError as InternalError
    from .errors import InvalidParams as InvalidParams
    from .errors import Malformed as Malformed
    from .errors import Overloaded as Overloaded
    from .errors import RemoteError as RemoteError
    from .errors import RequestCancelled as RequestCancelled
    from .errors import TrioEchoError as TrioEchoError
    from .errors import Unavailable as Unavailable
    from .errors import UnknownMethod as UnknownMethod
    from .errors import UnsupportedVersion as UnsupportedVersion
    from .server.config import ServerConfig as ServerConfig
    from .server.server import Server as Server
    from .server.server import serve as serve
    from .server.server import serve_stream as serve_stream
    from .server.service import HandlerKind as HandlerKind
    from .server.service import ItemReceiver as ItemReceiver
    from .server.service import ItemSender as ItemSender
    from .server.service import Method as Method
    from .server.service import Service as Service

#: The module each public name lives in, below this package. Nothing is imported
#: before its first use, so that ``import trio_echo`` and the blocking client
#: import neither Trio nor the server.
_WHERE: Final[dict[str, str]] = {
    "Client": "client.async_client",
    "open_client": "client.async_client",
    "open_client_over_stream": "client.async_client",
    "open_unix_client": "client.async_client",
    "BlockingClient": "client.blocking",
    "connect": "client.blocking",
    "connect_unix": "client.blocking",
    "NotificationHandler": "client.core",
    "ConnectFailed": "errors",
    "ConnectionClosed": "errors",
    "ConnectTimeout": "errors",
    "DeadlineExceeded": "errors",
    "FrameTooLarge": "errors",
    "InternalError": "errors",
    "InvalidParams": "errors",
    "Malformed": "errors",
    "Overloaded": "errors",
    "RemoteError": "errors",
    "RequestCancelled": "errors",
    "TrioEchoError": "errors",
    "Unavailable": "errors",
    "UnknownMethod": "errors",
    "UnsupportedVersion": "errors",
    "ServerConfig": "server.config",
    "Server": "server.server",
    "serve": "server.server",
    "serve_stream": "server.server",
    "HandlerKind": "server.service",
    "ItemReceiver": "server.service",
    "ItemSender": "server.service",
    "Method": "server.service",
    "Service": "server.service",
    "testing": "testing",
    "wire": "wire",
}

__all__ = [
    # server
    "HandlerKind",
    "ItemReceiver",
    "ItemSender",
    "Method",
    "Server",
    "ServerConfig",
    "Service",
    "serve",
    "serve_stream",
    # clients
    "BlockingClient",
    "Client",
    "NotificationHandler",
    "connect",
    "connect_unix",
    "open_client",
    "open_client_over_stream",
    "open_unix_client",
    # errors
    "ConnectFailed",
    "ConnectTimeout",
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
    "Unavailable",
    "UnknownMethod",
    "UnsupportedVersion",
    # protocol core, and tools for your tests
    "testing",
    "wire",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """Import a public name on its first use (PEP 562)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    imported = importlib.import_module(f"{__name__}.{module}")
    value = imported if module == name else getattr(imported, name)
    globals()[name] = value  # later lookups find it without calling this
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
