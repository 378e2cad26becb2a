"""pycryptodome under either namespace: `Cryptodome` (Debian, some OpenWrt builds) or `Crypto` (pip)."""

try:
    from Cryptodome.Cipher import AES, ChaCha20_Poly1305
    from Cryptodome.Cipher import ARC4, CAST, DES3, Blowfish, ChaCha20, Salsa20
except ImportError:  # pragma: no cover - depends on how pycryptodome was installed
    from Crypto.Cipher import AES, ChaCha20_Poly1305  # type: ignore[no-redef]
    from Crypto.Cipher import ARC4, CAST, DES3, Blowfish, ChaCha20, Salsa20  # type: ignore[no-redef]

__all__ = ["AES", "ARC4", "CAST", "DES3", "Blowfish", "ChaCha20", "ChaCha20_Poly1305", "Salsa20"]
