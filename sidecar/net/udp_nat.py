"""A UDP NAT table: one outbound socket per client key, a greenlet reading its replies, idle expiry."""

import contextlib
import logging
import time
from collections.abc import Callable, Hashable

import gevent
from gevent import socket

from sidecar.errors import ProtocolError
from sidecar.metrics import Counters

ReplyHandler = Callable[[Hashable, bytes, tuple], None]
RECV_SIZE = 65536


class _Association:
    __slots__ = ("sock", "last", "reader")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.last = time.monotonic()
        self.reader: gevent.Greenlet | None = None


class UdpNat:
    """Maps a client key (its address) to an outbound socket; replies go to `on_reply(key, data, source)`.

    An entry lives while either direction moved a packet within `timeout_s`. At `max_entries`, new
    clients are dropped and counted as `udp_rejected_limit`. A reply whose handler raises
    ProtocolError is dropped and counted as `udp_dropped`. Counters also needs `udp_associations`
    and `errors`.
    """

    def __init__(self, make_socket: Callable[[Hashable], socket.socket], on_reply: ReplyHandler,
                 timeout_s: float, max_entries: int, counters: Counters, log: logging.Logger) -> None:
        self._make_socket = make_socket
        self._on_reply = on_reply
        self._timeout_s = timeout_s
        self._max = max_entries
        self._counters = counters
        self._log = log
        self._table: dict[Hashable, _Association] = {}

    def __len__(self) -> int:
        return len(self._table)

    def socket_for(self, key: Hashable) -> socket.socket | None:
        """The client's outbound socket, created on first use; None when the table is full."""
        entry = self._table.get(key)
        if entry is None:
            if len(self._table) >= self._max:
                self._counters["udp_rejected_limit"] += 1
                return None
            entry = _Association(self._make_socket(key))
            entry.sock.settimeout(self._timeout_s)
            self._table[key] = entry
            entry.reader = gevent.spawn(self._read_replies, key, entry)
            self._counters["udp_associations"] += 1
        entry.last = time.monotonic()
        return entry.sock

    def _read_replies(self, key: Hashable, entry: _Association) -> None:
        try:
            while True:
                try:
                    data, source = entry.sock.recvfrom(RECV_SIZE)
                except TimeoutError:
                    if time.monotonic() - entry.last >= self._timeout_s:
                        return
                    continue
                entry.last = time.monotonic()
                try:
                    self._on_reply(key, data, source)
                except ProtocolError as exc:
                    self._counters["udp_dropped"] += 1
                    self._log.debug("dropped a reply for %s: %s", key, exc)
        except OSError as exc:
            self._log.debug("UDP association %s ended: %s", key, exc)
        except Exception as exc:  # a reply-handler bug must cost one association, never the process
            self._counters["errors"] += 1
            self._log.warning("UDP association %s ended by an internal error: %r", key, exc)
        finally:
            if self._table.get(key) is entry:
                del self._table[key]
            entry.sock.close()

    def close_all(self) -> None:
        for entry in list(self._table.values()):
            if entry.reader is not None:
                entry.reader.kill(block=False)
            with contextlib.suppress(OSError):
                entry.sock.close()
        self._table.clear()
