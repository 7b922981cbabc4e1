"""trio_echo: fast multiplexed request/response over TCP, built on Trio.

Server: :func:`serve`, :class:`Server`, :class:`Service`. Async client:
:func:`open_client`, :func:`open_client_over_stream`, :class:`Client`.
Blocking client: :func:`connect`. The sans-IO protocol core is the public
submodule :mod:`trio_echo.wire`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import wire as wire
from ._blocking import BlockingClient as BlockingClient
from ._blocking import connect as connect
from ._client import Client as Client
from ._client import open_client as open_client
from ._client import open_client_over_stream as open_client_over_stream
from ._errors import ConnectionClosed as ConnectionClosed
from ._errors import DeadlineExceeded as DeadlineExceeded
from ._errors import FrameTooLarge as FrameTooLarge
from ._errors import InternalError as InternalError
from ._errors import InvalidParams as InvalidParams
from ._errors import Malformed as Malformed
from ._errors import Overloaded as Overloaded
from ._errors import RemoteError as RemoteError
from ._errors import RequestCancelled as RequestCancelled
from ._errors import TrioEchoError as TrioEchoError
from ._errors import UnknownMethod as UnknownMethod
from ._errors import UnsupportedVersion as UnsupportedVersion
from ._server import Server as Server
from ._server import serve as serve
from ._server import serve_stream as serve_stream
from ._service import HandlerKind as HandlerKind
from ._service import Service as Service

__all__ = [
    # server
    "HandlerKind",
    "Server",
    "Service",
    "serve",
    "serve_stream",
    # clients
    "BlockingClient",
    "Client",
    "connect",
    "open_client",
    "open_client_over_stream",
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
    "UnknownMethod",
    "UnsupportedVersion",
    # protocol core
    "wire",
    "__version__",
]
