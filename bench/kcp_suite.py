"""The `kcp` suite: sidecar's kcp-client/kcp-server pair against kcptun's, over a clean link and
through the impairer (loss with 20 ms each way), plus direct TCP as the floor.

    bench client -TCP-> kcp-client -UDP-> impairer -UDP-> kcp-server -TCP-> target (mux port)
"""

import shutil
import socket
import sys
import time
from dataclasses import dataclass, field

from bench.impair import Impairment, spawn_impairer
from bench.procs import Contender, free_port, spawn, wait_for_port
from bench.targets import Targets
from bench.workloads import median, percentile, timed_download, timed_exchanges

KEY = "bench-key"
LOSSES = (0.0, 0.01, 0.02, 0.05, 0.10)  # each with 20 ms each way; 0, 1, 5 and 10% make the goodput plot
LINKS = [("clean", 0.0, 0.0), *((f"{loss * 100:.0f}% loss, 20 ms", loss, 20.0) for loss in LOSSES)]


@dataclass
class KcpResult:
    name: str
    link: str
    loss: float = 0.0
    delay_ms: float = 0.0
    mbps: list[float] = field(default_factory=list)
    rtt_us: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    bulk_cpu_s: float = 0.0  # during the downloads only
    bulk_bytes: int = 0
    rss_kib: int = 0


def command(impl: str, role: str) -> list[str]:
    if impl == "sidecar":
        return [sys.executable, "-m", "sidecar", role, "--log-level", "warning"]
    return [shutil.which(f"kcptun-{role.split('-')[1]}") or f"kcptun-{role.split('-')[1]}", "--quiet"]


def kcp_pair(impl: str, target_port: int, loss: float, delay_ms: float) -> tuple[Contender, object]:
    """kcp-server and kcp-client of one implementation, an impairer between them; (contender, impairer)."""
    server_port, local_port = free_port(), free_port()
    common = ["--key", KEY, "--crypt", "aes", "--mode", "fast", "--datashard", "10", "--parityshard", "3"]
    server = spawn(command(impl, "kcp-server") + ["-l", f"127.0.0.1:{server_port}", "-t",
                                                   f"127.0.0.1:{target_port}", *common])
    impairer = spawn_impairer(("127.0.0.1", 0), ("127.0.0.1", server_port),
                              both=Impairment(loss=loss, delay_ms=delay_ms), seed=7)
    relay = impairer.listen
    client = spawn(command(impl, "kcp-client") + ["-l", f"127.0.0.1:{local_port}", "-r",
                                                   f"{relay[0]}:{relay[1]}", *common])
    wait_for_port(local_port)
    return Contender(impl, local_port, [server, client]), impairer


def _open(port: int, kind: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(kind)
    return sock


def download(port: int, size: int) -> float:
    with _open(port, b"S") as sock:
        return timed_download(sock, size)


def exchanges(port: int, count: int) -> list[float]:
    with _open(port, b"E") as sock:
        return timed_exchanges(sock, count)


def _measure_round(contender: Contender, r: KcpResult, size: int, count: int) -> None:
    before = contender.cpu_seconds()
    r.mbps.append(download(contender.socks_port, size))
    bulk_done = contender.cpu_seconds()
    r.rtt_us += exchanges(contender.socks_port, count)
    r.cpu_s += contender.cpu_seconds() - before
    r.bulk_cpu_s += bulk_done - before
    r.bulk_bytes += size


def run(rounds: int, bulk_bytes: int, count: int) -> list[KcpResult]:
    targets = Targets()
    results: list[KcpResult] = []
    try:
        for link, loss, delay in LINKS:
            pairs = [kcp_pair(impl, targets.mux, loss, delay) for impl in ("sidecar", "kcptun")]
            time.sleep(1.0)
            by_name = {c.name: KcpResult(c.name, link, loss, delay) for c, _ in pairs}
            for _ in range(rounds):
                for contender, _ in pairs:
                    _measure_round(contender, by_name[contender.name], bulk_bytes if not loss else bulk_bytes // 4,
                                   count)
            for contender, impairer in pairs:
                by_name[contender.name].rss_kib = contender.rss_kib("VmHWM")
                contender.stop()
                impairer.stop()
            results += by_name.values()
    finally:
        targets.stop()
    return results


def table(results: list[KcpResult]) -> list[str]:
    lines = ["| link | contender | bulk MB/s, median (min-max) | 64 B req/resp p50 / p99 µs | CPU s (both) "
             "| CPU s per GB (both, downloads) | peak RSS MiB (both) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.link} | {r.name} | {median(r.mbps):.1f} ({min(r.mbps):.1f}-{max(r.mbps):.1f}) "
                     f"| {percentile(r.rtt_us, 50):.0f} / {percentile(r.rtt_us, 99):.0f} | {r.cpu_s:.1f} "
                     f"| {r.bulk_cpu_s / (r.bulk_bytes / 1e9):.1f} | {r.rss_kib / 1024:.1f} |")
    return lines


def goodput(results: list[KcpResult], delay_ms: float = 20.0) -> dict[str, dict[float, list[float]]]:
    """MB/s per contender and loss on the links with `delay_ms`, for plots.goodput_vs_loss."""
    series: dict[str, dict[float, list[float]]] = {}
    for r in results:
        if r.delay_ms == delay_ms:
            series.setdefault(r.name, {})[r.loss] = r.mbps
    return series
