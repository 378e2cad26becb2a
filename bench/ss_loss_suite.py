"""The `ss-loss` suite (root): the ss TCP workloads with the TCP between ss-local and ss-server crossing a
lossy, delayed link; sidecar against shadowsocks-libev, and direct TCP over the same link as the floor.

    root ns: client -SOCKS5-> ss-local -TCP-> bench.tun_link (loss, delay per packet) -> namespace: ss-server -> target
    direct:  client ------------------------> bench.tun_link ------------------------> namespace: target

Loss and delay are both applied per IP packet by bench/tun_link.py, each way, so TCP's own retransmission
and congestion control react as they would on a real lossy path.
"""

import time
from dataclasses import dataclass, field

from bench import tun_link
from bench.impair import Impairment
from bench.procs import Contender, free_port, ss_pair_at
from bench.targets import Targets
from bench.workloads import bulk_download, median, percentile, request_response

LOSSES = (0.0, 0.01, 0.05, 0.10)
DELAY_MS = 20.0
CLEAN_FACTOR = 10  # the loss-free link moves this many times the lossy links' download


@dataclass
class LossResult:
    name: str
    loss: float
    mbps: list[float] = field(default_factory=list)
    rtt_us: list[float] = field(default_factory=list)


def _contenders(method: str) -> list[Contender]:
    pairs = [ss_pair_at(impl, method, port, port, server_host=tun_link.SERVER_IP,
                        server_prefix=tun_link.in_namespace())
             for impl, port in (("sidecar", free_port()), ("libev", free_port()))]
    return [Contender("direct", None), *pairs]


def _link(loss: float, method: str, rounds: int, bulk_bytes: int, exchanges: int,
          targets: Targets) -> list[LossResult]:
    link = tun_link.spawn_link(Impairment(loss=loss, delay_ms=DELAY_MS), seed=11)
    contenders: list[Contender] = []
    try:
        contenders = _contenders(method)
        results = {c.name: LossResult(c.name, loss) for c in contenders}
        time.sleep(0.5)
        size = bulk_bytes * (CLEAN_FACTOR if not loss else 1)
        for _ in range(rounds):
            for c in contenders:
                results[c.name].mbps.append(bulk_download(c.socks_port, targets, size))
                results[c.name].rtt_us += request_response(c.socks_port, targets, exchanges)
        return list(results.values())
    finally:
        for c in contenders:
            c.stop()
        link.stop()


def run(method: str, rounds: int, bulk_bytes: int, exchanges: int) -> list[LossResult]:
    """Per link (loss each way, DELAY_MS each way): rounds alternate the contenders (A B C A B C ...)."""
    tun_link.create_namespace()
    targets = Targets(tun_link.in_namespace(), bind="0.0.0.0", host=tun_link.SERVER_IP)
    try:
        return [r for loss in LOSSES for r in _link(loss, method, rounds, bulk_bytes, exchanges, targets)]
    finally:
        targets.stop()
        tun_link.delete_namespace()


def table(results: list[LossResult]) -> list[str]:
    lines = [f"| loss each way ({DELAY_MS:.0f} ms each way) | contender | bulk MB/s, median (min-max) "
             "| 64 B req/resp p50 / p99 ms |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.loss * 100:.0f}% | {r.name} | {median(r.mbps):.2f} ({min(r.mbps):.2f}-{max(r.mbps):.2f}) "
                     f"| {percentile(r.rtt_us, 50) / 1e3:.1f} / {percentile(r.rtt_us, 99) / 1e3:.1f} |")
    return lines


def goodput(results: list[LossResult]) -> dict[str, dict[float, list[float]]]:
    """MB/s per contender and loss, for plots.goodput_vs_loss."""
    series: dict[str, dict[float, list[float]]] = {}
    for r in results:
        series.setdefault(r.name, {})[r.loss] = r.mbps
    return series
