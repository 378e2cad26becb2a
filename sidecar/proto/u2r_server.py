"""The udp2raw server state machine (spec udp2raw.md 5, 6): many client conns, each with its convs.

Sans-I/O. The driver feeds it parsed raw packets (`receive_raw`), replies from the target per flow
(`send`) and the time (`tick` at `next_deadline()`), and drains `take_events()` (open/close a UDP
socket per flow, data for it) and `take_packets()` (whole IPv4 packets).

A conn is keyed by the client's (IP, port) -- for ICMP (IP, echo id). SYNs are answered without state;
a hello creates a half-open entry in a capped table (the only state a stranger can make us keep);
handshake2 makes the conn ready, or moves the ready conn with the same const_id (a reconnecting
client) to the new address with its convs, so the flows -- and their flow ids -- survive.
"""

from __future__ import annotations

import random

from sidecar.errors import ProtocolError
from sidecar.metrics import Counters
from sidecar.proto.faketcp import FakeTcp, IpIds, is_handshake_segment
from sidecar.proto.l4 import ICMP_ECHO_REQUEST, TCP_ACK, TCP_RST, TCP_SYN, IcmpHeader, RawPacket, TcpSegment
from sidecar.proto.u2r_conv import MAX_CONVS, ConvTable
from sidecar.proto.u2r_crypto import BlobCodec, Direction, Keys
from sidecar.proto.u2r_frame import DATA, Bare, Safer, parse_packet
from sidecar.proto.u2r_handshake import (
    MAX_HALF_OPEN,
    MAX_READY,
    SERVER_CONN_TIMEOUT_S,
    HalfOpenTable,
    is_hello,
    random_id,
    reply,
)
from sidecar.proto.u2r_raw import PROTOCOL, IcmpPath, UdpPath, make_path
from sidecar.proto.u2r_session import (
    MAX_DATAGRAM,
    TICK_S,
    Disconnected,
    FlowClosed,
    FlowData,
    FlowOpened,
    Outputs,
    Ready,
    Session,
    U2rOptions,
    Wire,
)

COUNTERS = ("raw_in", "raw_foreign", "rejected", "rst", "syn_answered", "hellos", "half_open_full",
            "half_open_expired", "ready", "moved", "ready_full", "conns_expired", "heartbeats_in",
            "datagrams_in", "datagrams_out", "datagrams_dropped", "convs_opened", "convs_expired", "convs_full")

Path = FakeTcp | UdpPath | IcmpPath


class ServerConn:
    """One ready client conn: its address key, raw path, safer session, const_id and convs."""

    __slots__ = ("key", "path", "session", "const_id", "convs")

    def __init__(self, key: tuple, path: Path, session: Session, const_id: int, convs: ConvTable[int]) -> None:
        self.key, self.path, self.session, self.const_id, self.convs = key, path, session, const_id, convs


class U2rServer(Outputs):
    """All conns of one udp2raw server (`-l listen_ip:listen_port`; listen_ip None = any address)."""

    def __init__(self, codec: BlobCodec, keys: Keys, options: U2rOptions, listen_ip: bytes | None,
                 listen_port: int, *, const_id: int | None = None, rng: random.Random | None = None,
                 ip_ids: IpIds | None = None, max_half_open: int = MAX_HALF_OPEN, max_ready: int = MAX_READY,
                 max_convs: int = MAX_CONVS) -> None:
        super().__init__()
        self.options, self.listen_ip, self.listen_port = options, listen_ip, listen_port
        self.rng = rng or random.Random()
        self.ids = ip_ids or IpIds(self.rng)
        self.const_id = const_id or random_id(self.rng)
        self.wire = Wire(codec, keys, options.fix_gro, Direction.S2C)
        self.half_open = HalfOpenTable(max_half_open)
        self.max_ready, self.max_convs = max_ready, max_convs
        self.ready: dict[tuple, ServerConn] = {}
        self.by_const: dict[int, ServerConn] = {}
        self.flows: dict[int, tuple[ServerConn, int]] = {}
        self.counters = Counters(COUNTERS)
        self._proto = PROTOCOL[options.raw_mode]
        self._answer_syn = options.raw_mode == "faketcp"  # easy-faketcp: the kernel's listen socket does
        self._next_flow = 1
        self._tick_at = 0.0

    # --- outputs -----------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        return self._tick_at

    # --- inputs ------------------------------------------------------------------------------------

    def receive_raw(self, packet: RawPacket, now: float) -> None:
        self.counters["raw_in"] += 1
        key = self._key(packet)
        if key is None:
            self.counters["raw_foreign"] += 1
            return
        conn, l4 = self.ready.get(key), packet.l4
        if isinstance(l4, TcpSegment):
            if l4.flags & TCP_RST:
                self.counters["rst"] += 1
                if conn is not None and conn.session.too_many_rsts(self.options.max_rst_allowed):
                    self._drop(conn, f"more than {self.options.max_rst_allowed} RSTs")
                return
            if l4.flags & (TCP_SYN | TCP_ACK) == TCP_SYN:
                self._on_syn(packet, l4, conn, now)
                return
            if not is_handshake_segment(l4):
                self.counters["rejected"] += 1
                return
            if not packet.payload:
                return  # the client's bare ACK (or its kernel's, in easy-faketcp): nothing to do
        try:
            if conn is None:
                self._on_bare(key, packet, now)
            else:
                self._on_safer(conn, packet, now)
        except ProtocolError:
            self.counters["rejected"] += 1

    def send(self, flow: int, payload: bytes, now: float) -> None:
        """One datagram the target sent back on the socket of `flow`."""
        entry = self.flows.get(flow)
        if entry is None or len(payload) > MAX_DATAGRAM:
            self.counters["datagrams_dropped"] += 1
            return
        conn, conv = entry
        try:
            blob = self.wire.seal_safer(conn.session.data(conv, payload))
        except ProtocolError:
            self.counters["datagrams_dropped"] += 1
            return
        self.counters["datagrams_in"] += 1
        self._packets.append(conn.path.packet(blob, now))

    def tick(self, now: float) -> None:
        if now < self._tick_at:
            return
        self._tick_at = now + TICK_S
        self.counters["half_open_expired"] += self.half_open.expire(now)
        for conn in list(self.ready.values()):
            self._periodic(conn, now)

    # --- handshake ---------------------------------------------------------------------------------

    def _key(self, packet: RawPacket) -> tuple | None:
        """The conn key of a packet addressed to us, or None."""
        ip, l4 = packet.ip, packet.l4
        if ip.proto != self._proto or (self.listen_ip is not None and ip.dst != self.listen_ip):
            return None
        if isinstance(l4, IcmpHeader):
            return (ip.src, l4.ident) if l4.type == ICMP_ECHO_REQUEST else None
        return (ip.src, l4.sport) if l4.dport == self.listen_port else None

    def _new_path(self, packet: RawPacket) -> Path:
        """A path back to the sender of `packet`, continuing from its header (spec 2.5 step 4)."""
        ip, l4, opts = packet.ip, packet.l4, self.options
        peer = l4.ident if isinstance(l4, IcmpHeader) else l4.sport
        path = make_path(opts.raw_mode, ip.dst, ip.src, self.listen_port, peer, self.ids, self.rng, client=False,
                         seq_mode=opts.seq_mode, ttl=opts.ttl)
        if isinstance(path, FakeTcp):
            path.learn_handshake(l4, len(packet.payload))
        else:
            path.on_authentic(l4, len(packet.payload))
        return path

    def _on_syn(self, packet: RawPacket, syn: TcpSegment, conn: ServerConn | None, now: float) -> None:
        """Answer a SYN from an address without a ready conn, keeping no state (spec 2.5 step 2)."""
        if conn is not None or not self._answer_syn:
            self.counters["rejected"] += 1
            return
        ip = packet.ip
        path = FakeTcp(ip.dst, ip.src, self.listen_port, syn.sport, self.ids, self.rng, ttl=self.options.ttl)
        self._packets.append(path.syn_ack(syn, now))
        self.counters["syn_answered"] += 1

    def _on_bare(self, key: tuple, packet: RawPacket, now: float) -> None:
        bare = parse_packet(self.wire.open(packet.payload))
        if not isinstance(bare, Bare):
            raise ProtocolError("u2r: a safer packet from an address without a ready conn")
        if is_hello(bare):
            entry = self.half_open.open(key, self.rng, now)
            if entry is None:
                self.counters["half_open_full"] += 1
                return
            self.counters["hellos"] += 1
            self._send(self._new_path(packet), self.wire.seal(reply(entry.my_id, bare.id1, self.const_id)), now)
            return
        entry = self.half_open.get(key)
        if entry is None or bare.id2 != entry.my_id or not bare.id1:
            raise ProtocolError("u2r: handshake2 that matches no half-open conn")
        self.half_open.pop(key)
        self._go_ready(key, entry.my_id, bare, self._new_path(packet), now)

    def _go_ready(self, key: tuple, my_id: int, bare: Bare, path: Path, now: float) -> None:
        conn = self.by_const.get(bare.id3)
        moved = conn is not None
        if conn is not None:  # the same client process from a new address: move its conn here
            del self.ready[conn.key]
            conn.key, conn.path = key, path
            conn.session.rekey(my_id, bare.id1, now)
            self.counters["moved"] += 1
        elif len(self.ready) >= self.max_ready:
            self.counters["ready_full"] += 1
            return
        else:
            conn = ServerConn(key, path, Session(my_id, bare.id1, self.options, self.rng, now), bare.id3,
                              ConvTable(self.max_convs))
            self.by_const[bare.id3] = conn
        self.ready[key] = conn
        self.counters["ready"] += 1
        self._events.append(Ready(key, moved))
        self._send_heartbeat(conn, now)

    # --- ready -------------------------------------------------------------------------------------

    def _on_safer(self, conn: ServerConn, packet: RawPacket, now: float) -> None:
        accepted = []
        for plain in self.wire.open_safer(packet.payload):
            safer = parse_packet(plain)
            if isinstance(safer, Safer) and conn.session.accept(safer, now):
                accepted.append(safer)
            else:
                self.counters["rejected"] += 1
        if accepted:
            conn.path.on_authentic(packet.l4, len(packet.payload))
        for safer in accepted:
            if safer.type == DATA:
                self._on_data(conn, safer, now)
            else:
                self.counters["heartbeats_in"] += 1

    def _on_data(self, conn: ServerConn, safer: Safer, now: float) -> None:
        conv = safer.conv
        flow = conn.convs.key_of(conv)
        if flow is None:
            flow = self._next_flow
            if not conn.convs.add(conv, flow, now):
                self.counters["convs_full"] += 1
                return
            self._next_flow += 1
            self.flows[flow] = (conn, conv)
            self.counters["convs_opened"] += 1
            self._events.append(FlowOpened(flow))
        else:
            conn.convs.touch(conv, now)
        self.counters["datagrams_out"] += 1
        self._events.append(FlowData(flow, bytes(safer.payload)))

    def _send(self, path: Path, blob: bytes, now: float) -> None:
        self._packets.append(path.packet(blob, now))

    def _send_heartbeat(self, conn: ServerConn, now: float) -> None:
        self._send(conn.path, self.wire.seal_safer(conn.session.heartbeat(now)), now)

    def _periodic(self, conn: ServerConn, now: float) -> None:
        for _conv, flow in conn.convs.expire(now):
            del self.flows[flow]
            self.counters["convs_expired"] += 1
            self._events.append(FlowClosed(flow))
        if not len(conn.convs) and now - conn.session.last_peer_hb >= SERVER_CONN_TIMEOUT_S:
            self.counters["conns_expired"] += 1
            self._drop(conn, "no heartbeat and no convs")
        elif conn.session.heartbeat_due(now):
            self._send_heartbeat(conn, now)

    def _drop(self, conn: ServerConn, reason: str) -> None:
        """Forget a ready conn and close the flows it still has."""
        del self.ready[conn.key]
        del self.by_const[conn.const_id]
        for _conv, flow in conn.convs.items():
            del self.flows[flow]
            self._events.append(FlowClosed(flow))
        self._events.append(Disconnected(conn.key, reason))
