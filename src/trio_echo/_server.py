"""Placeholder: the server lands in the next commit."""

from __future__ import annotations

from typing import Any


class Server:
    """Placeholder."""


async def serve(*args: Any, **kwargs: Any) -> None:
    """Placeholder."""
    raise NotImplementedError


async def serve_stream(*args: Any, **kwargs: Any) -> None:
    """Placeholder."""
    raise NotImplementedError
