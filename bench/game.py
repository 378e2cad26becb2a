"""Game-like UDP: small datagrams at a fixed rate through each contender's UDP path, over a link the
impairer makes lossy (20 ms each way); the delivered fraction and the round-trip percentiles.

    probe -SOCKS5 UDP-> ss-local -UDP-> impairer -UDP-> ss-server -> UDP echo   (and direct: probe -> impairer -> echo)
"""

import random
import socket
import time
from dataclasses import dataclass, field

from bench.impair import Impairment, spawn_impairer
from bench.procs import Contender, free_port, ss_pair_at
from bench.targets import Targets
from bench.workloads import _recv_exact, percentile
from sidecar.proto.socks_addr import encode_addr, parse_addr

RATE_PPS, SECONDS = 60, 5
LOSSES = (0.0, 0.01, 0.05, 0.10)


@dataclass
class GameResult:
    name: str
    loss: float
    sent: int = 0
    rtt_ms: list[float] = field(default_factory=list)


def _socks_relay(socks_port: int) -> tuple[socket.socket, tuple[str, int]]:
    control = socket.create_connection(("127.0.0.1", socks_port), timeout=10)
    control.sendall(b"\x05\x01\x00")
    _recv_exact(control, 2)
    control.sendall(b"\x05\x03\x00" + encode_addr("0.0.0.0", 0))
    host, port, _ = parse_addr(_recv_exact(control, 10), 3)
    return control, ("127.0.0.1" if host in ("0.0.0.0", "::") else host, port)


def play(relay: tuple[str, int], header: bytes, result: GameResult) -> None:
    """RATE_PPS datagrams of 60..300 bytes for SECONDS, numbered; late echoes count up to 1 s after."""
    rng = random.Random(1)
    sent_at: dict[int, float] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        start = time.perf_counter()
        for i in range(RATE_PPS * SECONDS):
            while time.perf_counter() < start + i / RATE_PPS:
                _collect(sock, header, sent_at, result)
                time.sleep(0.0005)
            payload = i.to_bytes(4, "big") + bytes(rng.randint(56, 296))
            sent_at[i] = time.perf_counter()
            sock.sendto(header + payload, relay)
        result.sent += RATE_PPS * SECONDS
        deadline = time.perf_counter() + 1.0
        while time.perf_counter() < deadline:
            _collect(sock, header, sent_at, result)
            time.sleep(0.001)


def _collect(sock: socket.socket, header: bytes, sent_at: dict[int, float], result: GameResult) -> None:
    while True:
        try:
            data = sock.recv(2048)
        except BlockingIOError:
            return
        index = int.from_bytes(data[len(header):len(header) + 4], "big")
        if index in sent_at:
            result.rtt_ms.append((time.perf_counter() - sent_at.pop(index)) * 1e3)


def _play_direct(link: Impairment, seed: int, targets: Targets, result: GameResult) -> None:
    direct = spawn_impairer(("127.0.0.1", 0), ("127.0.0.1", targets.udp_echo), both=link, seed=seed)
    try:
        play(direct.listen, b"", result)
    finally:
        direct.stop()


def _play_pair(impl: str, method: str, link: Impairment, seed: int, targets: Targets, result: GameResult) -> None:
    server_port = free_port()
    impairer = spawn_impairer(("127.0.0.1", 0), ("127.0.0.1", server_port), both=link, seed=seed)
    contender: Contender | None = None
    try:
        contender = ss_pair_at(impl, method, server_port, impairer.listen[1])
        time.sleep(0.5)
        control, relay = _socks_relay(contender.socks_port)
        play(relay, b"\x00\x00\x00" + encode_addr("127.0.0.1", targets.udp_echo), result)
        control.close()
    finally:
        if contender is not None:
            contender.stop()
        impairer.stop()


def run(method: str, rounds: int = 1) -> list[GameResult]:
    """Per loss, rounds alternate the contenders (A B C A B C ...); within a round all see the same drops
    (one impairer seed per round)."""
    targets = Targets()
    results = []
    try:
        for loss in LOSSES:
            link = Impairment(loss=loss, delay_ms=20.0)
            by_name = {name: GameResult(name, loss) for name in ("direct", "sidecar", "libev")}
            for seed in range(3, 3 + rounds):
                _play_direct(link, seed, targets, by_name["direct"])
                for impl in ("sidecar", "libev"):
                    _play_pair(impl, method, link, seed, targets, by_name[impl])
            results += by_name.values()
    finally:
        targets.stop()
    return results


def table(results: list[GameResult]) -> list[str]:
    lines = ["| loss each way (20 ms each way) | contender | delivered | RTT p50 / p99 / max ms |", "|---|---|---|---|"]
    for r in results:
        got = len(r.rtt_ms)
        lines.append(f"| {r.loss * 100:.0f}% | {r.name} | {got / max(r.sent, 1) * 100:.1f}% ({got}/{r.sent}) "
                     f"| {percentile(r.rtt_ms, 50):.1f} / {percentile(r.rtt_ms, 99):.1f} / {max(r.rtt_ms):.1f} |")
    return lines
