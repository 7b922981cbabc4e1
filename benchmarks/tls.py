"""What TLS costs: framed echo over TLS beside the same server in plaintext, same run.

Starts ``trio-echo serve`` twice, one plaintext and one with ``--tls-cert/--tls-key``
(certificates made by ``trustme``, from the ``test`` extra), the servers pinned to
CPU 0 and ``trio-echo bench`` to CPU 1 when there are two CPUs, and drives each
scenario on both, alternating which goes first, ``--reps`` times. Prints the
median requests/s and p50 of each, and the TLS / plaintext ratio (the median of
the per-repetition ratios, as benchmarks/run.py does).

    python benchmarks/tls.py                      # c50 x 16 and c1 x 1, 3 reps of 3 s
    python benchmarks/tls.py --reps 5 --duration 5 --json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
SCENARIOS = [(50, 16), (1, 1)]


def pinned(cpu: int) -> list[str]:
    """A ``taskset`` prefix for CPU ``cpu``, if this machine has it and that CPU."""
    if len(os.sched_getaffinity(0)) < 2 or not Path("/usr/bin/taskset").exists():
        return []
    return ["taskset", "-c", str(cpu)]


class Server:
    def __init__(self, extra: list[str]) -> None:
        command = [*pinned(0), sys.executable, "-m", "trio_echo", "serve"]
        self.proc = subprocess.Popen(
            [*command, "--host", HOST, "--port", "0", *extra], stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            match = re.search(r"listening on \S+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                break
        else:
            raise SystemExit("the server did not start")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def bench(port: int, conns: int, depth: int, duration: float, tls: list[str]) -> dict[str, Any]:
    command = [*pinned(1), sys.executable, "-m", "trio_echo", "bench", "--host", HOST]
    options = f"--mode framed -c {conns} -P {depth} --duration {duration} --warmup 1"
    out = subprocess.run(
        [*command, "--port", str(port), *options.split(), "--workers", "1", "--json", "-q", *tls],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    import trustme  # the test extra; imported here so --help works without it

    with tempfile.TemporaryDirectory() as tmp:
        ca = trustme.CA()
        cert = ca.issue_cert(HOST)
        ca_file, cert_file = Path(tmp, "ca.pem"), Path(tmp, "server.pem")
        ca.cert_pem.write_to_path(str(ca_file))
        cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
        plain = Server([])
        tls = Server(["--tls-cert", str(cert_file), "--tls-key", str(cert_file)])
        tls_args = ["--tls-ca", str(ca_file)]
        table: dict[str, dict[str, Any]] = {}
        try:
            for conns, depth in SCENARIOS:
                runs: dict[str, list[dict[str, Any]]] = {"plain": [], "tls": []}
                for rep in range(args.reps):
                    order = ["plain", "tls"] if rep % 2 == 0 else ["tls", "plain"]
                    for which in order:
                        server, extra = (plain, []) if which == "plain" else (tls, tls_args)
                        runs[which].append(bench(server.port, conns, depth, args.duration, extra))
                rps = {k: [r["req_per_s"] for r in v] for k, v in runs.items()}
                p50 = {k: [r["latency_us"]["p50"] for r in v] for k, v in runs.items()}
                ratios = [t / p for t, p in zip(rps["tls"], rps["plain"], strict=True)]
                table[f"c{conns}x{depth}"] = {
                    "plain_rps": statistics.median(rps["plain"]),
                    "tls_rps": statistics.median(rps["tls"]),
                    "plain_p50_us": statistics.median(p50["plain"]),
                    "tls_p50_us": statistics.median(p50["tls"]),
                    "ratio": statistics.median(ratios),
                    "errors": sum(r["errors"] for v in runs.values() for r in v),
                }
        finally:
            plain.stop()
            tls.stop()
    if args.json:
        print(json.dumps(table))
        return 0
    print(f"{'scenario':10} {'plaintext req/s':>16} {'TLS req/s':>10} {'TLS/plain':>10} "
          f"{'p50 plain us':>13} {'p50 TLS us':>11} {'errors':>7}")  # fmt: skip
    for name, row in table.items():
        print(
            f"{name:10} {row['plain_rps']:>16,.0f} {row['tls_rps']:>10,.0f} {row['ratio']:>10.2f} "
            f"{row['plain_p50_us']:>13,.0f} {row['tls_p50_us']:>11,.0f} {row['errors']:>7}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
