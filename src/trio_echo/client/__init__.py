"""The clients: a sans-IO core (``core``) and two thin transports over it.

``async_client`` runs on Trio; ``blocking`` uses plain sockets and threads and
imports no Trio. This package's ``__init__`` imports neither, so importing one
transport never pulls in the other.
"""
