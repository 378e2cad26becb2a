"""ss-server: the Shadowsocks relay, TCP and UDP, from clients to their targets, hardened against probes."""

import random
import socket
import time

import gevent
from gevent import socket as gsocket

from sidecar.config import SsServerConfig
from sidecar.errors import AuthError, ProtocolError
from sidecar.net.outbound import BlockedDestination, OutboundPolicy
from sidecar.net.sockets import connect_address, describe_os_error
from sidecar.proto.acl import private_block_list
from sidecar.proto.replay import ReplayFilter
from sidecar.proto.socks_addr import ATYP_IPV4, ATYP_IPV6, encode_ip, parse_addr
from sidecar.proto.ss_aead import TcpDecryptor, TcpEncryptor, decrypt_udp, encrypt_udp
from sidecar.roles.base import Role, load_acl

CONNECT_TIMEOUT_S = 10.0
RECV_SIZE = 65536
_FAMILY_OF_ATYP = {ATYP_IPV4: socket.AF_INET, ATYP_IPV6: socket.AF_INET6}


class SsServer(Role):
    config: SsServerConfig

    def __init__(self, config: SsServerConfig) -> None:
        super().__init__(config)
        self.replay = ReplayFilter(config.replay_capacity, config.replay_window_s)
        block = [private_block_list()] if config.block_private else []
        if config.acl:
            block.append(load_acl(config.acl))
        self.outbound = OutboundPolicy(block)

    def describe(self) -> str:
        cfg = self.config
        return (f"{cfg.name}: Shadowsocks server on {self.protocols()} {cfg.listen} ({cfg.cipher.method.name}, "
                f"replay filter {self.replay.size_bytes // 1024} KiB)")

    def _accept_salt(self, salt: bytes) -> bool:
        if self.replay.check_and_add(salt, time.monotonic()):
            return True
        self.counters["replays"] += 1
        return False

    def handle_tcp(self, conn: gsocket.socket, peer: tuple) -> None:
        cfg = self.config
        decryptor = TcpDecryptor(cfg.cipher, self._accept_salt)
        conn.settimeout(cfg.timeout_s)
        try:
            head = self._read_header(conn, decryptor)
        except AuthError as exc:
            self._deflect_probe(conn, peer, exc)
            return
        except ProtocolError as exc:
            self.counters["protocol_errors"] += 1
            self.log.info("bad request from %s: %s", peer[0], exc)
            return
        except OSError:
            return
        if head is None:
            return
        host, port, early = head
        try:
            target = connect_address(*self.outbound.resolve(host, port), CONNECT_TIMEOUT_S, cfg.no_delay)
        except BlockedDestination as exc:
            self.counters["blocked"] += 1
            self.log.info("%s -> %s:%d refused: %s", peer[0], host, port, exc)
            return
        except OSError as exc:
            self.counters["connect_failures"] += 1
            self.log.info("%s -> %s:%d failed: %s", peer[0], host, port, describe_os_error(exc))
            return
        self.log.debug("%s -> %s:%d", peer[0], host, port)
        self._relay(conn, target, decryptor, early)

    def _read_header(self, conn: gsocket.socket, decryptor: TcpDecryptor) -> tuple[str, int, bytes] | None:
        """(host, port, data after the address) of a new client stream; None if it closed first."""
        plaintext = b""
        while True:
            data = conn.recv(RECV_SIZE)
            if not data:
                return None
            self.counters["bytes_up"] += len(data)
            plaintext += decryptor.feed(data)
            parsed = parse_addr(plaintext)
            if parsed is not None:
                host, port, offset = parsed
                return host, port, plaintext[offset:]

    def _relay(self, conn: gsocket.socket, target: gsocket.socket, decryptor: TcpDecryptor, early: bytes) -> None:
        try:
            if early:
                target.sendall(early)
        except OSError as exc:
            self.log.debug("target closed at once: %s", describe_os_error(exc))
            target.close()
            return
        self.relay_counted(conn, target, decryptor.feed, TcpEncryptor(self.config.cipher).encrypt,
                           "bad data mid-stream from a client")

    def _deflect_probe(self, conn: gsocket.socket, peer: tuple, exc: AuthError) -> None:
        """Neither answer nor close at once: read and discard for a random time, so a probe learns nothing."""
        self.counters["auth_failures"] += 1
        self.log.info("authentication failed from %s (%s): holding the connection silently", peer[0], exc)
        deadline = time.monotonic() + random.uniform(*self.config.probe_delay_s)
        try:
            while (left := deadline - time.monotonic()) > 0:
                conn.settimeout(left)
                if not conn.recv(RECV_SIZE):
                    return
        except OSError:
            return

    def outbound_udp_socket(self, key: tuple) -> socket.socket:
        sock = socket.socket(key[1], socket.SOCK_DGRAM)
        sock.setblocking(False)
        return sock

    def handle_datagram(self, data: bytes, source: tuple) -> None:
        cfg = self.config
        try:
            salt, plaintext = decrypt_udp(cfg.cipher, data)
        except AuthError:
            self.counters["auth_failures"] += 1
            raise
        if not self._accept_salt(salt):
            raise AuthError("replayed UDP salt")
        parsed = parse_addr(plaintext)
        if parsed is None:
            raise ProtocolError("UDP request address truncated")
        host, port, offset = parsed
        family = _FAMILY_OF_ATYP.get(plaintext[0])
        if family is None:  # a name: resolve off the hub, then send
            gevent.spawn(self._resolve_and_send, source, host, port, plaintext[offset:])
        else:
            self._send_udp(source, (family, (host, port)), memoryview(plaintext)[offset:])

    def _send_udp(self, client: tuple, destination: tuple[int, tuple], payload: bytes | memoryview) -> None:
        family, address = destination
        try:
            self.outbound.check_ip(address[0])
        except BlockedDestination:
            self.counters["blocked"] += 1
            raise
        sock = self.nat.socket_for((client, family))
        if sock is not None:
            sock.sendto(payload, address)
            self.counters["udp_out"] += 1

    def _resolve_and_send(self, client: tuple, host: str, port: int, payload: bytes) -> None:
        try:
            self._send_udp(client, self.outbound.resolve(host, port, socket.SOCK_DGRAM), payload)
        except (OSError, ProtocolError) as exc:
            self.counters["udp_dropped"] += 1
            self.log.debug("UDP to %s:%d dropped: %s", host, port, exc)

    def handle_reply(self, key: tuple, data: bytes, source: tuple) -> None:
        client, family = key
        packet = encrypt_udp(self.config.cipher, encode_ip(family, source[0], source[1]) + data)
        self.udp_listener.sendto(packet, client)

