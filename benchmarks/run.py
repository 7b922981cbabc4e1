"""Compare trio_echo with a bare Trio echo server, scenario by scenario.

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


def idle_memory(server: Server, n: int) -> dict[str, Any]:
    """Open ``n`` connections with one request each, hold them: RSS per connection.

    trio_echo gets framed connections (preamble, one ``ping``), the bare echo
    server raw ones (one byte). RSS is sampled 0.5 s after the last reply.
    """
    assert server.proc is not None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
    framed = server.own_methods
    hello = wire.PREAMBLE + wire.encode_request(1, "ping", []) if framed else b"x"
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
            got: list[Any] = []
            while not (got[-1:] and got[-1][0] == 1 if framed else got):
                data = sock.recv(4096)
                if not data:
                    errors += 1
                    break
                got += reader.feed(data) if framed else [data]
        open_s = time.monotonic() - t0
        time.sleep(0.5)
        after = rss_kb(server.proc.pid)
    finally:
        for sock in socks:
            sock.close()
    return {
        "connections": n,
        "open_s": round(open_s, 3),
        "rss_before_kb": before,
        "rss_after_kb": after,
        "kb_per_conn": round((after - before) / n, 2),
        "errors": errors,
    }


def run_all(
    servers: list[Server], scenarios: list[Scenario], args: argparse.Namespace
) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], dict[str, dict[str, Any]]]:
    """(results[scenario][server label] = a bench result per repetition, idle[server label])."""
    pin = pinning()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {sc.name: {} for sc in scenarios}
    idle: dict[str, dict[str, Any]] = {}
    affinity = os.sched_getaffinity(0)
    try:
        for s in servers:
            start(s, pin)
        if pin:
            os.sched_setaffinity(0, {1})  # the bench workers inherit it
        for s in servers[:2] if args.idle else []:  # fresh servers: nothing freed to reuse yet
            r = idle_memory(s, args.idle)
            idle[s.label] = r
            line = f"idle x {args.idle:<27} {s.label:16} {r['kb_per_conn']:>12,.1f} KB/conn"
            print(f"         {line}  errors {r['errors']}", file=sys.stderr)
        for rep in range(args.reps):
            for sc in scenarios:
                order = [s for s in servers if s.serves(sc)]
                k = rep % len(order)
                for s in order[k:] + order[:k]:
                    r = bench(s, sc, args)
                    results[sc.name].setdefault(s.label, []).append(r)
                    line = f"{sc.name:34} {s.label:16} {figure(sc, r):>12,.1f} {sc.unit}"
                    print(f"  rep {rep + 1}  {line}  errors {r['errors']}", file=sys.stderr)
    finally:
        os.sched_setaffinity(0, affinity)
        for s in servers:
            stop(s)
    return results, idle


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
) -> bool:
    """A grouped bar chart of requests/s; False if matplotlib is not installed."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return False
    names = [sc.name for sc in scenarios]
    width = 0.8 / len(servers)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, s in enumerate(servers):
        xs, ys = [], []
        for j, sc in enumerate(scenarios):
            runs = results[sc.name].get(s.label)
            if runs:
                xs.append(j + (i - (len(servers) - 1) / 2) * width)
                ys.append(median_run(runs, sc)["req_per_s"])
        ax.bar(xs, ys, width, label=s.label)
    ax.set_yscale("log")
    ax.set_ylabel("requests/s (log scale)")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_title("trio_echo vs a bare Trio echo server (median run; baseline = raw echo)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def report(
    results: dict[str, dict[str, list[dict[str, Any]]]],
    idle: dict[str, dict[str, Any]],
    scenarios: list[Scenario],
    servers: list[Server],
    meta: dict[str, Any],
    image: str | None,
) -> tuple[str, list[str]]:
    """The Markdown section (table, chart, machine, command) and the ratio lines."""
    md, ratios = table(results, scenarios, servers)
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
        f"| {label} | {r['connections']:,} {'framed' if i == 0 else 'raw'} | {r['open_s']:.2f} s"
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
    text = [
        f"Median of {meta['reps']} run(s) of {meta['duration']:g} s after {meta['warmup']:g} s"
        f" warm-up, 64 B payloads unless noted, {meta['date']}.",
        "",
        md,
        "",
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
        results, idle = run_all(servers, scenarios, args)
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
        data = {"meta": meta, "scenarios": results, "idle": idle}
    results, idle = data["scenarios"], data["idle"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    has_chart = chart(results, scenarios, servers, args.out / "results.png")
    body, ratios = report(
        results, idle, scenarios, servers, meta, "results.png" if has_chart else None
    )
    (args.out / "results.md").write_text("# Benchmark results\n\n" + body)
    print(f"results in {args.out}/", file=sys.stderr)
    print(body)
    print("\n".join(ratios))
    if not has_chart:
        print("(no chart: pip install matplotlib, or the package's [bench] extra)", file=sys.stderr)
    readme_body, _ = report(
        results, idle, scenarios, servers, meta, "benchmarks/results.png" if has_chart else None
    )
    if args.update_readme and not update_readme(HERE.parent / "README.md", readme_body):
        print("README.md has no bench markers; not updated", file=sys.stderr)
    errors = sum(r["errors"] for runs in results.values() for rs in runs.values() for r in rs)
    errors += sum(r["errors"] for r in idle.values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
