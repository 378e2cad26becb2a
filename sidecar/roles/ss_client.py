"""The client half of a Shadowsocks hop, shared by ss-local, ss-tunnel and ss-redir.

In a chain, TCP rides a stream of the kcp-client named by `via` (the encryptor and decryptor become
the stream's transforms: no socket between the stages) and UDP rides flows of the u2r-client named by
`udp_via`, through the datagram FEC stage when `udp_fec` is set.
"""

import errno
import socket

from gevent import socket as gsocket

from sidecar.config import SsLocalConfig, SsRedirConfig, SsTunnelConfig
from sidecar.errors import ProtocolError
from sidecar.net.fec_flow import FecFlow, checked
from sidecar.net.flows import Flow, FlowOpener, Receiver
from sidecar.net.kcp_sockets import take_socket
from sidecar.net.resolver import ResolvedAddress, literal_address
from sidecar.net.sockets import connect_tcp, describe_os_error
from sidecar.net.udp_nat import FlowMaker, UdpNat
from sidecar.proto.acl import DIRECT
from sidecar.proto.socks5 import Reply
from sidecar.proto.socks_addr import encode_addr, parse_addr
from sidecar.proto.ss_aead import TcpDecryptor, TcpEncryptor, decrypt_udp, encrypt_udp
from sidecar.roles.base import Role, load_acl

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
        server = config.server
        self._server_udp = ResolvedAddress(server.host, server.port, self.log) if server is not None else None
        self.acl = load_acl(config.acl) if config.acl else None
        self._direct: UdpNat | None = None  # UDP the ACL sends around the proxy
        self.carrier = None  # the kcp-client TCP rides (`via`): has open_stream()
        self.datagram_link: FlowOpener | None = None  # the u2r-client UDP rides (`udp_via`)

    def start(self) -> None:
        if self.config.udp and self.config.udp_via is None:
            self._server_udp.start()  # type: ignore[union-attr]
        super().start()

    def stop_accepting(self) -> None:
        if self._server_udp is not None:
            self._server_udp.stop()
        if self._direct is not None:
            self._direct.close_all()
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

    def goes_direct(self, host: str) -> bool:
        """True when the ACL routes `host` around the proxy."""
        return self.acl is not None and self.acl.route(host) == DIRECT

    def connect_upstream(self, host: str, port: int) -> tuple[gsocket.socket, bool]:
        """(connection, direct): to the target itself when the ACL says direct, else to the ss-server."""
        if not self.goes_direct(host):
            return self.connect_server(), False
        try:
            return connect_tcp(host, port, min(self.config.timeout_s, 10.0), self.config.no_delay), True
        except OSError as exc:
            self.counters["connect_failures"] += 1
            self.log.info("direct connection to %s:%d failed: %s", host, port, describe_os_error(exc))
            raise

    def relay_upstream(self, conn: gsocket.socket, upstream: gsocket.socket, direct: bool, host: str, port: int,
                       early: bytes) -> None:
        if not direct:
            self.relay_through(conn, upstream, encode_addr(host, port), early)
            return
        self.counters["direct"] += 1
        try:
            if early:
                upstream.sendall(early)
        except OSError:
            upstream.close()
            return
        self.relay_counted(conn, upstream, None, None, "direct connection")

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

    def server_text(self) -> str:
        """Where TCP and UDP go, for describe()."""
        cfg = self.config
        parts = [f"ss-server {cfg.server}"] if cfg.server is not None else []
        parts += [f"{proto} over {name}" for proto, name in (("tcp", cfg.via), ("udp", cfg.udp_via)) if name]
        if cfg.udp_fec is not None:
            fec = cfg.udp_fec
            parts.append(f"udp fec {fec.data}:{fec.parity}{' adaptive' if fec.adaptive else ''} "
                         f"wait {fec.wait_s * 1000:g} ms")
        return ", ".join(parts)

    def relay_over_stream(self, conn: gsocket.socket, header: bytes, early: bytes) -> None:
        """TCP through a stream of the kcp-client below: Shadowsocks-encrypted, with no socket in between."""
        bridge = self.carrier.open_stream()  # type: ignore[union-attr]
        if bridge is None:
            self.counters["connect_failures"] += 1
            return
        cfg, counters = self.config, self.counters
        encryptor, decryptor = TcpEncryptor(cfg.cipher), TcpDecryptor(cfg.cipher)
        if not early:
            early = _first_data(conn)

        def up(data: bytes) -> bytes:
            counters["bytes_up"] += len(data)
            return encryptor.encrypt(data)

        def down(data: bytes) -> bytes:
            plaintext = decryptor.feed(data)
            counters["bytes_down"] += len(plaintext)
            return plaintext

        bridge.outbound, bridge.inbound = up, down
        counters["bytes_up"] += len(early)
        try:
            bridge.write(encryptor.encrypt(header + early))
            bridge.attach(take_socket(conn))
            bridge.done.wait()
        finally:
            bridge.close()

    def nat_flows(self) -> FlowMaker | None:
        return self._open_udp_flow if self.config.udp_via is not None else None

    def _open_udp_flow(self, key: object, receive: Receiver) -> Flow:
        """A client's UDP association as a flow of the u2r-client below, through FEC when configured."""
        link = self.datagram_link
        assert link is not None, "connected by sidecar.roles.chain"
        params = self.config.udp_fec
        if params is None:
            return link.open_flow(receive)
        box: list[Flow] = []
        fec = FecFlow(params, lambda packet: box[0].send(packet), receive, self.counters)
        box.append(link.open_flow(checked(fec.receive, self.counters)))
        self.fec_flows.add(fec)
        return _FecOverFlow(fec, box[0], self.fec_flows)

    def outbound_udp_socket(self, key: tuple) -> socket.socket:
        assert self._server_udp is not None
        if self._server_udp.address is None:
            raise ProtocolError(f"ss-server {self.config.server.host} not resolved yet")
        family, address = self._server_udp.address
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(address)
        return sock

    def bind(self) -> None:
        super().bind()
        if self.acl is not None and self.config.udp:
            cfg = self.config
            self._direct = UdpNat(self._direct_socket, self._direct_reply, cfg.timeout_s, cfg.max_connections,
                                  self.counters, self.log)

    @staticmethod
    def _direct_socket(key: tuple) -> socket.socket:
        sock = socket.socket(key[1], socket.SOCK_DGRAM)
        sock.setblocking(False)
        return sock

    def _direct_reply(self, key: tuple, data: bytes, source: tuple) -> None:
        self.deliver(key[0], (source[0], source[1]), data)

    def deliver(self, client: tuple, remote: tuple[str, int], payload: bytes | memoryview) -> None:
        """Hand a reply from `remote` to the client (each role in its own form)."""
        raise NotImplementedError

    def send_datagram(self, client: tuple, plaintext: bytes) -> None:
        """Send `ATYP ADDR PORT DATA` on the client's association: encrypted to the server, or as
        DATA straight to ADDR:PORT when the ACL routes it around the proxy."""
        if self._direct is not None and self._send_direct(client, plaintext):
            return
        sock = self.nat.socket_for(client)
        if sock is not None:
            sock.send(encrypt_udp(self.config.cipher, plaintext))
            self.counters["udp_out"] += 1

    def _send_direct(self, client: tuple, plaintext: bytes) -> bool:
        parsed = parse_addr(plaintext)
        if parsed is None or not self.goes_direct(parsed[0]):
            return False
        host, port, offset = parsed
        destination = literal_address(host, port)
        if destination is None:
            raise ProtocolError(f"direct UDP to a name ({host}) is not supported; list its addresses in the ACL")
        assert self._direct is not None
        sock = self._direct.socket_for((client, destination[0]))
        if sock is not None:
            sock.sendto(memoryview(plaintext)[offset:], destination[1])
            self.counters["direct"] += 1
        return True

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


class _FecOverFlow:
    """A flow seen through the FEC stage: what is sent is framed, parity included."""

    __slots__ = ("fec", "flow", "open_flows")

    def __init__(self, fec: FecFlow, flow: Flow, open_flows: set[FecFlow]) -> None:
        self.fec, self.flow, self.open_flows = fec, flow, open_flows

    def send(self, data: bytes | memoryview) -> None:
        self.fec.send(data)

    def close(self) -> None:
        self.open_flows.discard(self.fec)
        self.fec.close()
        self.flow.close()
