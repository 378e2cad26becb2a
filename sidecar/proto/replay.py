"""A replay filter for salts: two Bloom filters used ping-pong, so memory is fixed and old salts age out.

New salts go into the current filter; when it has taken `capacity` salts or is `window_s` old, the
older filter is cleared and becomes the current one. A salt is therefore remembered for at least one
full filter's worth of traffic (or one window) and at most two. Bit positions come from a keyed
BLAKE2b, so a peer cannot aim salts at chosen bits.
"""

import math
import os

from sidecar.proto.digests import keyed_blake2b


class BloomFilter:
    """A plain Bloom filter over a bytearray, sized for `capacity` items at `error_rate`."""

    __slots__ = ("_bits", "_nbits", "_hashes", "_digest", "count")

    def __init__(self, capacity: int, error_rate: float, key: bytes) -> None:
        nbits = max(64, math.ceil(-capacity * math.log(error_rate) / math.log(2) ** 2))
        self._nbits = nbits
        self._bits = bytearray((nbits + 7) // 8)
        self._hashes = max(1, round(nbits / capacity * math.log(2)))
        self._digest = keyed_blake2b(key, 16)
        self.count = 0

    def positions(self, item: bytes) -> list[int]:
        """k bit positions by double hashing (Kirsch-Mitzenmacher) of one keyed 128-bit digest."""
        digest = self._digest(item)
        h1, h2 = int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little") | 1
        nbits = self._nbits
        return [(h1 + i * h2) % nbits for i in range(self._hashes)]

    def has(self, positions: list[int]) -> bool:
        bits = self._bits
        for p in positions:  # noqa: SIM110 - a plain loop: no generator per lookup
            if not bits[p >> 3] & (1 << (p & 7)):
                return False
        return True

    def add(self, positions: list[int]) -> None:
        bits = self._bits
        for p in positions:
            bits[p >> 3] |= 1 << (p & 7)
        self.count += 1

    def clear(self) -> None:
        self._bits[:] = bytes(len(self._bits))
        self.count = 0

    @property
    def size_bytes(self) -> int:
        return len(self._bits)


class ReplayFilter:
    """Remembers recent salts; `check_and_add(salt, now)` is False for a salt seen before."""

    def __init__(self, capacity: int = 100_000, window_s: float = 3600.0, error_rate: float = 1e-6) -> None:
        key = os.urandom(16)
        self._filters = [BloomFilter(capacity, error_rate, key), BloomFilter(capacity, error_rate, key)]
        self._capacity = capacity
        self._window_s = window_s
        self._since: float | None = None
        self.replays = 0

    def check_and_add(self, salt: bytes, now: float) -> bool:
        current, older = self._filters
        positions = current.positions(salt)  # both filters share size and key, so one set of positions
        if current.has(positions) or older.has(positions):
            self.replays += 1
            return False
        if self._since is None:
            self._since = now
        elif current.count >= self._capacity or now - self._since >= self._window_s:
            older.clear()
            self._filters.reverse()
            current, self._since = older, now
        current.add(positions)
        return True

    @property
    def size_bytes(self) -> int:
        return sum(f.size_bytes for f in self._filters)
