"""Fake-TCP connection state as udp2raw keeps it (spec udp2raw.md 2.5): the 3-way handshake it fakes,
seq/ack per `--seq-mode`, the window and timestamps. Sans-I/O: `now` (seconds) is always an argument.

One `FakeTcp` is one side's view of one conn and builds whole IPv4 packets for it. What a segment
means (handshake or data) and whether it authenticated is decided above; this module only moves the
numbers, and only for segments the caller says are authentic (`on_authentic`).
"""

from __future__ import annotations

import random

from sidecar.proto.ipv4 import DEFAULT_TTL, PROTO_TCP, build_ipv4
from sidecar.proto.l4 import TCP_ACK, TCP_SYN, TcpSegment, build_tcp, build_tcp_ack_ipv4

SEQ_MODES = (0, 1, 2, 3, 4)
WINDOW_BASE = 40960
WINDOW_SCALE = 5
MAX_SEGMENT = 1800
_M32 = 0xFFFFFFFF


def seq_after(a: int, b: int) -> bool:
    """a > b in 32-bit sequence space (RFC 1982 style)."""
    return 0 < (a - b) & _M32 < 0x80000000


def ms_clock(now: float) -> int:
    """TSval: a millisecond clock, low 32 bits."""
    return int(now * 1000) & _M32


class IpIds:
    """The IPv4 identification counter of one process: random start, +1 per packet sent (spec 2.2)."""

    __slots__ = ("value",)

    def __init__(self, rng: random.Random) -> None:
        self.value = rng.getrandbits(16)

    def next(self) -> int:
        self.value = (self.value + 1) & 0xFFFF
        return self.value


class FakeTcp:
    """Header state of one fake-TCP conn; `packet` builds an ACK segment at the current seq/ack."""

    __slots__ = ("src", "dst", "sport", "dport", "seq_mode", "ttl", "ids", "rng", "seq", "ack", "ts_recent",
                 "peer_ack", "ack_repeats", "isn")

    def __init__(self, src: bytes, dst: bytes, sport: int, dport: int, ids: IpIds, rng: random.Random, *,
                 seq_mode: int = 3, ttl: int = DEFAULT_TTL) -> None:
        if seq_mode not in SEQ_MODES:
            raise ValueError(f"seq_mode must be one of {SEQ_MODES}, not {seq_mode!r}")
        self.src, self.dst, self.sport, self.dport = src, dst, sport, dport
        self.seq_mode, self.ttl, self.ids, self.rng = seq_mode, ttl, ids, rng
        self.seq = self.ack = self.ts_recent = self.peer_ack = self.ack_repeats = 0
        self.isn = 0

    # --- building -----------------------------------------------------------------------------------

    def segment(self, flags: int, payload: bytes, now: float, *, seq: int | None = None,
                ack: int | None = None, tsecr: int | None = None) -> bytes:
        """One whole IPv4 packet; seq/ack/tsecr default to the current state."""
        window = WINDOW_BASE + self.rng.getrandbits(9)
        if flags == TCP_ACK:
            return build_tcp_ack_ipv4(self.src, self.dst, self.ids.next(), self.ttl, self.sport, self.dport,
                                      self.seq if seq is None else seq, self.ack if ack is None else ack, window,
                                      ms_clock(now), self.ts_recent if tsecr is None else tsecr, payload)
        tcp = build_tcp(self.src, self.dst, sport=self.sport, dport=self.dport,
                        seq=self.seq if seq is None else seq, ack=self.ack if ack is None else ack,
                        flags=flags, window=window, tsval=ms_clock(now),
                        tsecr=self.ts_recent if tsecr is None else tsecr, payload=payload)
        return build_ipv4(self.src, self.dst, PROTO_TCP, len(tcp), self.ids.next(), self.ttl) + tcp

    def packet(self, payload: bytes, now: float) -> bytes:
        """A post-handshake data segment (ACK flag only); advances seq per the seq mode."""
        out = self.segment(TCP_ACK, payload, now)
        self._advance(len(payload))
        return out

    def _advance(self, length: int) -> None:
        mode = self.seq_mode
        if mode == 0 or (mode == 2 and self.rng.randrange(5)):
            return
        self.seq = (self.seq + length) & _M32
        if mode < 3:
            return
        limit = WINDOW_BASE if mode == 4 else WINDOW_BASE << WINDOW_SCALE
        peer_ack = self.peer_ack
        if (seq_after(self.seq + MAX_SEGMENT, peer_ack + limit) or self.ack_repeats >= 3
                or seq_after(peer_ack, self.seq)):
            self.seq = peer_ack

    # --- receiving ----------------------------------------------------------------------------------

    def on_authentic(self, seg: TcpSegment, payload_len: int) -> None:
        """Update ack, the peer's ack and TSecr from a segment whose payload authenticated."""
        if seg.tsval is not None:
            self.ts_recent = seg.tsval
        if seg.ack == self.peer_ack:
            self.ack_repeats += 1
        else:
            self.peer_ack, self.ack_repeats = seg.ack, 1
        mode = self.seq_mode
        end = (seg.seq + payload_len) & _M32
        if mode >= 3:
            if seg.seq == self.ack:
                self.ack = end
        elif mode and seq_after(end, self.ack):
            self.ack = end

    # --- the faked 3-way handshake (client side) ----------------------------------------------------

    def syn(self, now: float) -> bytes:
        """The client SYN: seq = a fresh random ISN, ack = garbage (flag off), TSecr 0. Retries reuse it."""
        if not self.isn:
            self.isn = self.rng.getrandbits(32) or 1
        return self.segment(TCP_SYN, b"", now, seq=self.isn, ack=self.rng.getrandbits(32), tsecr=0)

    def accept_syn_ack(self, seg: TcpSegment, now: float) -> bytes | None:
        """The bare ACK answering a SYN-ACK that acks our ISN + 1, or None if it does not."""
        if seg.flags & (TCP_SYN | TCP_ACK) != TCP_SYN | TCP_ACK or seg.ack != (self.isn + 1) & _M32:
            return None
        self.learn_syn_ack(seg)
        return self.segment(TCP_ACK, b"", now)

    def learn_syn_ack(self, seg: TcpSegment) -> None:
        """Take seq/ack from a SYN-ACK (easy-faketcp: the kernel's own handshake did the rest)."""
        self.seq, self.ack = seg.ack, (seg.seq + 1) & _M32
        self.ts_recent = seg.tsval or 0

    def handshake_packet(self, payload: bytes, start_seq: int, now: float) -> bytes:
        """A handshake segment: every retry is sent at `start_seq`, after which seq = start_seq + len."""
        out = self.segment(TCP_ACK, payload, now, seq=start_seq)
        self.seq = (start_seq + len(payload)) & _M32
        return out

    def accept_handshake_reply(self, seg: TcpSegment, payload_len: int) -> bool:
        """The real client's check: the reply acks all we sent and starts where we acked (spec 2.5)."""
        if seg.flags & (TCP_SYN | TCP_ACK) != TCP_ACK or seg.ack != self.seq or seg.seq != self.ack:
            return False
        self.ack = (seg.seq + payload_len) & _M32
        self.ts_recent = seg.tsval or 0
        self.peer_ack, self.ack_repeats = seg.ack, 1
        return True

    # --- server side --------------------------------------------------------------------------------

    def syn_ack(self, syn: TcpSegment, now: float) -> bytes:
        """The stateless answer to a SYN: random seq, ack = SYN seq + 1, TSecr = the SYN's TSval."""
        return self.segment(TCP_SYN | TCP_ACK, b"", now, seq=self.rng.getrandbits(32),
                            ack=(syn.seq + 1) & _M32, tsecr=syn.tsval or 0)

    def learn_handshake(self, seg: TcpSegment, payload_len: int) -> None:
        """Server: continue from a client handshake segment (our seq := its ack; ack := its seq + len)."""
        self.seq, self.ack = seg.ack, (seg.seq + payload_len) & _M32
        self.ts_recent = seg.tsval or 0
        self.peer_ack, self.ack_repeats = seg.ack, 1


def is_handshake_segment(seg: TcpSegment) -> bool:
    """udp2raw accepts handshake payloads only on segments with ACK set and SYN clear."""
    return seg.flags & (TCP_SYN | TCP_ACK) == TCP_ACK
