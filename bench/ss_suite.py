"""The `ss` suite: sidecar's Shadowsocks pair against shadowsocks-libev's, and direct TCP as the floor."""

import time
from dataclasses import dataclass

from bench.procs import Contender, ss_pair
from bench.workloads import Targets, bulk_download, median, percentile, request_response


@dataclass
class SsResult:
    name: str
    mbps: list[float]
    rtt_us: list[float]
    idle_rss_kib: int
    loaded_rss_kib: int
    cpu_s_per_gb: float


def run(method: str, rounds: int, bulk_bytes: int, exchanges: int) -> list[SsResult]:
    """Rounds alternate the contenders (A B C A B C ...) so drift on a noisy box hits all alike."""
    targets = Targets()
    contenders = [Contender("direct", None), ss_pair("sidecar", method), ss_pair("libev", method)]
    try:
        time.sleep(1.0)
        idle = {c.name: c.rss_kib() if c.procs else 0 for c in contenders}
        mbps: dict[str, list[float]] = {c.name: [] for c in contenders}
        rtts: dict[str, list[float]] = {c.name: [] for c in contenders}
        cpu: dict[str, float] = dict.fromkeys(mbps, 0.0)
        for _ in range(rounds):
            for c in contenders:
                before = c.cpu_seconds() if c.procs else 0.0
                mbps[c.name].append(bulk_download(c.socks_port, targets, bulk_bytes))
                cpu[c.name] += (c.cpu_seconds() if c.procs else 0.0) - before
                rtts[c.name] += request_response(c.socks_port, targets, exchanges)
        gb_moved = rounds * bulk_bytes / 1e9
        return [SsResult(c.name, mbps[c.name], rtts[c.name], idle[c.name],
                         c.rss_kib("VmHWM") if c.procs else 0, cpu[c.name] / gb_moved) for c in contenders]
    finally:
        for c in contenders:
            c.stop()


def table(results: list[SsResult]) -> list[str]:
    lines = ["| contender | bulk MB/s (median, min-max) | 64 B req/resp p50 µs | p99 µs | p99.9 µs "
             "| idle RSS MiB | peak RSS MiB | CPU s per GB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        rss = (f"{r.idle_rss_kib / 1024:.1f} | {r.loaded_rss_kib / 1024:.1f}" if r.idle_rss_kib else "- | -")
        cpu = f"{r.cpu_s_per_gb:.1f}" if r.idle_rss_kib else "-"
        lines.append(f"| {r.name} | {median(r.mbps):.0f} ({min(r.mbps):.0f}-{max(r.mbps):.0f}) "
                     f"| {percentile(r.rtt_us, 50):.0f} | {percentile(r.rtt_us, 99):.0f} "
                     f"| {percentile(r.rtt_us, 99.9):.0f} | {rss} | {cpu} |")
    return lines
