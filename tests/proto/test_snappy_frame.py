"""Snappy framing format: vectors, round trips over any chunking, cross-checks, corrupt input."""

from __future__ import annotations

import random
import struct

import cramjam
import pytest
from crc32c import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import ProtocolError
from sidecar.proto.snappy_frame import MAX_BLOCK, STREAM_IDENTIFIER, Decoder, Encoder, masked_crc

# database=None: other engineers share this tree, so the tests leave no .hypothesis/ behind.
FAST = settings(max_examples=80, deadline=None, database=None)
TEXT = b"GET /index.html HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\n\r\n" * 3000


def chunk(ctype: int, body: bytes) -> bytes:
    return struct.pack("<I", ctype | len(body) << 8) + body


def stored(data: bytes) -> bytes:
    return chunk(0x01, struct.pack("<I", masked_crc(data)) + data)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def chunk_types(stream: bytes) -> list[tuple[int, int]]:
    """(type, body length) of every chunk."""
    out, pos = [], 0
    while pos < len(stream):
        (word,) = struct.unpack_from("<I", stream, pos)
        out.append((word & 0xFF, word >> 8))
        pos += 4 + (word >> 8)
    return out


# ----- vectors


def test_stream_identifier_vector() -> None:
    assert bytes.fromhex("ff 06 00 00 73 4e 61 50 70 59") == STREAM_IDENTIFIER
    enc = Encoder()
    assert enc.compress(b"") == b""  # like Go's Flush with nothing buffered: no header yet
    first = enc.compress(b"abc")
    assert first.startswith(STREAM_IDENTIFIER)
    assert not enc.compress(b"abc").startswith(STREAM_IDENTIFIER)


def test_crc32c_check_value_and_stored_chunk_vector() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C (Castagnoli) check value
    # "abc" as framed by an independent implementation (Rust snap, via cramjam): stored chunk.
    vector = bytes.fromhex("ff060000734e6150705901070000" + "6e57f121" + "616263")
    assert Encoder().compress(b"abc") == vector
    assert Decoder().feed(vector) == b"abc"


def test_compressible_data_uses_compressed_chunks_within_block_limit() -> None:
    wire = Encoder().compress(TEXT)
    types = chunk_types(wire)
    assert types[0] == (0xFF, 6)
    assert [t for t, _ in types[1:]] == [0x00] * -(-len(TEXT) // MAX_BLOCK)
    assert len(wire) < len(TEXT) // 10


def test_incompressible_data_is_stored() -> None:
    blob = random.Random(1).randbytes(70_000)
    wire = Encoder().compress(blob)
    assert chunk_types(wire)[1:] == [(0x01, 4 + MAX_BLOCK), (0x01, 4 + 70_000 - MAX_BLOCK)]
    assert Decoder().feed(wire) == blob


@pytest.mark.parametrize(("zeros", "ctype"), [(5000, 0x01), (15000, 0x00)])
def test_compressed_only_when_it_saves_an_eighth(zeros: int, ctype: int) -> None:
    block = random.Random(2).randbytes(MAX_BLOCK - zeros) + bytes(zeros)
    wire = Encoder().compress(block)
    assert chunk_types(wire)[1][0] == ctype
    assert Decoder().feed(wire) == block


def test_cross_check_with_cramjam_framed_codec() -> None:
    ours = Encoder().compress(TEXT)
    assert bytes(cramjam.snappy.decompress(ours)) == TEXT
    theirs = bytes(cramjam.snappy.compress(TEXT))
    assert Decoder().feed(theirs) == TEXT


# ----- round trips


@FAST
@given(
    writes=st.lists(
        st.one_of(st.binary(max_size=2000), st.integers(0, 150_000).map(lambda n: TEXT[:n])),
        max_size=6,
    ),
    cuts=st.lists(st.integers(0, 10**6), max_size=40),
)
def test_round_trip_any_chunking(writes: list[bytes], cuts: list[int]) -> None:
    enc, dec = Encoder(), Decoder()
    wire = b"".join(enc.compress(w) for w in writes)
    out = b"".join(dec.feed(piece) for piece in split(wire, cuts))
    assert out == b"".join(writes)


def test_feed_returns_data_as_soon_as_a_chunk_is_complete() -> None:
    wire = Encoder().compress(b"first") + Encoder().compress(b"second")[10:]
    dec = Decoder()
    assert dec.feed(wire[:-1]) == b"first"
    assert dec.feed(wire[-1:]) == b"second"


def test_skippable_and_padding_chunks_are_dropped_even_when_split() -> None:
    wire = (
        STREAM_IDENTIFIER
        + chunk(0xFE, b"\0" * 100)
        + stored(b"one")
        + chunk(0x80, b"meta")
        + chunk(0xFD, b"")
        + STREAM_IDENTIFIER  # a concatenated stream repeats the identifier
        + stored(b"two")
    )
    dec = Decoder()
    assert b"".join(dec.feed(wire[i : i + 3]) for i in range(0, len(wire), 3)) == b"onetwo"


# ----- corrupt input


def _fails(wire: bytes) -> Decoder:
    dec = Decoder()
    with pytest.raises(ProtocolError):
        dec.feed(wire)
    return dec


def test_corrupted_crc_rejected_and_decoder_stays_failed() -> None:
    good = Encoder().compress(TEXT[:5000])
    bad = bytearray(good)
    bad[14] ^= 0x01  # first byte of the masked CRC
    dec = _fails(bytes(bad))
    with pytest.raises(ProtocolError):
        dec.feed(good)


def test_corrupted_stored_body_rejected() -> None:
    wire = bytearray(Encoder().compress(b"hello, world"))
    wire[-1] ^= 0x20
    _fails(bytes(wire))


@pytest.mark.parametrize("ctype", [0x02, 0x30, 0x7F])
def test_reserved_unskippable_chunk_rejected(ctype: int) -> None:
    _fails(STREAM_IDENTIFIER + chunk(ctype, b"x"))


def test_oversize_chunks_rejected() -> None:
    # The header alone is enough: nothing waits for 16 MB of body.
    _fails(STREAM_IDENTIFIER + struct.pack("<I", 0x01 | (4 + MAX_BLOCK + 1) << 8))
    _fails(STREAM_IDENTIFIER + struct.pack("<I", 0x80 | 0xFFFFFF << 8))
    big = b"a" * (MAX_BLOCK + 1)
    packed = bytes(cramjam.snappy.compress_raw(big))
    _fails(STREAM_IDENTIFIER + chunk(0x00, struct.pack("<I", masked_crc(big)) + packed))


@pytest.mark.parametrize(
    "wire",
    [
        stored(b"no header"),  # the stream must start with the identifier
        chunk(0x80, b"skippable first"),
        bytes.fromhex("ff060000734e61507058"),  # wrong magic
        chunk(0xFF, b"sNaPpY!"),
        STREAM_IDENTIFIER + chunk(0x01, b"abc"),  # shorter than the checksum
        STREAM_IDENTIFIER + chunk(0x00, struct.pack("<I", masked_crc(b"")) + b"\xff\xff\xff\xff\x0f"),
    ],
)
def test_malformed_streams_rejected(wire: bytes) -> None:
    _fails(wire)


@settings(max_examples=200, deadline=None, database=None)
@given(body=st.binary(max_size=300), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_fuzz_feed_raises_only_protocol_error(body: bytes, cuts: list[int]) -> None:
    dec = Decoder()
    try:
        for piece in split(STREAM_IDENTIFIER + body, cuts):
            dec.feed(piece)
    except ProtocolError:
        pass


@FAST
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=3))
def test_fuzz_mutated_stream_never_passes_silently_wrong(flips: list[tuple[int, int]]) -> None:
    payload = TEXT[:3000] + bytes(range(256))
    wire = bytearray(Encoder().compress(payload))
    for pos, xor in flips:
        wire[pos % len(wire)] ^= xor
    try:
        out = Decoder().feed(bytes(wire))
    except ProtocolError:
        return
    assert out in (payload, b"")  # only a flip in a header field that does not matter, or a cut stream
