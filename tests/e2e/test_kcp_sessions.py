"""kcp-client session management: `conn` sessions round-robin, `autoexpire` rotation, `scavengettl`."""

import signal
import socket
import time

from tests.helpers import EchoServer, counters, free_port, recv_exact, start_sidecar
from tests.kcp_helpers import wait_ready

KEY = "sessions-kcp"


def start_pair(tmp_path, client_options: str):
    echo = EchoServer()
    server_port, client_port = free_port(), free_port()
    server = start_sidecar(f"""
[[kcp-server]]
listen = "127.0.0.1:{server_port}"
target = "127.0.0.1:{echo.port}"
key = "{KEY}"
""", tmp_path, "server")
    wait_ready(server)
    client = start_sidecar(f"""
[[kcp-client]]
localaddr = "127.0.0.1:{client_port}"
remoteaddr = "127.0.0.1:{server_port}"
key = "{KEY}"
{client_options}
""", tmp_path, "client", wait_ports=(client_port,))
    return echo, server, client, client_port


def ping(sock: socket.socket, data: bytes = b"ping") -> bool:
    sock.sendall(data)
    return recv_exact(sock, len(data)) == data


def test_connections_spread_over_conn_sessions(tmp_path):
    echo, server, client, port = start_pair(tmp_path, "conn = 3")
    try:
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(7)]
        assert all(ping(sock) for sock in socks)
        for sock in socks:
            sock.close()
    finally:
        client_log = client.stop()
        server_log = server.stop()
        echo.close()
    assert counters(client_log, "kcp-client[0]")["sessions"] == 3
    assert counters(server_log, "kcp-server[0]")["sessions"] == 3


def test_autoexpire_rotates_sessions_and_scavengettl_ends_old_streams(tmp_path):
    echo, server, client, port = start_pair(tmp_path, "autoexpire = 1\nscavengettl = 2")
    try:
        old = socket.create_connection(("127.0.0.1", port), timeout=10)
        assert ping(old)
        time.sleep(1.2)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as new:  # lands on a fresh session
            assert ping(new)
        assert ping(old)  # the expired session still carries its stream
        time.sleep(2.5)
        old.settimeout(5)
        assert old.recv(10) == b""  # scavenged scavengettl seconds after it expired
        old.close()
    finally:
        client_log = client.stop()
        server.stop()
        echo.close()
    stats = counters(client_log, "kcp-client[0]")
    assert stats["sessions"] == 2 and stats["active"] == 0


def test_sighup_replaces_a_changed_kcp_pair(tmp_path):
    """A changed kcp-server gives up its UDP port at once, so its replacement can bind it."""
    echo = EchoServer()
    server_port, client_port = free_port(), free_port()

    def pair(key: str) -> str:
        return f"""
[[kcp-server]]
listen = "127.0.0.1:{server_port}"
target = "127.0.0.1:{echo.port}"
key = "{key}"

[[kcp-client]]
localaddr = "127.0.0.1:{client_port}"
remoteaddr = "127.0.0.1:{server_port}"
key = "{key}"
"""

    proc = start_sidecar(pair("one"), tmp_path, wait_ports=(client_port,))
    try:
        with socket.create_connection(("127.0.0.1", client_port), timeout=10) as sock:
            assert ping(sock)
        (tmp_path / "sidecar.toml").write_text(pair("two"))
        proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded" not in proc.output():
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", client_port), timeout=10) as sock:
            assert ping(sock, b"after the reload")
    finally:
        log = proc.stop()
        echo.close()
    assert "Traceback" not in log and "could not start" not in log
