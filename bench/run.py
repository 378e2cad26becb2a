"""Entry point: `python -m bench [--suite ss] [--rounds N]`; prints the tables and writes BENCHMARKS.md."""

import argparse
import datetime
import os
import platform
import subprocess
import tempfile
from pathlib import Path

from bench import game, kcp_suite, memory_suite, ss_suite, u2r_suite
from bench.plots import latency_cdf

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    libev = subprocess.run(["ss-server", "-h"], capture_output=True, text=True).stdout.split("\n")[1].strip()
    return (f"{datetime.date.today()}, {os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, {libev}")


def ss_section(args: argparse.Namespace) -> list[str]:
    lines = [f"## ss: Shadowsocks pair ({args.method})", "",
             f"ss-local -> ss-server -> target, all on loopback, each pair as two processes, the targets in a "
             f"process of their own. Per round and contender: one {args.bulk_mb} MB download; {args.exchanges} "
             f"64-byte TCP exchanges on one connection; {args.exchanges // 2} UDP round trips through SOCKS5 UDP "
             f"ASSOCIATE; connect-echo-close for 1 s. {args.rounds} rounds, contenders alternated. Memory: RSS "
             f"after start, then with {ss_suite.IDLE_CONNECTIONS} idle proxied connections held, and VmHWM at "
             f"the end. Reproduce: `python -m bench --suite ss --rounds {args.rounds}`.", ""]
    results, bulk_total = ss_suite.run(args.method, args.rounds, args.bulk_mb * 1_000_000, args.exchanges)
    lines += ss_suite.table(results, bulk_total) + [""]
    for attr, what, filename in (("rtt_us", "TCP 64-byte request/response", "ss-tcp-rtt-cdf.png"),
                                 ("udp_rtt_us", "UDP 100-byte round trip", "ss-udp-rtt-cdf.png")):
        plot = latency_cdf({r.name: getattr(r, attr) for r in results}, f"ss suite: {what}", filename)
        if plot:
            lines += [f"![{what} latency CDF]({plot})", ""]
    lines += ["### ss: game-like UDP over a lossy link", "",
              f"{game.RATE_PPS} datagrams/s of 60-300 bytes for {game.SECONDS} s, each echoed, through SOCKS5 UDP "
              "ASSOCIATE with the impairer between ss-local and ss-server (random loss each way, 20 ms each way); "
              "direct sends through the same impairer to the echo. Delivered counts round trips.", ""]
    return lines + game.table(game.run(args.method)) + [""]


def kcp_section(args: argparse.Namespace) -> list[str]:
    lines = ["## kcp: kcptun pair (aes, fast, FEC 10/3, compression on)", "",
             f"kcp-client -> impairer -> kcp-server -> target, on loopback, each pair as two processes, the "
             f"impairer (bench/impair.py) between them: clean, and 2% and 10% random loss each way with 20 ms "
             f"delay each way. Per round and contender: one {args.kcp_mb} MB download ({args.kcp_mb / 4:g} MB on "
             f"the lossy links) and {args.kcp_exchanges} 64-byte exchanges; {args.rounds} rounds, contenders "
             f"alternated. CPU is both processes' user+system seconds over all rounds. Reproduce: "
             f"`python -m bench --suite kcp --rounds {args.rounds}`.", ""]
    results = kcp_suite.run(args.rounds, args.kcp_mb * 1_000_000, args.kcp_exchanges)
    return lines + kcp_suite.table(results) + [""]


def u2r_section(args: argparse.Namespace) -> list[str]:
    lines = ["## u2r: udp2raw roles between two network namespaces (needs root)", "",
             "probe -> u2r-client -> raw faketcp over a veth -> u2r-server -> UDP echo, against the same probe "
             "straight to an echo on the far namespace. 2,000 round trips of 64 bytes, then 1 s paced blasts of "
             "1,200-byte datagrams at each rate (echoed, so the load runs both ways); \"loss-free\" is the "
             "highest rate with at least 99.9% back. The real udp2raw is in no registry, so it is not run here; "
             "its figures on this machine are in ../shared/specs/udp2raw.md section 11. Reproduce: "
             "`sudo python -m bench --suite u2r`.", ""]
    if os.geteuid() != 0:
        return lines + ["(not run: needs root)", ""]
    with tempfile.TemporaryDirectory() as tmp:
        return lines + u2r_suite.table(u2r_suite.run(Path(tmp))) + [""]


def memory_section(_: argparse.Namespace) -> list[str]:
    lines = ["## memory", "",
             "RSS of one sidecar process running every role (the ss roles, both kcp roles and, as root, ss-redir "
             "and both udp2raw roles), idle after 2 s, against an empty interpreter and libev's ss-server; and "
             f"the RSS growth per idle KCP session (a client with conn = {memory_suite.SESSIONS} sessions, each "
             "carrying one idle stream), sidecar against kcptun. Reproduce: `python -m bench --suite memory`.", ""]
    return lines + memory_suite.table(memory_suite.run()) + [""]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--suite", choices=["ss", "kcp", "u2r", "memory", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bulk-mb", type=int, default=200)
    parser.add_argument("--exchanges", type=int, default=2000)
    parser.add_argument("--method", default="aes-256-gcm")
    parser.add_argument("--kcp-mb", type=int, default=20)
    parser.add_argument("--kcp-exchanges", type=int, default=300)
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    sections = {"ss": ss_section, "kcp": kcp_section, "u2r": u2r_section, "memory": memory_section}
    body = [line for name, section in sections.items() if args.suite in (name, "all") for line in section(args)]
    findings = (Path(__file__).with_name("findings.md")).read_text()
    text = "\n".join(["# Benchmarks", "", f"Machine: {machine()}.", "",
                      "Measured, not asserted: each table comes from one run of the command it names.", "", *body,
                      findings])
    print(text)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
