"""Argument types shared by the client subcommands: each bad value is one argparse error line.

(``trio-echo serve`` checks its flags through :class:`~trio_echo.server.config.ServerConfig`.)
"""

from __future__ import annotations

import argparse
import math

__all__ = ["port", "positive_float"]


def port(text: str) -> int:
    """A TCP port number, 0 to 65535."""
    value = int(text)  # a ValueError reads "invalid port value: ..."
    if not 0 <= value <= 65535:  # worded as ServerConfig words it for serve --port
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 65535, not {text}")
    return value


def positive_float(text: str) -> float:
    """A finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value
