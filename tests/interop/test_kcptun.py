"""Our kcp-client and kcp-server against Debian's kcptun, both directions, over real sockets.

Each case runs one 20 MB bulk echo transfer (sha256 compared) and 50 concurrent streams that each
echo their own data, for every variant the issue names (smux v1 is the default's).
"""

import os
import socket
import sys
import threading
import time

import pytest

from tests.helpers import (
    EchoServer,
    Process,
    counters,
    echo_transfer,
    free_port,
    recv_exact,
    require_binary,
    start_sidecar,
    wait_for_port,
)
from tests.kcp_helpers import wait_ready

KEY = "interop-kcp"
BULK = 20 * 1024 * 1024
STREAMS, STREAM_BYTES = 50, 64 * 1024
ERRORS = ("crypt_errors", "kcp_errors", "fec_bad", "smux_errors", "errors", "connect_failures")

# (id, options as TOML keys = kcptun flags, bulk transfer size)
VARIANTS = [
    ("default", {}, BULK),
    ("crypt-none", {"crypt": "none"}, BULK),
    ("crypt-salsa20", {"crypt": "salsa20"}, BULK),
    ("crypt-aes-128", {"crypt": "aes-128"}, BULK),
    ("nocomp", {"nocomp": True}, BULK),
    ("smuxver-2", {"smuxver": 2}, BULK),
    ("fec-off", {"datashard": 0, "parityshard": 0}, BULK),
    ("mode-normal", {"mode": "normal"}, BULK),
    ("mode-fast3", {"mode": "fast3"}, BULK),
]
PARAMS = [pytest.param(options, size, id=name) for name, options, size in VARIANTS]


@pytest.fixture(scope="module")
def echo():
    server = EchoServer()
    # kcptun-server dials all 50 streams' targets at once: socketserver's backlog of 5 would overflow
    server.server.socket.listen(4 * STREAMS)
    yield server
    server.close()


def toml_lines(options: dict) -> str:
    def value(v: object) -> str:
        return "true" if v is True else f'"{v}"' if isinstance(v, str) else str(v)

    return "\n".join(f"{k} = {value(v)}" for k, v in options.items())


def kcptun_flags(options: dict) -> list[str]:
    flags: list[str] = []
    for k, v in options.items():
        flags += [f"--{k}"] if v is True else [f"--{k}", str(v)]
    return flags


def kcptun(tool: str, tmp_path, *args: str) -> Process:
    binary = require_binary(tool)
    return Process([binary, "--key", KEY, *args], tmp_path / f"{tool}.log")


def our_server(tmp_path, port: int, target: int, options: dict) -> Process:
    proc = start_sidecar(f"""
[[kcp-server]]
listen = "127.0.0.1:{port}"
target = "127.0.0.1:{target}"
key = "{KEY}"
{toml_lines(options)}
""", tmp_path, "kcp-server")
    wait_ready(proc)
    return proc


def our_client(tmp_path, port: int, server: int, options: dict) -> Process:
    return start_sidecar(f"""
[[kcp-client]]
localaddr = "127.0.0.1:{port}"
remoteaddr = "127.0.0.1:{server}"
key = "{KEY}"
{toml_lines(options)}
""", tmp_path, "kcp-client", wait_ports=(port,))


def bulk(port: int, size: int) -> float:
    """One echo transfer of `size` random bytes; returns MB/s each way."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sent, received = echo_transfer(sock, size)
    assert received == sent
    return size / (time.monotonic() - start) / 1e6


def concurrent_streams(port: int) -> None:
    """STREAMS connections at once, each echoing its own random data."""
    results: list[bool] = []

    def one() -> None:
        data = os.urandom(STREAM_BYTES)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(data)
            results.append(recv_exact(sock, len(data)) == data)

    threads = [threading.Thread(target=one) for _ in range(STREAMS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [True] * STREAMS


def check_counters(log: str, role: str) -> dict[str, int]:
    stats = counters(log, role)
    assert {k: stats[k] for k in ERRORS} == dict.fromkeys(ERRORS, 0)
    assert stats["streams"] >= STREAMS + 1
    return stats


@pytest.mark.parametrize(("options", "size"), PARAMS)
def test_our_kcp_client_with_kcptun_server(options, size, tmp_path, echo):
    server_port, local_port = free_port(), free_port()
    server = kcptun("kcptun-server", tmp_path, "-l", f"127.0.0.1:{server_port}", "-t", f"127.0.0.1:{echo.port}",
                    *kcptun_flags(options))
    ours = our_client(tmp_path, local_port, server_port, options)
    try:
        rate = bulk(local_port, size)
        concurrent_streams(local_port)
    finally:
        log = ours.stop()
        server.stop()
    stats = check_counters(log, "kcp-client[0]")
    assert stats["bytes_up"] >= size
    print(f"our client -> kcptun-server: {rate:.1f} MB/s each way")


@pytest.mark.parametrize(("options", "size"), PARAMS)
def test_kcptun_client_with_our_kcp_server(options, size, tmp_path, echo):
    server_port, local_port = free_port(), free_port()
    ours = our_server(tmp_path, server_port, echo.port, options)
    client = kcptun("kcptun-client", tmp_path, "-l", f"127.0.0.1:{local_port}", "-r", f"127.0.0.1:{server_port}",
                    *kcptun_flags(options))
    try:
        wait_for_port(local_port)
        rate = bulk(local_port, size)
        concurrent_streams(local_port)
    finally:
        log = ours.stop()
        client.stop()
    stats = check_counters(log, "kcp-server[0]")
    assert stats["bytes_up"] >= size
    print(f"kcptun-client -> our server: {rate:.1f} MB/s each way")


def test_flag_commands_with_kcptun(tmp_path, echo):
    """`sidecar kcp-server` / `kcp-client` take kcptun's own flags: the same argument list works for both tools."""
    flags = ["--key", KEY, "--crypt", "aes-192", "--mode", "fast2", "--ds", "5", "--ps", "2", "--smuxver", "2",
             "--mtu", "1200", "--sndwnd", "256", "--rcvwnd", "256"]
    ours_server, kcptun_server, local_ours, local_kcptun = free_port(), free_port(), free_port(), free_port()
    sidecar = [sys.executable, "-m", "sidecar"]
    procs = [
        Process([*sidecar, "kcp-server", "-l", f"127.0.0.1:{ours_server}", "-t", f"127.0.0.1:{echo.port}", *flags],
                tmp_path / "ours-server.log"),
        Process([require_binary("kcptun-client"), "-l", f"127.0.0.1:{local_kcptun}", "-r",
                 f"127.0.0.1:{ours_server}", *flags], tmp_path / "kcptun-client.log"),
        Process([require_binary("kcptun-server"), "-l", f"127.0.0.1:{kcptun_server}", "-t",
                 f"127.0.0.1:{echo.port}", *flags], tmp_path / "kcptun-server.log"),
        Process([*sidecar, "kcp-client", "-l", f"127.0.0.1:{local_ours}", "-r", f"127.0.0.1:{kcptun_server}", *flags],
                tmp_path / "ours-client.log"),
    ]
    try:
        for port in (local_kcptun, local_ours):
            wait_for_port(port)
            bulk(port, 1024 * 1024)
    finally:
        logs = [proc.stop() for proc in procs]
    for log, role in ((logs[0], "kcp-server[0]"), (logs[3], "kcp-client[0]")):
        stats = counters(log, role)
        assert {k: stats[k] for k in ERRORS} == dict.fromkeys(ERRORS, 0)
