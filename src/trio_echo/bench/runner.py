"""The engine of ``trio-echo bench``: start worker processes, gather, summarise.

:func:`run_bench` splits the connections over ``workers`` processes (see
:mod:`.worker`), starts them on one shared clock, relays their progress
and merges what they measured into one :class:`BenchReport`.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait
from typing import Any, Final

from .. import wire
from ..tls import TLSOptions
from .worker import (
    HIST_SIZE,
    MAX_MESSAGES,
    WorkerResult,
    WorkerSpec,
    bucket_value,
    worker_main,
)

__all__ = ["BenchConfig", "BenchReport", "Progress", "format_report", "run_bench", "usable_cpus"]

MODES: Final = ("framed", "mprpc", "raw")
#: A worker (or all of them together) above this share of its cores was probably
#: the bottleneck: the server could have answered faster than it asked.
CLIENT_BOUND_PCT: Final = 90.0


def usable_cpus() -> int:
    """CPUs this process may run on (respects ``taskset``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run (the ``trio-echo bench`` options)."""

    host: str = "127.0.0.1"
    port: int = wire.DEFAULT_PORT
    mode: str = "framed"
    connections: int = 50
    pipeline: int = 1
    size: int = 64
    duration: float = 5.0
    warmup: float = 1.0
    method: str = "echo"
    workers: int = 0  # 0: one per usable CPU, at most one per connection
    verify: bool = True
    connect_timeout: float = 5.0
    #: The params of each request (``--params``), instead of a ``size``-byte payload;
    #: results are then not checked, only errors count.
    params: tuple[Any, ...] | None = None
    #: A Unix socket to connect to instead of host:port.
    unix: str | None = None
    #: Speak TLS with these files (None: plaintext).
    tls: TLSOptions | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if self.params is not None and self.mode == "raw":
            raise ValueError("--params is for framed and mprpc mode (raw echo has no methods)")
        if self.connections < 1 or self.pipeline < 1:
            raise ValueError("connections and pipeline must be at least 1")
        if self.size < (1 if self.mode == "raw" else 0):
            raise ValueError("size must be at least 1 byte in raw mode (0 otherwise)")
        if not self.duration > 0 or not self.warmup >= 0 or self.workers < 0:
            raise ValueError("duration must be > 0, warmup >= 0 and workers >= 0")

    @property
    def worker_count(self) -> int:
        """The number of worker processes actually used."""
        return min(self.connections, self.workers or usable_cpus())


@dataclass(frozen=True)
class Progress:
    """A progress update: seconds since start, phase, completions and errors so far."""

    elapsed: float
    phase: str  # "warm-up" | "measuring"
    completed: int  # successful responses, warm-up included
    errors: int


@dataclass
class BenchReport:
    """The merged result; :meth:`to_json` is the ``--json`` output."""

    config: BenchConfig
    workers: int
    duration_s: float = 0.0
    requests: int = 0
    req_per_s: float = 0.0
    mb_per_s: float = 0.0
    latency_us: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)
    #: The first few distinct errors with their messages: ``{"code", "message"}`` maps.
    error_messages: list[dict[str, str]] = field(default_factory=list)
    connections_open: int = 0
    client_cpu_pct: float = 0.0
    worker_cpu_pct: list[float] = field(default_factory=list)
    client_cpus: int = 1
    client_bound: bool = False
    interrupted: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: the options, then the measurements."""
        out = asdict(self)
        cfg = out.pop("config")
        out["tls"] = self.config.tls is not None
        return {
            **{
                k: cfg[k]
                for k in (
                    "mode",
                    "host",
                    "port",
                    "unix",
                    "method",
                    "connections",
                    "pipeline",
                    "size",
                    "warmup",
                )
            },
            **out,
        }


def _context() -> Any:
    # fork starts a worker in milliseconds, but is only safe with one thread.
    if sys.platform == "linux" and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def run_bench(
    cfg: BenchConfig, on_progress: Callable[[Progress], None] | None = None
) -> BenchReport:
    """Run one benchmark and return its report; every process ends by itself."""
    ctx = _context()
    n = cfg.worker_count
    pipes: list[Pipe] = []
    procs = []
    for share in _shares(cfg.connections, n):
        spec = WorkerSpec(
            cfg.host,
            cfg.port,
            cfg.mode,
            share,
            cfg.pipeline,
            cfg.size,
            cfg.method,
            cfg.verify,
            cfg.warmup,
            cfg.duration,
            cfg.connect_timeout,
            cfg.params,
            cfg.unix,
            cfg.tls,
        )
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(spec, theirs), daemon=True)
        proc.start()
        theirs.close()
        pipes.append(ours)
        procs.append(proc)
    report = BenchReport(config=cfg, workers=n, client_cpus=usable_cpus())
    results: list[WorkerResult] = []
    startup_errors: dict[str, int] = {}
    try:
        _gather(cfg, pipes, procs, results, startup_errors, report, on_progress)
    finally:
        for p in pipes:
            p.close()  # a worker still waiting for "go" sees EOF and exits
        for proc in procs:
            proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join()
    _merge(report, results, startup_errors)
    return report


def _gather(
    cfg: BenchConfig,
    pipes: list[Pipe],
    procs: list[Any],
    results: list[WorkerResult],
    startup_errors: dict[str, int],
    report: BenchReport,
    on_progress: Callable[[Progress], None] | None,
) -> None:
    # 1. Every worker connects and says "ready" (or dies).
    pending = set(pipes)
    deadline = time.monotonic() + cfg.connect_timeout * 2 + 30
    while pending and time.monotonic() < deadline:
        for p in wait(list(pending), timeout=0.5):
            assert isinstance(p, Pipe)
            pending.discard(p)
            try:
                p.recv()  # ("ready", errors): they come again in the worker's result
            except (EOFError, OSError):
                _add(startup_errors, {"worker_failed": 1})
    if pending:
        _add(startup_errors, {"worker_failed": len(pending)})
    live = [p for p in pipes if p not in pending]
    # 2. One start instant for all, then relay progress until everyone is done.
    start = time.monotonic() + 0.02
    for p in list(live):
        try:
            p.send(("go", start))
        except OSError:
            live.remove(p)
    counts = {id(p): (0, 0) for p in live}
    last_t = start
    end = start + cfg.warmup + cfg.duration
    hard_deadline = end + 10
    stopping = False
    while live and time.monotonic() < hard_deadline:
        try:
            ready = wait(list(live), timeout=0.25)
            for p in ready:
                assert isinstance(p, Pipe)
                try:
                    msg = p.recv()
                except (EOFError, OSError):
                    live.remove(p)
                    _add(startup_errors, {"worker_failed": 1})
                    continue
                if msg[0] == "progress":
                    counts[id(p)] = (msg[1], msg[2])
                elif msg[0] == "done":
                    results.append(WorkerResult(**msg[1]))
                    live.remove(p)
            now = time.monotonic()
            if on_progress is not None and now - last_t >= 0.25 and live and now < end:
                last_t = now
                done = sum(c[0] for c in counts.values())
                phase = "warm-up" if now < start + cfg.warmup else "measuring"
                errs = sum(c[1] for c in counts.values()) + sum(startup_errors.values())
                on_progress(Progress(now - start, phase, done, errs))
        except KeyboardInterrupt:
            if stopping:
                raise
            stopping = True
            report.interrupted = True
            for p in live:
                try:
                    p.send(("stop",))
                except OSError:
                    pass
            hard_deadline = min(hard_deadline, time.monotonic() + 3)
    if live:
        _add(startup_errors, {"worker_failed": len(live)})


def _add(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def _merge(report: BenchReport, results: list[WorkerResult], errors: dict[str, int]) -> None:
    cfg = report.config
    hist = [0] * HIST_SIZE
    lat_sum = lat_max = 0
    rate = 0.0
    for r in results:
        report.requests += r.requests
        if r.window_s > 0:
            rate += r.requests / r.window_s
            report.worker_cpu_pct.append(round(100 * r.cpu_s / r.window_s, 1))
        for i, c in r.hist.items():
            hist[int(i)] += c
        lat_sum += r.lat_sum_ns
        lat_max = max(lat_max, r.lat_max_ns)
        _add(errors, r.errors)
        for code, message in r.messages:
            entry = {"code": code, "message": message}
            if len(report.error_messages) < MAX_MESSAGES and entry not in report.error_messages:
                report.error_messages.append(entry)
        report.connections_open += r.connections_open
    windows = [r.window_s for r in results if r.window_s > 0]
    report.duration_s = round(max(windows), 3) if windows else 0.0
    report.req_per_s = round(rate, 1)
    no_payload = cfg.mode != "raw" and (cfg.method == "ping" or cfg.params is not None)
    size = 0 if no_payload else cfg.size
    report.mb_per_s = round(rate * size / 1e6, 3)
    report.errors_by_code = dict(sorted(errors.items()))
    report.errors = sum(errors.values())
    total = sum(hist)
    lat: dict[str, float] = {}
    if total:
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
            lat[name] = round(_percentile(hist, total, q) / 1000, 1)
        lat["max"] = round(lat_max / 1000, 1)
        lat["mean"] = round(lat_sum / total / 1000, 1)
    report.latency_us = lat
    cpus = report.worker_cpu_pct
    report.client_cpu_pct = round(sum(cpus), 1)
    usable = max(1, min(report.workers, report.client_cpus))
    report.client_bound = bool(cpus) and (
        max(cpus) >= CLIENT_BOUND_PCT or sum(cpus) >= CLIENT_BOUND_PCT * usable
    )


def _percentile(hist: list[int], total: int, q: float) -> float:
    rank = max(1, int(q * total + 0.5))
    seen = 0
    for i, c in enumerate(hist):
        seen += c
        if seen >= rank:
            return bucket_value(i)
    return 0.0


def _fmt_us(us: float) -> str:
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    return f"{us:.0f} us" if us >= 100 else f"{us:.1f} us"


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(cfg: BenchConfig) -> str:
    where = f"unix:{cfg.unix}" if cfg.unix else f"{cfg.host}:{cfg.port}"
    return where + (" (TLS)" if cfg.tls is not None else "")


def format_report(r: BenchReport) -> str:
    """The human-readable report."""
    cfg = r.config
    what = "raw echo" if cfg.mode == "raw" else f"{cfg.mode} {cfg.method}"
    size = f"{cfg.size} B" if cfg.params is None else f"params {_short_repr(list(cfg.params))}"
    lines = [
        f"trio-echo bench: {what} on {_where(cfg)}, {cfg.connections} connections"
        f" x {cfg.pipeline} in flight, {size}, {r.workers} worker(s)",
        f"  duration    {r.duration_s:.2f} s measured after {cfg.warmup:g} s warm-up"
        + ("  (interrupted)" if r.interrupted else ""),
        f"  requests    {r.requests:,}  =  {r.req_per_s:,.0f} req/s",
    ]
    if cfg.params is None:
        lines.append(f"  throughput  {r.mb_per_s:,.2f} MB/s of payload (each way)")
    if r.latency_us:
        lat = r.latency_us
        lines.append(
            "  latency     "
            + "  ".join(
                f"{name} {_fmt_us(lat[k])}"
                for name, k in (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99.9", "p999"))
            )
            + f"  max {_fmt_us(lat['max'])}"
        )
    else:
        lines.append("  latency     (no request completed)")
    if r.errors:
        codes = ", ".join(f"{k} {v:,}" for k, v in r.errors_by_code.items())
        lines.append(f"  errors      {r.errors:,}: {codes}")
        lines.extend(f"              {e['code']}: {e['message']}" for e in r.error_messages)
    else:
        lines.append("  errors      0")
    cpus = " ".join(f"{c:.0f}%" for c in r.worker_cpu_pct)
    lines.append(
        f"  client CPU  {r.client_cpu_pct:.0f}% ({cpus or '-'} per worker;"
        f" {r.client_cpus} usable CPU(s))"
    )
    if r.client_bound:
        lines.append(
            "  note        the client was probably the bottleneck (its workers were near 100% of"
            " their CPUs): the server may be faster than this; give the client more cores"
            " (--workers, taskset)"
        )
    return "\n".join(lines)
