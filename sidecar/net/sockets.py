"""Creating, binding and connecting gevent sockets with the options the roles ask for."""

import errno
import ipaddress
import socket as _stdsocket

from gevent import socket

from sidecar.config import Endpoint
from sidecar.net.resolver import literal_address


def family_of(host: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def bind_tcp(endpoint: Endpoint, reuse_port: bool = False, backlog: int = 1024) -> socket.socket:
    sock = socket.socket(family_of(endpoint.host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, _stdsocket.SO_REUSEPORT, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((endpoint.host, endpoint.port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def connect_tcp(host: str, port: int, timeout_s: float, no_delay: bool) -> socket.socket:
    """A connected TCP socket; raises OSError on failure.

    An IP literal is connected directly: gevent's resolver would send even a literal through its
    thread pool, which costs more than the connect itself on loopback.
    """
    literal = literal_address(host, port)
    if literal is None:
        sock = socket.create_connection((host, port), timeout=timeout_s)
        if no_delay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    return connect_address(*literal, timeout_s, no_delay)


def connect_address(family: int, sockaddr: tuple, timeout_s: float, no_delay: bool) -> socket.socket:
    """A TCP connection to a resolved address; raises OSError on failure."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    if no_delay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def describe_os_error(exc: OSError) -> str:
    """A short human reason for a socket error ("connection refused", "timed out", ...)."""
    if isinstance(exc, TimeoutError | _stdsocket.timeout):
        return "timed out"
    if isinstance(exc, _stdsocket.gaierror):
        return f"name resolution failed ({exc.strerror})"
    return (exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))).lower()
