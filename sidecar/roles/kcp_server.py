"""kcp-server: one UDP listener for every KCP session, each stream dialled to the target (kcptun server)."""

import contextlib
from collections.abc import Callable
from typing import Protocol

from gevent.pool import Group

from sidecar.config_kcp import Address, KcpServerConfig
from sidecar.errors import ProtocolError
from sidecar.net.flows import Receiver
from sidecar.net.kcp_bridge import StreamBridge
from sidecar.net.kcp_link import KcpLink, Sender
from sidecar.net.kcp_sockets import bind_udp, dial_target
from sidecar.net.sockets import describe_os_error
from sidecar.net.udp_service import UdpService
from sidecar.proto.kcp_pipeline import route
from sidecar.roles.kcp_base import KcpRole


class StreamAcceptor(Protocol):
    """A stage of this process that takes the server's streams instead of its TCP target (an ss-server)."""

    def serve_stream(self, bridge: StreamBridge) -> None:
        """Serve one stream until it ends (runs in its own greenlet)."""
        ...


class KcpServer(KcpRole):
    """Sessions are keyed by the client's address (spec §3): any data datagram from a new address
    opens one; from a known address, a PUSH of sn 0 with another conv replaces it (a client that
    reconnected from the same port), any other conv is dropped. Parity alone opens nothing.

    In a chain, flows of the u2r-server below are sessions too (`claim`, keyed by the flow), and a
    stage above (`upper`) takes each stream instead of a TCP dial to `target`.
    """

    config: KcpServerConfig

    def __init__(self, config: KcpServerConfig) -> None:
        super().__init__(config)
        self._udp: UdpService | None = None
        self._sessions: dict[tuple, KcpLink] = {}  # client address (or flow key) -> its session
        self.upper: StreamAcceptor | None = None
        self._flow_keys = 0
        self._sources: dict[KcpLink, tuple] = {}
        self._group = Group()
        self._accepting = True
        self._cut = 0

    def describe(self) -> str:
        cfg = self.config
        front = " and ".join(([f"udp {cfg.listen}"] if cfg.listen is not None else [])
                             + ([f"flows of {cfg.via}"] if cfg.via else []))
        to = "in-process streams" if self.upper is not None else _target_text(cfg.target)
        return f"{cfg.name}: kcptun server on {front} -> {to} ({self.options()})"

    def bind(self) -> None:
        cfg = self.config
        if cfg.listen is not None:
            listener = bind_udp(cfg.listen.host, cfg.listen.port, cfg.sockbuf, cfg.dscp)
            self._udp = UdpService(listener, self.handle_datagram, self.counters, self.log)

    def start(self) -> None:
        if self._udp is not None:
            self._udp.start()
        super().start()

    def claim(self, first: bytes, reply: Receiver) -> "_FlowSession | None":
        """A flow of the u2r-server below is ours when its first datagram decrypts with our key."""
        if not self._accepting:
            return None
        try:
            self.crypt.decrypt(first)
        except ProtocolError:
            return None
        self._flow_keys += 1
        return _FlowSession(self, ("flow", self._flow_keys), reply)

    def handle_datagram(self, data: bytes, source: tuple, reply: Sender | None = None) -> None:
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
            link = self._open(source, routed[0], reply or self._sender(source))
        link.body_in(body)

    def _sender(self, source: tuple) -> Sender:
        listener = self._udp.listener  # type: ignore[union-attr]
        return lambda packet: listener.sendto(packet, source)

    def drop_source(self, source: tuple) -> None:
        link = self._sessions.get(source)
        if link is not None:
            link.close("its flow ended")

    def _open(self, source: tuple, conv: int, send: Sender) -> KcpLink:
        link = self.new_link(conv, send, client=False, on_stream=self._on_stream)
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
        if self.upper is not None:
            self._group.spawn(self._serve_upper, bridge)
        else:
            self._group.spawn(self._serve_stream, bridge)

    def _serve_upper(self, bridge: StreamBridge) -> None:
        try:
            self.upper.serve_stream(bridge)  # type: ignore[union-attr]
        finally:
            bridge.close()

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


class _FlowSession:
    """A u2r flow the server took (sidecar.net.flows.FlowHandler): its datagrams are one client's."""

    __slots__ = ("server", "key", "reply")

    def __init__(self, server: KcpServer, key: tuple, reply: Callable[[bytes], None]) -> None:
        self.server, self.key, self.reply = server, key, reply

    def receive(self, data: bytes) -> None:
        server = self.server
        server.counters["udp_in"] += 1
        try:
            server.handle_datagram(data, self.key, self.reply)
        except ProtocolError:
            server.counters["udp_dropped"] += 1

    def close(self) -> None:
        self.server.drop_source(self.key)
