"""The PROXY protocol parser (v1 text, v2 binary): pure bytes, no Trio.

The encoders here are written from HAProxy's doc/proxy-protocol.txt, apart
from the parser; the spec's own examples and the exact bytes HAProxy sends
(tests/test_haproxy.py) pin both to the real thing.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_echo.proxy_protocol import (
    DEFAULT_MAX_V2_SIZE,
    V1_MAX_SIZE,
    V2_SIGNATURE,
    Command,
    Family,
    ProxyHeader,
    ProxyHeaderParser,
    ProxyViolation,
    Transport,
)

from helpers.proxy import inet, unix, v1, v2

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse(data: bytes, chunks: list[bytes] | None = None, **kw: int) -> tuple[object, bytes]:
    """Feed ``data`` (whole, or as ``chunks``); return (verdict, trailing data)."""
    parser = ProxyHeaderParser(**kw)
    verdict = None
    for chunk in chunks if chunks is not None else [data]:
        assert verdict is None, "fed after a verdict"
        verdict = parser.feed(chunk)
    return verdict, parser.trailing_data


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[i:j] for i, j in itertools.pairwise(bounds) if j > i]


# --- valid headers -------------------------------------------------------------------------

VALID = [
    (
        v1("TCP4", "192.0.2.1", "198.51.100.2", 56324, 443),
        ProxyHeader(
            1,
            Command.PROXY,
            Family.INET,
            Transport.STREAM,
            ("192.0.2.1", 56324),
            ("198.51.100.2", 443),
            size=44,
        ),
    ),
    (
        v1("TCP6", "2001:db8::1", "::1", 0, 65535),
        ProxyHeader(
            1, Command.PROXY, Family.INET6, Transport.STREAM, ("2001:db8::1", 0), ("::1", 65535)
        ),
    ),
    (
        b"PROXY UNKNOWN\r\n",
        ProxyHeader(1, Command.PROXY, Family.UNSPEC, Transport.STREAM, None, None, size=15),
    ),
    (
        v2(addresses=inet("10.1.2.3", "10.0.0.1", 40000, 7000)),
        ProxyHeader(
            2,
            Command.PROXY,
            Family.INET,
            Transport.STREAM,
            ("10.1.2.3", 40000),
            ("10.0.0.1", 7000),
            size=28,
        ),
    ),
    (
        v2(family=2, addresses=inet("2001:db8::7", "fe80::1", 1, 2)),
        ProxyHeader(
            2, Command.PROXY, Family.INET6, Transport.STREAM, ("2001:db8::7", 1), ("fe80::1", 2)
        ),
    ),
    (
        v2(family=3, addresses=unix(b"/run/client.sock", b"\x00abstract")),
        ProxyHeader(
            2, Command.PROXY, Family.UNIX, Transport.STREAM, "/run/client.sock", "@abstract"
        ),
    ),
    (
        # LOCAL (a balancer's health check): no addresses, the socket's are used.
        v2(command=0, family=0, transport=0),
        ProxyHeader(2, Command.LOCAL, Family.UNSPEC, Transport.UNSPEC, None, None, size=16),
    ),
    (
        # LOCAL with an address block: skipped, as the spec says.
        v2(command=0, addresses=inet("1.2.3.4", "5.6.7.8", 1, 2)),
        ProxyHeader(2, Command.LOCAL, Family.INET, Transport.STREAM, None, None),
    ),
    (
        # AF_UNSPEC under PROXY: unknown origin, the socket's addresses are used.
        v2(family=0, transport=0, tlvs=[(0x04, b"")]),
        ProxyHeader(2, Command.PROXY, Family.UNSPEC, Transport.UNSPEC, None, None, ((4, b""),)),
    ),
    (
        v2(
            addresses=inet("192.0.2.9", "192.0.2.10", 5, 6),
            tlvs=[(0x05, b"unique-id"), (0x02, b"example.com")],
        ),
        ProxyHeader(
            2,
            Command.PROXY,
            Family.INET,
            Transport.STREAM,
            ("192.0.2.9", 5),
            ("192.0.2.10", 6),
            ((5, b"unique-id"), (2, b"example.com")),
        ),
    ),
]


def _same(got: object, want: ProxyHeader, data: bytes) -> None:
    assert isinstance(got, ProxyHeader), got
    assert got.size == len(data)
    fields = ("version", "command", "family", "transport", "source", "destination", "tlvs")
    for name in fields:
        assert getattr(got, name) == getattr(want, name), name


@pytest.mark.parametrize(("data", "want"), VALID)
def test_valid_header_split_at_every_byte(data: bytes, want: ProxyHeader) -> None:
    after = b"\x00TECHO\x00\x02rest"
    for cut in range(len(data) + len(after) + 1):
        whole = data + after
        chunks = [whole[:cut], whole[cut:]] if 0 < cut < len(whole) else [whole]
        verdict, trailing = _feed_until_verdict(chunks)
        _same(verdict, want, data)
        assert trailing == after


def _feed_until_verdict(chunks: list[bytes]) -> tuple[object, bytes]:
    parser = ProxyHeaderParser()
    for i, chunk in enumerate(chunks):
        verdict = parser.feed(chunk)
        if verdict is not None:
            # The bytes after the header: the rest of this chunk, then the later chunks.
            return verdict, parser.trailing_data + b"".join(chunks[i + 1 :])
    return None, b""


@pytest.mark.parametrize(("data", "want"), VALID)
def test_valid_header_byte_at_a_time_decides_on_its_last_byte(
    data: bytes, want: ProxyHeader
) -> None:
    parser = ProxyHeaderParser()
    for i, byte in enumerate(data):
        verdict = parser.feed(bytes([byte]))
        if i < len(data) - 1:
            assert verdict is None, (i, verdict)
    _same(verdict, want, data)
    assert parser.trailing_data == b""


def test_client_names_the_source() -> None:
    verdicts = [parse(data)[0] for data, _ in VALID]
    clients = [v.client for v in verdicts if isinstance(v, ProxyHeader)]
    assert clients == [
        "192.0.2.1:56324",
        "2001:db8::1:0",
        None,
        "10.1.2.3:40000",
        "2001:db8::7:1",
        "/run/client.sock",
        None,
        None,
        None,
        "192.0.2.9:5",
    ]


def test_the_specs_examples() -> None:
    """The examples in proxy-protocol.txt, and the longest v1 line it allows."""
    for line in (
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff"
        b":ffff:ffff 65535 65535\r\n",
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff"
        b":ffff:ffff 65535 65535\r\n",
    ):
        verdict, trailing = parse(line + b"x")
        assert isinstance(verdict, ProxyHeader), (line, verdict)
        assert verdict.size == len(line) and trailing == b"x"
    assert len(line) == V1_MAX_SIZE


def test_v1_ipv6_spellings_are_normalised() -> None:
    verdict, _ = parse(b"PROXY TCP6 2001:0DB8:0:0:0:0:0:1 ::FFFF:192.0.2.1 1 2\r\n")
    assert isinstance(verdict, ProxyHeader)
    assert verdict.source == ("2001:db8::1", 1)
    assert verdict.destination == ("::ffff:c000:201", 2)


# --- hypothesis: any valid header, any trailing bytes, any split ---------------------------

ports = st.integers(0, 65535)


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, tuple[str, int] | str | None]:
    kind = draw(st.sampled_from(["v1-4", "v1-6", "v1-unknown", "v2-4", "v2-6", "v2-unix"]))
    sport, dport = draw(ports), draw(ports)
    tlvs = draw(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=4))
    if kind in ("v1-4", "v2-4"):
        src, dst = draw(st.ip_addresses(v=4)), draw(st.ip_addresses(v=4))
    else:
        src, dst = draw(st.ip_addresses(v=6)), draw(st.ip_addresses(v=6))
    if kind == "v1-4":
        return v1("TCP4", str(src), str(dst), sport, dport), (str(src), sport)
    if kind == "v1-6":
        return v1("TCP6", str(src), str(dst), sport, dport), (str(src), sport)
    if kind == "v1-unknown":
        return v1("UNKNOWN"), None
    if kind == "v2-4":
        return v2(addresses=inet(str(src), str(dst), sport, dport), tlvs=tlvs), (str(src), sport)
    if kind == "v2-6":
        data = v2(family=2, addresses=inet(str(src), str(dst), sport, dport), tlvs=tlvs)
        return data, (str(src), sport)
    path = draw(st.binary(min_size=1, max_size=107).filter(lambda p: b"\x00" not in p))
    data = v2(family=3, addresses=unix(path, b"/srv"), tlvs=tlvs)
    return data, path.decode("utf-8", "backslashreplace")


@PROPERTY
@given(headers(), st.binary(max_size=64), st.lists(st.integers(0, 400), max_size=6))
def test_any_valid_header_any_split(
    header: tuple[bytes, object], after: bytes, cuts: list[int]
) -> None:
    data, source = header
    verdict, trailing = _feed_until_verdict(splits(data + after, cuts))
    assert isinstance(verdict, ProxyHeader)
    assert verdict.source == source
    assert verdict.size == len(data)
    assert trailing == after


@PROPERTY
@given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=6))
def test_any_bytes_never_raise_and_decide_within_the_bound(data: bytes, cuts: list[int]) -> None:
    """Garbage: a verdict (never an exception), and never more buffered than the limits."""
    for prefix in (b"", V2_SIGNATURE + b"\x21", b"PROXY "):
        whole = prefix + data
        parser = ProxyHeaderParser(max_v2_size=64)
        fed = 0
        for chunk in splits(whole, cuts):
            verdict = parser.feed(chunk)
            fed += len(chunk)
            if verdict is not None:
                assert isinstance(verdict, ProxyHeader | ProxyViolation)
                break
            assert fed < max(V1_MAX_SIZE, 64), "undecided past every limit"


@PROPERTY
@given(headers(), st.integers(0, 200), st.integers(0, 255))
def test_a_corrupted_byte_is_a_violation_or_a_valid_header(
    header: tuple[bytes, object], index: int, value: int
) -> None:
    data = bytearray(header[0])
    data[index % len(data)] = value
    # Enough bytes after it that even a length field corrupted upwards is satisfied.
    verdict, _ = parse(bytes(data) + b"\r\n" + bytes(DEFAULT_MAX_V2_SIZE))
    assert isinstance(verdict, ProxyHeader | ProxyViolation)


# --- malformed -----------------------------------------------------------------------------

INVALID = {
    "no header at all": b"\x00TECHO\x00\x01",
    "raw text": b"hello\n",
    "v1 typo": b"PROXZ TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1 lower case": b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1 unknown protocol": b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    "v1 missing field": b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    "v1 extra field": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    "v1 double space": b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
    "v1 LF only": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
    "v1 leading zero address": b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
    "v1 address out of range": b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
    "v1 v6 address under TCP4": b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
    "v1 v4 address under TCP6": b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
    "v1 scoped v6": b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
    "v1 port too big": b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    "v1 port leading zero": b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
    "v1 negative port": b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    "v1 unicode digits": "PROXY TCP4 1.2.3.4 5.6.7.8 \u0661 2\r\n".encode(),
    "v1 not ascii": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xff\r\n",
    "v1 no CRLF in 107 bytes": b"PROXY UNKNOWN " + b"x" * 93 + b"\r\n",
    "v2 version 1": v2(version=1, addresses=inet("1.2.3.4", "5.6.7.8", 1, 2)),
    "v2 version 3": v2(version=3, addresses=inet("1.2.3.4", "5.6.7.8", 1, 2)),
    "v2 command 2": v2(command=2, addresses=inet("1.2.3.4", "5.6.7.8", 1, 2)),
    "v2 family 4": v2(family=4, addresses=inet("1.2.3.4", "5.6.7.8", 1, 2)),
    "v2 transport 3": v2(transport=3, addresses=inet("1.2.3.4", "5.6.7.8", 1, 2)),
    "v2 short inet block": v2(addresses=inet("1.2.3.4", "5.6.7.8", 1, 2)[:11]),
    "v2 inet6 block too short": v2(family=2, addresses=inet("1.2.3.4", "5.6.7.8", 1, 2)),
    "v2 unix block too short": v2(family=3, addresses=b"/x".ljust(200, b"\x00")),
    "v2 truncated TLV": v2(addresses=inet("1.2.3.4", "5.6.7.8", 1, 2) + b"\x01\x00"),
    "v2 TLV overrun": v2(addresses=inet("1.2.3.4", "5.6.7.8", 1, 2) + b"\x01\x00\x05abc"),
    "v2 too long": V2_SIGNATURE + b"\x21\x11" + struct.pack(">H", DEFAULT_MAX_V2_SIZE - 15),
    "v2 signature typo": V2_SIGNATURE[:11] + b"\x0b" + b"\x21\x11\x00\x00",
}


@pytest.mark.parametrize("name", INVALID)
def test_malformed_is_a_violation_whole_and_byte_at_a_time(name: str) -> None:
    data = INVALID[name]
    verdict, _ = parse(data)
    assert isinstance(verdict, ProxyViolation), verdict
    parser = ProxyHeaderParser()
    for i in range(len(data)):
        verdict = parser.feed(data[i : i + 1])
        if verdict is not None:
            break
    assert isinstance(verdict, ProxyViolation), verdict


def test_a_wrong_first_byte_decides_at_once() -> None:
    """A connection without a header is refused on its first byte, not after a timeout."""
    for first in (b"\x00", b"G", b"\x94", b"\r\n\r\n\x01"):
        assert isinstance(parse(first)[0], ProxyViolation)
    for prefix in (b"P", b"PROX", b"\r", V2_SIGNATURE, V2_SIGNATURE + b"\x21\x11\x00"):
        assert parse(prefix)[0] is None


def test_v2_length_limit_is_checked_on_the_length_field() -> None:
    """A huge announced length is refused before its body arrives."""
    header = V2_SIGNATURE + b"\x21\x11\xff\xff"
    verdict, _ = parse(header)
    assert isinstance(verdict, ProxyViolation) and "exceeds" in verdict.message
    # The whole format's maximum passes with a raised limit.
    body = (
        inet("1.2.3.4", "5.6.7.8", 1, 2)
        + b"\x04"
        + struct.pack(">H", 65535 - 15)
        + bytes(65535 - 15)
    )
    verdict, _ = parse(header + body, max_v2_size=65551)
    assert isinstance(verdict, ProxyHeader) and verdict.size == 65551


def test_exactly_at_the_limits() -> None:
    at_limit = v2(addresses=inet("1.2.3.4", "5.6.7.8", 1, 2), tlvs=[(4, bytes(100 - 12 - 3))])
    assert len(at_limit) == 116
    assert isinstance(parse(at_limit, max_v2_size=116)[0], ProxyHeader)
    assert isinstance(parse(at_limit, max_v2_size=115)[0], ProxyViolation)
    line = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(line) == V1_MAX_SIZE
    assert isinstance(parse(line)[0], ProxyHeader)
    assert isinstance(parse(line[:-2] + b"xx\r\n")[0], ProxyViolation)


def test_feeding_after_a_verdict_is_an_error() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY UNKNOWN\r\n") is not None
    with pytest.raises(RuntimeError):
        parser.feed(b"x")
    with pytest.raises(ValueError):
        ProxyHeaderParser(max_v2_size=15)
