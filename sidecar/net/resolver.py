"""A peer's UDP address kept resolved in the background, so per-packet code never waits on DNS."""

import logging
import socket

import gevent

RETRY_S = 10.0
REFRESH_S = 300.0


class ResolvedAddress:
    """`address` is the current (family, sockaddr) of host:port, or None until the first answer.

    An IP literal is known at once; a name is resolved by a greenlet that retries every 10 s on
    failure and refreshes every 5 minutes (a server behind dynamic DNS keeps working).
    """

    def __init__(self, host: str, port: int, log: logging.Logger) -> None:
        self._host, self._port, self._log = host, port, log
        self.address: tuple[int, tuple] | None = literal_address(host, port)
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        if self.address is None:
            self._greenlet = gevent.spawn(self._keep_resolved)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def _keep_resolved(self) -> None:
        while True:
            try:
                family, _, _, _, sockaddr = gevent.socket.getaddrinfo(self._host, self._port, 0, socket.SOCK_DGRAM)[0]
            except OSError as exc:
                self._log.warning("cannot resolve %s (%s); UDP to it is dropped until it resolves", self._host, exc)
                gevent.sleep(RETRY_S)
                continue
            if self.address != (family, sockaddr):
                self._log.info("%s resolves to %s", self._host, sockaddr[0])
            self.address = (family, sockaddr)
            gevent.sleep(REFRESH_S)


def literal_address(host: str, port: int) -> tuple[int, tuple] | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family, (host, port)
    return None
