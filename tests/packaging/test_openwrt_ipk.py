"""openwrt/build-ipk.sh: the .ipk has OpenWrt's layout, the feed Makefile's fields, and works unpacked."""

import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from sidecar import __version__
from tests.packaging import makefile
from tests.packaging.tools import OPENWRT, REPO

Members = dict[str, tuple[tarfile.TarInfo, bytes | None]]
SITE = f"usr/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def _members(data: bytes) -> Members:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: (m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()}


@pytest.fixture(scope="module")
def ipk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ipk")
    env = {**os.environ, "PYTHON_VERSION": f"{sys.version_info.major}.{sys.version_info.minor}"}
    result = subprocess.run([str(OPENWRT / "build-ipk.sh"), str(out)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path.parent == out
    return path


@pytest.fixture(scope="module")
def outer(ipk: Path) -> Members:
    return _members(ipk.read_bytes())


@pytest.fixture(scope="module")
def control(outer: Members) -> Members:
    return _members(outer["./control.tar.gz"][1])


@pytest.fixture(scope="module")
def data(outer: Members) -> Members:
    return _members(outer["./data.tar.gz"][1])


@pytest.fixture(scope="module")
def fields(control: Members) -> dict[str, str]:
    text = control["./control"][1].decode()
    return dict(re.findall(r"^([A-Za-z-]+): (.*)$", text, re.M))


def test_file_name_and_outer_layout(ipk: Path, outer: Members) -> None:
    assert ipk.name == f"sidecar_{__version__}-r{makefile.variable('PKG_RELEASE')}_all.ipk"
    assert list(outer) == ["./debian-binary", "./data.tar.gz", "./control.tar.gz"]
    assert outer["./debian-binary"][1] == b"2.0\n"


def test_reproducible(ipk: Path, tmp_path: Path) -> None:
    again = subprocess.run([str(OPENWRT / "build-ipk.sh"), str(tmp_path)], capture_output=True, text=True,
                           env={**os.environ, "PYTHON_VERSION": f"{sys.version_info.major}.{sys.version_info.minor}"})
    assert Path(again.stdout.strip()).read_bytes() == ipk.read_bytes()


def test_control_fields_follow_the_makefile(fields: dict[str, str]) -> None:
    assert fields["Package"] == "sidecar"
    assert fields["Version"] == f"{__version__}-r{makefile.variable('PKG_RELEASE')}"
    assert fields["Architecture"] == "all"
    assert set(fields["Depends"].split(", ")) == makefile.depends()
    assert fields["Section"] == makefile.variable("SECTION") == "net"
    assert fields["Require-User"] == makefile.variable("USERID")
    assert fields["Maintainer"] and fields["Description"] == makefile.variable("TITLE")
    assert int(fields["Installed-Size"]) > 100_000


def test_control_scripts_and_conffiles(control: Members, data: Members) -> None:
    assert sorted(control) == [".", "./conffiles", "./control", "./postinst", "./prerm"]
    for script in ("./postinst", "./prerm"):
        info, body = control[script]
        assert info.mode == 0o755 and body == (OPENWRT / "ipk" / script[2:]).read_bytes()
    conffiles = control["./conffiles"][1].decode().split()
    assert conffiles == makefile.block("Package/sidecar/conffiles")
    assert conffiles == ["/etc/config/sidecar", "/etc/sidecar/sidecar.toml"]
    for path in conffiles:
        assert data["." + path][0].mode == 0o600  # may hold passwords
    assert data["./lib/upgrade/keep.d/sidecar"][1].decode().split() == conffiles


def test_data_holds_the_sources_launcher_and_init(data: Members) -> None:
    sources = {f"./{SITE}/{p.relative_to(REPO)}" for p in (REPO / "sidecar").rglob("*.py")}
    packaged = {name for name in data if name.endswith(".py")}
    assert packaged == sources
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in data)
    init, init_body = data["./etc/init.d/sidecar"]
    assert init.mode == 0o755 and init_body == (OPENWRT / "sidecar/files/sidecar.init").read_bytes()
    launcher, launcher_body = data["./usr/bin/sidecar"]
    assert launcher.mode == 0o755 and launcher_body.startswith(b"#!/usr/bin/python3\n")
    assert data["./etc/sidecar/sidecar.toml"][1] == (REPO / "conf/ss-local.toml").read_bytes()
    assert data["./etc/config/sidecar"][1] == (OPENWRT / "sidecar/files/sidecar.config").read_bytes()


def test_all_members_root_owned_with_one_mtime(outer: Members, control: Members, data: Members) -> None:
    mtimes = set()
    for members in (outer, control, data):
        for info, _ in members.values():
            assert (info.uid, info.gid) == (0, 0), info.name
            mtimes.add(info.mtime)
    assert len(mtimes) == 1


def test_unpacked_package_runs(data: Members, tmp_path: Path) -> None:
    """The packaged files alone are enough: the launcher prints the version and checks the shipped TOML."""
    root = tmp_path / "root"
    for name, (_, body) in data.items():
        if body is not None:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(body)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(root / SITE)}
    launcher = str(root / "usr/bin/sidecar")
    version = subprocess.run([sys.executable, launcher, "--version"], capture_output=True, text=True, env=env,
                             cwd=tmp_path)
    assert version.stdout.strip() == f"sidecar {__version__}", version.stderr
    check = subprocess.run([sys.executable, launcher, "check", "-c", str(root / "etc/sidecar/sidecar.toml")],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert check.returncode == 0 and "config OK" in check.stdout, check.stderr
