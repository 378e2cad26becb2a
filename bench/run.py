"""Entry point: `python -m bench [--suite ss] [--rounds N]`; prints the tables and writes BENCHMARKS.md."""

import argparse
import datetime
import os
import platform
import subprocess
from pathlib import Path

from bench import ss_suite

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    libev = subprocess.run(["ss-server", "-h"], capture_output=True, text=True).stdout.split("\n")[1].strip()
    return (f"{datetime.date.today()}, {os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
            f"Python {platform.python_version()}, {libev}")


def ss_section(args: argparse.Namespace) -> list[str]:
    lines = [f"## ss: Shadowsocks pair ({args.method})", "",
             f"ss-local -> ss-server -> target, all on loopback, each pair as two processes. Bulk: one "
             f"{args.bulk_mb} MB download per round; request/response: {args.exchanges} 64-byte exchanges "
             f"per round on one connection; {args.rounds} rounds, contenders alternated. Peak RSS is VmHWM "
             f"of both processes. Reproduce: `python -m bench --suite ss --rounds {args.rounds}`.", ""]
    lines += ss_suite.table(ss_suite.run(args.method, args.rounds, args.bulk_mb * 1_000_000, args.exchanges))
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--suite", choices=["ss"], default="ss")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bulk-mb", type=int, default=200)
    parser.add_argument("--exchanges", type=int, default=2000)
    parser.add_argument("--method", default="aes-256-gcm")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    body = ss_section(args)
    text = "\n".join(["# Benchmarks", "", f"Machine: {machine()}.", "",
                      "Measured, not asserted: each table comes from one run of the command it names.", "", *body])
    print(text)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
