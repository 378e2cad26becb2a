"""kcp-go crypt layer: live datagrams of the real kcptun, round trips, rejection of bad input."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import AuthError, ConfigError
from sidecar.proto.kcp_crypt import (
    HEADER_SIZE,
    SUPPORTED_CRYPTS,
    UNSUPPORTED_CRYPTS,
    KcpCrypt,
    derive_key,
)

KEY_K = bytes.fromhex("a3166ecc948bbf5f939415726549480cde534b037d5ecc0a8dbc7a8a3032c9fb")

# First datagram of Debian's kcptun-client 20210922 (`--key k --crypt NAME`, other options default,
# captured on loopback against kcptun-server, spec section 9), and the nonce it carried in clear text.
LIVE = {
    "aes": (
        "33660385b9884031966085704fe3f25fc0870353be15b988ece3db0b8a0798697bc5e0a7a1ff19e7a19725e013f398e0"
        "a72a5c17fcf2e6c199069967aeb87f6181e4fd01895d",
        "a12a2d85808064743d9e1f80476c5738",
    ),
    "aes-128": (
        "1140a9ab271eedf61e93635b9d81c1383237e93cd8c1e5e220178c2f740db97fc1303b5b14cb924d2914c0df822762b2"
        "36208a7d2391c6d605aa1a2f00b6d099bebf89ebb787",
        "b237c400250189e1cb648b11a65dd99d",
    ),
    "aes-192": (
        "ed6f0c745be564bd0c7e807cfd531083e5ebe04cb12826ffd601fe725709407b0f8083427e2cc310cf0a2f421e763a21"
        "84a0497536cc61684f14a5b5afa067c3cf1ccab5c40b",
        "d84d2c8fb92792fb819e651b07e977e3",
    ),
    "salsa20": (
        "6b935047d9e12699cbcf4d0f410a986633bc9f58d0050deddd1a40425d0c34d9a2afe58f67a5c071cdb9212bcc08e4d4"
        "5a9d40e1ea64271100f7028a27efae213d49883212c6",
        "6b935047d9e1269922faa0b05f783936",
    ),
    "blowfish": (
        "43231d83c465eb2cf56313a075b4b26815f081d30a2e35cb92f8f9637a2be52a530a76432e53a343882d686ac0f943aa"
        "6da26e578115a44db64ddef12d0fdb3fa5d621ad70f6",
        "ca5c4df1a44a2465f2d63b51603e5380",
    ),
    "cast5": (
        "f34402511deffb1fb309257a66bfcd8ae88b59549359793cec0bf34447115fad94690505c354f2f50bdbaa019f8e40a8"
        "4939eefd611c32e22b8a7d3dca6e1c09e09a6032b071",
        "e7dcf42305630f668e6d78d86c186e2d",
    ),
    "3des": (
        "874f3e9552057ae75f977fdf34c28d84109e9633613b05753b7cbd1425c85952efb493c15579d8edd21d9405283f829f"
        "56556d2ce1642f7a3d6a727f580f24bcce5e957a44bc",
        "83f58f10475c014c3266bacdfd37bb90",
    ),
    "xor": (
        "3d531c159bb93594417ae80c1652eaac9d7a264b672185bfb1baddd5f1c04adf469a1fa7d72f0f810955fe321013a847"
        "87c98bd24be0f642aa54a4f0cccd2d450413365a2ab3",
        "254b7716b8d188e4cac3ddd1739dffd8",
    ),
    "none": (
        "b235c055d93c00f98d85185631871e26a0849f9300000000f1002c002884f83a51000002f10100000000000000000000"
        "12000000ff060000734e61507059010c00004439ac2f",
        "b235c055d93c00f98d85185631871e26",
    ),
}
SNAPPY_STREAM_ID = bytes.fromhex("ff060000734e61507059")
CRYPTS = {name: KcpCrypt(name, KEY_K) for name in SUPPORTED_CRYPTS}


def live(name: str) -> tuple[bytes, bytes]:
    packet, nonce = LIVE[name]
    return bytes.fromhex(packet), bytes.fromhex(nonce)


def test_derive_key_is_pbkdf2_sha1_kcp_go_4096():
    assert derive_key("k") == KEY_K
    assert derive_key(b"k") == KEY_K
    assert len(derive_key("it's a secrect")) == 32


def test_every_supported_crypt_has_a_live_vector():
    assert set(LIVE) == set(SUPPORTED_CRYPTS)


@pytest.mark.parametrize("name", sorted(LIVE))
def test_live_datagram_decrypts_to_the_spec_layout(name):
    packet, _ = live(name)
    body = CRYPTS[name].decrypt(packet)
    assert len(packet) == 70 and len(body) == 50
    # FEC data shard, seqid 0, size 44; then a KCP PUSH: frg 0, wnd 512, ts, sn 0, una 0, len 18.
    assert body[:8] == bytes.fromhex("00000000f1002c00")
    cmd, frg, wnd, _ts, sn, una, length = struct.unpack_from("<BBHIIII", body, 12)
    assert (cmd, frg, wnd, sn, una, length) == (81, 0, 512, 0, 0, 18)
    # The snappy stream identifier, then the header of a stored (type 0x01) chunk.
    assert body[32:42] == SNAPPY_STREAM_ID and body[42] == 0x01


@pytest.mark.parametrize("name", sorted(LIVE))
def test_live_datagram_reencrypts_byte_exactly(name):
    packet, nonce = live(name)
    crypt = CRYPTS[name]
    assert crypt.encrypt(crypt.decrypt(packet), nonce) == packet


def test_salsa20_leaves_the_first_8_bytes_clear_and_none_everything():
    packet, nonce = live("salsa20")
    assert packet[:8] == nonce[:8] and packet[8:16] != nonce[8:]
    packet, nonce = live("none")
    assert packet[:16] == nonce and packet[HEADER_SIZE:] == CRYPTS["none"].decrypt(packet)


@pytest.mark.parametrize("name", sorted(set(LIVE) - {"none"}))
def test_live_datagram_with_another_key_is_rejected(name):
    packet, _ = live(name)
    with pytest.raises(AuthError):
        KcpCrypt(name, derive_key("not k")).decrypt(packet)


@pytest.mark.parametrize("name", SUPPORTED_CRYPTS)
@settings(max_examples=25, deadline=None)
@given(body=st.binary(max_size=1600), nonce=st.binary(min_size=16, max_size=16))
def test_round_trip(name, body, nonce):
    crypt = CRYPTS[name]
    packet = crypt.encrypt(body, nonce)
    assert len(packet) == HEADER_SIZE + len(body)
    assert crypt.decrypt(packet) == body


@pytest.mark.parametrize("name", SUPPORTED_CRYPTS)
def test_fresh_nonce_per_datagram(name):
    crypt = CRYPTS[name]
    first, second = crypt.encrypt(b"same body"), crypt.encrypt(b"same body")
    assert first != second
    assert crypt.decrypt(first) == crypt.decrypt(second) == b"same body"


@pytest.mark.parametrize("name", SUPPORTED_CRYPTS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_tampered_datagram_is_rejected(name, data):
    # The CRC covers bytes 20.. only: as in kcp-go, the nonce itself is not protected.
    crypt = CRYPTS[name]
    packet = bytearray(crypt.encrypt(data.draw(st.binary(min_size=1, max_size=300))))
    index = data.draw(st.integers(min_value=HEADER_SIZE - 4, max_value=len(packet) - 1))
    packet[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(AuthError):
        crypt.decrypt(bytes(packet))


@pytest.mark.parametrize("name", SUPPORTED_CRYPTS)
@pytest.mark.parametrize("size", [0, 1, 8, HEADER_SIZE - 1])
def test_short_datagram_is_rejected(name, size):
    with pytest.raises(AuthError):
        CRYPTS[name].decrypt(bytes(size))


@pytest.mark.parametrize("name", [*UNSUPPORTED_CRYPTS, "AES", "aes-256", "chacha20", ""])
def test_unsupported_crypt_names_the_supported_ones(name):
    with pytest.raises(ConfigError) as caught:
        KcpCrypt(name, KEY_K)
    error = caught.value
    assert (error.key, error.value) == ("crypt", name)
    assert all(supported in error.fix for supported in SUPPORTED_CRYPTS)


def test_nonce_must_be_16_bytes():
    with pytest.raises(ValueError):
        CRYPTS["aes"].encrypt(b"body", b"short")


def test_openssl_and_pycryptodome_aes_cfb_agree():
    """The fallback for routers without `cryptography` gives the same bytes as the OpenSSL path."""
    from sidecar.proto import crypto_backend, kcp_crypt
    from tests.helpers import require

    require(kcp_crypt.OpenSslCipher is not None, "the cryptography package is not installed (no OpenSSL path)")
    key = kcp_crypt.derive_key("k")
    for key_len in (16, 24, 32):
        fast = kcp_crypt._OpenSslAesCfb(key[:key_len])
        slow = kcp_crypt._CfbCipher(crypto_backend.AES, key[:key_len])
        for size in (1, 15, 16, 17, 1400):
            data = bytes(range(256)) * 6
            data = data[:size]
            assert fast.encrypt(data) == slow.encrypt(data)
            assert slow.decrypt(fast.encrypt(data)) == data == fast.decrypt(slow.encrypt(data))
