"""IPv4 header and L4 (fake TCP, UDP, ICMP echo) codecs: known vectors, round trips, fuzzing."""

from __future__ import annotations

import contextlib
import re
import socket
import struct
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import ProtocolError
from sidecar.proto import l4
from sidecar.proto.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, build_ipv4, checksum, parse_ipv4
from sidecar.proto.l4 import (
    ICMP_ECHO_REQUEST,
    TCP_ACK,
    TCP_SYN,
    IcmpHeader,
    TcpSegment,
    UdpHeader,
    build_icmp_echo,
    build_tcp,
    build_tcp_ack_ipv4,
    build_udp,
    parse_icmp,
    parse_raw,
    parse_tcp,
    parse_udp,
)

SRC, DST = socket.inet_aton("10.77.0.2"), socket.inet_aton("10.77.0.1")
OTHER = socket.inet_aton("10.77.0.3")
FAST = settings(max_examples=80, deadline=None)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
addr = st.binary(min_size=4, max_size=4)


def reference_checksum(data: bytes) -> int:
    """RFC 1071 word by word with end-around carry."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# --- checksum -------------------------------------------------------------------------------------


def test_checksum_rfc1071_example() -> None:
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


@FAST
@given(st.binary(max_size=300) | st.sampled_from([b"", b"\0" * 8, b"\xff" * 8, b"\xff\xff\0\0", b"\x01"]))
def test_checksum_matches_reference(data: bytes) -> None:
    assert checksum(data) == reference_checksum(data)


# --- IPv4 -----------------------------------------------------------------------------------------


def test_ipv4_known_header() -> None:
    """The classic example header 4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7."""
    src, dst = socket.inet_aton("192.168.0.1"), socket.inet_aton("192.168.0.199")
    header = build_ipv4(src, dst, PROTO_UDP, 0x73 - 20, ident=0)
    assert header.hex() == "45000073000040004011b861c0a80001c0a800c7"


@FAST
@given(
    addr, addr, st.sampled_from([1, 6, 17]), u16, st.integers(1, 255), st.booleans(), st.binary(max_size=64)
)
def test_ipv4_round_trip(
    src: bytes, dst: bytes, proto: int, ident: int, ttl: int, df: bool, body: bytes
) -> None:
    packet = build_ipv4(src, dst, proto, len(body), ident, ttl=ttl, df=df) + body
    header, payload = parse_ipv4(packet + b"\0" * 6)  # link-layer padding is cut by total length
    assert header[:6] == (src, dst, proto, ident, ttl, df)
    assert (header.total_length, header.header_len, bytes(payload)) == (len(packet), 20, body)


def with_checksum(header: bytearray) -> bytes:
    header[10:12] = b"\0\0"
    header[10:12] = checksum(header).to_bytes(2, "big")
    return bytes(header)


def test_ipv4_options_are_skipped() -> None:
    base = bytearray(build_ipv4(SRC, DST, PROTO_UDP, 4 + 3, ident=7))
    base[0] = 0x46
    header = with_checksum(base + b"\x01\x01\x01\x00")
    parsed, payload = parse_ipv4(header + b"abc")
    assert parsed.header_len == 24 and bytes(payload) == b"abc"


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0, 0x65, "version"),
        (0, 0x44, "IHL"),
        (2, 0xFF, "total length"),
        (6, 0x60, "fragments"),  # DF + MF
        (7, 0x01, "fragments"),  # offset 1
    ],
)
def test_ipv4_rejects(offset: int, value: int, message: str) -> None:
    packet = bytearray(build_ipv4(SRC, DST, PROTO_UDP, 8, ident=1) + bytes(8))
    packet[offset] = value
    with pytest.raises(ProtocolError, match=message):
        parse_ipv4(with_checksum(packet[:20]) + bytes(packet[20:]))


def test_ipv4_rejects_bad_checksum_and_short() -> None:
    packet = bytearray(build_ipv4(SRC, DST, PROTO_UDP, 0, ident=1))
    packet[11] ^= 1
    with pytest.raises(ProtocolError, match="checksum"):
        parse_ipv4(packet)
    with pytest.raises(ProtocolError, match="shorter"):
        parse_ipv4(packet[:19])
    with pytest.raises(ProtocolError, match="too large"):
        build_ipv4(SRC, DST, PROTO_UDP, 0xFFFF, ident=1)


# --- TCP ------------------------------------------------------------------------------------------


def test_tcp_options_exact_bytes() -> None:
    common = dict(sport=1, dport=2, seq=3, ack=4, window=40960, tsval=0x11223344, tsecr=0x55667788)
    syn = build_tcp(SRC, DST, flags=TCP_SYN, **common)
    assert syn[12] >> 4 == 10 and syn[20:].hex() == "020405b40402080a112233445566778801030305"
    ack = build_tcp(SRC, DST, flags=TCP_ACK, payload=b"xyz", **common)
    assert ack[12] >> 4 == 8 and ack[20:32].hex() == "0101080a1122334455667788" and ack[32:] == b"xyz"


@FAST
@given(
    u16,
    u16,
    u32,
    u32,
    st.sampled_from([TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK]),
    u16,
    u32,
    u32,
    st.binary(max_size=99),
)
def test_tcp_round_trip(
    sport: int, dport: int, seq: int, ack: int, flags: int, window: int, tsval: int, tsecr: int, body: bytes
) -> None:
    segment = build_tcp(
        SRC, DST, sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=window,
        tsval=tsval, tsecr=tsecr, payload=body,
    )  # fmt: skip
    header, payload = parse_tcp(SRC, DST, segment)
    assert header == TcpSegment(
        sport, dport, seq, ack, flags, window, tsval, tsecr, 40 if flags & TCP_SYN else 32, True
    )
    assert bytes(payload) == body
    assert not parse_tcp(SRC, OTHER, segment)[0].checksum_ok  # the pseudo-header counts


@FAST
@given(addr, addr, u16, st.integers(1, 255), u16, u16, u32, u32, u16, u32, u32, st.binary(max_size=1800))
def test_fused_ack_packet_matches_the_two_builders(
    src: bytes, dst: bytes, ident: int, ttl: int, sport: int, dport: int, seq: int, ack: int, window: int,
    tsval: int, tsecr: int, body: bytes,
) -> None:
    segment = build_tcp(
        src, dst, sport=sport, dport=dport, seq=seq, ack=ack, flags=TCP_ACK, window=window,
        tsval=tsval, tsecr=tsecr, payload=body,
    )  # fmt: skip
    expected = build_ipv4(src, dst, PROTO_TCP, len(segment), ident, ttl) + segment
    assert build_tcp_ack_ipv4(src, dst, ident, ttl, sport, dport, seq, ack, window, tsval, tsecr, body) == expected


def raw_tcp(options: bytes) -> bytes:
    offset = (20 + len(options)) // 4 << 4
    return struct.pack("!HHIIBBHHH", 1, 2, 3, 4, offset, TCP_ACK, 5, 0, 0) + options


@pytest.mark.parametrize(
    ("options", "ts"),
    [
        (b"", (None, None)),
        (bytes.fromhex("080a0000000100000002") + b"\x01\x00", (1, 2)),
        (bytes.fromhex("020405b4010303050402080a00000009000000070000"), (9, 7)),  # other kinds skipped
        (bytes.fromhex("00080a000000010000000200"), (None, None)),  # EOL ends the list
        (bytes.fromhex("1e04abcd"), (None, None)),  # unknown kind with a length
    ],
)
def test_tcp_option_parsing(options: bytes, ts: tuple[int | None, int | None]) -> None:
    header, _ = parse_tcp(SRC, DST, raw_tcp(options))
    assert (header.tsval, header.tsecr) == ts
    assert not header.checksum_ok  # raw_tcp leaves it zero: reported, not raised


@pytest.mark.parametrize("options", ["08000000", "08010000", "080c000000000000", "01010108"])
def test_tcp_malformed_options(options: str) -> None:
    with pytest.raises(ProtocolError, match="option"):
        parse_tcp(SRC, DST, raw_tcp(bytes.fromhex(options)))


def test_tcp_bad_offset() -> None:
    segment = bytearray(raw_tcp(b""))
    segment[12] = 0x40
    with pytest.raises(ProtocolError, match="data offset"):
        parse_tcp(SRC, DST, segment)
    with pytest.raises(ProtocolError, match="shorter"):
        parse_tcp(SRC, DST, segment[:19])


# --- UDP ------------------------------------------------------------------------------------------


@FAST
@given(u16, u16, st.binary(max_size=99))
def test_udp_round_trip(sport: int, dport: int, body: bytes) -> None:
    header, payload = parse_udp(SRC, DST, build_udp(SRC, DST, sport, dport, body))
    assert header == UdpHeader(sport, dport) and bytes(payload) == body


def test_udp_zero_checksum_is_sent_as_ffff() -> None:
    head = b"udp2raw!"
    fill = build_udp(SRC, DST, 1, 2, head + b"\0\0")[6:8]  # the two extra bytes cancel the sum
    datagram = build_udp(SRC, DST, 1, 2, head + fill)
    assert datagram[6:8] == b"\xff\xff"
    assert bytes(parse_udp(SRC, DST, datagram)[1]) == head + fill


def test_udp_rejects() -> None:
    datagram = bytearray(build_udp(SRC, DST, 1, 2, b"payload"))
    with pytest.raises(ProtocolError, match="checksum"):
        parse_udp(SRC, DST, datagram[:-1] + b"X")
    datagram[5] = 99
    with pytest.raises(ProtocolError, match="length"):
        parse_udp(SRC, DST, datagram)
    with pytest.raises(ProtocolError, match="shorter"):
        parse_udp(SRC, DST, datagram[:7])


# --- ICMP -----------------------------------------------------------------------------------------


@FAST
@given(st.sampled_from([0, 8]), u16, u16, st.binary(max_size=99))
def test_icmp_round_trip(icmp_type: int, ident: int, seq: int, body: bytes) -> None:
    header, payload = parse_icmp(build_icmp_echo(icmp_type, ident, seq, body))
    assert header == IcmpHeader(icmp_type, 0, ident, seq) and bytes(payload) == body


def test_icmp_rejects() -> None:
    message = build_icmp_echo(ICMP_ECHO_REQUEST, 1, 2, b"ping")
    with pytest.raises(ProtocolError, match="checksum"):
        parse_icmp(message[:-1] + b"X")
    with pytest.raises(ProtocolError, match="shorter"):
        parse_icmp(message[:7])


# --- whole packets --------------------------------------------------------------------------------


def sample_packets() -> list[bytes]:
    tcp = build_tcp(
        SRC, DST, sport=1, dport=2, seq=3, ack=4, flags=TCP_ACK, window=5, tsval=6, tsecr=7, payload=b"t"
    )
    udp = build_udp(SRC, DST, 1, 2, b"u" * 30)
    icmp = build_icmp_echo(ICMP_ECHO_REQUEST, 1, 2, b"i" * 17)
    return [
        build_ipv4(SRC, DST, proto, len(l4), ident=9) + l4
        for proto, l4 in ((PROTO_TCP, tcp), (PROTO_UDP, udp), (PROTO_ICMP, icmp))
    ]


def test_parse_raw_dispatch() -> None:
    kinds = [type(parse_raw(packet).l4) for packet in sample_packets()]
    assert kinds == [TcpSegment, UdpHeader, IcmpHeader]
    other = bytearray(build_ipv4(SRC, DST, 47, 0, ident=1))
    with pytest.raises(ProtocolError, match="protocol 47"):
        parse_raw(other)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_parse_raw_fuzz(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_raw(data)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sample_packets()),
    st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)), max_size=4),
)
def test_parse_raw_mutations(packet: bytes, flips: list[tuple[int, int]]) -> None:
    mutated = bytearray(packet)
    for pos, mask in flips:
        mutated[pos % len(mutated)] ^= mask
    with contextlib.suppress(ProtocolError):
        parse_raw(mutated)


def general_parse(packet: bytes) -> tuple:
    """parse_raw with its fast path for ACK segments switched off."""
    with mock.patch.object(l4, "_parse_tcp_ack_ipv4", return_value=None):
        raw = parse_raw(packet)
    return raw.ip, raw.l4, bytes(raw.payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=52, max_size=80), st.lists(st.tuples(st.integers(0, 79), st.integers(1, 255)), max_size=3))
def test_parse_raw_ack_fast_path_agrees_with_the_codecs(body: bytes, flips: list[tuple[int, int]]) -> None:
    """Valid, corrupted (bad checksums, odd lengths, fragments) and foreign ACK segments: same answer."""
    packet = bytearray(build_tcp_ack_ipv4(SRC, DST, 7, 64, 1, 2, 3, 4, 5, 6, 8, body))
    for pos, mask in flips:
        packet[pos % len(packet)] ^= mask
    try:
        expected = general_parse(bytes(packet))
    except ProtocolError as exc:
        with pytest.raises(ProtocolError, match=re.escape(str(exc))):
            parse_raw(packet)
        return
    got = parse_raw(packet)
    assert (got.ip, got.l4, bytes(got.payload)) == expected
