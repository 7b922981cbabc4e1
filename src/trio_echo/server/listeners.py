"""Where the server listens: TCP ports, Unix domain sockets and inherited descriptors.

Every kind ends up as a plain :class:`trio.SocketListener`, so accepting,
limits, TLS and shutdown are the same for all of them. Problems an operator
must fix (a live server on the socket path, a path that is not a socket, a
descriptor that is not a listening socket) raise :class:`ListenerError`,
which ``trio-echo serve`` prints as one line before exiting with status 2.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import trio

__all__ = [
    "ListenerError",
    "UnixSocketFile",
    "bind_unix_socket",
    "check_listening_fd",
    "describe",
    "fd_listener",
    "open_tcp_listeners",
    "open_unix_listener",
    "systemd_fds",
    "tcp_listen_error",
]

#: The first descriptor systemd passes (sd_listen_fds(3): SD_LISTEN_FDS_START).
SD_LISTEN_FDS_START: Final = 3


class ListenerError(Exception):
    """A listener cannot be set up for a reason the operator must fix."""


def tcp_listen_error(host: str | None, port: int, exc: OSError) -> ListenerError:
    """Why a TCP listener on ``host``:``port`` failed, in one line that says what to do."""
    where = _addr(socket.AF_INET, (host or "*", port))
    if isinstance(exc, socket.gaierror):
        why = f"--host {host!r} is neither an address nor a name that resolves ({exc.strerror})"
    elif exc.errno == errno.EADDRINUSE:
        why = (
            "the address is already in use (is another server running there? choose "
            "another --port, or --port 0 for any free one)"
        )
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = f"{host} is not an address of this machine (--host)"
    elif exc.errno == errno.EACCES:
        why = "permission denied (ports below 1024 need privileges)"
    else:
        why = exc.strerror or str(exc) or type(exc).__name__
    return ListenerError(f"cannot listen on {where}: {why}")


async def open_tcp_listeners(
    host: str | None, port: int, *, reuse_port: bool = False, backlog: int | None = None
) -> list[trio.SocketListener]:
    """Open TCP listeners like :func:`trio.open_tcp_listeners`, optionally with SO_REUSEPORT."""
    if not reuse_port:
        return await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError(errno.ENOTSUP, "SO_REUSEPORT is not available on this platform")
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners = []
    for family, type_, proto, _, sockaddr in infos:
        sock = trio.socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            await sock.bind(sockaddr)
            sock.listen(backlog if backlog is not None else socket.SOMAXCONN)
        except BaseException:
            sock.close()
            raise
        listeners.append(trio.SocketListener(sock))
    return listeners


@dataclass(frozen=True)
class UnixSocketFile:
    """The socket file a Unix listener created, to remove on shutdown.

    :meth:`remove` deletes the path only while it is still the file this
    server bound (same device and inode): a newer server that replaced it
    keeps its socket.
    """

    path: str
    device: int
    inode: int

    def remove(self) -> None:
        """Delete the socket file if it is still ours (idempotent)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == (self.device, self.inode):
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def bind_unix_socket(
    path: str, *, mode: int = 0o600, backlog: int | None = None
) -> tuple[socket.socket, UnixSocketFile]:
    """Bind and listen on a Unix socket at ``path`` with permissions ``mode``.

    A stale socket file (nothing accepts on it: its server died) is replaced.

    Raises:
        ListenerError: a server is accepting on ``path``, or ``path`` exists
            and is not a socket, or the socket cannot be bound there.
    """
    _clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # bind() creates the file with the umask's permissions: create it with
        # none at all, so nobody can connect before the chmod below.
        old_umask = os.umask(0o777)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        st = os.stat(path)
        sock.listen(backlog if backlog is not None else socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise ListenerError(f"cannot listen on unix socket {path}: {exc.strerror or exc}") from exc
    return sock, UnixSocketFile(path, st.st_dev, st.st_ino)


def open_unix_listener(
    path: str, *, mode: int = 0o600, backlog: int | None = None
) -> tuple[trio.SocketListener, UnixSocketFile]:
    """:func:`bind_unix_socket` as a Trio listener; the caller removes the file at the end."""
    sock, file = bind_unix_socket(path, mode=mode, backlog=backlog)
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock)), file


def _clear_stale_socket(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenerError(f"cannot use unix socket path {path}: {exc.strerror}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenerError(f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        # Nobody accepts on it: a dead server's leftover.
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    except OSError as exc:
        # EACCES, a full backlog (EAGAIN / timeout): someone may well be there.
        raise ListenerError(f"cannot use unix socket {path}: {exc.strerror or exc}") from exc
    finally:
        probe.close()
    raise ListenerError(f"another server is listening on unix socket {path}")


def check_listening_fd(fd: int) -> socket.socket:
    """A socket object for an inherited descriptor that must be a listening stream socket.

    Raises:
        ListenerError: ``fd`` is not open, not a socket, not a stream socket,
            or not listening. The descriptor is left open either way.
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ListenerError(f"descriptor {fd} is not a socket: {exc.strerror or exc}") from exc
    try:
        if sock.type != socket.SOCK_STREAM:
            raise ListenerError(f"descriptor {fd} is not a stream socket")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ListenerError(f"descriptor {fd} is a socket that is not listening")
    except BaseException:
        sock.detach()  # not ours to close
        raise
    return sock


def fd_listener(fd: int) -> trio.SocketListener:
    """A listener for an inherited listening socket (``--fd N``, socket activation).

    Raises:
        ListenerError: see :func:`check_listening_fd`.
    """
    return trio.SocketListener(trio.socket.from_stdlib_socket(check_listening_fd(fd)))


def systemd_fds(environ: dict[str, str] | None = None, *, unset: bool = True) -> list[int]:
    """The listening descriptors systemd passed to this process (``sd_listen_fds``).

    ``LISTEN_PID`` must name this process and ``LISTEN_FDS`` says how many
    descriptors, from 3 on, were passed. With ``unset`` the variables are
    removed, so that child processes (``--workers``) do not take them for theirs.
    """
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    if unset:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(name, None)
    if pid is None or count is None:
        return []
    try:
        if int(pid) != os.getpid():
            return []
        n = int(count)
    except ValueError as exc:
        raise ListenerError(f"bad LISTEN_PID/LISTEN_FDS: {pid!r}/{count!r}") from exc
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(n, 0)))


def describe(listeners: Iterable[trio.SocketListener]) -> str:
    """The addresses, as the startup log line shows them: ``127.0.0.1:7000, unix:/run/x.sock``."""
    return ", ".join(
        _addr(listener.socket.family, listener.socket.getsockname()) for listener in listeners
    )


def _addr(family: int, name: object) -> str:
    if family == socket.AF_UNIX:
        text = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        return f"unix:{text or '<unnamed>'}"
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(name)
