"""ss-local: a SOCKS5 front (TCP CONNECT and UDP ASSOCIATE) whose traffic goes to an ss-server."""

from gevent import socket

from sidecar.config import SsLocalConfig
from sidecar.errors import ProtocolError
from sidecar.proto.socks5 import (
    CMD_UDP_ASSOCIATE,
    UDP_HEADER_PREFIX,
    Reply,
    Socks5Handshake,
    Socks5Refusal,
    build_reply,
    split_udp_datagram,
)
from sidecar.proto.socks_addr import encode_addr
from sidecar.roles.ss_client import SsClientRole, reply_for

HANDSHAKE_TIMEOUT_S = 30.0


class SsLocal(SsClientRole):
    config: SsLocalConfig

    def __init__(self, config: SsLocalConfig) -> None:
        super().__init__(config)
        self._associated: dict[str, int] = {}  # client address -> open UDP ASSOCIATE control connections

    def describe(self) -> str:
        cfg = self.config
        auth = "user/password" if cfg.socks_users else "no auth"
        return (f"{cfg.name}: SOCKS5 ({auth}) on {self.protocols()} {cfg.listen} -> {self.server_text()} "
                f"({cfg.cipher.method.name})")

    def handle_tcp(self, conn: socket.socket, peer: tuple) -> None:
        shake = self._handshake(conn, peer)
        if shake is None or shake.request is None:
            return
        request = shake.request
        if request.command == CMD_UDP_ASSOCIATE:
            self._hold_udp_association(conn)
            return
        if self.carrier is not None and not self.goes_direct(request.host):
            bound = conn.getsockname()
            conn.sendall(build_reply(Reply.SUCCEEDED, bound[0], bound[1]))
            self.relay_over_stream(conn, encode_addr(request.host, request.port), shake.leftover)
            return
        try:
            upstream, direct = self.connect_upstream(request.host, request.port)
        except OSError as exc:
            conn.sendall(build_reply(reply_for(exc)))
            return
        bound = conn.getsockname()
        conn.sendall(build_reply(Reply.SUCCEEDED, bound[0], bound[1]))
        self.relay_upstream(conn, upstream, direct, request.host, request.port, shake.leftover)

    def _handshake(self, conn: socket.socket, peer: tuple) -> Socks5Handshake | None:
        shake = Socks5Handshake(self.config.socks_users)
        conn.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            while shake.request is None:
                data = conn.recv(4096)
                if not data:
                    return None
                answer = shake.feed(data)
                if answer:
                    conn.sendall(answer)
        except Socks5Refusal as exc:
            self.counters["protocol_errors"] += 1
            self.log.info("refused SOCKS5 client %s: %s", peer[0], exc)
            conn.sendall(exc.reply)
            return None
        except ProtocolError as exc:
            self.counters["protocol_errors"] += 1
            self.log.info("bad SOCKS5 handshake from %s: %s", peer[0], exc)
            return None
        except OSError:
            return None
        return shake

    def _hold_udp_association(self, conn: socket.socket) -> None:
        """Answer UDP ASSOCIATE with our UDP port, then hold the association while the control connection lives.

        As RFC 1928 says, the association ends with its TCP connection: datagrams are relayed only
        for client addresses that hold an open control connection, and when the last one from an
        address closes, that address's UDP flows are dropped at once.
        """
        if not self.config.udp:
            conn.sendall(build_reply(Reply.COMMAND_NOT_SUPPORTED))
            return
        bound, client = conn.getsockname(), conn.getpeername()[0]
        conn.sendall(build_reply(Reply.SUCCEEDED, bound[0], self.config.listen.port))
        self._associated[client] = self._associated.get(client, 0) + 1
        conn.settimeout(None)
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass
        finally:
            self._release(client)

    def _release(self, client: str) -> None:
        left = self._associated.pop(client) - 1
        if left:
            self._associated[client] = left
        else:
            self.nat.drop_where(lambda key: key[0] == client)

    def handle_datagram(self, data: bytes, source: tuple) -> None:
        if source[0] not in self._associated:
            raise ProtocolError(f"no UDP ASSOCIATE held by {source[0]}")
        self.send_datagram(source, split_udp_datagram(data).tobytes())

    def handle_reply(self, key: tuple, data: bytes, source: tuple) -> None:
        plaintext, _, _ = self.open_reply(data)
        self.udp_listener.sendto(UDP_HEADER_PREFIX + plaintext, key)

    def deliver(self, client: tuple, remote: tuple[str, int], payload: bytes | memoryview) -> None:
        self.udp_listener.sendto(UDP_HEADER_PREFIX + encode_addr(*remote) + payload, client)
