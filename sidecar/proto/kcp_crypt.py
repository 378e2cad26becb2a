"""kcptun's key derivation and kcp-go's per-datagram crypt layer.

A datagram is ``CRYPT(nonce[16] | crc32(body)[4] LE | body)``: the random nonce is never read back, it
only randomises the first cipher block, which is what keeps kcp-go's fixed-IV CFB from repeating.
"""

import os
import struct
import zlib
from collections.abc import Callable
from types import ModuleType
from typing import Protocol

from sidecar.errors import AuthError, ConfigError
from sidecar.proto.digests import pbkdf2_sha1

try:
    from cryptography.hazmat.primitives.ciphers import Cipher as OpenSslCipher
    from cryptography.hazmat.primitives.ciphers.algorithms import AES as OpenSslAES

    try:  # CFB moved to the "decrepit" module in cryptography 47; the old name goes in 49
        from cryptography.hazmat.decrepit.ciphers.modes import CFB as OpenSslCFB
    except ImportError:  # pragma: no cover - older cryptography
        from cryptography.hazmat.primitives.ciphers.modes import CFB as OpenSslCFB
except ImportError:  # pragma: no cover - routers without `cryptography` use pycryptodome
    OpenSslCipher = None  # type: ignore[assignment,misc]

KEY_SALT = b"kcp-go"
KEY_ITERATIONS = 4096
KEY_LEN = 32
NONCE_SIZE = 16
HEADER_SIZE = NONCE_SIZE + 4
CFB_IV = bytes.fromhex("a7734f9c12ac1b01a415f2c1fc78e66b")
XOR_SALT = b"sH3CIVoF#rWLtJo6"
XOR_ITERATIONS = 32
XOR_PAD_LEN = 1500
SALSA20_CLEAR = 8
UNSUPPORTED_CRYPTS = ("twofish", "tea", "xtea", "sm4")

_CRC = struct.Struct("<I")


def _xor(a: bytes | memoryview, b: bytes | memoryview, size: int) -> bytes:
    """XOR of two ``size``-byte buffers as big ints: runs in C, faster than pycryptodome's strxor here."""
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(size, "little")


def derive_key(password: str | bytes) -> bytes:
    """The 32-byte key kcptun derives from ``--key`` once at start-up."""
    if isinstance(password, str):
        password = password.encode()
    return pbkdf2_sha1(password, KEY_SALT, KEY_ITERATIONS, KEY_LEN)


class _Cipher(Protocol):
    def encrypt(self, data: bytes) -> bytes: ...

    def decrypt(self, data: bytes) -> bytes: ...


class _CfbCipher:
    """Full-block CFB with kcp-go's fixed IV (its first 8 bytes for 64-bit block ciphers).

    pycryptodome cannot reuse a key schedule across CFB objects, and CFB encryption is sequential, so
    encryption builds one CFB object per datagram. Decryption is parallel: every keystream block is
    E(previous ciphertext block), so one call on a cached ECB object (key schedule kept) does it.
    """

    def __init__(self, module: ModuleType, key: bytes) -> None:
        self._module, self._key = module, key
        self._block = module.block_size
        self._iv = CFB_IV[: self._block]
        self._ecb = module.new(key, module.MODE_ECB)

    def encrypt(self, data: bytes) -> bytes:
        cfb = self._module.new(self._key, self._module.MODE_CFB, iv=self._iv, segment_size=self._block * 8)
        return cfb.encrypt(data)

    def decrypt(self, data: bytes) -> bytes:
        full = (len(data) - 1) // self._block * self._block
        keystream = self._ecb.encrypt(self._iv + data[:full])
        return _xor(data, memoryview(keystream)[: len(data)], len(data))


class _OpenSslAesCfb:
    """AES in kcp-go's full-block CFB through `cryptography` (OpenSSL): the same bytes as _CfbCipher,
    without importing pycryptodome (which costs ~14 MB of RSS when cffi is installed)."""

    def __init__(self, key: bytes) -> None:
        self._cipher = OpenSslCipher(OpenSslAES(key), OpenSslCFB(CFB_IV))

    def encrypt(self, data: bytes) -> bytes:
        return self._cipher.encryptor().update(data)

    def decrypt(self, data: bytes) -> bytes:
        return self._cipher.decryptor().update(data)


class _Salsa20Cipher:
    """Salsa20/20 keyed per datagram by its first 8 bytes (left in clear), counter from 0."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._salsa20 = _backend().Salsa20

    def encrypt(self, data: bytes) -> bytes:
        nonce = data[:SALSA20_CLEAR]
        return nonce + self._salsa20.new(key=self._key, nonce=nonce).encrypt(data[SALSA20_CLEAR:])

    decrypt = encrypt


class _XorCipher:
    """XOR of the first 1500 bytes with a pad derived from the key; longer tails stay as they are."""

    def __init__(self, key: bytes) -> None:
        self._pad = pbkdf2_sha1(key, XOR_SALT, XOR_ITERATIONS, XOR_PAD_LEN)

    def encrypt(self, data: bytes) -> bytes:
        if len(data) <= XOR_PAD_LEN:
            return _xor(data, memoryview(self._pad)[: len(data)], len(data))
        return _xor(memoryview(data)[:XOR_PAD_LEN], self._pad, XOR_PAD_LEN) + data[XOR_PAD_LEN:]

    decrypt = encrypt


class _NoneCipher:
    def encrypt(self, data: bytes) -> bytes:
        return data

    decrypt = encrypt


def _backend() -> ModuleType:
    """pycryptodome, imported on first use: with cffi it costs ~14 MB of RSS that a process running
    no kcp role (or only crypt none/xor) should not pay."""
    from sidecar.proto import crypto_backend

    return crypto_backend


def _cfb(module_name: str, key_len: int) -> Callable[[bytes], _Cipher]:
    if module_name == "AES" and OpenSslCipher is not None:
        return lambda key: _OpenSslAesCfb(key[:key_len])
    return lambda key: _CfbCipher(getattr(_backend(), module_name), key[:key_len])


# --crypt name -> cipher from the 32-byte derived key, with the key prefix kcptun cuts for it.
_FACTORIES: dict[str, Callable[[bytes], _Cipher]] = {
    "aes": _cfb("AES", 32),
    "aes-128": _cfb("AES", 16),
    "aes-192": _cfb("AES", 24),
    "salsa20": lambda key: _Salsa20Cipher(key[:32]),
    "blowfish": _cfb("Blowfish", 32),
    "cast5": _cfb("CAST", 16),
    "3des": _cfb("DES3", 24),
    "xor": lambda key: _XorCipher(key[:32]),
    "none": lambda key: _NoneCipher(),
}
SUPPORTED_CRYPTS = tuple(_FACTORIES)


def _unsupported(name: str) -> ConfigError:
    why = "sidecar has no implementation of it" if name in UNSUPPORTED_CRYPTS else "unknown crypt"
    return ConfigError(
        "crypt",
        name,
        f"{why}; use one of: {', '.join(SUPPORTED_CRYPTS)} (exact lower-case name, the same on both ends; "
        "note kcptun itself silently treats an unknown name as aes)",
    )


class KcpCrypt:
    """One kcp-go crypt (``--crypt`` name + derived key): adds/checks the nonce+CRC header and ciphers.

    Stateless per datagram, so one object serves both directions and any number of packets.
    """

    def __init__(self, name: str, key: bytes) -> None:
        factory = _FACTORIES.get(name)
        if factory is None:
            raise _unsupported(name)
        try:
            self._cipher = factory(key)
        except ValueError as exc:  # e.g. a 3DES key that degenerates to single DES
            raise ConfigError("key", "<hidden>", f"the derived key does not suit {name}: {exc}") from None
        self.name = name

    def encrypt(self, body: bytes, nonce: bytes | None = None) -> bytes:
        """One datagram carrying ``body``; ``nonce`` (16 bytes) defaults to fresh OS randomness."""
        if nonce is None:
            nonce = os.urandom(NONCE_SIZE)
        elif len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
        return self._cipher.encrypt(nonce + _CRC.pack(zlib.crc32(body)) + body)

    def decrypt(self, packet: bytes) -> bytes:
        """The body of one received datagram; AuthError if it is too short or its CRC does not match."""
        if len(packet) < HEADER_SIZE:
            raise AuthError(f"kcp datagram of {len(packet)} bytes is shorter than its {HEADER_SIZE}-byte header")
        plain = self._cipher.decrypt(packet)
        view = memoryview(plain)
        if zlib.crc32(view[HEADER_SIZE:]) != _CRC.unpack_from(plain, NONCE_SIZE)[0]:
            raise AuthError("kcp datagram CRC mismatch (wrong key or crypt, or corrupted)")
        return plain[HEADER_SIZE:]
