"""Test certificates from trustme: a CA, a server certificate, client certificates, as files."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

from trio_echo import tls


@dataclass
class Pki:
    """A CA, a server certificate for localhost / 127.0.0.1, a client certificate, as files."""

    ca: trustme.CA
    ca_file: str
    cert_file: str
    key_file: str
    client_cert_file: str  # certificate and key in one PEM
    other_client_cert_file: str  # the same, from an unrelated CA

    def server_context(self, *, mutual: bool = False) -> ssl.SSLContext:
        return tls.server_context(
            self.cert_file, self.key_file, client_ca=self.ca_file if mutual else None
        )

    def client_context(self, certfile: str | None = None) -> ssl.SSLContext:
        return tls.client_context(cafile=self.ca_file, certfile=certfile)


def make_pki(d: Path) -> Pki:
    """Issue everything into folder ``d``."""
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server.private_key_pem.write_to_path(str(d / "key.pem"))
    for i, blob in enumerate(server.cert_chain_pems):
        blob.write_to_path(str(d / "cert.pem"), append=i > 0)
    client = ca.issue_cert("client@example.com")
    client.private_key_and_cert_chain_pem.write_to_path(str(d / "client.pem"))
    other = trustme.CA().issue_cert("intruder@example.com")
    other.private_key_and_cert_chain_pem.write_to_path(str(d / "other.pem"))
    return Pki(
        ca,
        str(d / "ca.pem"),
        str(d / "cert.pem"),
        str(d / "key.pem"),
        str(d / "client.pem"),
        str(d / "other.pem"),
    )
