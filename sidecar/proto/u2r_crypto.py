"""udp2raw's keys, ciphers and auth tags: one blob in, one blob out (spec udp2raw.md sections 3 and 4).

`BlobCodec.seal` turns a plaintext (bare or safer, see u2r_frame) into the bytes of an L4 payload;
`BlobCodec.open` reverses it and raises AuthError for anything that does not decrypt and authenticate.
The `direction` argument is always the direction the blob travels, i.e. the sender's direction: it picks
the directional HKDF keys (hmac_sha1 mode, and the block-0 ECB step of aes128cfb in every auth mode).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import zlib
from enum import StrEnum
from typing import NamedTuple

from sidecar.errors import AuthError, ProtocolError
from sidecar.proto.u2r_aes import new_aes
from sidecar.proto.u2r_simple import simple_tag

Buffer = bytes | bytearray | memoryview

CIPHER_MODES = ("aes128cbc", "aes128cfb", "aes128cfb_0", "xor", "none")
AUTH_MODES = ("md5", "hmac_sha1", "crc32", "simple", "none")
MAX_PLAINTEXT = 1800  # refused on send
MAX_BLOB = 1800  # refused on receive
PBKDF2_ITERATIONS = 10000

_ZERO_IV = bytes(16)
_SALT = hashlib.md5(b"udp2raw_salt1").digest()
_XOR_STREAM_LEN = 2048  # > MAX_PLAINTEXT + the longest tag
_ZERO_PADS = [b""] + [bytes(n - 1) + bytes([n]) for n in range(1, 17)]  # [n]: the n-byte CBC pad
_TAG_LEN = {"md5": 16, "crc32": 4, "simple": 8, "none": 0}
_WHITESPACE = re.compile(rb"[ \t\n\v\f\r]")


class Direction(StrEnum):
    """Which way a blob travels; the values match the capture JSON's `direction` field."""

    C2S = "c2s"
    S2C = "s2c"


class Keys(NamedTuple):
    """Everything derived from the password; computed once per process (10000 PBKDF2 rounds)."""

    normal: bytes  # MD5(P || "key1"): the cipher key unless auth is hmac_sha1
    cipher_c2s: bytes  # 64 bytes each; AES/xor use the first 16
    cipher_s2c: bytes
    hmac_c2s: bytes  # 64 bytes each; HMAC-SHA1 uses the first 20
    hmac_s2c: bytes
    gro: bytes  # 256 bytes; --fix-gro xors lengths with the first 2

    def cipher(self, direction: Direction) -> bytes:
        return self.cipher_c2s if direction == Direction.C2S else self.cipher_s2c

    def hmac(self, direction: Direction) -> bytes:
        return self.hmac_c2s if direction == Direction.C2S else self.hmac_s2c


def effective_key(key_argument: str) -> bytes:
    """The password udp2raw really uses for a `-k` value: it cuts the value at the first whitespace.

    `-k "test vector key"` means the password `test` (spec 3, "key quirk"); callers should tell the user.
    """
    return _WHITESPACE.split(key_argument.encode(), maxsplit=1)[0]


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-Expand with SHA-256 (udp2raw skips Extract and uses the PBKDF2 output as PRK)."""
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        out += block
        counter += 1
    return out[:length]


def derive_keys(password: bytes) -> Keys:
    """All key material udp2raw derives from the (already cut, see `effective_key`) password."""
    prk = hashlib.pbkdf2_hmac("sha256", password, _SALT, PBKDF2_ITERATIONS, 32)
    return Keys(
        normal=hashlib.md5(password + b"key1").digest(),
        cipher_c2s=hkdf_expand(prk, b"cipher_key client-->server", 64),
        cipher_s2c=hkdf_expand(prk, b"cipher_key server-->client", 64),
        hmac_c2s=hkdf_expand(prk, b"hmac_key client-->server", 64),
        hmac_s2c=hkdf_expand(prk, b"hmac_key server-->client", 64),
        gro=hkdf_expand(prk, b"gro", 256),
    )


def _md5_tag(data: Buffer) -> bytes:
    return hashlib.md5(data).digest()


def _crc32_tag(data: Buffer) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


def _no_tag(_data: Buffer) -> bytes:
    return b""


_TAGS = {"md5": _md5_tag, "crc32": _crc32_tag, "simple": simple_tag, "none": _no_tag}


def _xor(a: Buffer, b: Buffer) -> bytes:
    """a XOR b for equal lengths, through big ints: one C-level pass instead of a per-byte loop."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


class _Cbc:
    """AES-128-CBC with a zero IV, padded 1..16 bytes with the pad length last.

    AES.new per packet costs more than encrypting 1.2 KB, so one encryptor and one decryptor live as
    long as the codec. Each chains from the last ciphertext block it saw; xoring that block into the
    first plaintext block (or out of the first decrypted block) restarts the chain from a zero IV.
    """

    def __init__(self, key: bytes, prefer_openssl: bool) -> None:
        self._enc, self._dec = new_aes("cbc", key, prefer_openssl=prefer_openssl)
        self._enc_last = self._dec_last = _ZERO_IV

    def encrypt(self, data: bytes, cbc_pad: bytes | None) -> bytes:
        pad_len = 16 - len(data) % 16
        if cbc_pad is None:
            cbc_pad = _ZERO_PADS[pad_len]
        elif len(cbc_pad) != pad_len or cbc_pad[-1] != pad_len:
            raise ValueError(f"cbc_pad must be {pad_len} bytes ending in {pad_len}")
        padded = data + cbc_pad
        out = self._enc(_xor(padded[:16], self._enc_last) + padded[16:])
        self._enc_last = out[-16:]
        return out

    def decrypt(self, blob: Buffer) -> bytes:
        if not blob or len(blob) % 16:
            raise AuthError(f"u2r: aes128cbc blob of {len(blob)} bytes is not whole blocks")
        data = self._dec(blob)
        data = _xor(data[:16], self._dec_last) + data[16:]
        self._dec_last = bytes(blob[-16:])
        if data[-1] > 16:
            raise AuthError("u2r: aes128cbc padding byte out of range")
        return data[: len(data) - data[-1]]


class _Cfb:
    """AES-128-CFB (128-bit segments, zero IV, no padding), optionally with udp2raw's extra step:
    block 0 is first AES-ECB-encrypted with the directional key (`block0_key`).

    Encryption keeps one CFB object, whose next keystream block is E(last ciphertext block): xoring
    E(0) ^ E(last) into the first block makes it start from a zero IV. Decryption needs no chain:
    its keystream is E(0 || ciphertext[:-1 block]) in a single ECB call.
    """

    def __init__(self, key: bytes, block0_key: bytes | None, prefer_openssl: bool) -> None:
        self._ecb = new_aes("ecb", key, prefer_openssl=prefer_openssl).encrypt
        self._enc = new_aes("cfb", key, prefer_openssl=prefer_openssl).encrypt
        self._e0 = self._ecb(_ZERO_IV)
        self._enc_last = _ZERO_IV
        self._block0 = None if block0_key is None else new_aes("ecb", block0_key, prefer_openssl=prefer_openssl)

    def encrypt(self, data: bytes, _cbc_pad: bytes | None) -> bytes:
        size = len(data)
        if size < 16:
            raise ProtocolError("u2r: aes128cfb needs at least 16 bytes")
        first = data[:16] if self._block0 is None else self._block0.encrypt(data[:16])
        restart = _xor(self._e0, self._ecb(self._enc_last))
        out = self._enc(_xor(first, restart) + data[16:] + bytes(-size % 16))
        self._enc_last = out[-16:]
        return out[:size]

    def decrypt(self, blob: Buffer) -> bytes:
        size = len(blob)
        if size < 16:
            raise AuthError(f"u2r: aes128cfb blob of {size} bytes is shorter than a block")
        chained = (size - 1) // 16 * 16
        stream = self._e0 + self._ecb(blob[:chained]) if chained else self._e0
        data = _xor(blob, stream[:size])
        return data if self._block0 is None else self._block0.decrypt(data[:16]) + data[16:]


class _Xor:
    """Byte i XOR key[i mod 16]; the repeated key is kept as one big int and shifted to length."""

    def __init__(self, key: bytes) -> None:
        self._stream = int.from_bytes(key * (_XOR_STREAM_LEN // 16), "big")

    def encrypt(self, data: Buffer, _cbc_pad: bytes | None = None) -> bytes:
        size = len(data)
        stream = self._stream >> ((_XOR_STREAM_LEN - size) * 8)
        return (int.from_bytes(data, "big") ^ stream).to_bytes(size, "big")

    decrypt = encrypt


class _Plain:
    @staticmethod
    def encrypt(data: Buffer, _cbc_pad: bytes | None = None) -> bytes:
        return bytes(data)

    decrypt = encrypt


_Cipher = _Cbc | _Cfb | _Xor | _Plain


def _make_cipher(mode: str, key: bytes, directional: bytes, prefer_openssl: bool) -> _Cipher:
    if mode == "aes128cbc":
        return _Cbc(key, prefer_openssl)
    if mode in ("aes128cfb", "aes128cfb_0"):
        return _Cfb(key, directional if mode == "aes128cfb" else None, prefer_openssl)
    return _Xor(key) if mode == "xor" else _Plain()


class BlobCodec:
    """Seal/open udp2raw blobs for one (cipher_mode, auth_mode, keys) combination.

    One codec serves every conn of a process. Output depends only on the inputs, but the AES objects
    inside carry chaining state between calls, so a codec must not be shared across OS threads.
    """

    def __init__(self, cipher_mode: str, auth_mode: str, keys: Keys, *, prefer_openssl: bool = True) -> None:
        if cipher_mode not in CIPHER_MODES:
            raise ValueError(f"unknown udp2raw cipher mode {cipher_mode!r}, expected one of {CIPHER_MODES}")
        if auth_mode not in AUTH_MODES:
            raise ValueError(f"unknown udp2raw auth mode {auth_mode!r}, expected one of {AUTH_MODES}")
        self.cipher_mode, self.auth_mode = cipher_mode, auth_mode
        self._hmac = auth_mode == "hmac_sha1"
        self._tag_len = 20 if self._hmac else _TAG_LEN[auth_mode]
        self._tag = _TAGS.get(auth_mode, _no_tag)  # hmac_sha1 authenticates the ciphertext instead
        self._ciphers: dict[Direction, _Cipher] = {}
        self._macs: dict[Direction, bytes] = {}
        for d in Direction:
            directional = keys.cipher(d)[:16]
            key = directional if self._hmac else keys.normal
            self._ciphers[d] = _make_cipher(cipher_mode, key, directional, prefer_openssl)
            self._macs[d] = keys.hmac(d)[:20]

    def seal(self, plaintext: Buffer, direction: Direction, cbc_pad: bytes | None = None) -> bytes:
        """Authenticate and encrypt one plaintext for `direction` (spec 4 order).

        `cbc_pad` (aes128cbc only) fixes the padding bytes, e.g. to reproduce a captured blob; by default
        the pad is zeros ending in its length (receivers ignore all but that last byte).
        """
        if len(plaintext) > MAX_PLAINTEXT:
            raise ProtocolError(f"u2r: plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}")
        cipher = self._ciphers[direction]
        if self._hmac:
            sealed = cipher.encrypt(bytes(plaintext), cbc_pad)
            return sealed + hmac.digest(self._macs[direction], sealed, "sha1")
        return cipher.encrypt(bytes(plaintext) + self._tag(plaintext), cbc_pad)

    def open(self, blob: Buffer, direction: Direction) -> bytes:
        """Decrypt and authenticate one blob sent in `direction`; AuthError on any failure."""
        if len(blob) > MAX_BLOB:
            raise ProtocolError(f"u2r: blob of {len(blob)} bytes exceeds {MAX_BLOB}")
        cipher = self._ciphers[direction]
        if self._hmac:
            split = len(blob) - 20
            mac = self._macs[direction]
            if split < 0 or not hmac.compare_digest(hmac.digest(mac, blob[:split], "sha1"), blob[split:]):
                raise AuthError("u2r: hmac_sha1 check failed")
            return cipher.decrypt(blob[:split])
        data = cipher.decrypt(blob)
        split, view = len(data) - self._tag_len, memoryview(data)
        if split < 0 or not hmac.compare_digest(self._tag(view[:split]), view[split:]):
            raise AuthError(f"u2r: {self.auth_mode} check failed")
        return data[:split]
