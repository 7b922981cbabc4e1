"""The ``trio-echo`` command line: argument parsing and one ``trio.run`` per command.

Each subcommand lives in its own module, which exposes ``configure(parser)``
and ``run(args) -> int``; this module only wires them together.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._version import __version__


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and docs)."""
    from . import bench as _cli_bench
    from . import call as _cli_call
    from . import serve as _cli_serve

    parser = argparse.ArgumentParser(
        prog="trio-echo",
        description="Fast multiplexed request/response over TCP, built on Trio.",
    )
    parser.add_argument("--version", action="version", version=f"trio-echo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _cli_serve.configure(sub)
    _cli_call.configure(sub)
    _cli_bench.configure(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except KeyboardInterrupt:
        # A Ctrl-C that arrives outside a command's own signal handling.
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
