"""The `u2r` suite (root): UDP through sidecar's udp2raw roles between two namespaces, against direct
UDP on the same link and, where UDP2RAW_BIN names its binary, the real udp2raw; faketcp with
aes128cfb + hmac_sha1 and aes128cbc + md5.

    client ns: probe -> u2r-client 127.0.0.1:3333 ==raw==> server ns: u2r-server -> UDP echo 127.0.0.1:7000
    direct:    probe ------------------------------------> server ns: UDP echo 10.231.0.1:7000

`run`: a plain veth between the two (round trips, then the rate blasts). `run_lossy`: the same namespaces
with a third between them whose bench/wire.py drops and delays frames (bench/wire_net.py), paced round trips
only.
"""

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from statistics import median

from bench.procs import bench_env, cpu_seconds, rss_kib
from bench.wire import WireProcess
from bench.wire_net import LOSSY_LINKS, WireNet
from bench.workloads import percentile

SERVER_NS, CLIENT_NS = "bench-u2rs", "bench-u2rc"
SERVER_IP, CLIENT_IP = "10.231.0.1", "10.231.0.2"
CASES = [("faketcp", "aes128cfb", "hmac_sha1"), ("faketcp", "aes128cbc", "md5")]
PROBE_TRIPS, PROBE_RATES = 2000, ""  # "": the probe's own rate list; a smoke run may shrink both
LOSSY_TRIPS, LOSSY_PPS = 300, 50  # paced round trips per round on each lossy link; an echo after 1 s is lost
# run_lossy: the same namespaces, names and addresses, with a wire namespace between them
NET = WireNet(CLIENT_NS, "bench-u2rw", SERVER_NS, "bu2rc", "bu2rwc", "bu2rws", "bu2rs", CLIENT_IP, SERVER_IP)


@dataclass
class U2rResult:
    name: str
    rtt_us: list[float] = field(default_factory=list)
    rates: dict[str, list[float]] = field(default_factory=dict)  # Mbit/s offered -> delivered fraction per round
    rss_kib: int = 0
    cpu_s: float = 0.0
    blast_cpu_s: float = 0.0  # during the rate blasts only
    echoed_bytes: int = 0  # blast payload that came back, so crossed the tunnel twice


@dataclass
class LossyResult:
    link: str
    name: str
    rtt_us: list[float] = field(default_factory=list)  # round trips back within 1 s, all rounds
    delivered: list[float] = field(default_factory=list)  # fraction back within 1 s, per round
    sent: int = 0


@dataclass(frozen=True)
class Tunnel:
    """One contender: `start` brings up its two ends (none for direct UDP); the probe sends to host:port."""

    name: str
    start: Callable[[Path], list[subprocess.Popen]]
    host: str = "127.0.0.1"
    port: int = 3333


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def create() -> None:
    delete()
    for name in (SERVER_NS, CLIENT_NS):
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
    sh("ip", "link", "add", "bu2rs", "netns", SERVER_NS, "type", "veth", "peer", "name", "bu2rc", "netns", CLIENT_NS)
    for name, dev, ip in ((SERVER_NS, "bu2rs", SERVER_IP), (CLIENT_NS, "bu2rc", CLIENT_IP)):
        sh("ip", "-n", name, "addr", "add", f"{ip}/24", "dev", dev)
        sh("ip", "-n", name, "link", "set", dev, "up")


def delete() -> None:
    for name in (SERVER_NS, CLIENT_NS, NET.wire_ns):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _in(ns: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *args], env=bench_env(), **kwargs)


def _echo(ns: str, bind: str) -> subprocess.Popen:
    code = ("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,4<<20)\n"
            f"s.bind(({bind!r},7000))\nwhile True:\n d,a=s.recvfrom(65536)\n s.sendto(d,a)\n")
    return _in(ns, sys.executable, "-c", code)


def _probe(host: str, port: int, phase: str, trips: int = PROBE_TRIPS, extra: str = "") -> dict:
    """Run bench.u2r_probe in the client namespace; `extra`: its rate list (rates) or datagrams/s (paced)."""
    extra = extra or (PROBE_RATES if phase == "rates" else "")
    args = [host, str(port), phase, str(trips), *([extra] if extra else [])]
    out = subprocess.run(["ip", "netns", "exec", CLIENT_NS, sys.executable, "-m", "bench.u2r_probe", *args],
                         capture_output=True, text=True, check=True, timeout=300, env=bench_env())
    return json.loads(out.stdout)


def _sidecar(ns: str, tmp: Path, name: str, table: str) -> subprocess.Popen:
    path = tmp / f"{name}.toml"
    path.write_text("[control]\nenabled = false\n" + table)
    proc = _in(ns, sys.executable, "-m", "sidecar", "run", "-c", str(path), "--log-level", "warning")
    time.sleep(2.0)
    return proc


def _sidecar_pair(mode: str, cipher: str, auth: str, tmp: Path) -> list[subprocess.Popen]:
    keys = f'key = "bench"\nraw_mode = "{mode}"\ncipher_mode = "{cipher}"\nauth_mode = "{auth}"\n'
    server = _sidecar(SERVER_NS, tmp, "server", f'[[u2r-server]]\nlisten = "{SERVER_IP}:4096"\n'
                                                f'remote = "127.0.0.1:7000"\n{keys}')
    client = _sidecar(CLIENT_NS, tmp, "client", f'[[u2r-client]]\nlisten = "127.0.0.1:3333"\n'
                                                f'remote = "{SERVER_IP}:4096"\n{keys}')
    return [server, client]


def _udp2raw_pair(binary: str, mode: str, cipher: str, auth: str, _: Path) -> list[subprocess.Popen]:
    """The real udp2raw, with the same options; -a: it adds its own iptables rule against the kernel's RSTs."""
    common = ["-k", "bench", "--raw-mode", mode, "--cipher-mode", cipher, "--auth-mode", auth, "-a"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    server = _in(SERVER_NS, binary, "-s", "-l0.0.0.0:4096", "-r127.0.0.1:7000", *common, **quiet)
    time.sleep(1.0)
    client = _in(CLIENT_NS, binary, "-c", "-l127.0.0.1:3333", f"-r{SERVER_IP}:4096", *common, **quiet)
    time.sleep(2.0)
    return [server, client]


def udp2raw_binary() -> tuple[str | None, str]:
    """(the binary named by UDP2RAW_BIN, or None; why it is not run)."""
    binary = os.environ.get("UDP2RAW_BIN", "")
    if not binary:
        return None, "not given (set UDP2RAW_BIN)"
    if not os.access(binary, os.X_OK):
        return None, f"not run: UDP2RAW_BIN={binary} is not an executable file"
    return binary, ""


def tunnels() -> list[Tunnel]:
    found = [Tunnel("direct UDP", lambda _: [], SERVER_IP, 7000)]
    found += [Tunnel(f"sidecar {m} {c}+{a}", partial(_sidecar_pair, m, c, a)) for m, c, a in CASES]
    binary, _ = udp2raw_binary()
    if binary:
        found += [Tunnel(f"udp2raw {m} {c}+{a}", partial(_udp2raw_pair, binary, m, c, a)) for m, c, a in CASES]
    return found


def _cpu(procs: list[subprocess.Popen]) -> float:
    return sum(cpu_seconds(p.pid) for p in procs)


@contextlib.contextmanager
def _running(tunnel: Tunnel, tmp: Path) -> Iterator[list[subprocess.Popen]]:
    """The contender's processes, started afresh and stopped on the way out."""
    procs = tunnel.start(tmp)
    try:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"{tunnel.name}: a process exited at start")
        yield procs
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(15)


def _measure(tunnel: Tunnel, r: U2rResult, tmp: Path) -> None:
    with _running(tunnel, tmp) as procs:
        start = _cpu(procs)
        r.rtt_us += _probe(tunnel.host, tunnel.port, "rtt")["rtt_us"]
        blasts_start = _cpu(procs)
        report = _probe(tunnel.host, tunnel.port, "rates")
        end = _cpu(procs)
        for rate, delivered in report["rates"].items():
            r.rates.setdefault(rate, []).append(delivered)
        r.cpu_s += end - start
        r.blast_cpu_s += end - blasts_start
        r.echoed_bytes += report["echoed_bytes"]
        r.rss_kib = max(r.rss_kib, sum(rss_kib(p.pid) for p in procs))


def _measure_lossy(tunnel: Tunnel, r: LossyResult, tmp: Path) -> None:
    with _running(tunnel, tmp):
        report = _probe(tunnel.host, tunnel.port, "paced", LOSSY_TRIPS, str(LOSSY_PPS))
    if report["warm_s"] < 0:
        print(f"u2r: {tunnel.name}, {r.link}: nothing came back before the paced trips", file=sys.stderr)
    r.rtt_us += report["rtt_us"]
    r.sent += report["sent"]
    r.delivered.append(len(report["rtt_us"]) / max(report["sent"], 1))


@contextlib.contextmanager
def _echoes() -> Iterator[None]:
    """UDP echoes on the server namespace's 127.0.0.1 (behind the tunnels) and SERVER_IP (direct)."""
    echoes = [_echo(SERVER_NS, "127.0.0.1"), _echo(SERVER_NS, SERVER_IP)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for proc in echoes:
            proc.kill()
            proc.wait()


def run(tmp: Path, rounds: int = 1) -> list[U2rResult]:
    """Rounds alternate the contenders (A B C A B C ...); each is started afresh per round, alone on the link."""
    create()
    contenders = tunnels()
    results = {t.name: U2rResult(t.name) for t in contenders}
    try:
        with _echoes():
            for _ in range(rounds):
                for tunnel in contenders:
                    _measure(tunnel, results[tunnel.name], tmp)
        return list(results.values())
    finally:
        delete()


def run_lossy(tmp: Path, rounds: int = 1) -> list[LossyResult]:
    """Per link of LOSSY_LINKS, rounds alternate the contenders, each started afresh per round; the paced
    round trips only (a loss-free rate means nothing on a lossy link)."""
    NET.create()
    link: WireProcess | None = None
    contenders = tunnels()
    results: list[LossyResult] = []
    try:
        with _echoes():
            for name, impairment in LOSSY_LINKS:
                link = NET.set_link(link, impairment)
                by_name = {t.name: LossyResult(name, t.name) for t in contenders}
                for _ in range(rounds):
                    for tunnel in contenders:
                        _measure_lossy(tunnel, by_name[tunnel.name], tmp)
                results += by_name.values()
        return results
    finally:
        if link is not None:
            with contextlib.suppress(RuntimeError):
                link.stop()
        NET.delete()


def loss_free(rates: dict[str, list[float]]) -> str:
    ok = [int(r) for r, delivered in rates.items() if median(delivered) >= 0.999]
    return f"{max(ok)}" if ok else "< 10"


def _delivered(r: U2rResult, mbit: int) -> str:
    return f"{median(r.rates[str(mbit)]) * 100:.1f}%" if str(mbit) in r.rates else "-"


def table(results: list[U2rResult]) -> list[str]:
    lines = ["| path | RTT p50 / p99 µs | highest loss-free rate, Mbit/s each way (1200 B datagrams) "
             "| delivered at 100 / 200 / 300 Mbit/s | CPU s (both) | CPU s per GB (both, blasts) "
             "| RSS MiB (both) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        at = " / ".join(_delivered(r, m) for m in (100, 200, 300))
        per_gb = f"{r.blast_cpu_s / (2 * r.echoed_bytes / 1e9):.1f}" if r.echoed_bytes else "-"
        extra = f"{r.cpu_s:.1f} | {per_gb} | {r.rss_kib / 1024:.1f}" if r.rss_kib else "- | - | -"
        lines.append(f"| {r.name} | {percentile(r.rtt_us, 50):.0f} / {percentile(r.rtt_us, 99):.0f} "
                     f"| {loss_free(r.rates)} | {at} | {extra} |")
    binary, why = udp2raw_binary()
    if not binary:
        lines.append(f"| real udp2raw | {why} | - | - | - | - | - |")
    return lines


def lossy_table(results: list[LossyResult]) -> list[str]:
    lines = ["| link | contender | RTT p50 / p99 ms | delivered within 1 s, all rounds (min-max of rounds) |",
             "|---|---|---|---|"]
    for r in results:
        back = len(r.rtt_us)
        rtt = (f"{percentile(r.rtt_us, 50) / 1000:.1f} / {percentile(r.rtt_us, 99) / 1000:.1f}"
               if r.rtt_us else "-")
        lines.append(f"| {r.link} | {r.name} | {rtt} | {100 * back / max(r.sent, 1):.1f}% ({back}/{r.sent}; "
                     f"{100 * min(r.delivered):.1f}-{100 * max(r.delivered):.1f}%) |")
    return lines
