"""kcp-server: one UDP listener for every KCP session, each stream dialled to the target (kcptun server)."""

import contextlib

from gevent.pool import Group

from sidecar.config_kcp import Address, KcpServerConfig
from sidecar.errors import ProtocolError
from sidecar.net.kcp_bridge import StreamBridge
from sidecar.net.kcp_link import KcpLink
from sidecar.net.kcp_sockets import bind_udp, dial_target
from sidecar.net.sockets import describe_os_error
from sidecar.net.udp_service import UdpService
from sidecar.proto.kcp_pipeline import route
from sidecar.roles.kcp_base import KcpRole


class KcpServer(KcpRole):
    """Sessions are keyed by the client's address (spec §3): any data datagram from a new address
    opens one; from a known address, a PUSH of sn 0 with another conv replaces it (a client that
    reconnected from the same port), any other conv is dropped. Parity alone opens nothing.
    """

    config: KcpServerConfig

    def __init__(self, config: KcpServerConfig) -> None:
        super().__init__(config)
        self._udp: UdpService | None = None
        self._sessions: dict[tuple, KcpLink] = {}  # client address -> its session
        self._sources: dict[KcpLink, tuple] = {}
        self._group = Group()
        self._accepting = True
        self._cut = 0

    def describe(self) -> str:
        cfg = self.config
        return f"{cfg.name}: kcptun server on udp {cfg.listen} -> {_target_text(cfg.target)} ({self.options()})"

    def bind(self) -> None:
        cfg = self.config
        listener = bind_udp(cfg.listen.host, cfg.listen.port, cfg.sockbuf, cfg.dscp)
        self._udp = UdpService(listener, self.handle_datagram, self.counters, self.log)

    def start(self) -> None:
        assert self._udp is not None
        self._udp.start()
        super().start()

    def handle_datagram(self, data: bytes, source: tuple) -> None:
        try:
            body = self.crypt.decrypt(data)
        except ProtocolError:
            self.counters["crypt_errors"] += 1
            raise
        routed = route(body)
        link = self._sessions.get(source)
        if link is not None and routed is not None and routed[0] != link.conv:
            if not routed[1]:
                self.counters["kcp_errors"] += 1
                raise ProtocolError(f"conv {routed[0]:08x} from {source}, its session is {link.conv:08x}")
            link.close("replaced by a new session from the same address")
            link = None
        if link is None:
            if routed is None or not self._accepting:
                raise ProtocolError(f"no session for a datagram from {source}")
            link = self._open(source, routed[0])
        link.body_in(body)

    def _open(self, source: tuple, conv: int) -> KcpLink:
        listener = self._udp.listener  # type: ignore[union-attr]
        link = self.new_link(conv, lambda packet: listener.sendto(packet, source), client=False,
                             on_stream=self._on_stream)
        self._sessions[source] = link
        self._sources[link] = source
        self.log.debug("session %08x from %s opened", conv, source)
        return link

    def link_closed(self, link: KcpLink) -> None:
        source = self._sources.pop(link)
        if self._sessions.get(source) is link:
            del self._sessions[source]

    def _on_stream(self, link: KcpLink, sid: int) -> None:
        bridge = link.bridges[sid]
        if not self._accepting:
            bridge.close()
            return
        self._group.spawn(self._serve_stream, bridge)

    def _serve_stream(self, bridge: StreamBridge) -> None:
        counters = self.counters
        counters["connections"] += 1
        counters["active"] += 1
        try:
            target = self.config.target
            try:
                sock = dial_target(target if isinstance(target, str) else (target.host, target.port))
            except OSError as exc:
                counters["connect_failures"] += 1
                self.log.info("stream to %s failed: %s", _target_text(target), describe_os_error(exc))
                return
            if bridge.done.is_set():
                sock.close()
                return
            bridge.attach(sock)
            bridge.done.wait()
        finally:
            bridge.close()
            counters["active"] -= 1

    def stop_accepting(self) -> None:
        """Close the UDP port and with it every session and stream, at once.

        One port carries all sessions, and a replacing role (SIGHUP reload) must be able to bind it
        now; kcptun has no drain either. `drain()` then only waits for the stream greenlets to end.
        """
        self._cut = sum(len(link.bridges) for link in self.links)
        self.close()

    def drain(self, timeout_s: float) -> int:
        """The number of streams `stop_accepting` cut."""
        self._group.join(timeout=timeout_s)
        with contextlib.suppress(Exception):
            self._group.kill(block=True, timeout=2)
        return self._cut

    def close(self) -> None:
        self._accepting = False
        self.close_links()
        if self._udp is not None:
            self._udp.stop()
            self._udp = None


def _target_text(target: Address | str) -> str:
    return f"unix {target}" if isinstance(target, str) else f"tcp {target}"
