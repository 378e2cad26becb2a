"""kcp-go compatible forward error correction: the FEC header, the group encoder and the decoder.

A FEC body (what sits after kcp-go's 20-byte crypt header) is ``seqid u32 LE | type u16 LE | rest``;
for a data shard ``rest`` is ``size u16 LE (= 2 + len(kcp)) | kcp``, for a parity shard it is parity
bytes. Shards ``seqid - seqid % n .. + n-1`` (n = data + parity) form a group; the first ``data`` are
data, the rest parity over the zero-padded ``size | kcp`` strings of the group's data shards.

The erasure code is klauspost/reedsolomon's default (Backblaze-style) one: GF(2^8) over 0x11D,
encoding matrix ``V * inverse(top of V)`` with the Vandermonde matrix ``V[r][c] = r**c``. Whole shards
are multiplied with ``bytes.translate`` and added with big-int XOR, so the per-byte work runs in C.
"""

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

from sidecar.errors import ConfigError, ProtocolError

TYPE_DATA = 0x00F1
TYPE_PARITY = 0x00F2
HEADER_SIZE = 6
DATA_HEADER_SIZE = HEADER_SIZE + 2
MAX_SHARDS = 256
RX_GROUPS_MULTIPLIER = 3
EXPIRE_S = 60.0
SWEEP_EVERY_S = 1.0
TUNE_SAMPLES = 258
FINISHED_GROUPS_KEPT = 64
DECODE_MATRICES_KEPT = 256

_HEADER = struct.Struct("<IH")
_DATA_HEADER = struct.Struct("<IHH")
_SIZE = struct.Struct("<H")
_U32 = 0xFFFFFFFF

# ---- GF(2^8), reducing polynomial x^8+x^4+x^3+x^2+1, generator 2 -----------------------------------

_POLY = 0x11D
_EXP = [0] * 510
_LOG = [0] * 256
_x = 1
for _i in range(255):
    _EXP[_i] = _EXP[_i + 255] = _x
    _LOG[_x] = _i
    _x <<= 1
    if _x & 0x100:
        _x ^= _POLY
del _x, _i


def gf_mul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else _EXP[_LOG[a] + _LOG[b]]


def gf_inv(a: int) -> int:
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(256)")
    return _EXP[255 - _LOG[a]]


def gf_pow(a: int, n: int) -> int:
    if n == 0:
        return 1
    return 0 if a == 0 else _EXP[_LOG[a] * n % 255]


@cache
def mul_table(c: int) -> bytes:
    """The 256-byte ``translate`` table multiplying every byte by ``c``."""
    return bytes(gf_mul(c, x) for x in range(256))


Matrix = list[list[int]]


def _mat_mul(a: Matrix, b: Matrix) -> Matrix:
    out = []
    for row in a:
        acc = [0] * len(b[0])
        for k, coeff in enumerate(row):
            if coeff:
                for j, val in enumerate(b[k]):
                    acc[j] ^= gf_mul(coeff, val)
        out.append(acc)
    return out


def _invert(m: Matrix) -> Matrix:
    """Gauss-Jordan inverse of a square matrix (small: at most 256x256, done once per loss pattern)."""
    n = len(m)
    work = [row[:] + [int(i == j) for j in range(n)] for i, row in enumerate(m)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if work[r][col]), None)
        if pivot is None:
            raise ValueError("singular matrix")
        work[col], work[pivot] = work[pivot], work[col]
        scale = gf_inv(work[col][col])
        work[col] = [gf_mul(scale, v) for v in work[col]]
        for r in range(n):
            factor = work[r][col]
            if r != col and factor:
                work[r] = [v ^ gf_mul(factor, p) for v, p in zip(work[r], work[col], strict=True)]
    return [row[n:] for row in work]


def _combine(coeffs: Sequence[int], shards: Sequence[bytes], size: int) -> bytes:
    """sum(coeffs[i] * shards[i]) over GF(256), whole shards at a time."""
    acc = 0
    for coeff, shard in zip(coeffs, shards, strict=True):
        if coeff == 1:
            acc ^= int.from_bytes(shard, "little")
        elif coeff:
            acc ^= int.from_bytes(shard.translate(mul_table(coeff)), "little")
    return acc.to_bytes(size, "little")


def check_shape(data_shards: int, parity_shards: int) -> None:
    if data_shards < 1 or parity_shards < 1 or data_shards + parity_shards > MAX_SHARDS:
        raise ConfigError(
            "datashard/parityshard",
            f"{data_shards}/{parity_shards}",
            f"need datashard >= 1, parityshard >= 1 and their sum <= {MAX_SHARDS} (or both 0: FEC off)",
        )


class ReedSolomon:
    """klauspost/reedsolomon ``New(data, parity)``: systematic code from a Vandermonde matrix."""

    def __init__(self, data_shards: int, parity_shards: int) -> None:
        check_shape(data_shards, parity_shards)
        self.data_shards, self.parity_shards = data_shards, parity_shards
        total = data_shards + parity_shards
        vandermonde = [[gf_pow(r, c) for c in range(data_shards)] for r in range(total)]
        self.matrix = _mat_mul(vandermonde, _invert(vandermonde[:data_shards]))
        self._decoders: dict[tuple[int, ...], list[tuple[int, bytes]]] = {}

    def encode(self, data: Sequence[bytes]) -> list[bytes]:
        """The parity shards of ``data_shards`` equal-length data shards."""
        if len(data) != self.data_shards or len({len(s) for s in data}) != 1:
            raise ValueError(f"need {self.data_shards} data shards of equal length")
        size = len(data[0])
        return [_combine(row, data, size) for row in self.matrix[self.data_shards :]]

    def reconstruct_data(self, shards: Mapping[int, bytes]) -> dict[int, bytes]:
        """The missing data shards, by index, from at least ``data_shards`` equal-length shards."""
        present = sorted(shards)[: self.data_shards]
        if len(present) < self.data_shards or len({len(shards[i]) for i in present}) != 1:
            raise ValueError(f"need {self.data_shards} shards of equal length")
        sources = [shards[i] for i in present]
        size = len(sources[0])
        return {i: _combine(row, sources, size) for i, row in self._decoder(tuple(present))}

    def _decoder(self, present: tuple[int, ...]) -> list[tuple[int, bytes]]:
        """Rows of the inverted sub-matrix that rebuild each missing data shard, cached per pattern."""
        rows = self._decoders.get(present)
        if rows is None:
            inverse = _invert([self.matrix[i] for i in present])
            rows = [(i, bytes(inverse[i])) for i in range(self.data_shards) if i not in present]
            if len(self._decoders) >= DECODE_MATRICES_KEPT:
                del self._decoders[next(iter(self._decoders))]
            self._decoders[present] = rows
        return rows


# ---- wire header ----------------------------------------------------------------------------------


def is_fec(body: bytes) -> bool:
    """Whether a decrypted body carries a FEC header (plain KCP has cmd 81..84 | frg<<8 there)."""
    return len(body) >= HEADER_SIZE and body[5] == 0 and body[4] in (TYPE_DATA, TYPE_PARITY)


def parse_header(body: bytes) -> tuple[int, int]:
    """``(seqid, type)`` of a FEC body; ProtocolError if it is short, of unknown type or mis-sized."""
    if len(body) < DATA_HEADER_SIZE:
        raise ProtocolError(f"FEC packet of {len(body)} bytes is shorter than {DATA_HEADER_SIZE}")
    seqid, kind, size = _DATA_HEADER.unpack_from(body)
    if kind == TYPE_DATA:
        if size != len(body) - HEADER_SIZE:
            raise ProtocolError(f"FEC data shard size field {size} != {len(body) - HEADER_SIZE}")
    elif kind != TYPE_PARITY:
        raise ProtocolError(f"unknown FEC type {kind:#06x}")
    return seqid, kind


# ---- encoder --------------------------------------------------------------------------------------


class FecEncoder:
    """Stamps KCP datagrams as data shards; after every ``data_shards`` of them adds the parity shards."""

    def __init__(self, data_shards: int, parity_shards: int) -> None:
        self._rs = ReedSolomon(data_shards, parity_shards)
        total = data_shards + parity_shards
        self._paws = _U32 // total * total  # seqid wraps here, so groups stay aligned
        self._next = 0
        self._pending: list[bytes] = []

    def encode(self, kcp: bytes) -> list[bytes]:
        """FEC bodies to send now: the data shard for ``kcp``, then the group's parity if it completed."""
        if len(kcp) > 0xFFFF - 2:
            raise ValueError("KCP datagram too long for the FEC size field")
        packet = _DATA_HEADER.pack(self._take_seqid(), TYPE_DATA, len(kcp) + 2) + kcp
        self._pending.append(packet)
        if len(self._pending) < self._rs.data_shards:
            return [packet]
        return [packet, *self._parity()]

    def _parity(self) -> list[bytes]:
        size = max(len(p) for p in self._pending) - HEADER_SIZE
        shards = [p[HEADER_SIZE:].ljust(size, b"\0") for p in self._pending]
        self._pending.clear()
        return [_HEADER.pack(self._take_seqid(), TYPE_PARITY) + p for p in self._rs.encode(shards)]

    def _take_seqid(self) -> int:
        seqid = self._next
        self._next = (seqid + 1) % self._paws
        return seqid


# ---- decoder --------------------------------------------------------------------------------------


@dataclass(slots=True)
class FecCounters:
    """What the decoder saw; kcp-go's SNMP names in brackets where one exists."""

    data: int = 0  # data shards received
    parity: int = 0  # parity shards received [FECParityShards]
    recovered: int = 0  # lost data shards rebuilt and delivered [FECRecovered]
    duplicates: int = 0  # shards already held, dropped
    late: int = 0  # shards of an already finished group (normally parity not needed), dropped
    lost: int = 0  # data shards given up on: group evicted or expired unrecovered [~FECShortShards]
    expired: int = 0  # shards dropped after EXPIRE_S
    bad_header: int = 0  # malformed FEC headers (each also raised ProtocolError)
    bad_recovered: int = 0  # rebuilt shard with an impossible size field [FECErrs]
    inconsistent: int = 0  # groups whose parity lengths disagree: dropped, nothing rebuilt
    mismatched: int = 0  # shards whose type contradicts their place under the current shape, dropped
    held_back: int = 0  # rebuilds postponed because the shape is in doubt (see FecDecoder)
    retunes: int = 0  # shape changes made by auto-tune


class FecResult(NamedTuple):
    """KCP input from one FEC packet: its own payload (data shards) and any rebuilt payloads.

    ``recovered`` payloads are kcp-go's "non-regular" input: their window and timestamps are stale.
    """

    regular: bytes | None
    recovered: list[bytes]


class _Group:
    __slots__ = ("born", "data", "shards")

    def __init__(self, born: float) -> None:
        self.born = born
        self.data = 0
        self.shards: dict[int, bytes] = {}


class FecDecoder:
    """Receives FEC bodies (any order, duplicates, losses) and returns the KCP input they carry.

    Memory is bounded like kcp-go's: at most ``3 * (data + parity)`` shards are held (oldest groups
    evicted first), nothing is held longer than ``EXPIRE_S``. ``now`` is a monotonic time in seconds.

    The shape (data, parity) is trusted as configured, like kcp-go does, until a shard's type contradicts
    its position. Rebuilding with a wrong shape would produce garbage, so from then on no group is rebuilt
    until the runs of data/parity seqids seen confirm a shape: with ``autotune`` that measured shape
    replaces the configured one (kcp-go >= 5.5 adapts to the sender the same way), without it only a
    confirmation of the configured one restores rebuilding.
    """

    def __init__(self, data_shards: int, parity_shards: int, *, autotune: bool = True) -> None:
        self.counters = FecCounters()
        self._autotune = autotune
        self._ring: list[tuple[int, bool] | None] = [None] * TUNE_SAMPLES
        self._samples = 0
        self._measured_at = -TUNE_SAMPLES
        self._measured: tuple[int, int] | None = None
        self._next_sweep = 0.0
        self._newest: int | None = None
        self._set_shape(data_shards, parity_shards)

    @property
    def shape(self) -> tuple[int, int]:
        return self._rs.data_shards, self._rs.parity_shards

    @property
    def held(self) -> int:
        """Shards currently held for a possible rebuild."""
        return self._held

    def decode(self, body: bytes, now: float) -> FecResult:
        """KCP input carried by one FEC body; ProtocolError (counted) if its header is malformed."""
        try:
            seqid, kind = parse_header(body)
        except ProtocolError:
            self.counters.bad_header += 1
            raise
        is_data = kind == TYPE_DATA
        if is_data:
            self.counters.data += 1
            regular: bytes | None = body[DATA_HEADER_SIZE:]
        else:
            self.counters.parity += 1
            regular = None
        if now >= self._next_sweep:
            self._expire(now)
        if not self._placed(seqid, is_data):
            self.counters.mismatched += 1
            return FecResult(regular, [])
        return FecResult(regular, self._store(seqid, is_data, body[HEADER_SIZE:], now))

    # -- shape and auto-tune

    def _set_shape(self, data_shards: int, parity_shards: int) -> None:
        self._rs = ReedSolomon(data_shards, parity_shards)
        self._trusted = True
        self._n = data_shards + parity_shards
        self._limit = RX_GROUPS_MULTIPLIER * self._n
        self._groups: dict[int, _Group] = {}
        self._finished: dict[int, None] = {}
        self._held = 0

    def _placed(self, seqid: int, is_data: bool) -> bool:
        """Whether the shard's type fits its position; if not, distrust the shape and try to re-learn it."""
        self._ring[seqid % TUNE_SAMPLES] = (seqid, is_data)
        self._samples += 1
        if (seqid % self._n < self._rs.data_shards) == is_data:
            return True
        self._trusted = False
        measured = self._measured_shape()
        if self._autotune and measured is not None and measured != self.shape:
            self.counters.lost += sum(self._rs.data_shards - g.data for g in self._groups.values())
            self._set_shape(*measured)
            self.counters.retunes += 1
        return (seqid % self._n < self._rs.data_shards) == is_data

    def _measured_shape(self) -> tuple[int, int] | None:
        """The shape the sampled seqids show; re-measured at most once per group's worth of samples."""
        if self._samples - self._measured_at >= self._n:
            self._measured_at = self._samples
            data, parity = _run_length(self._ring, True), _run_length(self._ring, False)
            self._measured = (data, parity) if data and parity and data + parity <= MAX_SHARDS else None
        return self._measured

    def _may_rebuild(self) -> bool:
        if not self._trusted and self._measured_shape() == self.shape:
            self._trusted = True
        if not self._trusted:
            self.counters.held_back += 1
        return self._trusted

    # -- groups

    def _store(self, seqid: int, is_data: bool, shard: bytes, now: float) -> list[bytes]:
        pos = seqid % self._n
        base = seqid - pos
        if base in self._finished:
            self.counters.late += 1
            return []
        group = self._groups.get(base)
        if group is None:
            group = self._groups[base] = _Group(now)
        elif pos in group.shards:
            self.counters.duplicates += 1
            return []
        group.shards[pos] = shard
        group.data += is_data
        self._held += 1
        if self._newest is None or 0 < ((seqid - self._newest) & _U32) < 1 << 31:
            self._newest = seqid
        recovered: list[bytes] = []
        if group.data == self._rs.data_shards:
            self._finish(base)
        elif len(group.shards) >= self._rs.data_shards and self._may_rebuild():
            recovered = self._recover(group)
            self._finish(base)
        while self._held > self._limit:
            self._evict(self._oldest())
        return recovered

    def _recover(self, group: _Group) -> list[bytes]:
        ds = self._rs.data_shards
        size = max(len(s) for s in group.shards.values())
        if any(len(s) != size for pos, s in group.shards.items() if pos >= ds):
            self.counters.inconsistent += 1
            return []
        padded = {pos: s.ljust(size, b"\0") for pos, s in group.shards.items()}
        out = []
        for _, shard in sorted(self._rs.reconstruct_data(padded).items()):
            length = _SIZE.unpack_from(shard)[0]
            if 2 <= length <= size:
                out.append(shard[2:length])
            else:
                self.counters.bad_recovered += 1
        self.counters.recovered += len(out)
        return out

    def _finish(self, base: int) -> None:
        self._held -= len(self._groups.pop(base).shards)
        self._finished[base] = None
        if len(self._finished) > FINISHED_GROUPS_KEPT:
            del self._finished[next(iter(self._finished))]

    def _oldest(self) -> int:
        newest = self._newest or 0
        return max(self._groups, key=lambda base: (newest - base) & _U32)

    def _evict(self, base: int) -> None:
        group = self._groups.pop(base)
        self._held -= len(group.shards)
        self.counters.lost += self._rs.data_shards - group.data

    def _expire(self, now: float) -> None:
        self._next_sweep = now + SWEEP_EVERY_S
        for base in [b for b, g in self._groups.items() if now - g.born > EXPIRE_S]:
            self.counters.expired += len(self._groups[base].shards)
            self._evict(base)


def _run_length(ring: Sequence[tuple[int, bool] | None], want: bool) -> int:
    """Length of the first complete run of ``want`` shards (consecutive seqids, other type both sides)."""
    start = -1
    prev = ring[0]
    for i in range(1, len(ring)):
        cur = ring[i]
        if prev is None or cur is None or cur[0] != prev[0] + 1:
            start = -1
        elif cur[1] == want and prev[1] != want:
            start = i
        elif start >= 0 and prev[1] == want and cur[1] != want:
            return i - start
        prev = cur
    return 0
