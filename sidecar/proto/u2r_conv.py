"""Conv multiplexing (spec udp2raw.md 6.4): many UDP flows inside one conn, each under a u32 conv id.

The client keys a conv by the local UDP source address; the server by the flow id it gave the UDP
socket it opened towards the target. Idle convs expire (180 s); the table is capped (10000).
Entries are kept in last-activity order, so touching and expiring are O(1) per conv.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

CONV_TIMEOUT_S = 180.0
MAX_CONVS = 10000


class ConvTable(Generic[K]):
    """conv <-> key with last-activity times."""

    def __init__(self, max_convs: int = MAX_CONVS, timeout_s: float = CONV_TIMEOUT_S) -> None:
        self.max_convs, self.timeout_s = max_convs, timeout_s
        self._by_conv: OrderedDict[int, tuple[K, float]] = OrderedDict()
        self._by_key: dict[K, int] = {}

    def __len__(self) -> int:
        return len(self._by_conv)

    def conv_of(self, key: K) -> int | None:
        return self._by_key.get(key)

    def key_of(self, conv: int) -> K | None:
        entry = self._by_conv.get(conv)
        return None if entry is None else entry[0]

    def add(self, conv: int, key: K, now: float) -> bool:
        """Bind a new conv to `key`; False when the table is full or either is already bound."""
        if len(self._by_conv) >= self.max_convs or conv in self._by_conv or key in self._by_key:
            return False
        self._by_conv[conv] = (key, now)
        self._by_key[key] = conv
        return True

    def new_conv(self, key: K, now: float, rng: random.Random) -> int | None:
        """Bind `key` to a fresh random non-zero conv; None when the table is full."""
        if len(self._by_conv) >= self.max_convs:
            return None
        while True:
            conv = rng.getrandbits(32)
            if conv and self.add(conv, key, now):
                return conv

    def touch(self, conv: int, now: float) -> None:
        entry = self._by_conv.get(conv)
        if entry is not None:
            self._by_conv[conv] = (entry[0], now)
            self._by_conv.move_to_end(conv)

    def expire(self, now: float) -> list[tuple[int, K]]:
        """Remove and return the (conv, key) pairs idle for the timeout or longer."""
        gone = []
        while self._by_conv:
            conv, (key, last) = next(iter(self._by_conv.items()))
            if now - last < self.timeout_s:
                break
            del self._by_conv[conv]
            del self._by_key[key]
            gone.append((conv, key))
        return gone

    def items(self) -> list[tuple[int, K]]:
        return [(conv, key) for conv, (key, _) in self._by_conv.items()]
