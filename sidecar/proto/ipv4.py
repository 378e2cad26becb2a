"""IPv4 header codec and the Internet checksum (RFC 791 / RFC 1071), as udp2raw's raw modes need them.

Addresses are 4-byte ``bytes`` (what ``socket.inet_aton`` returns), so they hash cheaply as conn keys.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from sidecar.errors import ProtocolError

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

HEADER_LEN = 20
DEFAULT_TTL = 64

_FLAG_DF = 0x4000
_FLAG_MF = 0x2000
_FRAG_OFFSET = 0x1FFF
_HDR = struct.Struct("!BBHHHBBH4s4s")


class IPv4Header(NamedTuple):
    """The fields of a parsed IPv4 header; the checksum is always verified by `parse_ipv4`."""

    src: bytes
    dst: bytes
    proto: int
    ident: int
    ttl: int
    df: bool
    tos: int
    total_length: int
    header_len: int


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Sum of the 16-bit big-endian words of `data` (odd tail zero-padded) plus `initial`, unreduced.

    Since 2**16 == 1 (mod 0xffff), the big integer formed by the bytes is congruent to the sum of its
    16-bit words, so one `int.from_bytes` replaces a Python-level loop over the words.
    """
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    return value + initial


def fold(total: int) -> int:
    """The Internet checksum (ones' complement of the ones' complement sum) for an unreduced sum."""
    rest = total % 0xFFFF
    if rest == 0 and total:
        rest = 0xFFFF  # ones' complement arithmetic: a non-zero sum never folds to +0
    return 0xFFFF - rest


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 checksum of `data`; 0 when computed over data that includes a correct checksum."""
    return fold(ones_sum(data, initial))


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Unreduced sum of the TCP/UDP pseudo-header (src, dst, zero, protocol, L4 length)."""
    return int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + length


def build_ipv4(
    src: bytes,
    dst: bytes,
    proto: int,
    payload_len: int,
    ident: int,
    ttl: int = DEFAULT_TTL,
    df: bool = True,
    tos: int = 0,
) -> bytes:
    """A 20-byte IPv4 header (no options) with total length and header checksum filled in."""
    total = HEADER_LEN + payload_len
    if total > 0xFFFF:
        raise ProtocolError(f"ipv4: packet of {total} bytes is too large")
    flags, ident = _FLAG_DF if df else 0, ident & 0xFFFF
    # the checksum from the field values: a 4-byte address adds as one u32 (2**16 == 1 mod 0xffff)
    words = (0x4500 | tos) + total + ident + flags + (ttl << 8 | proto)
    csum = fold(words + int.from_bytes(src, "big") + int.from_bytes(dst, "big"))
    return _HDR.pack(0x45, tos, total, ident, flags, ttl, proto, csum, src, dst)


def parse_ipv4(packet: bytes | bytearray | memoryview) -> tuple[IPv4Header, memoryview]:
    """Validate and split one IPv4 packet into its header and payload (trailing link padding dropped).

    Rejects (ProtocolError) what udp2raw rejects: not version 4, a bad header checksum, a total length
    beyond the captured bytes; and fragments, whose L4 header cannot be trusted without reassembly.
    """
    view = memoryview(packet)
    if len(view) < HEADER_LEN:
        raise ProtocolError(f"ipv4: {len(view)} bytes is shorter than a header")
    ver_ihl, tos, total, ident, frag, ttl, proto, _csum, src, dst = _HDR.unpack_from(view)
    header_len = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or header_len < HEADER_LEN:
        raise ProtocolError(f"ipv4: bad version/IHL byte 0x{ver_ihl:02x}")
    if not header_len <= total <= len(view):
        raise ProtocolError(f"ipv4: total length {total} outside {header_len}..{len(view)}")
    if checksum(view[:header_len]):
        raise ProtocolError("ipv4: bad header checksum")
    if frag & (_FLAG_MF | _FRAG_OFFSET):
        raise ProtocolError("ipv4: fragments are not supported")
    header = IPv4Header(src, dst, proto, ident, ttl, bool(frag & _FLAG_DF), tos, total, header_len)
    return header, view[header_len:total]
