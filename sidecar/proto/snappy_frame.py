"""kcptun's stream compression: the snappy framing format, as an incremental encoder and decoder.

Chunk = type u8 | length u24 LE | body. Data chunks (0x00 snappy-compressed, 0x01 stored) start
their body with the masked CRC-32C (u32 LE) of the uncompressed data, at most 65536 bytes of it.
The stream starts with the identifier chunk `ff 06 00 00 "sNaPpY"`.

kcptun flushes its snappy writer after every smux frame, so `Encoder.compress()` turns each call
into whole chunks and buffers nothing. The decoder follows golang/snappy 0.0.2's reader: the
first chunk must be the stream identifier, padding and skippable chunks (0x80-0xfe) are dropped,
reserved chunks (0x02-0x7f) and any chunk larger than a maximal compressed block are errors.
"""

from __future__ import annotations

import struct

import cramjam
from crc32c import crc32c

from sidecar.errors import ProtocolError

STREAM_IDENTIFIER = b"\xff\x06\x00\x00sNaPpY"
CHUNK_COMPRESSED = 0x00
CHUNK_UNCOMPRESSED = 0x01
CHUNK_STREAM_IDENTIFIER = 0xFF
MAX_BLOCK = 65536
# snappy's worst case for a compressed MAX_BLOCK, plus the checksum: no valid chunk is longer.
MAX_CHUNK_LENGTH = 4 + 32 + MAX_BLOCK + MAX_BLOCK // 6

_HEADER = struct.Struct("<I")  # type in the low byte, length in the upper 24 bits
_DATA_HEADER = struct.Struct("<II")  # header word, masked CRC
_CRC = struct.Struct("<I")
_MAGIC = STREAM_IDENTIFIER[4:]


def masked_crc(data: bytes | memoryview) -> int:
    """CRC-32C of `data`, rotated and offset as the framing format requires."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class Encoder:
    """Snappy-framed output for one direction of a session: `compress()` per write."""

    def __init__(self) -> None:
        self._started = False

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        """Whole chunks for `data` (the stream identifier first, once); b"" for empty data."""
        if not data:
            return b""
        out: list[bytes | memoryview] = []
        if not self._started:
            out.append(STREAM_IDENTIFIER)
            self._started = True
        with memoryview(data) as view:
            for off in range(0, len(view), MAX_BLOCK):
                out += _data_chunk(view[off : off + MAX_BLOCK])
            return b"".join(out)


def _data_chunk(block: memoryview) -> tuple[bytes, bytes | memoryview]:
    """Header and body of one chunk; stored when compression saves less than 1/8 (as Go does)."""
    crc = masked_crc(block)
    packed = cramjam.snappy.compress_raw(block)
    if len(packed) < len(block) - len(block) // 8:
        return _DATA_HEADER.pack(CHUNK_COMPRESSED | (4 + len(packed)) << 8, crc), packed
    return _DATA_HEADER.pack(CHUNK_UNCOMPRESSED | (4 + len(block)) << 8, crc), block


class Decoder:
    """Snappy-framed input: `feed()` returns what is decodable and keeps partial chunks.

    After a ProtocolError the stream is unusable: every later `feed()` raises again.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._started = False
        self._error = ""

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        if self._error:
            raise ProtocolError(self._error)
        self._buf += data
        try:
            return self._decode()
        except ProtocolError as exc:
            self._error = str(exc)
            self._buf = bytearray()  # not clear(): the traceback may still hold slices of it
            raise

    def _decode(self) -> bytes:
        buf = self._buf
        out: list[bytes] = []
        pos, end = 0, len(buf)
        with memoryview(buf) as view:
            while end - pos >= _HEADER.size:
                (word,) = _HEADER.unpack_from(buf, pos)
                ctype, length = word & 0xFF, word >> 8
                self._check_header(ctype, length)
                stop = pos + _HEADER.size + length
                if stop > end:
                    break
                # Slices stay temporaries: a live one would block `del buf[:pos]`.
                if ctype <= CHUNK_UNCOMPRESSED:
                    out.append(_data(ctype, view[pos + _HEADER.size : stop]))
                elif ctype == CHUNK_STREAM_IDENTIFIER and view[pos + _HEADER.size : stop] != _MAGIC:
                    raise ProtocolError("snappy: bad stream identifier")
                pos = stop  # padding (0xfe) and skippable chunks (0x80-0xfd) are dropped
        del buf[:pos]
        return b"".join(out)

    def _check_header(self, ctype: int, length: int) -> None:
        if not self._started:
            if ctype != CHUNK_STREAM_IDENTIFIER:
                raise ProtocolError(f"snappy: stream starts with chunk type {ctype:#04x}")
            self._started = True
        if CHUNK_UNCOMPRESSED < ctype < 0x80:
            raise ProtocolError(f"snappy: reserved chunk type {ctype:#04x}")
        if length > MAX_CHUNK_LENGTH:
            raise ProtocolError(f"snappy: chunk of {length} bytes is too long")
        if ctype == CHUNK_STREAM_IDENTIFIER and length != len(_MAGIC):
            raise ProtocolError("snappy: bad stream identifier")
        if ctype == CHUNK_UNCOMPRESSED and length > 4 + MAX_BLOCK:
            raise ProtocolError(f"snappy: stored chunk of {length - 4} bytes exceeds {MAX_BLOCK}")
        if ctype <= CHUNK_UNCOMPRESSED and length < 4:
            raise ProtocolError("snappy: data chunk shorter than its checksum")


def _data(ctype: int, body: memoryview) -> bytes:
    """The checked uncompressed bytes of a data chunk."""
    payload = body[4:]
    if ctype == CHUNK_COMPRESSED:
        try:
            if cramjam.snappy.decompress_raw_len(payload) > MAX_BLOCK:
                raise ProtocolError(f"snappy: compressed chunk decodes to more than {MAX_BLOCK} bytes")
            payload = cramjam.snappy.decompress_raw(payload)
        except cramjam.DecompressionError as exc:
            raise ProtocolError(f"snappy: {exc}") from None
    if masked_crc(payload) != _CRC.unpack_from(body)[0]:
        raise ProtocolError("snappy: checksum mismatch")
    return bytes(payload)
