"""udp2raw key derivation, ciphers and auth tags: published vectors, spec sizes, round trips, fuzzing.

Byte-exact checks against the real tool's traffic are in test_u2r_vectors.py.
"""

from __future__ import annotations

import contextlib
import functools
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import AuthError, ProtocolError
from sidecar.proto.u2r_crypto import (
    AUTH_MODES,
    CIPHER_MODES,
    MAX_PLAINTEXT,
    BlobCodec,
    Direction,
    Keys,
    derive_keys,
    effective_key,
    hkdf_expand,
    simple_tag,
)

COMBOS = list(itertools.product(CIPHER_MODES, AUTH_MODES))
FAST = settings(max_examples=40, deadline=None)
C2S, S2C = Direction.C2S, Direction.S2C


@functools.cache
def keys() -> Keys:
    return derive_keys(b"test-vector-key")


@functools.cache
def codec(cipher: str, auth: str) -> BlobCodec:
    return BlobCodec(cipher, auth, keys())


@pytest.mark.parametrize(
    ("argument", "password"),
    [
        ("test vector key", b"test"),
        ("a\tb", b"a"),
        ("plain", b"plain"),
        ("", b""),
        ("ключ x", "ключ".encode()),
    ],
)
def test_effective_key_cuts_at_whitespace(argument: str, password: bytes) -> None:
    assert effective_key(argument) == password


def test_hkdf_expand_rfc5869_case1() -> None:
    prk = bytes.fromhex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
    okm = hkdf_expand(prk, bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_key_sizes() -> None:
    k = keys()
    assert [len(x) for x in k] == [16, 64, 64, 64, 64, 256]
    assert k.cipher(C2S) == k.cipher_c2s and k.hmac(S2C) == k.hmac_s2c


@pytest.mark.parametrize(
    ("cipher", "auth", "size"),
    [("aes128cbc", "md5", 48), ("aes128cfb", "md5", 45), ("none", "crc32", 33), ("xor", "simple", 37),
     ("aes128cfb", "hmac_sha1", 49)],
)  # fmt: skip
def test_blob_sizes_from_spec(cipher: str, auth: str, size: int) -> None:
    """Spec 4: a 29-byte handshake plaintext gives these blob sizes on the wire."""
    assert len(codec(cipher, auth).seal(bytes(29), C2S)) == size


@pytest.mark.parametrize("length", [0, 15, 16, 17, 31, 32])
def test_cbc_pads_one_to_sixteen(length: int) -> None:
    blob = codec("aes128cbc", "none").seal(bytes(length), C2S)
    assert len(blob) == (length // 16 + 1) * 16
    assert codec("aes128cbc", "none").open(blob, C2S) == bytes(length)


def test_cbc_accepts_any_pad_bytes() -> None:
    plain = b"x" * 20  # + md5 = 36 bytes -> 12 bytes of pad
    c = codec("aes128cbc", "md5")
    garbage = c.seal(plain, C2S, cbc_pad=bytes(range(200, 211)) + b"\x0c")
    assert garbage != c.seal(plain, C2S) and c.open(garbage, C2S) == plain
    with pytest.raises(ValueError, match="cbc_pad"):
        c.seal(plain, C2S, cbc_pad=bytes(11) + b"\x0b")


def test_cfb_block0_uses_directional_key_even_with_md5() -> None:
    """Spec 4 / hazard list: aes128cfb's ECB step is directional, aes128cbc+md5 is not."""
    blob = codec("aes128cfb", "md5").seal(b"y" * 40, C2S)
    with pytest.raises(AuthError):
        codec("aes128cfb", "md5").open(blob, S2C)
    assert codec("aes128cbc", "md5").open(codec("aes128cbc", "md5").seal(b"y" * 40, C2S), S2C) == b"y" * 40
    legacy = codec("aes128cfb_0", "md5").seal(b"y" * 40, C2S)
    assert legacy != blob
    assert codec("aes128cfb_0", "md5").open(legacy, S2C) == b"y" * 40  # no directional step at all


def test_xor_is_the_key_repeated() -> None:
    blob = codec("xor", "none").seal(bytes(40), C2S)
    assert blob == (keys().normal * 3)[:40]
    hmac_blob = codec("xor", "hmac_sha1").seal(bytes(40), S2C)
    assert hmac_blob[:40] == (keys().cipher_s2c[:16] * 3)[:40]


def reference_simple(data: bytes) -> bytes:
    h1, h2 = 5381, 0
    for byte in data:
        h1 = ((h1 * 33) ^ byte) & 0xFFFFFFFF
        h2 = (byte + (h2 << 6) + (h2 << 16) - h2) & 0xFFFFFFFF
    return h1.to_bytes(4, "big") + h2.to_bytes(4, "big")


@FAST
@given(st.binary(max_size=2000))
def test_simple_tag_matches_spec_formula(data: bytes) -> None:
    assert simple_tag(data) == reference_simple(data)


@pytest.mark.parametrize("size", [0, 1, 2, 127, 128, 129, 256, 1800, 2048])
@pytest.mark.parametrize("fill", [0x00, 0xFF, 0xA5])
def test_simple_tag_at_chunk_and_length_limits(size: int, fill: int) -> None:
    data = bytes([fill]) * size
    assert simple_tag(data) == simple_tag(memoryview(data)) == reference_simple(data)


def test_unknown_modes_and_sizes() -> None:
    with pytest.raises(ValueError, match="cipher"):
        BlobCodec("aes256gcm", "md5", keys())
    with pytest.raises(ValueError, match="auth"):
        BlobCodec("xor", "sha256", keys())
    with pytest.raises(ProtocolError, match="exceeds"):
        codec("xor", "md5").seal(bytes(MAX_PLAINTEXT + 1), C2S)
    with pytest.raises(ProtocolError, match="exceeds"):
        codec("xor", "md5").open(bytes(1801), C2S)
    with pytest.raises(ProtocolError, match="16 bytes"):
        codec("aes128cfb", "hmac_sha1").seal(bytes(15), C2S)


@pytest.mark.parametrize(("cipher", "auth"), COMBOS)
@FAST
@given(plain=st.binary(min_size=18, max_size=MAX_PLAINTEXT), direction=st.sampled_from(list(Direction)))
def test_round_trip(cipher: str, auth: str, plain: bytes, direction: Direction) -> None:
    c = codec(cipher, auth)
    blob = c.seal(memoryview(plain), direction)
    assert c.open(memoryview(blob), direction) == plain
    if auth != "none":
        tampered = bytearray(blob)
        tampered[len(blob) // 3] ^= 0x20
        with pytest.raises(AuthError):
            c.open(tampered, direction)


@pytest.mark.parametrize(("cipher", "auth"), COMBOS)
@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=1900))
def test_open_fuzz(cipher: str, auth: str, data: bytes) -> None:
    """Garbage only ever raises ProtocolError (AuthError is one)."""
    with contextlib.suppress(ProtocolError):
        codec(cipher, auth).open(data, C2S)


@pytest.mark.parametrize("cipher", ["aes128cbc", "aes128cfb", "aes128cfb_0"])
@pytest.mark.parametrize("auth", ["md5", "hmac_sha1"])
def test_openssl_and_pycryptodome_agree(cipher: str, auth: str) -> None:
    """The fallback for routers without `cryptography` gives the same bytes, packet after packet
    (the chained AES objects must restart from a zero IV every time on both backends)."""
    fast = BlobCodec(cipher, auth, keys())
    slow = BlobCodec(cipher, auth, keys(), prefer_openssl=False)
    for size in (17, 0, 1, 15, 16, 100, 1200, 1200, 33):
        plain = (bytes(range(256)) * 5)[:size]
        for direction in (C2S, S2C):
            if cipher != "aes128cbc" and size + (0 if auth == "hmac_sha1" else 16) < 16:
                continue  # cfb refuses plaintexts shorter than a block
            blob = fast.seal(plain, direction)
            assert blob == slow.seal(plain, direction)
            assert slow.open(blob, direction) == plain == fast.open(blob, direction)
