"""Transparent proxying on Linux: the original destination of a redirected TCP connection or a
TPROXY'd UDP datagram, and sockets that send from an address that is not the host's own.

TCP: with iptables/nft REDIRECT the original destination is read with SO_ORIGINAL_DST; with TPROXY
it is simply the accepted socket's own address. UDP (TPROXY only): IP_RECVORIGDSTADDR puts the
original destination in each datagram's ancillary data; a reply must come *from* that destination,
so it is sent on an IP_TRANSPARENT socket bound to it (full cone: one per remote address).
"""

import socket
import struct

from sidecar.net.udp_service import bind_datagram_socket

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same value
IP_TRANSPARENT, IP_RECVORIGDSTADDR = 19, 20  # linux/in.h
IPV6_TRANSPARENT, IPV6_RECVORIGDSTADDR = 75, 74  # linux/in6.h
SOL_IPV6 = 41
_CMSG_SPACE = 64


def original_dst(sock: socket.socket, listen_port: int) -> tuple[str, int]:
    """Where a redirected or TPROXY'd TCP connection was going."""
    local = sock.getsockname()
    if local[1] != listen_port:
        return unmapped(local[0]), local[1]  # TPROXY: the socket already has the original address
    if sock.family == socket.AF_INET6 and not local[0].startswith("::ffff:"):
        raw = sock.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, 28)
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack_from("!H", raw, 2)[0]
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), struct.unpack_from("!H", raw, 2)[0]


def unmapped(host: str) -> str:
    """An IPv4 address seen through a dual-stack socket (::ffff:a.b.c.d) as plain a.b.c.d."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def tproxy_udp_listener(family: int, address: tuple[str, int]) -> socket.socket:
    """A non-blocking UDP socket that receives TPROXY'd datagrams with their original destination."""
    return bind_datagram_socket(family, address, False, _tproxy_options)


def _tproxy_options(sock: socket.socket) -> None:
    _set_transparent(sock)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(SOL_IPV6, IPV6_RECVORIGDSTADDR, 1)
    sock.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)


def recv_with_destination(sock: socket.socket) -> tuple[bytes, tuple, tuple[str, int] | None]:
    """(data, source, original destination or None) of one datagram; raises BlockingIOError when empty."""
    data, ancillary, _, source = sock.recvmsg(65536, _CMSG_SPACE)
    for level, kind, value in ancillary:
        if (level, kind) == (socket.SOL_IP, IP_RECVORIGDSTADDR):
            return data, source, (socket.inet_ntop(socket.AF_INET, value[4:8]), struct.unpack_from("!H", value, 2)[0])
        if (level, kind) == (SOL_IPV6, IPV6_RECVORIGDSTADDR):
            return data, source, (socket.inet_ntop(socket.AF_INET6, value[8:24]),
                                  struct.unpack_from("!H", value, 2)[0])
    return data, source, None


def transparent_sender(family: int, address: tuple[str, int]) -> socket.socket:
    """A non-blocking UDP socket bound to `address` even if it is not local (replies "from" the remote)."""
    return bind_datagram_socket(family, address, False, _set_transparent)


def _set_transparent(sock: socket.socket) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
    sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
