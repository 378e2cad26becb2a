"""udp2raw's own handshake (spec udp2raw.md 5): the bare id rules, the timers, the client states and
the server's bounded table of half-open conns. The machines using them: u2r_client, u2r_server.

    handshake1  client -> (client my_id, 0,              client const_id)   resent every 1 s
    reply       server -> (server my_id, client my_id,   server const_id)
    handshake2  client -> (client my_id, server my_id,   client const_id)   resent every 1 s
    ready       server -> its first safer heartbeat
"""

from __future__ import annotations

import random
from collections import OrderedDict
from enum import Enum
from typing import NamedTuple

from sidecar.proto.u2r_frame import Bare, build_bare

RETRY_S = 1.0  # client: resend the current handshake packet
STATE_TIMEOUT_S = 5.0  # client: a non-ready state older than this starts over (new port, new my_id)
SERVER_HANDSHAKE_TIMEOUT_S = 10.0  # server: a conn not ready this long after its creation is deleted
PEER_SILENT_S = 10.0  # client: no server heartbeat this long -> reconnect
ROLLER_FROZEN_S = 12.0  # client: the server's roller stood still this long -> reconnect
SERVER_CONN_TIMEOUT_S = 240.0  # server: a ready conn without heartbeats or convs this long is deleted
MAX_HALF_OPEN = 10000
MAX_READY = 1000


class ClientState(Enum):
    IDLE = "idle"
    TCP_HANDSHAKE = "tcp_handshake"
    TCP_HANDSHAKE_DUMMY = "tcp_handshake_dummy"  # easy-faketcp: the kernel's handshake, watched
    HANDSHAKE1 = "handshake1"
    HANDSHAKE2 = "handshake2"
    READY = "ready"


def random_id(rng: random.Random) -> int:
    """A random non-zero u32 (my_id, const_id)."""
    return rng.getrandbits(32) or 1


def handshake1(my_id: int, const_id: int) -> bytes:
    return build_bare(my_id, 0, const_id)


def reply(server_id: int, client_id: int, server_const_id: int) -> bytes:
    return build_bare(server_id, client_id, server_const_id)


def handshake2(my_id: int, server_id: int, const_id: int) -> bytes:
    return build_bare(my_id, server_id, const_id)


def is_hello(bare: Bare) -> bool:
    """A client's handshake1: the only packet that may create server state."""
    return bare.id2 == 0 and bare.id1 != 0


class HalfOpen(NamedTuple):
    """A server conn between handshake1 and handshake2: just its id and its birth time."""

    my_id: int
    created: float


class HalfOpenTable:
    """The server's conns in state handshake1, keyed by client address: capped and expired by age.

    Entries are created in time order, so the oldest is always first and expiry pops from the front.
    A hello beyond the cap is refused (counted by the caller), which bounds what a flood can cost.
    """

    def __init__(self, limit: int = MAX_HALF_OPEN, timeout_s: float = SERVER_HANDSHAKE_TIMEOUT_S) -> None:
        self.limit, self.timeout_s = limit, timeout_s
        self._entries: OrderedDict[tuple, HalfOpen] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> HalfOpen | None:
        return self._entries.get(key)

    def open(self, key: tuple, rng: random.Random, now: float) -> HalfOpen | None:
        """The entry for `key`, created if needed; None when the table is full."""
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.limit:
                self.expire(now)
                if len(self._entries) >= self.limit:
                    return None
            entry = self._entries[key] = HalfOpen(random_id(rng), now)
        return entry

    def pop(self, key: tuple) -> None:
        self._entries.pop(key, None)

    def expire(self, now: float) -> int:
        """Drop entries older than the timeout; how many were dropped."""
        dropped = 0
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.created < self.timeout_s:
                break
            del self._entries[key]
            dropped += 1
        return dropped

    def next_expiry(self) -> float:
        if not self._entries:
            return float("inf")
        return next(iter(self._entries.values())).created + self.timeout_s
