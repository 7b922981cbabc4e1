"""Compare trio_echo with a bare Trio echo server, scenario by scenario; and its clients.

Starts ``python -m trio_echo serve`` (with ``app.py`` for the ``async def``
method) and ``bare_echo.py``, then drives every scenario with ``trio-echo
bench`` against each server in turn, alternating their order from one
repetition to the next so that the machine's drift hits both. The baseline is
benched in raw mode with the same connections, pipeline depth and size, so for
an RPC scenario the ratio says how close trio_echo gets to plain echo.

With ``taskset`` and two or more CPUs, the servers run on CPU 0 and the load
generator on CPU 1. Writes ``results.md`` (a Markdown table), ``results.json``
and ``results.png`` (requests/s by scenario; needs matplotlib, the ``bench``
extra), and prints the ratios.

    python benchmarks/run.py                   # about 4 minutes
    python benchmarks/run.py --quick           # a smoke test (results go to a temp folder)
    python benchmarks/run.py --extra 'floor:framed:python floor.py --framed --port {port}'
    python benchmarks/run.py --only clients --client-src ../old/src   # clients: old vs new

The client scenarios (``benchmarks/clients.py``, run in a process of their own
on CPU 1 against the same trio_echo server) set each of trio_echo's clients
beside a bare Python socket loop doing the same framed exchange, and beside
gRPC (``benchmarks/grpc_echo.py``, its own client and server, when ``grpcio``
is installed): what a user would otherwise pick. ``--client-src`` adds the
same runs with another checkout's ``trio_echo`` (its ``src`` folder), for a
before/after in one run.
"""

from __future__ import annotations

import argparse
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


@dataclass(frozen=True)
class ClientScenario:
    """Calls made by one kind of client (benchmarks/clients.py), beside a baseline kind."""

    name: str
    kind: str
    baseline: str  # the bare socket loop doing the same, or "" for none
    server: str = "trio_echo"  # or "grpc"


CLIENT_SCENARIOS = [
    ClientScenario("async client, one task calling in a loop", "async", "bare"),
    ClientScenario("blocking client, one thread calling in a loop", "blocking", "bare"),
    ClientScenario(
        "async client, 100 tasks on one connection", "async-concurrent", "bare-concurrent"
    ),
    ClientScenario("gRPC (grpc.aio), one caller in a loop", "grpc", "", "grpc"),
    ClientScenario("gRPC (grpc.aio), 100 callers on one channel", "grpc-concurrent", "", "grpc"),
]

SCENARIOS = [
    Scenario("raw c50 d1 64 B", "raw", 50, 1),
    Scenario("raw c4 d4 64 KiB", "raw", 4, 4, 65536, unit="MB/s"),
    Scenario("framed echo c1 d1", "framed", 1, 1),
    Scenario("framed echo c50 d1", "framed", 50, 1),
    Scenario("framed echo c50 d16", "framed", 50, 16),
    Scenario("mprpc echo c50 d16", "mprpc", 50, 16),
    Scenario("framed aecho (async def) c50 d16", "framed", 50, 16, method="aecho"),
]


@dataclass
class Server:
    """A server under test: a command line with ``{port}``, and the modes it speaks."""

    label: str
    argv: list[str]
    modes: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    own_methods: bool = False  # serves the scenarios' methods; else is called with echo
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    def serves(self, sc: Scenario) -> bool:
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
    server.proc = subprocess.Popen(
        pin + argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            err = server.proc.stderr.read().decode(errors="replace") if server.proc.stderr else ""
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
    """One ``trio-echo bench`` run (its engine, called in-process); adds the server's CPU use."""
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


def idle_memory(server: Server, n: int, mode: str) -> dict[str, Any]:
    """Open ``n`` connections with one request each, hold them: RSS per connection.

    ``mode`` framed: the preamble and one ``ping``; mprpc: one ``ping``; raw:
    one byte. RSS is sampled 0.5 s after the last reply.
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
        "errors": errors,
    }


def client_run(
    sc: ClientScenario, kind: str, port: int, args: argparse.Namespace, src: str | None
) -> dict[str, Any]:
    """One run of benchmarks/clients.py (a process of its own; ``src``: whose trio_echo)."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    argv = [sys.executable, str(HERE / "clients.py"), kind, "--port", str(port),
            "--duration", str(args.duration), "--warmup", str(args.warmup)]  # fmt: skip
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        print(f"  {kind}: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return {"kind": kind, "calls_per_s": 0.0, "errors": 1}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["errors"] = 0
    return result


def run_clients(
    scenarios: list[ClientScenario], ports: dict[str, int], args: argparse.Namespace
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """results[scenario][label] = a run per repetition; labels: "client", "baseline", "old"."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for rep in range(args.reps):
        for sc in scenarios:
            if sc.server not in ports:
                continue
            runs: list[tuple[str, str, str | None]] = [("client", sc.kind, None)]
            if sc.baseline:
                runs.append(("baseline", sc.baseline, None))
            if args.client_src and sc.server == "trio_echo":
                runs.append(("old", sc.kind, args.client_src))
            k = rep % len(runs)
            for label, kind, src in runs[k:] + runs[:k]:  # alternate the order
                r = client_run(sc, kind, ports[sc.server], args, src)
                results.setdefault(sc.name, {}).setdefault(label, []).append(r)
                line = f"{sc.name:46} {label:8} {r['calls_per_s']:>10,.0f} calls/s"
                print(f"  rep {rep + 1}  {line}", file=sys.stderr)
    return results


def run_all(
    servers: list[Server], scenarios: list[Scenario], args: argparse.Namespace
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
    client_scenarios = [c for c in CLIENT_SCENARIOS if re.search(args.only, "clients " + c.name)]
    grpc = Server("grpc", [sys.executable, str(HERE / "grpc_echo.py"), "--port", "{port}"], ())
    with_grpc = any(c.server == "grpc" for c in client_scenarios) and has_grpc()
    affinity = os.sched_getaffinity(0)
    try:
        for s in [*servers, grpc] if with_grpc else servers:
            start(s, pin)
        if pin:
            os.sched_setaffinity(0, {1})  # the bench workers inherit it
        # Fresh servers (nothing freed to reuse yet): trio_echo holds framed, msgpack-rpc
        # and raw connections (each kind on a fresh server), the bare echo raw ones.
        for s, mode in [(servers[0], "framed"), (servers[1], "raw")] if args.idle else []:
            r = idle_memory(s, args.idle, mode)
            idle[s.label] = r
            line = f"idle x {args.idle:<27} {s.label:16} {r['kb_per_conn']:>12,.1f} KB/conn"
            print(f"         {line}  errors {r['errors']}", file=sys.stderr)
        for mode in ("mprpc", "raw") if args.idle and servers[0].own_methods else ():
            stop(servers[0])
            start(servers[0], pin)
            r = idle_memory(servers[0], args.idle, mode)
            idle[f"{servers[0].label} {mode}"] = r
            line = f"idle x {args.idle:<27} {servers[0].label + ' ' + mode:16}"
            print(f"         {line} {r['kb_per_conn']:>12,.1f} KB/conn", file=sys.stderr)
        for rep in range(args.reps):
            for sc in scenarios:
                order = [s for s in servers if s.serves(sc)]
                k = rep % len(order)
                for s in order[k:] + order[:k]:
                    r = bench(s, sc, args)
                    results[sc.name].setdefault(s.label, []).append(r)
                    line = f"{sc.name:34} {s.label:16} {figure(sc, r):>12,.1f} {sc.unit}"
                    print(f"  rep {rep + 1}  {line}  errors {r['errors']}", file=sys.stderr)
        ports = {"trio_echo": servers[0].port, **({"grpc": grpc.port} if with_grpc else {})}
        clients = run_clients(client_scenarios, ports, args)
    finally:
        os.sched_setaffinity(0, affinity)
        for s in [*servers, grpc]:
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


def table(
    results: dict[str, dict[str, list[dict[str, Any]]]],
    scenarios: list[Scenario],
    servers: list[Server],
) -> tuple[str, list[str]]:
    """The Markdown table, and one ratio line per scenario and baseline."""
    main, *bases = servers
    head = ["scenario", main.label, "p50 / p99", "server CPU"]
    for b in bases:
        head += [b.label, f"{main.label} / {b.label}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ratios = []
    for sc in scenarios:
        runs = results[sc.name]
        if main.label not in runs:
            continue
        m = median_run(runs[main.label], sc)
        lat = m["latency_us"]
        note = " ⚠" * bool(m["errors"]) + " †" * bool(m["client_bound"])
        lat_text = f"{lat['p50']:,.0f} / {lat['p99']:,.0f} us" if lat else "-"
        row = [sc.name, fmt(figure(sc, m), sc.unit) + note, lat_text, f"{m['server_cpu_pct']:.0f}%"]
        for b in bases:
            if b.label not in runs:
                row += ["", ""]
                continue
            base = median_run(runs[b.label], sc)
            shape = "" if b.mode_for(sc) == sc.mode else " (raw)"
            if b.mode_for(sc) == sc.mode and b.method_for(sc) != sc.method:
                shape += f" ({b.method_for(sc)})"
            mark = " ⚠" * bool(base["errors"]) + " †" * bool(base["client_bound"])
            if not figure(sc, base):
                row += [fmt(0, sc.unit) + shape + mark, "-"]
                continue
            # Each repetition ran the two back to back: the median of their ratios
            # is steadier than the ratio of the medians when the machine drifts.
            pairs = zip(runs[main.label], runs[b.label], strict=False)
            ratio = statistics.median(
                figure(sc, x) / figure(sc, y) if figure(sc, y) else 0.0 for x, y in pairs
            )
            row += [fmt(figure(sc, base), sc.unit) + shape + mark, f"{ratio:.2f}x"]
            line = f"{sc.name:34} {main.label} / {b.label}: {ratio:.2f}"
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
) -> bool:
    """The README's picture; False if matplotlib is not installed.

    Left, the servers under the same load (``trio-echo bench``): each bar is
    labelled with trio_echo's ratio to it, a baseline driven in raw mode for an
    RPC scenario says so, and a run where the load generator (not the server)
    was the limit is hatched and marked. Right, the clients: calls/s of each
    of trio_echo's clients beside the bare socket loop and gRPC. The caption
    names the machine and the command.
    """
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return False
    shown = [sc for sc in scenarios if results.get(sc.name, {}).get(servers[0].label)]
    client_rows = [c for c in CLIENT_SCENARIOS if (clients or {}).get(c.name, {}).get("client")]
    panels = [p for p in (shown, client_rows) if p]
    if not panels:
        return False
    fig, axes = plt.subplots(
        1, len(panels), figsize=(15, 6), squeeze=False, gridspec_kw={"width_ratios":
        [max(len(p), 2) for p in panels]},
    )  # fmt: skip
    ax_list = list(axes[0])
    if shown:
        _server_panel(ax_list.pop(0), results, shown, servers)
    if client_rows:
        _client_panel(ax_list.pop(0), clients or {}, client_rows)
    if meta:
        fig.text(
            0.01, 0.01,
            f"{meta['date']}, {meta['machine']}; servers pinned to CPU 0, load to CPU 1;"
            f" median of {meta['reps']} x {meta['duration']:g} s.  {meta['command']}",
            fontsize=7, ha="left", va="bottom", wrap=True,
        )  # fmt: skip
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _server_panel(
    ax: Any,
    results: dict[str, dict[str, list[dict[str, Any]]]],
    shown: list[Scenario],
    servers: list[Server],
) -> None:
    main = servers[0]
    width = 0.8 / len(servers)
    for i, s in enumerate(servers):
        for j, sc in enumerate(shown):
            runs = results[sc.name].get(s.label)
            if not runs:
                continue
            m = median_run(runs, sc)
            x = j + (i - (len(servers) - 1) / 2) * width
            y = m["req_per_s"] if sc.unit == "req/s" else m["mb_per_s"] * 1e6 / sc.size
            bound = bool(m.get("client_bound"))
            ax.bar(x, y, width, color=f"C{i}", hatch="//" if bound else None,
                   label=s.label if j == 0 or not ax.get_legend_handles_labels()[1].count(
                       s.label) else None)  # fmt: skip
            note = ""
            if s is not main:
                mine = results[sc.name].get(main.label)
                if mine and figure(sc, m):
                    note = f"{figure(sc, median_run(mine, sc)) / figure(sc, m):.2f}x"
                if s.mode_for(sc) != sc.mode:
                    note += "\nraw"
            if bound:
                note += "\nclient-\nbound"
            if note:
                ax.text(x, y, note, ha="center", va="bottom", fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("requests/s (log)")
    ax.set_xticks(range(len(shown)), [sc.name for sc in shown], rotation=25, ha="right",
                  fontsize=7)  # fmt: skip
    ax.set_title(
        f"Servers under the same load; above a bar: {main.label} / that server\n"
        "(raw = a raw echo server driven with raw bytes of the same shape; hatched ="
        " the load generator was the limit)",
        fontsize=8,
    )
    ax.legend(fontsize=7)


def _client_panel(
    ax: Any, clients: dict[str, dict[str, list[dict[str, Any]]]], rows: list[ClientScenario]
) -> None:
    for j, sc in enumerate(rows):
        runs = clients[sc.name]
        if sc.server == "grpc":  # the async client's ratio to it, on its bar
            ours = clients.get(CLIENT_SCENARIOS[0 if sc.kind == "grpc" else 2].name, {})
            if ours.get("client"):
                y = median_by(runs["client"])["calls_per_s"]
                ratio = median_ratio(ours["client"], runs["client"])
                ax.bar(j, y, 0.4, color="C3")
                ax.text(j, y, f"gRPC\ntrio_echo async\n{ratio:.1f}x", ha="center",
                        va="bottom", fontsize=6)  # fmt: skip
                continue
        bars = [("this client", runs["client"], "C0" if sc.server != "grpc" else "C3")]
        if "baseline" in runs:
            bars.append(("bare socket", runs["baseline"], "C7"))
        if "old" in runs:
            bars.append(("before", runs["old"], "C1"))
        width = 0.8 / len(bars)
        for i, (label, rs, color) in enumerate(bars):
            x = j + (i - (len(bars) - 1) / 2) * width
            y = median_by(rs)["calls_per_s"]
            ax.bar(x, y, width, color=color)
            note = label
            if i:  # this client / it
                note += f"\n{median_ratio(runs['client'], rs):.2f}x"
            ax.text(x, y, note, ha="center", va="bottom", fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("calls/s (log)")
    ax.set_xticks(range(len(rows)), [sc.name for sc in rows], rotation=25, ha="right",
                  fontsize=7)  # fmt: skip
    ax.set_title(
        "Clients (64 B echo): above a bar, this client / it;\ngRPC with its own client and"
        " server (grpc.aio)",
        fontsize=8,
    )


def client_table(clients: dict[str, dict[str, list[dict[str, Any]]]]) -> tuple[str, list[str]]:
    """The clients' Markdown table, and their ratio lines."""
    if not clients:
        return "", []
    old = any("old" in runs for runs in clients.values())
    head = ["client scenario (64 B echo)", "calls/s", "client CPU per call", "baseline",
            "ratio"] + ["before (--client-src)", "after / before"] * old  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ratios = []
    async_seq = clients.get(CLIENT_SCENARIOS[0].name, {}).get("client", [])
    async_conc = clients.get(CLIENT_SCENARIOS[2].name, {}).get("client", [])
    for sc in CLIENT_SCENARIOS:
        runs = clients.get(sc.name)
        if not runs or "client" not in runs:
            continue
        mine = runs["client"]
        m = median_by(mine)
        row = [sc.name, f"{m['calls_per_s']:,.0f}", f"{m.get('client_cpu_us_per_call', 0):.0f} us"]
        if sc.baseline and "baseline" in runs:
            ratio = median_ratio(mine, runs["baseline"])
            what = "bare socket loop" if sc.baseline == "bare" else "bare pipelined socket"
            row += [f"{what}: {median_by(runs['baseline'])['calls_per_s']:,.0f}", f"{ratio:.2f}x"]
            ratios.append(f"{sc.name}: {ratio:.2f} of the {what}")
        elif sc.server == "grpc":
            ours = async_seq if sc.kind == "grpc" else async_conc
            ratio = median_ratio(ours, mine) if ours else 0.0
            row += ["trio_echo async client / this", f"{ratio:.2f}x"]
            ratios.append(f"trio_echo async client / {sc.name}: {ratio:.2f}")
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
) -> tuple[str, list[str]]:
    """The Markdown section (table, chart, machine, command) and the ratio lines."""
    md, ratios = table(results, scenarios, servers)
    client_md, client_ratios = client_table(clients or {})
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
    idle_md = [
        f"| {label.split(' ')[0] if ' ' in label and label.startswith('trio_echo') else label}"
        f" | {r['connections']:,} {r.get('mode', 'framed' if i == 0 else 'raw')}"
        f" | {r['open_s']:.2f} s"
        f" | {r['rss_before_kb'] / 1024:,.1f} → {r['rss_after_kb'] / 1024:,.1f} MiB"
        f" | {r['kb_per_conn']:,.1f} KB |"
        for i, (label, r) in enumerate(idle.items())
    ]
    if idle_md:
        idle_md[:0] = [
            "Idle connections, each opened with one request (a `ping`, or one byte of raw echo),"
            " server RSS 0.5 s after the last reply:",
            "",
            "| server | connections | open + first reply | RSS | per connection |",
            "|---|---|---|---|---|",
        ]
        idle_md.append("")
    if client_md:
        client_md = (
            "Clients: calls a Python program makes, one at a time or 100 at once, each run"
            " beside its baseline (a plain blocking socket doing the same framed exchange;"
            " for 100 at once, one thread keeping 100 requests in flight on one socket)"
            " and gRPC's own client and server (`benchmarks/grpc_echo.py`: `grpc.aio`,"
            " bytes in and out), each in a process of its own on the load's CPU:\n\n"
            + client_md
            + "\n"
        )
    text = [
        f"Median of {meta['reps']} run(s) of {meta['duration']:g} s after {meta['warmup']:g} s"
        f" warm-up, 64 B payloads unless noted, {meta['date']}.",
        "",
        md,
        "",
        *([client_md] if client_md else []),
        *idle_md,
        f"Machine: {meta['machine']}. "
        + (
            "Servers pinned to CPU 0, `trio-echo bench` to CPU 1."
            if meta["pinned"]
            else "No CPU pinning."
        )
        + busy_note,
        "The baseline is benched in raw mode with the same connections, depth and size;"
        " a ratio is the median of the per-repetition ratios (the two servers run back to"
        " back in each)."
        " Server CPU is trio_echo's own CPU use during the run (100 % = its core was"
        " saturated). ⚠ marks a run with errors, † one where the client was probably the"
        " bottleneck. Speed on a shared VM drifts by up to 30 % between runs,"
        " so compare within one table.",
        "",
        f"Regenerate: `pip install -e '.[bench]' && {meta['command']}`.",
    ]
    if image:
        text[4:4] = [f"![requests/s by scenario]({image})", ""]
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
    if args.quick:
        if args.update_readme:
            p.error("--quick is a smoke test, not a measurement: it cannot update README.md")
        args.duration, args.warmup, args.reps, args.idle = 0.3, 0.1, 1, min(args.idle, 100)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="trio_echo_bench_")) if args.quick else HERE
    scenarios = [sc for sc in SCENARIOS if re.search(args.only, sc.name)]
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
        Server("bare trio echo", [py, str(HERE / "bare_echo.py"), "--port", "{port}"],
               ("raw", "any")),
        *map(parse_extra, args.extra),
    ]  # fmt: skip
    if args.render:
        data = json.loads(args.render.read_text())
        meta = data["meta"]
        servers = [
            Server(srv["label"], [], tuple(srv["modes"]), own_methods=srv["own_methods"])
            for srv in meta["servers"]
        ]
        scenarios = [sc for sc in SCENARIOS if sc.name in data["scenarios"]]
    else:
        results, idle, clients = run_all(servers, scenarios, args)
        command = "python benchmarks/run.py" + " --quick" * args.quick
        command += " --update-readme" * args.update_readme
        meta = {
            "reps": args.reps,
            "duration": args.duration,
            "warmup": args.warmup,
            "date": time.strftime("%Y-%m-%d"),
            "machine": machine(),
            "pinned": bool(pinning()),
            "command": command,
            "servers": [
                {"label": s.label, "modes": s.modes, "own_methods": s.own_methods} for s in servers
            ],
        }
        data = {"meta": meta, "scenarios": results, "idle": idle, "clients": clients}
    results, idle, clients = data["scenarios"], data["idle"], data.get("clients", {})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    has_chart = chart(results, scenarios, servers, args.out / "results.png", clients, meta)
    body, ratios = report(
        results, idle, scenarios, servers, meta, "results.png" if has_chart else None, clients
    )
    (args.out / "results.md").write_text("# Benchmark results\n\n" + body)
    print(f"results in {args.out}/", file=sys.stderr)
    print(body)
    print("\n".join(ratios))
    if not has_chart:
        print("(no chart: pip install matplotlib, or the package's [bench] extra)", file=sys.stderr)
    readme_body, _ = report(
        results,
        idle,
        scenarios,
        servers,
        meta,
        "benchmarks/results.png" if has_chart else None,
        clients,
    )
    if args.update_readme and not update_readme(HERE.parent / "README.md", readme_body):
        print("README.md has no bench markers; not updated", file=sys.stderr)
    errors = sum(r["errors"] for runs in results.values() for rs in runs.values() for r in rs)
    errors += sum(r["errors"] for r in idle.values())
    errors += sum(r["errors"] for runs in clients.values() for rs in runs.values() for r in rs)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
