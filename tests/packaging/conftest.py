"""Packaging tests. `pytest -m emulated tests/packaging` runs only the qemu chroot runs."""

import pytest

from tests.packaging.tools import MEASUREMENTS


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "emulated: runs sidecar in qemu-user Debian chroots (root; ~10 min uncached)")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASUREMENTS:
        terminalreporter.section("sidecar under qemu-user emulation")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)
