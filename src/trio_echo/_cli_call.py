"""``trio-echo call`` and ``trio-echo methods`` (owned by the client work, issue #3)."""

from __future__ import annotations

import argparse
from typing import Any


def configure(sub: Any) -> None:
    """Add the ``call`` and ``methods`` subcommands."""
    p = sub.add_parser("call", help="call a method on a server (not implemented yet)")
    p.set_defaults(run=_todo)
    p = sub.add_parser("methods", help="list a server's methods (not implemented yet)")
    p.set_defaults(run=_todo)


def _todo(args: argparse.Namespace) -> int:
    raise SystemExit("not implemented yet")
