"""udp2raw client and server endpoints: a state machine (proto/u2r_client, u2r_server) driven in the hub.

Event-driven like udp_service and relay: libev watchers on the raw receive socket, the local UDP
socket (client) or the per-flow target sockets (server) call straight into the machine; one timer is
kept armed at the machine's next deadline. After every input the outputs are flushed: events first
(a new port must be reserved and filtered before the SYN leaves), then the raw packets.

Roles wrap these: they build the codec/keys/options from the config, resolve addresses, decide on the
firewall (see firewall.py) and call start()/stop().

Stages of the same process ride an endpoint by function call (sidecar.net.flows): a client's
`open_flow` is a conv of its own, with no local UDP socket; a server offers each new flow to its
acceptors before (instead of) opening a UDP socket to its target.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from gevent.hub import get_hub

from sidecar.errors import ProtocolError
from sidecar.metrics import Counters
from sidecar.net.firewall import KEEP_RULE_INTERVAL_S, Firewall, FirewallError
from sidecar.net.flows import FlowAcceptor, FlowHandler, Receiver
from sidecar.net.raw_filter import program
from sidecar.net.raw_socket import attach_filter, open_receiver, open_sender, reserve_port, route_source, size_buffers
from sidecar.net.udp_service import bind_datagram_socket
from sidecar.proto.ipv4 import PROTO_ICMP
from sidecar.proto.l4 import ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, parse_raw
from sidecar.proto.u2r_client import U2rClient
from sidecar.proto.u2r_raw import PROTOCOL
from sidecar.proto.u2r_server import U2rServer
from sidecar.proto.u2r_session import Deliver, Disconnected, Event, FlowClosed, FlowData, FlowOpened, Handshaking, Ready

BATCH = 64
RECV_SIZE = 65536
_READ = 1
DRIVER_COUNTERS = ("raw_invalid", "raw_send_failed", "udp_send_failed", "port_busy", "errors", "flows_unclaimed")

Machine = U2rClient | U2rServer


class _Pump:
    """Raw receive -> machine -> outputs, plus the deadline timer. `on_event` handles the events."""

    def __init__(self, machine: Machine, receiver: socket.socket, on_event: Callable[[Event], None],
                 counters: Counters, log: logging.Logger, sock_buf: int, force_buf: bool) -> None:
        self.machine, self.receiver, self.on_event, self.counters, self.log = machine, receiver, on_event, counters, log
        self.sender = open_sender(sock_buf, force_buf)
        self.loop = get_hub().loop
        self.reader = self.loop.io(receiver.fileno(), _READ)
        self.timer = None
        self.armed_at = float("inf")
        self._buf = bytearray(RECV_SIZE)
        self._kicked = False

    def start(self) -> None:
        self.reader.start(self._on_raw)
        self.flush()

    def now(self) -> float:
        return self.loop.now()

    def _on_raw(self) -> None:
        machine, buf, now = self.machine, self._buf, self.loop.now()
        view = memoryview(buf)
        for _ in range(BATCH):
            try:
                n = self.receiver.recv_into(buf)
            except BlockingIOError:
                break
            except OSError as exc:
                self.log.debug("raw receive: %s", exc)
                break
            try:
                machine.receive_raw(parse_raw(view[:n]), now)
            except ProtocolError:
                self.counters["raw_invalid"] += 1
            except Exception as exc:  # a bug costs that packet only
                self.counters["errors"] += 1
                self.log.warning("raw packet dropped by an internal error: %r", exc)
        self.flush()

    def kick(self) -> None:
        """Flush at the end of this loop iteration: in-process stages send many datagrams per pass."""
        if not self._kicked:
            self._kicked = True
            self.loop.run_callback(self.flush)

    def flush(self) -> None:
        self._kicked = False
        machine = self.machine
        while events := machine.take_events():  # handling one may make more (a readdressed client's restart)
            for event in events:
                self.on_event(event)
        sender = self.sender
        for packet in machine.take_packets():
            try:
                sender.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))
            except OSError:  # a full send buffer or an unreachable route: that packet is lost
                self.counters["raw_send_failed"] += 1
        deadline = machine.next_deadline()
        if deadline < self.armed_at:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        if self.timer is not None:
            self.timer.stop()
            self.timer.close()
        self.armed_at = deadline
        self.timer = self.loop.timer(max(deadline - self.loop.now(), 0.001))
        self.timer.start(self._on_timer)

    def _on_timer(self) -> None:
        self.armed_at = float("inf")
        self.machine.tick(self.loop.now())
        self.flush()

    def stop(self) -> None:
        self.reader.stop()
        self.reader.close()
        if self.timer is not None:
            self.timer.stop()
            self.timer.close()
        self.sender.close()
        self.receiver.close()


class _Rules:
    """The endpoint's firewall rule: installed at start, re-asserted every 20 s with --keep-rule,
    removed at stop (and by atexit, which `Firewall.install` registers, if stop never comes)."""

    def __init__(self, firewall: Firewall | None, keep_rule: bool) -> None:
        self.firewall = firewall
        self.timer = None
        if firewall is not None and keep_rule:
            self.timer = get_hub().loop.timer(KEEP_RULE_INTERVAL_S, KEEP_RULE_INTERVAL_S)

    def start(self) -> None:
        if self.firewall is not None:
            self.firewall.install()
        if self.timer is not None:
            self.timer.start(self._ensure)

    def _ensure(self) -> None:
        try:
            self.firewall.ensure()
        except FirewallError as exc:  # try again at the next interval
            logging.getLogger("sidecar.firewall").warning("firewall: %s", exc)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.stop()
            self.timer.close()
        if self.firewall is not None:
            self.firewall.remove()


class U2rClientEndpoint:
    """`-c`: local UDP on `listen` <-> raw transport to the machine's server.

    With `follow_route` (no `source_ip` configured) every handshake attempt re-resolves the source
    address the routing table picks for the server: a host that was re-addressed reconnects from its
    new address, and the server moves the conn there with its flows.
    """

    def __init__(self, client: U2rClient, listen: tuple[str, int] | None, log: logging.Logger, *,
                 firewall: Firewall | None = None, keep_rule: bool = False, dev: str | None = None,
                 sock_buf: int = 1024 * 1024, force_buf: bool = False, follow_route: bool = False) -> None:
        self.client, self.log, self.rules = client, log, _Rules(firewall, keep_rule)
        self.follow_route = follow_route
        self.counters = Counters(DRIVER_COUNTERS)
        self.mode = client.options.raw_mode
        self.server_ip = socket.inet_ntoa(client.server_ip)
        self.local_ip = socket.inet_ntoa(client.local_ip)
        self.local: socket.socket | None = None
        self.reader = None
        if listen is not None:
            self.local = bind_datagram_socket(socket.AF_INET, listen, False)
            size_buffers(self.local, sock_buf, force_buf)
            self.reader = get_hub().loop.io(self.local.fileno(), _READ)
        receiver = open_receiver(self._program(0), dev, sock_buf, force_buf)
        self.pump = _Pump(client, receiver, self._on_event, self.counters, log, sock_buf, force_buf)
        self.reserved: socket.socket | None = None
        self.flows: dict[tuple, Receiver] = {}  # in-process flows: their conv key -> the stage above
        self.on_new_server: list[Callable[[], None]] = []  # stages whose peer state died with the server
        self._flow_ids = 0

    def _program(self, port: int) -> bytes:
        if self.mode == "icmp":
            return program(PROTO_ICMP, src=self.server_ip, icmp_type=ICMP_ECHO_REPLY, icmp_id=port)
        return program(PROTOCOL[self.mode], src=self.server_ip, sport=self.client.server_port, dport=port)

    def start(self) -> None:
        self.rules.start()
        self.client.start(self.pump.now())
        if self.reader is not None:
            self.reader.start(self._on_local)
        self.pump.start()

    def open_flow(self, receive: Receiver) -> _ClientFlow:
        """A conv of its own for an in-process stage (as a local UDP source port would be)."""
        self._flow_ids += 1
        key = ("in-process", self._flow_ids)
        self.flows[key] = receive
        return _ClientFlow(self, key)

    def _on_local(self) -> None:
        client, now = self.client, self.pump.now()
        for _ in range(BATCH):
            try:
                data, addr = self.local.recvfrom(RECV_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                self.log.debug("local UDP receive: %s", exc)
                break
            client.send(addr, data, now)
        self.pump.flush()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, Deliver):
            receive = self.flows.get(event.addr)
            if receive is not None:
                receive(event.payload)
                return
            try:
                self.local.sendto(event.payload, event.addr)  # type: ignore[union-attr]
            except OSError:
                self.counters["udp_send_failed"] += 1
        elif isinstance(event, Handshaking):
            if not self._readdressed():
                self._take_port(event.port)
        elif isinstance(event, Ready):
            self.log.info("u2r-client: connected to %s:%d from port %d%s", self.server_ip, self.client.server_port,
                          self.client.local_port, " (a restarted server)" if event.new_server else "")
            if event.new_server:
                for hook in self.on_new_server:
                    hook()
        elif isinstance(event, Disconnected):
            self.log.warning("u2r-client: reconnecting: %s", event.reason)

    def _readdressed(self) -> bool:
        """Whether the route to the server now leaves from another address; if so, the attempt just
        begun (its packets still queued) is dropped and the machine starts over from the new address."""
        if not self.follow_route:
            return False
        try:
            ip = route_source(self.server_ip)
        except OSError:  # no route at the moment: keep trying from the old address
            return False
        if ip == self.local_ip:
            return False
        self.log.info("u2r-client: source address %s -> %s", self.local_ip, ip)
        self.local_ip = ip
        self.client.take_packets()
        self.client.local_ip = socket.inet_aton(ip)
        self.client.reconnect(self.pump.now())
        return True

    def _take_port(self, port: int) -> None:
        """Reserve the machine's new port and point the filter at it; a busy port means another one."""
        if self.reserved is not None:
            self.reserved.close()
            self.reserved = None
        easy = self.mode == "easy-faketcp"
        try:
            self.reserved = reserve_port(self.mode, self.local_ip, port, listen=not easy)
        except OSError:
            self.counters["port_busy"] += 1
            self.pump.loop.run_callback(self._retry_port)
            return
        attach_filter(self.pump.receiver, self._program(port))
        if easy:  # the kernel does the 3-way handshake; the machine watches for its SYN-ACK
            self.reserved.connect_ex((self.server_ip, self.client.server_port))

    def _retry_port(self) -> None:
        self.client.reconnect(self.pump.now())
        self.pump.flush()

    def stop(self) -> None:
        if self.reader is not None:
            self.reader.stop()
            self.reader.close()
            self.local.close()  # type: ignore[union-attr]
        self.flows.clear()
        self.pump.stop()
        if self.reserved is not None:
            self.reserved.close()
        self.rules.stop()


class _ClientFlow:
    """An in-process stage's conv on a udp2raw client (sidecar.net.flows.Flow)."""

    __slots__ = ("endpoint", "key")

    def __init__(self, endpoint: U2rClientEndpoint, key: tuple) -> None:
        self.endpoint, self.key = endpoint, key

    def send(self, data: bytes | memoryview) -> None:
        endpoint = self.endpoint
        endpoint.client.send(self.key, bytes(data), endpoint.pump.now())
        endpoint.pump.kick()

    def close(self) -> None:
        self.endpoint.flows.pop(self.key, None)


class U2rServerEndpoint:
    """`-s`: raw transport on `listen` <-> one UDP socket per flow, connected to `target` (an IP, port), or
    the in-process stages in `acceptors` (then `target` is None)."""

    def __init__(self, server: U2rServer, listen: tuple[str, int], target: tuple[str, int] | None,
                 log: logging.Logger, *,
                 firewall: Firewall | None = None, keep_rule: bool = False, dev: str | None = None,
                 sock_buf: int = 1024 * 1024, force_buf: bool = False) -> None:
        self.server, self.target, self.log, self.rules = server, target, log, _Rules(firewall, keep_rule)
        self.sock_buf, self.force_buf = sock_buf, force_buf
        self.counters = Counters(DRIVER_COUNTERS)
        mode = server.options.raw_mode
        ip = None if listen[0] == "0.0.0.0" else listen[0]
        if mode == "icmp":
            prog = program(PROTO_ICMP, dst=ip, icmp_type=ICMP_ECHO_REQUEST)
        else:
            prog = program(PROTOCOL[mode], dst=ip, dport=listen[1])
        self.reserved = reserve_port(mode, listen[0], listen[1])
        self.pump = _Pump(server, open_receiver(prog, dev, sock_buf, force_buf), self._on_event, self.counters, log,
                          sock_buf, force_buf)
        self.flows: dict[int, tuple[socket.socket, Any]] = {}  # flow -> (socket, its libev watcher)
        self.acceptors: list[FlowAcceptor] = []
        self.handlers: dict[int, FlowHandler] = {}  # flows in-process stages took
        self.kernel_conns: list[socket.socket] = []
        self.acceptor = get_hub().loop.io(self.reserved.fileno(), _READ) if mode == "easy-faketcp" else None

    def start(self) -> None:
        self.rules.start()
        if self.acceptor is not None:
            self.acceptor.start(self._accept)
        self.pump.start()

    def _accept(self) -> None:
        """easy-faketcp: the kernel's listen socket completed a client's handshake; hold the socket."""
        try:
            conn, _ = self.reserved.accept()
        except OSError:
            return
        self.kernel_conns.append(conn)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, FlowData):
            entry = self.flows.get(event.flow)
            if entry is not None:
                try:
                    entry[0].send(event.payload)
                except OSError:
                    self.counters["udp_send_failed"] += 1
            else:
                self._to_stage(event.flow, event.payload)
        elif isinstance(event, FlowOpened):
            if self.target is not None:
                self._open_flow(event.flow)
        elif isinstance(event, FlowClosed):
            self._close_flow(event.flow)
        elif isinstance(event, Ready):
            self.log.info("u2r-server: client %s:%d %s", socket.inet_ntoa(event.key[0]), event.key[1],
                          "moved here with its flows" if event.moved else "connected")

    def _to_stage(self, flow: int, payload: bytes) -> None:
        """A datagram for an in-process stage; a flow's first one decides which stage takes it."""
        handler = self.handlers.get(flow)
        if handler is None:
            handler = self._claim(flow, payload)
            if handler is None:
                self.counters["flows_unclaimed"] += 1
                return
        handler.receive(payload)

    def _claim(self, flow: int, first: bytes) -> FlowHandler | None:
        def reply(data: bytes) -> None:
            self.server.send(flow, bytes(data), self.pump.now())
            self.pump.kick()

        for acceptor in self.acceptors:
            handler = acceptor.claim(first, reply)
            if handler is not None:
                self.handlers[flow] = handler
                return handler
        return None

    def _open_flow(self, flow: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            size_buffers(sock, self.sock_buf, self.force_buf)
            sock.connect(self.target)
        except OSError as exc:
            self.log.warning("u2r-server: cannot reach %s:%d: %s", *self.target, exc)
            sock.close()
            return
        watcher = self.pump.loop.io(sock.fileno(), _READ)
        watcher.start(self._on_target, flow, sock)
        self.flows[flow] = (sock, watcher)

    def _on_target(self, flow: int, sock: socket.socket) -> None:
        server, now = self.server, self.pump.now()
        for _ in range(BATCH):
            try:
                data = sock.recv(RECV_SIZE)
            except BlockingIOError:
                break
            except OSError:  # ICMP port unreachable from the target, reported on the next read
                continue
            server.send(flow, data, now)
        self.pump.flush()

    def _close_flow(self, flow: int) -> None:
        handler = self.handlers.pop(flow, None)
        if handler is not None:
            handler.close()
        entry = self.flows.pop(flow, None)
        if entry is not None:
            sock, watcher = entry
            watcher.stop()
            watcher.close()
            sock.close()

    def stop(self) -> None:
        for flow in [*self.flows, *self.handlers]:
            self._close_flow(flow)
        if self.acceptor is not None:
            self.acceptor.stop()
            self.acceptor.close()
        for conn in self.kernel_conns:
            conn.close()
        self.pump.stop()
        self.reserved.close()
        self.rules.stop()
