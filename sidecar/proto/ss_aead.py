"""Shadowsocks AEAD (SIP004): key derivation, the TCP chunk stream and UDP packets."""

import base64
import binascii
import os
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.errors import AuthError, ConfigError, ProtocolError
from sidecar.proto.aead import TAG_LEN, Aead, Buffer, new_aead
from sidecar.proto.digests import hkdf_sha1, md5

MAX_PAYLOAD = 0x3FFF
LENGTH_CHUNK = 2 + TAG_LEN
SUBKEY_INFO = b"ss-subkey"


@dataclass(frozen=True, slots=True)
class Method:
    """One AEAD method as shadowsocks names it."""

    name: str
    family: str
    key_len: int
    nonce_len: int

    @property
    def salt_len(self) -> int:
        return self.key_len


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("aes-128-gcm", "aes-gcm", 16, 12),
        Method("aes-192-gcm", "aes-gcm", 24, 12),
        Method("aes-256-gcm", "aes-gcm", 32, 12),
        Method("chacha20-ietf-poly1305", "chacha20-poly1305", 32, 12),
        Method("xchacha20-ietf-poly1305", "xchacha20-poly1305", 32, 24),
    )
}


def method_by_name(name: str, key: str = "method") -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(key, name, f"use one of: {', '.join(METHODS)}") from None


def evp_bytes_to_key(password: bytes, key_len: int) -> bytes:
    """OpenSSL EVP_BytesToKey(MD5, no salt, one round), as shadowsocks derives its master key."""
    out, block = b"", b""
    while len(out) < key_len:
        block = md5(block + password)
        out += block
    return out[:key_len]


def decode_base64_key(text: str, key_len: int, key: str = "key") -> bytes:
    """A key given as base64 (libev's `--key`), padded or not, standard or URL-safe alphabet."""
    padded = text.strip() + "=" * (-len(text.strip()) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except binascii.Error:
        raise ConfigError(key, text, "give the key as base64, e.g. from `sidecar genkey`") from None
    if len(raw) != key_len:
        raise ConfigError(key, text, f"the key must decode to {key_len} bytes for this method")
    return raw


class Cipher:
    """A method plus its master key: what both ends of a Shadowsocks hop share."""

    __slots__ = ("method", "master_key")

    def __init__(self, method: Method, master_key: bytes) -> None:
        if len(master_key) != method.key_len:
            raise ValueError("master key length does not match the method")
        self.method = method
        self.master_key = master_key

    @classmethod
    def from_password(cls, method: Method, password: str) -> "Cipher":
        return cls(method, evp_bytes_to_key(password.encode(), method.key_len))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cipher) and (self.method, self.master_key) == (other.method, other.master_key)

    def __hash__(self) -> int:
        return hash((self.method.name, self.master_key))

    def session(self, salt: bytes) -> Aead:
        subkey = hkdf_sha1(self.master_key, salt, SUBKEY_INFO, self.method.key_len)
        return new_aead(self.method.family, subkey)


class _NonceCounter:
    """The SIP004 nonce: a little-endian counter over the whole nonce, bumped after every call."""

    __slots__ = ("_value", "_len")

    def __init__(self, length: int) -> None:
        self._value = 0
        self._len = length

    def next(self) -> bytes:
        nonce = self._value.to_bytes(self._len, "little")
        self._value += 1
        return nonce


class TcpEncryptor:
    """Turns plaintext into one direction of a Shadowsocks TCP stream (salt, then chunks)."""

    __slots__ = ("_aead", "_nonce", "_pending_salt")

    def __init__(self, cipher: Cipher, salt: bytes | None = None) -> None:
        salt = salt if salt is not None else os.urandom(cipher.method.salt_len)
        self._aead = cipher.session(salt)
        self._nonce = _NonceCounter(cipher.method.nonce_len)
        self._pending_salt = salt

    def encrypt(self, data: Buffer) -> bytes:
        """Ciphertext for `data`; the first call also carries the salt. Empty data yields only that."""
        if 0 < len(data) <= MAX_PAYLOAD and not self._pending_salt:  # one chunk: the interactive case
            seal, nonce = self._aead.seal, self._nonce
            return seal(nonce.next(), len(data).to_bytes(2, "big")) + seal(nonce.next(), data)
        parts = [self._pending_salt] if self._pending_salt else []
        self._pending_salt = b""
        view = memoryview(data)
        seal, nonce = self._aead.seal, self._nonce
        for start in range(0, len(view), MAX_PAYLOAD):
            piece = view[start : start + MAX_PAYLOAD]
            parts.append(seal(nonce.next(), len(piece).to_bytes(2, "big")))
            parts.append(seal(nonce.next(), piece))
        return b"".join(parts)


class TcpDecryptor:
    """Reads one direction of a Shadowsocks TCP stream; `feed` returns the plaintext it could open.

    `accept_salt` is asked once, after the first chunk authenticated (so a probe without the key
    cannot fill the replay filter): it returns False for a replayed salt.
    """

    __slots__ = ("_cipher", "_aead", "_nonce", "_buf", "_need", "_salt", "_accept_salt")

    def __init__(self, cipher: Cipher, accept_salt: Callable[[bytes], bool] | None = None) -> None:
        self._cipher = cipher
        self._aead: Aead | None = None
        self._nonce = _NonceCounter(cipher.method.nonce_len)
        self._buf = bytearray()
        self._need = -1  # payload length of the chunk whose length header was opened, -1 if none
        self._salt = b""
        self._accept_salt = accept_salt

    def feed(self, data: Buffer) -> bytes:
        """Plaintext of every whole chunk now buffered; raises AuthError or ProtocolError on bad input."""
        self._buf += data
        if self._aead is None and not self._read_salt():
            return b""
        out: list[bytes] = []
        offset = 0
        buf = memoryview(self._buf)
        try:
            while True:
                if self._need < 0:
                    if len(buf) - offset < LENGTH_CHUNK:
                        break
                    self._need = self._open_length(buf[offset : offset + LENGTH_CHUNK])
                    offset += LENGTH_CHUNK
                end = offset + self._need + TAG_LEN
                if len(buf) < end:
                    break
                out.append(self._aead.open(self._nonce.next(), buf[offset:end]))  # type: ignore[union-attr]
                offset, self._need = end, -1
        finally:
            buf.release()
            del self._buf[:offset]
        return b"".join(out)

    def _read_salt(self) -> bool:
        salt_len = self._cipher.method.salt_len
        if len(self._buf) < salt_len:
            return False
        self._salt = bytes(self._buf[:salt_len])
        del self._buf[:salt_len]
        self._aead = self._cipher.session(self._salt)
        return True

    def _open_length(self, chunk: memoryview) -> int:
        length = int.from_bytes(self._aead.open(self._nonce.next(), chunk), "big")  # type: ignore[union-attr]
        if self._accept_salt is not None:
            if not self._accept_salt(self._salt):
                raise AuthError("replayed salt")
            self._accept_salt = None
        if length > MAX_PAYLOAD:
            raise ProtocolError(f"chunk length {length:#x} out of range")
        return length


def encrypt_udp(cipher: Cipher, plaintext: Buffer, salt: bytes | None = None) -> bytes:
    """One Shadowsocks UDP packet: salt, then the AEAD of the plaintext under a zero nonce."""
    salt = salt if salt is not None else os.urandom(cipher.method.salt_len)
    return salt + cipher.session(salt).seal(bytes(cipher.method.nonce_len), plaintext)


def decrypt_udp(cipher: Cipher, packet: Buffer) -> tuple[bytes, bytes]:
    """(salt, plaintext) of one UDP packet; raises AuthError if it does not authenticate."""
    salt_len = cipher.method.salt_len
    if len(packet) < salt_len + TAG_LEN:
        raise AuthError("UDP packet shorter than salt and tag")
    view = memoryview(packet)
    salt = bytes(view[:salt_len])
    return salt, cipher.session(salt).open(bytes(cipher.method.nonce_len), view[salt_len:])
