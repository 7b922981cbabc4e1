"""The async Trio client (issue #3): placeholder until the client lands."""

from __future__ import annotations

from typing import Any


class Client:
    """Placeholder."""


def open_client(*args: Any, **kwargs: Any) -> Any:
    """Placeholder."""
    raise NotImplementedError


def open_client_over_stream(*args: Any, **kwargs: Any) -> Any:
    """Placeholder."""
    raise NotImplementedError
