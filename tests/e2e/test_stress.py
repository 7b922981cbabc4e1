"""CI runs the stress tool for a short while: zero lost, zero mismatched, a clean server."""

from __future__ import annotations

import re
import subprocess
import sys

from helpers import ROOT

STRESS = ROOT / "benchmarks" / "stress.py"


def test_short_stress_run_loses_nothing() -> None:
    proc = subprocess.run(
        [sys.executable, str(STRESS), "--duration", "10"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "lost 0, mismatched 0, duplicates 0" in out and out.rstrip().endswith("PASS")
    rows = dict(re.findall(r"^(\w+)\s+(\d+)\s", out, flags=re.MULTILINE))
    scenarios = ["fast", "slow", "cancel", "timeout", "slowread", "abrupt", "oversize", "raw"]
    # The attacks of issue #10, among the legitimate load.
    scenarios += ["trickle", "amplify", "bomb", "resetfull", "statsflood", "cancelfull"]
    assert all(int(rows[name]) > 0 for name in scenarios), rows  # every kind of load ran
    sent = int(re.search(r"^(\d+) requests in", out, flags=re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert sent > 5000
