"""Network namespaces for the raw-socket tests: a veth pair between a "server" and a "client" namespace,
sockets opened inside a namespace from this process, packet captures and firewall listings there."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path

from bench.netns import in_netns, sh

ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33


class NetnsPair:
    """Two namespaces joined by a veth: server 10.201.0.1, client 10.201.0.2. Always `delete()` it."""

    SERVER_IP, CLIENT_IP = "10.201.0.1", "10.201.0.2"

    def __init__(self, tag: str) -> None:
        self.server, self.client = f"u2rs{tag}", f"u2rc{tag}"
        self.server_dev, self.client_dev = f"u2rs{tag}"[:15], f"u2rc{tag}"[:15]

    def create(self) -> None:
        for ns in (self.server, self.client):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        sh("ip", "link", "add", self.server_dev, "netns", self.server, "type", "veth", "peer", "name",
           self.client_dev, "netns", self.client)
        for ns, dev, ip in ((self.server, self.server_dev, self.SERVER_IP), (self.client, self.client_dev,
                                                                              self.CLIENT_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")

    def delete(self) -> None:
        for ns in (self.server, self.client):
            sh("ip", "netns", "del", ns, check=False)

    def rules(self, ns: str) -> str:
        """Everything of ours or udp2raw's in the namespace's firewall ('' when clean)."""
        tables = sh("ip", "netns", "exec", ns, "nft", "list", "tables", check=False)
        chains = sh("ip", "netns", "exec", ns, "iptables", "-S", check=False)
        found = [line for line in tables.splitlines() if "sidecar_u2r" in line]
        found += [line for line in chains.splitlines() if "udp2rawDwrW" in line]
        return "\n".join(found)


def udp_socket(ns: str, bind: tuple[str, int]) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(bind)
        return sock

    return in_netns(ns, make)


def capture(ns: str, dev: str) -> socket.socket:
    """An AF_PACKET socket seeing every frame on `dev`, both directions (our own tcpdump)."""
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        sock.bind((dev, ETH_P_ALL))
        sock.setblocking(False)
        return sock

    return in_netns(ns, make)


def captured_ipv4(sock: socket.socket) -> list[bytes]:
    """Drain a capture socket: the IPv4 packets in it (Ethernet headers stripped)."""
    packets = []
    while True:
        try:
            frame = sock.recv(65536)
        except BlockingIOError:
            return packets
        if frame[12:14] == b"\x08\x00":
            packets.append(frame[14:])


def start_u2r_pair(ns: NetnsPair, tmp_path: Path, key: str, local: tuple[str, int], raw_port: int = 4096,
                   wait: Callable[[object, str], None] | None = None) -> tuple[object, object]:
    """A u2r-server role (`sidecar run -c`, target 127.0.0.1:7000 in the server namespace) and a client
    from udp2raw's flags (`sidecar udp2raw -c -a`), hmac_sha1; (server, client) Processes, the server
    ready and the client started (not yet connected: `wait(client, "connected to")` for that)."""
    from tests.helpers import Process

    config = tmp_path / "server.toml"
    config.write_text(f"""
[control]
enabled = false

[[u2r-server]]
name = "srv"
listen = "{ns.SERVER_IP}:{raw_port}"
remote = "127.0.0.1:7000"
key = "{key}"
auth_mode = "hmac_sha1"
""")
    server = Process(["ip", "netns", "exec", ns.server, sys.executable, "-m", "sidecar", "run", "-c", str(config)],
                     tmp_path / "server.log")
    if wait is not None:
        wait(server, "sidecar ready")
    client = Process(["ip", "netns", "exec", ns.client, sys.executable, "-m", "sidecar", "udp2raw", "-c",
                      "-l", f"{local[0]}:{local[1]}", "-r", f"{ns.SERVER_IP}:{raw_port}", "-k", key,
                      "--auth-mode", "hmac_sha1", "-a"], tmp_path / "client.log")
    return server, client
