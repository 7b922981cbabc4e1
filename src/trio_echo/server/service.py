"""The method registry: :class:`Service` and the kinds of handler.

No sockets and no protocol here: a :class:`Method` knows how to check its
parameters, and the connection layer decides how to run it by its ``kind``.
Streaming methods (protocol version 2, protocol.md §12) are ``kind``
:attr:`HandlerKind.STREAM`, with :attr:`Method.stream` saying which of the
three kinds of stream; :class:`ItemReceiver` and :class:`ItemSender` are the
shapes of what their handlers are given (the session implements them).
"""

from __future__ import annotations

import abc
import difflib
import enum
import functools
import inspect
import types
import typing
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from .. import wire
from ..wire import StreamKind

__all__ = [
    "HandlerKind",
    "ItemReceiver",
    "ItemSender",
    "Method",
    "Service",
    "unknown_method_message",
]

#: A method name longer than this gets no suggestion.
MAX_SUGGESTED_FOR = 100
#: Close names suggested for an unknown method, at most.
MAX_SUGGESTIONS = 3

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class HandlerKind(enum.Enum):
    """How a handler runs; part of the public contract (README, "Handler kinds")."""

    #: A plain ``def``: runs inline on the connection's task. For quick work.
    INLINE = "inline"
    #: An ``async def``: runs in its own task, can await and be cancelled.
    ASYNC = "async"
    #: A plain ``def`` registered with ``blocking=True``: runs on a worker thread.
    BLOCKING = "blocking"
    #: A streaming method (protocol version 2): an ``async def`` generator, or an
    #: ``async def`` given an :class:`ItemReceiver` and/or an :class:`ItemSender`;
    #: runs like ``ASYNC``. :attr:`Method.stream` says which kind of stream.
    STREAM = "stream"


class ItemReceiver(abc.ABC, AsyncIterator[T]):
    """The items a client sends on a client or bidirectional stream, for its handler.

    Iterate over it (``async for item in items``), or call :meth:`receive`.
    Iteration ends when the client ends the stream; if the client ended it
    with an error, that error is raised (a :class:`~trio_echo.RemoteError`
    with the client's code), never a clean end. The server grants the client
    credit as the handler takes items, so at most ``stream_credit`` items
    (16 by default) wait here for one stream.
    """

    @abc.abstractmethod
    async def receive(self) -> T:
        """The next item.

        Raises:
            trio.EndOfChannel: the client ended the stream cleanly.
            trio_echo.RemoteError: the client ended it with this error.
            trio_echo.RequestCancelled: the client half-closed before ending it.
        """

    def __aiter__(self) -> ItemReceiver[T]:
        return self


class ItemSender(abc.ABC, Generic[T]):
    """Sends items to the client of a server or bidirectional stream (the channel style).

    ``await send(item)`` waits until the client has granted a credit for the
    item, so a producer never runs ahead of its consumer. Use it instead of
    an async generator when the handler needs a nursery or a cancel scope
    around its sends (a generator must not ``yield`` inside one it opened).
    """

    @abc.abstractmethod
    async def send(self, item: T) -> None:
        """Send one item once a credit is available for it.

        Raises:
            trio_echo.DeadlineExceeded: no credit came within ``stream_idle_timeout``.
            trio_echo.RequestCancelled: the client half-closed while credit was owed.
            TypeError: the item cannot be encoded as msgpack.
        """


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
        stream: for a streaming method, the kind of stream; None for a unary one.
        injected: what the handler is given before the call's parameters, in
            order: ``"receiver"`` (an :class:`ItemReceiver`) and/or ``"sender"``
            (an :class:`ItemSender`).
        generator: the handler is an async generator (its items are what it yields).
    """

    name: str
    fn: Callable[..., Any]
    kind: HandlerKind
    doc: str
    signature: inspect.Signature | None
    #: (index, parameter name, accepted types) for each positional parameter
    #: whose annotation can be checked; empty when nothing needs checking.
    checks: tuple[tuple[int, str, tuple[type, ...]], ...]
    stream: StreamKind | None = None
    injected: tuple[str, ...] = ()
    generator: bool = False

    @property
    def kind_name(self) -> str:
        """``"unary"``, ``"server"``, ``"client"`` or ``"bidi"``, as ``methods()`` says."""
        return "unary" if self.stream is None else self.stream.value

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        name: str,
        blocking: bool,
        stream: StreamKind | str | None = None,
    ) -> Method:
        """Inspect ``fn`` once, so that calls pay nothing for it."""
        is_async = inspect.iscoroutinefunction(fn)
        is_generator = inspect.isasyncgenfunction(fn)
        if blocking and (is_async or is_generator):
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
        try:
            hints = typing.get_type_hints(fn)
        except Exception:
            hints = {}
        kind_of_stream, injected = _stream_shape(fn, name, signature, hints, stream)
        if kind_of_stream is not None:
            kind = HandlerKind.STREAM
            if signature is not None:
                # The call's parameters bind after what the server passes first.
                rest = list(signature.parameters.values())[len(injected) :]
                signature = signature.replace(parameters=rest)
        checks: list[tuple[int, str, tuple[type, ...]]] = []
        if signature is not None:
            for index, param in enumerate(signature.parameters.values()):
                if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                    break
                if param.name in hints:
                    accepted = _accepted_types(hints[param.name])
                    if accepted is not None:
                        checks.append((index, param.name, accepted))
        doc = inspect.getdoc(fn) or ""
        return cls(
            name, fn, kind, doc, signature, tuple(checks), kind_of_stream, injected, is_generator
        )

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


def _is(hint: Any, cls: type) -> bool:
    return hint is cls or typing.get_origin(hint) is cls


def _stream_shape(
    fn: Callable[..., Any],
    name: str,
    signature: inspect.Signature | None,
    hints: dict[str, Any],
    stream: StreamKind | str | None,
) -> tuple[StreamKind | None, tuple[str, ...]]:
    """Which kind of stream ``fn`` serves (None: unary) and what it is given first.

    An async generator is a server stream, or a bidirectional one if its first
    parameter is annotated :class:`ItemReceiver`. An ``async def`` whose first
    parameters are annotated :class:`ItemReceiver` and/or :class:`ItemSender`
    is a client (receiver), server (sender) or bidirectional (both) stream.
    ``stream=`` says it outright instead.
    """
    generator = inspect.isasyncgenfunction(fn)
    params = list(signature.parameters.values()) if signature is not None else []
    firsts = [hints.get(p.name) for p in params[:2]]
    receives = bool(firsts) and _is(firsts[0], ItemReceiver)
    sends_at = 1 if receives else 0
    sends = len(firsts) > sends_at and _is(firsts[sends_at], ItemSender)
    if stream is None:
        if generator:
            stream = StreamKind.BIDI if receives else StreamKind.SERVER
        elif inspect.iscoroutinefunction(fn) and (receives or sends):
            stream = (
                StreamKind.BIDI
                if receives and sends
                else StreamKind.CLIENT
                if receives
                else StreamKind.SERVER
            )
        else:
            return None, ()
    try:
        stream = StreamKind(stream)
    except ValueError:
        raise ValueError(
            f'{name}: stream must be "server", "client" or "bidi", not {stream!r}'
        ) from None
    if not (generator or inspect.iscoroutinefunction(fn)):
        raise TypeError(f"{name}: a {stream} stream's handler is an async def (or generator)")
    if generator:
        if stream is StreamKind.CLIENT:
            raise TypeError(f"{name}: a client stream returns one result: use async def")
        injected: tuple[str, ...] = ("receiver",) if stream is StreamKind.BIDI else ()
    else:
        injected = {
            StreamKind.SERVER: ("sender",),
            StreamKind.CLIENT: ("receiver",),
            StreamKind.BIDI: ("receiver", "sender"),
        }[stream]
    if (
        signature is not None
        and len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
        < len(injected)
        and not any(p.kind is p.VAR_POSITIONAL for p in params)
    ):
        given = " and ".join(
            f"an Item{'Receiver' if i == 'receiver' else 'Sender'}" for i in injected
        )
        raise TypeError(f"{name}: a {stream} stream's handler takes {given} first")
    return stream, injected


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
    function on a worker thread. An ``async def`` generator is a server
    stream (protocol version 2); ``stream="client"`` or ``"bidi"`` (or a first
    parameter annotated :class:`ItemReceiver`) makes an ``async def`` a client
    or bidirectional stream (see README, "Streams"). Parameters are positional (msgpack-rpc
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
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        blocking: bool = False,
        stream: str | None = None,
    ) -> Callable[[F], F]: ...

    def method(
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        blocking: bool = False,
        stream: str | None = None,
    ) -> F | Callable[[F], F]:
        """Register a handler; usable as ``@method`` or ``@method(name=..., blocking=...)``.

        ``stream`` (``"server"``, ``"client"`` or ``"bidi"``) makes it a streaming
        method; an async generator is a server stream without it.

        Raises:
            ValueError: a method of that name is already registered, or an unknown ``stream``.
            TypeError: ``blocking=True`` on an ``async def``, or a handler that
                cannot serve its kind of stream.
        """

        def register(f: F) -> F:
            self.add(f, name=name, blocking=blocking, stream=stream)
            return f

        return register(fn) if fn is not None else register

    def add(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        blocking: bool = False,
        stream: str | None = None,
    ) -> Method:
        """Register ``fn`` (the non-decorator form of :meth:`method`)."""
        method_name = name or fn.__name__
        if method_name in self._methods:
            raise ValueError(f"method {method_name!r} is already registered")
        method = Method.from_function(fn, method_name, blocking, stream)
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
