"""``trio-echo bench``: a load generator in the manner of ``redis-benchmark``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from .. import wire
from ..bench.runner import BenchConfig, Progress, format_report, run_bench
from ..bench.stream import format_stream_report, run_stream_bench
from ..server.builtins import MAX_TICK_SIZE
from .argtypes import port
from .call import from_json, to_json
from .client_options import add_transport_args, tls_options


def configure(sub: Any) -> None:
    """Add the ``bench`` subcommand."""
    p = sub.add_parser(
        "bench",
        help="load-test a trio_echo server (or any raw echo / msgpack-rpc server)",
        description=(
            "Drive a server with many pipelined connections from several worker processes"
            " and report requests/s, MB/s, latency percentiles and errors by code."
            " Each connection keeps --pipeline requests in flight; responses are matched"
            " by msgid and checked (a wrong result counts as an error)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="server address")
    p.add_argument("--port", type=port, default=wire.DEFAULT_PORT, help="server port")
    p.add_argument(
        "--mode",
        choices=("framed", "mprpc", "raw"),
        default="framed",
        help="framed protocol v1, a plain msgpack-rpc stream, or raw echo (size-byte messages)",
    )
    p.add_argument("-c", "--connections", type=int, default=50, help="concurrent connections")
    p.add_argument(
        "-P",
        "--pipeline",
        type=int,
        default=None,
        help="requests in flight per connection (default 1; 32 with --stream)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=64,
        help="payload bytes (a bin param; the message size in raw mode)",
    )
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds run before measuring")
    p.add_argument(
        "--method",
        default="echo",
        help="method called with the payload as its one argument, whose result must equal it"
        " (`ping` is called with no argument and must answer 'pong'); see --params and"
        " --no-verify",
    )
    p.add_argument(
        "--params",
        type=_params,
        metavar="JSON",
        help="the arguments of each call as a JSON array, in the forms `trio-echo call`"
        ' accepts (bytes as {"$bytes": "<base64>"}), e.g. \'["key", 3]\', instead of the'
        " --size payload; results are then not checked, only errors count",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="client processes; 0 = one per usable CPU (see taskset), at most one per connection",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="accept any result: do not check that each one equals the payload (for methods"
        " that do not echo their argument)",
    )
    p.add_argument(
        "--connect-timeout", type=float, default=5.0, help="seconds per connection attempt"
    )
    add_transport_args(p)
    p.add_argument(
        "--stream",
        action="store_true",
        help="protocol version 2 streams: on one connection, the items/s of a server stream"
        " of --size-byte items (the built-in ticks) against the rate of unary echo calls with"
        " --pipeline calls in flight (--connections, --workers, --method do not apply)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=256,
        help="with --stream: the credit the stream's client grants (refilled at half)",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the report"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line on stderr")
    p.set_defaults(run=run)


def _run_stream(args: argparse.Namespace) -> int:
    """``bench --stream`` (see :mod:`trio_echo.bench.stream`)."""
    if args.unix or tls_options(args) is not None or args.mode != "framed":
        print("trio-echo bench: --stream measures plain TCP, framed mode", file=sys.stderr)
        return 2
    if not (0 <= args.size <= MAX_TICK_SIZE and args.window >= 1 and args.duration > 0):
        print(
            f"trio-echo bench: --stream needs --size from 0 to {MAX_TICK_SIZE}, --window >= 1"
            " and --duration > 0",
            file=sys.stderr,
        )
        return 2
    try:
        report = run_stream_bench(
            args.host,
            args.port,
            size=args.size,
            pipeline=32 if args.pipeline is None else args.pipeline,
            window=args.window,
            duration=args.duration,
            warmup=args.warmup,
        )
    except (OSError, RuntimeError) as exc:
        print(f"trio-echo bench: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_json()) if args.json else format_stream_report(report))
    return 0


def _params(text: str) -> tuple[Any, ...]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text!r}") from None
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(
            f"must be a JSON array of the arguments, e.g. '[\"key\", 3]', not {text!r}"
        )
    return tuple(from_json(value))


class _ProgressLine:
    """Live progress on stderr: redrawn in place on a tty, one plain line a second otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = Progress(0.0, "", 0, 0)
        self.drawn = False

    def __call__(self, p: Progress) -> None:
        if p.elapsed - self.last.elapsed < (0.25 if self.tty else 1.0):
            return
        rate = (p.completed - self.last.completed) / (p.elapsed - self.last.elapsed)
        self.last = p
        text = f"{p.elapsed:5.1f}s {p.phase:9}  {rate:11,.0f} req/s  errors {p.errors:,}"
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
            self.drawn = True
        else:
            self.stream.write("bench: " + text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; exit 0 if requests completed without errors, else 1."""
    if args.stream:
        return _run_stream(args)
    try:
        cfg = BenchConfig(
            host=args.host,
            port=args.port,
            mode=args.mode,
            connections=args.connections,
            pipeline=1 if args.pipeline is None else args.pipeline,
            size=args.size,
            duration=args.duration,
            warmup=args.warmup,
            method=args.method,
            workers=args.workers,
            verify=not args.no_verify,
            connect_timeout=args.connect_timeout,
            params=args.params,
            unix=args.unix,
            tls=tls_options(args),
        )
        if cfg.tls is not None:
            cfg.tls.context()  # check the files now, not once per worker
    except (ValueError, OSError) as exc:
        print(f"trio-echo bench: {exc}", file=sys.stderr)
        return 2
    progress = None if args.quiet else _ProgressLine(sys.stderr)
    try:
        report = run_bench(cfg, progress)
    finally:
        if progress is not None:
            progress.clear()
    if args.json:
        out = report.to_json()
        if cfg.params is not None:
            out["params"] = to_json(list(cfg.params))
        print(json.dumps(out))
    else:
        print(format_report(report))
    return 0 if report.requests and not report.errors else 1
