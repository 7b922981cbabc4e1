"""The method registry: :class:`Service` and the three kinds of handler.

No sockets and no protocol here: a :class:`Method` knows how to check its
parameters, and the connection layer decides how to run it by its ``kind``.
"""

from __future__ import annotations

import difflib
import enum
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from .. import wire

__all__ = ["HandlerKind", "Method", "Service", "unknown_method_message"]

#: A method name longer than this gets no suggestion.
MAX_SUGGESTED_FOR = 100
#: Close names suggested for an unknown method, at most.
MAX_SUGGESTIONS = 3

F = TypeVar("F", bound=Callable[..., Any])


class HandlerKind(enum.Enum):
    """How a handler runs; part of the public contract (README, "Handler kinds")."""

    #: A plain ``def``: runs inline on the connection's task. For quick work.
    INLINE = "inline"
    #: An ``async def``: runs in its own task, can await and be cancelled.
    ASYNC = "async"
    #: A plain ``def`` registered with ``blocking=True``: runs on a worker thread.
    BLOCKING = "blocking"


# Annotations we can check cheaply on decoded msgpack values. Anything else
# (Any, user classes, generics we do not model) is not checked.
_SIMPLE_TYPES: dict[Any, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    str: (str,),
    bytes: (bytes,),
    bool: (bool,),
    list: (list,),
    tuple: (list, tuple),
    dict: (dict,),
    type(None): (type(None),),
}


def _accepted_types(annotation: Any) -> tuple[type, ...] | None:
    """The runtime types a parameter annotation admits, or None if unchecked."""
    if annotation is None:
        return (type(None),)
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        accepted: list[type] = []
        for arg in typing.get_args(annotation):
            sub = _accepted_types(arg)
            if sub is None:
                return None
            accepted.extend(sub)
        return tuple(accepted)
    if origin is not None:
        annotation = origin
    return _SIMPLE_TYPES.get(annotation)


def _type_name(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


@dataclass(frozen=True, slots=True)
class Method:
    """One registered method.

    Attributes:
        name: the name clients call it by.
        fn: the handler.
        kind: how it runs (:class:`HandlerKind`).
        doc: its docstring, as shown by the ``methods`` built-in.
    """

    name: str
    fn: Callable[..., Any]
    kind: HandlerKind
    doc: str
    signature: inspect.Signature | None
    #: (index, parameter name, accepted types) for each positional parameter
    #: whose annotation can be checked; empty when nothing needs checking.
    checks: tuple[tuple[int, str, tuple[type, ...]], ...]

    @classmethod
    def from_function(cls, fn: Callable[..., Any], name: str, blocking: bool) -> Method:
        """Inspect ``fn`` once, so that calls pay nothing for it."""
        is_async = inspect.iscoroutinefunction(fn)
        if blocking and is_async:
            raise TypeError(f"{name}: blocking=True is for plain functions, not async def")
        kind = (
            HandlerKind.ASYNC
            if is_async
            else HandlerKind.BLOCKING
            if blocking
            else HandlerKind.INLINE
        )
        try:
            signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            signature = None
        checks: list[tuple[int, str, tuple[type, ...]]] = []
        if signature is not None:
            try:
                hints = typing.get_type_hints(fn)
            except Exception:
                hints = {}
            for index, param in enumerate(signature.parameters.values()):
                if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                    break
                if param.name in hints:
                    accepted = _accepted_types(hints[param.name])
                    if accepted is not None:
                        checks.append((index, param.name, accepted))
        doc = inspect.getdoc(fn) or ""
        return cls(name, fn, kind, doc, signature, tuple(checks))

    def check_params(self, params: list[Any]) -> str | None:
        """Explain why ``params`` do not fit the handler, or return None if they do."""
        if self.signature is not None:
            try:
                self.signature.bind(*params)
            except TypeError as exc:
                return f"{self.name}: {exc}"
        for index, pname, accepted in self.checks:
            if index < len(params):
                value = params[index]
                # bool is an int subclass in Python, but not on the wire.
                if not isinstance(value, accepted) or (
                    type(value) is bool and bool not in accepted
                ):
                    wanted = " or ".join("nil" if t is type(None) else t.__name__ for t in accepted)
                    return (
                        f"{self.name}: parameter {pname!r} must be {wanted}, "
                        f"not {_type_name(value)}"
                    )
        return None

    def bad_call(self, params: list[Any]) -> str | None:
        """After the handler raised ``TypeError``: was it the call's arguments?"""
        if self.signature is None:
            return None
        try:
            self.signature.bind(*params)
        except TypeError as exc:
            return f"{self.name}: {exc}"
        return None


def unknown_method_message(name: str, known: Iterable[str]) -> str:
    """The ``unknown_method`` message for ``name``, with the closest ``known`` names.

    ``unknown method 'gett'; did you mean 'get'?``. The name is quoted as
    every echo of client data is (:func:`trio_echo.wire.quote`, bounded).
    Names longer than :data:`MAX_SUGGESTED_FOR` get no suggestion: comparing
    costs time that grows with the square of the length, and no registered
    name is that long in practice.
    """
    if len(name) > MAX_SUGGESTED_FOR:
        return f"unknown method {wire.quote(name)}"
    return _unknown_method_message(name, tuple(known))


@functools.lru_cache(maxsize=1024)
def _unknown_method_message(name: str, known: tuple[str, ...]) -> str:
    # Cached: difflib takes some 50 us, and a client that keeps calling a
    # misspelt name should not cost that every time.
    message = f"unknown method {wire.quote(name)}"
    close = difflib.get_close_matches(name, known, n=MAX_SUGGESTIONS)
    if not close:
        return message
    quoted = [repr(c) for c in close]
    options = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return f"{message}; did you mean {options}?"


class Service:
    """A set of methods a server serves.

    ::

        service = trio_echo.Service()

        @service.method
        async def add(a: int, b: int) -> int:
            \"\"\"Add two numbers.\"\"\"
            return a + b

        @service.method(blocking=True)
        def checksum(data: bytes) -> str: ...

    A plain ``def`` runs inline on the connection's task, so keep it quick;
    an ``async def`` gets its own task; ``blocking=True`` runs a plain
    function on a worker thread. Parameters are positional (msgpack-rpc
    params are an array); calls whose parameters do not bind, or whose values
    do not match simple annotations (``int``, ``float``, ``str``, ``bytes``,
    ``bool``, ``list``, ``dict``, unions and ``None`` of these), are answered
    ``invalid_params``.
    """

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    @overload
    def method(self, fn: F, /) -> F: ...

    @overload
    def method(
        self, fn: None = None, /, *, name: str | None = None, blocking: bool = False
    ) -> Callable[[F], F]: ...

    def method(
        self, fn: F | None = None, /, *, name: str | None = None, blocking: bool = False
    ) -> F | Callable[[F], F]:
        """Register a handler; usable as ``@method`` or ``@method(name=..., blocking=...)``.

        Raises:
            ValueError: a method of that name is already registered.
            TypeError: ``blocking=True`` on an ``async def``.
        """

        def register(f: F) -> F:
            self.add(f, name=name, blocking=blocking)
            return f

        return register(fn) if fn is not None else register

    def add(
        self, fn: Callable[..., Any], *, name: str | None = None, blocking: bool = False
    ) -> Method:
        """Register ``fn`` (the non-decorator form of :meth:`method`)."""
        method_name = name or fn.__name__
        if method_name in self._methods:
            raise ValueError(f"method {method_name!r} is already registered")
        method = Method.from_function(fn, method_name, blocking)
        self._methods[method_name] = method
        return method

    def include(self, other: Service) -> None:
        """Register every method of ``other`` here too.

        Raises:
            ValueError: a name is registered in both.
        """
        for method in other:
            if method.name in self._methods:
                raise ValueError(f"method {method.name!r} is already registered")
            self._methods[method.name] = method

    def get(self, name: str) -> Method | None:
        """The method called ``name``, if registered."""
        return self._methods.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def __iter__(self) -> Iterator[Method]:
        return iter(self._methods.values())

    def __len__(self) -> int:
        return len(self._methods)

    def table(self) -> dict[str, Method]:
        """A snapshot of the name -> method table (what the server dispatches on)."""
        return dict(self._methods)
