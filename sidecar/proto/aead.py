"""AEAD primitives behind one tiny interface: `seal(nonce, data)` and `open(nonce, data)`.

`cryptography` (OpenSSL) is used when it is importable: a call costs about 2 µs there against
60-130 µs in pycryptodome, whose cipher objects cannot be re-keyed with a new nonce and must be
rebuilt for every chunk. pycryptodome stays the fallback (routers without `cryptography`) and is
the only backend for xchacha20, which OpenSSL does not offer.
"""

from collections.abc import Callable
from typing import Protocol

from sidecar.errors import AuthError

try:
    import cryptography
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    # Before 41 the AEAD calls take only bytes (Debian 12 ships 38): copy views there, not elsewhere.
    _BYTES_ONLY = int(cryptography.__version__.split(".")[0]) < 41
except ImportError:  # pragma: no cover - exercised on routers without `cryptography`
    AESGCM = ChaCha20Poly1305 = None  # type: ignore[assignment,misc]
    _BYTES_ONLY = False

TAG_LEN = 16
Buffer = bytes | bytearray | memoryview


class Aead(Protocol):
    def seal(self, nonce: bytes, data: Buffer) -> bytes: ...
    def open(self, nonce: bytes, data: Buffer) -> bytes: ...


class OpenSslAead:
    """A `cryptography` AEAD object: keyed once, any nonce per call."""

    __slots__ = ("_impl",)

    def __init__(self, impl: object) -> None:
        self._impl = impl

    def seal(self, nonce: bytes, data: Buffer) -> bytes:
        return self._impl.encrypt(nonce, bytes(data) if _BYTES_ONLY else data, None)  # type: ignore[attr-defined]

    def open(self, nonce: bytes, data: Buffer) -> bytes:
        try:
            return self._impl.decrypt(nonce, bytes(data) if _BYTES_ONLY else data, None)  # type: ignore[attr-defined]
        except InvalidTag:
            raise AuthError("AEAD tag mismatch") from None


class CryptodomeAead:
    """A pycryptodome AEAD: a new cipher object per call, as its API requires."""

    __slots__ = ("_new",)

    def __init__(self, new: Callable[[bytes], object]) -> None:
        self._new = new

    def seal(self, nonce: bytes, data: Buffer) -> bytes:
        ciphertext, tag = self._new(nonce).encrypt_and_digest(data)  # type: ignore[attr-defined]
        return ciphertext + tag

    def open(self, nonce: bytes, data: Buffer) -> bytes:
        if len(data) < TAG_LEN:
            raise AuthError("AEAD ciphertext shorter than its tag")
        view = memoryview(data)
        try:
            return self._new(nonce).decrypt_and_verify(view[:-TAG_LEN], view[-TAG_LEN:])  # type: ignore[attr-defined]
        except ValueError:
            raise AuthError("AEAD tag mismatch") from None


def new_aead(family: str, key: bytes, *, prefer_openssl: bool = True) -> Aead:
    """An AEAD for `family` ("aes-gcm", "chacha20-poly1305" or "xchacha20-poly1305") keyed with `key`."""
    if prefer_openssl and family == "aes-gcm" and AESGCM is not None:
        return OpenSslAead(AESGCM(key))
    if prefer_openssl and family == "chacha20-poly1305" and ChaCha20Poly1305 is not None:
        return OpenSslAead(ChaCha20Poly1305(key))
    # Imported here, not at the top: pycryptodome (with cffi) costs ~14 MB of RSS, which a process
    # that has `cryptography` and no xchacha20 never needs to pay.
    from sidecar.proto.crypto_backend import AES, ChaCha20_Poly1305

    if family == "aes-gcm":
        return CryptodomeAead(lambda nonce: AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_LEN))
    if family in ("chacha20-poly1305", "xchacha20-poly1305"):
        return CryptodomeAead(lambda nonce: ChaCha20_Poly1305.new(key=key, nonce=nonce))
    raise ValueError(f"unknown AEAD family {family!r}")
