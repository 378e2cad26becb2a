"""ss-redir: the router's transparent proxy. TCP arrives by REDIRECT (or TPROXY), UDP by TPROXY;
both go to their original destination through an ss-server. UDP replies are sent from the remote's
own address, one sender socket per remote, so NAT is full cone (what game consoles ask for)."""

import socket
from collections import OrderedDict

from gevent import socket as gsocket

from sidecar.config import SsRedirConfig
from sidecar.errors import ProtocolError
from sidecar.net.firewall import detect_backend
from sidecar.net.redir_rules import PRIVATE_V4, PRIVATE_V6, RedirRules, RulesError
from sidecar.net.sockets import family_of
from sidecar.net.transparent import (
    original_dst,
    recv_with_destination,
    tproxy_udp_listener,
    transparent_sender,
    unmapped,
)
from sidecar.proto.socks_addr import encode_addr
from sidecar.roles.ss_client import SsClientRole

PRIVATE = PRIVATE_V4 + PRIVATE_V6
MAX_SENDERS = 1024  # reply sockets kept (one per remote address); the least recently used go first


class SsRedir(SsClientRole):
    config: SsRedirConfig

    def __init__(self, config: SsRedirConfig) -> None:
        super().__init__(config)
        self._senders: OrderedDict[tuple[str, int], socket.socket] = OrderedDict()
        self._rules: RedirRules | None = None

    def start(self) -> None:
        """With `lan_interface` set, install the firewall rules first (replacing stale ones of a killed run)."""
        cfg = self.config
        if cfg.lan_interface:
            self._rules = rules_for(cfg, cfg.lan_interface)
            self._rules.up()
            self.log.info("firewall rules installed on %s (%s)", cfg.lan_interface, self._rules.backend)
        super().start()

    def describe(self) -> str:
        cfg = self.config
        return (f"{cfg.name}: transparent proxy on {self.protocols()} {cfg.listen} -> {self.server_text()} "
                f"({cfg.cipher.method.name}); firewall rules: `sidecar rules up`")

    def handle_tcp(self, conn: gsocket.socket, peer: tuple) -> None:
        try:
            host, port = original_dst(conn, self.config.listen.port)
        except OSError as exc:
            self.counters["protocol_errors"] += 1
            self.log.info("no original destination for %s (not redirected?): %s", peer[0], exc)
            return
        if self.carrier is not None and not self.goes_direct(host):
            self.relay_over_stream(conn, encode_addr(host, port), b"")
            return
        try:
            upstream, direct = self.connect_upstream(host, port)
        except OSError:
            return
        self.relay_upstream(conn, upstream, direct, host, port, b"")

    def bind_udp_listener(self) -> socket.socket:
        listen = self.config.listen
        return tproxy_udp_listener(family_of(listen.host), (listen.host, listen.port))

    def receive_datagram(self, sock: socket.socket) -> tuple:
        return recv_with_destination(sock)

    def handle_datagram(self, data: bytes, source: tuple, destination: tuple[str, int] | None) -> None:
        if destination is None:
            raise ProtocolError("datagram without an original destination (not TPROXY'd?)")
        # A dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d; replies to them leave IPv4 sockets.
        self.send_datagram((unmapped(source[0]), source[1]), encode_addr(*destination) + data)

    def handle_reply(self, key: tuple, data: bytes, source: tuple) -> None:
        plaintext, remote, offset = self.open_reply(data)
        self.deliver(key, remote, memoryview(plaintext)[offset:])

    def deliver(self, client: tuple, remote: tuple[str, int], payload: bytes | memoryview) -> None:
        self._sender(remote).sendto(payload, client)

    def _sender(self, remote: tuple[str, int]) -> socket.socket:
        """The socket that speaks as `remote` (created on first use; the oldest is closed past the cap)."""
        sock = self._senders.get(remote)
        if sock is None:
            sock = transparent_sender(family_of(remote[0]), remote)
            self._senders[remote] = sock
            if len(self._senders) > MAX_SENDERS:
                self._senders.popitem(last=False)[1].close()
        else:
            self._senders.move_to_end(remote)
        return sock

    def stop_accepting(self) -> None:
        if self._rules is not None:
            self._rules.down(quiet=True)
            self.log.info("firewall rules removed (%s)", self._rules.backend)
            self._rules = None
        super().stop_accepting()
        for sock in self._senders.values():
            sock.close()
        self._senders.clear()



def rules_for(cfg: SsRedirConfig, lan: str) -> RedirRules:
    """The firewall rules of an ss-redir role on `lan` (the ss-server's addresses resolved now)."""
    if cfg.server is None:  # a chain: what leaves for the far end is the router's own traffic, not the LAN's
        return _rules(cfg, lan, ())
    try:
        found = gsocket.getaddrinfo(cfg.server.host, cfg.server.port, 0, socket.SOCK_STREAM)
    except OSError as exc:
        raise RulesError(f"cannot resolve ss-server {cfg.server.host} for the bypass set: {exc}") from None
    return _rules(cfg, lan, tuple(f"{a[4][0]}/{32 if a[0] == socket.AF_INET else 128}" for a in found))


def _rules(cfg: SsRedirConfig, lan: str, server: tuple[str, ...]) -> RedirRules:
    backend = detect_backend() if cfg.firewall == "auto" else cfg.firewall
    return RedirRules(cfg.listen.port, lan, server + cfg.bypass, cfg.udp, cfg.fwmark, cfg.route_table,
                      PRIVATE if cfg.bypass_private else (), backend)
