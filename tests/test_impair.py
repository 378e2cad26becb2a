"""bench/impair.py: the user-space UDP link impairer that stands in for netem in tests and benches."""

import contextlib
import dataclasses
import json
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.impair import (
    ROOT,
    Channel,
    Impairer,
    Impairment,
    build_parser,
    impairment_args,
    impairments,
    spawn_impairer,
)

LOCAL = ("127.0.0.1", 0)
SEQ = struct.Struct("!I")


class Peer:
    """A UDP target on 127.0.0.1 that records what arrives (time, payload) and, if asked, echoes it."""

    def __init__(self, echo: bool = True) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(LOCAL)
        self.sock.settimeout(0.1)
        self.echo = echo
        self.arrivals: list[tuple[float, bytes]] = []
        self.senders: set[tuple[str, int]] = set()
        self._running = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def seqs(self) -> list[int]:
        return [SEQ.unpack_from(data)[0] for _, data in self.arrivals]

    def _loop(self) -> None:
        while self._running:
            try:
                data, peer = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            self.arrivals.append((time.monotonic(), data))
            self.senders.add(peer)
            if self.echo:
                self.sock.sendto(data, peer)

    def close(self) -> None:
        self._running = False
        self._thread.join()
        self.sock.close()


@contextlib.contextmanager
def peer(echo: bool = True) -> Iterator[Peer]:
    target = Peer(echo)
    try:
        yield target
    finally:
        target.close()


@contextlib.contextmanager
def impairer(target: tuple[str, int], **kwargs: object) -> Iterator[Impairer]:
    """An in-process Impairer on a thread: quicker to start than a process, fine where timing is loose."""
    running = Impairer(LOCAL, target, **kwargs).start()  # type: ignore[arg-type]
    try:
        yield running
    finally:
        running.stop()


def client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(LOCAL)
    return sock


def send_numbered(sock: socket.socket, dest: tuple[str, int], count: int, size: int = 64, per_ms: int = 50) -> None:
    """`count` packets carrying their sequence number, `per_ms` of them per millisecond or so."""
    pad = bytes(size - SEQ.size)
    for seq in range(count):
        sock.sendto(SEQ.pack(seq) + pad, dest)
        if seq % per_ms == per_ms - 1:
            time.sleep(0.001)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def drained(running: Impairer, sent: int) -> bool:
    """All `sent` packets reached the impairer and nothing waits in it any more."""
    counters = running.counters
    return counters["up"]["received"] == sent and all(side["in_flight"] == 0 for side in counters.values())


def echoed(running: Impairer) -> bool:
    """Every packet forwarded to the echo target has come back into the impairer."""
    counters = running.counters
    return counters["down"]["received"] == counters["up"]["forwarded"]


def count_replies(sock: socket.socket, done: Callable[[], bool], quiet_s: float = 0.3) -> int:
    """Read replies until none came for `quiet_s` while `done()` holds."""
    sock.settimeout(quiet_s)
    replies = 0
    while True:
        try:
            sock.recv(65536)
            replies += 1
        except TimeoutError:
            if done():
                return replies


def late_arrivals(seqs: list[int]) -> int:
    """Packets that arrived after one with a higher sequence number."""
    highest, late = -1, 0
    for seq in seqs:
        if seq < highest:
            late += 1
        highest = max(highest, seq)
    return late


def balanced(direction: dict[str, int]) -> bool:
    return (direction["received"] + direction["duplicated"] == direction["forwarded"] + direction["dropped_loss"]
            + direction["dropped_queue"] + direction["send_errors"] + direction["in_flight"])


def test_delay_each_way_adds_up_in_the_round_trip_time() -> None:
    with peer() as echo, spawn_impairer(LOCAL, echo.address, both=Impairment(delay_ms=20)) as link, \
            client() as sock:
        sock.settimeout(2)
        rtts = []
        for seq in range(25):
            sent = time.monotonic()
            sock.sendto(SEQ.pack(seq), link.listen)
            assert SEQ.unpack(sock.recv(64))[0] == seq
            rtts.append((time.monotonic() - sent) * 1000)
        counters = link.stop()
    assert 35 <= statistics.median(rtts) <= 45, rtts
    assert min(rtts) >= 40
    assert counters["up"]["forwarded"] == counters["down"]["forwarded"] == 25


def test_loss_rate_is_within_statistical_bounds() -> None:
    up = Impairment(loss=0.1)
    with peer(echo=False) as sink, impairer(sink.address, up=up, seed=7) as link, client() as sock:
        send_numbered(sock, link.listen, 2000)
        wait_for(lambda: drained(link, 2000))
        counters = link.counters["up"]
        wait_for(lambda: len(sink.arrivals) == counters["forwarded"])
    # 2000 draws at p = 0.1: mean 200, sigma 13.4; 160..240 is three sigma
    assert 160 <= counters["dropped_loss"] <= 240
    assert counters["forwarded"] == 2000 - counters["dropped_loss"]


def test_a_seed_replays_the_same_drops() -> None:
    def pattern(seed: int) -> list[int]:
        channel = Channel(Impairment(loss=0.3, jitter_ms=5), random.Random(seed))
        return [len(channel.admit(100, i / 1000)) for i in range(300)]
    assert pattern(1) == pattern(1)
    assert pattern(1) != pattern(2)


def test_gilbert_elliott_loses_in_bursts() -> None:
    channel = Channel(Impairment(ge_p=0.02, ge_r=0.25), random.Random(5))
    lost = [not channel.admit(100, i / 1000) for i in range(20000)]
    bursts = [len(run) for run in "".join("x" if x else "." for x in lost).split(".") if run]
    # the stationary loss rate is p / (p + r) = 7.4%; bursts average 1 / r = 4 packets
    assert 0.05 <= sum(lost) / len(lost) <= 0.10
    assert 3 <= statistics.mean(bursts) <= 5


def test_duplicates_arrive_and_are_counted() -> None:
    with peer(echo=False) as sink, impairer(sink.address, up=Impairment(dup=0.5), seed=3) as link, \
            client() as sock:
        send_numbered(sock, link.listen, 400)
        wait_for(lambda: drained(link, 400) and len(sink.arrivals) == link.counters["up"]["forwarded"])
        duplicated = link.counters["up"]["duplicated"]
        copies = Counter(sink.seqs())
    assert 160 <= duplicated <= 240
    assert sorted(copies) == list(range(400))
    assert sum(1 for n in copies.values() if n == 2) == duplicated


def test_reorder_holds_packets_back_so_later_ones_overtake() -> None:
    up = Impairment(reorder=0.2, reorder_ms=5)
    with peer(echo=False) as sink, impairer(sink.address, up=up, seed=4) as link, client() as sock:
        send_numbered(sock, link.listen, 300, per_ms=10)
        wait_for(lambda: drained(link, 300) and len(sink.arrivals) == 300)
        reordered = link.counters["up"]["reordered"]
    assert 30 <= reordered <= 90
    assert late_arrivals(sink.seqs()) >= reordered // 2


def test_jitter_reorders_unless_told_not_to() -> None:
    for jitter_reorders, expect_late in ((True, True), (False, False)):
        up = Impairment(delay_ms=10, jitter_ms=5, jitter_reorders=jitter_reorders)
        with peer(echo=False) as sink, impairer(sink.address, up=up, seed=5) as link, client() as sock:
            send_numbered(sock, link.listen, 200, per_ms=5)
            wait_for(lambda: drained(link, 200) and len(sink.arrivals) == 200)
        assert (late_arrivals(sink.seqs()) > 0) is expect_late


def test_rate_limit_caps_throughput_and_drops_what_the_queue_cannot_hold() -> None:
    up = Impairment(rate_mbit=2, queue_packets=50)
    with peer(echo=False) as sink, impairer(sink.address, up=up) as link, client() as sock:
        send_numbered(sock, link.listen, 500, size=1000, per_ms=1)  # ~1 packet per ms: 8 Mbit/s offered
        wait_for(lambda: drained(link, 500))
        counters = link.counters["up"]
        wait_for(lambda: len(sink.arrivals) == counters["forwarded"])
    times = [at for at, _ in sink.arrivals]
    mbit = (len(times) - 1) * 1000 * 8 / (times[-1] - times[0]) / 1e6
    assert 1.6 <= mbit <= 2.4, mbit
    assert counters["dropped_queue"] > 0
    assert counters["received"] == counters["forwarded"] + counters["dropped_queue"] == 500


def test_two_clients_each_get_their_own_replies() -> None:
    with peer() as echo, impairer(echo.address, both=Impairment(delay_ms=2, jitter_ms=1)) as link, \
            client() as first, client() as second:
        for sock, tag in ((first, b"first"), (second, b"second")):
            for i in range(20):
                sock.sendto(tag + b"-%d" % i, link.listen)
        for sock, tag in ((first, b"first"), (second, b"second")):
            sock.settimeout(2)
            got = sorted(sock.recv(64) for _ in range(20))
            assert got == sorted(tag + b"-%d" % i for i in range(20))
        wait_for(lambda: drained(link, 40))
        assert link.counters["down"]["forwarded"] == 40


def test_an_idle_client_is_forgotten_and_mapped_afresh() -> None:
    with peer() as echo, impairer(echo.address, nat_timeout_s=0.1) as link, client() as sock:
        sock.settimeout(2)
        deadline = time.monotonic() + 5
        while len(echo.senders) < 2:  # the sweep runs once a second
            assert time.monotonic() < deadline, "the idle mapping was never dropped"
            sock.sendto(b"ping", link.listen)
            assert sock.recv(64) == b"ping"
            time.sleep(0.25)


def test_counters_add_up_in_both_directions() -> None:
    # 4 Mbit/s serves 2.5 packets of 200 bytes per ms: the queue overflows even if a loaded machine sends
    # at a fifth of the nominal 20 per ms; down is narrower than up, so its queue overflows too.
    up = Impairment(delay_ms=2, jitter_ms=1, loss=0.1, dup=0.1, reorder=0.1, rate_mbit=4, queue_packets=20)
    down = dataclasses.replace(up, rate_mbit=1)
    with peer() as echo, impairer(echo.address, up=up, down=down, seed=11) as link, client() as sock:
        send_numbered(sock, link.listen, 1000, size=200, per_ms=20)
        replies = count_replies(sock, lambda: drained(link, 1000) and echoed(link))
        up, down = link.counters["up"], link.counters["down"]
    assert up["received"] == 1000
    assert all(balanced(direction) for direction in (up, down))
    assert len(echo.arrivals) == up["forwarded"] == down["received"]
    assert replies == down["forwarded"]
    for name in ("dropped_loss", "dropped_queue", "duplicated", "reordered"):
        assert up[name] > 0 and down[name] > 0, name


def test_cli_writes_its_counters_on_sigterm(tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    with peer() as echo, client() as sock:
        host, port = echo.address
        proc = subprocess.Popen([sys.executable, "-m", "bench.impair", "--listen", "127.0.0.1:0",
                                 "--target", f"{host}:{port}", "--delay-ms", "1", "--up-loss", "0.5",
                                 "--seed", "9", "--stats-file", str(stats)],
                                cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            _, listen_host, listen_port = proc.stdout.readline().split()  # type: ignore[union-attr]
            send_numbered(sock, (listen_host, int(listen_port)), 100)
            replies = count_replies(sock, lambda: True)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(5) == 0
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
    counters = json.loads(stats.read_text())
    assert counters["up"]["received"] == 100
    assert 30 <= counters["up"]["dropped_loss"] <= 70
    assert counters["down"]["dropped_loss"] == 0
    assert counters["down"]["received"] == len(echo.arrivals) == counters["up"]["forwarded"]
    assert counters["down"]["forwarded"] == replies
    assert all(balanced(direction) for direction in counters.values())


def test_direction_options_win_over_the_shared_ones() -> None:
    args = build_parser().parse_args(["--listen", "127.0.0.1:1", "--target", "[::1]:2", "--delay-ms", "20",
                                      "--down-delay-ms", "50", "--loss", "0.1", "--up-loss", "0",
                                      "--no-up-jitter-reorders"])
    up, down = impairments(args)
    assert args.target == ("::1", 2)
    assert up == Impairment(delay_ms=20, jitter_reorders=False)
    assert down == Impairment(delay_ms=50, loss=0.1)


def test_impairment_args_reproduce_the_impairment() -> None:
    up = Impairment(delay_ms=5, jitter_dist="normal", jitter_reorders=False, ge_p=0.01, rate_mbit=3, burst_bytes=9000)
    args = build_parser().parse_args(["--listen", "127.0.0.1:1", "--target", "127.0.0.1:2",
                                      *impairment_args(up, "up-")])
    assert impairments(args) == (up, Impairment())
