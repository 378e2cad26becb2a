"""sidecar: a one-process network accelerator (Shadowsocks, KCP, udp2raw roles)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path("sidecar/__init__.py").read_text()).group(1)

setup(
    name="sidecar",
    version=VERSION,
    description="One low-memory gevent daemon for the Shadowsocks, kcptun and udp2raw roles, chained in-process",
    long_description=Path("README.md").read_text(encoding="utf-8") if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["sidecar", "sidecar.*"]),
    install_requires=[
        "gevent>=22.10",
        "pycryptodome>=3.15",
        "msgpack>=1.0",
        # OpenSSL AEAD: ~60x less per-call overhead than pycryptodome (see sidecar/proto/aead.py);
        # optional at run time, so routers without it fall back to pycryptodome.
        "cryptography>=41",
        # kcptun's snappy stream compression: cramjam for the snappy block codec (Rust, wheels for
        # many arches), crc32c for the framing format's CRC-32C (hardware-accelerated, C fallback).
        "cramjam>=2.6",
        "crc32c>=2.3",
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "ruff>=0.5"],
        "bench": ["matplotlib>=3.5"],
    },
    entry_points={"console_scripts": ["sidecar = sidecar.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: Internet :: Proxy Servers",
    ],
)
