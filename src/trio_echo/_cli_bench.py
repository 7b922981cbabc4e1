"""``trio-echo bench`` (owned by the performance work, issue #5)."""

from __future__ import annotations

import argparse
from typing import Any


def configure(sub: Any) -> None:
    """Add the ``bench`` subcommand."""
    p = sub.add_parser("bench", help="load-test a server (not implemented yet)")
    p.set_defaults(run=_todo)


def _todo(args: argparse.Namespace) -> int:
    raise SystemExit("not implemented yet")
