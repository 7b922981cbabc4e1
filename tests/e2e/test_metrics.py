"""``--metrics-port``: scrape a live server and parse the Prometheus text format."""

from __future__ import annotations

import re
import signal
import threading
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

import trio_echo
from trio_echo import wire

from helpers import ServerProcess, SyncPeer

METRICS_LINE = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")


def metrics_port(srv: ServerProcess) -> int:
    for line in srv.log:
        match = METRICS_LINE.search(line)
        if match:
            return int(match.group(1))
    raise AssertionError("no metrics line in:\n" + "".join(srv.log))


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one scrape: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_series_names_and_exact_counts(tmp_path: Any) -> None:
    with ServerProcess("--metrics-port", "0") as srv:
        mport = metrics_port(srv)
        before = scrape(mport)
        # The contract: these names, exactly.
        names = {name for name, _ in before}
        for name in (
            "trio_echo_connections_open",
            "trio_echo_connections_total",
            "trio_echo_connections_rejected_total",
            "trio_echo_requests_in_flight",
            "trio_echo_received_bytes_total",
            "trio_echo_sent_bytes_total",
            "trio_echo_request_duration_seconds_count",
            "trio_echo_request_duration_seconds_bucket",
            "trio_echo_request_duration_seconds_sum",
            "process_resident_memory_bytes",
            "process_open_fds",
        ):
            assert name in names, name
        n = 37
        with trio_echo.connect("127.0.0.1", srv.port) as client:
            for i in range(n):
                assert client.call("echo", i) == i
            client.notify("echo", "x")
            for _ in range(3):
                try:
                    client.call("nope")
                except trio_echo.UnknownMethod:
                    pass
            try:
                client.call("sleep", 100)
            except trio_echo.InvalidParams:
                pass
            assert client.call("sleep", 0) is None  # async def: timed from receipt
            stats = client.call("stats")
        after = scrape(mport)
        ok = "trio_echo_requests_total"
        assert (
            value(after, ok, method="echo", code="ok") - value(before, ok, method="echo", code="ok")
            == n
        )
        hist = "trio_echo_request_duration_seconds_count"
        assert value(after, hist, method="echo") - value(before, hist, method="echo") == n
        assert (
            value(after, "trio_echo_request_duration_seconds_bucket", method="echo", le="+Inf") == n
        )
        assert value(after, ok, method="<unknown>", code="unknown_method") == 3
        assert value(after, ok, method="sleep", code="invalid_params") == 1
        assert value(after, ok, method="sleep", code="ok") == 1
        assert value(after, hist, method="sleep") == 1
        assert value(after, "trio_echo_notifications_total", method="echo") == 1
        # Agreement with stats(): the stats call itself is counted by stats() only after
        # it has run, and by the scrape that came after it.
        total = sum(v for (name, _), v in after.items() if name == ok)
        assert total == stats["requests_total"] + 1 == n + 3 + 2 + 1
        assert value(after, "trio_echo_connections_total") == stats["connections_total"]
        errors = {
            dict(labels)["code"]: int(v)
            for (name, labels), v in after.items()
            if name == ok and dict(labels)["code"] != "ok"
        }
        assert errors == stats["errors"]
        assert value(after, "trio_echo_received_bytes_total") >= stats["bytes_in"]
        assert value(after, "trio_echo_connections_open") == 0
        assert value(after, "process_resident_memory_bytes") > 1e6
        assert srv.stop() == 0


def test_protocol_errors_are_not_answers() -> None:
    with ServerProcess("--metrics-port", "0") as srv:
        peer = SyncPeer(srv.port)
        try:
            peer.next_event()  # hello
            peer.sock.sendall(b"\x00\x00\x00\x00")  # empty frame: a malformed notice
            notice = peer.next_event()
            assert isinstance(notice, wire.Notification) and notice.method == "error"
        finally:
            peer.close()
        samples = scrape(metrics_port(srv))
        assert value(samples, "trio_echo_protocol_errors_total", code="malformed") == 1
        assert not [k for k in samples if k[0] == "trio_echo_requests_total"]
        assert srv.stop() == 0


def test_scrapes_of_a_busy_server() -> None:
    with ServerProcess("--metrics-port", "0") as srv:
        mport = metrics_port(srv)
        stop = threading.Event()
        done = [0] * 4

        def load(i: int) -> None:
            with trio_echo.connect("127.0.0.1", srv.port) as client:
                while not stop.is_set() and done[i] < 20_000:  # bounded either way
                    client.call("echo", b"x" * 64)
                    done[i] += 1

        threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            seen = []
            deadline = time.monotonic() + 10
            while len(seen) < 5 and time.monotonic() < deadline:
                samples = scrape(mport)
                seen.append(value(samples, "trio_echo_requests_total", method="echo", code="ok"))
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert len(seen) == 5
        assert seen == sorted(seen)  # counters never go back
        final = scrape(mport)
        assert value(final, "trio_echo_requests_total", method="echo", code="ok") == sum(done)
        assert value(final, "trio_echo_requests_in_flight") == 0
        assert srv.stop() == 0


def test_workers_one_scrape_sums_every_worker() -> None:
    ready = r"supervisor listening on \S+:(\d+)"
    with ServerProcess("--workers", "2", "--metrics-port", "0", ready=ready) as srv:
        mport = metrics_port(srv)
        pids = set()
        calls = 0
        for _ in range(30):  # SO_REUSEPORT spreads connections across the workers
            with trio_echo.connect("127.0.0.1", srv.port) as client:
                pids.add(client.call("stats")["pid"])
                client.call("echo", 1)
                calls += 1
        assert len(pids) == 2
        samples = scrape(mport)
        ok = "trio_echo_requests_total"
        assert value(samples, ok, method="echo", code="ok") == calls
        assert value(samples, ok, method="stats", code="ok") == calls
        assert value(samples, "trio_echo_connections_total") == calls
        # A worker that dies keeps what it had counted (at the last scrape).
        victim = next(iter(pids))
        import os

        os.kill(victim, signal.SIGKILL)
        # Until its replacement serves (a new pid answers; stats calls are not counted below).
        fresh = set()
        deadline = time.monotonic() + 30
        while not fresh - pids and time.monotonic() < deadline:
            try:
                with trio_echo.connect("127.0.0.1", srv.port) as client:
                    fresh.add(client.call("stats")["pid"])
            except (OSError, trio_echo.ConnectionClosed):
                pass  # queued at the killed worker's socket when it died: reset
        assert fresh - pids
        later = scrape(mport)
        assert value(later, ok, method="echo", code="ok") == calls
        assert value(later, ok, method="stats", code="ok") >= calls
        assert srv.stop() == 0


def test_goaways_and_unavailable_answers_are_counted() -> None:
    """--max-connection-age retires connections: trio_echo_goaways_total{reason} agrees
    with stats(), and requests answered unavailable are counted under their code."""
    with ServerProcess("--metrics-port", "0", "--max-connection-age", "0.2") as srv:
        mport = metrics_port(srv)
        with trio_echo.connect("127.0.0.1", srv.port) as client:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                assert client.call("echo", 1) == 1
            peer = SyncPeer(srv.port)  # a version 1 peer: no goaway comes to it
            try:
                assert isinstance(peer.next_event(), wire.Notification)  # its hello
                stats = peer.call(1, "stats").result  # type: ignore[union-attr]
            finally:
                peer.close()
        after = scrape(mport)
        assert stats["goaways"].get("max_age", 0) >= 2
        assert (
            value(after, "trio_echo_goaways_total", reason="max_age") >= stats["goaways"]["max_age"]
        )
        unavailable = sum(
            v
            for (name, labels), v in after.items()
            if name == "trio_echo_requests_total" and dict(labels)["code"] == "unavailable"
        )
        assert unavailable >= stats["errors"].get("unavailable", 0)
        assert srv.stop() == 0


def test_streams_are_timed_on_the_same_clock_as_calls() -> None:
    with ServerProcess("--metrics-port", "0") as srv:
        mport = metrics_port(srv)
        start = time.monotonic()
        with trio_echo.connect("127.0.0.1", srv.port) as client:
            with client.stream("ticks", 3, 0) as stream:
                assert list(stream) == [0, 1, 2]
            with client.stream("sum", kind="client") as stream:
                stream.send(2)
                assert stream.finish() == 2
        took = time.monotonic() - start
        after = scrape(mport)
        for method in ("ticks", "sum"):
            assert value(after, "trio_echo_request_duration_seconds_count", method=method) == 1
            seconds = value(after, "trio_echo_request_duration_seconds_sum", method=method)
            assert 0 <= seconds <= took, (method, seconds)
