"""udp2raw plaintext layouts, the anti-replay window and --fix-gro records."""

from __future__ import annotations

import contextlib
import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import ProtocolError
from sidecar.proto.u2r_crypto import BlobCodec, Direction, Keys, derive_keys
from sidecar.proto.u2r_frame import (
    BARE_LEN,
    Bare,
    GroFramer,
    ReplayWindow,
    Safer,
    build_bare,
    build_data,
    build_heartbeat,
    parse_packet,
)

FAST = settings(max_examples=60, deadline=None)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)
u8 = st.integers(0, 255)


@functools.cache
def keys() -> Keys:
    return derive_keys(b"test-vector-key")


# --- layouts --------------------------------------------------------------------------------------


@FAST
@given(u32, u32, u32, st.binary(min_size=16, max_size=16))
def test_bare_round_trip(id1: int, id2: int, id3: int, nonce: bytes) -> None:
    plain = build_bare(id1, id2, id3, nonce)
    assert len(plain) == BARE_LEN and plain[16:17] == b"b"
    assert parse_packet(plain) == Bare(id1, id2, id3, nonce[:8], nonce[8:])


def test_bare_nonce() -> None:
    assert build_bare(1, 0, 2)[:16] != build_bare(1, 0, 2)[:16]  # random iv/pad by default
    with pytest.raises(ValueError, match="nonce"):
        build_bare(1, 0, 2, b"short")


@FAST
@given(u32, u32, u64, u8, st.integers(0, 1500))
def test_heartbeat_round_trip(my_id: int, opp_id: int, seq: int, roller: int, hb_len: int) -> None:
    plain = build_heartbeat(my_id, opp_id, seq, roller, hb_len)
    got = parse_packet(plain)
    assert got == Safer(my_id, opp_id, seq, "h", roller, None, memoryview(bytes(hb_len)))


@FAST
@given(u32, u32, u64, u8, u32, st.binary(max_size=1778))
def test_data_round_trip(my_id: int, opp_id: int, seq: int, roller: int, conv: int, payload: bytes) -> None:
    got = parse_packet(build_data(my_id, opp_id, seq, roller, conv, payload))
    assert got == Safer(my_id, opp_id, seq, "d", roller, conv, memoryview(payload))


@pytest.mark.parametrize(
    ("plain", "message"),
    [
        (bytes(17), "shorter"),
        (bytes(16) + b"b" + bytes(11), "bare packet of 28"),
        (bytes(16) + b"b", "bare packet of 17"),
        (bytes(16) + b"x" + bytes(10), "unknown packet type 0x78"),
        (bytes(16) + b"d" + bytes(4), "without a conv"),
    ],
)
def test_parse_rejects(plain: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_packet(plain)


def with_type_byte(data: bytes, marker: bytes) -> bytes:
    return data[:16].ljust(16, b"\0") + marker + data[16:]


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=64)
    | st.builds(with_type_byte, st.binary(max_size=40), st.sampled_from([b"b", b"h", b"d"]))
)
def test_parse_fuzz(plain: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        parse_packet(plain)


# --- anti-replay ----------------------------------------------------------------------------------


class ReferenceWindow:
    """Spec 6.3 restated with an unbounded set, to check the bounded ring against."""

    def __init__(self, size: int) -> None:
        self.size, self.highest, self.seen = size, 0, set[int]()

    def accept(self, seq: int) -> bool:
        if seq > self.highest:
            self.highest = seq
        elif seq == self.highest or self.highest - seq >= self.size or seq in self.seen:
            return False
        self.seen.add(seq)
        return True


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(0, 2**63),
    st.lists(st.integers(-60, 60) | st.integers(-5000, 5000) | st.sampled_from([0, 2**40]), max_size=80),
)
def test_replay_window_matches_spec(size: int, base: int, moves: list[int]) -> None:
    ring, ref = ReplayWindow(size), ReferenceWindow(size)
    for move in moves:
        seq = max(0, base + move)
        assert ring.accept(seq) == ref.accept(seq), (seq, ref.highest)
        base = max(base, seq)


def test_replay_window_spec_cases() -> None:
    w = ReplayWindow()
    assert not w.accept(0)  # equal to the initial highest (0)
    assert w.accept(10_000) and not w.accept(10_000)
    assert w.accept(9_999) and not w.accept(9_999)
    assert w.accept(6_001) and not w.accept(6_000)  # highest - seq >= 4000
    assert w.accept(10_002) and w.accept(10_001)  # the gap left 10_001 open
    assert w.accept(10**15) and not w.accept(10_002)  # a big jump forgets everything
    w.reset()
    assert w.highest == 0 and w.accept(10_000)


# --- fix-gro --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", ["aes128cbc", "aes128cfb", "xor", "none"])
@FAST
@given(
    blob_lens=st.lists(st.integers(14, 1800), min_size=1, max_size=3),
    direction=st.sampled_from(list(Direction)),
)
def test_gro_round_trip(cipher: str, blob_lens: list[int], direction: Direction) -> None:
    framer = GroFramer(cipher, keys())
    blobs = [bytes([n % 251]) * n for n in blob_lens]
    merged = b"".join(framer.frame(b, direction) for b in blobs)
    assert framer.unframe(merged, direction) == blobs


def test_gro_length_hiding() -> None:
    blob = BlobCodec("xor", "md5", keys()).seal(build_heartbeat(1, 2, 3, 4), Direction.C2S)
    clear = len(blob).to_bytes(2, "big")
    assert GroFramer("none", keys()).frame(blob, Direction.C2S) == clear + blob
    assert GroFramer("aes128cfb", keys()).frame(blob, Direction.C2S) == clear + blob  # udp2raw's quirk
    xored = GroFramer("xor", keys()).frame(blob, Direction.C2S)
    assert xored[:2] == bytes(a ^ b for a, b in zip(clear, keys().gro[:2], strict=True)) and xored[2:] == blob
    cbc = GroFramer("aes128cbc", keys())
    record = cbc.frame(blob, Direction.C2S)
    assert record[16:] == blob[14:] and record[:16] != (clear + blob)[:16]
    assert cbc.unframe(record, Direction.C2S) == [blob]
    try:  # the other direction's ECB key garbles the length
        wrong = cbc.unframe(record, Direction.S2C)
    except ProtocolError:
        wrong = None
    assert wrong != [blob]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00\x20" + bytes(10), "too short"),
        (b"\x00\x05" + bytes(20), "length 5"),
        (b"\x00\x30" + bytes(20), "48"),
    ],
)
def test_gro_rejects(payload: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        GroFramer("none", keys()).unframe(payload, Direction.C2S)
    with pytest.raises(ProtocolError, match="cannot frame"):
        GroFramer("none", keys()).frame(bytes(13), Direction.C2S)


@pytest.mark.parametrize("cipher", ["aes128cbc", "xor"])
@settings(max_examples=150, deadline=None)
@given(payload=st.binary(max_size=200))
def test_gro_fuzz(cipher: str, payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        GroFramer(cipher, keys()).unframe(payload, Direction.S2C)
