"""The SOCKS5 address form `ATYP ADDR PORT`, shared by SOCKS5 and Shadowsocks."""

import ipaddress
import socket
import struct

from sidecar.errors import ProtocolError

ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4
_PORT = struct.Struct("!H")


class UnsupportedAddressType(ProtocolError):
    """An ATYP other than 1, 3 or 4 (SOCKS5 reply 8)."""


def encode_addr(host: str, port: int) -> bytes:
    """`ATYP ADDR PORT` for an IP literal or a domain name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna")
        if not 0 < len(name) < 256:
            raise ProtocolError(f"domain name of {len(name)} bytes cannot be encoded") from None
        return bytes((ATYP_DOMAIN, len(name))) + name + _PORT.pack(port)
    atyp = ATYP_IPV4 if ip.version == 4 else ATYP_IPV6
    return bytes((atyp,)) + ip.packed + _PORT.pack(port)


def encode_ip(family: int, host: str, port: int) -> bytes:
    """`ATYP ADDR PORT` for an address a socket reported (no parsing of names: the fast path for replies)."""
    atyp = ATYP_IPV4 if family == socket.AF_INET else ATYP_IPV6
    return bytes((atyp,)) + socket.inet_pton(family, host) + _PORT.pack(port)


def parse_addr(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[str, int, int] | None:
    """(host, port, offset after the address), or None while the address is incomplete."""
    if len(buf) <= offset:
        return None
    atyp = buf[offset]
    if atyp == ATYP_IPV4:
        start, end = offset + 1, offset + 5
        host = socket.inet_ntop(socket.AF_INET, bytes(buf[start:end])) if len(buf) >= end else ""
    elif atyp == ATYP_IPV6:
        start, end = offset + 1, offset + 17
        host = socket.inet_ntop(socket.AF_INET6, bytes(buf[start:end])) if len(buf) >= end else ""
    elif atyp == ATYP_DOMAIN:
        if len(buf) < offset + 2:
            return None
        end = offset + 2 + buf[offset + 1]
        host = _decode_domain(buf[offset + 2 : end]) if len(buf) >= end else ""
    else:
        raise UnsupportedAddressType(f"address type {atyp} not supported")
    if len(buf) < end + 2:
        return None
    return host, _PORT.unpack_from(buf, end)[0], end + 2


def _decode_domain(raw: bytes | bytearray | memoryview) -> str:
    if not raw:
        raise ProtocolError("empty domain name")
    try:
        return bytes(raw).decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("domain name is not ASCII") from None
