"""A UDP NAT table: one outbound socket per client key, replies read by a watcher, idle expiry by a sweeper.

In a chain the outbound side of an entry is a flow of an in-process datagram link (sidecar.net.flows)
instead of a socket: `make_flow(key, receive)` opens it, and replies arrive by call, not by watcher.
"""

import logging
import socket
from collections.abc import Callable, Hashable

from gevent.hub import get_hub

from sidecar.errors import ProtocolError
from sidecar.metrics import Counters
from sidecar.net.flows import Flow, Receiver
from sidecar.net.udp_service import drain

ReplyHandler = Callable[[Hashable, bytes, tuple], None]
FlowMaker = Callable[[Hashable, Receiver], Flow]
IN_PROCESS = ("in-process", 0)  # the reply source an in-process flow reports
_READ = 1


class _Association:
    __slots__ = ("sock", "last", "watcher")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.last = now
        self.watcher = get_hub().loop.io(sock.fileno(), _READ)

    def close(self) -> None:
        self.watcher.stop()
        self.watcher.close()
        self.sock.close()


class _FlowAssociation:
    __slots__ = ("sock", "last")

    def __init__(self, flow: Flow, now: float) -> None:
        self.sock = flow  # sends like a connected socket: flow.send(data)
        self.last = now

    def close(self) -> None:
        self.sock.close()


class UdpNat:
    """Maps a client key (its address) to an outbound socket; replies go to `on_reply(key, data, source)`.

    `make_socket(key)` returns a plain non-blocking socket. An entry lives while either direction
    moved a packet within `timeout_s`. At `max_entries`, new clients are dropped and counted as
    `udp_rejected_limit`. A reply whose handler raises ProtocolError is dropped and counted as
    `udp_dropped`. Counters also needs `udp_in`, `udp_associations` and `errors`.
    """

    def __init__(self, make_socket: Callable[[Hashable], socket.socket], on_reply: ReplyHandler,
                 timeout_s: float, max_entries: int, counters: Counters, log: logging.Logger,
                 make_flow: FlowMaker | None = None) -> None:
        self._make_socket = make_socket
        self._make_flow = make_flow
        self._on_reply = on_reply
        self._timeout_s = timeout_s
        self._max = max_entries
        self._counters = counters
        self._log = log
        self._table: dict[Hashable, _Association | _FlowAssociation] = {}
        self._loop = get_hub().loop
        sweep_every = max(1.0, min(timeout_s / 4, 10.0))
        self._sweeper = self._loop.timer(sweep_every, sweep_every)
        self._sweeper.start(self._sweep)

    def __len__(self) -> int:
        return len(self._table)

    def socket_for(self, key: Hashable) -> socket.socket | Flow | None:
        """The client's outbound socket (or flow), created on first use; None when the table is full."""
        entry = self._table.get(key)
        if entry is None:
            if len(self._table) >= self._max:
                self._counters["udp_rejected_limit"] += 1
                return None
            entry = self._open(key)
            self._table[key] = entry
            self._counters["udp_associations"] += 1
        entry.last = self._loop.now()
        return entry.sock

    def _open(self, key: Hashable) -> "_Association | _FlowAssociation":
        if self._make_flow is not None:
            box: list[_FlowAssociation] = []
            flow_entry = _FlowAssociation(self._make_flow(key, lambda data: self._on_flow_reply(key, box[0], data)),
                                          self._loop.now())
            box.append(flow_entry)
            return flow_entry
        entry = _Association(self._make_socket(key), self._loop.now())
        entry.watcher.start(self._on_readable, key, entry)
        return entry

    def _on_flow_reply(self, key: Hashable, entry: _FlowAssociation, data: bytes) -> None:
        entry.last = self._loop.now()
        self._counters["udp_in"] += 1
        try:
            self._on_reply(key, data, IN_PROCESS)
        except (ProtocolError, OSError) as exc:
            self._counters["udp_dropped"] += 1
            self._log.debug("dropped a reply: %s", exc)

    def _on_readable(self, key: Hashable, entry: _Association) -> None:
        entry.last = self._loop.now()
        if not drain(entry.sock, self._on_reply, self._counters, self._log, lambda sock: (key, *sock.recvfrom(65536))):
            self._drop(key, entry)

    def _sweep(self) -> None:
        now = self._loop.now()
        for key, entry in list(self._table.items()):
            if now - entry.last >= self._timeout_s:
                self._drop(key, entry)

    def _drop(self, key: Hashable, entry: "_Association | _FlowAssociation") -> None:
        if self._table.get(key) is entry:
            del self._table[key]
        entry.close()

    def drop_where(self, predicate: Callable[[Hashable], bool]) -> None:
        """Close every association whose key matches (e.g. all flows of a client that went away)."""
        for key, entry in list(self._table.items()):
            if predicate(key):
                self._drop(key, entry)

    def close_all(self) -> None:
        self._sweeper.stop()
        for entry in self._table.values():
            entry.close()
        self._table.clear()
