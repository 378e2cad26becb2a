"""Datagram FEC: framing, recovery of any `parity` losses per group, waits, duplicates, bounds, adaptation."""

import math
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import ConfigError, ProtocolError
from sidecar.proto.dgram_fec import (
    EXPIRE_S,
    HEADER_SIZE,
    KIND_DATA,
    KIND_PARITY,
    MAX_GROUPS,
    MAX_HELD_BYTES,
    MAX_PAYLOAD,
    SEQ_MASK,
    TARGET_GROUP_LOSS,
    WINDOW,
    FecDecoder,
    FecEncoder,
    FecParams,
    Header,
    adaptive_parity,
    parse_header,
    parse_ratio,
    quantize_loss,
)

HEADER = struct.Struct(">IBBBB")
STEP_S = 1e-4  # between packets of one burst: far below any wait used here


def distinct_payloads(count: int, rnd: random.Random, max_size: int = 1400) -> list[bytes]:
    """Payloads that differ (index prefix), so a wrong rebuild can never look right."""
    return [struct.pack(">I", i) + rnd.randbytes(rnd.randrange(max_size - 3)) for i in range(count)]


def send_groups(encoder: FecEncoder, groups: list[list[bytes]], now: float = 0.0) -> list[list[bytes]]:
    """Packets of each group: its payloads back to back, closed by `tick` at its deadline if not filled."""
    out = []
    for payloads in groups:
        packets: list[bytes] = []
        for payload in payloads:
            packets += encoder.encode(payload, now)
            now += STEP_S
        if math.isfinite(encoder.next_deadline()):
            now = encoder.next_deadline()
            packets += encoder.tick(now)
        out.append(packets)
        now += STEP_S
    return out


def deliver(decoder: FecDecoder, packets: list[bytes], now: float = 0.0) -> list[bytes]:
    return [payload for packet in packets for payload in decoder.decode(packet, now)]


def header(kind: int, seq: int, index: int, count: int, parity: int, feedback: int = 0) -> bytes:
    return HEADER.pack(kind << 24 | seq, index, count, parity, feedback)


# ---- parameters and header -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ratio"), [("2:2", (2, 2)), (" 20:10 ", (20, 10)), ("1:0", (1, 0)), ("64:64", (64, 64))]
)
def test_parse_ratio(text, ratio):
    assert parse_ratio(text, "fec") == ratio


@pytest.mark.parametrize("text", ["", "2", "2:", ":2", "0:2", "65:1", "2:65", "2:-1", "a:b", "2:2:2", "2/2"])
def test_parse_ratio_rejects_with_the_key(text):
    with pytest.raises(ConfigError) as error:
        parse_ratio(text, "udp.fec")
    assert error.value.key == "udp.fec" and error.value.value == text


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (FecParams(0, 1, 0.02), "data"),
        (FecParams(65, 1, 0.02), "data"),
        (FecParams(2, -1, 0.02), "parity"),
        (FecParams(2, 65, 0.02), "parity"),
        (FecParams(2, 2, -0.1), "wait_s"),
        (FecParams(2, 2, math.nan), "wait_s"),
        (FecParams(2, 2, 0.02, max_parity=65), "max_parity"),
        (FecParams(2, 4, 0.02, adaptive=True, max_parity=3), "max_parity"),
    ],
)
def test_bad_params_are_config_errors(params, field):
    for cls in (FecEncoder, FecDecoder):
        with pytest.raises(ConfigError) as error:
            cls(params)
        assert error.value.key == f"fec.{field}"


def test_header_layout():
    encoder = FecEncoder(FecParams(3, 2, 0.02), first_seq=0x123456)
    encoder.feedback = 0.05
    packets = encoder.encode(b"ab", 0.0) + encoder.encode(b"", 0.0) + encoder.encode(b"xyz", 0.0)
    assert len(packets) == 5
    assert packets[0] == bytes.fromhex("d1123456") + bytes([0, 0, 2, 13]) + b"ab"
    assert [parse_header(p) for p in packets] == [
        Header(KIND_DATA, 0x123456, 0, 0, 2, 13),
        Header(KIND_DATA, 0x123457, 1, 0, 2, 13),
        Header(KIND_DATA, 0x123458, 2, 0, 2, 13),
        Header(KIND_PARITY, 0x123456, 0, 3, 2, 13),
        Header(KIND_PARITY, 0x123456, 1, 3, 2, 13),
    ]
    # Parity covers "u16 length | payload", padded to the longest.
    assert {len(p) for p in packets[3:]} == {HEADER_SIZE + 2 + 3}


def test_oversized_payload_is_refused():
    encoder = FecEncoder(FecParams(2, 1, 0.02))
    with pytest.raises(ProtocolError):
        encoder.encode(bytes(MAX_PAYLOAD + 1), 0.0)
    assert len(encoder.encode(memoryview(bytes(MAX_PAYLOAD)), 0.0)[0]) == HEADER_SIZE + MAX_PAYLOAD


# ---- delivery and recovery -----------------------------------------------------------------------


def test_round_trip_without_loss_delivers_each_payload_once_in_order():
    params = FecParams(4, 2, 0.02)
    payloads = distinct_payloads(50, random.Random(1))
    encoder, decoder = FecEncoder(params), FecDecoder(params)
    out = []
    for i, payload in enumerate(payloads):
        out += deliver(decoder, encoder.encode(payload, i * 0.001))
    out += deliver(decoder, encoder.tick(encoder.next_deadline()))
    assert out == payloads
    counters = decoder.counters
    assert (counters.data, counters.recovered, counters.duplicates, counters.bad) == (50, 0, 0, 0)
    assert counters.parity == 26 and decoder.held_groups == 0 and decoder.held_bytes == 0


@settings(max_examples=80, deadline=None)
@given(ds=st.integers(1, 10), ps=st.integers(1, 4), data=st.data())
def test_any_loss_up_to_parity_per_group_is_recovered(ds, ps, data):
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    sizes = data.draw(st.lists(st.lists(st.integers(0, 1400), min_size=1, max_size=ds), min_size=1, max_size=3))
    groups = [[rnd.randbytes(size) for size in group] for group in sizes]
    params = FecParams(ds, ps, 0.02)
    sent = send_groups(FecEncoder(params, first_seq=rnd.getrandbits(24)), groups)
    kept = []
    for payloads, packets in zip(groups, sent, strict=True):
        assert len(packets) == len(payloads) + ps
        lost = data.draw(st.sets(st.integers(0, len(packets) - 1), max_size=ps))
        kept += [p for i, p in enumerate(packets) if i not in lost]
    kept += data.draw(st.lists(st.sampled_from(kept), max_size=3))  # the link duplicates some
    rnd.shuffle(kept)
    decoder = FecDecoder(params)
    out = deliver(decoder, kept)
    assert sorted(out) == sorted(p for group in groups for p in group)
    assert decoder.counters.bad == 0 and decoder.held_groups <= len(groups)


def test_group_shape_follows_its_size():
    params = FecParams(4, 3, 0.02)
    sent = send_groups(FecEncoder(params), [[b"a"] * 4, [b"b"], [b"c"] * 2])
    assert [len(packets) for packets in sent] == [7, 4, 5]
    assert [parse_header(packets[-1]).count for packets in sent] == [4, 1, 2]


def test_group_closed_by_the_wait_recovers():
    params = FecParams(8, 1, 0.02)
    encoder = FecEncoder(params)
    assert encoder.next_deadline() == math.inf and encoder.tick(5.0) == []
    data = encoder.encode(b"first", 1.0) + encoder.encode(b"second!", 1.01)
    assert len(data) == 2 and encoder.next_deadline() == pytest.approx(1.02)
    assert encoder.tick(1.019) == []
    parity = encoder.tick(1.02)
    assert len(parity) == 1 and parse_header(parity[0]).count == 2
    assert encoder.next_deadline() == math.inf and encoder.tick(2.0) == []
    decoder = FecDecoder(params)
    assert deliver(decoder, [data[1], parity[0]]) == [b"second!", b"first"]
    assert decoder.counters.recovered == 1


def test_late_tick_closes_the_old_group_before_the_next_packet():
    encoder = FecEncoder(FecParams(8, 2, 0.02))
    first = encoder.encode(b"one", 0.0)
    late = encoder.encode(b"two", 0.5)  # nobody called tick: the stale group is closed now
    assert len(first) == 1 and len(late) == 3
    assert parse_header(late[0]).index == 0 and parse_header(late[1]) == parse_header(late[1])._replace(count=1)
    assert encoder.next_deadline() == pytest.approx(0.52)
    decoder = FecDecoder(encoder.params)
    assert deliver(decoder, late[1:] + late[:1]) == [b"one", b"two"]


def test_duplicates_are_not_delivered_twice():
    params = FecParams(3, 2, 0.02)
    payloads = distinct_payloads(6, random.Random(2), 100)
    packets = [p for group in send_groups(FecEncoder(params), [payloads[:3], payloads[3:]]) for p in group]
    decoder = FecDecoder(params)
    # Packet 0 is late: it arrives after parity rebuilt it, then again as a duplicate.
    order = packets[1:] + packets + [packets[0]] * 3
    assert deliver(decoder, order) == [payloads[1], payloads[2], payloads[0], *payloads[3:]]
    assert (
        decoder.counters.recovered == 1 and decoder.counters.duplicates == 6 + 3
    )  # parity of a finished group is just dropped


def test_reordered_packets_still_recover():
    params = FecParams(5, 2, 0.02)
    payloads = distinct_payloads(5, random.Random(3), 300)
    (packets,) = send_groups(FecEncoder(params), [payloads])
    decoder = FecDecoder(params)
    kept = [packets[i] for i in (6, 4, 5, 2, 0)]  # parity first, data 1 and 3 lost
    out = deliver(decoder, kept)
    assert sorted(out) == sorted(payloads) and decoder.counters.recovered == 2
    assert decoder.held_groups == 0


def test_shape_comes_from_the_headers_not_the_decoders_params():
    payloads = distinct_payloads(8, random.Random(10), 500)
    (packets,) = send_groups(FecEncoder(FecParams(8, 3, 0.02)), [payloads])
    kept = [p for i, p in enumerate(packets) if i not in (0, 5, 7)]
    decoder = FecDecoder(FecParams(2, 1, 0.02))
    assert sorted(deliver(decoder, kept)) == sorted(payloads) and decoder.counters.recovered == 3


def test_seq_wraps():
    params = FecParams(3, 1, 0.02)
    payloads = distinct_payloads(9, random.Random(4), 50)
    sent = send_groups(FecEncoder(params, first_seq=SEQ_MASK - 3), [payloads[:3], payloads[3:6], payloads[6:]])
    assert [parse_header(g[0]).seq for g in sent] == [SEQ_MASK - 3, SEQ_MASK, 2]
    kept = [p for g in sent for i, p in enumerate(g) if i != 1]
    assert sorted(deliver(FecDecoder(params), kept)) == sorted(payloads)


def test_pass_through_without_parity():
    params = FecParams(4, 0, 0.02)
    encoder, decoder = FecEncoder(params), FecDecoder(params)
    packets = [p for i in range(10) for p in encoder.encode(bytes([i]), i * 0.1)]
    assert len(packets) == 10 and encoder.next_deadline() == math.inf and encoder.tick(99.0) == []
    assert deliver(decoder, packets + packets[::-1]) == [bytes([i]) for i in range(10)]
    assert decoder.counters.duplicates == 10 and decoder.held_groups == 0


def test_lost_for_good_is_counted_when_it_leaves_the_window():
    params = FecParams(2, 1, 0.02)
    encoder, decoder = FecEncoder(params), FecDecoder(params)
    deliver(decoder, encoder.encode(b"0", 0.0) + encoder.encode(b"1", 0.0))
    first = encoder.encode(b"a", 0.0) + encoder.encode(b"b", 0.0)
    deliver(decoder, first[2:])  # both data packets lost: parity alone cannot rebuild them
    for _ in range(WINDOW + 2):
        deliver(decoder, encoder.encode(b"x", 0.0)[:1])
    assert decoder.counters.unrecovered == 2 and decoder.counters.recovered == 0
    # A packet from before the window cannot be told from a duplicate: dropped.
    assert deliver(decoder, first[:1]) == [] and decoder.counters.stale == 1


def test_old_groups_expire():
    params = FecParams(4, 2, 0.02)
    (packets,) = send_groups(FecEncoder(params), [[b"a", b"b", b"c", b"d"]])
    decoder = FecDecoder(params)
    deliver(decoder, packets[:1], now=10.0)
    assert decoder.held_groups == 1
    deliver(decoder, packets[1:2], now=10.0 + EXPIRE_S + 0.1)  # the group is forgotten, then made again
    assert decoder.held_groups == 1 and decoder.held_bytes == 1


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        bytes.fromhex("d1000001000002"),  # 7 bytes
        header(0x00, 1, 0, 0, 0),  # unknown kind
        header(0xD3, 1, 0, 0, 0),
        header(KIND_DATA, 1, 0, 1, 2) + b"x",  # count in a data packet
        header(KIND_DATA, 1, 64, 0, 2),  # index beyond a group
        header(KIND_DATA, 1, 0, 0, 65),  # parity beyond the limit
        header(KIND_PARITY, 1, 0, 0, 2) + b"xx",  # group of no data
        header(KIND_PARITY, 1, 0, 65, 2) + b"xx",
        header(KIND_PARITY, 1, 2, 2, 2) + b"xx",  # parity number beyond parity count
        header(KIND_PARITY, 1, 0, 2, 0) + b"xx",
        header(KIND_PARITY, 1, 0, 2, 2) + b"x",  # too short for a length field
    ],
)
def test_malformed_packets_raise_and_are_counted(packet):
    decoder = FecDecoder(FecParams(4, 2, 0.02))
    with pytest.raises(ProtocolError):
        decoder.decode(packet, 0.0)
    assert decoder.counters.bad == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (header(KIND_DATA, 10, 0, 0, 2) + b"a", header(KIND_DATA, 11, 1, 0, 3) + b"b"),  # parity count differs
        (header(KIND_PARITY, 10, 0, 2, 2) + b"abcd", header(KIND_PARITY, 10, 1, 3, 2) + b"abcd"),  # count differs
        (header(KIND_PARITY, 10, 0, 2, 2) + b"abcd", header(KIND_PARITY, 10, 1, 2, 2) + b"abc"),  # size differs
        (header(KIND_PARITY, 10, 0, 2, 2) + b"abcd", header(KIND_DATA, 12, 2, 0, 2) + b"c"),  # index >= count
        (header(KIND_DATA, 13, 3, 0, 2) + b"a", header(KIND_PARITY, 10, 0, 2, 2) + b"abcd"),  # count too small
    ],
)
def test_contradictions_within_a_group_raise(first, second):
    decoder = FecDecoder(FecParams(4, 2, 0.02))
    decoder.decode(first, 0.0)
    with pytest.raises(ProtocolError):
        decoder.decode(second, 0.0)
    assert decoder.counters.bad == 1


def test_parity_that_does_not_cover_its_data_rebuilds_nothing():
    decoder = FecDecoder(FecParams(2, 1, 0.02))
    assert decoder.decode(header(KIND_DATA, 10, 0, 0, 1) + b"longer than parity", 0.0) == [b"longer than parity"]
    assert decoder.decode(header(KIND_PARITY, 10, 0, 2, 1) + b"abcd", 0.0) == []
    assert decoder.counters.bad == 1 and decoder.held_groups == 0


@settings(max_examples=300, deadline=None)
@given(packet=st.binary(max_size=48))
def test_fuzzed_packets_raise_only_protocol_errors(packet):
    decoder = FecDecoder(FecParams(2, 1, 0.02))
    try:
        out = decoder.decode(packet, 0.0)
    except ProtocolError:
        assert decoder.counters.bad == 1
    else:
        assert all(isinstance(p, bytes) for p in out)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), flips=st.integers(1, 40), cut=st.booleans())
def test_mangled_streams_raise_only_protocol_errors(seed, flips, cut):
    rnd = random.Random(seed)
    params = FecParams(3, 2, 0.02)
    payloads = distinct_payloads(12, rnd, 60)
    packets = [
        bytearray(p) for g in send_groups(FecEncoder(params), [payloads[i : i + 3] for i in (0, 3, 6, 9)]) for p in g
    ]
    for _ in range(flips):
        packet = rnd.choice(packets)
        if cut:
            del packet[rnd.randrange(len(packet) + 1) :]
        elif packet:
            packet[rnd.randrange(len(packet))] = rnd.getrandbits(8)
    rnd.shuffle(packets)
    decoder = FecDecoder(params)
    for packet in packets:
        try:
            out = decoder.decode(packet, 0.0)
        except ProtocolError:
            continue
        assert all(isinstance(p, bytes) for p in out)
    assert decoder.held_groups <= MAX_GROUPS


def test_flood_of_random_headers_keeps_state_bounded():
    rnd = random.Random(5)
    decoder = FecDecoder(FecParams(4, 2, 0.02))
    for i in range(6000):
        size = 60000 if i % 20 == 0 else rnd.randrange(2, 1400)
        parity = rnd.randrange(1, 65)
        if rnd.random() < 0.5:
            packet = header(KIND_DATA, rnd.getrandbits(24), rnd.randrange(64), 0, parity) + bytes(size)
        else:
            count = rnd.randrange(1, 65)
            packet = header(KIND_PARITY, rnd.getrandbits(24), rnd.randrange(parity), count, parity) + bytes(size)
        try:
            decoder.decode(packet, i * 0.001)
        except ProtocolError:
            pass  # a random header may contradict an earlier one
        assert decoder.held_groups <= MAX_GROUPS and decoder.held_bytes <= MAX_HELD_BYTES
    assert decoder.held_groups == MAX_GROUPS
    # Few groups of huge packets hit the byte bound instead.
    big = bytes(MAX_PAYLOAD)
    for gid in (1000, 2000):
        for index in range(64):
            assert decoder.decode(header(KIND_DATA, gid + index, index, 0, 1) + big, 7.0) == [big]
            assert decoder.held_bytes <= MAX_HELD_BYTES


# ---- loss estimate and adaptive parity -----------------------------------------------------------


def reference_parity(data: int, lowest: int, highest: int, loss: float) -> int:
    for p in range(lowest, highest + 1):
        n = data + p
        if 1 - sum(math.comb(n, i) * loss**i * (1 - loss) ** (n - i) for i in range(p + 1)) <= TARGET_GROUP_LOSS:
            return p
    return highest


def test_adaptive_rule():
    assert adaptive_parity(2, 0, 8, 0.05) == 2 == reference_parity(2, 0, 8, 13 / 255)
    assert adaptive_parity(4, 1, 8, 0.05) == 3 == reference_parity(4, 1, 8, 13 / 255)
    assert adaptive_parity(10, 1, 8, 0.0) == 1
    assert adaptive_parity(10, 1, 8, 1.0) == 8
    assert adaptive_parity(10, 1, 8, math.nan) == 1
    for loss_255 in range(0, 256, 5):
        assert adaptive_parity(6, 0, 12, loss_255 / 255) == reference_parity(6, 0, 12, loss_255 / 255)


def test_adaptive_mode_raises_and_lowers_parity():
    encoder = FecEncoder(FecParams(4, 1, 0.02, adaptive=True, max_parity=8))
    assert encoder.parity_now == 1
    encoder.peer_loss(0.05)
    assert encoder.parity_now == 3
    assert len(encoder.encode(b"a", 0.0) + encoder.encode(b"b", 0.0) + encoder.encode(b"c", 0.0)) == 3
    assert len(encoder.encode(b"d", 0.0)) == 1 + 3
    encoder.peer_loss(0.0)
    assert encoder.parity_now == 1
    fixed = FecEncoder(FecParams(4, 1, 0.02))
    fixed.peer_loss(0.5)
    assert fixed.parity_now == 1


def test_pass_through_group_is_closed_when_parity_is_wanted():
    encoder = FecEncoder(FecParams(4, 0, 0.02, adaptive=True, max_parity=4))
    assert encoder.encode(b"a", 0.0)[0][6] == 0 and encoder.next_deadline() == math.inf
    encoder.peer_loss(0.05)
    packets = encoder.encode(b"b", 0.1)
    assert len(packets) == 1 and parse_header(packets[0]).index == 0 and parse_header(packets[0]).parity == 3
    assert encoder.next_deadline() == pytest.approx(0.12)


def test_loss_estimate_converges_near_the_link_loss():
    rnd = random.Random(6)
    params = FecParams(4, 2, 0.02)
    encoder, decoder = FecEncoder(params), FecDecoder(params)
    samples = []
    for i in range(4000):
        for packet in encoder.encode(b"x" * 100, i / 100):
            if rnd.random() >= 0.05:
                decoder.decode(packet, i / 100)
        if i >= 1000:
            samples.append(decoder.loss)
    assert 0.04 < sum(samples) / len(samples) < 0.06
    assert 0.025 < decoder.loss < 0.075 and 0.025 < min(samples[-500:]) <= max(samples[-500:]) < 0.075


def test_feedback_travels_in_band_and_drives_the_peer():
    """A sends to B over a 5% lossy link, B answers each packet; B's measured loss raises A's parity."""
    rnd = random.Random(7)
    params = FecParams(2, 0, 0.02, adaptive=True, max_parity=8)
    enc_a, dec_a, enc_b, dec_b = FecEncoder(params), FecDecoder(params), FecEncoder(params), FecDecoder(params)

    def exchange(i: int, loss: float) -> None:
        now = i / 60
        for packet in enc_a.encode(b"game" * 20, now) + enc_a.tick(now):
            if rnd.random() >= loss:
                dec_b.decode(packet, now)
        enc_b.feedback = dec_b.loss
        for packet in enc_b.encode(b"ack", now):
            dec_a.decode(packet, now)
        enc_a.peer_loss(dec_a.peer_feedback)

    for i in range(1500):
        exchange(i, 0.05)
    assert dec_a.peer_feedback == quantize_loss(dec_b.loss) / 255 and dec_a.peer_feedback > 0.03
    assert enc_a.parity_now >= 2
    for i in range(1500, 3000):
        exchange(i, 0.0)
    assert dec_b.loss < 0.5 / 255 and enc_a.parity_now == 0


# ---- timing simulations --------------------------------------------------------------------------


class Sim:
    """One direction over a zero-delay link with independent loss; the driver fires tick at the deadline."""

    def __init__(self, params: FecParams, loss: float, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.loss = loss
        self.encoder, self.decoder = FecEncoder(params), FecDecoder(params)
        self.group_start: dict[int, float] = {}  # group id -> when its first packet was sent
        self.group_of: dict[bytes, int] = {}
        self.delivered: dict[bytes, float] = {}

    def send(self, payload: bytes, now: float) -> None:
        self.fire_timers(now)
        self.transmit(self.encoder.encode(payload, now), now)

    def fire_timers(self, until: float) -> None:
        while (at := self.encoder.next_deadline()) <= until and at < math.inf:
            self.transmit(self.encoder.tick(at), at)

    def transmit(self, packets: list[bytes], now: float) -> None:
        for packet in packets:
            head = parse_header(packet)
            if head.kind == KIND_DATA:
                gid = (head.seq - head.index) & SEQ_MASK
                self.group_start.setdefault(gid, now)
                self.group_of[packet[HEADER_SIZE:]] = gid
            if self.rnd.random() >= self.loss:
                for payload in self.decoder.decode(packet, now):
                    assert payload not in self.delivered
                    self.delivered[payload] = now


def test_recovery_never_waits_longer_than_wait_s():
    params = FecParams(4, 1, 0.02)
    sim = Sim(params, loss=0.1, seed=8)
    now = 0.0
    payloads = distinct_payloads(2000, sim.rnd, 40)
    for payload in payloads:
        now += sim.rnd.choice([0.0005, 0.003, 0.012, 0.03])
        sim.send(payload, now)
    sim.fire_timers(math.inf)
    assert sim.decoder.counters.recovered > 50
    for payload, at in sim.delivered.items():
        assert at - sim.group_start[sim.group_of[payload]] <= params.wait_s + 1e-9


def test_game_traffic_at_5_percent_loss_loses_at_most_0_2_percent():
    params = FecParams(data=2, parity=2, wait_s=0.02, adaptive=False)
    sim = Sim(params, loss=0.05, seed=9)
    payloads = distinct_payloads(1800, sim.rnd, 200)
    for i, payload in enumerate(payloads):
        sim.send(payload, i / 60)
    sim.fire_timers(math.inf)
    lost = len(payloads) - len(sim.delivered)
    assert set(sim.delivered) <= set(payloads)
    assert lost <= 0.002 * len(payloads), lost
    assert sim.decoder.counters.recovered > 50
