"""Compare trio_echo with a bare Trio echo server and the alternatives; and its clients.

Starts ``python -m trio_echo serve`` (with ``app.py`` for the ``async def``
method) and ``bare_echo.py``, then drives every scenario against each server in
turn, alternating their order from one repetition to the next so that the
machine's drift hits all of them. The bare echo is driven in raw mode with the
same connections, pipeline depth and size, so for an RPC scenario the ratio
says how close trio_echo gets to plain echo.

The load is ``trio-echo bench`` (Python; often the limit itself), or with
``--kit DIR`` (a set-up copy of the shared bench kit) its C load generator, so
that the server is the limit; the kit also adds the Trio RPC floor and the
Python msgpack-rpc peers, servers and clients.

With ``taskset`` and two or more CPUs, the servers run on CPU 0 and the load
on CPU 1. Writes ``results.md`` (a Markdown table), ``results.json`` and
``results.png`` (needs matplotlib, the ``bench`` extra), and prints the ratios.

    python benchmarks/run.py                   # about 4 minutes
    python benchmarks/run.py --quick           # a smoke test (results go to a temp folder)
    python benchmarks/run.py --kit ../bench --client-src ../old/src --update-readme
    python benchmarks/run.py --extra 'floor:framed:python floor.py --framed --port {port}'
    python benchmarks/run.py --only clients --client-src ../old/src   # clients: old vs new

The client scenarios (``benchmarks/clients.py``, run in a process of their own
on CPU 1, each client calling its own server) set each of trio_echo's clients
beside a bare Python socket loop doing the same framed exchange, a bare Trio
loop, and the alternatives with their own client and server: gRPC
(``benchmarks/grpc_echo.py``, when ``grpcio`` is installed) and the msgpack-rpc
peers (``--kit``). ``--client-src`` adds the same runs with another checkout's
``trio_echo`` (its ``src`` folder), for a before/after in one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from trio_echo import wire
from trio_echo.bench.runner import BenchConfig, run_bench
from trio_echo.bench.worker import FramedReader

HERE = Path(__file__).resolve().parent
MARK_START, MARK_END = "<!-- bench:start -->", "<!-- bench:end -->"
RESULTS_START, RESULTS_END = "<!-- bench-results:start -->", "<!-- bench-results:end -->"


@dataclass(frozen=True)
class Scenario:
    """One load: what trio_echo is driven with (the baseline gets raw echo of the same shape)."""

    name: str
    mode: str
    connections: int
    pipeline: int
    size: int = 64
    method: str = "echo"
    unit: str = "req/s"  # or "MB/s": the figure the ratio is taken on
    chart: bool = True  # False: a latency figure (one request in flight), not in the chart


@dataclass(frozen=True)
class ClientScenario:
    """Calls made by one kind of client (benchmarks/clients.py) to its own server."""

    name: str
    short: str  # its name on the chart
    kind: str
    baseline: str = ""  # the bare loop run beside it (its kind), or "" for none
    server: str = "trio_echo"  # the label of the server it calls
    group: str = "one"  # "one": one caller calling in a loop; "many": 100 at once
    versus: str = ""  # an alternative: the kind of trio_echo client it is set beside
    python: str = ""  # the interpreter to run it with (a peer's venv); "" = this one
    peer: str = ""  # for the mprpc-peer kind: which peer's client


#: Kinds whose trio_echo ``--client-src`` can swap (the clients under test).
OUR_KINDS = ("async", "blocking", "async-concurrent")

CLIENT_SCENARIOS = [
    ClientScenario("bare Trio loop, one task (wait_readable per call)", "bare Trio loop",
                   "bare-trio", "bare"),
    ClientScenario("async client, one task calling in a loop", "trio_echo async", "async",
                   "bare"),
    ClientScenario("blocking client, one thread calling in a loop", "trio_echo blocking",
                   "blocking", "bare"),
    ClientScenario("async client, 100 tasks on one connection", "trio_echo async, 100 tasks",
                   "async-concurrent", "bare-concurrent", group="many"),
    ClientScenario("gRPC (grpc.aio), one caller in a loop", "gRPC (grpc.aio)", "grpc",
                   server="grpc", versus="async"),
    ClientScenario("gRPC (grpc.aio), 100 callers on one channel", "gRPC, 100 callers",
                   "grpc-concurrent", server="grpc", group="many", versus="async-concurrent"),
]  # fmt: skip

SCENARIOS = [
    Scenario("raw c50 d1 64 B", "raw", 50, 1),
    Scenario("raw c4 d4 64 KiB", "raw", 4, 4, 65536, unit="MB/s"),
    Scenario("framed echo c1 d1", "framed", 1, 1, chart=False),
    Scenario("framed echo c50 d1", "framed", 50, 1),
    Scenario("framed echo c50 d16", "framed", 50, 16),
    Scenario("mprpc echo c50 d1", "mprpc", 50, 1),
    Scenario("mprpc echo c50 d16", "mprpc", 50, 16),
    Scenario("framed aecho (async def) c50 d16", "framed", 50, 16, method="aecho"),
]

#: The label of the raw echo baseline (benchmarks/bare_echo.py).
BARE = "bare trio echo"
#: The label of the shared kit's Trio RPC floor (``--kit``).
FLOOR = "Trio RPC floor"


@dataclass
class Server:
    """A server under test: a command line with ``{port}``, and the modes it speaks."""

    label: str
    argv: list[str]
    modes: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    own_methods: bool = False  # serves the scenarios' methods; else is called with echo
    for_method: str = ""  # only the scenarios of trio_echo's method of that name
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    def serves(self, sc: Scenario) -> bool:
        if self.for_method and sc.method != self.for_method:
            return False
        return sc.mode in self.modes or "any" in self.modes

    def mode_for(self, sc: Scenario) -> str:
        return sc.mode if sc.mode in self.modes else "raw"

    def method_for(self, sc: Scenario) -> str:
        return sc.method if self.own_methods else "echo"


def pinning() -> list[str]:
    """The taskset prefix that puts a server on CPU 0 (the load then goes to CPU 1)."""
    if shutil.which("taskset") and len(os.sched_getaffinity(0)) >= 2:
        return ["taskset", "-c", "0"]
    return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(server: Server, pin: list[str]) -> None:
    """Start a server and wait until it accepts connections."""
    server.port = free_port()
    argv = [a.replace("{port}", str(server.port)) for a in server.argv]
    env = {**os.environ, **server.env}
    # Its stderr goes to a file, never a pipe nobody reads: a server that logs every
    # reset connection (some peers do) would block once a pipe's buffer is full.
    with tempfile.TemporaryFile() as log:
        server.proc = subprocess.Popen(pin + argv, env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                log.seek(0)
                err = log.read().decode(errors="replace")
                raise SystemExit(f"{server.label} exited at start:\n{err}")
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
    stop(server)
    raise SystemExit(f"{server.label} did not listen on port {server.port}")


def stop(server: Server) -> None:
    """SIGTERM the server (by its PID), then SIGKILL if it lingers."""
    proc = server.proc
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot, from /proc/stat (0 where there is none)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(f) for f in fields]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def bench(server: Server, sc: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    """One run of the load (the C load generator, or ``trio-echo bench``) against a server."""
    if args.loadgen:
        return loadgen(server, sc, args)
    cfg = BenchConfig(
        port=server.port,
        mode=server.mode_for(sc),
        connections=sc.connections,
        pipeline=sc.pipeline,
        size=sc.size,
        method=server.method_for(sc),
        duration=args.duration,
        warmup=args.warmup,
    )
    assert server.proc is not None
    cpu0, busy0, t0 = cpu_seconds(server.proc.pid), busy_seconds(), time.monotonic()
    result = run_bench(cfg).to_json()
    cpu1, busy1, t1 = cpu_seconds(server.proc.pid), busy_seconds(), time.monotonic()
    # Over the whole bench run (warm-up included), in % of one CPU: was the server
    # saturated, and how much did processes other than the server and client use?
    result["server_cpu_pct"] = round(100 * (cpu1 - cpu0) / (t1 - t0), 1)
    busy = 100 * (busy1 - busy0) / (t1 - t0)
    result["other_cpu_pct"] = round(
        max(0.0, busy - result["server_cpu_pct"] - result["client_cpu_pct"]), 1
    )
    return result


def loadgen(server: Server, sc: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    """One run of the shared kit's C load generator, in ``trio-echo bench``'s result shape.

    It is a single epoll thread in C, far cheaper per request than any Python
    server, so what it measures is the server (``client_bound`` says if not).
    """
    assert server.proc is not None
    argv = [str(args.loadgen), "--port", str(server.port), "--mode", server.mode_for(sc),
            "--conns", str(sc.connections), "--depth", str(sc.pipeline), "--size", str(sc.size),
            "--method", server.method_for(sc), "--duration", f"{args.duration:g}",
            "--warmup", f"{args.warmup:g}", "--server-pid", str(server.proc.pid)]  # fmt: skip
    busy0, t0 = busy_seconds(), time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60 + 2 * args.duration)
    busy1, t1 = busy_seconds(), time.monotonic()
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        print(f"  loadgen failed: {proc.stderr.strip()[-300:]}", file=sys.stderr)
        out = {"requests": 0, "req_per_s": 0.0, "mb_per_s": 0.0, "errors": 1, "dead_conns": 0}
    server_cpu = max(float(out.get("server_cpu_pct", 0.0)), 0.0)
    client_cpu = float(out.get("client_cpu_pct", 0.0))
    busy = 100 * (busy1 - busy0) / (t1 - t0)
    return {
        "load": "loadgen",
        "requests": out["requests"],
        "req_per_s": out["req_per_s"],
        "mb_per_s": out["mb_per_s"],
        "latency_us": {"p50": out["p50_us"], "p99": out["p99_us"]} if out["requests"] else {},
        "errors": out["errors"] + out["dead_conns"],
        "client_cpu_pct": client_cpu,
        # One C thread: it is the limit only when it uses its whole CPU.
        "client_bound": client_cpu >= 90.0,
        "server_cpu_pct": server_cpu,
        "other_cpu_pct": round(max(0.0, busy - server_cpu - client_cpu), 1),
        "cpu_steal_pct": out.get("cpu_steal_pct", []),
    }


def figure(sc: Scenario, r: dict[str, Any]) -> float:
    return float(r["mb_per_s"] if sc.unit == "MB/s" else r["req_per_s"])


def rss_kb(pid: int) -> int:
    """Resident memory of a process in KiB, from /proc (0 where there is none)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def idle_memory(server: Server, n: int, mode: str, later_s: float) -> dict[str, Any]:
    """Open ``n`` connections with one request each, hold them: RSS per connection.

    ``mode`` framed: the preamble and one ``ping``; mprpc: one ``ping``; raw:
    one byte. RSS is sampled 0.5 s after the last reply, and again ``later_s``
    after that.
    """
    assert server.proc is not None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
    framed = mode != "raw"
    hello = {
        "framed": wire.PREAMBLE + wire.encode_request(1, "ping", []),
        "mprpc": wire.encode_request(1, "ping", [], framed=False),
        "raw": b"x",
    }[mode]
    unpacker = msgpack.Unpacker if mode == "mprpc" else None
    before = rss_kb(server.proc.pid)
    socks: list[socket.socket] = []
    errors = 0
    t0 = time.monotonic()
    try:
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            socks.append(sock)
            sock.sendall(hello)
        for sock in socks:
            reader = FramedReader()
            stream = unpacker() if unpacker else None
            got: list[Any] = []
            while not (got[-1:] and got[-1][0] == 1 if framed else got):
                data = sock.recv(4096)
                if not data:
                    errors += 1
                    break
                if stream is not None:
                    stream.feed(data)
                    got += list(stream)
                else:
                    got += reader.feed(data) if framed else [data]
        open_s = time.monotonic() - t0
        time.sleep(0.5)
        after = rss_kb(server.proc.pid)
        # Later, once the server's reaper has had a quiet tick (it frees a quiet
        # msgpack-rpc decoder's buffers then; what the allocator returns is seen).
        time.sleep(later_s)
        later = rss_kb(server.proc.pid)
    finally:
        for sock in socks:
            sock.close()
    return {
        "connections": n,
        "mode": mode,
        "open_s": round(open_s, 3),
        "rss_before_kb": before,
        "rss_after_kb": after,
        "kb_per_conn": round((after - before) / n, 2),
        "kb_per_conn_later": round((later - before) / n, 2),
        "later_s": later_s + 0.5,
        "errors": errors,
    }


def client_run(
    sc: ClientScenario, kind: str, server: Server, args: argparse.Namespace, src: str | None
) -> dict[str, Any]:
    """One run of benchmarks/clients.py (a process of its own; ``src``: whose trio_echo)."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    assert server.proc is not None
    argv = [sc.python or sys.executable, str(HERE / "clients.py"), kind, "--port",
            str(server.port), "--duration", str(args.duration), "--warmup", str(args.warmup),
            "--server-pid", str(server.proc.pid)]  # fmt: skip
    if sc.peer:
        argv += ["--peer", sc.peer]
    try:
        limit = 60 + 2 * (args.warmup + args.duration)
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        print(f"  {kind}: did not finish in {limit:g} s", file=sys.stderr)
        return {"kind": kind, "calls_per_s": 0.0, "errors": 1}
    if proc.returncode != 0:
        print(f"  {kind}: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return {"kind": kind, "calls_per_s": 0.0, "errors": 1}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["errors"] = 0
    return result


def run_clients(
    scenarios: list[ClientScenario], servers: dict[str, Server], args: argparse.Namespace
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """results[scenario][label] = a run per repetition; labels: "client", "baseline", "old"."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for rep in range(args.reps):
        for sc in scenarios:
            if sc.server not in servers:
                continue
            runs: list[tuple[str, str, str | None]] = [("client", sc.kind, None)]
            if sc.baseline:
                runs.append(("baseline", sc.baseline, None))
            if args.client_src and sc.kind in OUR_KINDS:
                runs.append(("old", sc.kind, args.client_src))
            k = rep % len(runs)
            for label, kind, src in runs[k:] + runs[:k]:  # alternate the order
                r = client_run(sc, kind, servers[sc.server], args, src)
                results.setdefault(sc.name, {}).setdefault(label, []).append(r)
                line = f"{sc.name:52} {label:8} {r['calls_per_s']:>10,.0f} calls/s"
                print(f"  rep {rep + 1}  {line}", file=sys.stderr)
    return results


def run_all(
    servers: list[Server],
    scenarios: list[Scenario],
    client_scenarios: list[ClientScenario],
    args: argparse.Namespace,
) -> tuple[
    dict[str, dict[str, list[dict[str, Any]]]],
    dict[str, dict[str, Any]],
    dict[str, dict[str, list[dict[str, Any]]]],
]:
    """(results[scenario][server label] = a bench result per repetition, idle[label], clients)."""
    pin = pinning()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {sc.name: {} for sc in scenarios}
    idle: dict[str, dict[str, Any]] = {}
    clients: dict[str, dict[str, list[dict[str, Any]]]] = {}
    grpc = Server("grpc", [sys.executable, str(HERE / "grpc_echo.py"), "--port", "{port}"], ())
    with_grpc = any(c.server == "grpc" for c in client_scenarios) and has_grpc()
    everyone = [*servers, grpc] if with_grpc else servers
    main, bare = servers[0], next((s for s in servers if s.label == BARE), None)
    affinity = os.sched_getaffinity(0)
    try:
        for s in everyone:
            start(s, pin)
        if pin:
            os.sched_setaffinity(0, {1})  # the load (bench workers, loadgen, clients) inherits it
        # Fresh servers (nothing freed to reuse yet): trio_echo holds framed, msgpack-rpc
        # and raw connections (each kind on a fresh server), the bare echo raw ones.
        for s, mode in [(main, "framed"), *([(bare, "raw")] if bare else [])] if args.idle else []:
            r = idle_memory(s, args.idle, mode, args.idle_later)
            idle[s.label] = r
            line = f"idle x {args.idle:<27} {s.label:16} {r['kb_per_conn']:>12,.1f} KiB/conn"
            print(f"         {line}  errors {r['errors']}", file=sys.stderr)
        for mode in ("mprpc", "raw") if args.idle and main.own_methods else ():
            stop(main)
            start(main, pin)
            r = idle_memory(main, args.idle, mode, args.idle_later)
            idle[f"{main.label} {mode}"] = r
            line = f"idle x {args.idle:<27} {main.label + ' ' + mode:16}"
            print(f"         {line} {r['kb_per_conn']:>12,.1f} KiB/conn", file=sys.stderr)
        for rep in range(args.reps):
            for sc in scenarios:
                order = [s for s in servers if s.serves(sc)]
                k = rep % len(order)
                for s in order[k:] + order[:k]:
                    r = bench(s, sc, args)
                    results[sc.name].setdefault(s.label, []).append(r)
                    line = f"{sc.name:34} {s.label:20} {figure(sc, r):>12,.1f} {sc.unit}"
                    print(f"  rep {rep + 1}  {line}  errors {r['errors']}", file=sys.stderr)
        by_label = {s.label: s for s in everyone}
        clients = run_clients(client_scenarios, by_label, args)
    finally:
        os.sched_setaffinity(0, affinity)
        for s in everyone:
            stop(s)
    return results, idle, clients


def has_grpc() -> bool:
    try:
        import grpc  # type: ignore[import-untyped, unused-ignore]  # noqa: F401
    except ImportError:
        print("(no gRPC rows: pip install grpcio, or the [bench] extra)", file=sys.stderr)
        return False
    return True


def median_run(runs: list[dict[str, Any]], sc: Scenario) -> dict[str, Any]:
    """The repetition with the median figure (so its latency and CPU go with it)."""
    ranked = sorted(runs, key=lambda r: figure(sc, r))
    return ranked[(len(ranked) - 1) // 2]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import msgpack
    import trio

    return (
        f"{os.cpu_count()} CPU(s), {cpu}; Linux {platform.release()}; "
        f"Python {platform.python_version()}, trio {trio.__version__}, "
        f"msgpack {'.'.join(map(str, msgpack.version))}"
    )


def fmt(value: float, unit: str) -> str:
    if unit == "MB/s":
        return f"{value:,.0f} MB/s"
    return f"{value / 1000:,.1f}k" if value >= 1000 else f"{value:,.0f}"


def labels(servers: list[Server]) -> list[str]:
    """The servers' labels, each once, in order (two servers may share one: one per mode)."""
    return list(dict.fromkeys(s.label for s in servers))


def serving(servers: list[Server], label: str, sc: Scenario) -> Server | None:
    """The server of that label that serves ``sc``, if any."""
    return next((s for s in servers if s.label == label and s.serves(sc)), None)


def scenario_ratio(sc: Scenario, mine: list[dict[str, Any]], base: list[dict[str, Any]]) -> float:
    """The median of the per-repetition ratios (each repetition ran the two back to back:
    steadier than the ratio of the medians when the machine drifts)."""
    pairs = zip(mine, base, strict=False)
    return statistics.median(
        figure(sc, x) / figure(sc, y) if figure(sc, y) else 0.0 for x, y in pairs
    )


def table(
    results: dict[str, dict[str, list[dict[str, Any]]]],
    scenarios: list[Scenario],
    servers: list[Server],
) -> tuple[str, list[str]]:
    """The Markdown table, and one ratio line per scenario and baseline."""
    main, *bases = labels(servers)
    head = ["scenario", main, "p50 / p99", "server CPU"]
    head += [f"{b} (= {main} / it)" for b in bases]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ratios = []
    for sc in scenarios:
        runs = results[sc.name]
        if main not in runs:
            continue
        m = median_run(runs[main], sc)
        lat = m["latency_us"]
        note = " ⚠" * bool(m["errors"]) + " †" * bool(m["client_bound"])
        lat_text = f"{lat['p50']:,.0f} / {lat['p99']:,.0f} us" if lat else "-"
        name = sc.name + ("" if sc.chart else " (latency)")
        row = [name, fmt(figure(sc, m), sc.unit) + note, lat_text, f"{m['server_cpu_pct']:.0f}%"]
        for b in bases:
            srv = serving(servers, b, sc)
            if srv is None or b not in runs:
                row.append("")
                continue
            base = median_run(runs[b], sc)
            shape = "" if srv.mode_for(sc) == sc.mode else " raw"
            if srv.mode_for(sc) == sc.mode and srv.method_for(sc) != sc.method:
                shape += f" ({srv.method_for(sc)})"
            mark = " ⚠" * bool(base["errors"]) + " †" * bool(base["client_bound"])
            if not figure(sc, base):
                row.append(fmt(0, sc.unit) + shape + mark)
                continue
            ratio = scenario_ratio(sc, runs[main], runs[b])
            row.append(f"{fmt(figure(sc, base), sc.unit)}{shape}{mark} (**{ratio:.2f}x**)")
            line = f"{sc.name:34} {main} / {b}: {ratio:.2f}"
            if lat and base["latency_us"]:
                line += f"  (p50 latency {lat['p50'] / base['latency_us']['p50']:.2f}x)"
            ratios.append(line)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines), ratios


def chart(
    results: dict[str, dict[str, list[dict[str, Any]]]],
    scenarios: list[Scenario],
    servers: list[Server],
    path: Path,
    clients: dict[str, dict[str, list[dict[str, Any]]]] | None = None,
    meta: dict[str, Any] | None = None,
    client_scenarios: list[ClientScenario] | None = None,
) -> bool:
    """The README's picture; False if matplotlib is not installed.

    Top, the servers under the same load, throughput rows only (one request in
    flight is a latency figure, left to the table): over every other server's
    bar, trio_echo's ratio to it; a baseline driven with raw bytes says so, and
    a run where the load generator (not the server) was the limit is hatched
    and marked. Bottom, each client with its own server (client figures, not
    server figures; each bar says the server's CPU): trio_echo's clients beside
    the bare loops, their previous version and the alternatives, with the
    ratios on the bars. The caption names the machine and the command.
    """
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return False
    main = servers[0].label
    shown = [sc for sc in scenarios if sc.chart and results.get(sc.name, {}).get(main)]
    client_rows = [
        c
        for c in client_scenarios or CLIENT_SCENARIOS
        if (clients or {}).get(c.name, {}).get("client")
    ]
    panels = [p for p in (shown, client_rows) if p]
    if not panels:
        return False
    fig, axes = plt.subplots(len(panels), 1, figsize=(14, 6.2 * len(panels)), squeeze=False)
    ax_list = [row[0] for row in axes]
    if shown:
        _server_panel(ax_list.pop(0), results, shown, servers, meta or {})
    if client_rows:
        _client_panel(ax_list.pop(0), clients or {}, client_rows)
    if meta:
        fig.text(
            0.01, 0.005,
            f"{meta['date']}, {meta['machine']}. Servers pinned to CPU 0, the load (load"
            f" generator, clients) to CPU 1; median of {meta['reps']} x {meta['duration']:g} s"
            f" after {meta['warmup']:g} s warm-up, order alternated.\n{meta['command']}",
            fontsize=7, ha="left", va="bottom", wrap=True,
        )  # fmt: skip
    fig.tight_layout(rect=(0, 0.035, 1, 1), h_pad=2.5)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _server_panel(
    ax: Any,
    results: dict[str, dict[str, list[dict[str, Any]]]],
    shown: list[Scenario],
    servers: list[Server],
    meta: dict[str, Any],
) -> None:
    names = labels(servers)
    main = names[0]
    width = 0.84 / max(sum(1 for n in names if serving(servers, n, sc)) for sc in shown)
    drawn: set[str] = set()
    for j, sc in enumerate(shown):
        here = [n for n in names if serving(servers, n, sc) and results[sc.name].get(n)]
        mine = results[sc.name][main]
        for i, n in enumerate(here):
            srv = serving(servers, n, sc)
            assert srv is not None
            runs = results[sc.name][n]
            m = median_run(runs, sc)
            x = j + (i - (len(here) - 1) / 2) * width
            y = m["req_per_s"] if sc.unit == "req/s" else m["mb_per_s"] * 1e6 / sc.size
            bound = bool(m.get("client_bound"))
            color = f"C{names.index(n)}"
            ax.bar(x, y, width * 0.95, color=color, hatch="//" if bound else None,
                   edgecolor="black" if bound else color, linewidth=0.5,
                   label=None if n in drawn else n)  # fmt: skip
            drawn.add(n)
            if n == main:
                note = fmt(figure(sc, m), sc.unit).replace(" MB/s", "\nMB/s")
            elif figure(sc, m):
                note = f"{scenario_ratio(sc, mine, runs):.2f}x"
            else:
                note = "-"
            if srv.mode_for(sc) != sc.mode:
                note += "\nraw"
            elif srv.method_for(sc) != sc.method:
                note += f"\n({srv.method_for(sc)})"
            if bound:
                note += "\nclient-\nbound"
            ax.text(x, y * 1.03, note, ha="center", va="bottom", fontsize=6.5,
                    fontweight="bold" if n == main else None)  # fmt: skip
    ax.set_yscale("log")
    ax.set_ylabel("requests/s (log; 64 KiB row: messages/s)")
    ax.set_xticks(range(len(shown)), [sc.name for sc in shown], fontsize=8)
    load = (
        "the C load generator (one epoll thread: the server is the limit)"
        if meta.get("load") == "loadgen"
        else "`trio-echo bench` (hatched: the bench client was the limit, not the server)"
    )
    ax.set_title(
        f"Servers under the same load, driven by {load}.\nOn {main}'s bar its rate; on every"
        f" other bar, {main} / that server (above 1: {main} is faster). raw = a raw byte echo"
        " driven with raw bytes of the same shape (no RPC at all).",
        fontsize=9,
    )
    ax.legend(fontsize=7, ncol=4, loc="upper right")
    ax.margins(y=0.25)


def _client_panel(
    ax: Any, clients: dict[str, dict[str, list[dict[str, Any]]]], rows: list[ClientScenario]
) -> None:
    by_kind = {c.kind: c for c in rows}
    x = 0.0
    ticks: list[tuple[float, str]] = []
    groups = [("one", "one caller calling in a loop"), ("many", "100 calls at once")]
    for group, title in groups:
        members = [c for c in rows if c.group == group]
        if not members:
            continue
        start = x
        bars: list[tuple[str, list[dict[str, Any]], str, str]] = []  # label, runs, color, note
        base_sc = next((c for c in members if "baseline" in clients[c.name]), None)
        if base_sc is not None:
            what = "bare socket loop" if base_sc.baseline == "bare" else "bare pipelined socket"
            bars.append((what, clients[base_sc.name]["baseline"], "0.55", ""))
        for c in members:
            runs = clients[c.name]
            note = ""
            if c.baseline and "baseline" in runs:
                note = f"{median_ratio(runs['client'], runs['baseline']):.2f}x bare"
            ours = by_kind.get(c.versus)
            if ours is not None and clients.get(ours.name, {}).get("client"):
                ratio = median_ratio(clients[ours.name]["client"], runs["client"])
                note = f"{ours.short}\n/ it: {ratio:.1f}x"
            color = "C0" if c.kind in OUR_KINDS else "0.75" if c.baseline else "C3"
            bars.append((c.short, runs["client"], color, note))
            if "old" in runs:
                ratio = median_ratio(runs["client"], runs["old"])
                bars.append((f"{c.short}, before", runs["old"], "C1", f"now {ratio:.2f}x this"))
        for label, runs, color, note in bars:
            m = median_by(runs)
            y = m["calls_per_s"]
            ax.bar(x, y, 0.8, color=color)
            text = f"{y / 1000:,.1f}k" + (f"\n{note}" if note else "")
            if "server_cpu_pct" in m:  # which side was the limit
                text += f"\nserver CPU {m['server_cpu_pct']:.0f}%"
            ax.text(x, y * 1.03, text, ha="center", va="bottom", fontsize=6.5)
            ticks.append((x, label))
            x += 1
        ax.text((start + x - 1) / 2, 0.97, title, transform=ax.get_xaxis_transform(),
                ha="center", va="top", fontsize=8, style="italic")  # fmt: skip
        x += 0.8
    ax.set_yscale("log")
    ax.set_ylabel("calls/s (log)")
    ax.set_xticks([t for t, _ in ticks], [n for _, n in ticks], rotation=30, ha="right",
                  fontsize=7)  # fmt: skip
    ax.set_title(
        "\nClients, each calling its own server (64 B echo): a client and its server together,"
        " not server figures (server CPU near 100 %: the server was the limit, else the\n"
        "client or the round trip). On trio_echo's bars (blue): the ratio to the bare loop;"
        " on an alternative's (red): trio_echo's client / it.",
        fontsize=9,
    )
    ax.margins(y=0.45)


def client_table(
    clients: dict[str, dict[str, list[dict[str, Any]]]], rows: list[ClientScenario]
) -> tuple[str, list[str]]:
    """The clients' Markdown table, and their ratio lines."""
    if not clients:
        return "", []
    old = any("old" in runs for runs in clients.values())
    head = [
        "client (64 B echo, to its own server)",
        "calls/s",
        "client CPU per call",
        "server CPU",
        "set beside",
        "ratio",
    ]
    head += ["before (--client-src)", "now / before"] * old  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ratios = []
    by_kind = {c.kind: c for c in rows}
    for sc in rows:
        runs = clients.get(sc.name)
        if not runs or "client" not in runs:
            continue
        mine = runs["client"]
        m = median_by(mine)
        server_cpu = m.get("server_cpu_pct")
        row = [sc.name, f"{m['calls_per_s']:,.0f}", f"{m.get('client_cpu_us_per_call', 0):.0f} us",
               "" if server_cpu is None else f"{server_cpu:.0f}%"]  # fmt: skip
        ours = by_kind.get(sc.versus)
        if sc.baseline and "baseline" in runs:
            ratio = median_ratio(mine, runs["baseline"])
            what = "bare socket loop" if sc.baseline == "bare" else "bare pipelined socket"
            row += [f"{what}: {median_by(runs['baseline'])['calls_per_s']:,.0f}", f"{ratio:.2f}x"]
            ratios.append(f"{sc.name}: {ratio:.2f} of the {what}")
        elif ours is not None and clients.get(ours.name, {}).get("client"):
            ratio = median_ratio(clients[ours.name]["client"], mine)
            row += [f"trio_echo {ours.short.removeprefix('trio_echo ')} / this", f"{ratio:.2f}x"]
            ratios.append(f"{ours.name} / {sc.name}: {ratio:.2f}")
        else:
            row += ["", ""]
        if old:
            if "old" in runs:
                ratio = median_ratio(mine, runs["old"])
                row += [f"{median_by(runs['old'])['calls_per_s']:,.0f}", f"{ratio:.2f}x"]
                ratios.append(f"{sc.name}: {ratio:.2f} of before")
            else:
                row += ["", ""]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines), ratios


def median_by(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median calls/s."""
    ranked = sorted(runs, key=lambda r: float(r["calls_per_s"]))
    return ranked[(len(ranked) - 1) // 2]


def median_ratio(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    """The median of the per-repetition ratios of calls/s (the two ran back to back)."""
    pairs = [(x["calls_per_s"], y["calls_per_s"]) for x, y in zip(a, b, strict=False)]
    return statistics.median(x / y if y else 0.0 for x, y in pairs) if pairs else 0.0


def report(
    results: dict[str, dict[str, list[dict[str, Any]]]],
    idle: dict[str, dict[str, Any]],
    scenarios: list[Scenario],
    servers: list[Server],
    meta: dict[str, Any],
    image: str | None,
    clients: dict[str, dict[str, list[dict[str, Any]]]] | None = None,
    client_scenarios: list[ClientScenario] | None = None,
) -> tuple[str, list[str]]:
    """The Markdown section (table, chart, machine, command) and the ratio lines."""
    md, ratios = table(results, scenarios, servers)
    client_md, client_ratios = client_table(clients or {}, client_scenarios or CLIENT_SCENARIOS)
    ratios += client_ratios
    others = [
        r.get("other_cpu_pct", 0.0) for runs in results.values() for rs in runs.values() for r in rs
    ]
    other = statistics.median(others) if others else 0.0
    busy_note = (
        f" Other processes kept the CPUs {other:.0f} % busy (median over the runs), so"
        " these figures are low: only the ratios mean something."
        if other > 25
        else ""
    )
    later = next((r["later_s"] for r in idle.values() if r.get("later_s", 0) > 0.5), None)
    idle_md = [
        f"| {label.split(' ')[0] if ' ' in label and label.startswith('trio_echo') else label}"
        f" | {r['connections']:,} {r.get('mode', 'framed' if i == 0 else 'raw')}"
        f" | {r['open_s']:.2f} s"
        f" | {r['rss_before_kb'] / 1024:,.1f} → {r['rss_after_kb'] / 1024:,.1f} MiB"
        f" | {r['kb_per_conn']:,.1f} KiB |"
        + (f" {r.get('kb_per_conn_later', 0):,.1f} KiB |" if later is not None else "")
        for i, (label, r) in enumerate(idle.items())
    ]
    if idle_md:
        extra = f" {later:g} s later |" if later is not None else ""
        idle_md[:0] = [
            "Idle connections, each opened with one request (a `ping`, or one byte of raw echo),"
            " server RSS 0.5 s after the last reply"
            + (
                f" and again {later:g} s after it (past the idle reaper's quiet tick)"
                if later
                else ""
            )
            + ":",
            "",
            f"| server | connections | open + first reply | RSS | per connection |{extra}",
            "|---|---|---|---|---|" + "---|" * bool(extra),
        ]
        idle_md.append("")
    if client_md:
        client_md = (
            "Clients: calls a Python program makes, one at a time or 100 at once, each client"
            " with its own server, each run a process of its own on the load's CPU, beside"
            " its baseline (a plain blocking socket doing the same framed exchange; for 100"
            " at once, one thread keeping 100 requests in flight on one socket). The"
            " alternatives run their own client and server: gRPC (`benchmarks/grpc_echo.py`:"
            " `grpc.aio`, bytes in and out) and, with `--kit`, the msgpack-rpc peers'"
            " clients. These are figures of a client and its server together, not server"
            " figures; server CPU is the server's use in the same window (near 100 %: the"
            " server was the limit; else the client or the round trip was):\n\n" + client_md + "\n"
        )
    load = (
        "Servers driven by the shared kit's C load generator (`loadgen`: one epoll thread in C,"
        " so the server is the limit; † where it was not)"
        if meta.get("load") == "loadgen"
        else "Servers driven by `trio-echo bench` (Python: † where it, not the server, was the"
        " limit)"
    )
    text = [
        f"Median of {meta['reps']} run(s) of {meta['duration']:g} s after {meta['warmup']:g} s"
        f" warm-up, 64 B payloads unless noted, {meta['date']}. {load}; in each cell the"
        f" server's rate and, in bold, {servers[0].label}'s ratio to it.",
        "",
        md,
        "",
        *([client_md] if client_md else []),
        *idle_md,
        f"Machine: {meta['machine']}. "
        + (
            "Servers pinned to CPU 0, the load (load generator, clients) to CPU 1."
            if meta["pinned"]
            else "No CPU pinning."
        )
        + busy_note,
        "A baseline marked raw is a raw byte echo server driven with raw bytes of the same"
        " connections, depth and size (it does no RPC: the limit for a Trio server)."
        " A ratio is the median of the per-repetition ratios (the servers run back to back,"
        " in alternating order, in each). Server CPU is the server's own CPU use during the"
        " run (100 % = its core was saturated). ⚠ marks a run with errors, † one where the"
        " load generator or client was the limit. Speed on a shared VM drifts by up to"
        " 30 % between runs, so compare within one table.",
        "",
        f"Regenerate: `pip install -e '.[bench]' && {meta['command']}`.",
    ]
    if image:
        text[4:4] = [f"![servers under the same load; clients with their own servers]({image})", ""]
    return "\n".join(text) + "\n", ratios


def update_readme(readme: Path, body: str) -> bool:
    """Replace the results inside README.md's bench block; False if the block is absent.

    The block (between the ``bench:start``/``bench:end`` markers) holds prose
    and an inner ``bench-results`` block, which is what gets rewritten; without
    the inner markers, a new inner block goes at the end of the outer one.
    """
    text = readme.read_text()
    if MARK_START not in text or MARK_END not in text:
        return False
    inner = f"{RESULTS_START}\n{body}{RESULTS_END}"
    if RESULTS_START in text and RESULTS_END in text:
        pattern = re.escape(RESULTS_START) + ".*?" + re.escape(RESULTS_END)
        text = re.sub(pattern, lambda _: inner, text, count=1, flags=re.S)
    else:
        text = text.replace(MARK_END, f"{inner}\n{MARK_END}", 1)
    readme.write_text(text)
    return True


def parse_extra(spec: str) -> Server:
    """``LABEL:MODES:COMMAND`` (MODES comma-separated) -> Server."""
    label, modes, cmd = spec.split(":", 2)
    return Server(label, shlex.split(cmd), tuple(modes.split(",")))


#: The msgpack-rpc peers of the shared kit: label, venv, script and its options, client.
PEERS = [
    ("msgpack-rpc-python", ".venv-msgpackrpc", "peer_msgpackrpc.py", ["--nodelay"], "msgpackrpc",
     "blocking"),
    ("mprpc (gevent)", ".venv-mprpc", "peer_mprpc.py", [], "mprpc", "blocking"),
    ("aiorpc + uvloop", ".venv", "peer_aiorpc.py", ["--uvloop"], "aiorpc", "async"),
]  # fmt: skip


def kit(path: Path) -> tuple[list[Server], list[Server], list[ClientScenario]]:
    """What the shared bench kit (set up by its ``setup_peers.sh``) adds to the run.

    The Trio RPC floor (``rpc_trio_min.py``, one server per mode, run with this
    interpreter; beside the ``async def`` handler, its naive task-per-request
    variant), the msgpack-rpc peers (each in its own venv, TCP_NODELAY on),
    and each peer's own client calling it in a loop. These are measurement
    tools run as they are; nothing of them is copied here.
    """
    servers = path / "servers"
    floor = [sys.executable, str(servers / "rpc_trio_min.py")]
    floors = [
        Server(FLOOR, [*floor, f"--{mode}", "--port", "{port}"], (mode,), for_method="echo")
        for mode in ("framed", "mprpc")
    ]
    # Beside trio_echo's async def handler: the naive design, a task per request.
    floors.append(
        Server(f"{FLOOR}, task per request", [*floor, "--framed", "--spawn", "--port", "{port}"],
               ("framed",), for_method="aecho")
    )  # fmt: skip
    peers, clients = [], []
    for label, venv, script, opts, peer, versus in PEERS:
        python = path / venv / "bin" / "python"
        if not python.exists():
            print(f"({label} skipped: no {python}; run the kit's setup_peers.sh)", file=sys.stderr)
            continue
        argv = [str(python), str(servers / script), *opts, "--port", "{port}"]
        peers.append(Server(label, argv, ("mprpc",)))
        clients.append(
            ClientScenario(f"{label}, its own client, one caller in a loop", label, "mprpc-peer",
                           server=label, versus=versus, python=str(python), peer=peer)
        )  # fmt: skip
    return floors, peers, clients


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="tiny runs: a smoke test, not a measurement"
    )
    p.add_argument("--duration", type=float, default=3.0, help="seconds measured per run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    p.add_argument("--reps", type=int, default=3, help="repetitions (the median is reported)")
    p.add_argument(
        "--idle", type=int, default=2000, help="idle connections for the memory test (0: skip)"
    )
    p.add_argument("--only", default="", help="regex: run only the matching scenarios")
    p.add_argument(
        "--out",
        type=Path,
        help="folder for results.md/.json/.png (default: benchmarks/, or a temporary"
        " folder with --quick, so a smoke test never replaces the measured results)",
    )
    p.add_argument(
        "--kit",
        type=Path,
        metavar="DIR",
        help="the shared bench kit (a writable copy, set up with its setup_peers.sh and make):"
        " adds the Trio RPC floor and the msgpack-rpc peers (servers and their clients), and"
        " drives the servers with its C load generator",
    )
    p.add_argument(
        "--loadgen",
        type=Path,
        metavar="PATH",
        help="drive the servers with this C load generator (the kit's loadgen) instead of"
        " trio-echo bench, so that the server is the limit",
    )
    p.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="LABEL:MODES:CMD",
        help="another server to compare, e.g. 'floor:framed:python floor.py --port {port}';"
        " it is called with echo whatever the scenario's method",
    )
    p.add_argument(
        "--client-src",
        metavar="SRC",
        help="also run the client scenarios with the trio_echo in SRC (another checkout's"
        " src folder): before and after in one run",
    )
    p.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="do not run: rewrite the table, chart (and README) from a results.json",
    )
    p.add_argument(
        "--update-readme", action="store_true", help="write the table into README.md's bench block"
    )
    args = p.parse_args(argv)
    args.idle_later = 2.0
    if args.quick:
        if args.update_readme:
            p.error("--quick is a smoke test, not a measurement: it cannot update README.md")
        args.duration, args.warmup, args.reps, args.idle = 0.3, 0.1, 1, min(args.idle, 100)
        args.idle_later = 0.0
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="trio_echo_bench_")) if args.quick else HERE
    if args.kit and not args.loadgen and (args.kit / "loadgen").exists():
        args.loadgen = args.kit / "loadgen"
    floors, peers, peer_clients = kit(args.kit) if args.kit else ([], [], [])
    scenarios = [sc for sc in SCENARIOS if re.search(args.only, sc.name)]
    client_scenarios = [
        c for c in [*CLIENT_SCENARIOS, *peer_clients] if re.search(args.only, "clients " + c.name)
    ]
    py = sys.executable
    pythonpath = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    servers = [
        Server(
            "trio_echo",
            [py, "-m", "trio_echo", "serve", "--port", "{port}", "--app", "app:service",
             "--log-level", "warning", "--grace", "1"],
            ("framed", "mprpc", "raw"),
            env={"PYTHONPATH": pythonpath},
            own_methods=True,
        ),
        *floors,
        *map(parse_extra, args.extra),
        *peers,
        Server(BARE, [py, str(HERE / "bare_echo.py"), "--port", "{port}"], ("raw", "any")),
    ]  # fmt: skip
    if args.render:
        data = json.loads(args.render.read_text())
        meta = data["meta"]
        servers = [
            Server(
                srv["label"],
                [],
                tuple(srv["modes"]),
                own_methods=srv["own_methods"],
                for_method=srv.get("for_method", ""),
            )
            for srv in meta["servers"]
        ]
        scenarios = [sc for sc in SCENARIOS if sc.name in data["scenarios"]]
        client_scenarios = [ClientScenario(**c) for c in meta.get("client_scenarios", [])]
        client_scenarios = client_scenarios or CLIENT_SCENARIOS
    else:
        results, idle, clients = run_all(servers, scenarios, client_scenarios, args)
        command = shlex.join(["python", "benchmarks/run.py", *(argv or sys.argv[1:])])
        meta = {
            "reps": args.reps,
            "duration": args.duration,
            "warmup": args.warmup,
            "date": time.strftime("%Y-%m-%d"),
            "machine": machine(),
            "pinned": bool(pinning()),
            "command": command,
            "load": "loadgen" if args.loadgen else "trio-echo bench",
            "servers": [
                {
                    "label": s.label,
                    "modes": s.modes,
                    "own_methods": s.own_methods,
                    "for_method": s.for_method,
                }
                for s in servers
            ],
            "client_scenarios": [dataclasses.asdict(c) for c in client_scenarios],
        }
        data = {"meta": meta, "scenarios": results, "idle": idle, "clients": clients}
    results, idle, clients = data["scenarios"], data["idle"], data.get("clients", {})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    has_chart = chart(
        results, scenarios, servers, args.out / "results.png", clients, meta, client_scenarios
    )
    body, ratios = report(
        results, idle, scenarios, servers, meta, "results.png" if has_chart else None, clients,
        client_scenarios,
    )  # fmt: skip
    (args.out / "results.md").write_text("# Benchmark results\n\n" + body)
    print(f"results in {args.out}/", file=sys.stderr)
    print(body)
    print("\n".join(ratios))
    if not has_chart:
        print("(no chart: pip install matplotlib, or the package's [bench] extra)", file=sys.stderr)
    readme_body, _ = report(
        results, idle, scenarios, servers, meta,
        "benchmarks/results.png" if has_chart else None, clients, client_scenarios,
    )  # fmt: skip
    if args.update_readme and not update_readme(HERE.parent / "README.md", readme_body):
        print("README.md has no bench markers; not updated", file=sys.stderr)
    errors = sum(r["errors"] for runs in results.values() for rs in runs.values() for r in rs)
    errors += sum(r["errors"] for r in idle.values())
    errors += sum(r["errors"] for runs in clients.values() for rs in runs.values() for r in rs)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
