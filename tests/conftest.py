"""Fixtures shared across the test folders (helpers live in the ``helpers`` package)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers import Gate, Pki, ServerThread, make_pki, server_thread


@pytest.fixture
def gate() -> Gate:
    """A fresh :class:`helpers.Gate`."""
    return Gate()


@pytest.fixture
def srv(gate: Gate) -> Iterator[ServerThread]:
    """A real server on a loopback port, in a background thread, serving ``gate.service``."""
    with server_thread(gate.service) as running:
        yield running


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Test certificates from trustme (:class:`helpers.Pki`), issued once per run."""
    return make_pki(tmp_path_factory.mktemp("pki"))
