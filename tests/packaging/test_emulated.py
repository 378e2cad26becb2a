"""sidecar in Debian chroots of other arches under qemu-user, through arm-builds/run.sh.

ARM (armhf) and MIPS (mipsel) run the smoke test: the feed's test.sh, then `sidecar run` carries
data through its SOCKS5 port and stops cleanly on SIGTERM. The big-endian chroot (s390x: Debian 12
has no big-endian MIPS) runs the smoke test and the protocol-core tests. arm64 is left to a manual
`arm-builds/run.sh arm64` to keep this step near 10 minutes on a new machine; chroots are cached
under /var/cache/sidecar-chroots, so later runs skip the build.
"""

import json
import os
import subprocess
import time

import pytest

from tests.helpers import require
from tests.packaging.tools import MEASUREMENTS, REPO, system_tool

RUN = REPO / "arm-builds/run.sh"
QEMU = {"armhf": "qemu-arm-static", "mipsel": "qemu-mipsel-static", "s390x": "qemu-s390x-static"}

pytestmark = pytest.mark.emulated


def _run(arch: str, *steps: str) -> str:
    require(os.geteuid() == 0, "emulated chroots need root (debootstrap, chroot, namespaces)")
    for tool, package in (("debootstrap", "debootstrap"), (QEMU[arch], "qemu-user-static"),
                          ("update-binfmts", "binfmt-support"), ("unshare", "util-linux"), ("ip", "iproute2")):
        system_tool(tool, package)
    started = time.monotonic()
    result = subprocess.run([str(RUN), arch, *steps], capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    MEASUREMENTS.append(f"{arch} {' + '.join(steps)}: {time.monotonic() - started:.0f} s in all")
    return result.stdout


def _smoke_numbers(arch: str, stdout: str) -> dict:
    line = next(line for line in stdout.splitlines() if line.startswith(f"{arch} smoke: "))
    numbers = json.loads(line.split(": ", 1)[1])
    assert numbers["echoed_bytes"] > 0 and numbers["stop_s"] < 10
    MEASUREMENTS.append(
        f"{arch} ({numbers['machine']}, {numbers['byteorder']}-endian): start-up {numbers['startup_s']} s, "
        f"idle RSS {numbers['idle_rss_kb'] / 1024:.1f} MB (a bare python3 under the same qemu: "
        f"{numbers['bare_python_rss_kb'] / 1024:.1f} MB)")
    return numbers


def test_smoke_armhf() -> None:
    numbers = _smoke_numbers("armhf", _run("armhf", "smoke"))
    assert numbers["machine"] == "armv7l"


def test_smoke_mipsel() -> None:
    numbers = _smoke_numbers("mipsel", _run("mipsel", "smoke"))
    assert numbers["machine"] == "mips"


def test_smoke_and_protocol_cores_big_endian() -> None:
    stdout = _run("s390x", "smoke", "proto")
    numbers = _smoke_numbers("s390x", stdout)
    assert numbers["byteorder"] == "big"
    summary = stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary


def test_run_script_refuses_an_unknown_arch() -> None:
    result = subprocess.run([str(RUN), "sparc"], capture_output=True, text=True)
    assert result.returncode != 0 and "unknown arch 'sparc'" in result.stderr
