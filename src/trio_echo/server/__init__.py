"""The Trio server: listening, connections, the message engine, services and the built-ins.

Imports run one way: ``server`` -> ``connection`` -> ``engine`` -> ``service``
and the sans-IO :mod:`trio_echo.wire`; ``config`` holds every setting and its default.
"""

from __future__ import annotations

from .config import ServerConfig as ServerConfig
from .server import Server as Server
from .server import serve as serve
from .server import serve_stream as serve_stream
from .service import HandlerKind as HandlerKind
from .service import Method as Method
from .service import Service as Service

__all__ = ["HandlerKind", "Method", "Server", "ServerConfig", "Service", "serve", "serve_stream"]
