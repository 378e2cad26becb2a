"""One smux stream bridged to one TCP socket, event-driven like sidecar/net/relay.py.

TCP -> stream: a libev read watcher takes what the socket has and writes it into the session. The
watcher stops while the stream cannot take more: KCP's send window is full (the link pauses every
bridge) or, in smux v2, the peer's stream window is shut (the part not taken waits for its update).

stream -> TCP: data from smux events is queued here and sent as the socket takes it; only bytes
actually written are reported consumed, which is what returns smux's session tokens and, in v2,
tells the peer to send more. A socket that cannot keep up therefore stops its stream's sender.

As in kcptun, a half-close is not propagated: EOF either way closes both the socket and the stream
(after the data already received for the socket has been written out).

A stage riding the stream (Shadowsocks over KCP) plugs in as two transforms: `outbound` on what the
socket reads before it enters the stream, `inbound` on stream data before it is queued for the socket.
Stream bytes are what smux accounts for, so each queued chunk remembers how many stream bytes it cost,
and that many are reported consumed once the chunk is written. Before a socket is attached, stream
data waits in the queue; `take_received()` hands it to a stage that must read a header first.
"""

from __future__ import annotations

import contextlib
import socket
from collections import deque
from typing import TYPE_CHECKING

from gevent.event import Event

from sidecar.errors import ProtocolError

if TYPE_CHECKING:
    from sidecar.net.kcp_link import KcpLink
    from sidecar.net.relay import Transform

RECV_SIZE = 65536
_READ, _WRITE = 1, 2


class StreamBridge:
    """Stream `sid` of `link` <-> a plain non-blocking TCP socket (attached now or after a dial)."""

    __slots__ = ("link", "sid", "sock", "done", "arrived", "outbound", "inbound", "_reader", "_writer", "_out",
                 "_costs", "_unsent", "_paused", "_finishing", "_closed", "_up", "_down")

    def __init__(self, link: KcpLink, sid: int, *, upstream: bool) -> None:
        self.link, self.sid = link, sid
        self.sock: socket.socket | None = None
        self.done = Event()
        self.arrived = Event()  # stream data (or the end) came while no socket is attached
        self.outbound: Transform | None = None
        self.inbound: Transform | None = None
        self._reader = self._writer = None
        self._out: deque[memoryview] = deque()  # stream data not yet written to the socket
        self._costs: deque[int] = deque()  # the stream bytes each chunk of _out stands for
        self._unsent: memoryview | None = None  # socket data the stream's v2 window did not take
        self._paused = False  # the link's KCP send window is full
        self._finishing = False  # the peer sent FIN: close once _out is written
        self._closed = False
        # counters for bytes read from / written to the socket: a client's socket faces the user
        self._up, self._down = ("bytes_up", "bytes_down") if upstream else ("bytes_down", "bytes_up")

    def attach(self, sock: socket.socket) -> None:
        """Start bridging over `sock`, taking ownership of it."""
        loop = self.link.loop
        self.sock = sock
        self._reader = loop.io(sock.fileno(), _READ)
        self._writer = loop.io(sock.fileno(), _WRITE)
        self._write_out()
        self._update_reader()

    # ---- TCP -> stream

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self.close(f"socket read failed: {exc}")
            return
        if not data:
            self.close("socket EOF")
            return
        self.link.counters[self._up] += len(data)
        if self.outbound is not None:
            data = self.outbound(data)
        self._send(memoryview(data))

    def write(self, data: bytes) -> None:
        """Bytes of a stage riding the stream (a Shadowsocks header), sent ahead of the socket's."""
        self._send(memoryview(data))

    def _send(self, data: memoryview) -> None:
        try:
            taken = self.link.pipeline.smux.write(self.sid, data)
        except BrokenPipeError as exc:
            self.close(str(exc))
            return
        self._unsent = data[taken:] if taken < len(data) else None
        self._update_reader()
        self.link.kick()

    def window_opened(self) -> None:
        """v2: the peer consumed data; send what its window refused before."""
        if self._unsent is not None and not self._closed:
            self._send(self._unsent)

    def pause(self, paused: bool) -> None:
        """The link's KCP send window filled up (True) or drained (False)."""
        self._paused = paused
        self._update_reader()

    def _update_reader(self) -> None:
        reader = self._reader
        if reader is None or self._closed:
            return
        want = not self._paused and self._unsent is None and not self._finishing
        if want and not reader.active:
            reader.start(self._on_readable)
        elif not want and reader.active:
            reader.stop()

    # ---- stream -> TCP

    def deliver(self, data: bytes) -> None:
        """Stream data from the peer, to be written to the socket."""
        if self._closed:
            return
        cost = len(data)
        if self.inbound is not None:
            try:
                data = self.inbound(data)
            except ProtocolError as exc:
                self.link.counters["protocol_errors"] += 1
                self.close(f"bad data from the riding stage's peer: {exc}")
                return
            if not data:  # a partial chunk: nothing to write, nothing to hold the window for
                self.link.consumed(self.sid, cost)
                return
        self._out.append(memoryview(data))
        self._costs.append(cost)
        if self.sock is None:
            self.arrived.set()
        elif not self._writer.active:
            self._write_out()

    @property
    def finishing(self) -> bool:
        """The peer sent FIN."""
        return self._finishing

    def take_received(self) -> bytes:
        """Everything received and not yet written (before a socket is attached), now consumed."""
        data = b"".join(self._out)
        self._out.clear()
        cost = sum(self._costs)
        self._costs.clear()
        self.arrived.clear()
        if cost:
            self.link.consumed(self.sid, cost)
        return data

    def peer_finished(self) -> None:
        """FIN from the peer: write what is queued, then close."""
        self._finishing = True
        self._update_reader()
        if self.sock is None:
            self.arrived.set()
        elif not self._out:
            self.close("FIN from the peer")

    def _write_out(self) -> None:
        out, costs, sent_total, consumed = self._out, self._costs, 0, 0
        try:
            while out:
                chunk = out[0]
                try:
                    sent = self.sock.send(chunk)
                except BlockingIOError:
                    sent = 0
                sent_total += sent
                if sent < len(chunk):
                    out[0] = chunk[sent:]
                    self._writer.start(self._on_writable)
                    break
                out.popleft()
                consumed += costs.popleft()
        except OSError as exc:
            self.close(f"socket write failed: {exc}")
            return
        finally:
            if sent_total:
                self.link.counters[self._down] += sent_total
            if consumed:
                self.link.consumed(self.sid, consumed)
        if not out and self._finishing:
            self.close("FIN from the peer")

    def _on_writable(self) -> None:
        self._writer.stop()
        self._write_out()

    # ---- end

    def close(self, reason: str = "closed") -> None:
        """Close the socket and the stream (FIN to the peer). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.link.log.debug("stream %d of session %08x closed: %s", self.sid, self.link.conv, reason)
        for watcher in (self._reader, self._writer):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self._out.clear()
        self._costs.clear()
        self.link.stream_closed(self)
        self.arrived.set()
        self.done.set()

