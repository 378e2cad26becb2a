"""The L4 headers udp2raw's raw modes write and read: fake TCP (with its exact options), UDP, ICMP echo.

Spec: udp2raw.md section 2. TCP/UDP checksums cover the pseudo-header; ICMP's covers the message only.
Builders return header + payload; parsers return (header fields, payload view) and raise ProtocolError.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from sidecar.errors import ProtocolError
from sidecar.proto.ipv4 import (
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    IPv4Header,
    checksum,
    fold,
    ones_sum,
    parse_ipv4,
    pseudo_header_sum,
)

Buffer = bytes | bytearray | memoryview

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8

UDP_HEADER_LEN = 8
ICMP_HEADER_LEN = 8

_TCP = struct.Struct("!HHIIBBHHH")
# IPv4 (no options) + TCP + NOP NOP TS: every post-handshake udp2raw segment, packed in one call
_IP_TCP_ACK = struct.Struct("!BBHHHBBH4s4sHHIIBBHHHIII")
_TS = struct.Struct("!II")
_U16 = struct.Struct("!H")
_UDP = struct.Struct("!HHHH")
_ICMP = struct.Struct("!BBHHH")

# Spec 2.5: SYN/SYN-ACK carry MSS 1460, SACK-permitted, TS, NOP, WS 5; every other segment NOP NOP TS.
_SYN_OPTS_HEAD = bytes.fromhex("020405b40402080a")
_SYN_OPTS_TAIL = bytes.fromhex("01030305")
_ACK_OPTS_HEAD = bytes.fromhex("0101080a")
_ACK_OPTS_WORD = int.from_bytes(_ACK_OPTS_HEAD, "big")
_SYN_HEADER_LEN = 40
_ACK_HEADER_LEN = 32
_M32 = 0xFFFFFFFF
_DF, _FRAGMENT = 0x4000, 0x3FFF  # the DF flag; MF plus the fragment offset
# The constant parts of both checksums of an ACK segment: version/IHL, DF, protocol; data offset and
# ACK flag, the option kinds. A u32 field adds as itself: 2**16 == 1 (mod 0xffff), see ipv4.ones_sum.
_IP_SUM = 0x4500 + _DF + PROTO_TCP
_TCP_SUM = PROTO_TCP + (_ACK_HEADER_LEN << 10 | TCP_ACK) + _ACK_OPTS_WORD


class TcpSegment(NamedTuple):
    """A parsed TCP header; tsval/tsecr are None without a TS option. A bad checksum does not raise:
    udp2raw only logs it and processes the segment anyway (spec 2.1)."""

    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    tsval: int | None
    tsecr: int | None
    header_len: int
    checksum_ok: bool


class UdpHeader(NamedTuple):
    sport: int
    dport: int


class IcmpHeader(NamedTuple):
    type: int
    code: int
    ident: int
    seq: int


class RawPacket(NamedTuple):
    """One received raw packet: its IPv4 header, its L4 header and the L4 payload (the udp2raw blob)."""

    ip: IPv4Header
    l4: TcpSegment | UdpHeader | IcmpHeader
    payload: memoryview


def build_tcp(
    src: bytes,
    dst: bytes,
    *,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    tsval: int,
    tsecr: int,
    payload: Buffer = b"",
) -> bytes:
    """A TCP segment exactly as udp2raw writes it: its option layout follows from the SYN flag."""
    ts = _TS.pack(tsval & 0xFFFFFFFF, tsecr & 0xFFFFFFFF)
    if flags & TCP_SYN:
        header_len, options = _SYN_HEADER_LEN, _SYN_OPTS_HEAD + ts + _SYN_OPTS_TAIL
    else:
        header_len, options = _ACK_HEADER_LEN, _ACK_OPTS_HEAD + ts
    head = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, header_len << 2, flags, window, 0, 0)
    header = bytearray(head + options)
    total = pseudo_header_sum(src, dst, PROTO_TCP, header_len + len(payload))
    # header_len is even, so the payload's words line up and the two sums simply add.
    _U16.pack_into(header, 16, fold(ones_sum(payload, ones_sum(header, total))))
    return bytes(header) + payload


def build_tcp_ack_ipv4(src: bytes, dst: bytes, ident: int, ttl: int, sport: int, dport: int, seq: int, ack: int,
                       window: int, tsval: int, tsecr: int, payload: Buffer) -> bytes:
    """The whole IPv4 packet of a non-SYN udp2raw segment (ACK flag, NOP NOP TS, DF, no IP options).

    Byte for byte what `build_ipv4(..., build_tcp(..., flags=TCP_ACK))` gives, in one pack: both
    checksums are sums of the field values (no header bytes to re-read) plus one pass over the payload.
    """
    seq, ack, tsval, tsecr = seq & _M32, ack & _M32, tsval & _M32, tsecr & _M32
    tcp_len = _ACK_HEADER_LEN + len(payload)
    addresses = int.from_bytes(src, "big") + int.from_bytes(dst, "big")
    ip_csum = fold(_IP_SUM + 20 + tcp_len + ident + (ttl << 8) + addresses)
    tcp_csum = fold(ones_sum(payload, _TCP_SUM + tcp_len + addresses + sport + dport + seq + ack + window + tsval
                             + tsecr))
    return _IP_TCP_ACK.pack(0x45, 0, 20 + tcp_len, ident, _DF, ttl, PROTO_TCP, ip_csum, src, dst, sport, dport,
                            seq, ack, _ACK_HEADER_LEN << 2, TCP_ACK, window, tcp_csum, 0, _ACK_OPTS_WORD, tsval,
                            tsecr) + payload


def _parse_tcp_options(options: memoryview) -> tuple[int | None, int | None]:
    """(tsval, tsecr) from TCP options: NOP and EOL understood, TS read, any other option skipped."""
    if len(options) == 12 and options[:4] == _ACK_OPTS_HEAD:
        return _TS.unpack_from(options, 4)  # the layout every non-SYN udp2raw segment uses
    tsval = tsecr = None
    pos, end = 0, len(options)
    while pos < end:
        kind = options[pos]
        if kind == 0:
            break
        if kind == 1:
            pos += 1
            continue
        if pos + 1 >= end or options[pos + 1] < 2 or pos + options[pos + 1] > end:
            raise ProtocolError("tcp: malformed option")
        if kind == 8 and options[pos + 1] == 10:
            tsval, tsecr = _TS.unpack_from(options, pos + 2)
        pos += options[pos + 1]
    return tsval, tsecr


def parse_tcp(src: bytes, dst: bytes, segment: Buffer) -> tuple[TcpSegment, memoryview]:
    """Split a TCP segment (the IP payload) into its header fields and payload."""
    view = memoryview(segment)
    if len(view) < 20:
        raise ProtocolError(f"tcp: {len(view)} bytes is shorter than a header")
    sport, dport, seq, ack, offset, flags, window, _csum, _urg = _TCP.unpack_from(view)
    header_len = (offset >> 4) * 4
    if not 20 <= header_len <= len(view):
        raise ProtocolError(f"tcp: data offset {header_len} outside 20..{len(view)}")
    tsval, tsecr = _parse_tcp_options(view[20:header_len])
    ok = checksum(view, pseudo_header_sum(src, dst, PROTO_TCP, len(view))) == 0
    header = TcpSegment(sport, dport, seq, ack, flags, window, tsval, tsecr, header_len, ok)
    return header, view[header_len:]


def build_udp(src: bytes, dst: bytes, sport: int, dport: int, payload: Buffer) -> bytes:
    """A UDP datagram with a correct checksum (0 is sent as 0xffff, RFC 768)."""
    length = UDP_HEADER_LEN + len(payload)
    header = _UDP.pack(sport, dport, length, 0)
    csum = fold(ones_sum(payload, ones_sum(header, pseudo_header_sum(src, dst, PROTO_UDP, length))))
    return _UDP.pack(sport, dport, length, csum or 0xFFFF) + payload


def parse_udp(src: bytes, dst: bytes, datagram: Buffer) -> tuple[UdpHeader, memoryview]:
    """Split a UDP datagram; its length field and checksum must be valid (udp2raw drops otherwise)."""
    view = memoryview(datagram)
    if len(view) < UDP_HEADER_LEN:
        raise ProtocolError(f"udp: {len(view)} bytes is shorter than a header")
    sport, dport, length, _csum = _UDP.unpack_from(view)
    if not UDP_HEADER_LEN <= length <= len(view):
        raise ProtocolError(f"udp: length field {length} outside 8..{len(view)}")
    view = view[:length]
    if checksum(view, pseudo_header_sum(src, dst, PROTO_UDP, length)):
        raise ProtocolError("udp: bad checksum")
    return UdpHeader(sport, dport), view[UDP_HEADER_LEN:]


def build_icmp_echo(icmp_type: int, ident: int, seq: int, payload: Buffer) -> bytes:
    """An ICMP echo request (8, client) or reply (0, server) with code 0 and a correct checksum."""
    header = _ICMP.pack(icmp_type, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    csum = fold(ones_sum(payload, ones_sum(header)))
    return _ICMP.pack(icmp_type, 0, csum, ident & 0xFFFF, seq & 0xFFFF) + payload


def parse_icmp(message: Buffer) -> tuple[IcmpHeader, memoryview]:
    """Split an ICMP message read as an echo (type, code, identifier, sequence); checksum must be valid.

    Any type is returned: which ones to accept (0 on the client, 8 on the server) is the caller's rule.
    """
    view = memoryview(message)
    if len(view) < ICMP_HEADER_LEN:
        raise ProtocolError(f"icmp: {len(view)} bytes is shorter than a header")
    if checksum(view):
        raise ProtocolError("icmp: bad checksum")
    icmp_type, code, _csum, ident, seq = _ICMP.unpack_from(view)
    return IcmpHeader(icmp_type, code, ident, seq), view[ICMP_HEADER_LEN:]


def _parse_tcp_ack_ipv4(view: memoryview) -> RawPacket | None:
    """The packets `build_tcp_ack_ipv4` makes, parsed with one unpack and field-sum checksums; None for
    anything else, and for anything the general path would reject, so that path reports why."""
    (ver_ihl, tos, total, ident, frag, ttl, proto, ip_csum, src, dst, sport, dport, seq, ack, offset, flags, window,
     tcp_csum, urg, options, tsval, tsecr) = _IP_TCP_ACK.unpack_from(view)
    if (ver_ihl != 0x45 or proto != PROTO_TCP or offset != _ACK_HEADER_LEN << 2 or options != _ACK_OPTS_WORD
            or not _IP_TCP_ACK.size <= total <= len(view) or frag & _FRAGMENT):
        return None
    addresses = int.from_bytes(src, "big") + int.from_bytes(dst, "big")
    if fold((ver_ihl << 8 | tos) + total + ident + frag + (ttl << 8 | proto) + ip_csum + addresses):
        return None
    payload = view[_IP_TCP_ACK.size : total]
    header_sum = (sport + dport + seq + ack + (offset << 8 | flags) + window + tcp_csum + urg + options + tsval
                  + tsecr)
    ok = not fold(ones_sum(payload, header_sum + addresses + PROTO_TCP + total - 20))
    return RawPacket(IPv4Header(src, dst, proto, ident, ttl, bool(frag & _DF), tos, total, 20),
                     TcpSegment(sport, dport, seq, ack, flags, window, tsval, tsecr, _ACK_HEADER_LEN, ok), payload)


def parse_raw(packet: Buffer) -> RawPacket:
    """Parse a whole IPv4 packet of one of the three raw modes down to the udp2raw blob."""
    view = memoryview(packet)
    if len(view) >= _IP_TCP_ACK.size:
        fast = _parse_tcp_ack_ipv4(view)
        if fast is not None:
            return fast
    ip, body = parse_ipv4(view)
    if ip.proto == PROTO_TCP:
        l4, payload = parse_tcp(ip.src, ip.dst, body)
    elif ip.proto == PROTO_UDP:
        l4, payload = parse_udp(ip.src, ip.dst, body)
    elif ip.proto == PROTO_ICMP:
        l4, payload = parse_icmp(body)
    else:
        raise ProtocolError(f"ipv4: protocol {ip.proto} is not a udp2raw raw mode")
    return RawPacket(ip, l4, payload)
