"""The ``trio-echo`` command line: one module per subcommand (``serve``, ``call``, ``bench``)."""

from __future__ import annotations

from .main import build_parser as build_parser
from .main import main as main

__all__ = ["build_parser", "main"]
