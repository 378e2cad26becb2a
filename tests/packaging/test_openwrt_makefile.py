"""The feed Makefile: DEPENDS names exactly the feed packages that sidecar's imports need.

OpenWrt splits parts of the standard library out of python3-light into their own packages; a
module from one of them that is missing on the router fails only when it is first imported, so
the imports are scanned here rather than trusted to memory.
"""

import ast
import re
import sys
from pathlib import Path

from tests.packaging import makefile
from tests.packaging.tools import REPO

# Top-level stdlib modules that OpenWrt ships outside python3-light (lang/python/python3/files/
# python3-package-*.mk in the packages feed).
SPLIT_STDLIB = {
    "asyncio": "python3-asyncio", "cgi": "python3-cgi", "cgitb": "python3-cgitb", "ctypes": "python3-ctypes",
    "curses": "python3-ncurses", "dbm": "python3-dbm", "decimal": "python3-decimal", "email": "python3-email",
    "lib2to3": "python3-lib2to3", "logging": "python3-logging", "lzma": "python3-lzma",
    "multiprocessing": "python3-multiprocessing", "pydoc": "python3-pydoc", "readline": "python3-readline",
    "sqlite3": "python3-sqlite3", "ssl": "python3-openssl", "unicodedata": "python3-codecs",
    "unittest": "python3-unittest", "urllib": "python3-urllib", "uuid": "python3-uuid", "venv": "python3-venv",
    "webbrowser": "python3-webbrowser", "xml": "python3-xml",
}
# Needs that no import statement shows: (text in the code, package, why).
RUNTIME_NEEDS = [
    ("getaddrinfo(", "python3-codecs", "a str host name is encoded with the idna codec, which imports unicodedata"),
    ("pbkdf2_hmac(", "python3-openssl", "Python >= 3.12 has hashlib.pbkdf2_hmac only through OpenSSL's _hashlib"),
]
THIRD_PARTY = {"gevent": "python3-gevent", "Cryptodome": "python3-cryptodome", "Crypto": "python3-cryptodome",
               "msgpack": "python3-msgpack"}
# PyPI name in setup.py's install_requires -> import name.
DISTRIBUTIONS = {"gevent": "gevent", "pycryptodome": "Crypto", "msgpack": "msgpack", "cryptography": "cryptography",
                 "cramjam": "cramjam", "crc32c": "crc32c"}
# Not in the feed. Each must stay optional for the Shadowsocks roles (test_router_deps.py).
NOT_IN_FEED = {"cryptography", "cramjam", "crc32c"}


def _sources() -> list[Path]:
    return sorted((REPO / "sidecar").rglob("*.py"))


def _imported_top_level(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _install_requires() -> list[str]:
    for node in ast.walk(ast.parse((REPO / "setup.py").read_text())):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return [re.split(r"[<>=!~; ]", ast.literal_eval(item))[0] for item in node.value.elts]
    raise AssertionError("no install_requires in setup.py")


def _needed() -> dict[str, str]:
    """Feed package -> why, for everything sidecar declares or its code needs on a router."""
    needed = {"python3-light": "the interpreter"}
    for dist in _install_requires():
        name = DISTRIBUTIONS[dist]
        if name not in NOT_IN_FEED:
            needed[THIRD_PARTY[name]] = f"setup.py requires {dist}"
    for path in _sources():
        where = str(path.relative_to(REPO))
        for name in _imported_top_level(path):
            if name in SPLIT_STDLIB:
                needed[SPLIT_STDLIB[name]] = f"{where} imports {name}"
            elif name in THIRD_PARTY:
                needed[THIRD_PARTY[name]] = f"{where} imports {name}"
            else:
                assert name == "sidecar" or name in sys.stdlib_module_names or name in NOT_IN_FEED, (
                    f"{where} imports {name}: add its feed package to DEPENDS and THIRD_PARTY here, "
                    "or keep it optional and list it in NOT_IN_FEED")
        text = path.read_text()
        for needle, package, why in RUNTIME_NEEDS:
            if needle in text:
                needed[package] = f"{where}: {why}"
    return needed


def test_depends_is_exactly_what_the_code_needs() -> None:
    needed = _needed()
    depends = makefile.depends()
    missing = {pkg: why for pkg, why in needed.items() if pkg not in depends}
    assert not missing, f"add to DEPENDS: {missing}"
    assert depends == set(needed), f"DEPENDS has packages nothing needs: {depends - set(needed)}"


def test_feed_package_shape() -> None:
    text = makefile.MAKEFILE.read_text()
    assert "include $(TOPDIR)/feeds/packages/lang/python/python3-package.mk" in text
    assert "$(eval $(call Py3Package,sidecar))" in text
    assert "$(eval $(call BuildPackage,sidecar))" in text
    assert makefile.variable("PKGARCH") == "all"
    assert makefile.block("Package/sidecar/conffiles") == ["/etc/config/sidecar", "/etc/sidecar/sidecar.toml"]
    install = "\n".join(makefile.block("Py3Package/sidecar/install"))
    for target in ("/usr/bin/", "/etc/init.d/sidecar", "/etc/config/sidecar", "/etc/sidecar/sidecar.toml"):
        assert target in install
