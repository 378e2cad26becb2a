"""Datagram receive, event-driven: a libev watcher drains the socket and hands each packet to a handler.

Handlers run in the hub, so they must not block: they may send (non-blocking) and spawn greenlets
for anything slow (name resolution). A bad packet is dropped and counted; nothing else stops.
"""

import logging
import socket
from collections.abc import Callable

from gevent.hub import get_hub

from sidecar.errors import ProtocolError
from sidecar.metrics import Counters

RECV_SIZE = 65536
BATCH = 64  # packets read per wake-up before yielding to other watchers
DatagramHandler = Callable[..., None]
Receive = Callable[[socket.socket], tuple]  # the handler's arguments for one datagram, (data, source, ...)
_READ = 1


def recvfrom(sock: socket.socket) -> tuple[bytes, tuple]:
    return sock.recvfrom(RECV_SIZE)


def dispatch(handler: DatagramHandler, args: tuple, counters: Counters, log: logging.Logger) -> None:
    """Run `handler(*args)` on one packet; a protocol error, a send failure or a handler bug costs that packet only."""
    try:
        handler(*args)
    except ProtocolError as exc:
        counters["udp_dropped"] += 1
        log.debug("dropped a datagram: %s", exc)
    except OSError as exc:
        counters["udp_dropped"] += 1
        log.debug("could not forward a datagram: %s", exc)
    except Exception as exc:
        counters["errors"] += 1
        log.warning("a datagram was dropped by an internal error: %r", exc)


def drain(sock: socket.socket, handler: DatagramHandler, counters: Counters, log: logging.Logger,
          receive: Receive = recvfrom) -> bool:
    """Read up to BATCH packets from a non-blocking socket; False if the socket failed."""
    for _ in range(BATCH):
        try:
            args = receive(sock)
        except BlockingIOError:
            return True
        except OSError as exc:  # e.g. ECONNREFUSED reported for an earlier send on a connected socket
            log.debug("UDP receive: %s", exc)
            return sock.fileno() >= 0
        counters["udp_in"] += 1
        dispatch(handler, args, counters, log)
    return True


def bind_datagram_socket(family: int, address: tuple, reuse_port: bool,
                         prepare: Callable[[socket.socket], None] | None = None) -> socket.socket:
    """A plain non-blocking UDP socket bound to `address` (the hub's watchers drive it); `prepare`
    sets further options before the bind."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if prepare is not None:
            prepare(sock)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class UdpService:
    """Reads `listener` (a plain non-blocking socket) and calls `handler(*receive(listener))` per packet:
    `handler(data, source)` with the default receive.

    Counters needs `udp_in`, `udp_dropped` and `errors`.
    """

    def __init__(self, listener: socket.socket, handler: DatagramHandler, counters: Counters,
                 log: logging.Logger, receive: Receive = recvfrom) -> None:
        self.listener = listener
        self._handler = handler
        self._receive = receive
        self._counters = counters
        self._log = log
        self._watcher = get_hub().loop.io(listener.fileno(), _READ)

    def start(self) -> None:
        self._watcher.start(self._on_readable)

    def _on_readable(self) -> None:
        if not drain(self.listener, self._handler, self._counters, self._log, self._receive):
            self._watcher.stop()

    def stop(self) -> None:
        self._watcher.stop()
        self._watcher.close()
        self.listener.close()
