"""Prometheus metrics (``--metrics-port``): plain integers on the hot path, metrics at scrape time.

The server counts in plain ints (:class:`Server`'s counters and, per method,
:class:`MethodMetrics`); nothing from ``prometheus_client`` is touched while
serving. A scrape runs :class:`TrioEchoCollector` in the HTTP server's thread:
it asks the Trio thread for a :func:`snapshot` (a dict of ints, taken in one
step there, so it is consistent) and turns it into metric families. With
``--workers N`` the supervisor serves the port and sums the workers'
snapshots (see :mod:`.supervisor`).

``prometheus_client`` is an optional dependency (``pip install
'trio-echo[metrics]'``); it is imported only when metrics are served.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = [
    "BUCKETS",
    "MethodMetrics",
    "MetricsSource",
    "TrioEchoCollector",
    "answer_metrics_requests",
    "ask_worker",
    "counters_only",
    "merge_snapshots",
    "snapshot",
    "settle",
    "start_metrics_server",
    "counted",
]

#: Histogram bucket bounds of ``trio_echo_request_duration_seconds``, in seconds.
BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
#: The ``method`` label of requests for methods the server does not have
#: (the client's name is not used: that would let clients create series).
UNKNOWN_METHOD: Final = "<unknown>"
#: Counters that only grow (summed over retired workers as well).
COUNTERS: Final = (
    "connections_total",
    "connections_rejected",
    "requests_total",
    "notifications_total",
    "bytes_in",
    "bytes_out",
)


class MethodMetrics:
    """One method's counters: requests by outcome code, notifications, a duration histogram."""

    __slots__ = (
        "batched",
        "buckets",
        "codes",
        "count",
        "notification_errors",
        "notifications",
        "sum",
    )

    def __init__(self) -> None:
        #: Requests answered, by code ("ok" or the error code).
        self.codes: dict[str, int] = {}
        self.notifications = 0
        #: Notifications that failed, by code (they are in stats()["errors"] too).
        self.notification_errors: dict[str, int] = {}
        #: Observations per bucket of BUCKETS (not cumulative), the last one for +Inf.
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0
        #: Quick inline calls answered in the current batch, not yet observed (see counted).
        self.batched = 0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def answered(self, code: str, seconds: float | None = None) -> None:
        """A request of this method was answered ``code`` after ``seconds`` (if timed)."""
        self.codes[code] = self.codes.get(code, 0) + 1
        if seconds is not None:
            self.observe(seconds)

    def as_dict(self) -> dict[str, Any]:
        return {
            "codes": dict(self.codes),
            "notifications": self.notifications,
            "notification_errors": dict(self.notification_errors),
            "buckets": list(self.buckets),
            "count": self.count,
            "sum": self.sum,
        }


def counted(
    fn: Callable[..., Any], stats: MethodMetrics, batch: list[MethodMetrics]
) -> Callable[..., Any]:
    """``fn`` (a quick inline handler) counting its successful calls into ``stats.batched``.

    Timing each quick call would cost more than the call (two clock reads and a
    histogram update, about ten times an ``echo``). So the session times each
    batch of inline requests it answers at once (one read's worth, see
    :func:`settle`) and gives every successful call of it an equal share: a
    per-read average that includes encoding the replies. A call that raises is
    counted by the session, with its error code, and not timed.
    """

    def wrapper(*params: Any) -> Any:
        result = fn(*params)
        if not stats.batched:
            batch.append(stats)
        stats.batched += 1
        return result

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def settle(batch: list[MethodMetrics], seconds: float) -> None:
    """Observe the calls :func:`counted` noted: ``seconds`` for the batch, shared evenly."""
    calls = sum(stats.batched for stats in batch)
    if calls:
        share = seconds / calls
        bucket = bisect.bisect_left(BUCKETS, share)
        for stats in batch:
            n = stats.batched
            stats.batched = 0
            stats.buckets[bucket] += n
            stats.count += n
            stats.sum += share * n
            stats.codes["ok"] = stats.codes.get("ok", 0) + n
    batch.clear()


class MetricsSource(Protocol):
    """What a scrape reads of a server (a :class:`~trio_echo.server.server.Server` is one)."""

    @property
    def metrics(self) -> Mapping[str, MethodMetrics] | None: ...

    def stats(self) -> dict[str, Any]: ...


def snapshot(server: MetricsSource) -> dict[str, Any]:
    """Everything a scrape shows, as plain data (call it in the server's Trio thread)."""
    stats = server.stats()
    methods = server.metrics or {}
    return {
        **{k: stats[k] for k in COUNTERS},
        "connections_open": stats["connections_open"],
        "requests_in_flight": stats["requests_in_flight"],
        "errors": stats["errors"],
        "goaways": stats["goaways"],
        "methods": {name: m.as_dict() for name, m in methods.items()},
    }


def merge_snapshots(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several servers' snapshots (the workers of one ``--workers`` server)."""
    total: dict[str, Any] = {
        **{k: 0 for k in COUNTERS},
        "connections_open": 0,
        "requests_in_flight": 0,
        "errors": {},
        "goaways": {},
        "methods": {},
    }
    for snap in snapshots:
        for key in (*COUNTERS, "connections_open", "requests_in_flight"):
            total[key] += snap.get(key, 0)
        _add_counts(total["errors"], snap.get("errors", {}))
        _add_counts(total["goaways"], snap.get("goaways", {}))
        for name, m in snap.get("methods", {}).items():
            into = total["methods"].setdefault(name, MethodMetrics().as_dict())
            _add_counts(into["codes"], m["codes"])
            _add_counts(into["notification_errors"], m["notification_errors"])
            into["notifications"] += m["notifications"]
            into["buckets"] = [a + b for a, b in zip(into["buckets"], m["buckets"], strict=True)]
            into["count"] += m["count"]
            into["sum"] += m["sum"]
    return total


def counters_only(snap: dict[str, Any]) -> dict[str, Any]:
    """``snap`` with its gauges zeroed: what a worker that is gone still adds to the totals."""
    return {**snap, "connections_open": 0, "requests_in_flight": 0}


def _add_counts(into: dict[str, int], more: Mapping[str, int]) -> None:
    for key, n in more.items():
        into[key] = into.get(key, 0) + n


class TrioEchoCollector:
    """A ``prometheus_client`` collector that builds the ``trio_echo_*`` series from a snapshot.

    ``take_snapshot`` is called once per scrape, in the HTTP server's thread;
    it returns None when the server is gone (the scrape then has no
    ``trio_echo_*`` series).
    """

    def __init__(self, take_snapshot: Callable[[], dict[str, Any] | None]) -> None:
        self._take = take_snapshot

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        snap = self._take()
        if snap is None:
            return
        yield GaugeMetricFamily(
            "trio_echo_connections_open", "Connections open now.", value=snap["connections_open"]
        )
        yield CounterMetricFamily(
            "trio_echo_connections_total",
            "Connections served since start (TLS: those past the handshake).",
            value=snap["connections_total"],
        )
        yield CounterMetricFamily(
            "trio_echo_connections_rejected_total",
            "Connections refused at max_connections.",
            value=snap["connections_rejected"],
        )
        yield GaugeMetricFamily(
            "trio_echo_requests_in_flight",
            "Requests and notifications running now.",
            value=snap["requests_in_flight"],
        )
        yield CounterMetricFamily(
            "trio_echo_received_bytes_total", "Bytes received.", value=snap["bytes_in"]
        )
        yield CounterMetricFamily(
            "trio_echo_sent_bytes_total", "Bytes sent.", value=snap["bytes_out"]
        )
        goaways = CounterMetricFamily(
            "trio_echo_goaways_total",
            "goaway notifications sent to protocol version 2 clients, by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(snap.get("goaways", {}).items()):
            goaways.add_metric([reason], n)
        yield goaways
        requests = CounterMetricFamily(
            "trio_echo_requests_total",
            "Requests answered, by method and code (ok or the error code).",
            labels=["method", "code"],
        )
        notifications = CounterMetricFamily(
            "trio_echo_notifications_total", "Notifications received, by method.", labels=["method"]
        )
        durations = HistogramMetricFamily(
            "trio_echo_request_duration_seconds",
            "Handler run time of successful requests (inline handlers: the call alone; "
            "async and blocking ones: from receipt to the result).",
            labels=["method"],
        )
        answered_errors: dict[str, int] = {}
        for name, m in sorted(snap["methods"].items()):
            for code, n in sorted(m["codes"].items()):
                requests.add_metric([name, code], n)
                if code != "ok":
                    answered_errors[code] = answered_errors.get(code, 0) + n
            _add_counts(answered_errors, m["notification_errors"])
            if m["notifications"]:
                notifications.add_metric([name], m["notifications"])
            if name != UNKNOWN_METHOD:
                cumulative, buckets = 0, []
                for bound, n in zip((*BUCKETS, float("inf")), m["buckets"], strict=True):
                    cumulative += n
                    buckets.append((_le(bound), cumulative))
                durations.add_metric([name], buckets, m["sum"])
        yield requests
        yield notifications
        yield durations
        # Errors that answered no request: error notices and protocol violations.
        protocol = CounterMetricFamily(
            "trio_echo_protocol_errors_total",
            "Errors that are not the answer to a request (error notices, violations), by code.",
            labels=["code"],
        )
        for code, n in sorted(snap["errors"].items()):
            rest = n - answered_errors.get(code, 0)
            if rest > 0:
                protocol.add_metric([code], rest)
        yield protocol


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def start_metrics_server(
    collector: TrioEchoCollector, host: str, port: int
) -> tuple[Any, int, Callable[[], None]]:
    """Serve ``/metrics`` (the collector and the process collector) on host:port in a thread.

    Returns the HTTP server, the port it listens on (for port 0) and a
    function that stops it.

    Raises:
        ImportError: prometheus-client is not installed.
        OSError: the port cannot be bound.
    """
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.process_collector import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    httpd, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)

    return httpd, int(httpd.server_address[1]), stop


# --- --workers: the supervisor asks each worker for its snapshot ------------------------
#
# Over a socketpair per worker: the supervisor writes one byte, the worker answers
# with a 4-byte length and its snapshot in msgpack.


async def answer_metrics_requests(server: MetricsSource, fd: int) -> None:
    """In a worker: answer the supervisor's snapshot requests on ``fd`` until it closes."""
    import socket

    import msgpack
    import trio

    stream = trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))
    async with stream:
        while await stream.receive_some(1):
            body = msgpack.packb(snapshot(server))
            await stream.send_all(len(body).to_bytes(4, "big") + body)


async def ask_worker(stream: Any) -> dict[str, Any]:
    """In the supervisor: one worker's snapshot (``stream`` is its end of the socketpair).

    Raises:
        trio.BrokenResourceError, EOFError: the worker is gone.
    """
    import msgpack

    await stream.send_all(b"?")
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        more = await stream.receive_some(65536)
        if not more:
            raise EOFError("the worker closed its metrics socket")
        data += more
    result: dict[str, Any] = msgpack.unpackb(data[4:], raw=False, strict_map_key=False)
    return result


def count(
    metrics: dict[str, MethodMetrics],
    name: str,
    msgid: int | None,
    code: str,
    seconds: float | None = None,
) -> None:
    """A session's hook: a request (``msgid`` not None) or notification of ``name`` ended ``code``.

    Successful requests are timed (``seconds``); a failed notification is
    kept apart, so that the protocol errors can be told from it.
    """
    stats = metrics.get(name) or metrics[UNKNOWN_METHOD]
    if msgid is not None:
        stats.answered(code, seconds if code == "ok" else None)
    elif code != "ok":
        stats.notification_errors[code] = stats.notification_errors.get(code, 0) + 1
