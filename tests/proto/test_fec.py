"""kcp-go FEC: live groups of the real kcptun, recovery of any loss pattern, bounded state, bad input."""

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import ConfigError, ProtocolError
from sidecar.proto.fec import (
    EXPIRE_S,
    TYPE_DATA,
    TYPE_PARITY,
    FecDecoder,
    FecEncoder,
    ReedSolomon,
    gf_mul,
    is_fec,
    mul_table,
    parse_header,
)

# FEC bodies (after the 20-byte crypt header) sent by Debian's kcptun-client 20210922 on loopback,
# `--crypt none --nocomp`: one whole group with the default 10/3, and two groups with `--ds 3 --ps 2`.
LIVE_10_3 = [
    "00000000f10022001d6a957f51000002f30100000000000000000000080000000100000003000000",
    "01000000f10023001d6a957f51000002f3010000010000000000000009000000010201000300000061",
    "02000000f1001a001d6a957f5200ff01ff010000000000000100000000000000",
    "03000000f10024001d6a957f510000024b02000002000000010000000a00000001020200030000006262",
    "04000000f1001a001d6a957f5200ff0153020000010000000200000000000000",
    "05000000f10025001d6a957f51000002a002000003000000020000000b0000000102030003000000636363",
    "06000000f1001a001d6a957f5200ff01a7020000020000000300000000000000",
    "07000000f10026001d6a957f51000002f202000004000000030000000c000000010204000300000064646464",
    "08000000f1001a001d6a957f5200ff01f9020000030000000400000000000000",
    "09000000f10027001d6a957f510000024503000005000000040000000d00000001020500030000006565656565",
    "0a000000f200b9001d6a957fcc00629fc8d5000011000000050000005b000000810027009e00000027e83a99ca",
    "0b000000f200d4001d6a957ff60011a591ed00007600000005000000b500000097027900a400000019b23db7af",
    "0c000000f200c2001d6a957f8e002cdd3b1b00002b0000000600000010000000bf008100dc000000812bd8ca89",
]
LIVE_3_2 = [
    "00000000f1002200e83898c851000002f10100000000000000000000080000000100000003000000",
    "01000000f1002300e83898c851000002f1010000010000000000000009000000010201000300000061",
    "02000000f1001a00e83898c85200ff01ee010000000000000100000000000000",
    "03000000f2001b00e83898c85200ff01ee010000010000000100000001000000000201000000000061",
    "04000000f200ba00e83898c85b003808b301000008000000060000003000000007100800090000002f",
    "05000000f1002400e83898c8510000024802000002000000010000000a00000001020200030000006262",
    "06000000f1001a00e83898c85200ff019a020000010000000200000000000000",
    "07000000f1002500e83898c851000002f302000003000000020000000b0000000102030003000000636363",
    "08000000f2001b00e83898c85200ff01210200000000000001000000010000000000010000000000010163",
    "09000000f200cf00e83898c84900ab1a2b0200001c000000130000005c000000091214001b000000535357",
]


def bodies(live: list[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in live]


def kcp_payloads(packets: list[bytes]) -> list[bytes]:
    return [p[8:] for p in packets if parse_header(p)[1] == TYPE_DATA]


def encode_all(encoder: FecEncoder, payloads: list[bytes]) -> list[bytes]:
    return [packet for payload in payloads for packet in encoder.encode(payload)]


def delivered(decoder: FecDecoder, packets: list[bytes], now: float = 0.0) -> list[bytes]:
    out = []
    for packet in packets:
        result = decoder.decode(packet, now)
        if result.regular is not None:
            out.append(result.regular)
        out.extend(result.recovered)
    return out


def distinct_payloads(count: int, rnd: random.Random, max_size: int = 60) -> list[bytes]:
    """KCP-like payloads, distinct (index prefix) so a wrong rebuild can never look right."""
    return [struct.pack("<H", i) + rnd.randbytes(rnd.randrange(max_size)) for i in range(count)]


# ---- GF(256) and the code ------------------------------------------------------------------------


def test_field_is_0x11d_with_generator_2():
    assert gf_mul(0x80, 2) == 0x1D
    assert mul_table(1) == bytes(range(256))
    powers, x = set(), 1
    for _ in range(255):
        powers.add(x)
        x = gf_mul(x, 2)
    assert x == 1 and len(powers) == 255


@pytest.mark.parametrize(("ds", "ps"), [(3, 2), (10, 3), (1, 1), (5, 7)])
def test_encoding_matrix_is_vandermonde_times_inverse_top(ds, ps):
    def power(a, n):
        out = 1
        for _ in range(n):
            out = gf_mul(out, a)
        return out

    vandermonde = [[power(r, c) for c in range(ds)] for r in range(ds + ps)]
    matrix = ReedSolomon(ds, ps).matrix
    assert matrix[:ds] == [[int(r == c) for c in range(ds)] for r in range(ds)]
    # M = V * inverse(T)  <=>  M * T = V, with T the top ds rows of V.
    for r in range(ds + ps):
        for c in range(ds):
            acc = 0
            for k in range(ds):
                acc ^= gf_mul(matrix[r][k], vandermonde[k][c])
            assert acc == vandermonde[r][c]


@settings(max_examples=40, deadline=None)
@given(ds=st.integers(1, 12), ps=st.integers(1, 4), size=st.integers(1, 64), data=st.data())
def test_reed_solomon_rebuilds_from_any_data_shards(ds, ps, size, data):
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    shards = [rnd.randbytes(size) for _ in range(ds)]
    rs = ReedSolomon(ds, ps)
    everything = dict(enumerate(shards + rs.encode(shards)))
    keep = data.draw(st.sets(st.sampled_from(range(ds + ps)), min_size=ds, max_size=ds))
    rebuilt = rs.reconstruct_data({i: everything[i] for i in keep})
    assert rebuilt == {i: shards[i] for i in range(ds) if i not in keep}


def test_reed_solomon_rejects_bad_input():
    rs = ReedSolomon(3, 2)
    with pytest.raises(ValueError):
        rs.encode([b"ab", b"abc", b"ab"])
    with pytest.raises(ValueError):
        rs.reconstruct_data({0: b"ab", 4: b"ab"})


@pytest.mark.parametrize(("ds", "ps"), [(0, 3), (10, 0), (200, 57), (-1, 1)])
def test_bad_shapes_are_config_errors(ds, ps):
    with pytest.raises(ConfigError):
        FecEncoder(ds, ps)
    with pytest.raises(ConfigError):
        FecDecoder(ds, ps)


# ---- byte-exact against kcp-go -------------------------------------------------------------------


@pytest.mark.parametrize(("live", "ds", "ps"), [(LIVE_10_3, 10, 3), (LIVE_3_2, 3, 2)])
def test_encoder_reproduces_kcp_go_byte_exactly(live, ds, ps):
    packets = bodies(live)
    assert encode_all(FecEncoder(ds, ps), kcp_payloads(packets)) == packets


def test_live_header_fields():
    packets = bodies(LIVE_10_3)
    assert [parse_header(p) for p in packets] == [(i, TYPE_DATA if i < 10 else TYPE_PARITY) for i in range(13)]
    assert all(is_fec(p) for p in packets)
    # Parity length = 6 + longest "size | kcp" shard of the group.
    assert {len(p) for p in packets[10:]} == {max(len(p) for p in packets[:10])}
    assert not is_fec(packets[0][8:])  # plain KCP: cmd 81 where the FEC type would be


@pytest.mark.parametrize("lost", [(1, 4, 7), (0, 1, 2), (9,), (7, 8, 9), (2, 10)])
def test_decoder_recovers_lost_live_shards(lost):
    packets = bodies(LIVE_10_3)
    decoder = FecDecoder(10, 3)
    kept = [p for i, p in enumerate(packets) if i not in lost]
    random.Random(len(lost)).shuffle(kept)
    out = delivered(decoder, kept)
    # A data shard arriving after its group was rebuilt is rebuilt *and* delivered: KCP drops the copy.
    assert set(out) == set(kcp_payloads(packets))
    assert decoder.counters.recovered >= sum(1 for i in lost if i < 10)


# ---- decoder properties --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(ds=st.integers(1, 12), ps=st.integers(1, 4), data=st.data())
def test_any_loss_up_to_parity_is_recovered(ds, ps, data):
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    payloads = distinct_payloads(ds, rnd)
    packets = encode_all(FecEncoder(ds, ps), payloads)
    lost = data.draw(st.sets(st.sampled_from(range(ds + ps)), max_size=ps))
    kept = [p for i, p in enumerate(packets) if i not in lost]
    kept += data.draw(st.lists(st.sampled_from(kept), max_size=3))  # duplicates
    rnd.shuffle(kept)
    decoder = FecDecoder(ds, ps)
    out = delivered(decoder, kept)
    assert set(out) == set(payloads)
    assert decoder.counters.recovered >= len([i for i in lost if i < ds])
    assert decoder.held == 0 or len(lost) == 0


@settings(max_examples=40, deadline=None)
@given(ds=st.integers(1, 10), ps=st.integers(1, 3), groups=st.integers(1, 6), data=st.data())
def test_never_emits_wrong_data_whatever_arrives(ds, ps, groups, data):
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    payloads = distinct_payloads(ds * groups, rnd)
    packets = encode_all(FecEncoder(ds, ps), payloads)
    loss = data.draw(st.floats(0, 0.6))
    kept = [p for p in packets if rnd.random() >= loss]
    kept += [rnd.choice(packets) for _ in range(data.draw(st.integers(0, 4)))]
    # Reorder within a window smaller than a group, as a real path does.
    kept = [p for _, p in sorted(enumerate(kept), key=lambda ip: ip[0] + rnd.random() * (ds + ps - 1))]
    decoder = FecDecoder(ds, ps)
    out = delivered(decoder, kept)
    assert set(out) <= set(payloads)
    assert decoder.held <= 3 * (ds + ps)


def test_duplicates_and_late_parity_are_counted_not_delivered_twice():
    packets = bodies(LIVE_3_2)[:5]
    decoder = FecDecoder(3, 2)
    # A duplicated data shard reaches KCP again (as in kcp-go: KCP drops it by sn) but is stored once.
    out = delivered(decoder, [packets[0], packets[3], packets[0], packets[1], packets[4]])
    assert out == [packets[0][8:], packets[0][8:], packets[1][8:], packets[2][8:]]
    assert decoder.counters.duplicates == 1 and decoder.counters.recovered == 1
    assert decoder.counters.late == 1 and decoder.held == 0
    assert delivered(decoder, [packets[3], packets[2]]) == [packets[2][8:]]
    assert decoder.counters.late == 3 and decoder.counters.recovered == 1


def test_stale_groups_are_evicted_and_counted():
    ds, ps = 4, 2
    payloads = distinct_payloads(ds * 20, random.Random(1))
    packets = encode_all(FecEncoder(ds, ps), payloads)
    decoder = FecDecoder(ds, ps)
    # Every group loses one data shard and all parity: nothing is recoverable, state must stay bounded.
    kept = [p for i, p in enumerate(packets) if i % (ds + ps) not in (0, ds, ds + 1)]
    delivered(decoder, kept)
    assert decoder.held <= 3 * (ds + ps)
    assert decoder.counters.lost >= 20 - 6


def test_expired_shards_do_not_mix_with_new_ones():
    ds, ps = 3, 1
    packets = encode_all(FecEncoder(ds, ps), distinct_payloads(ds, random.Random(2)))
    decoder = FecDecoder(ds, ps)
    delivered(decoder, packets[:1], now=0.0)
    assert delivered(decoder, packets[1:2], now=EXPIRE_S + 2) == [packets[1][8:]]
    assert decoder.counters.expired == 1 and decoder.counters.lost == ds - 1
    # Shard 0 expired and is rebuilt from shards 1, 2 and the parity.
    assert sorted(delivered(decoder, packets[2:], now=EXPIRE_S + 3)) == sorted([packets[2][8:], packets[0][8:]])


def test_seqid_wraps_at_a_multiple_of_the_group_size():
    ds, ps = 10, 3
    encoder = FecEncoder(ds, ps)
    paws = 0xFFFFFFFF // 13 * 13
    encoder._next = paws - 13  # white-box: jump to the last group before the wrap
    payloads = distinct_payloads(2 * ds, random.Random(3))
    packets = encode_all(encoder, payloads)
    assert [parse_header(p)[0] for p in packets] == [*range(paws - 13, paws), *range(13)]
    decoder = FecDecoder(ds, ps)
    kept = [p for i, p in enumerate(packets) if i not in (2, 3, 15)]
    assert sorted(delivered(decoder, kept)) == sorted(payloads)
    assert decoder.counters.recovered == 3


def test_decoder_tunes_itself_to_the_senders_shape():
    payloads = distinct_payloads(3 * 20, random.Random(4))
    packets = encode_all(FecEncoder(3, 2), payloads)
    decoder = FecDecoder(10, 3)
    kept = [p for i, p in enumerate(packets) if i < 60 or i % 5 != 1]
    out = delivered(decoder, kept)
    assert decoder.shape == (3, 2) and decoder.counters.retunes == 1
    assert set(out) == set(payloads) and decoder.counters.recovered > 0


def test_without_autotune_a_wrong_shape_never_rebuilds():
    payloads = distinct_payloads(3 * 20, random.Random(5))
    packets = encode_all(FecEncoder(3, 2), payloads)
    decoder = FecDecoder(10, 3, autotune=False)
    out = delivered(decoder, [p for i, p in enumerate(packets) if i % 5 != 1])
    assert set(out) <= set(payloads) and decoder.counters.mismatched > 0
    assert decoder.shape == (10, 3) and decoder.counters.recovered == 0


@settings(max_examples=40, deadline=None)
@given(
    sender=st.tuples(st.integers(1, 6), st.integers(1, 3)),
    receiver=st.tuples(st.integers(1, 6), st.integers(1, 3)),
    autotune=st.booleans(),
    data=st.data(),
)
def test_mismatched_shapes_never_emit_wrong_data(sender, receiver, autotune, data):
    rnd = random.Random(data.draw(st.integers(0, 2**32)))
    payloads = distinct_payloads(sender[0] * 12, rnd)
    packets = encode_all(FecEncoder(*sender), payloads)
    clean = 2 * (sum(sender) + sum(receiver))  # a loss-free start shows the contradiction
    kept = packets[:clean] + [p for p in packets[clean:] if rnd.random() >= 0.2]
    decoder = FecDecoder(*receiver, autotune=autotune)
    assert set(delivered(decoder, kept)) <= set(payloads)
    if autotune:
        assert decoder.shape == sender


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        bytes.fromhex("00000000f100"),  # 6 bytes: no size field
        bytes.fromhex("00000000f3000200"),  # unknown type
        bytes.fromhex("00000000f10005000102"),  # size says 5, 4 follow
        bytes.fromhex("00000000f1000100"),  # size below its own 2 bytes
    ],
)
def test_bad_headers_raise_and_are_counted(body):
    decoder = FecDecoder(10, 3)
    with pytest.raises(ProtocolError):
        decoder.decode(body, 0.0)
    assert decoder.counters.bad_header == 1


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=80))
def test_fuzzed_bodies_raise_only_protocol_errors(body):
    decoder = FecDecoder(2, 1)
    try:
        decoder.decode(body, 0.0)
    except ProtocolError:
        assert decoder.counters.bad_header == 1


def test_rebuilt_shard_with_impossible_size_is_dropped():
    rs = ReedSolomon(2, 1)
    forged = [b"\xff\xff" + b"x" * 4, b"\x04\x00ab\x00\x00"]
    parity = rs.encode(forged)[0]
    decoder = FecDecoder(2, 1)
    header = struct.Struct("<IH")
    good = header.pack(1, TYPE_DATA) + forged[1][:4]
    assert decoder.decode(good, 0.0).regular == b"ab"
    result = decoder.decode(header.pack(2, TYPE_PARITY) + parity, 0.0)
    assert result.recovered == [] and decoder.counters.bad_recovered == 1


def test_parity_of_unequal_lengths_is_inconsistent():
    decoder = FecDecoder(2, 2)
    header = struct.Struct("<IH")
    decoder.decode(header.pack(2, TYPE_PARITY) + b"\x05\x00abc", 0.0)
    result = decoder.decode(header.pack(3, TYPE_PARITY) + b"\x05\x00abcd", 0.0)
    assert result.recovered == [] and decoder.counters.inconsistent == 1
