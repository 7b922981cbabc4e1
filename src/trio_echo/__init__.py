"""trio_echo: fast multiplexed request/response over TCP, built on Trio.

Server: :func:`serve`, :class:`Server`, :class:`Service`. Async client:
:func:`open_client`, :func:`open_client_over_stream`, :class:`Client`.
Blocking client: :func:`connect`. The sans-IO protocol core is the public
submodule :mod:`trio_echo.wire`.
"""

from __future__ import annotations

from . import wire as wire
from ._version import __version__ as __version__
from .client.async_client import Client as Client
from .client.async_client import open_client as open_client
from .client.async_client import open_client_over_stream as open_client_over_stream
from .client.async_client import open_unix_client as open_unix_client
from .client.blocking import BlockingClient as BlockingClient
from .client.blocking import connect as connect
from .client.blocking import connect_unix as connect_unix
from .errors import ConnectionClosed as ConnectionClosed
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
from .server.service import Service as Service

__all__ = [
    # server
    "HandlerKind",
    "Server",
    "ServerConfig",
    "Service",
    "serve",
    "serve_stream",
    # clients
    "BlockingClient",
    "Client",
    "connect",
    "connect_unix",
    "open_client",
    "open_client_over_stream",
    "open_unix_client",
    # errors
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
    # protocol core
    "wire",
    "__version__",
]
