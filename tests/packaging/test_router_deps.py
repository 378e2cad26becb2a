"""sidecar runs with only what OpenWrt's feed has: no cryptography, cramjam or crc32c.

The feed has none of the three. Each is made unimportable in a child process (a None entry in
sys.modules makes `import` raise ImportError), which then checks a config, and runs an
ss-local -> ss-server pair and carries data through it, so an unguarded import anywhere on that
path fails here, not on a router.
"""

import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import EchoServer, Process, counters, echo_transfer, free_port, socks5_connect, wait_for_port

NOT_IN_FEED = ("cryptography", "cramjam", "crc32c")

RUN_WITHOUT = f"""
import sys
sys.modules.update(dict.fromkeys({NOT_IN_FEED!r}))
from sidecar.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _pair_config(tmp_path: Path, socks_port: int, server_port: int) -> Path:
    config = tmp_path / "pair.toml"
    config.write_text(f"""
[[ss-server]]
server = "127.0.0.1"
server_port = {server_port}
password = "router"
block_private = false  # the echo target is on loopback

[[ss-local]]
local_port = {socks_port}
server = "127.0.0.1"
server_port = {server_port}
password = "router"
""")
    return config


def _wait_listening(proc: Process, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.proc.poll() is None, f"sidecar exited:\n{proc.output()}"
        try:
            wait_for_port(port, timeout=0.2)
            return
        except TimeoutError:
            continue
    raise AssertionError(f"sidecar does not listen on {port}:\n{proc.output()}")


def test_check_without_packages_missing_from_the_feed(tmp_path: Path) -> None:
    config = _pair_config(tmp_path, free_port(), free_port())
    result = subprocess.run([sys.executable, "-c", RUN_WITHOUT, "check", "-c", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_shadowsocks_pair_without_packages_missing_from_the_feed(tmp_path: Path) -> None:
    socks_port = free_port()
    config = _pair_config(tmp_path, socks_port, free_port())
    echo = EchoServer()
    proc = Process([sys.executable, "-c", RUN_WITHOUT, "run", "-c", str(config)], tmp_path / "run.log")
    try:
        _wait_listening(proc, socks_port)
        with socks5_connect(socks_port, "127.0.0.1", echo.port) as sock:
            sent, received = echo_transfer(sock, 200_000)
    finally:
        log = proc.stop()
        echo.close()
    assert sent == received, log
    assert proc.proc.returncode == 0, log
    assert counters(log, "ss-server[0]")["auth_failures"] == 0
