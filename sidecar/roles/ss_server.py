"""ss-server: the Shadowsocks relay, TCP and UDP, from clients to their targets, hardened against probes.

In a chain, TCP also arrives on the streams of the kcp-server named by `via` (`serve_stream`) and UDP
on the flows of the u2r-server named by `udp_via` (`claim`), through the datagram FEC stage when
`udp_fec` is set; the same decryptors, replay filter and outbound policy apply.
"""

import random
import socket
import time
from collections.abc import Callable

import gevent
from gevent import socket as gsocket

from sidecar.config import SsServerConfig
from sidecar.errors import AuthError, ProtocolError
from sidecar.net.fec_flow import FecFlow, checked
from sidecar.net.kcp_bridge import StreamBridge
from sidecar.net.kcp_sockets import take_socket
from sidecar.net.outbound import BlockedDestination, OutboundPolicy
from sidecar.net.sockets import connect_address, describe_os_error
from sidecar.net.udp_service import dispatch
from sidecar.proto import dgram_fec
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
        self._flow_replies: dict[tuple, Callable[[bytes], None]] = {}  # in-process UDP clients -> their flow
        self._flow_keys = 0

    def describe(self) -> str:
        cfg = self.config
        fronts = [f"{self.protocols()} {cfg.listen}"] if cfg.listen is not None else []
        fronts += [f"{proto} from {name}" for proto, name in (("tcp", cfg.via), ("udp", cfg.udp_via)) if name]
        return (f"{cfg.name}: Shadowsocks server on {', '.join(fronts)} ({cfg.cipher.method.name}, "
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
        target = self._dial(peer[0], host, port)
        if target is None:
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

    # ---- TCP on a stream of the kcp-server below

    def serve_stream(self, bridge: StreamBridge) -> None:
        """One client stream: read the address, dial it, then bridge the stream to the target socket."""
        counters = self.counters
        counters["connections"] += 1
        counters["active"] += 1
        try:
            self._serve_stream(bridge)
        finally:
            counters["active"] -= 1

    def _serve_stream(self, bridge: StreamBridge) -> None:
        cfg, counters = self.config, self.counters
        decryptor = TcpDecryptor(cfg.cipher, self._accept_salt)

        def down(data: bytes) -> bytes:
            counters["bytes_up"] += len(data)
            try:
                return decryptor.feed(data)
            except AuthError:
                counters["auth_failures"] += 1
                raise

        try:
            plaintext = down(bridge.take_received())  # what came before this greenlet ran, then the rest
        except AuthError as exc:
            self.log.info("authentication failed on a stream of %s: %s", cfg.via, exc)
            return
        bridge.inbound = down
        head = self._stream_header(bridge, plaintext)
        if head is None:
            return
        host, port, early = head
        target = self._dial(f"stream of {cfg.via}", host, port)
        if target is None:
            return
        encryptor = TcpEncryptor(cfg.cipher)

        def up(data: bytes) -> bytes:
            counters["bytes_down"] += len(data)
            return encryptor.encrypt(data)

        try:
            if early:
                target.sendall(early)
        except OSError:
            target.close()
            return
        bridge.outbound = up
        bridge.attach(take_socket(target))
        bridge.done.wait()

    def _stream_header(self, bridge: StreamBridge, plaintext: bytes) -> tuple[str, int, bytes] | None:
        """(host, port, data after the address) from the stream; None if it ended or stayed silent."""
        while True:
            try:
                parsed = parse_addr(plaintext)
            except ProtocolError as exc:
                self.counters["protocol_errors"] += 1
                self.log.info("bad request on a stream of %s: %s", self.config.via, exc)
                return None
            if parsed is not None:
                return parsed[0], parsed[1], plaintext[parsed[2]:]
            if bridge.done.is_set() or bridge.finishing or not bridge.arrived.wait(self.config.timeout_s):
                return None
            plaintext += bridge.take_received()

    def _dial(self, who: str, host: str, port: int) -> gsocket.socket | None:
        try:
            return connect_address(*self.outbound.resolve(host, port), CONNECT_TIMEOUT_S, self.config.no_delay)
        except BlockedDestination as exc:
            self.counters["blocked"] += 1
            self.log.info("%s -> %s:%d refused: %s", who, host, port, exc)
        except OSError as exc:
            self.counters["connect_failures"] += 1
            self.log.info("%s -> %s:%d failed: %s", who, host, port, describe_os_error(exc))
        return None

    # ---- UDP on flows of the u2r-server below

    def claim(self, first: bytes, reply: Callable[[bytes], None]) -> "_UdpFlow | None":
        """A flow is ours when its first datagram decrypts with our key (the replay filter is left alone)."""
        params = self.config.udp_fec
        try:
            packet = first if params is None else dgram_fec.data_payload(first)
            if packet is None:
                return None
            decrypt_udp(self.config.cipher, bytes(packet))
        except ProtocolError:
            return None
        self._flow_keys += 1
        flow = _UdpFlow(self, ("in-process", self._flow_keys), params, reply)
        self._flow_replies[flow.key] = flow.send
        return flow

    def end_flow(self, key: tuple) -> None:
        self._flow_replies.pop(key, None)
        self.nat.drop_where(lambda nat_key: nat_key[0] == key)

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
        send = self._flow_replies.get(client)
        if send is not None:
            send(packet)
        else:
            self.udp_listener.sendto(packet, client)



class _UdpFlow:
    """A u2r flow the ss-server took (sidecar.net.flows.FlowHandler): one client's UDP, FEC first if set."""

    __slots__ = ("server", "key", "fec", "receive", "send")

    def __init__(self, server: SsServer, key: tuple, params: dgram_fec.FecParams | None,
                 reply: Callable[[bytes], None]) -> None:
        self.server, self.key = server, key
        self.fec: FecFlow | None = None
        self.receive: Callable[[bytes], None] = self.datagram  # a packet from the link
        self.send: Callable[[bytes], None] = reply  # a reply to the client
        if params is not None:
            self.fec = FecFlow(params, reply, self.datagram, server.counters)
            server.fec_flows.add(self.fec)
            self.receive, self.send = checked(self.fec.receive, server.counters), self.fec.send

    def datagram(self, data: bytes) -> None:
        server = self.server
        server.counters["udp_in"] += 1
        dispatch(server.handle_datagram, (data, self.key), server.counters, server.log)

    def close(self) -> None:
        if self.fec is not None:
            self.server.fec_flows.discard(self.fec)
            self.fec.close()
        self.server.end_flow(self.key)
