"""SOCKS5 front and relay behaviour end to end: reply codes, auth, UDP rules, names, IPv6, limits, timeouts."""

import socket
import time

import pytest

from sidecar.proto.socks_addr import encode_addr
from tests.helpers import (
    EchoServer,
    UdpEchoServer,
    counters,
    echo_transfer,
    free_port,
    recv_exact,
    require,
    socks5_connect,
    socks5_udp_associate,
    start_sidecar,
    udp_round_trips,
)


@pytest.fixture(scope="module")
def echo():
    tcp, udp = EchoServer(), UdpEchoServer()
    yield tcp, udp
    tcp.close()
    udp.close()


@pytest.fixture
def pair(tmp_path):
    """Our ss-server and three ss-locals in one process: plain, with user/password, and pointing nowhere."""
    server, plain, auth, dead = free_port(), free_port(), free_port(), free_port()
    common = 'server = "127.0.0.1"\npassword = "pw"\nmethod = "aes-128-gcm"\nmode = "tcp_and_udp"\n'
    proc = start_sidecar(f"""
[[ss-server]]
block_private = false  # the test targets live on loopback or in 10.x
server_port = {server}
server = "127.0.0.1"
password = "pw"
method = "aes-128-gcm"
mode = "tcp_and_udp"
timeout = 2

[[ss-local]]
name = "plain"
local_port = {plain}
server_port = {server}
{common}
[[ss-local]]
name = "auth"
local_port = {auth}
server_port = {server}
socks_users = {{ alice = "wonderland" }}
{common}
[[ss-local]]
name = "dead"
local_port = {dead}
server_port = {free_port()}
{common}""", tmp_path, wait_ports=(plain, auth, dead))
    yield {"plain": plain, "auth": auth, "dead": dead, "proc": proc}
    proc.stop()


def request(port: int, greeting: bytes, body: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(greeting)
        method = recv_exact(sock, 2)
        if method[1] == 0xFF:
            return method
        sock.sendall(body)
        return sock.recv(64)


def test_reply_codes(pair):
    greeting = b"\x05\x01\x00"
    connect = b"\x05\x01\x00" + encode_addr("127.0.0.1", 9)
    assert request(pair["dead"], greeting, connect)[1] == 5  # ss-server refuses: connection refused
    assert request(pair["plain"], greeting, b"\x05\x02\x00" + encode_addr("127.0.0.1", 9))[1] == 7  # BIND
    assert request(pair["plain"], greeting, b"\x05\x01\x00\x05\x00\x00")[1] == 8  # unknown ATYP
    assert request(pair["auth"], greeting, connect) == b"\x05\xff"  # no acceptable method


def test_username_password(pair, echo):
    tcp, _ = echo
    with socket.create_connection(("127.0.0.1", pair["auth"]), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x02")
        assert recv_exact(sock, 2) == b"\x05\x02"
        sock.sendall(b"\x01\x05alice\x0awonderland")
        assert recv_exact(sock, 2) == b"\x01\x00"
        sock.sendall(b"\x05\x01\x00" + encode_addr("127.0.0.1", tcp.port))
        assert recv_exact(sock, 10)[1] == 0
        sock.sendall(b"ping")
        assert recv_exact(sock, 4) == b"ping"
    with socket.create_connection(("127.0.0.1", pair["auth"]), timeout=10) as sock:
        sock.sendall(b"\x05\x01\x02\x01\x05alice\x03bad")
        assert recv_exact(sock, 4) == b"\x05\x02\x01\x01"


def test_domain_names_and_ipv6_targets(pair, echo):
    tcp, udp = echo
    with socks5_connect(pair["plain"], "localhost", tcp.port) as sock:
        sent, received = echo_transfer(sock, 100_000)
        assert sent == received
    control, relay = socks5_udp_associate(pair["plain"])
    with control, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(3)
        client.sendto(b"\x00\x00\x00" + encode_addr("localhost", udp.port) + b"by name", relay)
        assert client.recv(100).endswith(b"by name")
    require(socket.has_ipv6 and _ipv6_loopback(), "no IPv6 loopback (::1) here")
    six = socket.create_server(("::1", 0), family=socket.AF_INET6)
    with six, socks5_connect(pair["plain"], "::1", six.getsockname()[1]) as sock:
        peer, _ = six.accept()
        with peer:
            peer.sendall(b"over v6")
            assert recv_exact(sock, 7) == b"over v6"


def _ipv6_loopback() -> bool:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        return False
    return True


def test_fragmented_udp_is_dropped_and_counted(pair, echo):
    _, udp = echo
    control, relay = socks5_udp_associate(pair["plain"])
    with control, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(1)
        client.sendto(b"\x00\x00\x01" + encode_addr("127.0.0.1", udp.port) + b"fragment", relay)
        with pytest.raises(TimeoutError):
            client.recv(100)
        assert udp_round_trips(relay, udp.port, [b"whole"]) == [b"whole"]
    log = pair["proc"].stop()
    assert counters(log, "plain")["udp_dropped"] == 1


def test_udp_association_lives_with_its_control_connection(pair, echo):
    _, udp = echo
    header = b"\x00\x00\x00" + encode_addr("127.0.0.1", udp.port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(1)
        client.sendto(header + b"no association", ("127.0.0.1", pair["plain"]))
        with pytest.raises(TimeoutError):
            client.recv(100)
        control, relay = socks5_udp_associate(pair["plain"])
        client.sendto(header + b"held", relay)
        assert client.recv(100).endswith(b"held")
        control.close()
        time.sleep(0.3)
        client.sendto(header + b"released", relay)
        with pytest.raises(TimeoutError):
            client.recv(100)
    log = pair["proc"].stop()
    assert counters(log, "plain")["udp_dropped"] == 2


def test_idle_timeout_closes_and_counts(pair, echo):
    tcp, _ = echo
    with socks5_connect(pair["plain"], "127.0.0.1", tcp.port) as sock:
        sock.sendall(b"hi")
        assert recv_exact(sock, 2) == b"hi"
        started = time.monotonic()
        sock.settimeout(10)
        assert sock.recv(10) == b""  # the server's 2 s idle timeout closes the chain
        assert 1.5 < time.monotonic() - started < 8
    log = pair["proc"].stop()
    assert counters(log, "ss-server[0]")["timeouts"] >= 1


def local_pair(server: int, local: int, local_extra: str = "") -> str:
    """An ss-server and an ss-local pointed at it, on loopback."""
    return f"""
[[ss-server]]
block_private = false  # the test targets live on loopback or in 10.x
server = "127.0.0.1"
server_port = {server}
password = "pw"

[[ss-local]]
local_port = {local}
server = "127.0.0.1"
server_port = {server}
password = "pw"
{local_extra}
"""


def test_connection_limit(tmp_path, echo):
    tcp, _ = echo
    server, local = free_port(), free_port()
    proc = start_sidecar(local_pair(server, local, "max_connections = 2"), tmp_path, wait_ports=(server,))
    time.sleep(0.5)
    held = [socks5_connect(local, "127.0.0.1", tcp.port) for _ in range(2)]
    try:
        with socket.create_connection(("127.0.0.1", local), timeout=5) as third:
            third.sendall(b"\x05\x01\x00")
            try:
                assert third.recv(10) == b""  # closed at once
            except ConnectionResetError:
                pass  # or reset, when the close raced our greeting
    finally:
        for sock in held:
            sock.close()
        log = proc.stop()
    assert counters(log, "ss-local[0]")["rejected_limit"] == 1


def test_sigterm_drains_then_exits_cleanly(tmp_path, echo):
    tcp, _ = echo
    server, local = free_port(), free_port()
    proc = start_sidecar(local_pair(server, local), tmp_path, wait_ports=(server, local))
    held = socks5_connect(local, "127.0.0.1", tcp.port)
    started = time.monotonic()
    log = proc.stop()
    held.close()
    assert proc.proc.returncode == 0
    assert time.monotonic() - started < 9
    assert "closed 1 connection(s) still open after the drain" in log and "stopped" in log
    assert "Traceback" not in log


def test_acl_bypass_goes_direct_for_tcp_and_udp(tmp_path, echo):
    """With the ss-server unreachable, only what the ACL sends direct can work."""
    tcp, udp = echo
    local = free_port()
    acl = tmp_path / "local.acl"
    acl.write_text("[proxy_all]\n[bypass_list]\n127.0.0.1\n^localhost$\n")
    proc = start_sidecar(f"""
[[ss-local]]
local_port = {local}
server = "127.0.0.1"
server_port = {free_port()}
password = "pw"
mode = "tcp_and_udp"
acl = "{acl}"
""", tmp_path, wait_ports=(local,))
    try:
        with socks5_connect(local, "127.0.0.1", tcp.port) as sock:
            sent, received = echo_transfer(sock, 200_000)
            assert sent == received
        with pytest.raises(ConnectionError):
            socks5_connect(local, "127.0.0.2", tcp.port)  # proxied: the dead server refuses
        control, relay = socks5_udp_associate(local)
        with control:
            assert udp_round_trips(relay, udp.port, [b"direct"]) == [b"direct"]
    finally:
        log = proc.stop()
    assert counters(log, "ss-local[0]")["direct"] == 2
