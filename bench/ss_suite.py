"""The `ss` suite: sidecar's Shadowsocks pair against shadowsocks-libev's, and direct TCP as the floor."""

import time
from dataclasses import dataclass, field

from bench.procs import Contender, ss_pair
from bench.targets import Targets
from bench.workloads import (
    bulk_download,
    connection_rate,
    idle_connections,
    median,
    percentile,
    request_response,
    udp_round_trips,
)

IDLE_CONNECTIONS = 1000


@dataclass
class SsResult:
    name: str
    mbps: list[float] = field(default_factory=list)
    rtt_us: list[float] = field(default_factory=list)
    udp_rtt_us: list[float] = field(default_factory=list)
    conn_per_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    idle_rss_kib: int = 0
    per_conn_kib: float = 0.0
    peak_rss_kib: int = 0


def _measure_round(c: Contender, r: SsResult, targets: Targets, bulk_bytes: int, exchanges: int) -> None:
    before = c.cpu_seconds() if c.procs else 0.0
    r.mbps.append(bulk_download(c.socks_port, targets, bulk_bytes))
    r.cpu_s += (c.cpu_seconds() if c.procs else 0.0) - before
    r.rtt_us += request_response(c.socks_port, targets, exchanges)
    r.udp_rtt_us += udp_round_trips(c.socks_port, targets, exchanges // 2)
    r.conn_per_s.append(connection_rate(c.socks_port, targets, 1.0))


def _measure_memory(c: Contender, r: SsResult, targets: Targets) -> None:
    assert c.socks_port is not None
    r.idle_rss_kib = c.rss_kib()
    held = idle_connections(c.socks_port, targets, IDLE_CONNECTIONS)
    time.sleep(0.5)
    r.per_conn_kib = (c.rss_kib() - r.idle_rss_kib) / IDLE_CONNECTIONS
    for sock in held:
        sock.close()


def run(method: str, rounds: int, bulk_bytes: int, exchanges: int) -> tuple[list[SsResult], int]:
    """Rounds alternate the contenders (A B C A B C ...) so drift on a noisy box hits all alike.

    Returns the results and the number of bytes moved per contender by the bulk workload.
    """
    targets = Targets()
    contenders = [Contender("direct", None), ss_pair("sidecar", method), ss_pair("libev", method)]
    results = {c.name: SsResult(c.name) for c in contenders}
    try:
        time.sleep(1.0)
        for c in contenders[1:]:
            _measure_memory(c, results[c.name], targets)
        for _ in range(rounds):
            for c in contenders:
                _measure_round(c, results[c.name], targets, bulk_bytes, exchanges)
        for c in contenders[1:]:
            results[c.name].peak_rss_kib = c.rss_kib("VmHWM")
        return list(results.values()), rounds * bulk_bytes
    finally:
        for c in contenders:
            c.stop()
        targets.stop()


def _spread(values: list[float]) -> str:
    return f"{median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def table(results: list[SsResult], bulk_total: int) -> list[str]:
    lines = ["| contender | bulk MB/s, median (min-max) | TCP 64 B req/resp p50 / p99 / p99.9 µs "
             "| UDP 100 B round trip p50 / p99 µs | connections/s | CPU s per GB |",
             "|---|---|---|---|---|---|"]
    for r in results:
        cpu = f"{r.cpu_s / (bulk_total / 1e9):.1f}" if r.idle_rss_kib else "-"
        lines.append(f"| {r.name} | {_spread(r.mbps)} | {percentile(r.rtt_us, 50):.0f} / "
                     f"{percentile(r.rtt_us, 99):.0f} / {percentile(r.rtt_us, 99.9):.0f} "
                     f"| {percentile(r.udp_rtt_us, 50):.0f} / {percentile(r.udp_rtt_us, 99):.0f} "
                     f"| {_spread(r.conn_per_s)} | {cpu} |")
    lines += ["", f"| contender (both processes) | idle RSS MiB | KiB per idle connection ({IDLE_CONNECTIONS} held) "
              "| peak RSS MiB |", "|---|---|---|---|"]
    for r in results:
        if r.idle_rss_kib:
            lines.append(f"| {r.name} | {r.idle_rss_kib / 1024:.1f} | {r.per_conn_kib:.1f} "
                         f"| {r.peak_rss_kib / 1024:.1f} |")
    return lines
