"""ss-tunnel: a local port forwarded, TCP and UDP, to one fixed target through an ss-server."""

from gevent import socket

from sidecar.config import SsTunnelConfig
from sidecar.proto.socks_addr import encode_addr
from sidecar.roles.ss_client import SsClientRole


class SsTunnel(SsClientRole):
    config: SsTunnelConfig

    def __init__(self, config: SsTunnelConfig) -> None:
        super().__init__(config)
        self._header = encode_addr(config.tunnel.host, config.tunnel.port)

    def describe(self) -> str:
        cfg = self.config
        return (f"{cfg.name}: forwarding {self.protocols()} {cfg.listen} -> {cfg.tunnel} via {self.server_text()} "
                f"({cfg.cipher.method.name})")

    def handle_tcp(self, conn: socket.socket, peer: tuple) -> None:
        if self.carrier is not None:
            self.relay_over_stream(conn, self._header, b"")
            return
        try:
            server = self.connect_server()
        except OSError:
            return
        self.relay_through(conn, server, self._header, b"")

    def handle_datagram(self, data: bytes, source: tuple) -> None:
        self.send_datagram(source, self._header + data)

    def handle_reply(self, key: tuple, data: bytes, source: tuple) -> None:
        plaintext, _, offset = self.open_reply(data)
        self.udp_listener.sendto(memoryview(plaintext)[offset:], key)

    def deliver(self, client: tuple, remote: tuple[str, int], payload: bytes | memoryview) -> None:
        self.udp_listener.sendto(payload, client)
