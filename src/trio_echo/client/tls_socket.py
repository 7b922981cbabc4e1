"""TLS for the blocking client: an ``ssl.SSLObject`` over memory buffers, shared by threads.

``ssl.SSLSocket`` may not be read by one thread while another writes (OpenSSL
forbids concurrent use of one connection), and the blocking client does exactly
that: a reader thread and any number of calling threads. :class:`TLSSocket`
keeps the socket plain and runs TLS in memory instead: every use of the
``SSLObject`` holds ``_ssl_lock`` for the moment it takes (no I/O under it),
and encrypting plus sending holds ``_write_lock`` so that records leave in the
order they were made (the reader sends too, when TLS 1.3 asks it to answer a
key update).
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Final

__all__ = ["TLSSocket"]

_READ_SIZE: Final = 65536


class TLSSocket:
    """The few ``socket.socket`` methods the blocking client uses, over TLS."""

    def __init__(
        self, sock: socket.socket, ctx: ssl.SSLContext, server_hostname: str | None
    ) -> None:
        """Take over a connected socket and run the handshake (with the socket's timeout).

        Raises:
            ssl.SSLError: the handshake failed (the socket is left to the caller).
            OSError: the connection failed; TimeoutError if the timeout passed.
        """
        self.sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_hostname=server_hostname)
        self._ssl_lock = threading.Lock()
        self._write_lock = threading.Lock()
        while True:
            try:
                self._obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                data = sock.recv(_READ_SIZE)
                if not data:
                    raise ConnectionResetError("closed during the TLS handshake") from None
                self._in.write(data)
        self._flush()

    def _flush(self) -> None:
        """Send whatever TLS has produced (records, alerts), in order."""
        with self._write_lock:
            with self._ssl_lock:
                out = self._out.read()
            if out:
                self.sock.sendall(out)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        with self._write_lock:
            with self._ssl_lock:
                self._obj.write(data)
                out = self._out.read()
            self.sock.sendall(out)

    def send(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        """Non-blocking sends are not offered: nothing is sent, the caller's sendall follows."""
        if flags & socket.MSG_DONTWAIT:
            return 0
        self.sendall(data)
        return len(data)

    def recv(self, bufsize: int) -> bytes:
        """Decrypted bytes; ``b""`` at the end of the stream (a missing close_notify included)."""
        while True:
            with self._ssl_lock:
                try:
                    data = self._obj.read(bufsize)
                except ssl.SSLWantReadError:
                    data = None
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return b""
                answer = self._out.pending
            if answer:
                self._flush()
            if data is not None:
                return data
            raw = self.sock.recv(_READ_SIZE)
            with self._ssl_lock:
                if raw:
                    self._in.write(raw)
                else:
                    self._in.write_eof()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def getpeername(self) -> object:
        return self.sock.getpeername()

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        """Say close_notify if the socket still takes it at once, then close."""
        try:
            with self._ssl_lock:
                self._obj.unwrap()
        except (ssl.SSLError, ValueError):
            pass
        try:
            with self._ssl_lock:
                out = self._out.read()
            if out:
                self.sock.send(out, socket.MSG_DONTWAIT)
        except OSError:
            pass
        self.sock.close()
