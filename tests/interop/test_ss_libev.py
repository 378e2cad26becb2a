"""Our Shadowsocks roles against shadowsocks-libev, both directions, for every required cipher."""

import os

import pytest

from tests.helpers import (
    EchoServer,
    Process,
    UdpEchoServer,
    counters,
    echo_transfer,
    free_port,
    require_binary,
    socks5_connect,
    socks5_udp_associate,
    start_sidecar,
    udp_round_trips,
    wait_for_port,
)

CIPHERS = ["aes-128-gcm", "aes-256-gcm", "chacha20-ietf-poly1305"]
TRANSFER = 20 * 1024 * 1024
PASSWORD = "interop-Pa55"
DATAGRAMS = [b"x", os.urandom(64), os.urandom(1200), os.urandom(1400)]


@pytest.fixture(scope="module")
def targets():
    tcp, udp = EchoServer(), UdpEchoServer()
    yield tcp, udp
    tcp.close()
    udp.close()


def libev(tool: str, tmp_path, *args: str) -> Process:
    binary = require_binary(tool)
    return Process([binary, "-k", PASSWORD, "-u", *args], tmp_path / f"{tool}.log")


def assert_tcp_and_udp(socks_port: int, targets) -> None:
    tcp, udp = targets
    with socks5_connect(socks_port, "127.0.0.1", tcp.port) as sock:
        sent, received = echo_transfer(sock, TRANSFER)
    assert received == sent
    control, relay = socks5_udp_associate(socks_port)
    with control:
        assert udp_round_trips(relay, udp.port, DATAGRAMS) == DATAGRAMS


@pytest.mark.parametrize("method", CIPHERS)
def test_our_ss_local_with_libev_ss_server(method, tmp_path, targets):
    server_port, socks_port = free_port(), free_port()
    server = libev("ss-server", tmp_path, "-s", "127.0.0.1", "-p", str(server_port), "-m", method)
    wait_for_port(server_port)
    ours = start_sidecar(f"""
[[ss-local]]
local_port = {socks_port}
server = "127.0.0.1"
server_port = {server_port}
password = "{PASSWORD}"
method = "{method}"
mode = "tcp_and_udp"
""", tmp_path, wait_ports=(socks_port,))
    try:
        assert_tcp_and_udp(socks_port, targets)
    finally:
        log = ours.stop()
        server.stop()
    assert counters(log, "ss-local[0]")["protocol_errors"] == 0


@pytest.mark.parametrize("method", CIPHERS)
def test_libev_ss_local_with_our_ss_server(method, tmp_path, targets):
    server_port, socks_port = free_port(), free_port()
    ours = start_sidecar(f"""
[[ss-server]]
block_private = false  # the test targets live on loopback or in 10.x
server = "127.0.0.1"
server_port = {server_port}
password = "{PASSWORD}"
method = "{method}"
mode = "tcp_and_udp"
""", tmp_path, wait_ports=(server_port,))
    client = libev("ss-local", tmp_path, "-s", "127.0.0.1", "-p", str(server_port), "-b", "127.0.0.1",
                   "-l", str(socks_port), "-m", method)
    try:
        wait_for_port(socks_port)
        assert_tcp_and_udp(socks_port, targets)
    finally:
        client.stop()
        log = ours.stop()
    stats = counters(log, "ss-server[0]")
    assert stats["auth_failures"] == stats["protocol_errors"] == stats["replays"] == 0
    assert stats["udp_out"] == len(DATAGRAMS)


@pytest.mark.parametrize("method", CIPHERS)
def test_our_ss_tunnel_with_libev_ss_server(method, tmp_path, targets):
    tcp, udp = targets
    server_port, tcp_tunnel, udp_tunnel = free_port(), free_port(), free_port()
    server = libev("ss-server", tmp_path, "-s", "127.0.0.1", "-p", str(server_port), "-m", method)
    wait_for_port(server_port)
    common = f'server = "127.0.0.1"\nserver_port = {server_port}\npassword = "{PASSWORD}"\nmethod = "{method}"'
    ours = start_sidecar(f"""
[[ss-tunnel]]
local_port = {tcp_tunnel}
tunnel_address = "127.0.0.1:{tcp.port}"
{common}

[[ss-tunnel]]
local_port = {udp_tunnel}
tunnel_address = "127.0.0.1:{udp.port}"
mode = "udp_only"
{common}
""", tmp_path, wait_ports=(tcp_tunnel,))
    try:
        import socket

        with socket.create_connection(("127.0.0.1", tcp_tunnel), timeout=10) as sock:
            sent, received = echo_transfer(sock, TRANSFER)
        assert received == sent
        assert udp_round_trips(("127.0.0.1", udp_tunnel), udp.port, DATAGRAMS, socks=False) == DATAGRAMS
    finally:
        ours.stop()
        server.stop()


def test_xchacha20_with_libev(tmp_path, targets):
    """libev 3.3.5 in Debian is built with a libsodium that has xchacha20: check both directions at once."""
    method = "xchacha20-ietf-poly1305"
    libev_server, our_server = free_port(), free_port()
    libev_local, our_local = free_port(), free_port()
    server = libev("ss-server", tmp_path, "-s", "127.0.0.1", "-p", str(libev_server), "-m", method)
    client = libev("ss-local", tmp_path, "-s", "127.0.0.1", "-p", str(our_server), "-b", "127.0.0.1",
                   "-l", str(libev_local), "-m", method)
    ours = start_sidecar(f"""
[[ss-server]]
block_private = false  # the test targets live on loopback or in 10.x
server = "127.0.0.1"
server_port = {our_server}
password = "{PASSWORD}"
method = "{method}"
mode = "tcp_and_udp"

[[ss-local]]
local_port = {our_local}
server = "127.0.0.1"
server_port = {libev_server}
password = "{PASSWORD}"
method = "{method}"
mode = "tcp_and_udp"
""", tmp_path, wait_ports=(our_server, our_local))
    try:
        wait_for_port(libev_local)
        wait_for_port(libev_server)
        for socks_port in (our_local, libev_local):
            assert_tcp_and_udp(socks_port, targets)
    finally:
        client.stop()
        server.stop()
        ours.stop()


def test_libev_flags_drive_our_roles(tmp_path, targets):
    """`sidecar ss-server` and `sidecar ss-local` take libev's own flags, and meet libev in the middle."""
    import sys

    libev_server, our_server, our_local, libev_local = free_port(), free_port(), free_port(), free_port()
    method = "chacha20-ietf-poly1305"
    ours = [
        Process([sys.executable, "-m", "sidecar", "ss-server", "-s", "127.0.0.1", "--allow-private",
                 "-p", str(our_server), "-k", PASSWORD, "-m", method, "-u"], tmp_path / "flags-server.log"),
        Process([sys.executable, "-m", "sidecar", "ss-local", "-s", "127.0.0.1", "-p", str(libev_server),
                 "-l", str(our_local), "-k", PASSWORD, "-m", method, "-u"], tmp_path / "flags-local.log"),
    ]
    theirs = [libev("ss-server", tmp_path, "-s", "127.0.0.1", "-p", str(libev_server), "-m", method),
              libev("ss-local", tmp_path, "-s", "127.0.0.1", "-p", str(our_server), "-b", "127.0.0.1",
                    "-l", str(libev_local), "-m", method)]
    try:
        for port in (our_server, our_local, libev_server, libev_local):
            wait_for_port(port)
        for socks_port in (our_local, libev_local):
            assert_tcp_and_udp(socks_port, targets)
    finally:
        for proc in theirs + ours:
            proc.stop()
