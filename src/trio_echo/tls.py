"""TLS contexts for the server and the clients, from certificate files (Python's ``ssl``).

TLS wraps the byte stream unchanged: inside it a connection is sniffed and
served exactly as a plaintext one (protocol.md, section 1).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

__all__ = ["TLSOptions", "client_context", "server_context"]


def server_context(certfile: str, keyfile: str, *, client_ca: str | None = None) -> ssl.SSLContext:
    """A server context with this certificate chain and key.

    With ``client_ca`` the server requires a client certificate signed by
    that CA (mutual TLS): clients without one are refused in the handshake.

    Raises:
        OSError: a file cannot be read.
        ssl.SSLError: a file holds no usable certificate or key.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    if client_ca is not None:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(
    *, cafile: str | None = None, certfile: str | None = None, keyfile: str | None = None
) -> ssl.SSLContext:
    """A client context that verifies the server against ``cafile`` (else the system CAs).

    ``certfile`` (and ``keyfile``, if the key is not in ``certfile``) is the
    client's own certificate, for a server that requires one (mutual TLS).

    Raises:
        OSError: a file cannot be read.
        ssl.SSLError: a file holds no usable certificate or key.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile is not None:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


@dataclass(frozen=True)
class TLSOptions:
    """A client's TLS settings as file names (picklable, unlike an ``SSLContext``)."""

    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    #: The name the server's certificate must carry (None: the host connected to).
    server_hostname: str | None = None

    def context(self) -> ssl.SSLContext:
        """The :func:`client_context` for these files."""
        return client_context(cafile=self.cafile, certfile=self.certfile, keyfile=self.keyfile)
