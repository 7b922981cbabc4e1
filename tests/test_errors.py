"""Application error codes (protocol.md §6): RemoteError subclasses with a code of their own."""

from __future__ import annotations

import json
import os
import pickle
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trio_echo
from trio_echo import Server, Service, wire
from trio_echo.errors import PROTOCOL_CODES, error_class, remote_error

from helpers import Peer, ServerProcess, memory_server, run_cli, server_thread, tcp_server


class KeyNotFound(trio_echo.RemoteError, code="key_not_found"):
    """No value is stored under that key."""


class Conflict(trio_echo.RemoteError, code="kv.conflict"):
    """A custom __init__: the client must not need it."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        super().__init__(
            f"{key!r} is at version {actual}, not {expected}",
            data={"key": key, "expected": expected, "actual": actual},
        )


class NoSuper(trio_echo.RemoteError, code="no_super"):
    """A subclass whose __init__ forgets to call RemoteError's."""

    def __init__(self, detail: str) -> None:
        self.detail = detail


def kv_service() -> Service:
    service = Service()
    store: dict[str, Any] = {"a": 1}

    @service.method
    def get(key: str) -> Any:
        """Inline handler."""
        if key not in store:
            raise KeyNotFound(f"no key {key!r}", data={"key": key})
        return store[key]

    @service.method
    async def aget(key: str) -> Any:
        """async def handler."""
        await trio.lowlevel.checkpoint()
        return get(key)

    @service.method(blocking=True)
    def bget(key: str) -> Any:
        """blocking=True handler."""
        return get(key)

    @service.method
    def cas(key: str, expected: int) -> None:
        raise Conflict(key, expected, 7)

    @service.method
    def nosuper() -> None:
        raise NoSuper("lost")

    @service.method
    def adhoc(code: str) -> None:
        raise trio_echo.RemoteError("made up on the spot", [1, b"\x00"], code=code)

    @service.method
    def bad_data() -> None:
        raise KeyNotFound("x", data=object())

    return service


# --- class definition -------------------------------------------------------------------


def test_a_subclass_names_its_code_with_a_class_keyword() -> None:
    assert KeyNotFound.code == "key_not_found"
    exc = KeyNotFound("no key 'b'", data={"key": "b"})
    assert (exc.code, exc.message, exc.data) == ("key_not_found", "no key 'b'", {"key": "b"})
    assert str(exc) == "key_not_found: no key 'b'"
    assert isinstance(exc, trio_echo.RemoteError) and isinstance(exc, trio_echo.TrioEchoError)
    assert error_class("key_not_found") is KeyNotFound
    # The library's own classes keep their codes and attributes.
    assert trio_echo.InvalidParams.code == "invalid_params"
    assert trio_echo.InvalidParams("why").code == "invalid_params"
    assert trio_echo.RemoteError("plain").code == "internal"
    assert {error_class(code).code for code in PROTOCOL_CODES} == PROTOCOL_CODES


def test_a_subclass_without_a_code_is_refused_at_definition() -> None:
    with pytest.raises(TypeError, match=r'names no error code.*code="your_code"'):

        class Forgot(trio_echo.RemoteError):
            pass


@pytest.mark.parametrize("code", sorted(PROTOCOL_CODES))
def test_a_subclass_naming_a_protocol_code_is_refused(code: str) -> None:
    with pytest.raises(TypeError, match="is a protocol error code"):

        class Impostor(trio_echo.RemoteError, code=code):
            pass

    assert error_class(code).__module__ == "trio_echo.errors"


@pytest.mark.parametrize("code", ["", 3, b"bytes"])
def test_a_code_must_be_a_non_empty_str(code: Any) -> None:
    with pytest.raises(TypeError, match="non-empty str"):

        class Odd(trio_echo.RemoteError, code=code):
            pass


def test_a_subclass_of_a_coded_class_inherits_its_code() -> None:
    class TooSmall(trio_echo.InvalidParams):
        pass

    class DeepKeyNotFound(KeyNotFound):
        pass

    assert TooSmall("x").code == "invalid_params"
    assert DeepKeyNotFound("x").code == "key_not_found"
    # The class that named the code is still the one clients raise.
    assert error_class("invalid_params") is trio_echo.InvalidParams
    assert error_class("key_not_found") is KeyNotFound


def test_data_that_msgpack_cannot_encode_is_refused_when_raised() -> None:
    with pytest.raises(TypeError, match="cannot be encoded as msgpack"):
        KeyNotFound("x", data={1, 2})


def test_code_name_is_a_deprecated_alias() -> None:
    with pytest.deprecated_call():
        assert trio_echo.InvalidParams.code_name == "invalid_params"
    with pytest.deprecated_call():
        assert KeyNotFound("x").code_name == "key_not_found"
    with pytest.deprecated_call():
        assert trio_echo.RemoteError.code_name is None
    with pytest.deprecated_call():

        class OldStyle(trio_echo.RemoteError):
            code_name = "old_style"

    assert OldStyle("x").code == OldStyle.code == "old_style"
    assert error_class("old_style") is OldStyle


def test_errors_pickle_whatever_their_init_takes() -> None:
    exc = pickle.loads(pickle.dumps(Conflict("k", 1, 2)))
    assert type(exc) is Conflict
    assert (exc.code, exc.data) == ("kv.conflict", {"key": "k", "expected": 1, "actual": 2})


def test_remote_error_builds_the_registered_class_without_its_init() -> None:
    exc = remote_error("kv.conflict", "changed", {"key": "k"})
    assert type(exc) is Conflict
    assert (exc.code, exc.message, exc.data) == ("kv.conflict", "changed", {"key": "k"})
    plain = remote_error("never_defined_here", "m", [1])
    assert type(plain) is trio_echo.RemoteError
    assert (plain.code, plain.message, plain.data) == ("never_defined_here", "m", [1])


def test_a_class_that_is_gone_no_longer_answers_for_its_code() -> None:
    import gc

    class Ephemeral(trio_echo.RemoteError, code="ephemeral"):
        pass

    assert error_class("ephemeral") is Ephemeral
    del Ephemeral
    gc.collect()
    assert error_class("ephemeral") is trio_echo.RemoteError


# --- over the wire ----------------------------------------------------------------------


@asynccontextmanager
async def memory_client(server: Server) -> AsyncIterator[trio_echo.Client]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve_stream, server_stream)
        async with trio_echo.open_client_over_stream(client_stream) as client:
            yield client
        nursery.cancel_scope.cancel()


async def check_app_errors(client: trio_echo.Client) -> None:
    for method in ("get", "aget", "bget"):
        with pytest.raises(KeyNotFound) as info:
            await client.call(method, "zz")
        assert (info.value.code, info.value.message, info.value.data) == (
            "key_not_found",
            "no key 'zz'",
            {"key": "zz"},
        )
        assert await client.call(method, "a") == 1  # the connection carries on
    with pytest.raises(Conflict) as conflict:
        await client.call("cas", "k", 3)
    assert conflict.value.data == {"key": "k", "expected": 3, "actual": 7}
    assert conflict.value.message == "'k' is at version 7, not 3"
    with pytest.raises(NoSuper) as nosuper:
        await client.call("nosuper")
    assert (nosuper.value.code, nosuper.value.message, nosuper.value.data) == ("no_super", "", None)
    with pytest.raises(trio_echo.RemoteError) as adhoc:
        await client.call("adhoc", "teapot")
    assert type(adhoc.value) is trio_echo.RemoteError
    assert (adhoc.value.code, adhoc.value.data) == ("teapot", [1, b"\x00"])
    # Data msgpack cannot encode: the raise itself fails, which is an internal error.
    with pytest.raises(trio_echo.InternalError, match="cannot be encoded as msgpack"):
        await client.call("bad_data")
    await client.notify("get", "zz")  # counted, never answered
    stats = await client.call("stats")
    assert stats["errors"]["key_not_found"] == 4
    assert stats["errors"]["kv.conflict"] == 1


async def test_app_errors_in_memory() -> None:
    async with memory_client(Server(kv_service())) as client:
        await check_app_errors(client)


async def test_app_errors_over_loopback() -> None:
    async with (
        tcp_server(Server(kv_service())) as (_, port),
        trio_echo.open_client("127.0.0.1", port) as client,
    ):
        await check_app_errors(client)


def test_app_errors_from_the_blocking_client() -> None:
    with server_thread(kv_service()) as srv, trio_echo.connect("127.0.0.1", srv.port) as client:
        with pytest.raises(KeyNotFound) as info:
            client.call("bget", "zz")
        assert info.value.data == {"key": "zz"}
        with pytest.raises(Conflict):
            client.call("cas", "k", 1)
        assert client.call("get", "a") == 1


async def test_the_wire_carries_code_message_and_data() -> None:
    async with memory_server(Server(kv_service())) as (_, stream, _n):
        peer = Peer(stream)
        await peer.start()
        event = await peer.call(5, "get", "zz")
        assert event == wire.ErrorResponse(5, "key_not_found", "no key 'zz'", {"key": "zz"})
        await peer.request(6, "nosuper")
        raw = await peer.next_event()
        assert raw == wire.ErrorResponse(6, "no_super", "", None)


# --- from the shell ---------------------------------------------------------------------

APP = '''
import trio_echo

service = trio_echo.Service()

class KeyNotFound(trio_echo.RemoteError, code="key_not_found"):
    """No value under that key."""

@service.method
def get(key: str) -> str:
    raise KeyNotFound(f"no key {key!r}", data={"key": key, "known": []})
'''


def test_trio_echo_call_prints_code_message_then_data(tmp_path: Path) -> None:
    (tmp_path / "kvapp.py").write_text(textwrap.dedent(APP))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    with ServerProcess("--app", "kvapp:service", env=env) as srv:
        # The CLI's process does not define KeyNotFound: the code comes through as a string.
        done = run_cli("call", "--port", str(srv.port), "get", "zz")
        srv.stop()
    assert (done.returncode, done.stdout) == (1, "")
    first, second = done.stderr.splitlines()
    assert first == "key_not_found: no key 'zz'"
    assert json.loads(second) == {"key": "zz", "known": []}
