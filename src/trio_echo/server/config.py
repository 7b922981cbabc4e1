"""Every server setting and its default, written once: :class:`ServerConfig`.

``Server(service, config, **overrides)``, ``serve(service, host, port,
**options)`` and ``trio-echo serve`` all start from the defaults below and
validate through :meth:`ServerConfig.__post_init__`. The command line builds
one flag per field (``max_frame`` -> ``--max-frame``), takes its ``--help``
text and shown default from the field, and overrides only the flags that were
given (as hypercorn does); ``--workers`` passes those same flags on to every
worker process.

Adding a setting (``write_timeout``, say) is one field::

    write_timeout: float = setting(30.0, SECONDS, "close a client that reads nothing this long")

and reading ``server.config.write_timeout`` where it is used. The field gives
``Server(write_timeout=...)``, ``serve(..., write_timeout=...)``, the check
(a ``Check`` below, or ``choices=``) and ``--write-timeout SECONDS`` with its
help; add its row to README's ``trio-echo serve`` table. Pass ``flag=False``
for a setting with no command-line flag, and write a new ``Check`` if none of
those below fits. A boolean field becomes an on/off flag (``--reuse-port``). A
field whose default is None (off, as ``tls_cert: str | None``) takes None or a
value its check accepts; its flag's text is a str unless ``convert=int`` (say)
is given.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from .. import wire

__all__ = [
    "FROM_CONFIG",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MODES",
    "SETTINGS",
    "Check",
    "FromConfig",
    "ServerConfig",
    "Setting",
    "given_settings",
    "setting",
]

#: The values of ``mode``: ``auto`` sniffs each connection, the others pin one kind.
MODES: Final = ("auto", *(m.value for m in wire.Mode))
#: The values of ``log_level``.
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
#: The values of ``log_format``.
LOG_FORMATS: Final = ("text", "json")


class FromConfig(enum.Enum):
    """The type of :data:`FROM_CONFIG`."""

    FROM_CONFIG = "FROM_CONFIG"

    def __repr__(self) -> str:
        return "<the server's config>"


#: A default argument meaning "the value in the server's :class:`ServerConfig`".
FROM_CONFIG: Final = FromConfig.FROM_CONFIG


def given_settings(**values: Any) -> dict[str, Any]:
    """The ``values`` that are not :data:`FROM_CONFIG`."""
    return {name: value for name, value in values.items() if value is not FROM_CONFIG}


class Check(NamedTuple):
    """How a numeric setting is validated: ``test(value)`` is True for good values."""

    test: Callable[[Any], bool]
    #: What a good value is, to complete "NAME must be ..." in error messages.
    rule: str
    #: The ``metavar`` of its flag.
    metavar: str
    #: How values are written in messages and ``--help`` (``repr`` if None).
    show: Callable[[Any], str] | None = None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < math.inf


COUNT: Final = Check(lambda v: _is_int(v) and v >= 1, "an integer >= 1", "N")
BYTES: Final = Check(lambda v: _is_int(v) and v >= 1, "an integer >= 1", "BYTES")
COUNT_OR_ZERO: Final = Check(lambda v: _is_int(v) and v >= 0, "an integer >= 0", "N")
SECONDS: Final = Check(_is_seconds, "a number of seconds >= 0", "SECONDS")
PORT: Final = Check(lambda v: _is_int(v) and 0 <= v <= 65535, "an integer from 0 to 65535", "PORT")
PERMISSIONS: Final = Check(
    lambda v: _is_int(v) and 0 <= v <= 0o777,
    "octal permissions from 0 to 777",
    "OCTAL",
    lambda v: format(v, "o") if _is_int(v) else repr(v),
)


def octal(text: str) -> int:
    """An integer written in octal (``600``), as file permissions are."""
    return int(text, 8)


def setting(
    default: Any,
    check: Check | None = None,
    help: str = "",
    *,
    choices: Sequence[str] | None = None,
    flag: bool = True,
    convert: Callable[[str], Any] | None = None,
    metavar: str | None = None,
) -> Any:
    """A :class:`ServerConfig` field: its default, validation and command-line flag.

    ``convert`` turns the flag's text into a value; by default the type of
    ``default`` (``str`` when the default is None). ``metavar`` names the
    flag's value in ``--help``; by default the check's.
    """
    if convert is None:
        convert = str if default is None else type(default)
    return dataclasses.field(
        default=default,
        metadata={
            "check": check,
            "help": help,
            "choices": choices,
            "flag": flag,
            "convert": convert,
            "metavar": metavar or (check.metavar if check else None),
        },
    )


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Every setting of a server, with its default (see the module docstring).

    Frozen: make a changed copy with ``dataclasses.replace(config, max_frame=...)``.
    ``host``, ``port`` and ``reuse_port`` are where :meth:`Server.serve` listens
    unless it is told otherwise (``host=None``: every interface). ``unix``,
    ``unix_mode``, the ``tls_*`` files, ``workers``, ``log_*`` and ``metrics_*`` are read
    by ``trio-echo serve`` (listeners, the TLS context, processes, logging),
    not by a :class:`Server`: in Python, pass listeners to
    :meth:`Server.serve_listeners` and ``Server(ssl_context=...)``.

    Raises:
        ValueError: a setting is out of range (``port=70000``, ``threads=0``,
            ``grace=-1``, an unknown ``mode`` ...); the message names it.
    """

    host: str | None = setting("127.0.0.1", help="address to listen on")
    port: int = setting(
        wire.DEFAULT_PORT,
        PORT,
        "TCP port (0 = any free port); when --unix, --fd or socket activation give the "
        "listeners, TCP is opened only if --port is given too",
    )
    unix: str | None = setting(
        None,
        help="listen on a Unix domain socket at PATH (a stale socket file is replaced)",
        metavar="PATH",
    )
    unix_mode: int = setting(
        0o600, PERMISSIONS, "permissions of the --unix socket file", convert=octal
    )
    tls_cert: str | None = setting(
        None, help="serve TLS only, with this certificate (PEM)", metavar="FILE"
    )
    tls_key: str | None = setting(None, help="the private key of --tls-cert (PEM)", metavar="FILE")
    tls_client_ca: str | None = setting(
        None,
        help="require client certificates signed by this CA (mutual TLS)",
        metavar="FILE",
    )
    tls_handshake_timeout: float = setting(
        10.0,
        SECONDS,
        "close a TLS client that has not finished its handshake by then (0 = never)",
    )
    mode: str = setting(
        "auto",
        help="auto tells the three connection kinds apart by their first bytes; "
        "the others pin one kind",
        choices=MODES,
    )
    max_frame: int = setting(
        wire.DEFAULT_MAX_FRAME,
        BYTES,
        "largest frame (or stream message) accepted; larger ones get frame_too_large",
    )
    max_inflight: int = setting(
        wire.DEFAULT_MAX_INFLIGHT,
        COUNT,
        "requests running at once per connection; past it the server stops reading",
    )
    max_connections: int = setting(
        10000, COUNT, "connections served at once; more are accepted and closed"
    )
    max_requests: int = setting(
        65536, COUNT, "requests in flight server-wide; past it requests get overloaded"
    )
    idle_timeout: float = setting(
        300.0,
        SECONDS,
        "close a connection that has sent nothing, and is owed nothing, this long "
        "(also before its first byte; 0 = never)",
    )
    max_buffered_bytes: int = setting(
        1024**3,
        BYTES,
        "bytes of partial messages and undecoded requests held, all connections together; "
        "a connection whose next message would pass it gets overloaded and is closed",
    )
    max_containers: int = setting(
        wire.DEFAULT_MAX_CONTAINERS,
        COUNT,
        "arrays and maps one message may hold; more is frame_too_large (bounds the memory "
        "and time one message costs)",
    )
    write_timeout: float = setting(
        60.0,
        SECONDS,
        "close a connection that is owed replies (or raw echo) and has accepted no byte "
        "of them this long (0 = never)",
    )
    threads: int = setting(16, COUNT, "worker threads for blocking=True handlers")
    stream_credit: int = setting(
        16,
        Check(
            lambda v: _is_int(v) and 1 <= v <= wire.MAX_CREDIT,
            f"an integer from 1 to {wire.MAX_CREDIT}",
            "N",
        ),
        "protocol version 2 streams: items the server lets a client send ahead on each "
        "client or bidi stream, so the most it holds for one",
    )
    stream_idle_timeout: float = setting(
        300.0,
        SECONDS,
        "protocol version 2 streams: end with timeout a stream whose producer has waited "
        "this long for the client's credit (0 = never)",
    )
    grace: float = setting(
        10.0,
        SECONDS,
        "on shutdown, how long to wait for requests in flight before cancelling them",
    )
    max_connection_age: float = setting(
        0.0,
        SECONDS,
        "send goaway to a protocol version 2 connection this old (give or take a tenth, "
        "drawn per connection) and close it --grace later, so that long-lived clients "
        "reconnect and spread over servers added since (0 = never)",
    )
    workers: int = setting(
        1,
        COUNT_OR_ZERO,
        "worker processes sharing the port via SO_REUSEPORT, each with its own "
        "Trio loop (0 = one per core)",
    )
    reuse_port: bool = setting(
        False, help="set SO_REUSEPORT so that several servers can share the port"
    )
    proxy_protocol: bool = setting(
        False,
        help="expect a PROXY protocol header (v1 or v2, e.g. HAProxy's send-proxy-v2) first "
        "on every connection (before the TLS handshake, with --tls-cert), and log the client "
        "it names; connections without one are closed. Only behind a trusted load balancer",
    )
    log_level: str = setting("info", help="logging level", choices=LOG_LEVELS)
    log_format: str = setting(
        "text",
        help="text lines, or one JSON object per line (ts, level, logger, message, fields)",
        choices=LOG_FORMATS,
    )
    metrics_port: int | None = setting(
        None,
        PORT,
        "serve Prometheus metrics at http://METRICS_HOST:PORT/metrics (0 = any free port; "
        "needs prometheus-client, the 'metrics' extra)",
        convert=int,
    )
    metrics_host: str = setting("127.0.0.1", help="address of the metrics endpoint")
    debug: bool = setting(False, help="include tracebacks in internal error responses")

    def __post_init__(self) -> None:
        # Server(mode=wire.Mode.FRAMED) and mode=None ("auto") have always worked.
        if isinstance(self.mode, wire.Mode):
            object.__setattr__(self, "mode", self.mode.value)
        elif self.mode is None:
            object.__setattr__(self, "mode", "auto")
        for spec in SETTINGS:
            value = getattr(self, spec.name)
            problem = spec.problem(value)
            if problem is not None:
                raise ValueError(f"{spec.name} {problem}")

    @property
    def pinned_mode(self) -> wire.Mode | None:
        """``mode`` as a :class:`wire.Mode`, or None for ``auto``."""
        return None if self.mode == "auto" else wire.Mode(self.mode)


class Setting(NamedTuple):
    """One field of :class:`ServerConfig`, as the validation and the command line see it."""

    name: str
    default: Any
    help: str
    check: Check | None
    choices: Sequence[str] | None
    flag: bool
    #: Turns the flag's text into a value.
    convert: Callable[[str], Any]
    #: Names the flag's value in ``--help`` (argparse's choice if None).
    metavar: str | None = None

    @property
    def shown_default(self) -> str:
        """The default as ``--help`` shows it."""
        show = self.check.show if self.check is not None else None
        return show(self.default) if show is not None else str(self.default)

    @property
    def option(self) -> str:
        """Its command-line flag: ``--max-frame`` for ``max_frame``."""
        return "--" + self.name.replace("_", "-")

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` ("must be ..., not ..."), or None if it is good."""
        if value is None and self.default is None:
            return None  # an optional setting, off
        check = self.check
        if check is not None and not check.test(value):
            return f"must be {check.rule}, not {(check.show or repr)(value)}"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, not {value!r}"
        return None


#: The fields of :class:`ServerConfig`, in order.
SETTINGS: Final = tuple(
    Setting(
        f.name,
        f.default,
        f.metadata["help"],
        f.metadata["check"],
        f.metadata["choices"],
        f.metadata["flag"],
        f.metadata["convert"],
        f.metadata["metavar"],
    )
    for f in dataclasses.fields(ServerConfig)
)
