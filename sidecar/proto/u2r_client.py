"""The udp2raw client state machine (spec udp2raw.md 5, 6): one conn to one server, many local flows.

Sans-I/O. The driver feeds it parsed raw packets (`receive_raw`), local UDP datagrams (`send`) and the
time (`tick` at `next_deadline()`), then drains `take_events()` first (a `Handshaking` must re-filter
the raw socket before the SYN goes out) and `take_packets()` (whole IPv4 packets) second.

    idle -> [faketcp: tcp_handshake | easy-faketcp: tcp_handshake_dummy] -> handshake1 -> handshake2 -> ready
Every non-ready state resends each second and starts over (new port, new my_id) after 5 s; a ready
conn starts over when the server's heartbeats stop (10 s) or its roller freezes (12 s). The const_id
stays for the process lifetime, so the server moves our conv table to the new address.
"""

from __future__ import annotations

import random

from sidecar.errors import ProtocolError
from sidecar.metrics import Counters
from sidecar.proto.faketcp import FakeTcp, IpIds, is_handshake_segment
from sidecar.proto.l4 import ICMP_ECHO_REPLY, TCP_ACK, TCP_RST, TCP_SYN, IcmpHeader, RawPacket, TcpSegment
from sidecar.proto.u2r_conv import MAX_CONVS, ConvTable
from sidecar.proto.u2r_crypto import BlobCodec, Direction, Keys
from sidecar.proto.u2r_frame import DATA, Bare, Safer, parse_packet
from sidecar.proto.u2r_handshake import (
    PEER_SILENT_S,
    RETRY_S,
    ROLLER_FROZEN_S,
    STATE_TIMEOUT_S,
    ClientState,
    handshake1,
    handshake2,
    random_id,
)
from sidecar.proto.u2r_raw import PROTOCOL, IcmpPath, UdpPath, make_path
from sidecar.proto.u2r_session import (
    MAX_DATAGRAM,
    TICK_S,
    Deliver,
    Disconnected,
    Handshaking,
    Outputs,
    Ready,
    Session,
    U2rOptions,
    Wire,
)

COUNTERS = ("raw_in", "raw_foreign", "rejected", "rst", "handshakes", "ready", "reconnects", "heartbeats_in",
            "datagrams_in", "datagrams_out", "datagrams_dropped", "convs_opened", "convs_expired")
PORT_RANGE = (10000, 65534)


class U2rClient(Outputs):
    """One udp2raw client conn. `local_ip`/`server_ip` are 4-byte addresses (socket.inet_aton)."""

    def __init__(self, codec: BlobCodec, keys: Keys, options: U2rOptions, local_ip: bytes, server_ip: bytes,
                 server_port: int, *, source_port: int | None = None, const_id: int | None = None,
                 rng: random.Random | None = None, ip_ids: IpIds | None = None, max_convs: int = MAX_CONVS) -> None:
        super().__init__()
        self.options, self.local_ip, self.server_ip, self.server_port = options, local_ip, server_ip, server_port
        self.source_port = source_port
        self.rng = rng or random.Random()
        self.ids = ip_ids or IpIds(self.rng)
        self.const_id = const_id or random_id(self.rng)
        self.wire = Wire(codec, keys, options.fix_gro, Direction.C2S)
        self.convs: ConvTable[tuple] = ConvTable(max_convs)
        self.counters = Counters(COUNTERS)
        self._proto = PROTOCOL[options.raw_mode]
        self.state = ClientState.IDLE
        self.local_port = 0
        self.my_id = self.peer_id = self.start_seq = 0
        self.server_const_id = 0  # the server's, from its last handshake reply (0: none yet)
        self.new_server = False
        self.path: FakeTcp | UdpPath | IcmpPath | None = None
        self.session: Session | None = None
        self.state_since = self.last_send = self._tick_at = 0.0

    # --- outputs -----------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        if self.state is ClientState.READY:
            return self._tick_at
        return min(self._tick_at, self.last_send + RETRY_S, self.state_since + STATE_TIMEOUT_S)

    @property
    def server_key(self) -> tuple:
        return (self.server_ip, self.server_port)

    # --- inputs ------------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin connecting (call once); `reconnect` forces a fresh attempt later."""
        self._tick_at = now + TICK_S
        self._restart(now)

    def reconnect(self, now: float) -> None:
        """udp2raw's fifo command `reconnect`: drop the conn and handshake again from a new port."""
        self._restart(now, "reconnect requested")

    def send(self, addr: tuple, payload: bytes, now: float) -> None:
        """One datagram from the local UDP source `addr`."""
        self.counters["datagrams_in"] += 1
        if len(payload) > MAX_DATAGRAM:
            self.counters["datagrams_dropped"] += 1
            return
        conv = self.convs.conv_of(addr)
        if conv is None:
            conv = self.convs.new_conv(addr, now, self.rng)
            if conv is None:
                self.counters["datagrams_dropped"] += 1
                return
            self.counters["convs_opened"] += 1
        else:
            self.convs.touch(conv, now)
        if self.state is not ClientState.READY:
            self.counters["datagrams_dropped"] += 1
            return
        try:
            blob = self.wire.seal_safer(self.session.data(conv, payload))
        except ProtocolError:
            self.counters["datagrams_dropped"] += 1
            return
        self._packets.append(self.path.packet(blob, now))

    def receive_raw(self, packet: RawPacket, now: float) -> None:
        """One raw packet the driver captured (already parsed); anything not from our server is ignored."""
        self.counters["raw_in"] += 1
        l4 = packet.l4
        if not self._from_server(packet):
            self.counters["raw_foreign"] += 1
            return
        if isinstance(l4, TcpSegment):
            if l4.flags & TCP_RST:
                self._on_rst(now)
                return
            if not packet.payload and not l4.flags & TCP_SYN:
                return  # a bare ACK (in easy-faketcp also the kernel's own) carries nothing for us
        try:
            self._dispatch(packet, now)
        except ProtocolError:
            self.counters["rejected"] += 1

    def tick(self, now: float) -> None:
        if self.state is not ClientState.READY:
            if now - self.state_since >= STATE_TIMEOUT_S:
                self._restart(now)
            elif now - self.last_send >= RETRY_S:
                self._send_handshake(now)
        if now >= self._tick_at:
            self._tick_at = now + TICK_S
            self._periodic(now)

    # --- handshake ---------------------------------------------------------------------------------

    def _restart(self, now: float, reason: str = "") -> None:
        if self.state is ClientState.READY:
            self._events.append(Disconnected(self.server_key, reason))
            self.counters["reconnects"] += 1
        self.counters["handshakes"] += 1
        self.local_port = self.source_port or self.rng.randint(*PORT_RANGE)
        self._events.append(Handshaking(self.local_port))
        self.my_id, self.peer_id, self.session = random_id(self.rng), 0, None
        opts = self.options
        self.path = make_path(opts.raw_mode, self.local_ip, self.server_ip, self.local_port, self.server_port, self.ids,
                              self.rng, client=True, seq_mode=opts.seq_mode, ttl=opts.ttl)
        first = {"faketcp": ClientState.TCP_HANDSHAKE, "easy-faketcp": ClientState.TCP_HANDSHAKE_DUMMY}
        self._enter(first.get(opts.raw_mode, ClientState.HANDSHAKE1), now)

    def _enter(self, state: ClientState, now: float) -> None:
        self.state, self.state_since = state, now
        if isinstance(self.path, FakeTcp):
            self.start_seq = self.path.seq
        if state is ClientState.HANDSHAKE2:
            self.session = Session(self.my_id, self.peer_id, self.options, self.rng, now)
        self._send_handshake(now)

    def _send_handshake(self, now: float) -> None:
        self.last_send = now
        state, path = self.state, self.path
        if state is ClientState.TCP_HANDSHAKE:
            self._packets.append(path.syn(now))
            return
        if state is ClientState.HANDSHAKE1:
            plain = handshake1(self.my_id, self.const_id)
        elif state is ClientState.HANDSHAKE2:
            plain = handshake2(self.my_id, self.peer_id, self.const_id)
        else:
            return  # tcp_handshake_dummy: the kernel sends (and resends) the SYN
        blob = self.wire.seal(plain)
        if isinstance(path, FakeTcp):
            self._packets.append(path.handshake_packet(blob, self.start_seq, now))
        else:
            self._packets.append(path.packet(blob, now))

    def _from_server(self, packet: RawPacket) -> bool:
        l4 = packet.l4
        if packet.ip.proto != self._proto or packet.ip.src != self.server_ip:
            return False
        if isinstance(l4, IcmpHeader):
            return l4.type == ICMP_ECHO_REPLY and l4.ident == self.local_port
        return l4.sport == self.server_port and l4.dport == self.local_port

    def _dispatch(self, packet: RawPacket, now: float) -> None:
        state, l4 = self.state, packet.l4
        if state is ClientState.READY or state is ClientState.HANDSHAKE2:
            self._on_safer(packet, now)
        elif state is ClientState.HANDSHAKE1:
            self._on_reply(packet, now)
        elif state is ClientState.TCP_HANDSHAKE:
            ack = self.path.accept_syn_ack(l4, now)
            if ack is not None:
                self._packets.append(ack)
                self._enter(ClientState.HANDSHAKE1, now)
        elif state is ClientState.TCP_HANDSHAKE_DUMMY and _is_syn_ack(l4):
            self.path.learn_syn_ack(l4)
            self._enter(ClientState.HANDSHAKE1, now)

    def _on_reply(self, packet: RawPacket, now: float) -> None:
        l4, payload = packet.l4, packet.payload
        if isinstance(l4, TcpSegment) and not is_handshake_segment(l4):
            raise ProtocolError("u2r: handshake reply on a SYN or non-ACK segment")
        bare = parse_packet(self.wire.open(payload))
        if not isinstance(bare, Bare) or bare.id2 != self.my_id or not bare.id1:
            raise ProtocolError("u2r: not a reply to our handshake1")
        path = self.path
        if isinstance(path, FakeTcp):
            if not path.accept_handshake_reply(l4, len(payload)):
                raise ProtocolError("u2r: handshake reply with unexpected seq/ack")
        else:
            path.on_authentic(l4, len(payload))
        self.peer_id = bare.id1
        self.new_server = self.server_const_id not in (0, bare.id3)
        self.server_const_id = bare.id3
        self._enter(ClientState.HANDSHAKE2, now)

    # --- ready -------------------------------------------------------------------------------------

    def _on_safer(self, packet: RawPacket, now: float) -> None:
        accepted = self._accepted(packet, now)
        if not accepted:
            return
        self.path.on_authentic(packet.l4, len(packet.payload))  # before anything we send in answer
        for safer in accepted:
            if self.state is ClientState.HANDSHAKE2:
                self._become_ready(now)
            if safer.type == DATA:
                self._deliver(safer, now)
            else:
                self.counters["heartbeats_in"] += 1

    def _accepted(self, packet: RawPacket, now: float) -> list[Safer]:
        """The safer packets in a payload that open and belong to our session (others are counted)."""
        accepted = []
        for plain in self.wire.open_safer(packet.payload):
            safer = parse_packet(plain)
            if isinstance(safer, Safer) and self.session.accept(safer, now):
                accepted.append(safer)
            else:
                self.counters["rejected"] += 1
        return accepted

    def _become_ready(self, now: float) -> None:
        self.state, self.state_since = ClientState.READY, now
        self.counters["ready"] += 1
        self._events.append(Ready(self.server_key, new_server=self.new_server))
        self._send_heartbeat(now)

    def _deliver(self, safer: Safer, now: float) -> None:
        addr = self.convs.key_of(safer.conv)
        if addr is None:
            self.counters["datagrams_dropped"] += 1
            return
        self.convs.touch(safer.conv, now)
        self.counters["datagrams_out"] += 1
        self._events.append(Deliver(addr, bytes(safer.payload)))

    def _on_rst(self, now: float) -> None:
        """RSTs are not authenticated: only counted, unless --max-rst-allowed makes them end the conn."""
        self.counters["rst"] += 1
        session = self.session
        if self.state is ClientState.READY and session.too_many_rsts(self.options.max_rst_allowed):
            self._restart(now, f"more than {self.options.max_rst_allowed} RSTs")

    def _send_heartbeat(self, now: float) -> None:
        blob = self.wire.seal_safer(self.session.heartbeat(now))
        self._packets.append(self.path.packet(blob, now))

    def _periodic(self, now: float) -> None:
        self.counters["convs_expired"] += len(self.convs.expire(now))
        if self.state is not ClientState.READY:
            return
        session = self.session
        if now - session.last_peer_hb >= PEER_SILENT_S:
            self._restart(now, "no heartbeat from the server")
        elif now - session.peer_roller_since >= ROLLER_FROZEN_S:
            self._restart(now, "the server stopped hearing us (roller frozen)")
        elif session.heartbeat_due(now):
            self._send_heartbeat(now)


def _is_syn_ack(l4: object) -> bool:
    return isinstance(l4, TcpSegment) and l4.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
