"""Shadowsocks AEAD core: key derivation vectors, chunk stream round trips, rejection of bad input."""

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import AuthError, ConfigError, ProtocolError
from sidecar.proto import ss_aead
from sidecar.proto.aead import new_aead
from sidecar.proto.ss_aead import (
    METHODS,
    Cipher,
    TcpDecryptor,
    TcpEncryptor,
    decode_base64_key,
    decrypt_udp,
    encrypt_udp,
    evp_bytes_to_key,
    hkdf_sha1,
    method_by_name,
)

ALL_METHODS = sorted(METHODS)


def test_evp_bytes_to_key_matches_openssl():
    # `openssl enc -aes-256-cbc -k foobar -nosalt -md md5 -P` and the 128-bit twin.
    assert evp_bytes_to_key(b"foobar", 32).hex().upper() == (
        "3858F62230AC3C915F300C664312C63F568378529614D22DDB49237D2F60BFDF"
    )
    assert evp_bytes_to_key(b"barfoo!", 16).hex().upper() == "B3ADC47839E047EB228870526DC8FC30"


def test_hkdf_sha1_rfc5869_case_4():
    okm = hkdf_sha1(bytes.fromhex("0b0b0b0b0b0b0b0b0b0b0b"), bytes.fromhex("000102030405060708090a0b0c"),
                    bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), 42)
    assert okm.hex() == ("085a01ea1b10f36933068b56efa5ad81a4f14b822f5b091568a9cdd4f155fda2"
                         "c22e422478d305f3f896")


def test_unknown_method_names_the_supported_ones():
    with pytest.raises(ConfigError) as info:
        method_by_name("rc4-md5")
    assert "aes-256-gcm" in str(info.value) and "rc4-md5" in str(info.value)


def test_base64_key_checks_length():
    method = METHODS["aes-128-gcm"]
    raw = os.urandom(16)
    import base64

    assert decode_base64_key(base64.urlsafe_b64encode(raw).decode().rstrip("="), 16) == raw
    with pytest.raises(ConfigError):
        decode_base64_key(base64.b64encode(os.urandom(8)).decode(), method.key_len)
    with pytest.raises(ConfigError):
        decode_base64_key("not base64 at all!", 16)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_backends_agree(name):
    """The OpenSSL and pycryptodome backends produce the same bytes (so the fallback is wire-equal)."""
    method = METHODS[name]
    key, nonce = os.urandom(method.key_len), os.urandom(method.nonce_len)
    fast = new_aead(method.family, key)
    slow = new_aead(method.family, key, prefer_openssl=False)
    sealed = slow.seal(nonce, b"payload")
    assert fast.seal(nonce, b"payload") == sealed
    assert fast.open(nonce, sealed) == slow.open(nonce, sealed) == b"payload"
    with pytest.raises(AuthError):
        slow.open(nonce, sealed[:-1] + bytes([sealed[-1] ^ 1]))


def _pair(name: str) -> tuple[TcpEncryptor, TcpDecryptor]:
    cipher = Cipher.from_password(METHODS[name], "secret")
    return TcpEncryptor(cipher), TcpDecryptor(cipher)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(ALL_METHODS), writes=st.lists(st.binary(max_size=40000), max_size=4),
       cut=st.integers(1, 5000))
def test_tcp_round_trip_any_split(name, writes, cut):
    enc, dec = _pair(name)
    wire = b"".join(enc.encrypt(w) for w in writes)
    got = b"".join(dec.feed(wire[i : i + cut]) for i in range(0, len(wire), cut))
    assert got == b"".join(writes)


def test_tcp_chunk_layout():
    cipher = Cipher.from_password(METHODS["aes-128-gcm"], "secret")
    wire = TcpEncryptor(cipher).encrypt(b"x" * (ss_aead.MAX_PAYLOAD + 1))
    # salt + two chunks: (2+16) + (0x3FFF+16) and (2+16) + (1+16)
    assert len(wire) == 16 + 18 + ss_aead.MAX_PAYLOAD + 16 + 18 + 1 + 16


def test_tcp_wrong_password_is_auth_error():
    enc = TcpEncryptor(Cipher.from_password(METHODS["chacha20-ietf-poly1305"], "right"))
    dec = TcpDecryptor(Cipher.from_password(METHODS["chacha20-ietf-poly1305"], "wrong"))
    with pytest.raises(AuthError):
        dec.feed(enc.encrypt(b"hello"))


def test_tcp_oversize_length_rejected():
    cipher = Cipher.from_password(METHODS["aes-256-gcm"], "k")
    salt = os.urandom(32)
    aead = cipher.session(salt)
    forged = salt + aead.seal(bytes(12), (0x4000).to_bytes(2, "big"))
    with pytest.raises(ProtocolError):
        TcpDecryptor(cipher).feed(forged)


def test_tcp_replayed_salt_rejected_after_authentication():
    cipher = Cipher.from_password(METHODS["aes-256-gcm"], "k")
    seen: set[bytes] = set()

    def accept(salt: bytes) -> bool:
        fresh = salt not in seen
        seen.add(salt)
        return fresh

    wire = TcpEncryptor(cipher).encrypt(b"first")
    assert TcpDecryptor(cipher, accept).feed(wire) == b"first"
    with pytest.raises(AuthError, match="replay"):
        TcpDecryptor(cipher, accept).feed(wire)
    # A probe without the key never reaches the filter.
    with pytest.raises(AuthError):
        TcpDecryptor(cipher, accept).feed(os.urandom(64))
    assert len(seen) == 1


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=300))
def test_tcp_garbage_raises_only_protocol_errors(garbage):
    with contextlib.suppress(ProtocolError):
        TcpDecryptor(Cipher.from_password(METHODS["aes-128-gcm"], "k")).feed(garbage)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_udp_round_trip_and_tamper(name):
    cipher = Cipher.from_password(METHODS[name], "secret")
    packet = encrypt_udp(cipher, b"\x01\x7f\x00\x00\x01\x00\x35dns?")
    salt, plain = decrypt_udp(cipher, packet)
    assert plain == b"\x01\x7f\x00\x00\x01\x00\x35dns?" and packet.startswith(salt)
    with pytest.raises(AuthError):
        decrypt_udp(cipher, packet[:-1] + bytes([packet[-1] ^ 0x80]))
    with pytest.raises(AuthError):
        decrypt_udp(cipher, packet[:20])
