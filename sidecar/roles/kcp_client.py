"""kcp-client: a TCP listener whose connections become smux streams over `conn` KCP sessions (kcptun client)."""

import os
import socket

from gevent import socket as gsocket

from sidecar.config_kcp import KcpClientConfig
from sidecar.errors import ProtocolError
from sidecar.net.flows import Flow, FlowOpener
from sidecar.net.kcp_bridge import StreamBridge
from sidecar.net.kcp_link import KcpLink
from sidecar.net.kcp_sockets import dial_udp, resolve_udp, take_socket
from sidecar.net.sockets import bind_tcp, describe_os_error
from sidecar.net.tcp_service import TcpService
from sidecar.net.udp_service import drain
from sidecar.roles.kcp_base import MAX_CONNECTIONS, KcpRole

_READ = 1


class KcpClient(KcpRole):
    """Each accepted connection opens one stream on the next session, round-robin (as kcptun).

    Sessions are dialled lazily (the first datagram leaves with the first connection) and re-dialled
    when closed. With `autoexpire`, a session older than that is replaced at its next turn; the old
    one keeps its streams and closes with the last of them, or `scavengettl` seconds later.

    In a chain, a stage above opens streams with `open_stream()` (no TCP socket in between), and with
    `via` each session's datagrams ride a flow of the u2r-client below instead of a UDP socket.
    """

    config: KcpClientConfig

    def __init__(self, config: KcpClientConfig) -> None:
        super().__init__(config)
        self._tcp: TcpService | None = None
        self._slots: list[KcpLink | None] = [None] * config.conn
        self._turn = 0
        self._sockets: dict[KcpLink, tuple[socket.socket, object]] = {}
        self._flows: dict[KcpLink, Flow] = {}
        self._scavengers: dict[KcpLink, object] = {}
        self.lower: FlowOpener | None = None  # the u2r-client this one rides (`via`)

    def describe(self) -> str:
        cfg = self.config
        front = f"tcp {cfg.listen}" if cfg.listen is not None else "in-process streams"
        to = f"kcp over {cfg.via}" if cfg.via else f"kcp {cfg.remote}"
        return f"{cfg.name}: kcptun client on {front} -> {to} x{cfg.conn} ({self.options()})"

    def bind(self) -> None:
        if self.config.listen is not None:
            listener = bind_tcp(self.config.listen)
            self._tcp = TcpService(listener, self.handle_tcp, MAX_CONNECTIONS, self.counters, self.log)

    def start(self) -> None:
        if self._tcp is not None:
            self._tcp.start()
        super().start()

    def open_stream(self) -> StreamBridge | None:
        """A new stream on the next session, for a stage of this process; None if no session can open."""
        link = self._session()
        if link is None:
            return None
        try:
            return link.open_stream(upstream=True)
        except BrokenPipeError:
            return None

    def handle_tcp(self, conn: gsocket.socket, peer: tuple) -> None:
        bridge = self.open_stream()
        if bridge is None:
            return
        try:
            bridge.attach(take_socket(conn))
            bridge.done.wait()
        finally:
            bridge.close()

    def _session(self) -> KcpLink | None:
        """The session for the next connection (round-robin), dialled or replaced as needed."""
        index = self._turn % len(self._slots)
        self._turn += 1
        link = self._current(index)
        if link is None and self.lower is not None:
            link = self._slots[index] = self._dial_flow()
        elif link is None:
            address = self._resolve()  # may switch greenlets: another connection may fill the slot
            link = self._current(index)
            if link is None and address is not None:
                link = self._slots[index] = self._dial(*address)
        return link

    def _current(self, index: int) -> KcpLink | None:
        """The live session in slot `index`; an expired one is handed to the scavenger."""
        link = self._slots[index]
        if link is not None and not link.closed and self._expired(link):
            self._scavenge(link)
        return link if link is not None and not link.closed and not link.expiring else None

    def _expired(self, link: KcpLink) -> bool:
        limit = self.config.autoexpire_s
        return limit > 0 and link.loop.now() - link.born >= limit

    def _resolve(self) -> tuple[int, tuple] | None:
        remote = self.config.remote
        try:
            return resolve_udp(remote.host, remote.port)
        except OSError as exc:
            self.counters["connect_failures"] += 1
            self.log.warning("cannot resolve %s: %s", remote, describe_os_error(exc))
            return None

    def _dial(self, family: int, address: tuple) -> KcpLink | None:
        cfg = self.config
        try:
            sock = dial_udp(family, address, cfg.sockbuf, cfg.dscp)
        except OSError as exc:
            self.counters["connect_failures"] += 1
            self.log.warning("cannot open a session to %s: %s", cfg.remote, describe_os_error(exc))
            return None
        link = self.new_link(_new_conv(), sock.send, client=True)
        watcher = link.loop.io(sock.fileno(), _READ)
        watcher.start(self._on_readable, link, sock)
        self._sockets[link] = (sock, watcher)
        self.log.debug("session %08x to %s opened", link.conv, cfg.remote)
        return link

    def _dial_flow(self) -> KcpLink:
        """A session whose datagrams ride a flow of the u2r-client below (one udp2raw conv)."""
        box: list[KcpLink] = []
        flow = self.lower.open_flow(lambda packet: self._flow_in(box[0], packet))  # type: ignore[union-attr]
        link = self.new_link(_new_conv(), flow.send, client=True)
        box.append(link)
        self._flows[link] = flow
        self.log.debug("session %08x over %s opened", link.conv, self.config.via)
        return link

    def server_restarted(self) -> None:
        """The u2r-client below reconnected to a new server process: our sessions there are gone.

        Closing them now (their streams end) lets new connections open fresh sessions at once, where
        waiting for smux's keepalive timeout would take 30 s.
        """
        for link in list(self._flows):
            link.close("the server behind the udp2raw link restarted")

    def _flow_in(self, link: KcpLink, packet: bytes) -> None:
        self.counters["udp_in"] += 1
        try:
            link.packet_in(packet)
        except ProtocolError:
            self.counters["udp_dropped"] += 1

    def _on_readable(self, link: KcpLink, sock: socket.socket) -> None:
        if not drain(sock, lambda data, _source: link.packet_in(data), self.counters, self.log):
            link.close("socket failed")

    def _scavenge(self, link: KcpLink) -> None:
        link.expiring = True
        if not link.bridges:
            link.close("expired")
            return
        timer = link.loop.timer(max(self.config.scavengettl_s, 0.001))
        timer.start(link.close, "scavenged")
        self._scavengers[link] = timer

    def link_closed(self, link: KcpLink) -> None:
        flow = self._flows.pop(link, None)
        if flow is not None:
            flow.close()
        else:
            sock, watcher = self._sockets.pop(link)
            watcher.stop()
            watcher.close()
            sock.close()
        timer = self._scavengers.pop(link, None)
        if timer is not None:
            timer.stop()
            timer.close()

    def stop_accepting(self) -> None:
        if self._tcp is not None:
            self._tcp.stop_accepting()

    def drain(self, timeout_s: float) -> int:
        left = self._tcp.drain(timeout_s) if self._tcp is not None else 0
        self.close_links()
        return left

    def close(self) -> None:
        self.stop_accepting()
        self.close_links()


def _new_conv() -> int:
    return int.from_bytes(os.urandom(4), "little")
