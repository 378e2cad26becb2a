"""The `chain` suite (root): the whole tunnel chain, sidecar's two processes against the real tools' six.

    client ns: workload -> SOCKS5 -> ss-local -> kcp-client -> u2r-client ==faketcp==> wire ns (bench/wire.py)
    server ns: ==faketcp==> u2r-server -> kcp-server -> ss-server -> targets (127.0.0.1)

"sidecar" is one process per side, its stages handing bytes by function call (conf/chain-*.toml). "real tools"
is ss-local (libev) -> kcptun-client -> udp2raw client ··· udp2raw server -> kcptun-server -> ss-server (libev),
each a process of its own, joined by loopback ports; udp2raw is sidecar's `udp2raw` command (the real one is in
no registry) unless UDP2RAW_BIN names the real binary. "direct" is the workload straight to the server
namespace's address over the same wire. Both chains stay up for the whole run; rounds alternate them.
"""

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from bench.impair import Impairment
from bench.netns import in_netns
from bench.procs import bench_env, cpu_seconds, rss_kib, stop_processes
from bench.targets import Targets
from bench.u2r_suite import udp2raw_binary
from bench.wire import WireProcess
from bench.wire_net import LOSSY_LINKS, WireNet
from bench.workloads import _recv_exact, median, open_path, percentile, timed_download, timed_exchanges, udp_round_trips

T = TypeVar("T")
CLIENT_NS, WIRE_NS, SERVER_NS = "bchain-client", "bchain-wire", "bchain-server"
CLIENT_DEV, WIRE_C, WIRE_S, SERVER_DEV = "bchc", "bchwc", "bchws", "bchs"
CLIENT_IP, SERVER_IP = "10.204.1.2", "10.204.1.1"
PASSWORD, KCP_KEY, U2R_KEY = "bench-pw", "bench-kcp", "bench-u2r"
METHOD = "chacha20-ietf-poly1305"
KCP_FLAGS = ["--crypt", "aes", "--mode", "fast", "--datashard", "10", "--parityshard", "3", "--nocomp"]
U2R_FLAGS = ["--raw-mode", "faketcp", "--cipher-mode", "aes128cbc", "--auth-mode", "hmac_sha1", "-a"]
LOSSY_SHARE = 0.1  # of the download size, on each lossy link
# (name, impairment, bulk share): clean, then wire_net's loss levels with 20 ms each way
LINKS: list[tuple[str, Impairment | None, float]] = [("clean", None, 1.0),
                                                     *((name, link, LOSSY_SHARE) for name, link in LOSSY_LINKS)]
NET = WireNet(CLIENT_NS, WIRE_NS, SERVER_NS, CLIENT_DEV, WIRE_C, WIRE_S, SERVER_DEV, CLIENT_IP, SERVER_IP)
UDP_SIZE = 100


# --- contenders ------------------------------------------------------------------------------------------

@dataclass
class Chain:
    """One contender's processes on each side; socks_port (client namespace) is None for direct."""

    name: str
    socks_port: int | None
    udp: bool = True
    client: list[subprocess.Popen] = field(default_factory=list)
    server: list[subprocess.Popen] = field(default_factory=list)
    u2r: list[subprocess.Popen] = field(default_factory=list)  # udp2raw processes of their own, if any
    logs: list[Path] = field(default_factory=list)

    @property
    def procs(self) -> list[subprocess.Popen]:
        return self.client + self.server

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def memory_kib(self) -> dict[str, int]:
        """VmRSS per side, of udp2raw processes and in all; PSS in all (shared pages split between the processes)."""
        client, server, u2r = (sum(rss_kib(p.pid) for p in procs) for procs in (self.client, self.server, self.u2r))
        pss = sum(pss_kib(p.pid) for p in self.procs)
        return {"client": client, "server": server, "u2r": u2r, "rss": client + server, "pss": pss}

    def check_alive(self) -> None:
        dead = [p.args for p in self.procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{self.name}: exited: {dead}\n{self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-1500:]}" for log in self.logs if log.exists())

    def stop(self) -> None:
        stop_processes(self.procs[::-1])


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        return next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))


def _spawn(chain: Chain, side: str, ns: str, argv: list[str], tmp: Path) -> subprocess.Popen:
    log = tmp / f"{chain.name.replace(' ', '-')}-{side}-{len(chain.procs)}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=bench_env())
    chain.logs.append(log)
    (chain.client if side == "client" else chain.server).append(proc)
    return proc


def _sidecar_config(side: str, socks_port: int) -> str:
    kcp = f'key = "{KCP_KEY}"\ncrypt = "aes"\nmode = "fast"\ndatashard = 10\nparityshard = 3\nnocomp = true\n'
    u2r = (f'key = "{U2R_KEY}"\nraw_mode = "faketcp"\ncipher_mode = "aes128cbc"\nauth_mode = "hmac_sha1"\n')
    ss = f'password = "{PASSWORD}"\nmethod = "{METHOD}"\nmode = "tcp_and_udp"\n'
    if side == "client":
        return (f'[control]\nenabled = false\n\n[[ss-local]]\nname = "socks"\nlocal_address = "127.0.0.1"\n'
                f'local_port = {socks_port}\n{ss}via = "kcp"\nudp_via = "raw"\n\n[[kcp-client]]\nname = "kcp"\n'
                f'{kcp}via = "raw"\n\n[[u2r-client]]\nname = "raw"\nremote = "{SERVER_IP}:4096"\n{u2r}')
    return (f'[control]\nenabled = false\n\n[[ss-server]]\nname = "ss"\n{ss}via = "kcps"\nudp_via = "raws"\n'
            f'block_private = false\n\n[[kcp-server]]\nname = "kcps"\n{kcp}via = "raws"\n\n'
            f'[[u2r-server]]\nname = "raws"\nlisten = "{SERVER_IP}:4096"\n{u2r}')


def start_sidecar(chain: Chain, tmp: Path) -> None:
    """One `sidecar run` per side, into `chain`, each up when it logs that it is ready."""
    assert chain.socks_port is not None
    for side, ns in (("server", SERVER_NS), ("client", CLIENT_NS)):
        path = tmp / f"chain-{side}.toml"
        path.write_text(_sidecar_config(side, chain.socks_port))
        _spawn(chain, side, ns, [sys.executable, "-m", "sidecar", "run", "-c", str(path), "--log-level", "info"], tmp)
        _wait_log(chain, chain.logs[-1], "sidecar ready")


def _udp2raw(role: str, listen: str, remote: str) -> list[str]:
    binary, _ = udp2raw_binary()
    base = [binary] if binary else [sys.executable, "-m", "sidecar", "udp2raw"]
    return [*base, role, f"-l{listen}", f"-r{remote}", "-k", U2R_KEY, *U2R_FLAGS]


def start_real_tools(chain: Chain, tmp: Path) -> None:
    """ss-local -> kcptun-client -> udp2raw ··· udp2raw -> kcptun-server -> ss-server (libev), into `chain`;
    raw port 4097, so that it runs beside the sidecar chain."""
    ss_port, kcp_udp, kcp_tcp, u2r_udp = 8388, 29900, 12948, 3333
    ss = ["-k", PASSWORD, "-m", METHOD]
    _spawn(chain, "server", SERVER_NS, [_which("ss-server"), "-s", "127.0.0.1", "-p", str(ss_port), *ss], tmp)
    _spawn(chain, "server", SERVER_NS, [_which("kcptun-server"), "-l", f"127.0.0.1:{kcp_udp}", "-t",
                                        f"127.0.0.1:{ss_port}", "--key", KCP_KEY, *KCP_FLAGS, "--quiet"], tmp)
    chain.u2r = [_spawn(chain, "server", SERVER_NS, _udp2raw("-s", f"{SERVER_IP}:4097", f"127.0.0.1:{kcp_udp}"), tmp),
                 _spawn(chain, "client", CLIENT_NS, _udp2raw("-c", f"127.0.0.1:{u2r_udp}", f"{SERVER_IP}:4097"), tmp)]
    _spawn(chain, "client", CLIENT_NS, [_which("kcptun-client"), "-l", f"127.0.0.1:{kcp_tcp}", "-r",
                                        f"127.0.0.1:{u2r_udp}", "--key", KCP_KEY, *KCP_FLAGS, "--quiet"], tmp)
    _spawn(chain, "client", CLIENT_NS, [_which("ss-local"), "-s", "127.0.0.1", "-p", str(kcp_tcp), "-b",
                                        "127.0.0.1", "-l", str(chain.socks_port), *ss], tmp)


def _which(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (apt-get install shadowsocks-libev kcptun)")
    return path


def _wait_log(chain: Chain, log: Path, line: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while line not in log.read_text():
        chain.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{chain.name}: no {line!r} in {log.name}\n{chain.log_tail()}")
        time.sleep(0.1)


def warm_up(chain: Chain, targets: Targets, timeout: float = 60.0) -> None:
    """Retry one proxied echo until the whole chain carries it (faketcp handshake, KCP session)."""
    deadline = time.monotonic() + timeout
    while True:
        chain.check_alive()
        try:
            with open_path(chain.socks_port, targets.echo, targets.host) as sock:
                sock.settimeout(5)
                sock.sendall(b"w")
                _recv_exact(sock, 1)
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{chain.name}: the chain carries nothing: {exc}\n{chain.log_tail()}") from exc
            time.sleep(0.5)


# --- workloads and results -------------------------------------------------------------------------------

@dataclass
class LinkResult:
    mbps: list[float] = field(default_factory=list)
    rtt_us: list[list[float]] = field(default_factory=list)  # per round
    udp_rtt_us: list[list[float]] = field(default_factory=list)
    udp_sent: int = 0
    bulk_cpu_s: float = 0.0
    bulk_bytes: int = 0
    after_bulk: dict[str, int] = field(default_factory=dict)  # KiB, the largest after any round's download


@dataclass
class ChainResult:
    name: str
    udp: bool
    links: dict[str, LinkResult] = field(default_factory=dict)
    idle: dict[str, int] = field(default_factory=dict)
    processes: int = 0


def _host(chain: Chain, targets: Targets) -> str:
    return SERVER_IP if chain.socks_port is None else targets.host


def _exchanges(chain: Chain, targets: Targets, count: int) -> list[float]:
    """Round trips (µs) of `count` 64-byte exchanges on one connection through the chain (or direct)."""
    with open_path(chain.socks_port, targets.echo, _host(chain, targets)) as sock:
        return timed_exchanges(sock, count)


def _direct_udp(count: int, port: int) -> list[float]:
    times = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        for _ in range(count):
            start = time.perf_counter()
            sock.sendto(b"u" * UDP_SIZE, (SERVER_IP, port))
            try:
                sock.recv(65536)
            except TimeoutError:
                continue
            times.append((time.perf_counter() - start) * 1e6)
    return times


def measure_round(chain: Chain, r: LinkResult, targets: Targets, size: int, count: int) -> None:
    """One round in the client namespace: a download, `count` TCP exchanges and, where carried, UDP round trips."""
    before = chain.cpu_seconds()
    with open_path(chain.socks_port, targets.source, _host(chain, targets)) as sock:
        r.mbps.append(timed_download(sock, size))
    r.bulk_cpu_s += chain.cpu_seconds() - before
    r.bulk_bytes += size
    if chain.procs:
        now = chain.memory_kib()
        r.after_bulk = {k: max(v, r.after_bulk.get(k, 0)) for k, v in now.items()}
    r.rtt_us.append(_exchanges(chain, targets, count))
    if chain.udp:
        r.udp_sent += count
        r.udp_rtt_us.append(_direct_udp(count, targets.udp_echo) if chain.socks_port is None
                            else udp_round_trips(chain.socks_port, targets, count, UDP_SIZE))


def _start_all(chains: list[Chain], tmp: Path, targets: Targets) -> None:
    """Start the contenders into `chains` (the caller's, so that it stops what started even if a start fails)."""
    chains.append(Chain("direct", None))
    chains.append(Chain("sidecar", 1080))
    start_sidecar(chains[-1], tmp)
    chains.append(Chain("real tools", 1081, udp=False))  # kcptun carries TCP only: ss-local runs without -u
    start_real_tools(chains[-1], tmp)
    for chain in chains[1:]:
        in_netns(CLIENT_NS, lambda chain=chain: warm_up(chain, targets))
    time.sleep(2.0)


def _measure_links(chains: list[Chain], results: dict[str, ChainResult], targets: Targets, link: WireProcess,
                   rounds: int, bulk_bytes: int, count: int) -> WireProcess:
    for name, impairment, share in LINKS:
        link = NET.set_link(link, impairment)
        for chain in chains[1:]:
            in_netns(CLIENT_NS, lambda chain=chain: warm_up(chain, targets))
        size = int(bulk_bytes * share)
        for _ in range(rounds):
            for chain in chains:
                r = results[chain.name].links.setdefault(name, LinkResult())
                in_netns(CLIENT_NS, lambda c=chain, r=r, size=size: measure_round(c, r, targets, size, count))
                chain.check_alive()
    return link


def run(rounds: int, bulk_bytes: int, count: int) -> list[ChainResult]:
    """Both chains up side by side (raw ports 4096 and 4097), contenders alternated within each link's rounds."""
    NET.create()
    link: WireProcess | None = None
    targets: Targets | None = None
    chains: list[Chain] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            link = NET.set_link(None, None)
            targets = Targets(prefix=["ip", "netns", "exec", SERVER_NS], bind="0.0.0.0", host="127.0.0.1")
            _start_all(chains, Path(tmp), targets)
            results = {c.name: ChainResult(c.name, c.udp, idle=c.memory_kib() if c.procs else {},
                                           processes=len(c.procs)) for c in chains}
            link = _measure_links(chains, results, targets, link, rounds, bulk_bytes, count)
            return list(results.values())
    finally:
        for chain in chains:
            chain.stop()
        if targets is not None:
            targets.stop()
        if link is not None:
            with contextlib.suppress(RuntimeError):
                link.stop()
        NET.delete()


# --- tables ----------------------------------------------------------------------------------------------

def _ms(rounds: list[list[float]]) -> str:
    pooled = [t for times in rounds for t in times]
    if not pooled:
        return "-"
    p50s = [median(times) / 1000 for times in rounds if times]
    return (f"{percentile(pooled, 50) / 1000:.1f} / {percentile(pooled, 99) / 1000:.1f} "
            f"({min(p50s):.1f}-{max(p50s):.1f})")


def _udp(r: ChainResult, link: LinkResult) -> str:
    if not r.udp:
        return "n/a: kcptun carries TCP only, so libev's ss-local has no UDP path through it"
    back = sum(len(times) for times in link.udp_rtt_us)
    return f"{_ms(link.udp_rtt_us)}, {100 * (1 - back / link.udp_sent):.1f}% lost"


def table(results: list[ChainResult]) -> list[str]:
    lines = ["| link | contender | bulk MB/s, median (min-max) | TCP 64 B req/resp p50 / p99 ms (round p50s) "
             f"| UDP {UDP_SIZE} B round trip p50 / p99 ms (round p50s), lost | CPU s per GB (all processes, "
             "downloads) |", "|---|---|---|---|---|---|"]
    for name, _, _ in LINKS:
        for r in results:
            link = r.links[name]
            cpu = f"{link.bulk_cpu_s / (link.bulk_bytes / 1e9):.1f}" if r.processes else "-"
            lines.append(f"| {name} | {r.name} | {median(link.mbps):.2f} ({min(link.mbps):.2f}-{max(link.mbps):.2f}) "
                         f"| {_ms(link.rtt_us)} | {_udp(r, link)} | {cpu} |")
    lines += ["", "| contender (processes) | when | client side RSS MiB | server side RSS MiB | RSS MiB, all "
              "| of which udp2raw processes | PSS MiB, all |", "|---|---|---|---|---|---|---|"]
    for r in results:
        if not r.processes:
            continue
        moments = [("idle after start", r.idle)] + [(f"after download, {n} (largest)", r.links[n].after_bulk)
                                                    for n, _, _ in LINKS]
        for when, kib in moments:
            u2r = f"{kib['u2r'] / 1024:.1f}" if kib["u2r"] else "- (in process)"
            lines.append(f"| {r.name} ({r.processes}) | {when} | {kib['client'] / 1024:.1f} "
                         f"| {kib['server'] / 1024:.1f} | {kib['rss'] / 1024:.1f} | {u2r} | {kib['pss'] / 1024:.1f} |")
    return lines


def udp2raw_used() -> str:
    binary, _ = udp2raw_binary()
    return f"the real udp2raw ({binary})" if binary else "sidecar's `udp2raw` command (Python)"
