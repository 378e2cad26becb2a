"""KCP ARQ (kcp-go v5.6.1 as kcptun 20210922 drives it), sans-I/O. See specs/kcptun.md §3 and §8.

One `Kcp` turns a datagram link into one reliable, ordered byte stream (or message stream). It
never reads a clock or touches a socket: every call that depends on time takes `now`, an int in
milliseconds from any monotonic origin (it goes on the wire modulo 2**32). A driver does:

    kcp.send(data); kcp.update(now)       # kcptun flushes on every write (SetWriteDelay(false))
    kcp.input(datagram, now)              # may flush by itself: ACK slid the window, ack_nodelay
    while (data := kcp.recv()) is not None: ...
    for datagram in kcp.drain(): ...      # after any of the calls above
    at kcp.next_deadline(now): kcp.update(now)

Backpressure: `send` never refuses data; the driver stops writing while `waitsnd >= snd_wnd`,
which is where kcp-go's `Write` blocks. Receive-side flow control is the advertised window: data
not taken with `recv` keeps the queue full and the peer stops.

Differences from the C ikcp that this follows (spec §8): early retransmit, acked segments kept
until `una` passes them (so `snd_una` only moves with the peer's `una`), ACKs below `rcv_nxt`
compacted away, FEC-recovered ("non-regular") input trusted for data but not for window or RTT,
datagrams sized to leave `reserved` bytes for the crypt and FEC headers below.

Sequence numbers and times are unbounded ints inside and are unwrapped against the local state
when they come off the wire, so only the codec deals with 32-bit wrap-around.
"""

import struct
from bisect import bisect_left
from collections import deque
from heapq import heapify, heappop, heappush
from operator import attrgetter
from typing import NamedTuple

from sidecar.errors import ConfigError, ProtocolError

HEADER = struct.Struct("<IBBHIIII")  # conv, cmd, frg, wnd, ts, sn, una, len
OVERHEAD = HEADER.size  # 24

CMD_PUSH, CMD_ACK, CMD_WASK, CMD_WINS = 81, 82, 83, 84
_COMMANDS = frozenset((CMD_PUSH, CMD_ACK, CMD_WASK, CMD_WINS))
_ASK_SEND, _ASK_TELL = 1, 2  # pending WASK / WINS

RTO_NODELAY_MIN = 30
RTO_MIN = 100
RTO_INITIAL = 200
RTO_MAX = 60_000
PROBE_INITIAL = 7_000
PROBE_LIMIT = 120_000
THRESH_INITIAL = THRESH_MIN = 2
DEAD_LINK = 20  # transmissions of one segment after which `dead` is set
WND_RCV_DEFAULT = 128  # kcp-go's default receive window, also the assumed peer window at start
IDLE_MS = 60_000  # next_deadline when nothing is pending: only a sanity re-check
MIN_MTU = 50

_U32 = 0xFFFFFFFF
_HALF = 0x80000000
_SN = attrgetter("sn")
_FAST, _EARLY, _RTO = range(3)


class Mode(NamedTuple):
    """kcptun's `--mode` presets, as the four knobs they set."""

    nodelay: bool
    interval: int
    resend: int
    nc: bool


MODES: dict[str, Mode] = {
    "normal": Mode(False, 40, 2, True),
    "fast": Mode(False, 30, 2, True),  # kcptun's default
    "fast2": Mode(True, 20, 2, True),
    "fast3": Mode(True, 10, 2, True),
    "manual": Mode(False, 50, 0, False),  # defaults of the hidden --nodelay/--interval/--resend/--nc
}


class Segment(NamedTuple):
    """One decoded segment; `data` is a view into the datagram it came from."""

    conv: int
    cmd: int
    frg: int
    wnd: int
    ts: int
    sn: int
    una: int
    data: memoryview


def encode_segment(conv: int, cmd: int, frg: int, wnd: int, ts: int, sn: int, una: int, data: bytes = b"") -> bytes:
    """One segment as bytes; `ts`, `sn` and `una` are taken modulo 2**32."""
    return HEADER.pack(conv, cmd, frg, wnd, ts & _U32, sn & _U32, una & _U32, len(data)) + data


def _parse(packet: bytes | bytearray | memoryview) -> list[tuple[tuple[int, ...], memoryview]]:
    """Split a datagram into (header, payload view) pairs; ProtocolError if any segment is bad.

    Fewer than 24 trailing bytes are ignored, as kcp-go does.
    """
    view = memoryview(packet).cast("B")
    size = len(view)
    if size < OVERHEAD:
        raise ProtocolError(f"kcp: {size}-byte datagram is shorter than a segment header")
    segments = []
    pos = 0
    while size - pos >= OVERHEAD:
        header = HEADER.unpack_from(view, pos)
        start = pos + OVERHEAD
        pos = start + header[7]
        if pos > size:
            raise ProtocolError(f"kcp: segment claims {header[7]} bytes, {size - start} left")
        if header[1] not in _COMMANDS:
            raise ProtocolError(f"kcp: unknown command {header[1]}")
        segments.append((header, view[start:pos]))
    return segments


def decode_segments(packet: bytes | bytearray | memoryview) -> list[Segment]:
    """All segments of a datagram, checked for length and command (not for conv)."""
    return [Segment(*header[:7], data) for header, data in _parse(packet)]


def _wrap(delta: int) -> int:
    """A difference of two 32-bit wire values as a signed int (RFC 1982 style)."""
    return ((delta + _HALF) & _U32) - _HALF


class _Seg:
    """An outgoing segment and its retransmission state; times are local ms, sn is unbounded."""

    __slots__ = ("acked", "data", "fastack", "frg", "resendts", "rto", "sn", "ts", "xmit")

    def __init__(self, data: bytes, frg: int) -> None:
        self.data = data
        self.frg = frg
        self.sn = self.ts = self.resendts = self.rto = self.fastack = self.xmit = 0
        self.acked = False


class Kcp:
    """One KCP endpoint.

    mtu/reserved: datagrams from `drain` are at most `mtu - reserved` bytes; the layers below add
    `reserved` (kcptun: 20 for the crypt header, which exists even with `--crypt none`, plus 8
    when FEC is on), so MSS = mtu - reserved - 24 (1298 with kcptun's defaults).
    snd_wnd/rcv_wnd: windows in segments. nodelay: 30 ms minimum RTO and gentler backoff.
    interval: flush period in ms, clamped to 10..5000. resend: fast-retransmit threshold in
    out-of-order ACKs (0 = off). nc: no congestion window. ack_nodelay: send ACKs from `input`
    instead of at the next tick. stream: kcptun's stream mode (segments filled up to MSS, `recv`
    returns every contiguous byte); otherwise messages of up to 255 fragments.

    Counters (plain ints, kcp-go SNMP names): in_segs, out_segs, retrans_segs (all resends),
    fast_retrans_segs, early_retrans_segs, lost_segs (RTO expiries), repeat_segs (duplicate or
    out-of-window data received), in_errors (datagrams rejected with ProtocolError).
    """

    def __init__(
        self,
        conv: int,
        *,
        mtu: int = 1350,
        reserved: int = 0,
        snd_wnd: int = 32,
        rcv_wnd: int = WND_RCV_DEFAULT,
        nodelay: bool = False,
        interval: int = 30,
        resend: int = 2,
        nc: bool = True,
        ack_nodelay: bool = False,
        stream: bool = True,
    ) -> None:
        _check_config(conv, mtu, reserved, snd_wnd, rcv_wnd, resend)
        self.conv = conv
        self.mss = mtu - reserved - OVERHEAD
        self.snd_wnd, self.rcv_wnd, self.rmt_wnd = snd_wnd, rcv_wnd, WND_RCV_DEFAULT
        self.nodelay, self.resend, self.nc = nodelay, resend, nc
        self.interval = min(max(interval, 10), 5000)
        self.ack_nodelay, self.stream = ack_nodelay, stream
        self.minrto = RTO_NODELAY_MIN if nodelay else RTO_MIN
        self.rto, self.srtt, self.rttvar = RTO_INITIAL, 0, 0
        # kcp-go starts at 0 and its first flush raises it to 1, before any data can be written.
        self.cwnd, self.ssthresh, self._incr = 1, THRESH_INITIAL, self.mss
        self.dead = False
        self.in_segs = self.out_segs = self.repeat_segs = self.in_errors = 0
        self.retrans_segs = self.fast_retrans_segs = self.early_retrans_segs = self.lost_segs = 0

        self.snd_una = self.snd_nxt = self.rcv_nxt = 0
        self._snd_queue: deque[_Seg] = deque()
        self._inflight: list[_Seg] = []  # unacked segments in [snd_una, snd_nxt), by sn
        self._fastacked: list[_Seg] = []  # segments whose fastack is > 0
        self._timers: list[tuple[int, int, int, _Seg]] = []  # heap of (resendts, sn, xmit, seg)
        self._rcv_buf: dict[int, tuple[bytes, int]] = {}  # sn -> (data, frg), beyond rcv_nxt
        self._rcv_queue: deque[tuple[bytes, int]] = deque()
        self._acklist: list[tuple[int, int]] = []  # (sn, wire ts)
        self._probe = self._probe_wait = self._ts_probe = 0
        self._ts_flush: int | None = None

        self._limit = mtu - reserved
        self._buf = bytearray(self._limit)
        self._view = memoryview(self._buf)
        self._pos = 0
        self._out: list[bytes] = []

    # ---- application side -------------------------------------------------------------------

    @property
    def waitsnd(self) -> int:
        """Segments queued or not yet released by the peer's una (kcp-go's WaitSnd)."""
        return self.snd_nxt - self.snd_una + len(self._snd_queue)

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Queue data; nothing goes out before the next `update` (or an input-triggered flush).

        Stream mode tops up the last queued segment first. Message mode raises ValueError for a
        message needing more than 255 fragments; the peer's rcv_wnd must also hold all of a
        message's fragments or it is never delivered (as in kcp-go). Empty data is ignored.
        """
        view = memoryview(data).cast("B")
        if not view:
            return
        mss, queue = self.mss, self._snd_queue
        if self.stream:
            if queue and len(queue[-1].data) < mss:
                tail = queue[-1]
                room = mss - len(tail.data)
                tail.data += view[:room]
                view = view[room:]
            queue.extend(_Seg(bytes(view[i : i + mss]), 0) for i in range(0, len(view), mss))
            return
        count = max(1, -(-len(view) // mss))
        if count > 255:
            raise ValueError(f"kcp: a {len(view)}-byte message needs {count} fragments, max 255")
        queue.extend(_Seg(bytes(view[i * mss : (i + 1) * mss]), count - i - 1) for i in range(count))

    def recv(self) -> bytes | None:
        """Next data for the application, or None.

        Stream mode: every contiguous byte received so far. Message mode: one whole message.
        """
        queue = self._rcv_queue
        if not queue:
            return None
        was_full = len(queue) >= self.rcv_wnd
        if self.stream:
            parts = []
            while queue:
                parts.extend(data for data, _ in queue)
                queue.clear()
                self._move_to_queue()
            result = b"".join(parts)
        else:
            if len(queue) <= queue[0][1]:
                return None
            parts = []
            while queue:
                data, frg = queue.popleft()
                parts.append(data)
                if frg == 0:
                    break
            result = b"".join(parts)
            self._move_to_queue()
        if was_full and len(queue) < self.rcv_wnd:
            self._probe |= _ASK_TELL  # tell the peer its window reopened (kcp-go fast recover)
        return result

    # ---- network side -----------------------------------------------------------------------

    def input(self, packet: bytes | bytearray | memoryview, now: int, *, regular: bool = True) -> None:
        """Process one datagram of segments.

        ProtocolError (counted in in_errors) for a short or truncated segment, an unknown command
        or another conv; the datagram is then rejected whole. `regular=False` marks FEC-recovered
        input: its data and ACKs count, its window and timestamps do not.
        """
        try:
            segments = _parse(packet)
            for header, _ in segments:
                if header[0] != self.conv:
                    raise ProtocolError(f"kcp: conv {header[0]:#010x}, session is {self.conv:#010x}")
        except ProtocolError:
            self.in_errors += 1
            raise
        old_una = self.snd_una
        slid = False
        latest = -1
        for (_conv, cmd, frg, wnd, ts, sn, una, _len), data in segments:
            if regular:
                self.rmt_wnd = wnd
            slid |= self._parse_una(una)
            if cmd == CMD_ACK:
                self._parse_ack(sn, ts, now)
                latest = ts
            elif cmd == CMD_PUSH:
                if not self._parse_push(sn, ts, frg, data) and regular:
                    self.repeat_segs += 1
            elif cmd == CMD_WASK:
                self._probe |= _ASK_TELL
        self.in_segs += len(segments)
        if latest >= 0 and regular:
            rtt = _wrap(now - latest)
            if rtt >= 0:
                self._update_rtt(rtt)
        if not self.nc and self.snd_una > old_una:
            self._grow_cwnd()
        if slid:
            self._flush(now)
        elif self.ack_nodelay and self._acklist:
            self._write_acks(self._wnd_unused())
            self._emit()

    def update(self, now: int) -> None:
        """Flush: ACKs, window probes, new data the windows allow, and due retransmissions."""
        tick = self._ts_flush
        if tick is None or now >= tick:  # next tick on the interval grid, or restart it when late
            tick = now if tick is None else tick + self.interval
            self._ts_flush = tick if tick > now else now + self.interval
        self._flush(now)

    def drain(self) -> list[bytes]:
        """Datagrams produced so far (each at most mtu - reserved bytes), oldest first."""
        out, self._out = self._out, []
        return out

    def next_deadline(self, now: int) -> int:
        """When `update` must run next (>= now).

        The interval tick counts only when it has work (ACKs to send, a probe, data the window
        lets out, fast-acked segments); retransmission and probe timers count on their own. With
        nothing pending this is now + IDLE_MS, so an idle session does not poll.
        """
        deadline = now + IDLE_MS
        if self._acklist or self._probe or self._fastacked or self._can_admit():
            deadline = now if self._ts_flush is None else self._ts_flush
        timers = self._timers
        while timers and (timers[0][3].acked or timers[0][3].xmit != timers[0][2]):
            heappop(timers)
        if timers:
            deadline = min(deadline, timers[0][0])
        if self.rmt_wnd == 0:
            deadline = min(deadline, self._ts_probe if self._probe_wait else now)
        return max(deadline, now)

    # ---- input helpers ----------------------------------------------------------------------

    def _parse_una(self, una: int) -> bool:
        """Release everything below the peer's una; True if the send window slid."""
        una = min(self.snd_una + _wrap(una - self.snd_una), self.snd_nxt)
        if una <= self.snd_una:
            return False
        inflight = self._inflight
        index = bisect_left(inflight, una, key=_SN)
        for seg in inflight[:index]:
            seg.acked = True
        del inflight[:index]
        self.snd_una = una
        return True

    def _parse_ack(self, sn: int, ts: int, now: int) -> None:
        """Mark one segment acked and count a fast-ack on earlier ones sent no later than it."""
        sn = self.snd_una + _wrap(sn - self.snd_una)
        if not self.snd_una <= sn < self.snd_nxt:
            return
        inflight = self._inflight
        index = bisect_left(inflight, sn, key=_SN)
        if index < len(inflight) and inflight[index].sn == sn:
            inflight.pop(index).acked = True
        sent = now - _wrap(now - ts)  # the echoed send time, on our clock
        for seg in inflight[:index]:
            if seg.ts <= sent:
                seg.fastack += 1
                if seg.fastack == 1:
                    self._fastacked.append(seg)

    def _parse_push(self, sn: int, ts: int, frg: int, data: memoryview) -> bool:
        """Queue an ACK and store the data; False if it was a duplicate or beyond the window."""
        nxt = self.rcv_nxt
        sn = nxt + _wrap(sn - nxt)
        if sn >= nxt + self.rcv_wnd:
            return False
        self._acklist.append((sn, ts))
        if sn < nxt or sn in self._rcv_buf:
            return False
        self._rcv_buf[sn] = (bytes(data), frg)
        if sn == nxt:
            self._move_to_queue()
        return True

    def _move_to_queue(self) -> None:
        """Move contiguous received segments to the receive queue, up to rcv_wnd of them."""
        buf, queue, nxt = self._rcv_buf, self._rcv_queue, self.rcv_nxt
        while len(queue) < self.rcv_wnd and nxt in buf:
            queue.append(buf.pop(nxt))
            nxt += 1
        self.rcv_nxt = nxt

    def _update_rtt(self, rtt: int) -> None:
        """RFC 6298-like smoothing as kcp-go does it (rttvar gains 1/32 on low samples)."""
        if self.srtt == 0:
            self.srtt, self.rttvar = rtt, rtt >> 1
        else:
            delta = rtt - self.srtt
            self.srtt += delta >> 3
            gain = 5 if rtt < self.srtt - self.rttvar else 2
            self.rttvar += (abs(delta) - self.rttvar) >> gain
        rto = self.srtt + max(self.interval, self.rttvar << 2)
        self.rto = min(max(self.minrto, rto), RTO_MAX)

    def _grow_cwnd(self) -> None:
        """Slow start, then congestion avoidance in bytes (ikcp), capped by the peer's window."""
        if self.cwnd >= self.rmt_wnd:
            return
        mss = self.mss
        if self.cwnd < self.ssthresh:
            self.cwnd += 1
            self._incr += mss
        else:
            self._incr = max(self._incr, mss)
            self._incr += mss * mss // self._incr + mss // 16
            if (self.cwnd + 1) * mss <= self._incr:
                self.cwnd = (self._incr + mss - 1) // mss
        if self.cwnd > self.rmt_wnd:
            self.cwnd = self.rmt_wnd
            self._incr = self.rmt_wnd * mss

    # ---- flush ------------------------------------------------------------------------------

    def _wnd_unused(self) -> int:
        return max(self.rcv_wnd - len(self._rcv_queue), 0)

    def _window(self) -> int:
        cwnd = min(self.snd_wnd, self.rmt_wnd)
        return cwnd if self.nc else min(cwnd, self.cwnd)

    def _can_admit(self) -> bool:
        return bool(self._snd_queue) and self.snd_nxt < self.snd_una + self._window()

    def _flush(self, now: int) -> None:
        wnd = self._wnd_unused()
        self._write_acks(wnd)
        self._write_probes(now, wnd)
        window = self._window()
        fresh = self._admit(window)
        due = self._due_retransmissions(now, bool(fresh))
        una = self.rcv_nxt
        lost = changed = 0
        for kind, seg in due:
            seg.fastack = 0
            if kind == _RTO:
                seg.rto += self.rto >> 1 if self.nodelay else self.rto
                lost += 1
            else:
                seg.rto = self.rto
                changed += 1
                if kind == _FAST:
                    self.fast_retrans_segs += 1
                else:
                    self.early_retrans_segs += 1
            self._transmit(seg, now, wnd, una)
        for seg in fresh:
            seg.rto = self.rto
            self._transmit(seg, now, wnd, una)
        self._emit()
        self._fastacked = [seg for seg in self._fastacked if seg.fastack and not seg.acked]
        if len(self._timers) > 2 * len(self._inflight) + 64:
            self._compact_timers()
        self.lost_segs += lost
        self.retrans_segs += lost + changed
        if not self.nc:
            self._shrink_cwnd(window, lost, changed)

    def _write_acks(self, wnd: int) -> None:
        """One ACK per received segment, except those already below rcv_nxt (but the last)."""
        acks = self._acklist
        if not acks:
            return
        nxt, last = self.rcv_nxt, len(acks) - 1
        for i, (sn, ts) in enumerate(acks):
            if sn >= nxt or i == last:
                self._write(CMD_ACK, 0, wnd, ts, sn, nxt, b"")
        acks.clear()

    def _write_probes(self, now: int, wnd: int) -> None:
        """Ask a peer with a zero window for news after 7 s, then ×1.5 up to 120 s; answer asks."""
        if self.rmt_wnd == 0:
            if self._probe_wait == 0:
                self._probe_wait = PROBE_INITIAL
                self._ts_probe = now + PROBE_INITIAL
            elif now >= self._ts_probe:
                wait = max(self._probe_wait, PROBE_INITIAL)
                self._probe_wait = min(wait + wait // 2, PROBE_LIMIT)
                self._ts_probe = now + self._probe_wait
                self._probe |= _ASK_SEND
        else:
            self._probe_wait = self._ts_probe = 0
        if self._probe & _ASK_SEND:
            self._write(CMD_WASK, 0, wnd, 0, 0, self.rcv_nxt, b"")
        if self._probe & _ASK_TELL:
            self._write(CMD_WINS, 0, wnd, 0, 0, self.rcv_nxt, b"")
        self._probe = 0

    def _admit(self, window: int) -> list[_Seg]:
        """Give queued segments sequence numbers while snd_nxt < snd_una + window."""
        queue, fresh = self._snd_queue, []
        limit = self.snd_una + window
        while queue and self.snd_nxt < limit:
            seg = queue.popleft()
            seg.sn = self.snd_nxt
            self.snd_nxt += 1
            self._inflight.append(seg)
            fresh.append(seg)
        return fresh

    def _due_retransmissions(self, now: int, sent_fresh: bool) -> list[tuple[int, _Seg]]:
        """(kind, segment) pairs to resend now, by sn.

        Per segment the first match wins, as in kcp-go: fast (fastack >= resend), early (any
        fastack and no new segment in this flush), RTO expiry.
        """
        due: dict[int, tuple[int, _Seg]] = {}
        for seg in self._fastacked:
            if seg.acked:
                continue
            if self.resend and seg.fastack >= self.resend:
                due[seg.sn] = (_FAST, seg)
            elif not sent_fresh:
                due[seg.sn] = (_EARLY, seg)
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, sn, xmit, seg = heappop(timers)
            if not seg.acked and seg.xmit == xmit and sn not in due:
                due[sn] = (_RTO, seg)
        return [due[sn] for sn in sorted(due)]

    def _transmit(self, seg: _Seg, now: int, wnd: int, una: int) -> None:
        seg.xmit += 1
        seg.ts = now
        seg.resendts = now + seg.rto
        heappush(self._timers, (seg.resendts, seg.sn, seg.xmit, seg))
        self._write(CMD_PUSH, seg.frg, wnd, now, seg.sn, una, seg.data)
        if seg.xmit >= DEAD_LINK:
            self.dead = True

    def _compact_timers(self) -> None:
        """Drop timers of acked or since-resent segments, which otherwise linger until they expire."""
        self._timers = [t for t in self._timers if not t[3].acked and t[3].xmit == t[2]]
        heapify(self._timers)

    def _shrink_cwnd(self, window: int, lost: int, changed: int) -> None:
        """Fast/early resend: halve to inflight/2 (+resend); RTO loss: back to one segment."""
        if changed:
            self.ssthresh = max((self.snd_nxt - self.snd_una) // 2, THRESH_MIN)
            self.cwnd = self.ssthresh + self.resend
            self._incr = self.cwnd * self.mss
        if lost:
            self.ssthresh = max(window // 2, THRESH_MIN)
            self.cwnd, self._incr = 1, self.mss

    # ---- datagram assembly ------------------------------------------------------------------

    def _write(self, cmd: int, frg: int, wnd: int, ts: int, sn: int, una: int, data: bytes) -> None:
        """Append one segment to the datagram being built, starting a new one when it is full."""
        pos = self._pos
        end = pos + OVERHEAD + len(data)
        if end > self._limit:
            self._emit()
            pos, end = 0, OVERHEAD + len(data)
        HEADER.pack_into(self._buf, pos, self.conv, cmd, frg, wnd, ts & _U32, sn & _U32, una & _U32, len(data))
        self._view[pos + OVERHEAD : end] = data
        self._pos = end
        self.out_segs += 1

    def _emit(self) -> None:
        if self._pos:
            self._out.append(bytes(self._view[: self._pos]))
            self._pos = 0


def _check_config(conv: int, mtu: int, reserved: int, snd_wnd: int, rcv_wnd: int, resend: int) -> None:
    if not 0 <= conv <= _U32:
        raise ConfigError("conv", conv, "must fit in 32 bits")
    if mtu < MIN_MTU:
        raise ConfigError("mtu", mtu, f"must be at least {MIN_MTU}")
    if not 0 <= reserved < mtu - OVERHEAD:
        raise ConfigError("reserved", reserved, f"must leave room for a {OVERHEAD}-byte header in mtu {mtu}")
    for key, wnd in (("sndwnd", snd_wnd), ("rcvwnd", rcv_wnd)):
        if not 1 <= wnd <= 0xFFFF:
            raise ConfigError(key, wnd, "must be 1..65535 segments")
    if resend < 0:
        raise ConfigError("resend", resend, "must be >= 0 (0 turns fast retransmit off)")
