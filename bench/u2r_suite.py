"""The `u2r` suite (root): UDP through sidecar's udp2raw roles between two namespaces, against direct
UDP on the same veth; faketcp with aes128cfb + hmac_sha1 and aes128cbc + md5.

    client ns: probe -> u2r-client 127.0.0.1:3333 ==raw==> server ns: u2r-server -> UDP echo 127.0.0.1:7000
    direct:    probe ------------------------------------> server ns: UDP echo 10.231.0.1:7000
"""

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.procs import bench_env, cpu_seconds, rss_kib
from bench.workloads import percentile

SERVER_NS, CLIENT_NS = "bench-u2rs", "bench-u2rc"
SERVER_IP, CLIENT_IP = "10.231.0.1", "10.231.0.2"
CASES = [("faketcp", "aes128cfb", "hmac_sha1"), ("faketcp", "aes128cbc", "md5")]


@dataclass
class U2rResult:
    name: str
    rtt_us: list[float]
    rates: dict[str, float]
    rss_kib: int = 0
    cpu_s: float = 0.0


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
    for name in (SERVER_NS, CLIENT_NS):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _in(ns: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *args], env=bench_env(), **kwargs)


def _echo(ns: str, bind: str) -> subprocess.Popen:
    code = ("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,4<<20)\n"
            f"s.bind(({bind!r},7000))\nwhile True:\n d,a=s.recvfrom(65536)\n s.sendto(d,a)\n")
    return _in(ns, sys.executable, "-c", code)


def _probe(host: str, port: int) -> dict:
    out = subprocess.run(["ip", "netns", "exec", CLIENT_NS, sys.executable, "-m", "bench.u2r_probe", host, str(port)],
                         capture_output=True, text=True, check=True, timeout=300, env=bench_env())
    return json.loads(out.stdout)


def _sidecar(ns: str, tmp: Path, name: str, table: str) -> subprocess.Popen:
    path = tmp / f"{name}.toml"
    path.write_text("[control]\nenabled = false\n" + table)
    proc = _in(ns, sys.executable, "-m", "sidecar", "run", "-c", str(path), "--log-level", "warning")
    time.sleep(2.0)
    return proc


def run(tmp: Path) -> list[U2rResult]:
    create()
    echoes = [_echo(SERVER_NS, "127.0.0.1"), _echo(SERVER_NS, SERVER_IP)]
    try:
        time.sleep(0.5)
        direct = _probe(SERVER_IP, 7000)
        results = [U2rResult("direct UDP", direct["rtt_us"], direct["rates"])]
        for mode, cipher, auth in CASES:
            keys = f'key = "bench"\nraw_mode = "{mode}"\ncipher_mode = "{cipher}"\nauth_mode = "{auth}"\n'
            server = _sidecar(SERVER_NS, tmp, "server", f'[[u2r-server]]\nlisten = "{SERVER_IP}:4096"\n'
                                                        f'remote = "127.0.0.1:7000"\n{keys}')
            client = _sidecar(CLIENT_NS, tmp, "client", f'[[u2r-client]]\nlisten = "127.0.0.1:3333"\n'
                                                        f'remote = "{SERVER_IP}:4096"\n{keys}')
            cpu = cpu_seconds(server.pid) + cpu_seconds(client.pid)
            report = _probe("127.0.0.1", 3333)
            result = U2rResult(f"sidecar {mode} {cipher}+{auth}", report["rtt_us"], report["rates"])
            result.cpu_s = cpu_seconds(server.pid) + cpu_seconds(client.pid) - cpu
            result.rss_kib = rss_kib(server.pid) + rss_kib(client.pid)
            for proc in (client, server):
                proc.terminate()
                proc.wait(15)
            results.append(result)
        return results
    finally:
        for proc in echoes:
            proc.kill()
        delete()


def loss_free(rates: dict[str, float]) -> str:
    ok = [int(r) for r, delivered in rates.items() if delivered >= 0.999]
    return f"{max(ok)}" if ok else "< 10"


def table(results: list[U2rResult]) -> list[str]:
    lines = ["| path | RTT p50 / p99 µs | highest loss-free rate, Mbit/s each way (1200 B datagrams) "
             "| delivered at 100 / 200 / 300 Mbit/s | CPU s (both) | RSS MiB (both) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        at = " / ".join(f"{r.rates.get(str(m), 0) * 100:.1f}%" for m in (100, 200, 300))
        extra = f"{r.cpu_s:.1f} | {r.rss_kib / 1024:.1f}" if r.rss_kib else "- | -"
        lines.append(f"| {r.name} | {percentile(r.rtt_us, 50):.0f} / {percentile(r.rtt_us, 99):.0f} "
                     f"| {loss_free(r.rates)} | {at} | {extra} |")
    return lines
