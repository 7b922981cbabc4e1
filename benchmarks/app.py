"""User methods served by trio_echo in benchmarks/run.py (``--app app:service``).

``aecho`` is the "user's ``async def`` handler" of the performance goals: it
gets its own task per request, unlike the built-in inline ``echo``.
"""

from __future__ import annotations

from typing import Any

import trio_echo

service = trio_echo.Service()


@service.method
async def aecho(value: Any) -> Any:
    """Return ``value`` unchanged, from an ``async def`` handler."""
    return value
