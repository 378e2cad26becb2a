"""Drive one KcpPipeline in the hub: packets in, packets out, stream bridges, and one timer.

Everything runs in libev callbacks, with no greenlet per session or per packet. Input (a packet, a
TCP read, a TCP write that consumed stream data) only marks the session dirty; one callback at the
end of the loop iteration then moves data through the stack, sends what came out and re-arms the
timer at the pipeline's next deadline. With nothing pending that deadline is the smux keepalive, so
an idle session wakes every `keepalive` seconds, not every KCP interval.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from gevent.hub import get_hub

from sidecar.errors import ProtocolError
from sidecar.metrics import Counters
from sidecar.net.kcp_bridge import StreamBridge
from sidecar.proto import smux
from sidecar.proto.kcp_pipeline import KcpPipeline

Sender = Callable[[bytes], None]

# Role counters a link adds its session's totals to (on timer wake-ups and at close): kcp-go's SNMP
# ones (InSegs, OutSegs, RetransSegs, FastRetransSegs, EarlyRetransSegs, LostSegs, RepeatSegs;
# FECRecovered, FECParityShards, FECShortShards) and the packets the layers below KCP dropped.
KCP_TOTALS = ("in_segs", "out_segs", "retrans_segs", "fast_retrans_segs", "early_retrans_segs", "lost_segs",
              "repeat_segs")
FEC_TOTALS = {"recovered": "fec_recovered", "parity": "fec_parity", "lost": "fec_short"}
PIPELINE_TOTALS = ("crypt_errors", "kcp_errors", "fec_bad")
_FOLDED = (*KCP_TOTALS, *PIPELINE_TOTALS, *FEC_TOTALS.values())
LINK_COUNTERS = (
    "sessions", "streams", "bytes_up", "bytes_down", "udp_in", "udp_out", "udp_dropped", "smux_errors",
    "protocol_errors", *_FOLDED)
# Only running totals: levels (open sessions, open streams) are not counters, which are also restored
# from a stats file after a restart. A role's `active` counts its open TCP connections.


class KcpLink:
    """One KCP session: `packet_in`/`body_in` from the socket, `send` to it, streams as bridges.

    `on_stream(link, sid)` is called for streams the peer opens (a server dials its target there);
    `on_closed(link)` once, when the session ends. `upstream` says which byte counter TCP reads go to
    (`bytes_up` on a client, `bytes_down` on a server).
    """

    def __init__(self, pipeline: KcpPipeline, send: Sender, counters: Counters, log: logging.Logger, *,
                 upstream: bool, on_stream: Callable[[KcpLink, int], None] | None = None,
                 on_closed: Callable[[KcpLink], None] | None = None) -> None:
        self.pipeline = pipeline
        self.loop = get_hub().loop
        self.counters = counters
        self.log = log
        self.born = self.loop.now()
        self.closed = False
        self.expiring = False  # a client's session past `autoexpire`: closes with its last stream
        self.bridges: dict[int, StreamBridge] = {}
        self._send, self._upstream = send, upstream
        self._on_stream, self._on_closed = on_stream, on_closed
        self._kicked = False
        self._paused = False
        self._timer = None
        self._timer_at = math.inf
        self._folded = [0] * len(_FOLDED)
        self.loss = 0.0  # moving share of segments sent that were resent (a loss estimate for `status`)
        counters["sessions"] += 1

    @property
    def conv(self) -> int:
        return self.pipeline.conv

    # ---- input

    def packet_in(self, packet: bytes) -> None:
        """An encrypted datagram; ProtocolError (counted by the pipeline) drops it, for the caller to count."""
        self.pipeline.packet_in(packet, self._now())
        self.kick()

    def body_in(self, body: bytes) -> None:
        """A datagram the caller already decrypted (the server, to route it)."""
        self.pipeline.body_in(body, self._now())
        self.kick()

    # ---- streams

    def open_stream(self, *, upstream: bool) -> StreamBridge:
        """A new stream of ours (client side); BrokenPipeError if the session is closed."""
        sid = self.pipeline.smux.open_stream()
        bridge = self._add(sid, upstream)
        self.kick()
        return bridge

    def _add(self, sid: int, upstream: bool) -> StreamBridge:
        bridge = StreamBridge(self, sid, upstream=upstream)
        bridge.pause(self._paused)
        self.bridges[sid] = bridge
        self.counters["streams"] += 1
        return bridge

    def consumed(self, sid: int, n: int) -> None:
        self.pipeline.consumed(sid, n)
        self.kick()

    def stream_closed(self, bridge: StreamBridge) -> None:
        if self.bridges.pop(bridge.sid, None) is None:
            return
        if not self.closed:
            self.pipeline.smux.close_stream(bridge.sid)
            if self.expiring and not self.bridges:
                self.close("expired and idle")
            else:
                self.kick()

    # ---- the pump

    def kick(self) -> None:
        """Schedule one pass of `_run` at the end of this loop iteration (coalesces bursts)."""
        if not self._kicked and not self.closed:
            self._kicked = True
            self.loop.run_callback(self._run)

    def _run(self) -> None:
        """Move data through the stack until it settles, send, and re-arm the timer.

        Kicks from inside (bridges writing or consuming) are absorbed: the loop below sees their work.
        """
        if self.closed:
            return
        self._kicked = True
        now = self._now()
        pipeline = self.pipeline
        try:
            pipeline.service(now)
            while events := pipeline.events():
                self._dispatch(events)
                pipeline.service(now)
        except ProtocolError as exc:  # snappy or smux: the byte stream cannot be trusted any more
            self.counters["smux_errors"] += 1
            self.log.info("session %08x: bad stream data, closing the session: %s", self.conv, exc)
            pipeline.smux.close(str(exc))
        finally:
            self._kicked = False
        self._flush()
        if pipeline.closed:
            self.close(pipeline.smux.close_reason)
            return
        self._pause_bridges(not pipeline.can_send)
        self._schedule(now)

    def _dispatch(self, events: list[smux.Event]) -> None:
        for event in events:
            bridge = self.bridges.get(event.sid) if not isinstance(event, smux.SessionClosed) else None
            if isinstance(event, smux.StreamData):
                if bridge is not None:
                    bridge.deliver(event.data)
            elif isinstance(event, smux.WindowUpdated):
                if bridge is not None:
                    bridge.window_opened()
            elif isinstance(event, smux.StreamFinished):
                if bridge is not None:
                    bridge.peer_finished()
                else:
                    self.pipeline.smux.close_stream(event.sid)
            elif isinstance(event, smux.StreamOpened):
                self._opened(event.sid)

    def _opened(self, sid: int) -> None:
        if self._on_stream is None:
            self.pipeline.smux.close_stream(sid)  # a client does not take streams from its server
            return
        self._add(sid, upstream=self._upstream)
        self._on_stream(self, sid)

    def _flush(self) -> None:
        for packet in self.pipeline.packets_out():
            try:
                self._send(packet)
            except OSError:  # a full socket buffer or an ICMP error: KCP resends
                self.counters["udp_dropped"] += 1
                continue
            self.counters["udp_out"] += 1

    def _pause_bridges(self, paused: bool) -> None:
        if paused != self._paused:
            self._paused = paused
            for bridge in list(self.bridges.values()):
                bridge.pause(paused)

    # ---- time

    def _now(self) -> float:
        """The loop's clock, refreshed: its cached time is that of the iteration's start, and a late
        timestamp would shrink KCP's RTT samples (then its RTO) by however long the iteration took."""
        self.loop.update_now()
        return self.loop.now()

    def _schedule(self, now: float) -> None:
        at = self.pipeline.next_deadline(now)
        if self._timer is not None:
            if self._timer_at <= at:
                return  # an earlier wake-up is armed; it re-arms for this one when it fires
            self._timer.stop()
            self._timer.close()
        self._timer = self.loop.timer(max(0.0, at - now))
        self._timer_at = at
        self._timer.start(self._on_timer)

    def _on_timer(self) -> None:
        self._timer.close()
        self._timer, self._timer_at = None, math.inf
        if self.closed:
            return
        self.pipeline.update(self._now())
        self._run()
        self._fold_counters()

    # ---- end

    def close(self, reason: str = "closed") -> None:
        """End the session: every bridge closes, counters are folded into the role's. Idempotent."""
        if self.closed:
            return
        self.closed = True  # first: closing bridges below must not queue FINs (kcptun sends none either)
        self.pipeline.smux.close(reason)
        for bridge in list(self.bridges.values()):
            bridge.close()
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None
        self._fold_counters()
        self.log.debug("session %08x closed: %s", self.conv, reason)
        if self._on_closed is not None:
            self._on_closed(self)

    def _fold_counters(self) -> None:
        """Add what the session's cores counted since the last fold to the role's counters.

        Runs on every timer wake-up and at close, so live counters (`sidecar status`) lag by at most
        one keepalive period, without any per-packet bookkeeping.
        """
        kcp, pipeline, fec = self.pipeline.kcp, self.pipeline.counters, self.pipeline.fec_decoder.counters
        now = [getattr(kcp, name) for name in KCP_TOTALS]
        now += [getattr(pipeline, name) for name in PIPELINE_TOTALS]
        now += [getattr(fec, attr) for attr in FEC_TOTALS]
        counters = self.counters
        for name, value, old in zip(_FOLDED, now, self._folded, strict=True):
            counters[name] += value - old
        sent, resent = now[1] - self._folded[1], now[2] - self._folded[2]  # out_segs, retrans_segs
        if sent > 0:
            weight = min(1.0, sent / 256)
            self.loss += weight * (min(1.0, resent / sent) - self.loss)
        self._folded = now
