"""smux sessions: wire vectors from the kcptun spec, round trips, flow control, keepalive, fuzzing."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.errors import ConfigError, ProtocolError
from sidecar.proto.smux import (
    CMD_FIN,
    CMD_NOP,
    CMD_PSH,
    CMD_SYN,
    CMD_UPD,
    INITIAL_PEER_WINDOW,
    MAX_FRAME_SIZE,
    Frame,
    Session,
    SessionClosed,
    StreamData,
    StreamFinished,
    StreamOpened,
    WindowUpdated,
    decode_frames,
    encode_frame,
)

# database=None: other engineers share this tree, so the tests leave no .hypothesis/ behind.
FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def pair(version: int = 1, **kwargs: object) -> tuple[Session, Session]:
    return Session(client=True, version=version, **kwargs), Session(client=False, version=version, **kwargs)


def frames_of(data: bytes, version: int) -> list[Frame]:
    frames, used = decode_frames(data, version, 65535)
    assert used == len(data)
    return frames


def collect(events: list, into: dict[int, bytearray]) -> None:
    for ev in events:
        if isinstance(ev, StreamData):
            into.setdefault(ev.sid, bytearray()).extend(ev.data)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


# ----- byte-exact vectors (spec §5, §9)


def test_spec_vectors_v1_syn_and_ids() -> None:
    client, server = pair(1)
    assert client.open_stream() == 3
    assert client.outgoing() == bytes.fromhex("0100000003000000")
    assert client.open_stream() == 5
    assert server.open_stream() == 2
    assert server.open_stream() == 4


def test_spec_vectors_v2_syn_and_psh() -> None:
    client = Session(client=True, version=2)
    sid = client.open_stream()
    payload = bytes(range(60))
    assert client.write(sid, payload) == 60
    assert client.outgoing() == bytes.fromhex("0200000003000000" + "02023c0003000000") + payload


def test_vectors_fin_nop_upd() -> None:
    client, server = pair(2)
    sid = client.open_stream()
    client.write(sid, b"x" * 60)
    server.feed(client.outgoing(), 0.0)
    server.events()
    server.read_consumed(sid, 60)
    upd = server.outgoing()
    assert upd == bytes.fromhex("0204080003000000" + "3c000000" + "00002000")
    assert upd == encode_frame(2, CMD_UPD, 3, struct.pack("<II", 60, 2 * 1024 * 1024))
    client.close_stream(sid)
    assert client.outgoing() == bytes.fromhex("0201000003000000")
    client.tick(10.0)
    assert client.outgoing() == bytes.fromhex("0203000000000000")


def test_encode_decode_frame_codec() -> None:
    wire = encode_frame(1, CMD_PSH, 7, b"abc") + encode_frame(1, CMD_SYN, 9)[:5]
    frames, used = decode_frames(wire, 1)
    assert frames == [Frame(1, CMD_PSH, 7, b"abc")]
    assert used == 11


# ----- round trips


@FAST
@given(
    version=st.sampled_from([1, 2]),
    writes=st.lists(st.tuples(st.integers(0, 3), st.binary(max_size=3000)), max_size=20),
    cuts=st.lists(st.integers(0, 100_000), max_size=30),
)
def test_round_trip_any_split(version: int, writes: list[tuple[int, bytes]], cuts: list[int]) -> None:
    client, server = pair(version)
    sids = [client.open_stream() for _ in range(4)]
    expected: dict[int, bytearray] = {}
    for index, payload in writes:
        assert client.write(sids[index], payload) == len(payload)
        expected.setdefault(sids[index], bytearray()).extend(payload)
    got: dict[int, bytearray] = {}
    opened: list[int] = []
    for piece in chunks(client.outgoing(), cuts):
        server.feed(piece, 0.0)
        for ev in server.events():
            if isinstance(ev, StreamOpened):
                opened.append(ev.sid)
            elif isinstance(ev, StreamData):
                got.setdefault(ev.sid, bytearray()).extend(ev.data)
                server.read_consumed(ev.sid, len(ev.data))
    assert opened == sids
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in expected.items() if v}


def _exchange(client: Session, server: Session, got: dict[tuple[bool, int], bytearray]) -> list[int]:
    """Pump both ways until quiet, consuming all data into `got`; returns sids the server saw finish."""
    finished = []
    for _ in range(50):
        moved = False
        for src, dst, to_server in ((client, server, True), (server, client, False)):
            data = src.outgoing()
            if data:
                assert all(len(f.data) <= MAX_FRAME_SIZE for f in frames_of(data, src.version))
                moved = True
                dst.feed(data, 0.0)
            for ev in dst.events():
                if isinstance(ev, StreamData):
                    got.setdefault((to_server, ev.sid), bytearray()).extend(ev.data)
                    dst.read_consumed(ev.sid, len(ev.data))
                elif isinstance(ev, StreamFinished):
                    finished.append(ev.sid)
        if not moved:
            return finished
    raise AssertionError("sessions never went quiet")


@settings(max_examples=12, deadline=None, database=None)
@given(version=st.sampled_from([1, 2]), seed=st.integers(0, 2**32))
def test_many_interleaved_streams_both_ways(version: int, seed: int) -> None:
    rng = random.Random(seed)
    client, server = pair(version)
    sids = [client.open_stream() for _ in range(40)]
    sent: dict[tuple[bool, int], bytearray] = {}
    got: dict[tuple[bool, int], bytearray] = {}
    finished = _exchange(client, server, got)
    for _ in range(120):
        sid = rng.choice(sids)
        payload = rng.randbytes(rng.choice([0, 1, 100, 5000, MAX_FRAME_SIZE + 7]))
        to_server = rng.random() < 0.6
        src = client if to_server else server
        sent.setdefault((to_server, sid), bytearray()).extend(payload)
        while payload:  # v2 may cut a write short at the peer's window
            payload = payload[src.write(sid, payload) :]
            if payload:
                finished += _exchange(client, server, got)
        if rng.random() < 0.3:
            finished += _exchange(client, server, got)
    finished += _exchange(client, server, got)
    closed = sids[::3]
    for sid in closed:
        client.close_stream(sid)
    finished += _exchange(client, server, got)
    assert got == {k: v for k, v in sent.items() if v}
    assert finished == closed
    assert server.num_streams == 40 and client.num_streams == 40 - len(closed)


def test_fin_reaches_peer_and_blocks_writes() -> None:
    client, server = pair(1)
    sid = client.open_stream()
    client.write(sid, b"last words")
    client.close_stream(sid)
    client.close_stream(sid)  # idempotent: one FIN on the wire
    wire = client.outgoing()
    assert [f.cmd for f in frames_of(wire, 1)] == [CMD_SYN, CMD_PSH, CMD_FIN]
    server.feed(wire, 0.0)
    assert server.events() == [StreamOpened(3), StreamData(3, b"last words"), StreamFinished(3)]
    with pytest.raises(BrokenPipeError):
        server.write(sid, b"reply")  # smux: write after the peer's FIN is EOF
    with pytest.raises(BrokenPipeError):
        client.write(sid, b"more")
    server.feed(encode_frame(1, CMD_FIN, sid), 0.0)
    assert server.events() == []  # a second FIN is not a second event


def test_unknown_stream_data_dropped_and_duplicate_syn_ignored() -> None:
    server = Session(client=False)
    server.feed(encode_frame(1, CMD_PSH, 9, b"lost") + encode_frame(1, CMD_SYN, 3) * 2, 0.0)
    server.feed(encode_frame(1, CMD_PSH, 3), 0.0)  # smux skips empty data frames
    assert server.events() == [StreamOpened(3)]
    assert server.frames_dropped == 1 and server.frames_received == 4


def test_data_after_local_close_is_dropped_and_tokens_returned() -> None:
    client, server = pair(1, smuxbuf=4096, streambuf=4096, max_frame_size=1000)
    sid = client.open_stream()
    client.write(sid, b"a" * 10_000)
    server.feed(client.outgoing(), 0.0)
    assert not server.wants_input
    server.close_stream(sid)  # returns the unread bytes: parsing resumes, rest is dropped
    assert server.wants_input
    assert sum(len(ev.data) for ev in server.events() if isinstance(ev, StreamData)) == 5000
    assert server.frames_dropped == 5


# ----- session receive buffer (smuxbuf)


def test_smuxbuf_stalls_parsing_until_consumed() -> None:
    client, server = pair(1, smuxbuf=4096, streambuf=4096, max_frame_size=1000)
    sid = client.open_stream()
    client.write(sid, bytes(range(256)) * 40)
    server.feed(client.outgoing(), 0.0)
    first = [ev for ev in server.events() if isinstance(ev, StreamData)]
    assert sum(len(ev.data) for ev in first) == 5000  # the bucket is checked before each frame
    assert not server.wants_input
    got = bytearray(b"".join(ev.data for ev in first))
    for _ in range(20):
        server.read_consumed(sid, 1000)
        got += b"".join(ev.data for ev in server.events() if isinstance(ev, StreamData))
        if len(got) == 10_240:
            break
    assert bytes(got) == bytes(range(256)) * 40
    with pytest.raises(ValueError):
        server.read_consumed(sid, 10**6)


def test_bad_frame_found_on_resume_is_an_event() -> None:
    client, server = pair(1, smuxbuf=1000, streambuf=1000)
    sid = client.open_stream()
    client.write(sid, b"z" * 1500)
    server.feed(client.outgoing() + b"\x07" * 8, 0.0)
    assert server.wants_input is False and not server.closed
    server.events()
    server.read_consumed(sid, 1500)
    assert server.closed and server.protocol_errors == 1
    assert isinstance(server.events()[-1], SessionClosed)


# ----- v2 flow control


def test_v2_upd_on_first_read_then_every_half_streambuf() -> None:
    client, server = pair(2, streambuf=65536, smuxbuf=65536)
    sid = client.open_stream()
    client.write(sid, b"q" * 60_000)
    server.feed(client.outgoing(), 0.0)
    server.events()
    updates = []
    for n in (1, 1000, 31_000, 767, 1, 27_000):
        server.read_consumed(sid, n)
        updates += [struct.unpack("<II", f.data) for f in frames_of(server.outgoing(), 2)]
    assert updates == [(1, 65536), (32769, 65536)]


def test_v2_initial_window_and_v1_unlimited() -> None:
    c2 = Session(client=True, version=2)
    sid = c2.open_stream()
    assert c2.write(sid, b"w" * 300_000) == INITIAL_PEER_WINDOW
    assert c2.write(sid, b"w") == 0
    assert c2.pending_output == 8 + INITIAL_PEER_WINDOW + 8 * (INITIAL_PEER_WINDOW // MAX_FRAME_SIZE)
    assert len(c2.outgoing()) == c2.bytes_sent and c2.pending_output == 0
    c1 = Session(client=True, version=1)
    sid = c1.open_stream()
    assert c1.write(sid, bytearray(300_000)) == 300_000


@FAST
@given(
    consume=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40),
    streambuf=st.sampled_from([16384, 65536, 300_000]),
    cuts=st.lists(st.integers(0, 10**6), max_size=5),
)
def test_v2_sender_never_exceeds_peer_window(consume: list[float], streambuf: int, cuts: list[int]) -> None:
    client, server = pair(2, streambuf=streambuf, smuxbuf=max(streambuf, 2 * INITIAL_PEER_WINDOW))
    sid = client.open_stream()
    blob = bytes(range(251)) * 2400  # 600 kB: past the initial window, through many updates
    offset, sent_total, known_consumed, known_window = 0, 0, 0, INITIAL_PEER_WINDOW
    received = bytearray()
    unread = 0
    for step in range(2000):
        offset += client.write(sid, blob[offset:])
        wire = client.outgoing()
        fresh = sum(len(f.data) for f in frames_of(wire, 2) if f.cmd == CMD_PSH)
        sent_total += fresh
        # A shrinking window may leave more in flight than it allows, but then nothing new goes out.
        assert fresh == 0 or sent_total - known_consumed <= known_window
        for piece in chunks(wire, cuts):
            server.feed(piece, 0.0)
        for ev in server.events():
            if isinstance(ev, StreamData):
                received += ev.data
                unread += len(ev.data)
        take = unread if step >= len(consume) else int(unread * consume[step])
        server.read_consumed(sid, take)
        unread -= take
        back = server.outgoing()
        for frame in frames_of(back, 2):
            known_consumed, known_window = struct.unpack("<II", frame.data)
        client.feed(back, 0.0)
        assert all(isinstance(ev, WindowUpdated) for ev in client.events())
        if len(received) == len(blob):
            break
    assert bytes(received) == blob


# ----- keepalive with a fake clock


def test_keepalive_nop_and_timeout() -> None:
    s = Session(client=True, now=100.0)
    assert s.next_deadline(100.0) == 110.0
    s.tick(105.0)
    assert s.outgoing() == b""
    s.tick(110.0)
    assert s.outgoing() == encode_frame(1, CMD_NOP, 0)
    assert s.next_deadline(110.0) == 120.0
    s.feed(encode_frame(1, CMD_NOP, 0), 125.0)  # anything received restarts the 30 s
    s.tick(130.0)
    assert s.outgoing() == encode_frame(1, CMD_NOP, 0) and not s.closed
    assert s.next_deadline(130.0) == 140.0
    for t in (140.0, 150.0):
        s.tick(t)
    assert s.next_deadline(150.0) == 155.0
    s.tick(154.9)
    assert not s.closed
    s.tick(155.0)
    assert s.closed and s.events() == [SessionClosed("keepalive timeout")]
    assert s.next_deadline(156.0) is None
    with pytest.raises(BrokenPipeError):
        s.open_stream()


def test_keepalive_late_tick_clamps_deadline() -> None:
    s = Session(client=False, now=0.0)
    assert s.next_deadline(50.0) == 50.0


def test_no_timeout_while_our_receive_buffer_is_full() -> None:
    client, server = pair(1, smuxbuf=1024, streambuf=1024)
    sid = client.open_stream()
    client.write(sid, b"f" * 2048)
    server.feed(client.outgoing(), 0.0)
    server.tick(31.0)
    assert not server.closed  # we stopped reading, not the peer
    server.events()
    server.read_consumed(sid, 2048)
    server.tick(60.0)
    assert not server.closed
    server.tick(61.0)
    assert server.closed


def test_keepalive_disabled() -> None:
    s = Session(client=True, keepalive_s=None)
    assert s.next_deadline(0.0) is None
    s.tick(1e9)
    assert not s.closed and s.outgoing() == b""


def test_idle_pair_stays_alive_for_ten_minutes() -> None:
    client, server = pair(2)
    now = 0.0
    while now < 600.0:
        now = min(client.next_deadline(now), server.next_deadline(now))
        for src, dst in ((client, server), (server, client)):
            src.tick(now)
            dst.feed(src.outgoing(), now)
    assert not client.closed and not server.closed
    assert client.frames_received == server.frames_received == 60


# ----- errors


@pytest.mark.parametrize(
    ("version", "wire"),
    [
        (1, encode_frame(2, CMD_NOP, 0)),  # version mismatch
        (2, encode_frame(1, CMD_SYN, 3)),
        (1, bytes.fromhex("0105000000000000")),  # unknown command
        (2, bytes.fromhex("02ff000000000000")),
        (1, struct.pack("<BBHI", 1, CMD_PSH, MAX_FRAME_SIZE + 1, 3)),  # oversize, body not needed
        (1, encode_frame(1, CMD_SYN, 3, b"x")),  # SYN/FIN/NOP carry no body
        (1, encode_frame(1, CMD_FIN, 3, b"x")),
        (1, encode_frame(1, CMD_NOP, 0, b"\0")),
        (2, encode_frame(2, CMD_UPD, 3, b"\0" * 4)),  # UPD body is exactly 8 bytes
        (2, encode_frame(2, CMD_SYN, 2) + encode_frame(2, CMD_UPD, 2, struct.pack("<II", 1, 100))),
    ],
)
def test_protocol_errors(version: int, wire: bytes) -> None:
    s = Session(client=True, version=version)
    with pytest.raises(ProtocolError):
        s.feed(wire, 0.0)
    assert s.closed and s.protocol_errors == 1
    s.feed(wire, 1.0)  # a dead session ignores input
    assert s.protocol_errors == 1
    with pytest.raises(BrokenPipeError):
        s.write(3, b"x")


def test_v1_accepts_and_ignores_upd() -> None:
    s = Session(client=False)
    s.feed(encode_frame(1, CMD_SYN, 3) + encode_frame(1, CMD_UPD, 3, struct.pack("<II", 5, 6)), 0.0)
    assert s.events() == [StreamOpened(3)]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"version": 3}, "smuxver"),
        ({"keepalive_s": 31}, "keepalive"),
        ({"keepalive_s": 0}, "keepalive"),
        ({"max_frame_size": 65536}, "max_frame_size"),
        ({"smuxbuf": 0}, "smuxbuf"),
        ({"streambuf": 8 * 1024 * 1024}, "streambuf"),
    ],
)
def test_config_errors(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Session(client=True, **kwargs)
    assert info.value.key == key


def test_stream_ids_exhausted() -> None:
    s = Session(client=True)
    s._next_id = 0xFFFFFFFD  # white-box: reaching it honestly takes 2**31 opens
    assert s.open_stream() == 0xFFFFFFFF
    with pytest.raises(BrokenPipeError):
        s.open_stream()


@settings(max_examples=150, deadline=None, database=None)
@given(
    version=st.sampled_from([1, 2]),
    client=st.booleans(),
    data=st.binary(max_size=400),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_fuzz_feed_raises_only_protocol_error(
    version: int,
    client: bool,
    data: bytes,
    cuts: list[int],
) -> None:
    s = Session(client=client, version=version, smuxbuf=64, streambuf=64)
    try:
        for piece in chunks(data, cuts):
            s.feed(piece, 0.0)
            for ev in s.events():
                if isinstance(ev, StreamData):
                    s.read_consumed(ev.sid, len(ev.data))
    except ProtocolError:
        assert s.closed and s.protocol_errors == 1


@settings(max_examples=100, deadline=None, database=None)
@given(
    version=st.sampled_from([1, 2]),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4),
)
def test_fuzz_mutated_valid_stream(version: int, flips: list[tuple[int, int]]) -> None:
    client = Session(client=True, version=version)
    for size in (0, 5, 70, 40_000):
        client.write(client.open_stream(), bytes(size))
    client.tick(10.0)
    wire = bytearray(client.outgoing())
    for pos, xor in flips:
        wire[pos % len(wire)] ^= xor
    server = Session(client=False, version=version)
    try:
        server.feed(bytes(wire), 0.0)
    except ProtocolError:
        assert server.protocol_errors == 1
