"""An accept loop: one greenlet per connection, a connection limit, and a bounded drain on stop."""

import contextlib
import logging
from collections.abc import Callable

import gevent
from gevent import socket
from gevent.pool import Group

from sidecar.metrics import Counters

Handler = Callable[[socket.socket, tuple], None]


class TcpService:
    """Accepts on a bound, listening socket and runs `handler(conn, peer)` for each connection.

    The handler owns nothing: the service closes the connection when the handler returns.
    Connections over `max_connections` are closed at once and counted as `rejected_limit`.
    Counters needs `connections`, `active`, `rejected_limit` and `errors`.
    """

    def __init__(self, listener: socket.socket, handler: Handler, max_connections: int,
                 counters: Counters, log: logging.Logger, no_delay: bool = True) -> None:
        self._listener = listener
        self._handler = handler
        self._max = max_connections
        self._counters = counters
        self._log = log
        self._no_delay = no_delay
        self._group = Group()
        self._acceptor: gevent.Greenlet | None = None

    def start(self) -> None:
        self._acceptor = gevent.spawn(self._accept_loop)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, peer = self._listener.accept()
            except OSError as exc:
                if self._listener.fileno() < 0:
                    return
                self._log.warning("accept failed: %s", exc)
                gevent.sleep(0.1)
                continue
            if len(self._group) >= self._max:
                self._counters["rejected_limit"] += 1
                self._log.debug("connection limit %d reached: closing %s", self._max, peer)
                conn.close()
                continue
            if self._no_delay:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._counters["connections"] += 1
            self._group.spawn(self._serve, conn, peer)

    def _serve(self, conn: socket.socket, peer: tuple) -> None:
        self._counters["active"] += 1
        try:
            self._handler(conn, peer)
        except Exception as exc:  # a handler bug must cost one connection, never the process
            self._counters["errors"] += 1
            self._log.warning("connection from %s ended by an internal error: %r", peer, exc)
            self._log.debug("traceback", exc_info=True)
        finally:
            self._counters["active"] -= 1
            conn.close()

    def stop_accepting(self) -> None:
        if self._acceptor is not None:
            self._acceptor.kill()
        self._listener.close()

    def drain(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for connections to finish, then kill the rest; returns how many were killed."""
        self._group.join(timeout=timeout_s)
        left = len(self._group)
        with contextlib.suppress(Exception):
            self._group.kill(block=True, timeout=2)
        return left
