"""One kcptun session as a sans-I/O stack: datagrams <-> crypt <-> FEC <-> KCP <-> snappy <-> smux.

The cores (kcp_crypt, fec, kcp, snappy_frame, smux) each do one layer; this module only pumps
bytes between them, in kcp-go's order (spec §0):

    out: smux frames -> snappy chunks -> Kcp.send -> KCP datagrams -> FEC shards -> crypt packets
    in:  packet -> decrypt (CRC) -> FEC decode (regular + recovered) -> Kcp.input -> Kcp.recv
         -> snappy decode -> smux feed -> stream events

A driver calls `packet_in()` for each received datagram, `service(now)` after any input or stream
call, `update(now)` at `next_deadline(now)`, and sends what `packets_out()` returns. Stream data
arrives as smux events from `events()`; the driver reports what it has written onward with
`consumed()`. Times are float seconds from any monotonic origin (KCP gets integer milliseconds).

Backpressure: `can_send` is False while KCP's send queue is at its window (kcp-go's Write blocks
there); data is pulled from KCP only while smux has receive tokens (`smuxbuf`), so a reader that
does not consume leaves the KCP receive queue full and the peer's window shut.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sidecar.errors import ProtocolError
from sidecar.proto import fec, kcp_crypt, smux
from sidecar.proto.kcp import CMD_PUSH, HEADER, Kcp

_KCP_HEAD = struct.Struct("<IBBHII")  # conv, cmd, frg, wnd, ts, sn: enough of a segment to route a datagram


@dataclass(frozen=True, slots=True)
class KcpSettings:
    """The per-session knobs kcptun exposes (spec §7), already resolved from `--mode`."""

    mtu: int = 1350
    sndwnd: int = 128
    rcvwnd: int = 512
    datashard: int = 10
    parityshard: int = 3
    nodelay: bool = False
    interval: int = 30
    resend: int = 2
    nc: bool = True
    acknodelay: bool = False
    nocomp: bool = False
    smuxver: int = 1
    smuxbuf: int = smux.DEFAULT_SMUXBUF
    streambuf: int = smux.DEFAULT_STREAMBUF
    keepalive_s: float = smux.DEFAULT_KEEPALIVE_S

    @property
    def fec(self) -> bool:
        return self.datashard > 0 and self.parityshard > 0

    @property
    def reserved(self) -> int:
        """Header room below KCP: the crypt header always, the FEC header and size field with FEC."""
        return kcp_crypt.HEADER_SIZE + (fec.DATA_HEADER_SIZE if self.fec else 0)


@dataclass(slots=True)
class PipelineCounters:
    """Per-session packet counts, and what the layers around KCP rejected."""

    packets_in: int = 0
    packets_out: int = 0
    crypt_errors: int = 0  # too short or CRC mismatch: wrong key or crypt, or corrupted
    kcp_errors: int = 0  # decrypted datagrams KCP rejected (truncated segment, bad command, other conv)
    fec_bad: int = 0  # malformed FEC headers


def route(body: bytes) -> tuple[int, bool] | None:
    """(conv, opens) of a decrypted body for a server's session table; None for parity or junk.

    `opens` is True for a PUSH of sn 0, the only datagram that may replace a session (spec §3).
    """
    offset = fec.DATA_HEADER_SIZE if fec.is_fec(body) else 0
    if offset and body[4] != fec.TYPE_DATA:
        return None
    if len(body) < offset + HEADER.size:
        return None
    conv, cmd, _, _, _, sn = _KCP_HEAD.unpack_from(body, offset)
    return conv, cmd == CMD_PUSH and sn == 0


class KcpPipeline:
    """One KCP session (conv) with its FEC, snappy and smux layers; `client` picks smux stream ids."""

    def __init__(self, conv: int, settings: KcpSettings, crypt: kcp_crypt.KcpCrypt, *, client: bool,
                 now: float) -> None:
        self.settings = settings
        self.crypt = crypt
        self.kcp = Kcp(conv, mtu=settings.mtu, reserved=settings.reserved, snd_wnd=settings.sndwnd,
                       rcv_wnd=settings.rcvwnd, nodelay=settings.nodelay, interval=settings.interval,
                       resend=settings.resend, nc=settings.nc, ack_nodelay=settings.acknodelay)
        self.smux = smux.Session(client=client, version=settings.smuxver, now=now, smuxbuf=settings.smuxbuf,
                                 streambuf=settings.streambuf, keepalive_s=settings.keepalive_s)
        shape = (settings.datashard, settings.parityshard) if settings.fec else (1, 1)
        self.fec_encoder = fec.FecEncoder(*shape) if settings.fec else None
        self.fec_decoder = fec.FecDecoder(*shape)
        self._compressor = self._decompressor = None
        if not settings.nocomp:
            # Imported here: cramjam and crc32c are only needed with compression (routers may lack them).
            from sidecar.proto import snappy_frame

            self._compressor, self._decompressor = snappy_frame.Encoder(), snappy_frame.Decoder()
        self.counters = PipelineCounters()
        self._wrote = False

    @property
    def conv(self) -> int:
        return self.kcp.conv

    @property
    def can_send(self) -> bool:
        """False while KCP holds a full send window: stop reading the streams' sources."""
        return self.kcp.waitsnd < self.kcp.snd_wnd

    @property
    def closed(self) -> bool:
        return self.smux.closed

    # ---- datagram side

    def packet_in(self, packet: bytes, now: float) -> None:
        """One received UDP payload; AuthError/ProtocolError (counted) drop just this packet."""
        self.counters.packets_in += 1
        try:
            body = self.crypt.decrypt(packet)
        except ProtocolError:
            self.counters.crypt_errors += 1
            raise
        self.body_in(body, now)

    def body_in(self, body: bytes, now: float) -> None:
        """A decrypted datagram body (a server decrypts first to route it)."""
        ms = _ms(now)
        if fec.is_fec(body):
            try:
                regular, recovered = self.fec_decoder.decode(body, now)
            except ProtocolError:
                self.counters.fec_bad += 1
                raise
            for payload in recovered:
                self._kcp_input(payload, ms, regular=False)
            if regular is not None:
                self._kcp_input(regular, ms, regular=True)
        else:
            self._kcp_input(body, ms, regular=True)

    def _kcp_input(self, payload: bytes, ms: int, *, regular: bool) -> None:
        try:
            self.kcp.input(payload, ms, regular=regular)
        except ProtocolError:
            self.counters.kcp_errors += 1
            if regular:
                raise  # a bad rebuilt shard is counted only: the packet that completed it was good

    def packets_out(self) -> list[bytes]:
        """Encrypted UDP payloads to send now (FEC parity included)."""
        datagrams = self.kcp.drain()
        if not datagrams:
            return []
        encrypt = self.crypt.encrypt
        out = []
        for datagram in datagrams:
            bodies = self.fec_encoder.encode(datagram) if self.fec_encoder is not None else (datagram,)
            out.extend(encrypt(body) for body in bodies)
        self.counters.packets_out += len(out)
        return out

    # ---- stream side

    def service(self, now: float) -> None:
        """Move received bytes up into smux and smux output down into KCP, then flush if written.

        ProtocolError from snappy or smux ends the smux session (kcptun closes it too).
        """
        self._pull(now)
        self._push(now)

    def _pull(self, now: float) -> None:
        session = self.smux
        while session.wants_input:
            data = self.kcp.recv()
            if data is None:
                return
            if self._decompressor is not None:
                data = self._decompressor.feed(data)
            session.feed(data, now)

    def _push(self, now: float) -> None:
        data = self.smux.outgoing()
        if data:
            if self._compressor is not None:
                data = self._compressor.compress(data)
            self.kcp.send(data)
            self._wrote = True
        if self._wrote:  # kcptun writes with SetWriteDelay(false): every write flushes at once
            self._wrote = False
            self.kcp.update(_ms(now))

    def consumed(self, sid: int, n: int) -> None:
        """The driver wrote `n` bytes of stream `sid` onward (returns smux tokens / v2 window)."""
        self.smux.read_consumed(sid, n)

    def events(self) -> list[smux.Event]:
        return self.smux.events()

    # ---- time

    def update(self, now: float) -> None:
        """Timers: KCP flush/retransmit and smux keepalive."""
        self.smux.tick(now)
        self._wrote = True
        self._push(now)

    def next_deadline(self, now: float) -> float:
        """When `update` is next due, in seconds (an idle session: the smux keepalive only)."""
        deadline = self.kcp.next_deadline(_ms(now)) / 1000.0
        smux_deadline = self.smux.next_deadline(now)
        return deadline if smux_deadline is None else min(deadline, smux_deadline)


def _ms(now: float) -> int:
    """KCP's clock; the epsilon keeps a timer that fired at `deadline_ms / 1000` from landing 1 ms early."""
    return int(now * 1000 + 1e-6)
