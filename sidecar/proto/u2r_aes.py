"""AES-128 for udp2raw's ciphers: OpenSSL through `cryptography` when importable, else pycryptodome.

`new_aes(mode, key)` returns one long-lived pair of bound methods. In cbc and cfb each keeps its chain
across calls (a zero IV before the first), in ecb every block stands alone. An OpenSSL `update` costs
about 1 µs a call against ~10 µs through pycryptodome's cffi layer, which is why the per-packet path
goes through here. pycryptodome (~14 MB of RSS with cffi) is imported only when it is the fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

try:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    try:  # CFB moved to "decrepit" in cryptography 43 and leaves the old place in 49
        from cryptography.hazmat.decrepit.ciphers.modes import CFB
    except ImportError:  # pragma: no cover - older cryptography
        CFB = modes.CFB
except ImportError:  # pragma: no cover - exercised on routers without `cryptography`
    Cipher = None  # type: ignore[assignment,misc]

MODES = ("ecb", "cbc", "cfb")
_ZERO_IV = bytes(16)

Transform = Callable[[bytes | bytearray | memoryview], bytes]


class AesPair(NamedTuple):
    """The two directions of one keyed AES context (each with its own chain in cbc/cfb)."""

    encrypt: Transform
    decrypt: Transform


def _openssl(mode: str, key: bytes) -> AesPair:
    chosen = {"ecb": modes.ECB, "cbc": lambda: modes.CBC(_ZERO_IV), "cfb": lambda: CFB(_ZERO_IV)}[mode]()
    cipher = Cipher(algorithms.AES(key), chosen)
    return AesPair(cipher.encryptor().update, cipher.decryptor().update)


def _pycryptodome(mode: str, key: bytes) -> AesPair:
    from sidecar.proto.crypto_backend import AES

    def new() -> object:
        if mode == "ecb":
            return AES.new(key, AES.MODE_ECB)
        if mode == "cbc":
            return AES.new(key, AES.MODE_CBC, iv=_ZERO_IV)
        return AES.new(key, AES.MODE_CFB, iv=_ZERO_IV, segment_size=128)

    # one object per direction: pycryptodome refuses to encrypt and decrypt on the same chained object
    return AesPair(new().encrypt, new().decrypt)  # type: ignore[attr-defined]


def new_aes(mode: str, key: bytes, *, prefer_openssl: bool = True) -> AesPair:
    """AES in `mode` ("ecb", "cbc" or "cfb" with 128-bit segments) keyed with `key`.

    cbc and cfb are streams of whole blocks: callers pass multiples of 16 bytes to keep the chain aligned.
    """
    if mode not in MODES:
        raise ValueError(f"unknown AES mode {mode!r}, expected one of {MODES}")
    if prefer_openssl and Cipher is not None:
        return _openssl(mode, key)
    return _pycryptodome(mode, key)
