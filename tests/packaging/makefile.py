"""Read the variables and blocks of the feed Makefile (openwrt/sidecar/Makefile)."""

import re

from tests.packaging.tools import OPENWRT

MAKEFILE = OPENWRT / "sidecar/Makefile"


def variable(name: str) -> str:
    """The value of `NAME:=...`, continuation lines joined."""
    text = MAKEFILE.read_text().replace("\\\n", " ")
    match = re.search(rf"^\s*{name}:=(.*)$", text, re.M)
    assert match, f"no {name}:= in {MAKEFILE}"
    return " ".join(match.group(1).split())


def block(name: str) -> list[str]:
    """The lines between `define NAME` and `endef`."""
    match = re.search(rf"^define {re.escape(name)}\n(.*?)^endef$", MAKEFILE.read_text(), re.M | re.S)
    assert match, f"no define {name} in {MAKEFILE}"
    return match.group(1).splitlines()


def depends() -> set[str]:
    return {item.lstrip("+") for item in variable("DEPENDS").split()}
