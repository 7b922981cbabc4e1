"""The built-in methods, registered through the same :class:`Service` users use."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from .. import wire
from ..errors import InvalidParams
from .service import ItemReceiver, Service

__all__ = ["MAX_SLEEP_S", "MAX_TICK_SIZE", "MONITORING", "builtin_service"]

#: Upper bound of the ``sleep`` built-in, in seconds.
MAX_SLEEP_S = 60.0
#: Upper bound of the ``ticks`` built-in's item size, in bytes.
MAX_TICK_SIZE = 65536
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
        """A {"name", "doc", "kind"} map for every method this server serves."""
        return methods()

    async def ticks(n: int, interval_s: float, size: int = 0) -> AsyncIterator[int | bytes]:
        """0 to n-1, one item every interval_s seconds (0 to 60); with size, each item is
        size bytes instead (its number in the first 8), for benchmarks."""
        if not 0 <= n <= wire.MAX_CREDIT:
            raise InvalidParams(f"ticks: n must be between 0 and {wire.MAX_CREDIT}")
        if not 0 <= interval_s <= MAX_SLEEP_S or math.isnan(interval_s):
            raise InvalidParams(f"ticks: interval_s must be between 0 and {MAX_SLEEP_S:g}")
        if not 0 <= size <= MAX_TICK_SIZE:
            raise InvalidParams(f"ticks: size must be between 0 and {MAX_TICK_SIZE}")
        pad = bytes(max(size - 8, 0))
        for i in range(n):
            if i and interval_s:
                await trio.sleep(interval_s)
            if not size:
                yield i
            elif size >= 8:
                yield i.to_bytes(8, "big") + pad
            else:
                yield i.to_bytes(8, "big")[:size]

    async def sum_(numbers: ItemReceiver[float]) -> float:
        """The sum of the numbers received (0 for none)."""
        total: float = 0
        async for number in numbers:
            if type(number) not in (int, float):
                raise InvalidParams(f"sum: items must be numbers, not {wire.quote(number)}")
            total += number
        return total

    async def echo_stream(items: ItemReceiver[Any]) -> AsyncIterator[Any]:
        """Each item received is sent back."""
        async for item in items:
            yield item

    service.add(echo)
    service.add(ping)
    service.add(sleep)
    service.add(stats_, name="stats")
    service.add(methods_, name="methods")
    service.add(ticks)
    service.add(sum_, name="sum")
    service.add(echo_stream)
    return service
