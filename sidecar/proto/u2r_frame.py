"""udp2raw plaintext layouts above the crypto: bare handshakes, safer packets, anti-replay, --fix-gro.

Spec udp2raw.md sections 5, 6.1, 6.3 and 7. The handshake state machines build on this:
    plaintext = build_bare(...) / build_heartbeat(...) / build_data(...)
    blob = codec.seal(plaintext, my_direction)          # u2r_crypto.BlobCodec
    packet = parse_packet(codec.open(blob, peer_direction))   # -> Bare | Safer
Byte 16 tells the layouts apart: 'b' bare, 'h'/'d' safer.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

from sidecar.errors import ProtocolError
from sidecar.proto.u2r_aes import AesPair, new_aes
from sidecar.proto.u2r_crypto import MAX_BLOB, Buffer, Direction, Keys

BARE_LEN = 29
SAFER_HEADER_LEN = 18
DATA_HEADER_LEN = 22
DEFAULT_HB_LEN = 1200
REPLAY_WINDOW = 4000
HEARTBEAT = "h"
DATA = "d"

_BARE_MARK = 0x62
_TYPES = {0x68: HEARTBEAT, 0x64: DATA}
_BARE = struct.Struct("!8s8sBIII")
_SAFER = struct.Struct("!IIQBB")
_DATA = struct.Struct("!IIQBBI")
_CONV = struct.Struct("!I")
_U16 = struct.Struct("!H")
_GRO_MIN_RECORD = 16


class Bare(NamedTuple):
    """A handshake packet. Ids per spec 5: handshake1 (client my_id, 0, client const_id);
    reply (server my_id, client my_id, server const_id); handshake2 (client my_id, server my_id,
    client const_id). iv and pad are random filler that keep the zero-IV CBC first block unique."""

    id1: int
    id2: int
    id3: int
    iv: bytes
    pad: bytes


class Safer(NamedTuple):
    """A post-handshake packet. For 'd', conv is set and payload is the UDP datagram; for 'h', conv is
    None and payload is the heartbeat filler."""

    my_id: int
    opp_id: int
    seq: int
    type: str
    roller: int
    conv: int | None
    payload: memoryview


def build_bare(id1: int, id2: int, id3: int, nonce: bytes | None = None) -> bytes:
    """The 29-byte bare plaintext; `nonce` = iv(8) || pad(8), random when omitted."""
    nonce = os.urandom(16) if nonce is None else nonce
    if len(nonce) != 16:
        raise ValueError("nonce must be 16 bytes (iv || pad)")
    return _BARE.pack(nonce[:8], nonce[8:], _BARE_MARK, id1, id2, id3)


def build_heartbeat(my_id: int, opp_id: int, seq: int, roller: int, hb_len: int = DEFAULT_HB_LEN) -> bytes:
    """An 'h' plaintext with `hb_len` zero bytes of filler (--hb-mode 1; hb_len 0 for --hb-mode 0)."""
    return _SAFER.pack(my_id, opp_id, seq, 0x68, roller & 0xFF) + bytes(hb_len)


def build_data(my_id: int, opp_id: int, seq: int, roller: int, conv: int, payload: Buffer) -> bytes:
    """A 'd' plaintext carrying one UDP datagram of the flow `conv`."""
    return _DATA.pack(my_id, opp_id, seq, 0x64, roller & 0xFF, conv) + payload


def parse_packet(plaintext: Buffer) -> Bare | Safer:
    """Decode an opened blob. Which layouts and ids are acceptable in which state is the caller's rule."""
    view = memoryview(plaintext)
    if len(view) < SAFER_HEADER_LEN:
        if len(view) > 16 and view[16] == _BARE_MARK:
            raise ProtocolError(f"u2r: bare packet of {len(view)} bytes, need {BARE_LEN}")
        raise ProtocolError(f"u2r: packet of {len(view)} bytes is shorter than a header")
    if view[16] == _BARE_MARK:
        if len(view) < BARE_LEN:
            raise ProtocolError(f"u2r: bare packet of {len(view)} bytes, need {BARE_LEN}")
        iv, pad, _mark, id1, id2, id3 = _BARE.unpack_from(view)
        return Bare(id1, id2, id3, iv, pad)
    my_id, opp_id, seq, kind, roller = _SAFER.unpack_from(view)
    type_ = _TYPES.get(kind)
    if type_ is None:
        raise ProtocolError(f"u2r: unknown packet type 0x{kind:02x}")
    if type_ == HEARTBEAT:
        return Safer(my_id, opp_id, seq, type_, roller, None, view[SAFER_HEADER_LEN:])
    if len(view) < DATA_HEADER_LEN:
        raise ProtocolError("u2r: data packet without a conv")
    (conv,) = _CONV.unpack_from(view, SAFER_HEADER_LEN)
    return Safer(my_id, opp_id, seq, type_, roller, conv, view[DATA_HEADER_LEN:])


class ReplayWindow:
    """Spec 6.3 anti-replay for one conn and direction: the highest seq seen plus a ring of flags.

    Memory is one bytearray of `size` bytes; a slot stands for the one seq in (highest - size, highest]
    with that residue, so sliding forward only clears the slots the jump skipped over.
    """

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        self._size = size
        self._zeros = bytes(size)
        self.reset()

    def reset(self) -> None:
        """Forget everything (a conn became ready, or the client restarted its handshake)."""
        self.highest = 0
        self._seen = bytearray(self._size)

    def accept(self, seq: int) -> bool:
        """True the first time `seq` is seen inside the window (and remember it); False otherwise.

        Call it only for packets that authenticated and carry the expected ids.
        """
        size, highest = self._size, self.highest
        if seq > highest:
            if seq - highest > 1:  # the usual next seq reuses only its own slot, set just below
                self._slide(highest, seq - highest)
            self.highest = seq
            self._seen[seq % size] = 1
            return True
        if seq == highest or highest - seq >= size or self._seen[seq % size]:
            return False
        self._seen[seq % size] = 1
        return True

    def _slide(self, highest: int, gap: int) -> None:
        size = self._size
        if gap >= size:
            self._seen[:] = self._zeros
            return
        start = (highest + 1) % size
        first = min(gap, size - start)
        self._seen[start : start + first] = self._zeros[:first]
        self._seen[: gap - first] = self._zeros[: gap - first]


class GroFramer:
    """--fix-gro records (spec 7): each safer blob is sent as len(u16) || blob with the length hidden.

    xor: the length is xored with gro[0:2]; aes128cbc: the record's first 16 bytes are AES-ECB-encrypted
    with the sender's directional cipher key; aes128cfb and none: in clear (udp2raw's quirk, mirrored).
    Untested against the real tool: no capture exercises it.
    """

    def __init__(self, cipher_mode: str, keys: Keys) -> None:
        self._mask = _U16.unpack_from(keys.gro)[0] if cipher_mode == "xor" else 0
        self._ecb: dict[Direction, AesPair] | None = None
        if cipher_mode == "aes128cbc":
            self._ecb = {d: new_aes("ecb", keys.cipher(d)[:16]) for d in Direction}

    def frame(self, blob: Buffer, direction: Direction) -> bytes:
        """One record for `blob` (which must be 14..MAX_BLOB bytes: a record is at least 16)."""
        if not _GRO_MIN_RECORD - 2 <= len(blob) <= MAX_BLOB:
            raise ProtocolError(f"u2r: fix-gro cannot frame a {len(blob)}-byte blob")
        record = _U16.pack(len(blob) ^ self._mask) + blob
        if self._ecb is not None:
            record = self._ecb[direction].encrypt(record[:16]) + record[16:]
        return record

    def unframe(self, payload: Buffer, direction: Direction) -> list[bytes]:
        """All blobs of one received payload (several when GRO merged segments); ProtocolError if any
        record is malformed or bytes are left over."""
        view, blobs, pos = memoryview(payload), [], 0
        while pos < len(view):
            left = len(view) - pos
            if left < _GRO_MIN_RECORD:
                raise ProtocolError(f"u2r: fix-gro record of {left} bytes is too short")
            head = bytes(view[pos : pos + _GRO_MIN_RECORD])
            if self._ecb is not None:
                head = self._ecb[direction].decrypt(head)
            length = _U16.unpack_from(head)[0] ^ self._mask
            if not _GRO_MIN_RECORD - 2 <= length <= min(left - 2, MAX_BLOB):
                raise ProtocolError(f"u2r: fix-gro length {length} does not fit {left - 2} bytes")
            blobs.append(head[2:] + view[pos + _GRO_MIN_RECORD : pos + 2 + length])
            pos += 2 + length
        return blobs
