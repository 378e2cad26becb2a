"""pycryptodome under either namespace: `Cryptodome` (Debian, some OpenWrt builds) or `Crypto` (pip)."""

try:
    from Cryptodome.Cipher import AES, ARC4, CAST, DES3, Blowfish, ChaCha20, ChaCha20_Poly1305, Salsa20
except ImportError:  # pragma: no cover - depends on how pycryptodome was installed
    from Crypto.Cipher import (  # type: ignore[no-redef]
        AES,
        ARC4,
        CAST,
        DES3,
        Blowfish,
        ChaCha20,
        ChaCha20_Poly1305,
        Salsa20,
    )

__all__ = ["AES", "ARC4", "CAST", "DES3", "Blowfish", "ChaCha20", "ChaCha20_Poly1305", "Salsa20"]
