"""Both ends of a chain in one process on loopback: ss-tunnel's TCP and UDP through kcp and udp2raw (with the
datagram FEC stage), and a plain UDP relay. Root only (raw sockets and udp2raw's firewall rule)."""

import os
import socket

import pytest

from tests.e2e.test_chain import inet_sockets
from tests.e2e.test_u2r_raw import wait_line
from tests.helpers import EchoServer, UdpEchoServer, free_port, recv_exact, require, start_sidecar


@pytest.fixture
def chain(tmp_path):
    require(os.geteuid() == 0, "needs root for raw sockets")
    tcp_echo, udp_echo = EchoServer(), UdpEchoServer()
    tunnel, dns, relay, raw = free_port(), free_port(), free_port(), free_port()
    proc = start_sidecar(f"""
[[ss-tunnel]]
name = "game"
local_port = {tunnel}
password = "pw"
tunnel_address = "127.0.0.1:{tcp_echo.port}"
via = "kcp"

[[ss-tunnel]]
name = "dns"
local_port = {dns}
password = "pw"
mode = "udp_only"
tunnel_address = "127.0.0.1:{udp_echo.port}"
udp_via = "raw"
udp_fec = "1:1"

[[kcp-client]]
name = "kcp"
key = "k"
via = "raw"
nocomp = true

[[u2r-client]]
name = "raw"
remote = "127.0.0.1:{raw}"
key = "u"
auth_mode = "hmac_sha1"

[[u2r-server]]
name = "raws"
listen = "127.0.0.1:{raw}"
key = "u"
auth_mode = "hmac_sha1"

[[kcp-server]]
name = "kcps"
key = "k"
via = "raws"
nocomp = true

[[ss-server]]
name = "ss"
password = "pw"
mode = "tcp_and_udp"
via = "kcps"
udp_via = "raws"
udp_fec = "1:1"
block_private = false

[[relay]]
name = "hop"
listen = "127.0.0.1:{relay}"
remote = "127.0.0.1:{udp_echo.port}"
""", tmp_path, wait_ports=(tunnel,))
    wait_line(proc, "connected to 127.0.0.1")
    yield proc, {"tunnel": tunnel, "dns": dns, "relay": relay}, tcp_echo, udp_echo
    output = proc.stop()
    tcp_echo.close()
    udp_echo.close()
    assert "Traceback" not in output, output


def test_tunnel_tcp_and_udp_and_a_relay_in_one_process(chain):
    proc, ports, tcp_echo, udp_echo = chain
    with socket.create_connection(("127.0.0.1", ports["tunnel"]), timeout=10) as conn:
        payload = os.urandom(200_000)
        conn.sendall(payload)
        assert recv_exact(conn, len(payload)) == payload
        held = inet_sockets(proc.proc.pid)
    for front in ("dns", "relay"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            for size in (1, 500, 1400):
                data = os.urandom(size)
                sock.sendto(data, ("127.0.0.1", ports[front]))
                assert sock.recv(2048) == data, front
    fronts = {f"127.0.0.1:{port}" for port in ports.values()}
    exits = {f"127.0.0.1:{tcp_echo.port}", f"127.0.0.1:{udp_echo.port}"}
    # Raw sockets carry the udp2raw link; every other socket is a front, a way out, or the ss-server's NAT
    # (unconnected, on 0.0.0.0): none joins two stages.
    between = [s for s in held if s[0] != "raw" and s[1] not in fronts and s[2] not in exits
               and not s[1].startswith("0.0.0.0:") and not (s[0] == "tcp" and s[2] == "0.0.0.0:0")]
    assert not between, f"sockets between stages: {between}"
