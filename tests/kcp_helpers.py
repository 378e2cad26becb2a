"""Test plumbing shared by the KCP tests."""

import time

from tests.helpers import Process


def wait_ready(proc: Process, timeout: float = 10.0) -> None:
    """Wait for a sidecar to log that it runs (a UDP-only role has no TCP port to probe)."""
    deadline = time.monotonic() + timeout
    while "sidecar ready" not in proc.output():
        if time.monotonic() > deadline or proc.proc.poll() is not None:
            raise AssertionError(f"sidecar did not start:\n{proc.stop()}")
        time.sleep(0.05)
