"""``trio-echo serve``: placeholder."""

from __future__ import annotations

from typing import Any


def configure(sub: Any) -> None:
    """Add the ``serve`` subcommand."""
    sub.add_parser("serve", help="run a server (not implemented yet)")
