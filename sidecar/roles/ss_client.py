"""The client half of a Shadowsocks hop, shared by ss-local and ss-tunnel."""

import errno
import socket

from gevent import socket as gsocket

from sidecar.config import SsLocalConfig, SsRedirConfig, SsTunnelConfig
from sidecar.errors import ProtocolError
from sidecar.net.resolver import ResolvedAddress
from sidecar.net.sockets import connect_tcp, describe_os_error
from sidecar.proto.socks5 import Reply
from sidecar.proto.socks_addr import parse_addr
from sidecar.proto.ss_aead import TcpDecryptor, TcpEncryptor, decrypt_udp, encrypt_udp
from sidecar.roles.base import Role

FIRST_DATA_WAIT_S = 0.05  # how long to wait for early client data to send with the address header


def reply_for(exc: OSError) -> Reply:
    """The SOCKS5 reply code for a failed connect to the Shadowsocks server."""
    if exc.errno == errno.ECONNREFUSED:
        return Reply.CONNECTION_REFUSED
    if exc.errno == errno.ENETUNREACH:
        return Reply.NETWORK_UNREACHABLE
    return Reply.HOST_UNREACHABLE


class SsClientRole(Role):
    config: SsLocalConfig | SsTunnelConfig | SsRedirConfig

    def __init__(self, config: SsLocalConfig | SsTunnelConfig | SsRedirConfig) -> None:
        super().__init__(config)
        self._server_udp = ResolvedAddress(config.server.host, config.server.port, self.log)

    def start(self) -> None:
        if self.config.udp:
            self._server_udp.start()
        super().start()

    def stop_accepting(self) -> None:
        self._server_udp.stop()
        super().stop_accepting()

    def connect_server(self) -> gsocket.socket:
        """A TCP connection to the configured ss-server; raises OSError (counted and logged here)."""
        cfg = self.config
        try:
            return connect_tcp(cfg.server.host, cfg.server.port, min(cfg.timeout_s, 10.0), cfg.no_delay)
        except OSError as exc:
            self.counters["connect_failures"] += 1
            self.log.info("cannot reach ss-server %s: %s", cfg.server, describe_os_error(exc))
            raise

    def relay_through(self, conn: gsocket.socket, server: gsocket.socket, header: bytes, early: bytes) -> None:
        """Send the target `header` (with early or first client data) and relay until both sides end."""
        cfg = self.config
        encryptor, decryptor = TcpEncryptor(cfg.cipher), TcpDecryptor(cfg.cipher)
        if not early:
            early = _first_data(conn)
        try:
            server.sendall(encryptor.encrypt(header + early))
        except OSError as exc:
            self.log.debug("ss-server %s closed at once: %s", cfg.server, describe_os_error(exc))
            server.close()
            return
        self.counters["bytes_up"] += len(early)
        self.relay_counted(conn, server, encryptor.encrypt, decryptor.feed,
                           f"bad data from ss-server {cfg.server} (wrong password or method?)")

    def outbound_udp_socket(self, key: tuple) -> socket.socket:
        if self._server_udp.address is None:
            raise ProtocolError(f"ss-server {self.config.server.host} not resolved yet")
        family, address = self._server_udp.address
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(address)
        return sock

    def send_datagram(self, client: tuple, plaintext: bytes) -> None:
        """Encrypt `ATYP ADDR PORT DATA` and send it to the server on the client's association."""
        sock = self.nat.socket_for(client)
        if sock is not None:
            sock.send(encrypt_udp(self.config.cipher, plaintext))
            self.counters["udp_out"] += 1

    def open_reply(self, data: bytes) -> tuple[bytes, tuple[str, int], int]:
        """(plaintext `ATYP ADDR PORT DATA`, the remote it came from, offset of DATA) of a server reply;
        raises ProtocolError."""
        _, plaintext = decrypt_udp(self.config.cipher, data)
        parsed = parse_addr(plaintext)
        if parsed is None:
            raise ProtocolError("reply address truncated")
        return plaintext, (parsed[0], parsed[1]), parsed[2]


def _first_data(conn: gsocket.socket) -> bytes:
    """Client data already on its way, so the address header does not travel alone; b"" if none comes soon."""
    saved = conn.gettimeout()
    conn.settimeout(FIRST_DATA_WAIT_S)
    try:
        return conn.recv(16384)
    except TimeoutError:
        return b""
    finally:
        conn.settimeout(saved)
