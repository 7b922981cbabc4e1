"""The built-in methods, registered through the same :class:`Service` users use."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import trio

from ..errors import InvalidParams
from .service import Service

__all__ = ["MAX_SLEEP_S", "MONITORING", "builtin_service"]

#: Upper bound of the ``sleep`` built-in, in seconds.
MAX_SLEEP_S = 60.0
#: Built-ins answered even at max_requests, so that monitoring never goes dark
#: (as FbThrift's methodsBypassMaxRequestsLimit). No user method can take these names.
MONITORING = frozenset({"ping", "stats", "methods"})


def builtin_service(
    stats: Callable[[], dict[str, Any]], methods: Callable[[], list[dict[str, str]]]
) -> Service:
    """The built-ins of one server; ``stats`` and ``methods`` read its state."""
    service = Service()

    def echo(value: Any) -> Any:
        """Return the value unchanged (any msgpack value, type kept)."""
        return value

    def ping() -> str:
        """Return "pong"."""
        return "pong"

    async def sleep(seconds: float) -> None:
        """Sleep for 0 to 60 seconds, then return nil (for trying cancel and timeouts)."""
        if not 0 <= seconds <= MAX_SLEEP_S or math.isnan(seconds):
            raise InvalidParams(f"sleep: seconds must be between 0 and {MAX_SLEEP_S:g}")
        await trio.sleep(seconds)

    def stats_() -> dict[str, Any]:
        """Server counters: connections, requests, errors by code, bytes, uptime."""
        return stats()

    def methods_() -> list[dict[str, str]]:
        """A {"name", "doc"} map for every method this server serves."""
        return methods()

    service.add(echo)
    service.add(ping)
    service.add(sleep)
    service.add(stats_, name="stats")
    service.add(methods_, name="methods")
    return service
