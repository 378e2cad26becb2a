"""Forward error correction for datagrams: each group of up to ``data`` packets is followed by ``parity``
Reed-Solomon packets, so a lossy datagram link delivers a group whole as long as no more than ``parity``
of its packets are lost. In the spirit of UDPspeeder's FEC; our own format, compatible with nothing.

Data is never delayed: a datagram is framed and sent at once. A group closes when it holds ``data``
packets or ``wait_s`` after its first packet (the driver calls ``tick`` at ``next_deadline``); only
then is its parity computed and sent. A group of ``k < data`` packets uses RS(k, parity).

Every packet starts with an 8-byte big-endian header::

    0  u32  kind << 24 | seq  kind 0xD1 data, 0xD2 parity; seq is 24 bits and wraps. A data packet's
                              own number (every data packet takes the next one); in a parity packet,
                              the seq of its group's first data packet (the group id).
    4  u8   index             data: position in its group (so its group id is seq - index);
                              parity: the parity packet's number in its group, 0..parity-1
    5  u8   count             data: 0; parity: how many data packets the group holds, 1..64
    6  u8   parity            how many parity packets the group gets, 0..64 (0: none will follow)
    7  u8   feedback          the sender's measured loss of the packets it receives, in 1/255 units

A data packet's body is the payload. A parity packet's body is RS parity over the group's data
packets, each taken as ``u16 length | payload`` zero-padded to the longest, so rebuilt payloads come
back at their exact length. The code is ``sidecar.proto.fec.ReedSolomon`` (klauspost's matrix).
"""

import math
import random
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from sidecar.errors import ConfigError, ProtocolError
from sidecar.proto.fec import ReedSolomon

KIND_DATA = 0xD1
KIND_PARITY = 0xD2
HEADER_SIZE = 8
SEQ_BITS = 24
SEQ_MASK = (1 << SEQ_BITS) - 1
SEQ_HALF = 1 << (SEQ_BITS - 1)
MAX_DATA = 64
MAX_PARITY = 64
MAX_WAIT_S = 10.0
MAX_PAYLOAD = 0xFFFF
TARGET_GROUP_LOSS = 0.001  # adaptive mode: accepted chance that a full group loses more than it can rebuild
MAX_GROUPS = 64  # groups the decoder holds shards for, oldest evicted first
MAX_HELD_BYTES = 4 << 20  # and the bytes they may hold
EXPIRE_S = 3.0  # a group not rebuilt this long after its first packet arrived is forgotten
WINDOW = 1024  # data seqs remembered for duplicate suppression and the unrecovered count
LOSS_BATCH = 16  # the loss estimate is folded every this many expected data packets
LOSS_WEIGHT = 1 / 256  # weight of one data packet in the loss moving average

_HEADER = struct.Struct(">IBBBB")
_LEN = struct.Struct(">H")
_DATA_WORD = KIND_DATA << SEQ_BITS
_PARITY_WORD = KIND_PARITY << SEQ_BITS
_NEW, _DUP, _OLD = 0, 1, 2  # what the delivery window says about a seq

Buffer = bytes | bytearray | memoryview


class FecParams(NamedTuple):
    data: int  # max data packets per group, 1..64
    parity: int  # parity packets per group (the minimum in adaptive mode), 0..64 (0: framing only)
    wait_s: float  # a group is closed (its parity sent) at most this long after its first packet
    adaptive: bool = False  # raise parity when the peer reports loss (up to max_parity)
    max_parity: int = 8  # upper bound in adaptive mode, parity..64


class Header(NamedTuple):
    kind: int
    seq: int
    index: int
    count: int
    parity: int
    feedback: int


def check_params(params: FecParams, key: str = "fec") -> None:
    """ConfigError naming the first out-of-range field of ``params``."""
    if not 1 <= params.data <= MAX_DATA:
        raise ConfigError(f"{key}.data", params.data, f"need 1..{MAX_DATA} data packets per group")
    if not 0 <= params.parity <= MAX_PARITY:
        raise ConfigError(f"{key}.parity", params.parity, f"need 0..{MAX_PARITY} parity packets (0: FEC off)")
    if not 0.0 <= params.wait_s <= MAX_WAIT_S:  # also rejects NaN
        raise ConfigError(f"{key}.wait_s", params.wait_s, f"need 0..{MAX_WAIT_S} seconds")
    if not 0 <= params.max_parity <= MAX_PARITY or (params.adaptive and params.max_parity < params.parity):
        raise ConfigError(f"{key}.max_parity", params.max_parity, f"need parity..{MAX_PARITY} in adaptive mode")


def parse_ratio(text: str, key: str) -> tuple[int, int]:
    """``"data:parity"`` (e.g. ``"2:2"``) as two ints; ConfigError naming ``key`` otherwise."""
    data, sep, parity = text.strip().partition(":")
    try:
        ratio = int(data), int(parity)
    except ValueError:
        ratio = (0, -1)
    if not sep or not 1 <= ratio[0] <= MAX_DATA or not 0 <= ratio[1] <= MAX_PARITY:
        raise ConfigError(key, text, f"use data:parity such as 2:2, data 1..{MAX_DATA}, parity 0..{MAX_PARITY}")
    return ratio


def parse_header(packet: Buffer) -> Header:
    """The header fields of a packet (no consistency checks beyond size and kind)."""
    if len(packet) < HEADER_SIZE:
        raise ProtocolError(f"datagram FEC packet of {len(packet)} bytes is shorter than its header")
    word, index, count, parity, feedback = _HEADER.unpack_from(packet)
    kind = word >> SEQ_BITS
    if kind not in (KIND_DATA, KIND_PARITY):
        raise ProtocolError(f"unknown datagram FEC kind {kind:#04x}")
    return Header(kind, word & SEQ_MASK, index, count, parity, feedback)


def data_payload(packet: Buffer) -> Buffer | None:
    """The payload of a data packet, None for a parity packet (which cannot be read alone); ProtocolError
    for junk. Lets a stage check the first packet of a flow without touching a decoder's state."""
    if parse_header(packet).kind != KIND_DATA:
        return None
    return memoryview(packet)[HEADER_SIZE:]


def quantize_loss(loss: float) -> int:
    """A loss fraction in 1/255 units, clamped to 0..255 (NaN counts as 0)."""
    if not loss > 0.0:
        return 0
    return 255 if loss >= 1.0 else round(loss * 255)


def adaptive_parity(data: int, lowest: int, highest: int, loss: float) -> int:
    """The smallest parity p in lowest..highest for which a full group of ``data`` packets plus p parity,
    each lost independently with probability ``loss``, loses more than p of them (so cannot be rebuilt)
    with probability at most TARGET_GROUP_LOSS; ``highest`` if none does. ``loss`` is used at 1/255 steps.
    """
    return _parity_for(data, lowest, highest, quantize_loss(loss))


@lru_cache(maxsize=1024)
def _parity_for(data: int, lowest: int, highest: int, loss_255: int) -> int:
    loss = loss_255 / 255
    for parity in range(lowest, highest + 1):
        n = data + parity
        tail = sum(math.comb(n, i) * loss**i * (1 - loss) ** (n - i) for i in range(parity + 1, n + 1))
        if tail <= TARGET_GROUP_LOSS:
            return parity
    return highest


@lru_cache(maxsize=256)
def _codec(data: int, parity: int) -> ReedSolomon:
    """One codec per group shape (building one inverts a matrix, so shapes are shared and cached)."""
    return ReedSolomon(data, parity)


def _shard(payload: Buffer, size: int) -> bytes:
    """``u16 length | payload`` zero-padded to ``size``: what parity is computed over."""
    return b"".join((_LEN.pack(len(payload)), payload, bytes(size - 2 - len(payload))))


# ---- encoder --------------------------------------------------------------------------------------


class FecEncoder:
    """Frames datagrams at once and adds a group's parity when it fills or its wait ends.

    ``feedback`` is the loss (0..1) this side measures on what it *receives*: the driver sets it from its
    own FecDecoder's ``loss`` before calling ``encode``/``tick``, and every packet carries it to the peer,
    whose decoder shows it as ``peer_feedback`` for the peer's encoder (``peer_loss``). That is how
    adaptive mode learns the loss of the direction it sends in.
    """

    def __init__(self, params: FecParams, *, first_seq: int | None = None) -> None:
        check_params(params)
        self.params = params
        self.parity_now = params.parity
        self.feedback = 0.0
        self.reported_loss = 0.0  # the last value given to peer_loss (for metrics)
        # A random start keeps a restarted sender's packets from looking like duplicates of its old ones.
        self._seq = random.getrandbits(SEQ_BITS) if first_seq is None else first_seq & SEQ_MASK
        self._group_seq = self._seq
        self._group_parity = 0
        self._count = 0
        self._packets: list[bytes] = []  # the open group's data packets, kept only if it gets parity
        self._deadline = math.inf

    def encode(self, payload: Buffer, now: float) -> list[bytes]:
        """The framed data packet, then the parity of any group this closed (its own, if it filled it).

        ProtocolError if the payload is longer than MAX_PAYLOAD.
        """
        if len(payload) > MAX_PAYLOAD:
            raise ProtocolError(f"datagram of {len(payload)} bytes is too long for FEC (max {MAX_PAYLOAD})")
        # A group past its wait (the driver was late to tick) or one without parity while parity is now
        # wanted is closed first, so the new packet starts a new group.
        stale = self._count > 0 and (now >= self._deadline or (not self._group_parity and self.parity_now > 0))
        closed = self._close() if stale else []
        if not self._count:
            self._open(now)
        word = _DATA_WORD | self._seq
        packet = _HEADER.pack(word, self._count, 0, self._group_parity, quantize_loss(self.feedback)) + payload
        self._seq = (self._seq + 1) & SEQ_MASK
        self._count += 1
        if self._group_parity:
            self._packets.append(packet)
        if self._count >= self.params.data:
            closed += self._close()
        return [packet, *closed]

    def next_deadline(self) -> float:
        """When the open group's wait ends; math.inf if no group is open (or it gets no parity)."""
        return self._deadline

    def tick(self, now: float) -> list[bytes]:
        """The parity of the open group if its wait has passed (which closes it); [] otherwise."""
        if self._count and now >= self._deadline:
            return self._close()
        return []

    def peer_loss(self, loss: float) -> None:
        """The loss the peer reports (its decoder's ``loss``, via ``peer_feedback``); sets ``parity_now``
        in adaptive mode, for groups opened from now on (see ``adaptive_parity``)."""
        self.reported_loss = loss
        params = self.params
        if params.adaptive:
            self.parity_now = adaptive_parity(params.data, params.parity, params.max_parity, loss)

    def _open(self, now: float) -> None:
        self._group_seq = self._seq
        self._group_parity = self.parity_now
        self._deadline = now + self.params.wait_s if self._group_parity else math.inf

    def _close(self) -> list[bytes]:
        packets, parity = self._packets, self._group_parity
        self._packets, self._count, self._deadline = [], 0, math.inf
        if not packets:
            return []
        size = max(map(len, packets)) - HEADER_SIZE + 2
        shards = [_shard(memoryview(packet)[HEADER_SIZE:], size) for packet in packets]
        count, word, feedback = len(packets), _PARITY_WORD | self._group_seq, quantize_loss(self.feedback)
        bodies = _codec(count, parity).encode(shards)
        return [_HEADER.pack(word, j, count, parity, feedback) + body for j, body in enumerate(bodies)]


# ---- decoder --------------------------------------------------------------------------------------


@dataclass(slots=True)
class DgramFecCounters:
    data: int = 0  # data packets received (duplicates included)
    parity: int = 0  # parity packets received
    recovered: int = 0  # lost data packets rebuilt from parity and delivered
    unrecovered: int = 0  # data packets never delivered, counted as they leave the window (WINDOW seqs on)
    duplicates: int = 0  # packets already delivered or held, dropped
    stale: int = 0  # data packets (received or rebuilt) more than WINDOW seqs old, dropped
    bad: int = 0  # malformed or contradictory packets (each raised ProtocolError) and impossible rebuilds


class _Group:
    __slots__ = ("born", "count", "nbytes", "parity", "shards", "size", "top")

    def __init__(self, born: float, parity: int) -> None:
        self.born = born
        self.parity = parity
        self.count = 0  # data packets in the group, known once a parity packet arrives
        self.size = 0  # parity body length, likewise
        self.top = 0  # 1 + the highest data index held
        self.shards: dict[int, bytes] = {}  # data payloads by index, parity bodies by count + number
        self.nbytes = 0


class FecDecoder:
    """Delivers data payloads at once and rebuilds lost ones from parity; any order, duplicates, loss.

    Delivery is tracked per data seq in a sliding window of WINDOW seqs: nothing is delivered twice, and
    a packet older than the window is dropped (counted ``stale``) since it can no longer be told from a
    duplicate. Shards are held only for groups that get parity: at most MAX_GROUPS groups and
    MAX_HELD_BYTES (oldest evicted first), none longer than EXPIRE_S.

    ``loss`` estimates the fraction of data packets the link loses (from the seq gaps of packets received
    directly, recovered ones count as lost) as a moving average over about 1/LOSS_WEIGHT packets.
    ``peer_feedback`` is the loss the peer reported in the latest valid packet.

    The peer's shapes (group size, parity) come from the headers, not from ``params``. Seqs before the first
    one received, and gaps of WINDOW or more (a restarted peer), count as neither lost nor unrecovered.
    """

    def __init__(self, params: FecParams) -> None:
        check_params(params)
        self.params = params
        self.counters = DgramFecCounters()
        self.loss = 0.0
        self.peer_feedback = 0.0
        self._groups: dict[int, _Group] = {}  # by group id, oldest first
        self._held_bytes = 0
        self._high = -1  # newest data seq delivered; bit i of _seen: seq _high - i was delivered
        self._seen = 0
        self._valid = 0  # window positions standing for packets the peer sent (for ``unrecovered``)
        self._loss_high = -1
        self._expected = 0
        self._received = 0

    @property
    def held_groups(self) -> int:
        return len(self._groups)

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def decode(self, packet: Buffer, now: float) -> list[bytes]:
        """Payloads to deliver now: a data packet's own (unless delivered before), then any payloads its
        group's parity rebuilds. ProtocolError (counted ``bad``) for malformed or contradictory packets."""
        view = memoryview(packet)
        if len(view) < HEADER_SIZE:
            raise self._bad(f"datagram FEC packet of {len(view)} bytes is shorter than its header")
        word, index, count, parity, feedback = _HEADER.unpack_from(view)
        kind, seq = word >> SEQ_BITS, word & SEQ_MASK
        self._expire(now)
        if kind == KIND_DATA:
            out = self._on_data(seq, index, count, parity, view, now)
        elif kind == KIND_PARITY:
            out = self._on_parity(seq, index, count, parity, view, now)
        else:
            raise self._bad(f"unknown datagram FEC kind {kind:#04x}")
        self.peer_feedback = feedback / 255
        self._trim()
        return out

    def _bad(self, message: str) -> ProtocolError:
        self.counters.bad += 1
        return ProtocolError(message)

    # -- packets

    def _on_data(self, seq: int, index: int, count: int, parity: int, view: memoryview, now: float) -> list[bytes]:
        if count or index >= MAX_DATA or parity > MAX_PARITY or len(view) - HEADER_SIZE > MAX_PAYLOAD:
            raise self._bad(f"malformed datagram FEC data header (index {index}, count {count}, parity {parity})")
        gid = (seq - index) & SEQ_MASK
        group = self._groups.get(gid) if parity else None
        if group is not None and (group.parity != parity or (group.count and index >= group.count)):
            raise self._bad(f"datagram FEC data packet {index} contradicts its group {gid}")
        self.counters.data += 1
        state = self._accept(seq)
        if state != _NEW:
            self._count_dropped(state)
            return []
        self._measure(seq)
        payload = view[HEADER_SIZE:].tobytes()
        if not parity:
            return [payload]
        if group is None:
            group = self._groups[gid] = _Group(now, parity)
        group.top = max(group.top, index + 1)
        self._hold(group, index, payload)
        return [payload, *self._settle(gid, group)]

    def _on_parity(self, gid: int, index: int, count: int, parity: int, view: memoryview, now: float) -> list[bytes]:
        size = len(view) - HEADER_SIZE
        shape_ok = 1 <= count <= MAX_DATA and 1 <= parity <= MAX_PARITY and index < parity
        if not shape_ok or not 2 <= size <= MAX_PAYLOAD + 2:
            raise self._bad(f"malformed datagram FEC parity header (index {index}, count {count}, parity {parity})")
        group = self._groups.get(gid)
        if group is not None and (
            group.parity != parity or group.count not in (0, count) or group.size not in (0, size) or group.top > count
        ):
            raise self._bad(f"datagram FEC parity packet {index} contradicts its group {gid}")
        self.counters.parity += 1
        if group is None:
            if self._finished(gid, count):
                return []  # the usual fate of parity: its group arrived whole
            group = self._groups[gid] = _Group(now, parity)
        group.count, group.size = count, size
        if count + index in group.shards:
            self.counters.duplicates += 1
            return []
        self._hold(group, count + index, view[HEADER_SIZE:].tobytes())
        return self._settle(gid, group)

    # -- groups

    def _hold(self, group: _Group, position: int, shard: bytes) -> None:
        group.shards[position] = shard
        group.nbytes += len(shard)
        self._held_bytes += len(shard)

    def _settle(self, gid: int, group: _Group) -> list[bytes]:
        """Drop a group once all its data is delivered; rebuild it once it holds enough shards."""
        if not group.count:
            return []
        if self._finished(gid, group.count):
            self._drop(gid)
            return []
        if len(group.shards) < group.count:
            return []
        out = self._recover(gid, group)
        self._drop(gid)
        return out

    def _recover(self, gid: int, group: _Group) -> list[bytes]:
        count, size = group.count, group.size
        shards = {}
        for position, shard in group.shards.items():
            if position >= count:
                shards[position] = shard
            elif len(shard) + 2 <= size:
                shards[position] = _shard(shard, size)
            else:  # a data packet longer than the parity covers: one side is not what it claims
                self.counters.bad += 1
                return []
        try:
            rebuilt = _codec(count, group.parity).reconstruct_data(shards)
        except ValueError:
            self.counters.bad += 1
            return []
        out = []
        for index in sorted(rebuilt):
            shard = rebuilt[index]
            length = _LEN.unpack_from(shard)[0]
            if length + 2 > size:
                self.counters.bad += 1
                continue
            state = self._accept((gid + index) & SEQ_MASK)
            if state == _NEW:
                out.append(shard[2 : 2 + length])
                self.counters.recovered += 1
            elif state == _OLD:
                self.counters.stale += 1
        return out

    def _finished(self, gid: int, count: int) -> bool:
        """Whether every data packet of the group was delivered (or is too old to matter)."""
        return all(self._state((gid + i) & SEQ_MASK) != _NEW for i in range(count))

    def _drop(self, gid: int) -> None:
        self._held_bytes -= self._groups.pop(gid).nbytes

    def _expire(self, now: float) -> None:
        cutoff = now - EXPIRE_S
        while self._groups:
            gid, group = next(iter(self._groups.items()))
            if group.born > cutoff:
                break
            self._drop(gid)

    def _trim(self) -> None:
        while len(self._groups) > MAX_GROUPS or self._held_bytes > MAX_HELD_BYTES:
            self._drop(next(iter(self._groups)))

    # -- delivery window

    def _state(self, seq: int) -> int:
        if self._high < 0:
            return _NEW
        back = (self._high - seq) & SEQ_MASK
        if back >= SEQ_HALF:
            return _NEW  # ahead of the window
        if back >= WINDOW:
            return _OLD
        return _DUP if self._seen >> back & 1 else _NEW

    def _accept(self, seq: int) -> int:
        """The window's verdict on ``seq``; a _NEW seq is recorded as delivered."""
        state = self._state(seq)
        if state != _NEW:
            return state
        if self._high < 0:
            self._high, self._seen, self._valid = seq, 1, 1
            return state
        ahead = (seq - self._high) & SEQ_MASK
        if 0 < ahead < SEQ_HALF:
            self._advance(ahead)
            self._high = seq
            self._seen |= 1
        else:
            back = (self._high - seq) & SEQ_MASK
            self._seen |= 1 << back
            self._valid = max(self._valid, back + 1)
        return state

    def _advance(self, ahead: int) -> None:
        """Slide the window; seqs that leave it undelivered are lost for good."""
        if ahead >= WINDOW:  # a jump this far is a restarted peer (or a long outage): start over
            self.counters.unrecovered += self._valid - self._seen.bit_count()
            self._seen, self._valid = 0, 1
            return
        leaving = self._valid + ahead - WINDOW
        if leaving > 0:
            self.counters.unrecovered += leaving - (self._seen >> (WINDOW - ahead)).bit_count()
        self._seen = (self._seen << ahead) & ((1 << WINDOW) - 1)
        self._valid = min(WINDOW, self._valid + ahead)

    def _count_dropped(self, state: int) -> None:
        if state == _DUP:
            self.counters.duplicates += 1
        else:
            self.counters.stale += 1

    # -- loss estimate

    def _measure(self, seq: int) -> None:
        """Account one data packet received directly: seq gaps are expected packets that did not come."""
        ahead = 1 if self._loss_high < 0 else (seq - self._loss_high) & SEQ_MASK
        if ahead >= SEQ_HALF:
            ahead = 0  # an older packet arriving late: it was counted as expected already
        elif ahead >= WINDOW:
            ahead = 1  # a restart or a long outage: start over rather than count a huge gap
        if ahead:
            self._loss_high = seq
        self._expected += ahead
        self._received += 1
        if self._expected >= LOSS_BATCH:
            expected = self._expected
            lost = max(0, expected - self._received) / expected
            keep = (1 - LOSS_WEIGHT) ** expected
            self.loss = self.loss * keep + lost * (1 - keep)
            # Late packets beyond the batch's count make up for losses counted in the next one.
            self._expected, self._received = 0, max(0, self._received - expected)
