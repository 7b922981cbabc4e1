"""Keeping exception groups made by our own nurseries away from users' code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

__all__ = ["background", "collapse"]


@asynccontextmanager
async def background(task: Callable[[], Awaitable[object]]) -> AsyncIterator[None]:
    """Run ``task`` beside the ``async with`` body, and cancel it when the body ends.

    ``task`` must never raise. An exception from the body then comes out as
    it is, not wrapped in the nursery's exception group. (Raising it here, in
    the generator the body's exception was thrown into, keeps Python from
    chaining the group to it as its context.)
    """
    collapsed: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        collapsed = collapse(group)
        if collapsed is None:
            raise
    if collapsed is not None:
        try:
            raise collapsed
        finally:
            collapsed = None  # no reference cycle through the traceback


def collapse(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception to raise instead of ``group``, or None to keep the group.

    Our background tasks never raise, so a group out of a nursery around the
    user's ``async with`` body holds the body's exception and/or ``Cancelled``
    from an enclosing cancel scope.
    """
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for sub in exc.exceptions:
                walk(sub)
        else:
            leaves.append(exc)

    walk(group)
    others = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    if len(others) == 1:
        return others[0]
    if not others and leaves:
        return leaves[0]
    return None
