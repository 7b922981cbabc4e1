"""Options shared by `call`, `methods` and `bench` to reach a server: Unix sockets, TLS."""

from __future__ import annotations

import argparse
import ssl

from ..tls import TLSOptions

__all__ = ["add_transport_args", "ssl_context_from_args", "tls_options"]


def add_transport_args(p: argparse.ArgumentParser) -> None:
    """``--unix PATH`` and the client TLS options."""
    p.add_argument("--unix", metavar="PATH", help="connect to this Unix socket instead of TCP")
    p.add_argument(
        "--tls", action="store_true", help="speak TLS, verifying the server with the system CAs"
    )
    p.add_argument(
        "--tls-ca", metavar="FILE", help="speak TLS, verifying the server with this CA (PEM)"
    )
    p.add_argument(
        "--tls-cert", metavar="FILE", help="client certificate for mutual TLS (PEM; implies TLS)"
    )
    p.add_argument("--tls-key", metavar="FILE", help="the key of --tls-cert, if not in that file")
    p.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name the server's certificate must carry (default: --host)",
    )


def tls_options(args: argparse.Namespace) -> TLSOptions | None:
    """The client TLS settings the options ask for, or None for plaintext.

    Raises:
        ValueError: --tls-key without --tls-cert.
    """
    if args.tls_key and not args.tls_cert:
        raise ValueError("--tls-key needs --tls-cert")
    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_server_name):
        return None
    return TLSOptions(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)


def ssl_context_from_args(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The client TLS context the options ask for, or None for plaintext.

    Raises:
        ValueError: --tls-key without --tls-cert.
        OSError, ssl.SSLError: a file cannot be read or used.
    """
    options = tls_options(args)
    return None if options is None else options.context()
