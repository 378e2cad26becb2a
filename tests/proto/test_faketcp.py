"""Fake-TCP header state: the faked 3-way handshake, seq/ack per --seq-mode, window, timestamps."""

from __future__ import annotations

import random
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.proto.faketcp import WINDOW_BASE, FakeTcp, IpIds, is_handshake_segment, ms_clock, seq_after
from sidecar.proto.l4 import TCP_ACK, TCP_SYN, TcpSegment, parse_raw

A, B = socket.inet_aton("10.77.0.2"), socket.inet_aton("10.77.0.1")
FAST = settings(max_examples=60, deadline=None)


def pair(mode: int = 3, seed: int = 1) -> tuple[FakeTcp, FakeTcp]:
    rng = random.Random(seed)
    ids = IpIds(rng)
    return (FakeTcp(A, B, 34047, 4096, ids, rng, seq_mode=mode), FakeTcp(B, A, 4096, 34047, ids, rng, seq_mode=mode))


def seg(packet: bytes) -> tuple[TcpSegment, int]:
    raw = parse_raw(packet)
    return raw.l4, len(raw.payload)  # type: ignore[return-value]


def handshake(client: FakeTcp, server: FakeTcp, now: float = 1.0) -> None:
    """SYN, SYN-ACK, bare ACK, then a 48-byte handshake1 / reply / handshake2 as udp2raw does them."""
    syn, _ = seg(client.syn(now))
    syn_ack, _ = seg(server.syn_ack(syn, now))
    assert client.accept_syn_ack(syn_ack, now) is not None
    hs1, n = seg(client.handshake_packet(bytes(48), client.seq, now))
    server.learn_handshake(hs1, n)
    rep, n = seg(server.packet(bytes(48), now))
    assert client.accept_handshake_reply(rep, n)
    hs2, n = seg(client.handshake_packet(bytes(48), client.seq, now))
    server.learn_handshake(hs2, n)


def test_seq_after_wraps() -> None:
    assert seq_after(1, 0) and seq_after(0, 0xFFFFFFFF) and not seq_after(0, 1) and not seq_after(5, 5)
    assert ms_clock(4294967.296) == 0


def test_syn_options_and_window_match_the_capture_layout() -> None:
    client, _ = pair()
    packet = client.syn(1.5)
    raw = parse_raw(packet)
    tcp = raw.l4
    assert tcp.flags == TCP_SYN and tcp.header_len == 40 and tcp.tsval == 1500 and tcp.tsecr == 0
    assert packet[20 + 20:20 + 28] == bytes.fromhex("020405b40402080a") and packet[-4:] == bytes.fromhex("01030305")
    assert raw.ip.df and raw.ip.ttl == 64 and tcp.checksum_ok
    assert all(WINDOW_BASE <= parse_raw(client.packet(b"x" * 20, 2.0)).l4.window < WINDOW_BASE + 512
               for _ in range(50))


def test_syn_retries_reuse_the_isn() -> None:
    client, _ = pair()
    assert seg(client.syn(1.0))[0].seq == seg(client.syn(2.0))[0].seq == client.isn


def test_syn_ack_must_ack_isn_plus_one() -> None:
    client, server = pair()
    syn, _ = seg(client.syn(1.0))
    good, _ = seg(server.syn_ack(syn, 1.0))
    assert good.ack == syn.seq + 1 and good.tsecr == syn.tsval and good.flags == TCP_SYN | TCP_ACK
    assert client.accept_syn_ack(good._replace(ack=good.ack + 1), 1.0) is None
    assert client.accept_syn_ack(good._replace(flags=TCP_ACK), 1.0) is None
    bare, n = seg(client.accept_syn_ack(good, 1.0))
    assert (bare.flags, bare.seq, bare.ack, n) == (TCP_ACK, syn.seq + 1, good.seq + 1, 0)


def test_handshake_retries_share_their_seq_and_the_reply_is_checked() -> None:
    client, server = pair()
    syn, _ = seg(client.syn(1.0))
    client.accept_syn_ack(seg(server.syn_ack(syn, 1.0))[0], 1.0)
    start = client.seq
    first, n = seg(client.handshake_packet(bytes(48), start, 1.0))
    retry, _ = seg(client.handshake_packet(bytes(48), start, 2.0))
    assert first.seq == retry.seq == syn.seq + 1 and client.seq == start + 48
    server.learn_handshake(retry, n)
    reply, m = seg(server.packet(bytes(48), 2.0))
    assert not client.accept_handshake_reply(reply._replace(ack=reply.ack - 1), m)
    assert not client.accept_handshake_reply(reply._replace(seq=reply.seq + 1), m)
    assert client.accept_handshake_reply(reply, m) and client.ack == reply.seq + 48


def test_handshake_segments_need_ack_without_syn() -> None:
    base = TcpSegment(1, 2, 0, 0, TCP_ACK, 0, None, None, 32, True)
    assert is_handshake_segment(base)
    assert not is_handshake_segment(base._replace(flags=TCP_SYN | TCP_ACK))
    assert not is_handshake_segment(base._replace(flags=0))


def test_mode_0_headers_never_change() -> None:
    client, server = pair(0)
    handshake(client, server)
    seqs = set()
    for _ in range(5):
        s, n = seg(client.packet(bytes(100), 3.0))
        server.on_authentic(s, n)
        seqs.add((s.seq, s.ack, server.ack))
    assert len(seqs) == 1


def test_mode_1_advances_by_length_and_acks_what_is_ahead() -> None:
    client, server = pair(1)
    handshake(client, server)
    first, n = seg(client.packet(bytes(100), 3.0))
    second, m = seg(client.packet(bytes(50), 3.0))
    assert second.seq == first.seq + 100
    server.on_authentic(second, m)
    server.on_authentic(first, n)  # late: the ack does not go back
    assert server.ack == second.seq + 50


def test_mode_2_advances_about_one_time_in_five() -> None:
    client, server = pair(2, seed=7)
    handshake(client, server)
    seqs = [seg(client.packet(bytes(10), 3.0))[0].seq for _ in range(500)]
    steps = sum(b != a for a, b in zip(seqs, seqs[1:], strict=False))
    assert 60 < steps < 140


def test_mode_3_acks_only_in_order_segments() -> None:
    client, server = pair(3)
    handshake(client, server)
    first, n = seg(client.packet(bytes(100), 3.0))
    second, m = seg(client.packet(bytes(100), 3.0))
    server.on_authentic(second, m)
    assert server.ack == first.seq
    server.on_authentic(first, n)
    assert server.ack == first.seq + 100


@pytest.mark.parametrize(("mode", "limit"), [(3, WINDOW_BASE << 5), (4, WINDOW_BASE)])
def test_mode_3_and_4_fall_back_to_the_peer_ack_at_the_window(mode: int, limit: int) -> None:
    client, server = pair(mode)
    handshake(client, server)
    peer_ack = client.peer_ack
    sent = 0
    while client.seq != peer_ack or sent == 0:
        client.packet(bytes(1000), 3.0)
        sent += 1000
        assert sent <= limit
    assert sent >= limit - 1800 - 1000


def test_mode_3_three_repeated_acks_rewind_to_the_peer_ack() -> None:
    client, server = pair(3)
    handshake(client, server)
    stale, n = seg(server.packet(bytes(10), 3.0))
    for _ in range(3):
        client.on_authentic(stale, n)
    client.packet(bytes(100), 3.0)
    assert client.seq == stale.ack


@FAST
@given(st.lists(st.integers(1, 1500), max_size=60), st.integers(0, 2**32))
def test_mode_3_ping_pong_stays_consistent(sizes: list[int], seed: int) -> None:
    """Request/response traffic delivered in order: each side's ack always equals the other's next seq."""
    client, server = pair(3, seed)
    handshake(client, server)
    for i, size in enumerate(sizes):
        sender, receiver = (client, server) if i % 2 == 0 else (server, client)
        s, n = seg(sender.packet(bytes(size), 3.0))
        assert s.seq == receiver.ack and s.ack == sender.ack and s.tsecr == sender.ts_recent
        receiver.on_authentic(s, n)
        assert receiver.ack == (s.seq + n) & 0xFFFFFFFF


@FAST
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 1500)), max_size=60), st.integers(0, 2**32))
def test_mode_3_any_exchange_acks_only_in_order_data(steps: list[tuple[bool, int]], seed: int) -> None:
    """One-sided bursts make udp2raw rewind to the peer's ack (its fast-retransmit imitation); the
    receiver's ack still only ever moves to the end of a segment that started exactly at it."""
    client, server = pair(3, seed)
    handshake(client, server)
    for from_client, size in steps:
        sender, receiver = (client, server) if from_client else (server, client)
        s, n = seg(sender.packet(bytes(size), 3.0))
        before = receiver.ack
        receiver.on_authentic(s, n)
        assert receiver.ack == ((s.seq + n) & 0xFFFFFFFF if s.seq == before else before)


def test_ip_ids_count_up_by_one() -> None:
    ids = IpIds(random.Random(1))
    first = ids.next()
    assert [ids.next() for _ in range(3)] == [(first + n) & 0xFFFF for n in (1, 2, 3)]


def test_bad_seq_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="seq_mode"):
        pair(5)
