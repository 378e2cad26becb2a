"""Where a server may send its clients' traffic: destinations checked against a block list after
name resolution, so a host name that points into a blocked range is refused like the address."""

import socket

from gevent import socket as gsocket

from sidecar.errors import ProtocolError
from sidecar.net.resolver import literal_address
from sidecar.proto.acl import Acl


class BlockedDestination(ProtocolError):
    """The destination is in the outbound block list (by default: private and loopback ranges)."""


class OutboundPolicy:
    def __init__(self, block: list[Acl]) -> None:
        self._block = block

    def blocked(self, ip: str) -> bool:
        return any(acl.blocked(ip) for acl in self._block)

    def check_ip(self, ip: str) -> None:
        if self._block and self.blocked(ip):
            raise BlockedDestination(f"destination {ip} is blocked (a private or listed range)")

    def resolve(self, host: str, port: int, kind: int = socket.SOCK_STREAM) -> tuple[int, tuple]:
        """(family, sockaddr) of the first allowed address of host:port; raises BlockedDestination or OSError."""
        literal = literal_address(host, port)
        if literal is not None:
            self.check_ip(literal[1][0])
            return literal
        found = [(family, sockaddr) for family, _, _, _, sockaddr in gsocket.getaddrinfo(host, port, 0, kind)]
        allowed = [entry for entry in found if not (self._block and self.blocked(entry[1][0]))]
        if not allowed:
            raise BlockedDestination(f"{host} resolves only into blocked ranges")
        return allowed[0]
