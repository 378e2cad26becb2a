"""What every Shadowsocks-family role shares: binding, its services, counters, logs and shutdown."""

import logging
import socket
from pathlib import Path

from gevent import socket as gsocket

from sidecar.config import RoleConfig
from sidecar.errors import ProtocolError
from sidecar.metrics import Counters
from sidecar.net.fec_flow import FEC_COUNTERS, FecFlow
from sidecar.net.relay import IdleTimeout, Transform, relay
from sidecar.net.sockets import bind_tcp, describe_os_error, family_of
from sidecar.net.tcp_service import TcpService
from sidecar.net.udp_nat import FlowMaker, UdpNat
from sidecar.net.udp_service import UdpService, bind_datagram_socket, recvfrom
from sidecar.proto.acl import Acl, parse_acl

COUNTERS = (
    "connections", "active", "rejected_limit", "errors", "bytes_up", "bytes_down", "connect_failures",
    "protocol_errors", "auth_failures", "replays", "timeouts", "udp_in", "udp_out", "udp_dropped",
    "udp_associations", "udp_rejected_limit", "blocked", "direct",
)


def load_acl(path: str) -> Acl:
    """The ACL file a role names (already validated by `parse_config`, so a failure here is an OSError)."""
    return parse_acl(Path(path).read_text(encoding="utf-8"), path)


class Role:
    """A configured role: `bind()` takes its ports, `start()` serves them, `stop()` ends it."""

    def __init__(self, config: RoleConfig) -> None:
        self.config = config
        self.counters = Counters(COUNTERS + (FEC_COUNTERS if config.udp_fec is not None else ()))
        self.log = logging.getLogger(f"sidecar.{config.name}")
        self._tcp: TcpService | None = None
        self._udp: UdpService | None = None
        self._nat: UdpNat | None = None
        self.fec_flows: set[FecFlow] = set()  # open flows of the datagram FEC stage (udp_fec)

    def gauges(self) -> dict[str, float]:
        """Levels for `sidecar status`: the FEC stage's measured loss (before recovery) and parity."""
        flows = list(self.fec_flows)
        if not flows:
            return {}
        return {"fec_flows": len(flows), "fec_loss_pct": round(100 * sum(f.loss for f in flows) / len(flows), 2),
                "fec_parity_now": max(f.parity_now for f in flows)}

    def describe(self) -> str:
        """One line for `sidecar check` and the start-up log."""
        raise NotImplementedError

    def handle_tcp(self, conn: gsocket.socket, peer: tuple) -> None:
        raise NotImplementedError

    def handle_datagram(self, data: bytes, source: tuple) -> None:
        """One datagram from the UDP listener; runs in the hub, so it must not block."""
        raise NotImplementedError

    def handle_reply(self, key: tuple, data: bytes, source: tuple) -> None:
        raise NotImplementedError

    def outbound_udp_socket(self, key: tuple) -> socket.socket:
        """A plain non-blocking UDP socket for one NAT entry (it must not block: it runs in the hub)."""
        raise NotImplementedError

    def nat_flows(self) -> FlowMaker | None:
        """Hook: how NAT entries open in-process flows instead of sockets (a client riding `udp_via`)."""
        return None

    def bind_udp_listener(self) -> socket.socket:
        cfg = self.config
        return bind_datagram_socket(family_of(cfg.listen.host), (cfg.listen.host, cfg.listen.port), cfg.reuse_port)

    def receive_datagram(self, sock: socket.socket) -> tuple:
        """The arguments of `handle_datagram` for the next datagram (raises BlockingIOError when none)."""
        return recvfrom(sock)

    def relay_counted(self, a: gsocket.socket, b: gsocket.socket, a_to_b: Transform | None,
                      b_to_a: Transform | None, bad_data: str) -> None:
        """Relay a <-> b until done; how it ended is counted and logged (`bad_data` names the culprit)."""
        try:
            relay(a, b, a_to_b, b_to_a, self.config.timeout_s, self.counters)
        except ProtocolError as exc:
            self.counters["protocol_errors"] += 1
            self.log.warning("%s: %s", bad_data, exc)
        except IdleTimeout:
            self.counters["timeouts"] += 1
        except OSError as exc:
            self.log.debug("connection closed: %s", describe_os_error(exc))

    def bind(self) -> None:
        """Take the role's ports; raises OSError (the caller names the role and the port)."""
        cfg = self.config
        listen = cfg.listen is not None  # None: every client arrives through stages of this process
        if cfg.tcp and listen:
            listener = bind_tcp(cfg.listen, cfg.reuse_port)
            self._tcp = TcpService(listener, self.handle_tcp, cfg.max_connections, self.counters, self.log,
                                   cfg.no_delay)
        if cfg.udp:
            if listen:
                self._udp = UdpService(self.bind_udp_listener(), self.handle_datagram, self.counters, self.log,
                                       self.receive_datagram)
            self._nat = UdpNat(self.outbound_udp_socket, self.handle_reply, cfg.timeout_s, cfg.max_connections,
                               self.counters, self.log, self.nat_flows())

    def start(self) -> None:
        for service in (self._tcp, self._udp):
            if service is not None:
                service.start()
        logging.getLogger("sidecar").info("started %s", self.describe())

    def stop_accepting(self) -> None:
        if self._tcp is not None:
            self._tcp.stop_accepting()
        if self._udp is not None:
            self._udp.stop()
        if self._nat is not None:
            self._nat.close_all()

    def drain(self, timeout_s: float) -> int:
        return self._tcp.drain(timeout_s) if self._tcp is not None else 0

    def close(self) -> None:
        """Release the ports of a role that was bound but never started."""
        self.stop_accepting()

    @property
    def udp_listener(self) -> socket.socket:
        assert self._udp is not None
        return self._udp.listener

    @property
    def nat(self) -> UdpNat:
        assert self._nat is not None
        return self._nat

    def protocols(self) -> str:
        return "+".join(p for p, on in (("tcp", self.config.tcp), ("udp", self.config.udp)) if on)
