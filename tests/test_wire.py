"""bench/wire.py through tests/e2e/chain_net.py: the user-space Ethernet wire that impairs the link between
the client and relay namespaces (udp2raw's raw IP cannot cross bench/impair.py's UDP forwarder).

Shows: ICMP crosses the clean wire and nothing crosses without one; a 30 ms delay each way gives a
60-120 ms round trip (ICMP and UDP); 50% loss on up drops about half the datagrams, exactly as the wire
counts them; TCP carries 2 MB intact over 5% loss both ways; 30k frames/s of 1400 bytes cross a delayed
wire without a loss; frames over the egress MTU are counted and
dropped; delete() leaves no namespace behind. Needs root: skipped on a laptop, a failure under CI=true.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from bench.impair import Impairment
from tests.e2e.chain_net import ChainNet
from tests.e2e.netns import in_netns, sh
from tests.helpers import require

ICMP_ECHO, ICMP_ECHO_REPLY = 8, 0
ECHO_PORT, SINK_PORT = 7000, 7001
SEQ = struct.Struct("!I")
SO_RCVBUFFORCE = 33
DELAY = Impairment(delay_ms=30)
FLOOD_RATE = 30_000  # frames per second the wire must keep up with


@pytest.fixture(scope="module")
def chain() -> Iterator[ChainNet]:
    require(os.geteuid() == 0, "needs root for network namespaces and AF_PACKET sockets")
    require(shutil.which("ip") is not None, "needs iproute2")
    with ChainNet(f"w{os.getpid() % 100000}") as net:
        yield net


@pytest.fixture
def net(chain: ChainNet) -> Iterator[ChainNet]:
    """The chain with a clean wire again after each test."""
    yield chain
    chain.impair()


def open_in(ns: str, make: Callable[[], socket.socket]) -> socket.socket:
    sock = in_netns(ns, make)
    sock.settimeout(2.0)
    return sock


def udp(ns: str, bind: tuple[str, int] | None = None, buffer: int = 4 << 20) -> socket.socket:
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer)
        if bind:
            sock.bind(bind)
        return sock

    return open_in(ns, make)


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping(net: ChainNet, count: int, timeout: float = 1.0) -> list[float | None]:
    """ICMP echo from the client namespace to the server: the round trips in ms (None: no reply)."""
    sock = open_in(net.client, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
    ident = os.getpid() & 0xFFFF
    rtts: list[float | None] = []
    with sock:
        for seq in range(count):
            header = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
            payload = b"wire-test" * 6
            request = header[:2] + struct.pack("!H", inet_checksum(header + payload)) + header[4:] + payload
            start = time.monotonic()
            sock.sendto(request, (net.SERVER_IP, 0))
            rtts.append(_echo_reply(sock, ident, seq, start, timeout))
    return rtts


def _echo_reply(sock: socket.socket, ident: int, seq: int, start: float, timeout: float) -> float | None:
    while (left := start + timeout - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            packet = sock.recv(2048)
        except TimeoutError:
            break
        icmp = packet[(packet[0] & 0x0F) * 4:]
        kind, _, _, got_ident, got_seq = struct.unpack_from("!BBHHH", icmp)
        if (kind, got_ident, got_seq) == (ICMP_ECHO_REPLY, ident, seq):
            return (time.monotonic() - start) * 1000
    return None


def udp_rtts(net: ChainNet, count: int) -> list[float]:
    """Round trips in ms of datagrams echoed by a socket in the server namespace."""
    server = udp(net.server, (net.SERVER_IP, ECHO_PORT))
    client = udp(net.client)

    def echo() -> None:
        for _ in range(count):
            data, peer = server.recvfrom(2048)
            server.sendto(data, peer)

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    rtts = []
    with server, client:
        for seq in range(count):
            start = time.monotonic()
            client.sendto(SEQ.pack(seq), (net.SERVER_IP, ECHO_PORT))
            assert SEQ.unpack(client.recv(2048)) == (seq,)
            rtts.append((time.monotonic() - start) * 1000)
        thread.join(2)
    return rtts


def send_udp(net: ChainNet, sizes: list[int], settle: float = 0.3) -> list[int]:
    """Send datagrams of `sizes` from client to server; the sequence numbers of those that arrive."""
    sink = udp(net.server, (net.SERVER_IP, SINK_PORT))
    client = udp(net.client)
    with sink, client:
        for seq, size in enumerate(sizes):
            client.sendto(SEQ.pack(seq).ljust(size, b"."), (net.SERVER_IP, SINK_PORT))
        time.sleep(settle)
        sink.setblocking(False)
        arrived = []
        while True:
            try:
                arrived.append(SEQ.unpack_from(sink.recv(2048))[0])
            except BlockingIOError:
                return arrived


def test_ping_crosses_the_clean_wire(net: ChainNet) -> None:
    rtts = ping(net, 5)
    assert None not in rtts, rtts
    assert max(rtts) < 50, rtts  # type: ignore[type-var]


def test_nothing_crosses_without_a_wire(net: ChainNet) -> None:
    assert net.link is not None
    net.link.stop()
    assert ping(net, 1, timeout=0.3) == [None]


def test_delay_each_way_adds_up_in_the_round_trip(net: ChainNet) -> None:
    net.impair(DELAY, DELAY)
    for rtts in (ping(net, 5), udp_rtts(net, 5)):
        assert None not in rtts, rtts
        # no frame leaves early; a busy machine may hold one back, not the median
        assert min(rtts) >= 60 and statistics.median(rtts) < 120, rtts  # type: ignore[type-var]


def test_loss_drops_about_half_and_the_counters_agree(net: ChainNet) -> None:
    link = net.impair(up=Impairment(loss=0.5), seed=7)
    arrived = send_udp(net, [100] * 200)
    up = link.stop()["up"]
    assert 60 <= len(arrived) <= 140, len(arrived)
    # the neighbours are pinned and IPv6 is off, so besides the datagrams only a straggler from an earlier
    # test (a retransmitted FIN) may cross
    stray = up["received"] - 200
    assert 0 <= stray <= 2, up
    assert len(arrived) <= up["forwarded"] <= len(arrived) + stray, up
    assert up["forwarded"] + up["dropped_loss"] == up["received"], up


def test_tcp_transfer_survives_loss(net: ChainNet) -> None:
    link = net.impair(Impairment(loss=0.05), Impairment(loss=0.05), seed=3)
    listener = open_in(net.server, lambda: socket.create_server((net.SERVER_IP, 0)))
    port = listener.getsockname()[1]
    received: dict[str, object] = {}

    def receive() -> None:
        conn, _ = listener.accept()
        conn.settimeout(15)
        digest, size = hashlib.sha256(), 0
        with conn:
            while data := conn.recv(1 << 16):
                digest.update(data)
                size += len(data)
        received.update(sha256=digest.hexdigest(), size=size)

    data = os.urandom(2 << 20)
    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    with listener, open_in(net.client, socket.socket) as client:
        client.settimeout(15)
        client.connect((net.SERVER_IP, port))
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        thread.join(20)
    assert received == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    counters = link.stop()
    assert counters["up"]["dropped_loss"] > 0 and counters["down"]["dropped_loss"] > 0, counters
    assert counters["up"]["dropped_oversize"] == counters["down"]["dropped_oversize"] == 0, counters


def test_keeps_up_with_30k_frames_per_second(net: ChainNet) -> None:
    """A second of 1400-byte datagrams at 30k/s through the heap (5 ms delay, 1 ms jitter): none lost."""
    link = net.impair(up=Impairment(delay_ms=5, jitter_ms=1))
    sink = udp(net.server, (net.SERVER_IP, SINK_PORT), buffer=64 << 20)  # the whole second, if need be
    client = udp(net.client)
    arrived = 0

    def receive() -> None:
        nonlocal arrived
        sink.settimeout(0.5)
        try:
            while sink.recv(2048):
                arrived += 1
        except TimeoutError:
            pass

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    with sink, client:
        sent = _paced(client, (net.SERVER_IP, SINK_PORT), rate=FLOOD_RATE, seconds=1.0)
        thread.join(5)
    up = link.stop()["up"]
    # slack for a machine busy with more than this test; idle, nothing is lost
    assert up["dropped_kernel"] <= 0.01 * sent and up["forwarded"] >= 0.99 * sent, up
    assert arrived >= 0.98 * sent, (arrived, sent)


def _paced(sock: socket.socket, dest: tuple[str, int], rate: int, seconds: float) -> int:
    payload, total, sent = b"x" * 1400, int(rate * seconds), 0
    start = time.monotonic()
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        for _ in range(due - sent):
            sock.sendto(payload, dest)
        sent = due
        time.sleep(0.0005)
    return sent


def test_frames_over_the_egress_mtu_are_counted_and_dropped(net: ChainNet) -> None:
    sh("ip", "-n", net.wire, "link", "set", net.wire_b, "mtu", "1000")
    try:
        link = net.impair()  # the wire reads the MTU when it starts
        arrived = send_udp(net, [1400, 500] * 5, settle=0.1)
        up = link.stop()["up"]
    finally:
        sh("ip", "-n", net.wire, "link", "set", net.wire_b, "mtu", "1500")
    assert arrived == [1, 3, 5, 7, 9]
    assert (up["received"], up["forwarded"], up["dropped_oversize"]) == (10, 5, 5), up


def test_delete_leaves_no_namespace(chain: ChainNet) -> None:
    other = ChainNet(f"d{os.getpid() % 100000}")
    with other:
        link = other.link
        assert link is not None
        assert set(other.namespaces) <= set(sh("ip", "netns", "list").split())
    assert link.poll() is not None
    assert not set(other.namespaces) & set(sh("ip", "netns", "list").split())
