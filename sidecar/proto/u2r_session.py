"""What both udp2raw state machines share: options, the events they emit, the blob "wire" (crypto plus
optional --fix-gro framing) and the `Session` of a ready conn (spec udp2raw.md 6.1-6.3): ids, the
anti-replay seq, heartbeats, the roller and the liveness clocks. Sans-I/O: `now` is an argument.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple

from sidecar.errors import ProtocolError
from sidecar.proto.faketcp import SEQ_MODES
from sidecar.proto.u2r_crypto import MAX_BLOB, MAX_PLAINTEXT, BlobCodec, Direction, Keys
from sidecar.proto.u2r_frame import (
    DATA_HEADER_LEN,
    DEFAULT_HB_LEN,
    HEARTBEAT,
    GroFramer,
    ReplayWindow,
    Safer,
    build_data,
    build_heartbeat,
)
from sidecar.proto.u2r_raw import canonical_mode

TICK_S = 0.4  # udp2raw's main timer: heartbeats are checked on it (period ~0.8 s)
HEARTBEAT_INTERVAL_S = 0.6
MAX_DATAGRAM = MAX_PLAINTEXT - DATA_HEADER_LEN  # an upper bound: the tag, padding and --fix-gro come on top


@dataclass(frozen=True)
class U2rOptions:
    """The udp2raw options the state machines need (names as the real tool's, `-` as `_`)."""

    raw_mode: str = "faketcp"
    seq_mode: int = 3
    hb_mode: int = 1
    hb_len: int = DEFAULT_HB_LEN
    anti_replay: bool = True
    fix_gro: bool = False
    ttl: int = 64
    max_rst_allowed: int = -1  # -1: RSTs are only counted; N: the conn is dropped at the (N+1)th

    def __post_init__(self) -> None:
        object.__setattr__(self, "raw_mode", canonical_mode(self.raw_mode))
        if self.seq_mode not in SEQ_MODES:
            raise ValueError(f"seq_mode must be one of {SEQ_MODES}")
        if self.hb_mode not in (0, 1):
            raise ValueError("hb_mode must be 0 or 1")
        if not 0 <= self.hb_len <= 1500:
            raise ValueError("hb_len must be 0..1500")

    @property
    def heartbeat_len(self) -> int:
        """hb-mode 0 sends empty heartbeats."""
        return self.hb_len if self.hb_mode else 0


# --- events ---------------------------------------------------------------------------------------


class Deliver(NamedTuple):
    """Client: send `payload` to the local UDP address `addr`."""

    addr: tuple
    payload: bytes


class Handshaking(NamedTuple):
    """Client: a handshake attempt starts from raw port (or ICMP id) `port`, which may be the last one
    (--source-port): reserve it, filter on it, and in easy-faketcp connect the kernel socket from it."""

    port: int


class Ready(NamedTuple):
    """A conn finished its handshake. Server: `moved` when it took over a reconnecting client's conn.
    Client: `new_server` when the server's const_id differs from the last conn's (it restarted, and
    whatever it held for our flows is gone)."""

    key: tuple
    moved: bool = False
    new_server: bool = False


class Disconnected(NamedTuple):
    """A ready conn was dropped (client: it reconnects at once)."""

    key: tuple
    reason: str


class FlowOpened(NamedTuple):
    """Server: open a UDP socket towards the target for `flow`."""

    flow: int


class FlowData(NamedTuple):
    """Server: send `payload` to the target on the socket of `flow`."""

    flow: int
    payload: bytes


class FlowClosed(NamedTuple):
    """Server: close the socket of `flow`."""

    flow: int


Event = Deliver | Handshaking | Ready | Disconnected | FlowOpened | FlowData | FlowClosed


class Outputs:
    """What a state machine has for its driver: whole IPv4 packets to send and events, each drained once."""

    def __init__(self) -> None:
        self._packets: list[bytes] = []
        self._events: list[Event] = []

    def take_packets(self) -> list[bytes]:
        packets, self._packets = self._packets, []
        return packets

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events


# --- the blob wire --------------------------------------------------------------------------------


class Wire:
    """Seal/open blobs for one side: bare packets as they are, safer ones framed when --fix-gro."""

    def __init__(self, codec: BlobCodec, keys: Keys, fix_gro: bool, sender: Direction) -> None:
        self.codec, self.sender = codec, sender
        self.receiver = Direction.S2C if sender == Direction.C2S else Direction.C2S
        self._gro = GroFramer(codec.cipher_mode, keys) if fix_gro else None

    def seal(self, plaintext: bytes) -> bytes:
        return self.codec.seal(plaintext, self.sender)

    def seal_safer(self, plaintext: bytes) -> bytes:
        """The L4 payload for a safer plaintext; ProtocolError if the peer would drop it as huge."""
        blob = self.codec.seal(plaintext, self.sender)
        if self._gro is not None:
            blob = self._gro.frame(blob, self.sender)
        if len(blob) > MAX_BLOB:
            raise ProtocolError(f"u2r: a {len(blob)}-byte blob exceeds {MAX_BLOB}; send smaller datagrams")
        return blob

    def open(self, payload: memoryview) -> bytes:
        """One bare (or, without --fix-gro, any) plaintext; ProtocolError/AuthError when it fails."""
        return self.codec.open(payload, self.receiver)

    def open_safer(self, payload: memoryview) -> list[bytes]:
        if self._gro is None:
            return [self.codec.open(payload, self.receiver)]
        return [self.codec.open(blob, self.receiver) for blob in self._gro.unframe(payload, self.receiver)]


# --- a ready conn ---------------------------------------------------------------------------------


class Session:
    """The safer half of one conn as seen by one side.

    `roller` counts the heartbeats we received and rides in every packet we send; the peer's roller
    standing still means the peer stopped hearing us.
    """

    __slots__ = ("my_id", "peer_id", "send_seq", "replay", "roller", "peer_roller", "peer_roller_since",
                 "last_peer_hb", "last_hb_sent", "hb_len", "hb_mode", "rsts")

    def __init__(self, my_id: int, peer_id: int, options: U2rOptions, rng: random.Random, now: float) -> None:
        self.my_id, self.peer_id = my_id, peer_id
        self.send_seq = rng.getrandbits(64) // 10
        self.replay = ReplayWindow() if options.anti_replay else None
        self.roller = 0
        self.peer_roller = -1
        self.peer_roller_since = self.last_peer_hb = now
        self.last_hb_sent = float("-inf")
        self.hb_len, self.hb_mode = options.heartbeat_len, options.hb_mode
        self.rsts = 0

    def rekey(self, my_id: int, peer_id: int, now: float) -> None:
        """Take a reconnected client's new ids (server side of a conn move); anti-replay starts over."""
        self.my_id, self.peer_id = my_id, peer_id
        if self.replay is not None:
            self.replay.reset()
        self.peer_roller_since = self.last_peer_hb = now

    def heartbeat(self, now: float) -> bytes:
        self.last_hb_sent = now
        return build_heartbeat(self.my_id, self.peer_id, self._next_seq(), self.roller, self.hb_len)

    def data(self, conv: int, payload: bytes) -> bytes:
        return build_data(self.my_id, self.peer_id, self._next_seq(), self.roller, conv, payload)

    def _next_seq(self) -> int:
        seq = self.send_seq
        self.send_seq = (seq + 1) & 0xFFFFFFFFFFFFFFFF
        return seq

    def accept(self, packet: Safer, now: float) -> bool:
        """Whether an opened safer packet belongs here (ids, anti-replay); if so, note liveness."""
        if packet.my_id != self.peer_id or packet.opp_id != self.my_id:
            return False
        if self.replay is not None and not self.replay.accept(packet.seq):
            return False
        if packet.type == HEARTBEAT or not self.hb_mode:
            self.last_peer_hb = now
            self.roller = (self.roller + 1) & 0xFF
        if packet.roller != self.peer_roller:
            self.peer_roller, self.peer_roller_since = packet.roller, now
        return True

    def too_many_rsts(self, max_rst_allowed: int) -> bool:
        """Count one received RST; True once there are more than --max-rst-allowed (when it is set)."""
        self.rsts += 1
        return 0 <= max_rst_allowed < self.rsts

    def heartbeat_due(self, now: float) -> bool:
        return now - self.last_hb_sent >= HEARTBEAT_INTERVAL_S

