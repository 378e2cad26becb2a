"""KCP through a bad link: 10% random loss and 20 ms delay each way (bench/impair.py), against kcptun.

Transfers still arrive intact in both directions, and with FEC 10/3 our receiving side rebuilds lost
packets from parity (its `fec_recovered` counter) instead of waiting for retransmissions.
"""

import socket
import threading

import pytest

from bench.impair import Impairment, spawn_impairer
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

KEY = "loss-kcp"
TRANSFER = 20 * 1024 * 1024
STREAMS, STREAM_BYTES = 50, 64 * 1024
BAD_LINK = Impairment(delay_ms=20, loss=0.1)


@pytest.fixture
def echo():
    server = EchoServer()
    server.server.socket.listen(64)
    yield server
    server.close()


def transfers(port: int) -> None:
    """One bulk echo transfer and STREAMS concurrent echo streams, all byte-identical."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sent, received = echo_transfer(sock, TRANSFER)
    assert sent == received
    results: list[bool] = []

    def one() -> None:
        data = threading.get_ident().to_bytes(8, "little") * (STREAM_BYTES // 8)
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(data)
            results.append(recv_exact(sock, len(data)) == data)

    threads = [threading.Thread(target=one) for _ in range(STREAMS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert results == [True] * STREAMS


def test_our_client_over_a_lossy_link_to_kcptun_server(tmp_path, echo):
    binary = require_binary("kcptun-server")
    server_port, local_port = free_port(), free_port()
    server = Process([binary, "-l", f"127.0.0.1:{server_port}", "-t", f"127.0.0.1:{echo.port}", "--key", KEY],
                     tmp_path / "kcptun-server.log")
    impairer = spawn_impairer(("127.0.0.1", 0), ("127.0.0.1", server_port), both=BAD_LINK, seed=1)
    ours = start_sidecar(f"""
[[kcp-client]]
localaddr = "127.0.0.1:{local_port}"
remoteaddr = "127.0.0.1:{impairer.listen[1]}"
key = "{KEY}"
""", tmp_path, "kcp-client", wait_ports=(local_port,))
    try:
        transfers(local_port)
    finally:
        log = ours.stop()
        link = impairer.stop()
        server.stop()
    stats = counters(log, "kcp-client[0]")
    assert sum(direction["dropped_loss"] for direction in link.values()) > 0
    assert stats["fec_recovered"] > 0 and stats["retrans_segs"] > 0
    assert stats["crypt_errors"] == stats["smux_errors"] == 0


def test_kcptun_client_over_a_lossy_link_to_our_server(tmp_path, echo):
    binary = require_binary("kcptun-client")
    server_port, local_port = free_port(), free_port()
    ours = start_sidecar(f"""
[[kcp-server]]
listen = "127.0.0.1:{server_port}"
target = "127.0.0.1:{echo.port}"
key = "{KEY}"
""", tmp_path, "kcp-server")
    wait_ready(ours)
    impairer = spawn_impairer(("127.0.0.1", 0), ("127.0.0.1", server_port), both=BAD_LINK, seed=2)
    client = Process([binary, "-l", f"127.0.0.1:{local_port}", "-r", f"127.0.0.1:{impairer.listen[1]}",
                      "--key", KEY], tmp_path / "kcptun-client.log")
    try:
        wait_for_port(local_port)
        transfers(local_port)
    finally:
        log = ours.stop()
        impairer.stop()
        client.stop()
    stats = counters(log, "kcp-server[0]")
    assert stats["fec_recovered"] > 0 and stats["retrans_segs"] > 0
    assert stats["crypt_errors"] == stats["smux_errors"] == 0
