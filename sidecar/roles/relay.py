"""relay: an intermediate hop that takes datagrams on one transport and forwards them over another.

In: a UDP port (`listen`) or the flows of a u2r-server of this process (`from`). Out: UDP to `remote`
or the flows of a u2r-client of this process (`to`). Each incoming flow (a UDP source address, or a
udp2raw conv) is one outgoing flow, so the far end sees as many clients as the relay does. Payloads
pass untouched: KCP and Shadowsocks stay end to end, and the relay holds none of their keys.
"""

import logging
import socket
from collections.abc import Callable, Hashable

from sidecar.config_chain import RelayConfig
from sidecar.metrics import Counters
from sidecar.net.flows import Flow, FlowOpener, Receiver
from sidecar.net.udp_nat import UdpNat
from sidecar.net.udp_service import UdpService, bind_datagram_socket, dispatch

COUNTERS = ("udp_in", "udp_out", "udp_dropped", "udp_associations", "udp_rejected_limit", "errors")
MAX_FLOWS = 4096


class Relay:
    config: RelayConfig

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.counters = Counters(COUNTERS)
        self.log = logging.getLogger(f"sidecar.{config.name}")
        self.sink: FlowOpener | None = None  # the u2r-client of `to`, connected by sidecar.roles.chain
        self._udp: UdpService | None = None
        self._out: UdpNat | None = None
        self._remote: tuple[int, tuple] | None = None
        self._replies: dict[Hashable, Callable[[bytes], None]] = {}  # in-process flows -> their reply
        self._flow_keys = 0

    def describe(self) -> str:
        cfg = self.config
        source = f"udp {cfg.listen}" if cfg.listen is not None else f"flows of {cfg.source}"
        sink = f"udp {cfg.remote}" if cfg.remote is not None else f"flows of {cfg.sink}"
        return f"{cfg.name}: relay {source} -> {sink} (payloads untouched)"

    def bind(self) -> None:
        cfg = self.config
        if cfg.remote is not None:
            family, _, _, _, address = socket.getaddrinfo(cfg.remote.host, cfg.remote.port, 0, socket.SOCK_DGRAM)[0]
            self._remote = family, address
        self._out = UdpNat(self._remote_socket, self._reply, cfg.timeout_s, MAX_FLOWS, self.counters, self.log,
                           self._sink_flow if cfg.sink is not None else None)
        if cfg.listen is not None:
            family = socket.AF_INET6 if ":" in cfg.listen.host else socket.AF_INET
            listener = bind_datagram_socket(family, (cfg.listen.host, cfg.listen.port), False)
            self._udp = UdpService(listener, self._forward, self.counters, self.log)

    def start(self) -> None:
        if self._udp is not None:
            self._udp.start()
        logging.getLogger("sidecar").info("started %s", self.describe())

    def _remote_socket(self, key: Hashable) -> socket.socket:
        assert self._remote is not None
        sock = socket.socket(self._remote[0], socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect(self._remote[1])
        return sock

    def _sink_flow(self, key: Hashable, receive: Receiver) -> Flow:
        assert self.sink is not None, "connected by sidecar.roles.chain"
        return self.sink.open_flow(receive)

    def _forward(self, data: bytes, source: Hashable) -> None:
        out = self._out.socket_for(source)  # type: ignore[union-attr]
        if out is not None:
            out.send(data)
            self.counters["udp_out"] += 1

    def _reply(self, key: Hashable, data: bytes, source: tuple) -> None:
        reply = self._replies.get(key)
        if reply is not None:
            reply(data)
        else:
            self._udp.listener.sendto(data, key)  # type: ignore[union-attr,arg-type]

    # ---- flows of the u2r-server of `from` (sidecar.net.flows.FlowAcceptor)

    def claim(self, first: bytes, reply: Receiver) -> "_RelayedFlow":
        """Every flow: a relay forwards what it cannot read."""
        self._flow_keys += 1
        key = ("in-process", self._flow_keys)
        self._replies[key] = reply
        return _RelayedFlow(self, key)

    def end_flow(self, key: Hashable) -> None:
        self._replies.pop(key, None)
        if self._out is not None:
            self._out.drop_where(lambda other: other == key)

    def stop_accepting(self) -> None:
        if self._udp is not None:
            self._udp.stop()
            self._udp = None
        if self._out is not None:
            self._out.close_all()
            self._out = None
        self._replies.clear()

    def drain(self, timeout_s: float) -> int:
        return 0  # datagrams: nothing to drain

    def close(self) -> None:
        self.stop_accepting()


class _RelayedFlow:
    __slots__ = ("relay", "key")

    def __init__(self, relay: Relay, key: Hashable) -> None:
        self.relay, self.key = relay, key

    def receive(self, data: bytes) -> None:
        relay = self.relay
        relay.counters["udp_in"] += 1
        dispatch(relay._forward, (data, self.key), relay.counters, relay.log)

    def close(self) -> None:
        self.relay.end_flow(self.key)
