"""A datagram receive loop: each packet goes to a handler; a bad packet is dropped and counted."""

import logging
from collections.abc import Callable

import gevent
from gevent import socket

from sidecar.errors import ProtocolError
from sidecar.metrics import Counters

RECV_SIZE = 65536
DatagramHandler = Callable[[bytes, tuple], None]


class UdpService:
    """Reads `listener` and calls `handler(data, source)`; counters needs `udp_in`, `udp_dropped`, `errors`."""

    def __init__(self, listener: socket.socket, handler: DatagramHandler, counters: Counters,
                 log: logging.Logger) -> None:
        self.listener = listener
        self._handler = handler
        self._counters = counters
        self._log = log
        self._reader: gevent.Greenlet | None = None

    def start(self) -> None:
        self._reader = gevent.spawn(self._loop)

    def _loop(self) -> None:
        recvfrom, handler, counters = self.listener.recvfrom, self._handler, self._counters
        while True:
            try:
                data, source = recvfrom(RECV_SIZE)
            except OSError as exc:
                if self.listener.fileno() < 0:
                    return
                self._log.debug("UDP receive failed: %s", exc)
                continue
            counters["udp_in"] += 1
            try:
                handler(data, source)
            except ProtocolError as exc:
                counters["udp_dropped"] += 1
                self._log.debug("dropped a datagram from %s: %s", source, exc)
            except OSError as exc:
                counters["udp_dropped"] += 1
                self._log.debug("could not forward a datagram from %s: %s", source, exc)
            except Exception as exc:  # a handler bug must cost one packet, never the process
                counters["errors"] += 1
                self._log.warning("datagram from %s dropped by an internal error: %r", source, exc)

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.kill(block=False)
        self.listener.close()
