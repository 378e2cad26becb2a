"""KCP core: codec vectors, kcp-go timer/window behaviour on a fake clock, delivery over a bad link."""

import contextlib
import heapq
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.errors import ConfigError, ProtocolError
from sidecar.proto.kcp import (
    CMD_ACK,
    CMD_PUSH,
    CMD_WASK,
    CMD_WINS,
    IDLE_MS,
    MODES,
    Kcp,
    Mode,
    Segment,
    decode_segments,
    encode_segment,
)

CONV = 0x11223344
LINK = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=150, deadline=None)


def segments(datagrams: list[bytes]) -> list[Segment]:
    return [seg for d in datagrams for seg in decode_segments(d)]


def pushed(kcp: Kcp) -> list[int]:
    """Sequence numbers of the PUSH segments kcp has produced since the last drain."""
    return [seg.sn for seg in segments(kcp.drain()) if seg.cmd == CMD_PUSH]


def ack(sn: int, ts: int, una: int = 0, wnd: int = 128) -> bytes:
    return encode_segment(CONV, CMD_ACK, 0, wnd, ts, sn, una)


def push(sn: int, data: bytes, una: int = 0, ts: int = 0) -> bytes:
    return encode_segment(CONV, CMD_PUSH, 0, 128, ts, sn, una, data)


# ---- codec ------------------------------------------------------------------------------------


def test_segment_layout_is_byte_exact():
    wire = encode_segment(0x04030201, CMD_PUSH, 0, 512, 0x0D0C0B0A, 1, 0, b"abc")
    assert wire == bytes.fromhex("01020304 51 00 0002 0a0b0c0d 01000000 00000000 03000000 616263")
    assert decode_segments(wire) == [Segment(0x04030201, CMD_PUSH, 0, 512, 0x0D0C0B0A, 1, 0, b"abc")]


def test_fields_wrap_to_32_bits_on_the_wire():
    wire = encode_segment(1, CMD_ACK, 0, 0, 2**32 + 5, 2**32 + 6, -1)
    assert decode_segments(wire)[0][4:7] == (5, 6, 0xFFFFFFFF)


u32 = st.integers(0, 0xFFFFFFFF)
segment_fields = st.tuples(
    u32, st.sampled_from([CMD_PUSH, CMD_ACK, CMD_WASK, CMD_WINS]), st.integers(0, 255),
    st.integers(0, 0xFFFF), u32, u32, u32, st.binary(max_size=64),
)  # fmt: skip


@FUZZ
@given(st.lists(segment_fields, min_size=1, max_size=6))
def test_decode_inverts_encode(fields):
    wire = b"".join(encode_segment(*f) for f in fields)
    assert [tuple(s[:7]) + (bytes(s.data),) for s in decode_segments(wire)] == fields


def test_kcptun_first_datagrams_match_the_spec_vectors():
    """§9: client rcvwnd 512, crypt + FEC reserve 28 bytes; sizes seen on the wire."""
    client = Kcp(0xCAFEF00D, mtu=1350, reserved=28, snd_wnd=128, rcv_wnd=512, **MODES["fast"]._asdict())
    assert client.mss == 1298
    snappy_start = bytes.fromhex("ff060000734e61507059") + bytes.fromhex("0100000c") + b"\0" * 4
    client.send(snappy_start)
    client.update(0)
    (first,) = client.drain()
    assert 20 + 6 + 2 + len(first) == 70  # crypt header, FEC header, size field, KCP
    assert first[4:8] == bytes.fromhex("51000002")  # PUSH, frg 0, wnd 512
    assert decode_segments(first)[0][5:7] == (0, 0) and len(decode_segments(first)[0].data) == 18
    client.send(bytes.fromhex("0100000003000000"))  # smux SYN, its own segment
    client.update(0)
    (second,) = client.drain()
    assert decode_segments(second)[0].sn == 1 and bytes(decode_segments(second)[0].data)[:2] == b"\1\0"
    client.send(b"p" * 41)
    client.update(0)
    client.drain()
    client.update(client.next_deadline(0))
    (resent,) = client.drain()  # the RTO resend batches all three segments
    assert [s.sn for s in decode_segments(resent)] == [0, 1, 2]
    assert 2 + len(resent) == 141  # FEC size field of the captured retransmission


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\0" * 23,
        encode_segment(CONV, CMD_PUSH, 0, 1, 0, 0, 0, b"abcdefgh")[:-1],  # truncated payload
        encode_segment(CONV, 80, 0, 1, 0, 0, 0),  # unknown command
        encode_segment(CONV + 1, CMD_PUSH, 0, 1, 0, 0, 0, b"x"),  # another session
        push(0, b"good") + encode_segment(CONV, 85, 0, 1, 0, 1, 0),  # bad second segment
    ],
)
def test_malformed_datagrams_are_rejected_whole(packet):
    kcp = Kcp(CONV)
    with pytest.raises(ProtocolError):
        kcp.input(packet, 0)
    assert kcp.in_errors == 1 and kcp.in_segs == 0
    kcp.update(0)
    assert kcp.recv() is None and kcp.drain() == []


def test_short_trailing_bytes_are_ignored_as_kcp_go_does():
    kcp = Kcp(CONV)
    kcp.input(push(0, b"hi") + b"\0" * 23, 0)
    assert kcp.recv() == b"hi"


def fuzz_target() -> Kcp:
    """An endpoint with data in flight and out-of-order data held, so every path can be hit."""
    kcp = Kcp(CONV, mtu=80, rcv_wnd=8, nc=False)
    kcp.send(b"z" * 300)
    kcp.update(0)
    kcp.input(push(2, b"later"), 1)
    kcp.drain()
    return kcp


def exercise(kcp: Kcp, packet: bytes, now: int) -> None:
    with contextlib.suppress(ProtocolError):
        kcp.input(packet, now)
    kcp.update(now + 1)
    kcp.recv()
    kcp.drain()
    assert kcp.next_deadline(now + 1) >= now + 1


@FUZZ
@given(st.binary(max_size=160), st.integers(0, 2**33))
def test_random_bytes_only_raise_protocol_error(packet, now):
    exercise(fuzz_target(), packet, now)


near = st.one_of(st.integers(0, 12), u32)
hostile_segment = st.tuples(
    st.sampled_from([CONV, CONV, CONV, 0]), st.sampled_from([CMD_PUSH, CMD_ACK, CMD_WASK, CMD_WINS, 0, 255]),
    st.integers(0, 255), st.integers(0, 0xFFFF), near, near, near, st.binary(max_size=40),
)  # fmt: skip


@FUZZ
@given(st.lists(hostile_segment, min_size=1, max_size=5), st.integers(0, 400), st.integers(0, 60))
def test_hostile_segments_only_raise_protocol_error(fields, cut, now):
    packet = b"".join(encode_segment(*f) for f in fields)
    exercise(fuzz_target(), packet[: len(packet) - cut % 8], now)


# ---- send side behaviour on a fake clock -------------------------------------------------------


def test_stream_mode_fills_segments_up_to_mss():
    kcp = Kcp(CONV, mtu=100)
    kcp.send(b"ab")
    kcp.send(b"cd")
    kcp.send(b"e" * 100)
    kcp.update(0)
    segs = segments(kcp.drain())
    assert kcp.mss == 76 and [len(s.data) for s in segs] == [76, 28]
    assert {s.frg for s in segs} == {0}


def test_datagrams_respect_mtu_minus_reserved():
    kcp = Kcp(CONV, mtu=1350, reserved=28, snd_wnd=64)
    kcp.send(bytes(20_000))
    kcp.update(0)
    out = kcp.drain()
    assert max(map(len, out)) == 1322 and sum(len(s.data) for s in segments(out)) == 20_000


def test_message_mode_fragments_and_reassembles():
    snd, rcv = Kcp(CONV, mtu=100, stream=False), Kcp(CONV, mtu=100, stream=False)
    snd.send(b"m" * 300)
    snd.send(b"short")
    snd.update(0)
    segs = segments(snd.drain())
    assert [s.frg for s in segs] == [3, 2, 1, 0, 0]
    for seg in segs[1:]:
        rcv.input(encode_segment(*seg[:7], bytes(seg.data)), 1)
    assert rcv.recv() is None  # first fragment still missing
    rcv.input(encode_segment(*segs[0][:7], bytes(segs[0].data)), 2)
    assert rcv.recv() == b"m" * 300 and rcv.recv() == b"short" and rcv.recv() is None
    with pytest.raises(ValueError):
        snd.send(bytes(snd.mss * 255 + 1))


@pytest.mark.parametrize("resend", [1, 2, 3])
def test_fast_resend_fires_after_resend_skipped_acks(resend):
    kcp = Kcp(CONV, mtu=100, resend=resend, nodelay=True, interval=10)
    kcp.send(bytes(kcp.mss * (resend + 1)))
    kcp.update(0)
    assert pushed(kcp) == list(range(resend + 1))
    for sn in range(1, resend + 1):
        kcp.input(ack(sn, ts=0), sn)
        if sn < resend:  # new data goes out, so this is not an early-retransmit occasion either
            kcp.send(b"new")
            kcp.update(sn)
            assert 0 not in pushed(kcp)
    kcp.update(resend)
    assert pushed(kcp) == [0]
    assert (kcp.fast_retrans_segs, kcp.early_retrans_segs, kcp.retrans_segs) == (1, 0, 1)


def test_only_acks_of_later_transmissions_count_as_fast_acks():
    kcp = Kcp(CONV, mtu=100, resend=1, interval=10)
    kcp.send(bytes(kcp.mss * 2))
    kcp.update(0)
    kcp.drain()
    kcp.update(200)
    assert pushed(kcp) == [0, 1]  # both timed out and went again at 200
    kcp.input(ack(1, ts=0), 201)  # answers sn 1's first transmission, older than sn 0's resend
    kcp.update(202)
    assert pushed(kcp) == [] and kcp.fast_retrans_segs == kcp.early_retrans_segs == 0
    kcp.input(ack(1, ts=200), 203)
    kcp.update(204)
    assert pushed(kcp) == [0] and kcp.fast_retrans_segs == 1


def test_early_retransmit_when_nothing_new_is_sent():
    kcp = Kcp(CONV, mtu=100, resend=0, interval=10)
    kcp.send(bytes(kcp.mss * 2))
    kcp.update(0)
    kcp.drain()
    kcp.input(ack(1, ts=0), 3)
    kcp.update(10)
    assert pushed(kcp) == [0]
    assert (kcp.early_retrans_segs, kcp.fast_retrans_segs, kcp.lost_segs) == (1, 0, 0)


@pytest.mark.parametrize(("nodelay", "gaps"), [(False, [200, 400, 600, 800]), (True, [200, 300, 400, 500])])
def test_rto_backs_off(nodelay, gaps):
    kcp = Kcp(CONV, nodelay=nodelay, interval=10)
    kcp.send(b"x")
    kcp.update(1000)
    kcp.drain()
    times = [1000]
    for _ in gaps:
        times.append(kcp.next_deadline(times[-1]))
        kcp.update(times[-1])
        assert pushed(kcp) == [0]
    assert [b - a for a, b in zip(times, times[1:], strict=False)] == gaps
    assert kcp.lost_segs == kcp.retrans_segs == len(gaps)


def test_rtt_estimate_follows_kcp_go():
    kcp = Kcp(CONV, interval=30)
    expected = [(50, 25, 150), (45, 25, 145), (51, 32, 179)]
    for (sent, rtt), want in zip([(1000, 50), (2000, 10), (3000, 100)], expected, strict=True):
        kcp.send(b"x")
        kcp.update(sent)
        (seg,) = segments(kcp.drain())
        kcp.input(ack(seg.sn, ts=seg.ts, una=seg.sn + 1), sent + rtt)
        assert (kcp.srtt, kcp.rttvar, kcp.rto) == want


def test_windows_limit_what_is_in_flight():
    kcp = Kcp(CONV, mtu=100, snd_wnd=4)
    kcp.send(bytes(kcp.mss * 10))
    kcp.update(0)
    assert pushed(kcp) == [0, 1, 2, 3] and kcp.waitsnd == 10
    kcp.input(ack(0, ts=0, una=1, wnd=2), 5)  # peer window 2 < 3 still in flight
    assert pushed(kcp) == []
    kcp.input(ack(3, ts=0, una=4, wnd=2), 6)  # window slid: flushes at once
    assert pushed(kcp) == [4, 5]


def test_congestion_window_slow_start_and_loss():
    kcp = Kcp(CONV, mtu=100, snd_wnd=32, nc=False, interval=10)
    kcp.send(bytes(kcp.mss * 20))
    kcp.update(0)
    assert pushed(kcp) == [0]
    kcp.input(ack(0, ts=0, una=1), 5)
    assert pushed(kcp) == [1, 2] and kcp.cwnd == 2
    kcp.update(kcp.next_deadline(5))  # both time out
    assert pushed(kcp) == [1, 2] and kcp.cwnd == 1 and kcp.ssthresh == 2


def test_zero_window_probe_and_reopen():
    snd = Kcp(CONV, mtu=100, interval=10)
    rcv = Kcp(CONV, mtu=100, rcv_wnd=2, interval=10, ack_nodelay=True)
    snd.send(bytes(snd.mss * 2))
    snd.update(0)
    for d in snd.drain():
        rcv.input(d, 1)
    acks = rcv.drain()
    assert [s.wnd for s in segments(acks)] == [1, 0]  # the app has not read: queue full
    for d in acks:
        snd.input(d, 2)
    assert snd.rmt_wnd == 0 and snd.waitsnd == 0
    snd.send(bytes(snd.mss * 2))
    snd.update(2)
    assert pushed(snd) == [] and snd.next_deadline(2) == 7002
    snd.update(7002)
    (probe,) = segments(snd.drain())
    assert probe.cmd == CMD_WASK and snd.next_deadline(7002) == 7002 + 10500
    rcv.input(encode_segment(*probe[:7]), 7003)
    rcv.update(rcv.next_deadline(7003))
    assert [(s.cmd, s.wnd) for s in segments(rcv.drain())] == [(CMD_WINS, 0)]
    assert rcv.recv() is not None  # the app reads: the window reopens and rcv says so
    rcv.update(rcv.next_deadline(7004))
    (tell,) = segments(rcv.drain())
    assert (tell.cmd, tell.wnd) == (CMD_WINS, 2)
    snd.input(encode_segment(*tell[:7]), 7020)
    snd.update(snd.next_deadline(7020))
    assert pushed(snd) == [2, 3]


def test_ack_nodelay_acks_from_input_otherwise_at_the_tick():
    eager, lazy = Kcp(CONV, ack_nodelay=True, interval=20), Kcp(CONV, interval=20)
    for kcp in (eager, lazy):
        kcp.update(0)
        kcp.input(push(0, b"x"), 5)
    assert [s.cmd for s in segments(eager.drain())] == [CMD_ACK]
    assert lazy.drain() == [] and lazy.next_deadline(5) == 20
    lazy.update(20)
    assert [(s.cmd, s.sn, s.una) for s in segments(lazy.drain())] == [(CMD_ACK, 0, 1)]


def test_acks_below_rcv_nxt_are_compacted_except_the_last():
    kcp = Kcp(CONV)
    for _ in range(3):
        kcp.input(push(0, b"x"), 0)  # duplicates of a delivered segment
    kcp.input(push(1, b"y"), 0)
    kcp.update(0)
    assert [(s.sn, s.una) for s in segments(kcp.drain())] == [(1, 2)]
    kcp.input(push(0, b"x"), 1)
    kcp.update(1)
    assert [(s.sn, s.una) for s in segments(kcp.drain())] == [(0, 2)]
    assert kcp.repeat_segs == 3


def test_fec_recovered_input_is_not_trusted_for_window_or_rtt():
    kcp = Kcp(CONV)
    kcp.send(b"x")
    kcp.update(0)
    kcp.drain()
    kcp.input(ack(0, ts=0, una=1, wnd=0), 40, regular=False)
    assert kcp.waitsnd == 0 and kcp.rmt_wnd == 128 and kcp.srtt == 0
    kcp.input(push(0, b"d"), 41, regular=False)
    kcp.input(push(0, b"d"), 41, regular=False)
    assert kcp.recv() == b"d" and kcp.repeat_segs == 0


def test_idle_session_has_a_far_deadline():
    kcp = Kcp(CONV, interval=10)
    assert kcp.next_deadline(5) == 5 + IDLE_MS
    kcp.send(b"x")
    assert kcp.next_deadline(5) == 5  # data waits for a flush
    kcp.update(5)
    assert kcp.next_deadline(5) == 5 + 200  # retransmission timer only, no interval polling
    kcp.input(ack(0, ts=5, una=1), 7)
    assert kcp.next_deadline(8) == 8 + IDLE_MS


def test_mode_presets_match_kcptun():
    assert MODES["normal"] == Mode(nodelay=False, interval=40, resend=2, nc=True)
    assert MODES["fast"] == Mode(False, 30, 2, True)
    assert MODES["fast2"] == Mode(True, 20, 2, True)
    assert MODES["fast3"] == Mode(True, 10, 2, True)
    assert Kcp(CONV, **MODES["fast3"]._asdict()).minrto == 30
    assert Kcp(CONV, interval=1).interval == 10 and Kcp(CONV, interval=9999).interval == 5000


@pytest.mark.parametrize(
    "kwargs", [{"mtu": 49}, {"mtu": 100, "reserved": 76}, {"snd_wnd": 0}, {"rcv_wnd": 65536}, {"resend": -1}]
)
def test_bad_parameters_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        Kcp(CONV, **kwargs)


# ---- two endpoints over a simulated link --------------------------------------------------------


class Link:
    """Two endpoints joined by a lossy, duplicating, reordering datagram link on a fake clock."""

    def __init__(self, a: Kcp, b: Kcp, rng: random.Random, *, loss=0.0, dup=0.0, delay=5, jitter=0, now=0):
        self.ends = (a, b)
        self.rng, self.loss, self.dup, self.delay, self.jitter = rng, loss, dup, delay, jitter
        self.now = now
        self.wire: list[tuple[int, int, int, bytes]] = []
        self.sent = 0
        self.received: tuple[list[bytes], list[bytes]] = ([], [])

    def _carry(self, src: int) -> None:
        kcp = self.ends[src]
        assert kcp.snd_nxt - kcp.snd_una <= kcp.snd_wnd
        for datagram in kcp.drain():
            assert len(datagram) <= kcp.mss + 24
            for _ in range(2 if self.rng.random() < self.dup else 1):
                if self.rng.random() >= self.loss:
                    at = self.now + self.delay + self.rng.randint(0, self.jitter)
                    heapq.heappush(self.wire, (at, self.sent, 1 - src, datagram))
                    self.sent += 1

    def _step(self) -> None:
        deadlines = [kcp.next_deadline(self.now) for kcp in self.ends]
        self.now = min(deadlines + [self.wire[0][0]] if self.wire else deadlines)
        while self.wire and self.wire[0][0] <= self.now:
            _, _, dst, datagram = heapq.heappop(self.wire)
            self.ends[dst].input(datagram, self.now)
            while (data := self.ends[dst].recv()) is not None:
                self.received[dst].append(data)
            self._carry(dst)
        for i, kcp in enumerate(self.ends):
            if kcp.next_deadline(self.now) <= self.now:
                kcp.update(self.now)
                self._carry(i)

    def run(self, writes: tuple[list[bytes], list[bytes]], max_steps: int = 50_000) -> None:
        """Write with kcptun's backpressure and flush-on-write until both sides have everything."""
        todo = [list(reversed(w)) for w in writes]
        want = [sum(map(len, writes[1])), sum(map(len, writes[0]))]
        for _ in range(max_steps):
            for i, kcp in enumerate(self.ends):
                if todo[i] and kcp.waitsnd < kcp.snd_wnd:
                    while todo[i] and kcp.waitsnd < kcp.snd_wnd:
                        kcp.send(todo[i].pop())
                    kcp.update(self.now)
                    self._carry(i)
            if not any(todo) and [sum(map(len, r)) for r in self.received] == want:
                return
            self._step()
        raise AssertionError(f"no delivery after {max_steps} steps")

    def settle(self, max_steps: int = 5_000) -> None:
        """Run until nothing is in flight and both ends would sleep IDLE_MS."""
        for _ in range(max_steps):
            if not self.wire and all(k.next_deadline(self.now) == self.now + IDLE_MS for k in self.ends):
                return
            self._step()
        raise AssertionError("link never went idle")


def pair(mtu: int, reserved: int, wnd: tuple[int, int], mode: str, nc: bool, ack_nodelay: bool, stream=True):
    kw = {**MODES[mode]._asdict(), "nc": nc}
    kw.update(mtu=mtu, reserved=reserved, snd_wnd=wnd[0], rcv_wnd=wnd[1], ack_nodelay=ack_nodelay)
    return Kcp(CONV, stream=stream, **kw), Kcp(CONV, stream=stream, **kw)


def chunks(rng: random.Random, total: int, biggest: int) -> list[bytes]:
    out = []
    while total > 0:
        size = min(total, rng.randint(1, biggest))
        out.append(rng.randbytes(size))
        total -= size
    return out


link_params = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32),
        "loss": st.sampled_from([0.0, 0.05, 0.15, 0.3]),
        "dup": st.sampled_from([0.0, 0.1, 0.3]),
        "jitter": st.integers(0, 40),
        "delay": st.integers(1, 30),
        "mtu": st.integers(60, 400),
        "wnd": st.tuples(st.integers(2, 128), st.integers(2, 128)),
        "mode": st.sampled_from(sorted(MODES)),
        "nc": st.booleans(),
        "ack_nodelay": st.booleans(),
        "sizes": st.tuples(st.integers(0, 20_000), st.integers(0, 5000)),
    }
)


@LINK
@given(link_params)
def test_stream_arrives_exactly_over_any_loss_duplication_and_reordering(p):
    rng = random.Random(p["seed"])
    a, b = pair(p["mtu"], rng.randint(0, 28), p["wnd"], p["mode"], p["nc"], p["ack_nodelay"])
    link = Link(a, b, rng, loss=p["loss"], dup=p["dup"], delay=p["delay"], jitter=p["jitter"])
    writes = (chunks(rng, p["sizes"][0], 700), chunks(rng, p["sizes"][1], 300))
    link.run(writes)
    assert b"".join(link.received[1]) == b"".join(writes[0])
    assert b"".join(link.received[0]) == b"".join(writes[1])
    link.settle()
    assert a.waitsnd == b.waitsnd == 0


@LINK
@given(link_params)
def test_messages_arrive_whole_and_in_order(p):
    rng = random.Random(p["seed"])
    wnd = (max(p["wnd"][0], 4), max(p["wnd"][1], 4))
    a, b = pair(p["mtu"], 0, wnd, p["mode"], p["nc"], p["ack_nodelay"], stream=False)
    link = Link(a, b, rng, loss=p["loss"], dup=p["dup"], delay=p["delay"], jitter=p["jitter"])
    biggest = a.mss * 3  # fragments must fit the receive window
    messages = [rng.randbytes(rng.randint(1, biggest)) for _ in range(p["sizes"][0] // biggest + 1)]
    link.run((messages, []))
    assert link.received[1] == messages


def test_sequence_numbers_and_clock_wrap_around_32_bits():
    rng = random.Random(7)
    a, b = pair(100, 0, (16, 16), "fast3", True, False)
    base = 2**32 - 20
    a.snd_una = a.snd_nxt = b.rcv_nxt = base
    link = Link(a, b, rng, loss=0.1, dup=0.1, jitter=10, now=2**32 - 40)
    data = rng.randbytes(a.mss * 60)
    link.run(([data], []))
    link.settle()
    assert b"".join(link.received[1]) == data and a.snd_una == base + 60
    assert link.now > 2**32 and a.srtt > 0
