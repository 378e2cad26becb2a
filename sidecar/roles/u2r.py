"""u2r-client and u2r-server: udp2raw's two sides, wrapping the state machines and the raw drivers.

The key is never logged. The firewall rules (udp2raw's `-a`) are installed at start and removed at
stop, and rules left by a killed process are cleaned at the next start (sidecar.net.firewall).
"""

import logging
import socket
from collections.abc import Callable

from sidecar.config_u2r import U2rConfig
from sidecar.metrics import Counters
from sidecar.net.firewall import Firewall, Pattern
from sidecar.net.flows import Flow, FlowAcceptor, Receiver
from sidecar.net.raw_socket import route_source
from sidecar.net.u2r_endpoint import DRIVER_COUNTERS, U2rClientEndpoint, U2rServerEndpoint
from sidecar.proto import u2r_client, u2r_server
from sidecar.proto.u2r_crypto import BlobCodec, derive_keys
from sidecar.proto.u2r_session import U2rOptions

log = logging.getLogger("sidecar")


class U2rRole:
    """One udp2raw side; the runner's role interface (bind, start, stop_accepting, drain, close)."""

    def __init__(self, config: U2rConfig) -> None:
        self.config = config
        self.log = logging.getLogger(f"sidecar.{config.name}")
        machine_counters = u2r_client.COUNTERS if config.role == "u2r-client" else u2r_server.COUNTERS
        self.counters = Counters(dict.fromkeys((*machine_counters, *DRIVER_COUNTERS)))
        self._endpoint: U2rClientEndpoint | U2rServerEndpoint | None = None
        self.acceptors: list[FlowAcceptor] = []  # server: the stages of this process riding it
        self.new_server_hooks: list[Callable[[], None]] = []  # client: see on_new_server

    def describe(self) -> str:
        cfg = self.config
        side = (f"{_udp_side(cfg.listen)} -> raw {cfg.raw_mode} {cfg.remote}" if cfg.role == "u2r-client"
                else f"raw {cfg.raw_mode} {cfg.listen} -> {_udp_side(cfg.remote)}")
        rules = f"firewall rules: {cfg.firewall}" if cfg.auto_rule and cfg.raw_mode != "easy-faketcp" else "no rules"
        warning = (f"; WARNING: auth_mode {cfg.auth_mode} does not authenticate, only hmac_sha1 does"
                   if cfg.weak_auth else "")
        return f"{cfg.name}: udp2raw {side} ({cfg.cipher_mode}/{cfg.auth_mode}, {rules}){warning}"

    def _machine_parts(self) -> tuple[BlobCodec, object, U2rOptions]:
        cfg = self.config
        keys = derive_keys(cfg.key.encode())
        options = U2rOptions(raw_mode=cfg.raw_mode, seq_mode=cfg.seq_mode, hb_mode=cfg.hb_mode, hb_len=cfg.hb_len,
                             anti_replay=cfg.anti_replay, fix_gro=cfg.fix_gro)
        return BlobCodec(cfg.cipher_mode, cfg.auth_mode, keys), keys, options

    def _firewall(self, side: str, ip: str | None, port: int, const_id: int) -> Firewall | None:
        cfg = self.config
        if not cfg.auto_rule or cfg.raw_mode == "easy-faketcp":  # as udp2raw: the kernel's own TCP is used there
            return None
        backend = None if cfg.firewall == "auto" else cfg.firewall
        return Firewall(Pattern(side, cfg.raw_mode, ip, port), const_id, backend)

    def bind(self) -> None:
        cfg = self.config
        codec, keys, options = self._machine_parts()
        if cfg.role == "u2r-client":
            local_ip = cfg.source_ip or route_source(cfg.remote.host)
            machine = u2r_client.U2rClient(codec, keys, options, socket.inet_aton(local_ip),
                                           socket.inet_aton(cfg.remote.host), cfg.remote.port,
                                           source_port=cfg.source_port)
            machine.counters = self.counters
            firewall = self._firewall("client", cfg.remote.host, cfg.remote.port, machine.const_id)
            listen = (cfg.listen.host, cfg.listen.port) if cfg.listen is not None else None
            self._endpoint = U2rClientEndpoint(machine, listen, self.log,
                                               firewall=firewall, keep_rule=cfg.keep_rule, dev=cfg.dev,
                                               sock_buf=cfg.sock_buf, follow_route=cfg.source_ip is None)
        else:
            listen_ip = None if cfg.listen.host == "0.0.0.0" else cfg.listen.host
            server = u2r_server.U2rServer(codec, keys, options, socket.inet_aton(listen_ip) if listen_ip else None,
                                          cfg.listen.port)
            server.counters = self.counters
            firewall = self._firewall("server", listen_ip, cfg.listen.port, server.const_id)
            target = (cfg.remote.host, cfg.remote.port) if cfg.remote is not None else None
            self._endpoint = U2rServerEndpoint(server, (cfg.listen.host, cfg.listen.port), target, self.log,
                                               firewall=firewall,
                                               keep_rule=cfg.keep_rule, dev=cfg.dev, sock_buf=cfg.sock_buf)
        self._endpoint.counters = self.counters
        self._endpoint.pump.counters = self.counters
        if isinstance(self._endpoint, U2rServerEndpoint):
            self._endpoint.acceptors = self.acceptors
        else:
            self._endpoint.on_new_server = self.new_server_hooks

    # ---- stages of this process riding this one (sidecar.net.flows)

    def open_flow(self, receive: Receiver) -> Flow:
        assert isinstance(self._endpoint, U2rClientEndpoint), "bound u2r-client"
        return self._endpoint.open_flow(receive)

    def on_new_server(self, hook: Callable[[], None]) -> None:
        """Call `hook` when the server answering a reconnect is a new process (its sessions are gone)."""
        if hook not in self.new_server_hooks:
            self.new_server_hooks.append(hook)

    def carry(self, acceptor: FlowAcceptor) -> None:
        """A server-side stage takes the flows it recognises (sidecar.config_chain checked the pairing)."""
        if acceptor not in self.acceptors:
            self.acceptors.append(acceptor)

    def start(self) -> None:
        assert self._endpoint is not None
        self._endpoint.start()
        log.info("started %s", self.describe())
        if self.config.weak_auth:
            self.log.warning("auth_mode %s only checks integrity against accidents; use hmac_sha1 on both ends "
                             "to authenticate", self.config.auth_mode)

    def stop_accepting(self) -> None:
        if self._endpoint is not None:
            self._endpoint.stop()
            self._endpoint = None

    def drain(self, timeout_s: float) -> int:
        return 0  # datagrams: nothing to drain

    def close(self) -> None:
        self.stop_accepting()


def _udp_side(endpoint: object) -> str:
    return f"udp {endpoint}" if endpoint is not None else "in-process stages"
