"""The udp2raw client and server state machines, talking in memory (tests/proto/u2r_sim.py).

Every raw mode with every cipher x auth; the handshake's packets as the captures show them; heartbeats,
the roller and liveness; reconnects that keep flows; floods that cost bounded state; any loss pattern.
"""

from __future__ import annotations

import functools
import random
import socket
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.proto.ipv4 import PROTO_ICMP, PROTO_TCP, PROTO_UDP, build_ipv4
from sidecar.proto.l4 import TCP_ACK, TCP_SYN, build_icmp_echo, build_tcp, build_udp, parse_raw
from sidecar.proto.u2r_crypto import AUTH_MODES, Direction
from sidecar.proto.u2r_frame import Bare, Safer, parse_packet
from sidecar.proto.u2r_handshake import ClientState, HalfOpenTable
from sidecar.proto.u2r_session import Deliver, U2rOptions
from tests.proto.u2r_sim import APP, CLIENT_IP, SERVER_IP, SERVER_PORT, Net, make_client, make_server

CIPHERS = ("aes128cbc", "aes128cfb", "xor", "none")
MODES = ("faketcp", "easy-faketcp", "udp", "icmp")
SIZES = (1, 7, 64, 500, 1300, 1700)


def connected(mode: str = "faketcp", cipher: str = "aes128cbc", auth: str = "md5", wire=None, **opts) -> Net:
    options = U2rOptions(raw_mode=mode, **opts)
    net = Net(make_client(options, cipher, auth), make_server(options, cipher, auth), wire)
    net.start()
    assert net.client.state is ClientState.READY, net.client.counters.line()
    return net


def blob_plain(net: Net, raw, direction: Direction):
    return parse_packet(net.client.wire.codec.open(raw.payload, direction))


# --- every mode x cipher x auth -------------------------------------------------------------------


@pytest.mark.parametrize("auth", AUTH_MODES)
@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("mode", MODES)
def test_udp_both_ways(mode: str, cipher: str, auth: str) -> None:
    net = connected(mode, cipher, auth)
    payloads = [bytes([n % 251]) * n for n in SIZES]
    for payload in payloads:
        net.app_send(payload)
    assert [d.payload for d in net.to_target] == payloads
    assert net.delivered == [Deliver(APP, p) for p in payloads]
    assert len(net.flows_opened) == 1
    assert net.client.counters["rejected"] == 0
    assert net.server.counters["rejected"] <= (mode == "easy-faketcp")  # its kernel SYN


def test_two_local_sources_get_two_convs_and_two_flows() -> None:
    net = connected()
    net.app_send(b"a", ("127.0.0.1", 1))
    net.app_send(b"b", ("127.0.0.1", 2))
    net.app_send(b"c", ("127.0.0.1", 1))
    assert [(d.addr[1], d.payload) for d in net.delivered] == [(1, b"a"), (2, b"b"), (1, b"c")]
    assert len(net.flows_opened) == 2 and len(net.client.convs) == 2


def test_fix_gro_framing_carries_data() -> None:
    net = connected("faketcp", "aes128cbc", "md5", fix_gro=True)
    net.app_send(b"x" * 1000)
    assert net.delivered[-1].payload == b"x" * 1000


def test_not_ready_datagrams_are_dropped_but_get_a_conv() -> None:
    client = make_client(U2rOptions())
    client.start(0.0)
    client.take_packets()
    client.send(APP, b"early", 0.0)
    assert client.take_packets() == []
    assert client.counters["datagrams_dropped"] == 1 and len(client.convs) == 1


@pytest.mark.parametrize(("cipher", "auth", "largest"), [("none", "none", 1778), ("aes128cbc", "md5", 1753),
                                                         ("xor", "crc32", 1774)])
def test_datagrams_the_peer_would_call_huge_are_dropped(cipher: str, auth: str, largest: int) -> None:
    net = connected("udp", cipher, auth)
    net.app_send(bytes(largest))
    net.app_send(bytes(largest + 1))
    assert [len(d.payload) for d in net.to_target] == [largest]
    assert net.client.counters["datagrams_dropped"] == 1


# --- the handshake on the wire, as the captures show it -------------------------------------------


def test_faketcp_handshake_numbers_follow_the_capture() -> None:
    net = connected()
    c2s, s2c = net.packets("c2s"), net.packets("s2c")
    syn, bare_ack, hs1, hs2, c_hb = (p.l4 for p in c2s[:5])
    syn_ack, rep, s_hb = (p.l4 for p in s2c[:3])
    assert syn.flags == TCP_SYN and syn.tsecr == 0
    assert syn_ack.flags == TCP_SYN | TCP_ACK and syn_ack.ack == syn.seq + 1 and syn_ack.tsecr == syn.tsval
    assert (bare_ack.flags, bare_ack.seq, bare_ack.ack) == (TCP_ACK, syn.seq + 1, syn_ack.seq + 1)
    assert (hs1.seq, hs1.ack) == (syn.seq + 1, syn_ack.seq + 1) and not len(c2s[1].payload)
    assert (rep.seq, rep.ack) == (hs1.ack, hs1.seq + len(c2s[2].payload))
    assert (hs2.seq, hs2.ack) == (rep.ack, rep.seq + len(s2c[1].payload))
    assert (s_hb.seq, s_hb.ack) == (hs2.ack, hs2.seq + len(c2s[3].payload))
    assert (c_hb.seq, c_hb.ack) == (s_hb.ack, s_hb.seq + len(s2c[2].payload))
    assert all(p.l4.flags == TCP_ACK for p in c2s[1:] + s2c[1:])
    assert all(40960 <= p.l4.window < 40960 + 512 for p in c2s + s2c)
    kinds = [blob_plain(net, p, Direction.C2S) for p in c2s[2:4]]
    assert isinstance(kinds[0], Bare) and kinds[0].id2 == 0 and kinds[0].id3 == net.client.const_id
    assert kinds[1].id2 == net.client.peer_id
    ids = {p.ip.ident for p in c2s}
    assert len(ids) == len(c2s)  # IP id +1 per packet


def test_icmp_sequence_numbers_pair_like_pings() -> None:
    net = connected("icmp")
    net.app_send(b"ping")
    requests = [(p.l4.type, p.l4.ident, p.l4.seq) for p in net.packets("c2s")]
    replies = [(p.l4.type, p.l4.ident, p.l4.seq) for p in net.packets("s2c")]
    port = net.client.local_port
    assert requests == [(8, port, n) for n in range(len(requests))]  # hs1, hs2, heartbeat, data
    assert replies == [(0, port, 0), (0, port, 1), (0, port, 3)]  # reply, heartbeat, echoed data


# --- heartbeats, the roller, liveness -------------------------------------------------------------


def heartbeats(net: Net, direction: str, since: int = 0) -> list[Safer]:
    sender = Direction.C2S if direction == "c2s" else Direction.S2C
    found = []
    for d, packet in net.sent[since:]:
        raw = parse_raw(packet)
        if d == direction and len(raw.payload):
            plain = parse_packet(net.client.wire.codec.open(raw.payload, sender))
            if isinstance(plain, Safer) and plain.type == "h":
                found.append(plain)
    return found


def test_heartbeats_every_800ms_with_counting_rollers() -> None:
    net = connected()
    mark = len(net.sent)
    net.advance(8.0)
    client_hbs, server_hbs = heartbeats(net, "c2s", mark), heartbeats(net, "s2c", mark)
    assert 9 <= len(client_hbs) <= 11 and 9 <= len(server_hbs) <= 11
    assert all(len(h.payload) == 1200 and not any(h.payload) for h in client_hbs)
    rollers = [h.roller for h in server_hbs]
    assert rollers == sorted(rollers) and rollers[-1] - rollers[0] >= 8


def test_hb_mode_0_sends_empty_heartbeats() -> None:
    net = connected(hb_mode=0)
    net.advance(2.0)
    assert heartbeats(net, "c2s") and all(len(h.payload) == 0 for h in heartbeats(net, "c2s"))
    assert net.client.state is ClientState.READY


class Cut:
    """A wire that drops one direction while `direction` is set."""

    def __init__(self) -> None:
        self.direction = ""

    def __call__(self, direction: str, packet: bytes) -> list[bytes]:
        return [] if direction == self.direction else [packet]


def test_silent_server_makes_the_client_reconnect_after_10_s() -> None:
    cut = Cut()
    net = connected(wire=cut)
    cut.direction = "s2c"
    net.advance(9.5)
    assert net.client.counters["reconnects"] == 0
    net.advance(1.0)
    assert net.client.counters["reconnects"] == 1 and net.client.state is not ClientState.READY


def test_frozen_server_roller_makes_the_client_reconnect_after_12_s() -> None:
    cut = Cut()
    net = connected(wire=cut)
    cut.direction = "c2s"  # the server keeps sending heartbeats but stops hearing ours
    net.advance(11.5)
    assert net.client.counters["reconnects"] == 0
    net.advance(2.0)  # 12 s after the roller's last change, which may follow the cut by one heartbeat
    assert net.client.counters["reconnects"] == 1


def test_dead_server_means_a_new_port_and_syn_every_5_s() -> None:
    cut = Cut()
    cut.direction = "s2c"
    options = U2rOptions()
    net = Net(make_client(options), make_server(options), cut)
    net.start()
    net.advance(16.0)
    syns = [p for d, p in net.sent if d == "c2s" and parse_raw(p).l4.flags == TCP_SYN]
    assert len(net.ports) == 4 and len(set(net.ports)) == 4  # start, +5 s, +10 s, +15 s
    assert 15 <= len(syns) <= 17  # one per second
    assert all(10000 <= port <= 65534 for port in net.ports)


# --- reconnects keep flows ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["faketcp", "udp", "icmp"])
def test_reconnect_from_a_new_port_keeps_the_flow(mode: str) -> None:
    net = connected(mode)
    net.app_send(b"before")
    flow, port = net.flows_opened[0], net.client.local_port
    net.client.reconnect(net.now)
    net.pump()
    assert net.client.state is ClientState.READY and net.client.local_port != port
    assert net.server.counters["moved"] == 1 and len(net.server.ready) == 1
    net.app_send(b"after")
    assert net.flows_opened == [flow] and net.to_target[-1].flow == flow
    assert net.delivered[-1] == Deliver(APP, b"after")


def test_readdressed_client_keeps_the_flow() -> None:
    net = connected()
    net.app_send(b"before")
    net.client.local_ip = socket.inet_aton("10.77.0.9")
    net.client.reconnect(net.now)
    net.pump()
    net.app_send(b"after")
    assert list(net.server.ready) == [(socket.inet_aton("10.77.0.9"), net.client.local_port)]
    assert net.flows_opened == [1] and [d.payload for d in net.delivered] == [b"before", b"after"]


def test_restarted_server_is_reached_again_within_15_s() -> None:
    net = connected()
    net.app_send(b"one")
    net.server = make_server(U2rOptions(), seed=9)
    waited = 0.0
    while net.client.state is not ClientState.READY or not net.client.counters["reconnects"]:
        net.advance(0.5)
        waited += 0.5
        assert waited <= 15
    net.app_send(b"two")
    assert net.delivered[-1] == Deliver(APP, b"two")


# --- rejection: replays, garbage, floods ----------------------------------------------------------


def test_replayed_data_is_rejected_and_counted() -> None:
    net = connected()
    net.app_send(b"once")
    data = [p for d, p in net.sent if d == "c2s"][-1]
    net.server.receive_raw(parse_raw(data), net.now)
    net.pump()
    assert [d.payload for d in net.to_target] == [b"once"] and net.server.counters["rejected"] == 1


def udp_from(src: bytes, sport: int, payload: bytes) -> bytes:
    udp = build_udp(src, SERVER_IP, sport, SERVER_PORT, payload)
    return build_ipv4(src, SERVER_IP, PROTO_UDP, len(udp), 1) + udp


def spoofed(n: int) -> bytes:
    return socket.inet_aton(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")


def test_garbage_from_many_addresses_keeps_no_state() -> None:
    net = connected("udp")
    rng = random.Random(5)
    for n in range(1000):
        net.server.receive_raw(parse_raw(udp_from(spoofed(n), 20000, rng.randbytes(rng.randrange(0, 1500)))), net.now)
    assert net.server.counters["rejected"] == 1000
    assert len(net.server.half_open) == 0 and len(net.server.ready) == 1
    net.app_send(b"still fine")
    assert net.delivered[-1].payload == b"still fine"


def syn_from(src: bytes, sport: int) -> bytes:
    tcp = build_tcp(src, SERVER_IP, sport=sport, dport=SERVER_PORT, seq=sport, ack=0, flags=TCP_SYN, window=41000,
                    tsval=1, tsecr=0)
    return build_ipv4(src, SERVER_IP, PROTO_TCP, len(tcp), 1) + tcp


def test_spoofed_syns_are_answered_without_state() -> None:
    net = connected()
    for n in range(500):
        net.server.receive_raw(parse_raw(syn_from(spoofed(n), 30000 + n)), net.now)
    answers = [parse_raw(p).l4 for p in net.server.take_packets()]
    assert net.server.counters["syn_answered"] == 501 and len(answers) == 500
    assert all(a.flags == TCP_SYN | TCP_ACK and a.ack == a.dport + 1 for a in answers)
    assert len(net.server.half_open) == 0 and len(net.server.ready) == 1


def test_replayed_hellos_from_many_addresses_fill_a_capped_table() -> None:
    options = U2rOptions(raw_mode="udp")
    net = Net(make_client(options), make_server(options, max_half_open=200))
    net.start()
    hello = net.packets("c2s")[0].payload.tobytes()
    for n in range(600):
        net.server.receive_raw(parse_raw(udp_from(spoofed(n), 20000, hello)), net.now)
    net.server.take_packets()
    assert len(net.server.half_open) == 200 and net.server.counters["half_open_full"] == 400
    net.app_send(b"existing conn unaffected")
    assert net.delivered[-1].payload == b"existing conn unaffected"
    net.advance(10.5)
    assert len(net.server.half_open) == 0 and net.server.counters["half_open_expired"] == 200


def test_half_open_memory_is_bounded() -> None:
    """Three times the cap in hellos: the table stops at the cap, a few hundred bytes an entry (so the
    default cap of 10000 costs a few MB at most)."""
    table = HalfOpenTable(limit=2000)
    rng = random.Random(1)
    tracemalloc.start()
    for n in range(6000):
        table.open((spoofed(n), n & 0xFFFF), rng, 0.0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(table) == 2000 and peak / 2000 < 400


# --- any loss, duplication or reordering: never an exception, always recovers ---------------------


class Lossy:
    def __init__(self, seed: int, loss: float, dup: float) -> None:
        self.rng, self.loss, self.dup, self.on = random.Random(seed), loss, dup, True
        self.held: bytes | None = None

    def __call__(self, direction: str, packet: bytes) -> list[bytes]:
        if not self.on:
            return [packet]
        if self.rng.random() < self.loss:
            return []
        out = [packet] * (2 if self.rng.random() < self.dup else 1)
        if self.rng.random() < 0.2:  # reorder: hold this one back behind the next
            out, self.held = ([self.held] if self.held else []), packet
        return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.floats(0, 0.6), st.floats(0, 0.3), st.sampled_from(MODES))
def test_lossy_link_never_raises_and_recovers(seed: int, loss: float, dup: float, mode: str) -> None:
    wire = Lossy(seed, loss, dup)
    options = U2rOptions(raw_mode=mode)
    net = Net(make_client(options, seed=seed), make_server(options, seed=seed + 1), wire)
    net.start()
    for n in range(20):
        net.app_send(bytes([n]) * (n * 50 + 1))
        net.advance(0.3)
    wire.on = False
    net.advance(20.0)
    net.app_send(b"final")
    assert net.client.state is ClientState.READY and net.delivered[-1].payload == b"final"


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(["tcp", "udp", "icmp"]), st.integers(0, 0xFF))
def test_fuzzed_raw_packets_never_raise(payload: bytes, kind: str, flags: int) -> None:
    net = _fuzz_net()
    src = SERVER_IP
    if kind == "icmp":
        body = build_icmp_echo(0, net.client.local_port, 0, payload)
        packets = [build_ipv4(src, CLIENT_IP, PROTO_ICMP, len(body), 1) + body]
    elif kind == "udp":
        body = build_udp(src, CLIENT_IP, SERVER_PORT, net.client.local_port, payload)
        packets = [build_ipv4(src, CLIENT_IP, PROTO_UDP, len(body), 1) + body]
    else:
        body = build_tcp(src, CLIENT_IP, sport=SERVER_PORT, dport=net.client.local_port, seq=1, ack=2, flags=flags,
                         window=1, tsval=0, tsecr=0, payload=payload)
        packets = [build_ipv4(src, CLIENT_IP, PROTO_TCP, len(body), 1) + body]
    for packet in packets:
        net.client.receive_raw(parse_raw(packet), net.now)
        mirrored = packet[:12] + packet[16:20] + packet[12:16] + packet[20:]
        net.server.receive_raw(parse_raw(mirrored), net.now)


@functools.cache
def _fuzz_net() -> Net:
    """One connected pair for every fuzz example: garbage must not disturb it."""
    return connected("udp")


def test_half_open_table_expires_in_creation_order() -> None:
    table = HalfOpenTable(limit=3, timeout_s=10.0)
    rng = random.Random(1)
    first = table.open(("a", 1), rng, 0.0)
    assert table.open(("a", 1), rng, 5.0) == first  # a repeated hello keeps the same server id
    table.open(("b", 1), rng, 1.0)
    table.open(("c", 1), rng, 2.0)
    assert table.open(("d", 1), rng, 3.0) is None
    assert table.open(("d", 1), rng, 10.0) is not None and table.get(("a", 1)) is None
    assert table.expire(12.5) == 2 and len(table) == 1 and table.next_expiry() == 20.0



def test_idle_convs_expire_after_180_s_and_close_their_flow() -> None:
    net = connected()
    net.app_send(b"x")
    net.advance(179.0)
    assert not net.flows_closed and len(net.client.convs) == 1
    net.advance(1.5)
    assert net.flows_closed == net.flows_opened and not net.server.flows and len(net.client.convs) == 0
    assert net.client.state is ClientState.READY  # heartbeats keep the conn itself


def test_server_conn_without_heartbeats_or_convs_is_deleted_after_240_s() -> None:
    cut = Cut()
    net = connected(wire=cut)
    cut.direction = "c2s"
    net.advance(239.0)
    assert len(net.server.ready) == 1
    net.advance(1.5)
    assert not net.server.ready and not net.server.by_const and net.server.counters["conns_expired"] == 1


def test_fixed_source_port_is_reused_by_every_attempt() -> None:
    cut = Cut()
    cut.direction = "s2c"
    options = U2rOptions()
    net = Net(make_client(options, source_port=40000), make_server(options), cut)
    net.start()
    net.advance(11.0)
    assert net.ports == [40000, 40000, 40000]  # each attempt is announced: the driver re-reserves, re-connects


def rst_to(net: Net, direction: str) -> bytes:
    """A RST on the conn's ports, as a middlebox or a kernel without the DROP rule would send."""
    c2s = direction == "c2s"
    src, dst = (CLIENT_IP, SERVER_IP) if c2s else (SERVER_IP, CLIENT_IP)
    sport, dport = (net.client.local_port, SERVER_PORT) if c2s else (SERVER_PORT, net.client.local_port)
    tcp = build_tcp(src, dst, sport=sport, dport=dport, seq=0, ack=0, flags=0x04, window=0, tsval=0, tsecr=0)
    return build_ipv4(src, dst, PROTO_TCP, len(tcp), 1) + tcp


def test_rsts_are_only_counted_by_default() -> None:
    net = connected()
    for _ in range(50):
        net.client.receive_raw(parse_raw(rst_to(net, "s2c")), net.now)
        net.server.receive_raw(parse_raw(rst_to(net, "c2s")), net.now)
    assert net.client.counters["rst"] == net.server.counters["rst"] == 50
    assert net.client.state is ClientState.READY and len(net.server.ready) == 1


def test_max_rst_allowed_drops_the_conn_at_n_plus_one() -> None:
    net = connected(max_rst_allowed=2)
    net.app_send(b"x")
    for _ in range(3):
        net.server.receive_raw(parse_raw(rst_to(net, "c2s")), net.now)
    net.pump()
    assert not net.server.ready and net.flows_closed == net.flows_opened == [1]
    port = net.client.local_port
    for n in range(3):
        assert net.client.counters["reconnects"] == 0, n
        net.client.receive_raw(parse_raw(rst_to(net, "s2c")), net.now)
    assert net.client.counters["reconnects"] == 1 and net.client.local_port != port
