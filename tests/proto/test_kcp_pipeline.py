"""The composed kcptun stack: two pipelines over an in-memory lossy link deliver streams intact."""

import heapq
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.errors import AuthError, ProtocolError
from sidecar.proto import smux
from sidecar.proto.kcp_crypt import KcpCrypt, derive_key
from sidecar.proto.kcp_pipeline import KcpPipeline, KcpSettings, route

KEY = derive_key("pipeline test")


class Link:
    """Both pipelines on a fake clock; each packet is dropped with `loss`, else delayed by `delay` (+ jitter)."""

    def __init__(self, settings: KcpSettings, loss: float, delay: float, seed: int, dup: float = 0.0) -> None:
        crypt = KcpCrypt("aes", KEY)
        self.rng = random.Random(seed)
        self.loss, self.delay, self.dup = loss, delay, dup
        self.now = 0.0
        self.client = KcpPipeline(0x1234, settings, crypt, client=True, now=0.0)
        self.server = KcpPipeline(0x1234, settings, crypt, client=False, now=0.0)
        self.wire: list[tuple[float, int, int, bytes]] = []
        self.seq = 0
        self.received: dict[tuple[bool, int], bytearray] = {}  # (at server?, sid) -> data
        self.echo = True

    def send(self, src: KcpPipeline, dst: KcpPipeline) -> None:
        for packet in src.packets_out():
            copies = (self.rng.random() >= self.loss) + (self.rng.random() < self.dup)
            for _ in range(copies):  # jitter of half the delay reorders packets too
                self.seq += 1
                at = self.now + self.delay * (1 + self.rng.random() / 2)
                heapq.heappush(self.wire, (at, self.seq, id(dst), packet))

    def settle(self, pipeline: KcpPipeline) -> None:
        pipeline.service(self.now)
        for event in pipeline.events():
            if isinstance(event, smux.StreamData):
                self.received.setdefault((pipeline is self.server, event.sid), bytearray()).extend(event.data)
                pipeline.consumed(event.sid, len(event.data))
                if pipeline is self.server and self.echo:
                    pipeline.smux.write(event.sid, event.data)
        pipeline.service(self.now)

    def flush(self) -> None:
        self.send(self.client, self.server)
        self.send(self.server, self.client)

    def run_until(self, done, limit_s: float = 120.0) -> None:
        while not done():
            deadlines = [p.next_deadline(self.now) for p in (self.client, self.server)]
            at = min([*deadlines, self.wire[0][0]] if self.wire else deadlines)
            assert at < limit_s, "transfer did not finish"
            self.now = max(self.now, at)
            while self.wire and self.wire[0][0] <= self.now:
                _, _, dst_id, packet = heapq.heappop(self.wire)
                dst = self.client if dst_id == id(self.client) else self.server
                dst.packet_in(packet, self.now)
                self.settle(dst)
            for pipeline in (self.client, self.server):
                if pipeline.next_deadline(self.now) <= self.now:
                    pipeline.update(self.now)
                    self.settle(pipeline)
            self.flush()


@pytest.mark.parametrize(("config", "loss"), [
    (KcpSettings(), 0.0),
    (KcpSettings(), 0.1),
    (KcpSettings(datashard=0, parityshard=0, nocomp=True, smuxver=2), 0.1),
    (KcpSettings(smuxver=2, nodelay=True, interval=10, sndwnd=256, rcvwnd=256), 0.2),
])
def test_streams_arrive_intact_over_a_lossy_link(config, loss):
    link = exchange(Link(config, loss, delay=0.02, seed=7))
    if config.fec and loss:
        assert link.server.fec_decoder.counters.recovered > 0


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32), loss=st.floats(0, 0.3), dup=st.floats(0, 0.2), smuxver=st.sampled_from([1, 2]),
       fec=st.booleans(), nocomp=st.booleans())
def test_any_seeded_loss_duplication_and_reordering_delivers_every_stream(seed, loss, dup, smuxver, fec, nocomp):
    shards = (10, 3) if fec else (0, 0)
    config = KcpSettings(smuxver=smuxver, datashard=shards[0], parityshard=shards[1], nocomp=nocomp)
    exchange(Link(config, loss, delay=0.01, seed=seed, dup=dup), size=40_000)


def exchange(link: Link, size: int = 200_000) -> Link:
    """Three streams from client to server, echoed back, each byte-identical on both sides."""
    rng = random.Random(1)
    payloads = {link.client.smux.open_stream(): rng.randbytes(size * 3 // 4) + bytes(size // 4) for _ in range(3)}
    sent = dict.fromkeys(payloads, 0)

    def done() -> bool:
        for sid, data in payloads.items():  # v2 takes what the peer's window allows: write the rest later
            if sent[sid] < len(data):
                sent[sid] += link.client.smux.write(sid, data[sent[sid] :])
        link.client.service(link.now)
        return all(link.received.get((side, sid)) == data for sid, data in payloads.items() for side in (True, False))

    link.run_until(done)
    assert link.client.counters.crypt_errors == link.server.counters.crypt_errors == 0
    return link


def test_idle_session_sleeps_until_the_keepalive():
    pipeline = KcpPipeline(1, KcpSettings(), KcpCrypt("none", KEY), client=True, now=100.0)
    assert pipeline.next_deadline(100.0) == pytest.approx(110.0)


def test_bad_packets_raise_and_are_counted():
    crypt = KcpCrypt("aes", KEY)
    pipeline = KcpPipeline(1, KcpSettings(), crypt, client=False, now=0.0)
    with pytest.raises(AuthError):
        pipeline.packet_in(b"short", 0.0)
    with pytest.raises(AuthError):
        pipeline.packet_in(KcpCrypt("aes", derive_key("other")).encrypt(b"x" * 40), 0.0)
    with pytest.raises(ProtocolError):
        pipeline.packet_in(crypt.encrypt(b"\0\0\0\0\xf1\0\x63\0" + b"x" * 30), 0.0)  # FEC size lies
    with pytest.raises(ProtocolError):
        pipeline.packet_in(crypt.encrypt(b"\x01\0\0\0\x99" + b"\0" * 30), 0.0)  # unknown KCP command
    c = pipeline.counters
    assert (c.crypt_errors, c.fec_bad, c.kcp_errors) == (2, 1, 1)


def test_route_reads_conv_through_the_fec_header():
    client = KcpPipeline(0xABCD, KcpSettings(), KcpCrypt("none", KEY), client=True, now=0.0)
    client.smux.open_stream()
    client.service(0.0)
    body = KcpCrypt("none", KEY).decrypt(client.packets_out()[0])
    assert route(body) == (0xABCD, True)
    assert route(b"\0" * 10) is None
