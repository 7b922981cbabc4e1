"""One load-generating process of ``trio-echo bench``.

Each worker drives its share of the connections with plain non-blocking
sockets and ``epoll`` (``poll`` elsewhere): no Trio in the hot loop, so the
client costs as little CPU per request as Python allows. Requests are encoded
once; only the 4-byte msgid is patched in per request. Every connection keeps
``pipeline`` requests in flight, refilling the window after each read, and
matches responses by msgid (they may come back in any order).

The parent talks to a worker over a :mod:`multiprocessing` pipe::

    worker -> parent  ("ready", {error: count})      after connecting
    parent -> worker  ("go", start)                  start is a time.monotonic() instant
    worker -> parent  ("progress", completed, errors) about every PROGRESS_INTERVAL
    parent -> worker  ("stop",)                      optional: end early
    worker -> parent  ("done", WorkerResult dict)

A worker ends by itself at ``start + warmup + duration`` whatever the parent does.

Errors are counted by code, and the first few distinct messages are kept
(the server's own, or what the worker saw), so that a report can say why. A
framed connection reads the server's hello before the clock starts, so a
request larger than the server's ``max_frame`` is counted once per
connection as ``frame_too_large`` and never sent. A connection the server
closes after an error notice (``frame_too_large`` on a msgpack-rpc stream,
say) is counted under the notice's code only, not as ``connection_lost``.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import resource
import select
import signal
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from typing import Any, Final

import msgpack

from ..tls import TLSOptions
from ..wire import MAX_MSGID, PREAMBLE, packb

__all__ = ["FramedReader", "Worker", "WorkerResult", "WorkerSpec", "worker_main"]

#: Seconds between two progress messages to the parent.
PROGRESS_INTERVAL: Final = 0.25
#: Bytes asked of one ``recv``.
RECV_SIZE: Final = 256 * 1024
#: Latency histogram: values below 2**SUB_BITS ns are exact, then each power of
#: two is split in 2**(SUB_BITS - 1) buckets (1.6 % wide at SUB_BITS = 7).
SUB_BITS: Final = 7
HIST_SIZE: Final = 64 << (SUB_BITS - 1)
#: Distinct error messages a worker keeps, and how much of each.
MAX_MESSAGES: Final = 5
MAX_MESSAGE_CHARS: Final = 200
#: A first frame longer than this is not a hello (a raw echo server sends the preamble back).
MAX_HELLO_BYTES: Final = 64 * 1024

_IN: Final = select.POLLIN
_OUT: Final = select.POLLOUT


def bucket_of(ns: int) -> int:
    """The histogram bucket of a latency in nanoseconds."""
    b = ns.bit_length()
    return ns if b <= SUB_BITS else ((b - SUB_BITS) << (SUB_BITS - 1)) + (ns >> (b - SUB_BITS))


def bucket_value(index: int) -> float:
    """The midpoint, in nanoseconds, of the latencies that land in ``index``."""
    half = 1 << (SUB_BITS - 1)
    if index < 2 * half:
        return float(index)
    shift = index // half - 1
    low = (index - shift * half) << shift
    return low + ((1 << shift) - 1) / 2


def payload_bytes(size: int) -> bytes:
    """A printable payload of ``size`` bytes (never starts like msgpack-rpc or the preamble)."""
    pattern = b"trio_echo-bench-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ."
    return (pattern * (size // len(pattern) + 1))[:size]


#: What a non-blocking socket raises when it must wait (TLS: for a whole record, or for room).
_WOULD_BLOCK: Final = (
    BlockingIOError,
    InterruptedError,
    ssl.SSLWantReadError,
    ssl.SSLWantWriteError,
)


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker does (picklable, so ``spawn`` works too)."""

    host: str
    port: int
    mode: str  # "framed" | "mprpc" | "raw"
    connections: int
    pipeline: int
    size: int
    method: str
    verify: bool
    warmup: float
    duration: float
    connect_timeout: float = 5.0
    #: The request's params (``--params``); None sends the payload (or nothing to ``ping``).
    params: tuple[Any, ...] | None = None
    #: Connect to this Unix socket instead of host:port.
    unix: str | None = None
    #: Speak TLS (a non-blocking ``ssl.SSLSocket`` per connection; one thread, so that is safe).
    tls: TLSOptions | None = None


@dataclass
class WorkerResult:
    """What one worker measured; sent to the parent as a dict."""

    requests: int = 0  # successful completions inside the measured window
    window_s: float = 0.0
    cpu_s: float = 0.0
    lat_sum_ns: int = 0
    lat_max_ns: int = 0
    hist: dict[int, int] = field(default_factory=dict)  # bucket -> count (sparse)
    errors: dict[str, int] = field(default_factory=dict)
    #: The first few distinct ``[code, message]`` pairs, in the order seen.
    messages: list[list[str]] = field(default_factory=list)
    connections_open: int = 0


class _Conn:
    """One client connection's state."""

    __slots__ = (
        "alive", "done", "fd", "feed", "inflight", "next_id", "notice", "out", "pending", "rx",
        "sent", "sock",
    )  # fmt: skip

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.alive = True
        self.out = bytearray()  # bytes the kernel did not take yet
        self.inflight: dict[int, int] = {}  # RPC: msgid -> send time (ns)
        self.next_id = 0
        self.feed: Callable[[bytes], Iterable[Any]] | None = None
        # raw: [send time, messages] per refill, oldest first, and their total
        self.sent: collections.deque[list[int]] = collections.deque()
        self.pending = 0
        self.rx = 0  # raw: bytes received
        self.done = 0  # raw: messages completed
        self.notice = False  # the server sent an error notice: it explains a close


def _mprpc_feed() -> Callable[[bytes], Iterable[Any]]:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)

    def feed(data: bytes) -> Iterable[Any]:
        unpacker.feed(data)
        return unpacker  # type: ignore[no-any-return]

    return feed


class FramedReader:
    """Framed responses, decoded by one ``msgpack.Unpacker`` fed the raw stream.

    It reads each 4-byte header with ``read_bytes`` and checks that the object
    that follows spans exactly the frame, so it is as strict as
    :class:`~trio_echo.wire.FrameDecoder` and about three times cheaper per
    small frame than one ``unpackb`` per frame. A bad frame raises
    ``ValueError``: the benchmark drops that connection and counts an error.
    """

    __slots__ = ("_header", "_length", "_start", "_unpacker", "max_frame")

    def __init__(self, max_frame: int = 64 * 1024 * 1024) -> None:
        self.max_frame = max_frame
        self._unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, max_buffer_size=max_frame + RECV_SIZE
        )
        self._header = b""
        self._length = -1  # body length of the frame being read, -1 between frames
        self._start = 0

    def feed(self, data: bytes) -> list[Any]:
        """Add bytes; return the objects of every frame they complete."""
        u = self._unpacker
        u.feed(data)
        out: list[Any] = []
        append, read_bytes, unpack, tell = out.append, u.read_bytes, u.unpack, u.tell
        header, length, start = self._header, self._length, self._start
        while True:
            if length < 0:
                header = header + read_bytes(4 - len(header)) if header else read_bytes(4)
                if len(header) < 4:
                    break
                length = int.from_bytes(header, "big")
                header = b""
                if not 0 < length <= self.max_frame:
                    raise ValueError(f"bad frame length {length}")
                start = tell()
            try:
                obj = unpack()
            except msgpack.OutOfData:
                break
            if tell() - start != length:
                raise ValueError("a frame does not hold exactly one msgpack object")
            append(obj)
            length = -1
        self._header, self._length, self._start = header, length, start
        return out


class _Poller:
    """``epoll`` where there is one, else ``poll``: same calls, timeout in seconds."""

    def __init__(self) -> None:
        self._epoll = hasattr(select, "epoll")
        self._p: Any = select.epoll() if self._epoll else select.poll()
        self.register = self._p.register
        self.modify = self._p.modify
        self.unregister = self._p.unregister

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        t = max(timeout, 0.0)
        return self._p.poll(t) if self._epoll else self._p.poll(t * 1000)  # type: ignore[no-any-return]


class Worker:
    """The event loop of one worker process."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.tls = spec.tls is not None
        self.res = WorkerResult()
        self.hist = [0] * HIST_SIZE
        self.errors: collections.Counter[str] = collections.Counter()
        self.messages: dict[tuple[str, str], None] = {}  # an ordered set
        self.completed = 0  # successful completions, warm-up included (for progress)
        self.conns: dict[int, _Conn] = {}
        self.alive = 0  # connections still open; the worker stops early at 0
        self.poller = _Poller()
        self.running = False
        self.t_measure = 0
        self.t_end = 0
        self.payload = payload_bytes(spec.size)
        raw = spec.mode == "raw"
        if raw:
            # The echoed stream is the payload repeated; any recv is a slice of this.
            self.pattern = self.payload * ((RECV_SIZE // max(spec.size, 1)) + 2)
            self.raw_batches: dict[int, bytes] = {}
            self.expected: Any = None
        else:
            params: list[Any]
            if spec.params is not None:
                params = list(spec.params)
                self.expected = None  # any result will do: only errors count
            else:
                params = [] if spec.method == "ping" else [self.payload]
                self.expected = "pong" if spec.method == "ping" else self.payload
            self.check = spec.verify and spec.params is None
            # [0, msgid, method, params] with msgid always a uint32 (0xce + 4 bytes).
            tail = packb(spec.method) + packb(params)
            head = b"\x94\x00\xce"
            #: The encoded size of one request (the frame body in framed mode).
            self.request_size = len(head) + 4 + len(tail)
            if spec.mode == "framed":
                head = (len(head) + 4 + len(tail)).to_bytes(4, "big") + head
            # packers[k] builds k requests back to back in one call from the
            # arguments template[:3 * k] with every third item set to a msgid.
            self.template: list[Any] = [head, 0, tail] * spec.pipeline
            self.one = f"{len(head)}sI{len(tail)}s"
            self.packers: dict[int, Callable[..., bytes]] = {}

    # --- set-up ---------------------------------------------------------------

    def connect(self) -> None:
        """Open this worker's connections (blocking, before the clock starts)."""
        spec = self.spec
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < spec.connections + 64 and soft < hard:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(
                    resource.RLIMIT_NOFILE, (min(hard, spec.connections + 1024), hard)
                )
        tls_ctx = spec.tls.context() if spec.tls is not None else None
        for _ in range(spec.connections):
            try:
                sock = self._open_socket(tls_ctx)
            except OSError as exc:
                self._error("connect_failed", _describe_os_error(exc))
                continue
            c = _Conn(sock)
            if spec.mode == "framed":
                c.feed = FramedReader().feed
                if not self._hello(c):
                    sock.close()
                    continue
            elif spec.mode == "mprpc":
                c.feed = _mprpc_feed()
            sock.setblocking(False)
            self.conns[c.fd] = c
            self.alive += 1
            self.poller.register(c.fd, _IN)

    def _open_socket(self, tls_ctx: ssl.SSLContext | None) -> socket.socket:
        """A connected socket (blocking, with the connect timeout), after the TLS handshake."""
        spec = self.spec
        if spec.unix is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(spec.connect_timeout)
                sock.connect(spec.unix)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((spec.host, spec.port), spec.connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls_ctx is None:
            return sock
        assert spec.tls is not None
        name = spec.tls.server_hostname or (None if spec.unix else spec.host)
        try:
            return tls_ctx.wrap_socket(sock, server_hostname=name)
        except BaseException:
            sock.close()
            raise

    def _hello(self, c: _Conn) -> bool:
        """Send the preamble and read the server's hello (blocking); False to drop ``c``.

        A request larger than the ``max_frame`` the hello announces would only
        get the connection closed: it is counted once, here, and never sent.
        """
        assert c.feed is not None
        first: list[Any] = []
        try:
            c.sock.sendall(PREAMBLE)
            while not first:
                data = c.sock.recv(RECV_SIZE)
                if not data:
                    self._error("connection_lost", "the server closed before its hello")
                    return False
                if len(data) >= 4 and int.from_bytes(data[:4], "big") > MAX_HELLO_BYTES:
                    raise ValueError("no hello: not a trio_echo framed server")
                first = list(c.feed(data))
        except TimeoutError:
            self._error("connect_failed", f"no hello within {self.spec.connect_timeout:g} s")
            return False
        except OSError as exc:
            self._error("connection_lost", _describe_os_error(exc))
            return False
        except ValueError as exc:
            self._error("bad_message", str(exc))
            return False
        msg = first[0]
        if type(msg) is list and len(msg) == 3 and msg[:2] == [2, "error"]:
            self._other_message(msg, c)  # refused: overloaded, unsupported_version
            return False
        if not (type(msg) is list and len(msg) == 3 and msg[:2] == [2, "hello"]):
            self._error("bad_message", f"expected the server's hello, got {_short(repr(msg))}")
            return False
        info = msg[2][0] if type(msg[2]) is list and msg[2] else None
        max_frame = info.get("max_frame") if type(info) is dict else None
        body = self.request_size - 4  # the frame header is not part of the body
        if type(max_frame) is int and body > max_frame:
            self._error(
                "frame_too_large",
                f"a request of {body:,} bytes exceeds the server's max_frame ({max_frame:,});"
                " not sent",
            )
            return False
        return True

    # --- the loop ----------------------------------------------------------------

    def run(self, start: float, ctrl: Pipe | None) -> WorkerResult:
        """Send and receive until ``start + warmup + duration`` (or a stop message)."""
        spec = self.spec
        mono_ns = time.monotonic_ns
        t_start = int(start * 1e9)
        self.t_measure = t_start + int(spec.warmup * 1e9)
        self.t_end = self.t_measure + int(spec.duration * 1e9)
        ctrl_fd = -1
        if ctrl is not None:
            ctrl_fd = ctrl.fileno()
            self.poller.register(ctrl_fd, _IN)
        while mono_ns() < t_start:
            time.sleep(max(0.0, (t_start - mono_ns()) / 1e9))
        self.running = True
        now = mono_ns()
        raw = spec.mode == "raw"
        for c in list(self.conns.values()):
            if raw:
                self._refill_raw(c, now)
            else:
                self._refill_rpc(c, now)
        on_read = self._read_raw if raw else self._read_rpc
        conns = self.conns
        cpu0 = 0.0
        measuring = False
        next_tick = now + int(PROGRESS_INTERVAL * 1e9)
        stop = False
        while not stop:
            deadline = min(next_tick, self.t_end if measuring else self.t_measure)
            events = self.poller.poll((deadline - now) / 1e9)
            now = mono_ns()
            if not measuring and now >= self.t_measure:
                measuring = True
                cpu0 = time.process_time()
            for fd, mask in events:
                cn = conns.get(fd)
                if cn is None:
                    if fd == ctrl_fd:
                        stop = True
                    continue
                if mask & _OUT:
                    self._flush(cn)
                if mask & ~_OUT and cn.alive:
                    on_read(cn, now, measuring)
            if now >= next_tick:
                next_tick = now + int(PROGRESS_INTERVAL * 1e9)
                if ctrl is not None:
                    with contextlib.suppress(OSError):
                        ctrl.send(("progress", self.completed, sum(self.errors.values())))
            if now >= self.t_end or not self.alive:
                break
        end = min(now, self.t_end)
        res = self.res
        if measuring:
            res.window_s = max(0.0, (end - self.t_measure) / 1e9)
            res.cpu_s = time.process_time() - cpu0
        res.hist = {i: n for i, n in enumerate(self.hist) if n}
        res.errors = dict(self.errors)
        res.messages = [list(pair) for pair in self.messages]
        res.connections_open = sum(1 for c in conns.values() if c.alive)
        for c in conns.values():
            c.sock.close()
        return res

    # --- I/O helpers -------------------------------------------------------------

    def _error(self, code: str, message: str | None = None) -> None:
        """Count an error; keep its message if it is among the first few distinct ones."""
        self.errors[code] += 1
        if message is not None and len(self.messages) < MAX_MESSAGES:
            self.messages.setdefault((code, _short(message)), None)

    def _lose(self, c: _Conn, why: str = "connection_lost", detail: str | None = None) -> None:
        if not c.alive:
            return
        c.alive = False
        self.alive -= 1
        with contextlib.suppress(OSError, KeyError, ValueError):
            self.poller.unregister(c.fd)
        if why == "connection_lost" and c.feed is not None:
            # Read what the server sent before it closed: an error notice
            # (frame_too_large, ...) says why, and is what gets counted.
            self._drain(c)
            if c.notice:
                return
        self._error(why, detail)

    def _drain(self, c: _Conn) -> None:
        """Handle what is left to read on a connection that is over (bounded)."""
        for _ in range(64):
            try:
                data = c.sock.recv(RECV_SIZE)
            except OSError:
                return
            if not data:
                return
            try:
                self._rpc_messages(c, data, 0, False)
            except Exception:
                return

    def _send(self, c: _Conn, data: bytes) -> None:
        if c.out:
            c.out += data
            return
        try:
            n = c.sock.send(data)
        except _WOULD_BLOCK:
            n = 0
        except OSError as exc:
            self._lose(c, detail=_describe_os_error(exc))
            return
        if n < len(data):
            c.out += memoryview(data)[n:]
            self.poller.modify(c.fd, _IN | _OUT)

    def _flush(self, c: _Conn) -> None:
        if not c.alive:
            return
        try:
            n = c.sock.send(c.out)
        except _WOULD_BLOCK:
            return
        except OSError as exc:
            self._lose(c, detail=_describe_os_error(exc))
            return
        del c.out[:n]
        if not c.out:
            self.poller.modify(c.fd, _IN)

    def _recv(self, c: _Conn) -> bytes | None:
        try:
            data = c.sock.recv(RECV_SIZE)
            if self.tls:
                # One recv decrypts one TLS record; take what else OpenSSL holds
                # now, since epoll only knows about the bytes still in the kernel.
                while data and c.sock.pending():  # type: ignore[attr-defined]
                    data += c.sock.recv(RECV_SIZE)
        except _WOULD_BLOCK:
            return None
        except OSError as exc:
            self._lose(c, detail=_describe_os_error(exc))
            return None
        if not data:
            self._lose(c, detail="the server closed the connection")
            return None
        return data

    # --- msgpack-rpc (framed or stream) -----------------------------------------

    def _refill_rpc(self, c: _Conn, now: int) -> None:
        k = self.spec.pipeline - len(c.inflight)
        if k <= 0 or not c.alive:
            return
        msgid = c.next_id
        if msgid + k > MAX_MSGID:
            msgid = 0
        c.next_id = msgid + k
        ids = range(msgid, msgid + k)
        c.inflight.update(dict.fromkeys(ids, now))
        args = self.template[: 3 * k]
        args[1::3] = ids
        pack = self.packers.get(k)
        if pack is None:
            pack = self.packers[k] = struct.Struct(">" + self.one * k).pack
        self._send(c, pack(*args))

    def _read_rpc(self, c: _Conn, now: int, measuring: bool) -> None:
        data = self._recv(c)
        if data is None:
            return
        try:
            self._rpc_messages(c, data, now, measuring)
        except Exception as exc:  # undecodable stream: it cannot be resynchronised
            self._lose(c, "bad_message", str(exc) or type(exc).__name__)
            return
        if now < self.t_end:
            self._refill_rpc(c, now)

    def _rpc_messages(self, c: _Conn, data: bytes, now: int, measuring: bool) -> None:
        """Match the responses in ``data`` to their requests; count errors and completions."""
        assert c.feed is not None
        pop = c.inflight.pop
        expected = self.expected
        check = self.check
        sent_times: list[int] = []
        keep = sent_times.append
        for msg in c.feed(data):
            if type(msg) is not list or len(msg) != 4 or msg[0] != 1:
                self._other_message(msg, c)
                continue
            _, msgid, err, result = msg
            sent = pop(msgid, None)
            if sent is None:
                self._error("unknown_msgid", f"a response to msgid {msgid!r}, not in flight")
            elif err is not None:
                self._server_error(err)
            elif check and result != expected:
                self._error("wrong_result", f"got {_short(repr(result))}")
            else:
                keep(sent)
        if sent_times:
            self.completed += len(sent_times)
            if measuring and now < self.t_end:
                # Requests sent by one refill share their send time: group them.
                first = sent_times[0]
                if sent_times.count(first) == len(sent_times):
                    self._record(now, [(first, len(sent_times))])
                else:
                    self._record(now, list(collections.Counter(sent_times).items()))

    def _record(self, now: int, groups: list[tuple[int, int]]) -> None:
        """Count completions inside the measured window: (send time, how many) pairs."""
        res = self.res
        hist = self.hist
        for sent, k in groups:
            lat = now - sent
            res.requests += k
            hist[bucket_of(lat)] += k
            res.lat_sum_ns += lat * k
            if lat > res.lat_max_ns:
                res.lat_max_ns = lat

    def _server_error(self, err: Any) -> None:
        """Count an error response's (or notice's) code, keeping its message."""
        if type(err) is dict:
            code, message = err.get("code"), err.get("message")
            self._error(code if type(code) is str else "error", str(message))
        else:  # a plain msgpack-rpc peer's bare error object
            self._error("error", repr(err))

    def _other_message(self, msg: Any, c: _Conn) -> None:
        """Anything but a response: notifications are skipped, error notices counted."""
        if type(msg) is list and len(msg) == 3 and msg[0] == 2:
            if msg[1] == "error":
                params = msg[2]
                self._server_error(params[0] if type(params) is list and params else None)
                c.notice = True
            return
        # A frame that is not valid msgpack (a ProtocolViolation) or not a message.
        self._error("bad_message", f"not a message: {_short(repr(msg))}")

    # --- raw echo ----------------------------------------------------------------

    def _refill_raw(self, c: _Conn, now: int) -> None:
        k = self.spec.pipeline - c.pending
        if k <= 0 or not c.alive:
            return
        c.sent.append([now, k])
        c.pending += k
        batch = self.raw_batches.get(k)
        if batch is None:
            batch = self.raw_batches[k] = self.payload * k
        self._send(c, batch)

    def _read_raw(self, c: _Conn, now: int, measuring: bool) -> None:
        data = self._recv(c)
        if data is None:
            return
        size = self.spec.size
        n = len(data)
        if self.spec.verify:
            off = c.rx % size
            if data != self.pattern[off : off + n]:
                self._error("wrong_result", "the bytes echoed differ from those sent")
        c.rx += n
        k = c.rx // size - c.done
        if k > c.pending:
            self._error("unexpected_data", "more bytes came back than were sent")
            self._lose(c, "bad_message", "unexpected data")
            return
        if k:
            c.done += k
            c.pending -= k
            self.completed += k
            groups: list[tuple[int, int]] = []
            sent = c.sent
            while k:
                batch = sent[0]
                taken = min(k, batch[1])
                groups.append((batch[0], taken))
                k -= taken
                batch[1] -= taken
                if not batch[1]:
                    sent.popleft()
            if measuring and now < self.t_end:
                self._record(now, groups)
            if now < self.t_end:
                self._refill_raw(c, now)


def _short(text: str) -> str:
    """``text`` on one line and at most MAX_MESSAGE_CHARS long."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def _describe_os_error(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def worker_main(spec: WorkerSpec, ctrl: Pipe) -> None:
    """Entry point of a worker process: connect, report ready, wait for go, run, report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and sends "stop"
    worker = Worker(spec)
    try:
        worker.connect()
        ctrl.send(("ready", dict(worker.errors)))
        # Bounded wait for the start signal; a parent that went away ends us.
        if not ctrl.poll(spec.connect_timeout * 4 + 30):
            return
        msg = ctrl.recv()
        if msg[0] != "go":
            return
        result = worker.run(msg[1], ctrl)
        ctrl.send(("done", result.__dict__))
    except (BrokenPipeError, EOFError, ConnectionResetError):
        pass
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
