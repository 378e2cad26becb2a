"""Floods against a running u2r-server (issue 4): garbage fake-TCP, spoofed SYNs and replayed handshakes
from many addresses, sent from the client namespace by raw sockets of this test while a u2r-client
carries an echo flow through the server.

Shows: the server process stays up, its RSS stays bounded, its counters count the junk (the shutdown
line `srv counters: ...`), the half-open table stops at its cap, and the existing flow keeps getting
its echoes during the flood and after it.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sidecar.proto.ipv4 import PROTO_TCP, build_ipv4
from sidecar.proto.l4 import TCP_ACK, TCP_SYN, build_tcp
from sidecar.proto.u2r_crypto import BlobCodec, Direction, derive_keys
from sidecar.proto.u2r_frame import build_bare
from sidecar.proto.u2r_handshake import MAX_HALF_OPEN
from tests.e2e.netns import NetnsPair, capture, in_netns, sh, start_u2r_pair, udp_socket
from tests.e2e.test_u2r_raw import _echo_loop, exchange, rss_mb, wait_line
from tests.helpers import Process, counters, require

KEY = "flood-key"
RAW_PORT = 4096
UDP_PORT = 3333
SPOOF_NET = "10.77.0.0/16"  # beyond the veth subnet; the server's answers go to the client namespace, which drops them
SPOOF_PREFIX = socket.inet_aton("10.77.0.0")[:2]
GARBAGE, SYNS, EXTRA_HELLOS = 5000, 5000, 2000  # and MAX_HALF_OPEN hellos before the extra ones
BATCH, PAUSE_S = 50, 0.005  # unanswered packets: about 10,000/s, a flood yet mostly what one Python core digests
WINDOW = 300  # answered packets: at most this many in flight (well within the server's 1 MB receive buffer)
ANSWER_WAIT_S = 10.0
RSS_GROWTH_BOUND_MB = 16.0  # a full half-open table is ~3 MB; a per-packet leak would be several times this
COUNTED = 0.9  # share of each flood the counters must show (a loaded host may drop some before the socket)


@pytest.fixture
def ns():
    require(os.geteuid() == 0, "needs root for network namespaces, raw sockets and firewall rules")
    require(shutil.which("ip") is not None and shutil.which("nft") is not None, "needs iproute2 and nftables")
    pair = NetnsPair(f"f{os.getpid() % 10000}")
    try:
        pair.create()
        sh("ip", "-n", pair.server, "route", "add", SPOOF_NET, "via", pair.CLIENT_IP)
        yield pair
    finally:
        pair.delete()


def spoofed(n: int) -> bytes:
    """The n-th spoofed source: 10.77.x.y, beyond the veth subnet."""
    return socket.inet_aton(f"10.77.{n >> 8 & 255}.{n & 255}")


def in_subnet(n: int) -> bytes:
    """A spoofed source inside the veth subnet (10.201.0.10-249), where nobody answers ARP."""
    return socket.inet_aton(f"10.201.0.{10 + n % 240}")


def tcp_packet(src: bytes, dst: bytes, sport: int, flags: int, payload: bytes, rng: random.Random) -> bytes:
    seg = build_tcp(src, dst, sport=sport, dport=RAW_PORT, seq=rng.getrandbits(32), ack=rng.getrandbits(32),
                    flags=flags, window=41000, tsval=rng.getrandbits(32), tsecr=0, payload=payload)
    return build_ipv4(src, dst, PROTO_TCP, len(seg), rng.getrandbits(16)) + seg


def garbage(dst: bytes, rng: random.Random) -> Iterator[bytes]:
    """ACK segments with random payloads; every fifth cut inside its TCP header (unparseable)."""
    for n in range(GARBAGE):
        src = in_subnet(n) if n % 2 else spoofed(n)
        packet = tcp_packet(src, dst, 1024 + n, TCP_ACK, rng.randbytes(rng.randrange(1, 1200)), rng)
        if n % 5 == 0:
            packet = build_ipv4(src, dst, PROTO_TCP, 12, n) + packet[20:32]
        yield packet


def syns(dst: bytes, rng: random.Random) -> Iterator[bytes]:
    for n in range(SYNS):
        yield tcp_packet(spoofed(n), dst, 1024 + n % 60000, TCP_SYN, b"", rng)


def hellos(dst: bytes, rng: random.Random, first: int, count: int) -> Iterator[bytes]:
    """One handshake1, sealed with the real key, replayed from `count` addresses from the `first`-th on."""
    codec = BlobCodec("aes128cbc", "hmac_sha1", derive_keys(KEY.encode()))
    blob = codec.seal(build_bare(0x1234, 0, 0x5678), Direction.C2S)
    for n in range(first, first + count):
        yield tcp_packet(spoofed(n), dst, 20000, TCP_ACK, blob, rng)


class Answers:
    """The server's answers to spoofed sources (SYN-ACKs, handshake replies), seen on the client's veth
    where they end (the client namespace does not forward). They pace the flood: the server gets every
    packet that calls for an answer, however slow the host, so those counters come out exact."""

    def __init__(self, ns: NetnsPair) -> None:
        self.sock = capture(ns.client, ns.client_dev)
        self.server = socket.inet_aton(ns.SERVER_IP)
        self.seen = 0

    def count(self) -> int:
        while True:
            try:
                frame = self.sock.recv(128)
            except BlockingIOError:
                return self.seen
            self.seen += frame[12:14] == b"\x08\x00" and frame[26:30] == self.server and frame[30:32] == SPOOF_PREFIX

    def wait(self, target: int) -> None:
        deadline = time.monotonic() + ANSWER_WAIT_S
        while self.count() < target:
            assert time.monotonic() < deadline, f"the server stopped answering at {self.seen} of {target}"
            time.sleep(0.001)


def flood(raw: socket.socket, dst: str, packets: Iterator[bytes], answers: Answers | None = None) -> None:
    """Send `packets`; with `answers` (one per packet expected) at most WINDOW unanswered, else paced."""
    base = answers.count() if answers else 0
    n = 0
    for n, packet in enumerate(packets, 1):
        raw.sendto(packet, (dst, 0))
        if n % BATCH:
            continue
        if answers is None:
            time.sleep(PAUSE_S)
        else:
            answers.wait(base + n - WINDOW)
    if answers is not None:
        answers.wait(base + n)


def raw_sender(ns: NetnsPair) -> socket.socket:
    """A header-included raw socket in the client namespace (it sends any source address we write)."""
    return in_netns(ns.client, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW))


def start_peers(ns: NetnsPair, tmp_path: Path) -> tuple[Process, Process]:
    server, client = start_u2r_pair(ns, tmp_path, KEY, ("127.0.0.1", UDP_PORT), RAW_PORT, wait_line)
    wait_line(client, "connected to")
    return server, client


def test_floods_cost_bounded_memory_are_counted_and_spare_the_flow(ns: NetnsPair, tmp_path: Path) -> None:
    target = udp_socket(ns.server, ("127.0.0.1", 7000))
    threading.Thread(target=_echo_loop, args=(target,), daemon=True).start()
    server, client = start_peers(ns, tmp_path)
    dst, rng, answers = socket.inet_aton(ns.SERVER_IP), random.Random(4), Answers(ns)
    rounds: list[int] = []
    try:
        with udp_socket(ns.client, ("127.0.0.1", 0)) as app, raw_sender(ns) as raw:
            assert exchange(app, ("127.0.0.1", UDP_PORT), 200) == 200
            rss_before = rss_mb(server.proc.pid)
            floods = [(garbage(dst, rng), None), (syns(dst, rng), answers),
                      (hellos(dst, rng, 0, MAX_HALF_OPEN), answers),  # each fills a half-open slot and is answered
                      (hellos(dst, rng, MAX_HALF_OPEN, EXTRA_HELLOS), None)]  # the table is full: no answer
            with ThreadPoolExecutor(1) as pool:
                for packets, paced_by in floods:
                    flooding = pool.submit(flood, raw, ns.SERVER_IP, packets, paced_by)
                    while not flooding.done():  # the flow, while the flood runs
                        rounds.append(exchange(app, ("127.0.0.1", UDP_PORT), 50))
                    flooding.result()
            assert server.proc.poll() is None, server.output()
            rss_after = rss_mb(server.proc.pid)
            assert exchange(app, ("127.0.0.1", UDP_PORT), 500) == 500
    finally:
        client.stop()
        server_log = server.stop()
        target.close()
        answers.sock.close()
    seen = counters(server_log, "srv")
    print(f"\nserver RSS MB: {rss_before:.1f} before, {rss_after:.1f} after; echoes during the flood:"
          f" {sum(rounds)}/{50 * len(rounds)}\n{seen}")
    assert "Traceback" not in server_log
    assert rss_after - rss_before < RSS_GROWTH_BOUND_MB
    assert sum(rounds) >= 0.9 * 50 * len(rounds), "the flow starved during the flood"
    assert seen["raw_invalid"] + seen["rejected"] >= COUNTED * GARBAGE and seen["raw_invalid"] > 0
    assert seen["syn_answered"] == SYNS + 1  # and the client's own
    assert seen["hellos"] >= MAX_HALF_OPEN + 1  # every answered one, and the client's own (popped at once)
    assert seen["hellos"] <= MAX_HALF_OPEN + 1 + seen["half_open_expired"]  # beyond that only into expired slots
    assert seen["half_open_full"] >= COUNTED * EXTRA_HELLOS, "the half-open cap did not hold"
    assert seen["ready"] == 1 and seen["moved"] == 0
    assert not ns.rules(ns.client) and not ns.rules(ns.server)
