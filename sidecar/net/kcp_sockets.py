"""Socket set-up for KCP sessions: kcptun's `sockbuf` and `dscp` on UDP sockets, and target dials."""

import socket

from gevent import socket as gsocket

from sidecar.net.resolver import literal_address
from sidecar.net.sockets import family_of

CONNECT_TIMEOUT_S = 10.0


def tune_udp(sock: socket.socket, sockbuf: int, dscp: int) -> None:
    """SO_SNDBUF/SO_RCVBUF of `sockbuf` bytes (the kernel caps them at its limits) and the DSCP mark."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sockbuf)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sockbuf)
    if dscp:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, dscp << 2)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, dscp << 2)


def bind_udp(host: str, port: int, sockbuf: int, dscp: int) -> socket.socket:
    """A plain non-blocking UDP socket bound to host:port (dual-stack for "::")."""
    sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        tune_udp(sock, sockbuf, dscp)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def resolve_udp(host: str, port: int) -> tuple[int, tuple]:
    """(family, sockaddr) of host:port: an IP literal at once, a name through gevent's resolver."""
    address = literal_address(host, port)
    if address is None:
        family, _, _, _, sockaddr = gsocket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
        address = family, sockaddr
    return address


def dial_udp(family: int, address: tuple, sockbuf: int, dscp: int) -> socket.socket:
    """A plain non-blocking UDP socket connected to `address`."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        tune_udp(sock, sockbuf, dscp)
        sock.setblocking(False)
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


def dial_target(target: tuple[str, int] | str) -> socket.socket:
    """A plain non-blocking TCP (host, port) or unix (path) connection; raises OSError."""
    if isinstance(target, str):
        sock = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(target)
        except OSError:
            sock.close()
            raise
    else:
        sock = gsocket.create_connection(target, timeout=CONNECT_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return take_socket(sock)


def take_socket(sock: gsocket.socket) -> socket.socket:
    """The plain non-blocking socket behind a gevent socket, which is left detached (closing it is a no-op)."""
    raw = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    raw.setblocking(False)
    return raw
