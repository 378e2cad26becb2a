"""smux (xtaci/smux v1.5.16, as in kcptun 20210922) sessions, versions 1 and 2, sans-I/O.

One `Session` multiplexes streams over one ordered byte stream (in kcptun: the snappy-framed KCP
stream). A driver feeds received bytes with `feed(data, now)`, then drains `events()` and
`outgoing()`, and calls `tick(now)` when `next_deadline(now)` is reached. Stream data goes to the
driver in `StreamData` events; the driver reports what its reader has taken with
`read_consumed()`, which returns session receive tokens (`smuxbuf`) and, in v2, sends window
updates.

Frame: version u8, cmd u8, length u16 LE, stream id u32 LE, then `length` bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from sidecar.errors import ConfigError, ProtocolError

CMD_SYN, CMD_FIN, CMD_PSH, CMD_NOP, CMD_UPD = range(5)
HEADER = struct.Struct("<BBHI")
HEADER_SIZE = HEADER.size
UPD_BODY = struct.Struct("<II")  # consumed, window

MAX_FRAME_SIZE = 32768  # smux default; kcptun does not change it
INITIAL_PEER_WINDOW = 262144  # v2: what a writer may send before the first UPD
DEFAULT_SMUXBUF = 4 * 1024 * 1024
DEFAULT_STREAMBUF = 2 * 1024 * 1024
DEFAULT_KEEPALIVE_S = 10.0
KEEPALIVE_TIMEOUT_S = 30.0  # fixed in kcptun, not a flag

_U32 = 0xFFFFFFFF
_MAX_INT32 = 0x7FFFFFFF
_BODYLESS = (CMD_SYN, CMD_FIN, CMD_NOP)


class Frame(NamedTuple):
    version: int
    cmd: int
    sid: int
    data: bytes


def encode_frame(version: int, cmd: int, sid: int, data: bytes = b"") -> bytes:
    """One frame as bytes (the session itself queues header and payload separately)."""
    return HEADER.pack(version, cmd, len(data), sid) + data


def check_header(version: int, cmd: int, length: int, expected_version: int, max_frame_size: int) -> None:
    """Raise ProtocolError for a header smux would reject or misparse.

    smux never reads a body for SYN/FIN/NOP and always reads 8 bytes for UPD, so any other
    length there would desynchronise the stream: it is rejected up front.
    """
    if version != expected_version:
        raise ProtocolError(f"smux: frame version {version}, expected {expected_version}")
    if cmd == CMD_PSH:
        if length > max_frame_size:
            raise ProtocolError(f"smux: data frame of {length} bytes exceeds {max_frame_size}")
    elif cmd in _BODYLESS:
        if length:
            raise ProtocolError(f"smux: command {cmd} with a {length}-byte body")
    elif cmd == CMD_UPD:
        if length != UPD_BODY.size:
            raise ProtocolError(f"smux: window update with a {length}-byte body")
    else:
        raise ProtocolError(f"smux: unknown command {cmd}")


def decode_frames(data: bytes, version: int, max_frame_size: int = MAX_FRAME_SIZE) -> tuple[list[Frame], int]:
    """Split `data` into complete, checked frames; returns them and the number of bytes used."""
    frames: list[Frame] = []
    pos = 0
    while len(data) - pos >= HEADER_SIZE:
        ver, cmd, length, sid = HEADER.unpack_from(data, pos)
        check_header(ver, cmd, length, version, max_frame_size)
        end = pos + HEADER_SIZE + length
        if end > len(data):
            break
        frames.append(Frame(ver, cmd, sid, bytes(data[pos + HEADER_SIZE : end])))
        pos = end
    return frames, pos


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened stream `sid` (SYN)."""

    sid: int


@dataclass(frozen=True, slots=True)
class StreamData:
    """Bytes for stream `sid`; they hold session tokens until `read_consumed()` returns them."""

    sid: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamFinished:
    """The peer closed stream `sid` (FIN): no more data comes, and writes are refused."""

    sid: int


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    """v2: the peer reported progress on `sid`; a write that was cut short may go on."""

    sid: int


@dataclass(frozen=True, slots=True)
class SessionClosed:
    """The session died outside `feed()` (keepalive timeout, bad frame on resume): drop the transport."""

    reason: str


Event = StreamOpened | StreamData | StreamFinished | WindowUpdated | SessionClosed


class _Stream:
    """Per-stream counters; the u32 ones wrap like smux's."""

    __slots__ = ("buffered", "fin", "incr", "num_read", "num_written", "peer_consumed", "peer_window")

    def __init__(self) -> None:
        self.buffered = 0  # delivered in events, not yet consumed: holds session tokens
        self.fin = False  # peer sent FIN
        self.num_read = 0  # v2, u32: consumed total, reported in UPD
        self.incr = 0  # v2: consumed since the last UPD
        self.num_written = 0  # v2, u32
        self.peer_consumed = 0  # v2, u32, from the peer's last UPD
        self.peer_window = INITIAL_PEER_WINDOW

    def send_window(self) -> int:
        return self.peer_window - ((self.num_written - self.peer_consumed) & _U32)


def _verify_config(
    version: int,
    max_frame_size: int,
    smuxbuf: int,
    streambuf: int,
    keepalive_s: float | None,
    timeout_s: float,
) -> None:
    """smux's VerifyConfig, with kcptun's option names in the messages."""
    if version not in (1, 2):
        raise ConfigError("smuxver", version, "use 1 or 2, the same on both ends")
    if not 0 < max_frame_size <= 0xFFFF:
        raise ConfigError("max_frame_size", max_frame_size, "use 1..65535")
    if not 0 < smuxbuf <= _MAX_INT32:
        raise ConfigError("smuxbuf", smuxbuf, "use a positive byte count below 2 GiB")
    if not 0 < streambuf <= smuxbuf:
        raise ConfigError("streambuf", streambuf, "use a positive byte count no larger than smuxbuf")
    if keepalive_s is not None and not 0 < keepalive_s <= timeout_s:
        raise ConfigError("keepalive", keepalive_s, f"use a positive number of seconds up to {timeout_s:g}")


class Session:
    """One smux session, client (odd stream ids from 3) or server (even ids from 2).

    Writes fail with BrokenPipeError (like a socket) on a closed session, on a stream that is
    not open, and on a stream the peer has finished. A bad frame closes the session and counts
    in `protocol_errors`: `feed()` raises it as ProtocolError; found while a stalled parse resumes
    (in `read_consumed()` / `close_stream()`), it comes as a SessionClosed event instead.
    """

    def __init__(
        self,
        *,
        client: bool,
        version: int = 1,
        now: float = 0.0,
        max_frame_size: int = MAX_FRAME_SIZE,
        smuxbuf: int = DEFAULT_SMUXBUF,
        streambuf: int = DEFAULT_STREAMBUF,
        keepalive_s: float | None = DEFAULT_KEEPALIVE_S,
        keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
    ) -> None:
        _verify_config(version, max_frame_size, smuxbuf, streambuf, keepalive_s, keepalive_timeout_s)
        self.version = version
        self.max_frame_size = max_frame_size
        self.streambuf = streambuf
        self._keepalive_s = keepalive_s
        self._timeout_s = keepalive_timeout_s
        self._next_id = 1 if client else 0
        self._streams: dict[int, _Stream] = {}
        self._bucket = smuxbuf  # receive tokens left; parsing stops at <= 0
        self._inbuf = bytearray()
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._last_recv = now
        self._next_nop = now + keepalive_s if keepalive_s is not None else 0.0
        self.closed = False
        self.close_reason = ""
        self.frames_received = 0
        self.frames_sent = 0
        self.frames_dropped = 0  # data for streams that are not open
        self.bytes_received = 0
        self.bytes_sent = 0
        self.protocol_errors = 0

    # ----- input

    def feed(self, data: bytes, now: float) -> None:
        """Take bytes from the underlying stream and parse as far as `smuxbuf` allows.

        Bytes fed while `wants_input` is False are only buffered: a driver stops reading then.
        """
        if self.closed:
            return
        if data:
            self._inbuf += data
            self.bytes_received += len(data)
            self._last_recv = now
        try:
            self._parse_frames()
        except ProtocolError as exc:
            self._fail(exc)
            raise

    @property
    def wants_input(self) -> bool:
        """False while `smuxbuf` is full: stop reading the transport until data is consumed."""
        return not self.closed and self._bucket > 0

    def events(self) -> list[Event]:
        """Drain the events produced so far, in wire order."""
        events, self._events = self._events, []
        return events

    def _fail(self, exc: ProtocolError) -> None:
        self.protocol_errors += 1
        self.close(str(exc))

    def _parse_frames(self) -> None:
        buf = self._inbuf
        pos, end = 0, len(buf)
        with memoryview(buf) as view:
            # Like smux's recvLoop, check the bucket before each frame, so it may go negative once.
            while self._bucket > 0 and end - pos >= HEADER_SIZE:
                ver, cmd, length, sid = HEADER.unpack_from(buf, pos)
                check_header(ver, cmd, length, self.version, self.max_frame_size)
                stop = pos + HEADER_SIZE + length
                if stop > end:
                    break
                self.frames_received += 1
                if cmd == CMD_PSH:
                    self._on_data(sid, view[pos + HEADER_SIZE : stop])
                elif cmd == CMD_SYN:
                    self._on_syn(sid)
                elif cmd == CMD_FIN:
                    self._on_fin(sid)
                elif cmd == CMD_UPD:
                    self._on_update(sid, view[pos + HEADER_SIZE : stop])
                pos = stop
        del buf[:pos]

    def _on_syn(self, sid: int) -> None:
        if sid not in self._streams:
            self._streams[sid] = _Stream()
            self._events.append(StreamOpened(sid))

    def _on_fin(self, sid: int) -> None:
        stream = self._streams.get(sid)
        if stream is not None and not stream.fin:
            stream.fin = True
            self._events.append(StreamFinished(sid))

    def _on_data(self, sid: int, body: memoryview) -> None:
        if not body:
            return
        stream = self._streams.get(sid)
        if stream is None:
            self.frames_dropped += 1
            return
        stream.buffered += len(body)
        self._bucket -= len(body)
        self._events.append(StreamData(sid, body.tobytes()))

    def _on_update(self, sid: int, body: memoryview) -> None:
        """v2 window update; smux parses UPD in v1 too, and v1 has no use for it."""
        stream = self._streams.get(sid)
        if stream is None or self.version == 1:
            return
        consumed, window = UPD_BODY.unpack_from(body)
        if (stream.num_written - consumed) & _U32 > _MAX_INT32:
            raise ProtocolError(f"smux: peer consumed more than was sent on stream {sid}")
        stream.peer_consumed, stream.peer_window = consumed, window
        self._events.append(WindowUpdated(sid))

    # ----- output

    def outgoing(self) -> bytes:
        """Drain the bytes to write to the underlying stream."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def pending_output(self) -> int:
        """Bytes queued and not yet drained by `outgoing()` (for driver backpressure in v1)."""
        return sum(map(len, self._out))

    def _queue(self, cmd: int, sid: int, payload: bytes = b"") -> None:
        self._out.append(HEADER.pack(self.version, cmd, len(payload), sid))
        if payload:
            self._out.append(payload)
        self.frames_sent += 1
        self.bytes_sent += HEADER_SIZE + len(payload)

    # ----- streams

    @property
    def num_streams(self) -> int:
        return len(self._streams)

    def open_stream(self) -> int:
        """Open a stream (queues SYN) and return its id."""
        if self.closed:
            raise BrokenPipeError(f"smux: session closed ({self.close_reason})")
        sid = self._next_id + 2
        if sid > _U32:
            raise BrokenPipeError("smux: stream ids exhausted, open a new session")
        self._next_id = sid
        self._streams[sid] = _Stream()
        self._queue(CMD_SYN, sid)
        return sid

    def write(self, sid: int, data: bytes) -> int:
        """Queue data frames for `sid`; returns the bytes taken: all in v1, in v2 what fits the
        peer's window (0 when it is full: wait for WindowUpdated and write the rest)."""
        stream = self._writable(sid)
        size = len(data)
        if self.version == 2:
            size = min(size, max(0, stream.send_window()))
            stream.num_written = (stream.num_written + size) & _U32
        if not isinstance(data, bytes):  # copy, so that later changes by the caller cannot leak
            data = bytes(memoryview(data)[:size])
        step = self.max_frame_size
        for off in range(0, size, step):
            self._queue(CMD_PSH, sid, data[off : min(off + step, size)])
        return size

    def read_consumed(self, sid: int, n: int) -> None:
        """The reader took `n` bytes of `sid`'s delivered data.

        Returns receive tokens (resuming a parse stalled on `smuxbuf`) and, in v2, queues UPD
        on the first read and after every streambuf/2 bytes.
        """
        stream = self._streams.get(sid)
        if stream is None or self.closed:
            return  # closing the stream already returned its tokens
        if not 0 <= n <= stream.buffered:
            raise ValueError(f"smux: consumed {n} bytes of stream {sid}, {stream.buffered} delivered")
        if n == 0:
            return
        stream.buffered -= n
        if self.version == 2:
            self._account_read(sid, stream, n)
        self._return_tokens(n)

    def _account_read(self, sid: int, stream: _Stream, n: int) -> None:
        stream.num_read = (stream.num_read + n) & _U32
        stream.incr += n
        if stream.num_read == n or stream.incr >= self.streambuf // 2:
            stream.incr = 0
            self._queue(CMD_UPD, sid, UPD_BODY.pack(stream.num_read, self.streambuf))

    def close_stream(self, sid: int) -> None:
        """Close `sid` locally: queue FIN and give back its unconsumed data's tokens. Idempotent."""
        stream = self._streams.pop(sid, None)
        if stream is None or self.closed:
            return
        self._queue(CMD_FIN, sid)
        self._return_tokens(stream.buffered)

    def _writable(self, sid: int) -> _Stream:
        if self.closed:
            raise BrokenPipeError(f"smux: session closed ({self.close_reason})")
        stream = self._streams.get(sid)
        if stream is None:
            raise BrokenPipeError(f"smux: stream {sid} is not open")
        if stream.fin:
            raise BrokenPipeError(f"smux: stream {sid} was closed by the peer")
        return stream

    def _return_tokens(self, n: int) -> None:
        stalled = self._bucket <= 0
        self._bucket += n
        if stalled and self._bucket > 0 and self._inbuf:
            try:
                self._parse_frames()
            except ProtocolError as exc:  # found while resuming: reported as an event, not raised
                self._fail(exc)
                self._events.append(SessionClosed(str(exc)))

    # ----- lifetime

    def close(self, reason: str = "closed locally") -> None:
        """Mark the session dead (smux sends no FINs for this); bytes already queued stay."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._streams.clear()
        self._inbuf = bytearray()  # not clear(): a ProtocolError traceback may hold slices of it

    def next_deadline(self, now: float) -> float | None:
        """When `tick()` is next due (never before `now`); None if no timer runs."""
        if self.closed or self._keepalive_s is None:
            return None
        return max(now, min(self._next_nop, self._last_recv + self._timeout_s))

    def tick(self, now: float) -> None:
        """Run timers: close on keepalive timeout, else send NOP when due."""
        if self.closed or self._keepalive_s is None:
            return
        if now - self._last_recv >= self._timeout_s:
            if self._bucket > 0:
                self.close("keepalive timeout")
                self._events.append(SessionClosed("keepalive timeout"))
                return
            self._last_recv = now  # we stopped reading, not the peer: start a new grace period
        if now >= self._next_nop:
            self._queue(CMD_NOP, 0)
            self._next_nop = now + self._keepalive_s
