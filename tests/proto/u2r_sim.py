"""An in-memory network for the udp2raw state machines: a client and a server machine, a simulated clock,
an echo target behind the server, and hooks to drop, duplicate or rewrite packets on the way."""

from __future__ import annotations

import functools
import random
import socket
from collections.abc import Callable

from sidecar.errors import ProtocolError
from sidecar.proto.faketcp import FakeTcp, IpIds
from sidecar.proto.l4 import TCP_ACK, TCP_SYN, RawPacket, parse_raw
from sidecar.proto.u2r_client import U2rClient
from sidecar.proto.u2r_crypto import BlobCodec, Keys, derive_keys
from sidecar.proto.u2r_server import U2rServer
from sidecar.proto.u2r_session import Deliver, FlowClosed, FlowData, FlowOpened, Handshaking, U2rOptions

CLIENT_IP = socket.inet_aton("10.77.0.2")
SERVER_IP = socket.inet_aton("10.77.0.1")
SERVER_PORT = 4096
APP = ("127.0.0.1", 5555)

Filter = Callable[[str, bytes], list[bytes]]  # (direction, packet) -> packets that arrive


@functools.cache
def keys() -> Keys:
    return derive_keys(b"test-vector-key")


def make_server(options: U2rOptions, cipher: str = "aes128cbc", auth: str = "md5", seed: int = 1,
                **kw: object) -> U2rServer:
    return U2rServer(BlobCodec(cipher, auth, keys()), keys(), options, SERVER_IP, SERVER_PORT,
                     rng=random.Random(seed), **kw)  # type: ignore[arg-type]


def make_client(options: U2rOptions, cipher: str = "aes128cbc", auth: str = "md5", seed: int = 2,
                **kw: object) -> U2rClient:
    return U2rClient(BlobCodec(cipher, auth, keys()), keys(), options, CLIENT_IP, SERVER_IP, SERVER_PORT,
                     rng=random.Random(seed), **kw)  # type: ignore[arg-type]


class Net:
    """Pumps packets between the machines until quiet; `advance` moves the clock deadline by deadline."""

    def __init__(self, client: U2rClient, server: U2rServer, wire: Filter | None = None, echo: bool = True) -> None:
        self.client, self.server, self.wire, self.echo = client, server, wire, echo
        self.now = 1000.0
        self.delivered: list[Deliver] = []
        self.to_target: list[FlowData] = []
        self.flows_opened: list[int] = []
        self.flows_closed: list[int] = []
        self.ports: list[int] = []
        self.sent: list[tuple[str, bytes]] = []  # every packet either side emitted
        self._kernel = FakeTcp(SERVER_IP, CLIENT_IP, SERVER_PORT, 0, IpIds(random.Random(3)), random.Random(3))

    def start(self) -> None:
        self.client.start(self.now)
        self.pump()

    def pump(self) -> None:
        while self._client_out() | self._server_out():
            pass

    def _carry(self, direction: str, packet: bytes) -> None:
        self.sent.append((direction, packet))
        for arrived in self.wire(direction, packet) if self.wire else [packet]:
            try:
                raw = parse_raw(arrived)
            except ProtocolError:
                continue  # what the kernel or our driver would drop before the machine sees it
            target = self.server if direction == "c2s" else self.client
            target.receive_raw(raw, self.now)

    def _client_out(self) -> bool:
        events, packets = self.client.take_events(), self.client.take_packets()
        for event in events:
            if isinstance(event, Deliver):
                self.delivered.append(event)
            elif isinstance(event, Handshaking):
                self.ports.append(event.port)
                if self.client.options.raw_mode == "easy-faketcp":
                    self._kernel_handshake(event.port)
        for packet in packets:
            self._carry("c2s", packet)
        return bool(events or packets)

    def _kernel_handshake(self, port: int) -> None:
        """easy-faketcp: stand in for the two kernels' 3-way handshake (the client sees the SYN-ACK)."""
        kernel = self._kernel
        kernel.dport = port
        syn_ack = kernel.segment(TCP_SYN | TCP_ACK, b"", self.now, seq=777, ack=123457)
        self.client.receive_raw(parse_raw(syn_ack), self.now)
        server_view = FakeTcp(CLIENT_IP, SERVER_IP, port, SERVER_PORT, IpIds(random.Random(4)), random.Random(4))
        self._carry("c2s", server_view.segment(TCP_ACK, b"", self.now, seq=123457, ack=778))

    def _server_out(self) -> bool:
        events, packets = self.server.take_events(), self.server.take_packets()
        for event in events:
            if isinstance(event, FlowOpened):
                self.flows_opened.append(event.flow)
            elif isinstance(event, FlowClosed):
                self.flows_closed.append(event.flow)
            elif isinstance(event, FlowData):
                self.to_target.append(event)
                if self.echo:
                    self.server.send(event.flow, event.payload, self.now)
        for packet in packets:
            self._carry("s2c", packet)
        return bool(events or packets)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            deadline = min(self.client.next_deadline(), self.server.next_deadline())
            if deadline > end:
                break
            self.now = max(self.now, deadline)
            self.client.tick(self.now)
            self.server.tick(self.now)
            self.pump()
        self.now = end

    def app_send(self, payload: bytes, addr: tuple = APP) -> None:
        self.client.send(addr, payload, self.now)
        self.pump()

    def packets(self, direction: str) -> list[RawPacket]:
        return [parse_raw(p) for d, p in self.sent if d == direction]
