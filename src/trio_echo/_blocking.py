"""The blocking client (issue #3): placeholder until the client lands."""

from __future__ import annotations

from typing import Any


class BlockingClient:
    """Placeholder."""


def connect(*args: Any, **kwargs: Any) -> Any:
    """Placeholder."""
    raise NotImplementedError
