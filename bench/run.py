"""Entry point: `python -m bench [--suite ss|ss-loss|kcp|u2r|memory|chain|all] [--rounds N]`; prints the tables
and writes BENCHMARKS.md (--output): all suites rewrite the whole file; one suite into an existing file replaces
only that suite's "## <suite>" section and keeps every other line as it was."""

import argparse
import datetime
import os
import platform
import subprocess
import tempfile
from pathlib import Path

from bench import chain_suite, game, kcp_suite, memory_suite, ss_loss_suite, ss_suite, tun_link, u2r_suite, wire_net
from bench.plots import goodput_vs_loss, latency_cdf

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
              f"direct sends through the same impairer to the echo. Delivered counts round trips, over "
              f"{args.rounds} rounds per contender, contenders alternated; within a round all three see the same "
              "drops (one impairer seed per round).", ""]
    return lines + game.table(game.run(args.method, args.rounds)) + [""]


def ss_loss_section(args: argparse.Namespace) -> list[str]:
    losses = ", ".join(f"{loss * 100:.0f}%" for loss in ss_loss_suite.LOSSES)
    lines = [f"## ss-loss: Shadowsocks pair over a lossy TCP link ({args.method})", "",
             "ss-local in this namespace, ss-server and the targets in a network namespace of their own, the TCP "
             "between them through bench/tun_link.py: a user-space router between two TUN devices that drops "
             f"each IP packet at random ({losses} each way) and delays each by {ss_loss_suite.DELAY_MS:.0f} ms each "
             "way, so both loss and delay are emulated per packet (no netem here) and the kernels' TCP "
             "retransmits and backs off as on a real path; the router itself is a Python process and caps the "
             "loss-free rate. Direct is the same workloads with no proxy over the same link. Per round and "
             f"contender: one {args.ss_loss_mb:g} MB download ({args.ss_loss_mb * ss_loss_suite.CLEAN_FACTOR:g} MB "
             f"at 0% loss) and {args.ss_loss_exchanges} 64-byte exchanges on one connection; {args.rounds} rounds, "
             "contenders alternated. Reproduce: "
             f"`sudo python -m bench --suite ss-loss --rounds {args.rounds}`.", ""]
    why = tun_link.unavailable()
    if why:
        print(f"ss-loss: not run: {why}")
        return lines + [f"(not run: {why})", ""]
    results = ss_loss_suite.run(args.method, args.rounds, int(args.ss_loss_mb * 1e6), args.ss_loss_exchanges)
    lines += ss_loss_suite.table(results) + [""]
    plot = goodput_vs_loss(ss_loss_suite.goodput(results), "ss pair over a lossy TCP link (20 ms each way)",
                           "ss-goodput-vs-loss.png")
    return lines + ([f"![ss goodput against loss]({plot})", ""] if plot else [])


def kcp_section(args: argparse.Namespace) -> list[str]:
    losses = ", ".join(f"{loss * 100:.0f}%" for loss in kcp_suite.LOSSES)
    lines = ["## kcp: kcptun pair (aes, fast, FEC 10/3, compression on)", "",
             f"kcp-client -> impairer -> kcp-server -> target, on loopback, each pair as two processes, the "
             f"impairer (bench/impair.py, per UDP datagram) between them: clean (no delay), and {losses} random "
             f"loss each way with 20 ms delay each way. Per round and contender: one {args.kcp_mb} MB download "
             f"({args.kcp_mb / 4:g} MB on the lossy links) and {args.kcp_exchanges} 64-byte exchanges; "
             f"{args.rounds} rounds, contenders alternated. CPU s is both processes' user+system seconds over all "
             "rounds; CPU s per GB counts the downloads only. Reproduce: "
             f"`python -m bench --suite kcp --rounds {args.rounds}`.", ""]
    results = kcp_suite.run(args.rounds, args.kcp_mb * 1_000_000, args.kcp_exchanges)
    lines += kcp_suite.table(results) + [""]
    plot = goodput_vs_loss(kcp_suite.goodput(results), "kcp pair: goodput against loss (20 ms each way)",
                           "kcp-goodput-vs-loss.png")
    return lines + ([f"![kcp goodput against loss]({plot})", ""] if plot else [])


def u2r_section(args: argparse.Namespace) -> list[str]:
    lines = ["## u2r: udp2raw roles between two network namespaces (needs root)", "",
             "probe -> u2r-client -> raw faketcp over a veth -> u2r-server -> UDP echo, against the same probe "
             "straight to an echo on the far namespace. "
             f"{u2r_suite.PROBE_TRIPS:,} round trips of 64 bytes, then 1 s paced blasts of "
             "1,200-byte datagrams at each rate (echoed, so the load runs both ways); \"loss-free\" is the "
             "highest rate with at least 99.9% back (median over rounds). The real udp2raw is in no registry: it "
             "runs as a third contender, same cases and options plus -a (its own iptables rule), when the "
             "environment variable UDP2RAW_BIN names its binary; its figures on this machine are also in "
             f"../shared/specs/udp2raw.md section 11. {args.rounds} rounds, contenders alternated, each started "
             "afresh per round. CPU s is both processes' over the probes; CPU s per GB is theirs during the rate "
             "blasts over the blast payload echoed back, counted twice (it crossed the tunnel each way). "
             f"Reproduce: `sudo UDP2RAW_BIN=/path/to/udp2raw python -m bench --suite u2r --rounds {args.rounds}`.",
             ""]
    if os.geteuid() != 0:
        return lines + ["(not run: needs root)", ""]
    with tempfile.TemporaryDirectory() as tmp:
        lines += u2r_suite.table(u2r_suite.run(Path(tmp), args.rounds)) + [""] + u2r_lossy_lines(args)
        return lines + u2r_suite.lossy_table(u2r_suite.run_lossy(Path(tmp), args.rounds)) + [""]


def u2r_lossy_lines(args: argparse.Namespace) -> list[str]:
    losses = ", ".join(f"{loss * 100:.0f}%" for loss in wire_net.LOSSES)
    return ["### u2r over a lossy link", "",
            "The same contenders and namespaces with a third namespace between the two, where bench/wire.py (a "
            f"Python L2 impairer; offloads off, ARP pinned) drops frames at random ({losses} each way) and delays "
            f"each by {wire_net.DELAY_MS:.0f} ms each way. Per round and contender, started afresh: one echo "
            f"awaited (the faketcp handshake done), then {u2r_suite.LOSSY_TRIPS} datagrams of 64 bytes at "
            f"{u2r_suite.LOSSY_PPS}/s, each echoed; an echo later than 1 s counts as lost. RTT: p50 / p99 over "
            "all rounds of those back; delivered: back within 1 s over sent, all rounds (min-max of the rounds). "
            f"No loss-free rate on these links. {args.rounds} rounds, contenders alternated, one wire per link "
            "(so the contenders see different drops).", ""]


def memory_section(_: argparse.Namespace) -> list[str]:
    lines = ["## memory", "",
             "RSS of one sidecar process running every role (the ss roles, both kcp roles and, as root, ss-redir "
             "and both udp2raw roles), idle after 2 s, against an empty interpreter and libev's ss-server; and "
             f"the RSS growth per idle KCP session (a client with conn = {memory_suite.SESSIONS} sessions, each "
             "carrying one idle stream), sidecar against kcptun. Reproduce: `python -m bench --suite memory`.", ""]
    return lines + memory_suite.table(memory_suite.run()) + [""]


def chain_section(args: argparse.Namespace) -> list[str]:
    losses = ", ".join(f"{loss * 100:.0f}%" for loss in wire_net.LOSSES)
    lines = ["## chain: the whole tunnel chain, one process per side against the real tools (needs root)", "",
             "SOCKS5 -> ss-local -> kcp-client -> udp2raw client, raw faketcp through bench/wire.py, udp2raw "
             "server -> kcp-server -> ss-server -> targets; client, wire and server in network namespaces of "
             "their own (the targets on the server's 127.0.0.1). sidecar: one `sidecar run` per side, its stages "
             "handing bytes by function call. real tools: ss-local and ss-server (shadowsocks-libev), "
             f"kcptun-client and kcptun-server, and {chain_suite.udp2raw_used()} as udp2raw on both ends, six "
             "processes joined by loopback ports. Both: chacha20-ietf-poly1305; KCP aes, fast, FEC 10/3, no "
             "compression, default windows; udp2raw faketcp, aes128cbc + hmac_sha1. direct: the same workloads "
             "from the client namespace to the server's address over the same wire, no proxy. Links: clean, then "
             f"{losses} random loss with {wire_net.DELAY_MS:.0f} ms delay each way (the wire is a Python process "
             "and caps the clean rate). Per round and contender: one "
             f"{args.chain_mb:g} MB download ({args.chain_mb * chain_suite.LOSSY_SHARE:g} MB on each lossy link), "
             f"{args.chain_exchanges} 64-byte exchanges on one connection and {args.chain_exchanges} UDP round "
             f"trips through SOCKS5 UDP ASSOCIATE (1 s timeout: later is lost); {args.rounds} rounds, "
             "contenders alternated, both chains up for the whole run. Latency: p50 / p99 over all rounds, "
             "(min-max) of the rounds' medians. Memory: every process of a contender, client and server side, "
             "VmRSS and PSS (smaps_rollup). Reproduce: "
             f"`sudo python -m bench --suite chain --rounds {args.rounds} --chain-mb {args.chain_mb:g} "
             f"--chain-exchanges {args.chain_exchanges}`.", ""]
    if os.geteuid() != 0:
        return lines + ["(not run: needs root)", ""]
    results = chain_suite.run(args.rounds, int(args.chain_mb * 1e6), args.chain_exchanges)
    lines += chain_suite.table(results) + [""]
    lossy_name = chain_suite.LINKS[-1][0]
    series = {r.name: [t for times in r.links[lossy_name].rtt_us for t in times] for r in results}
    plot = latency_cdf(series, f"chain: TCP 64-byte request/response, {lossy_name}", "chain-tcp-rtt-cdf.png")
    return lines + ([f"![chain TCP latency CDF, lossy link]({plot})", ""] if plot else [])


SECTIONS = {"ss": ss_section, "ss-loss": ss_loss_section, "kcp": kcp_section, "u2r": u2r_section,
            "memory": memory_section, "chain": chain_section}


def suite_of(heading: str) -> str | None:
    """The suite whose section a "## " heading opens ("## <suite>:" or "## <suite>"), or None."""
    return next((name for name in SECTIONS if heading == f"## {name}" or heading.startswith(f"## {name}:")), None)


def chunks(lines: list[str]) -> list[list[str]]:
    """The lines before the first "## " heading, then one chunk per "## " heading, up to the next one."""
    parts: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("## "):
            parts.append([])
        parts[-1].append(line)
    return parts


def replace_section(text: str, suite: str, section: list[str]) -> str:
    """`text` with `suite`'s section replaced by `section`, everything else kept byte for byte; a missing one
    goes before the next suite's section in SECTIONS order, or before the first other "## " section."""
    parts = chunks(text.split("\n"))
    mine = [i for i, part in enumerate(parts) if i and suite_of(part[0]) == suite]
    if mine:
        kept = [part for i, part in enumerate(parts) if i not in mine[1:]]
        kept[mine[0]] = section
        return "\n".join(line for part in kept for line in part)
    order = list(SECTIONS)
    later = set(order[order.index(suite) + 1:])
    at = next((i for i, part in enumerate(parts) if i and suite_of(part[0]) in later | {None}), len(parts))
    if at == len(parts) and parts[-1] and parts[-1][-1]:
        parts[-1].append("")
    return "\n".join(line for part in [*parts[:at], section, *parts[at:]] for line in part)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--suite", choices=["ss", "ss-loss", "kcp", "u2r", "memory", "chain", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bulk-mb", type=int, default=200)
    parser.add_argument("--exchanges", type=int, default=2000)
    parser.add_argument("--method", default="aes-256-gcm")
    parser.add_argument("--ss-loss-mb", type=float, default=2.0,
                        help="download per round on the lossy ss-loss links (10x on the loss-free one)")
    parser.add_argument("--ss-loss-exchanges", type=int, default=200)
    parser.add_argument("--kcp-mb", type=int, default=20)
    parser.add_argument("--kcp-exchanges", type=int, default=300)
    parser.add_argument("--chain-mb", type=float, default=20.0,
                        help="chain suite: download per round on the clean link (a tenth on each lossy one)")
    parser.add_argument("--chain-exchanges", type=int, default=200,
                        help="chain suite: TCP exchanges and UDP round trips per round")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    if args.suite != "all" and args.output.exists():
        section = SECTIONS[args.suite](args)
        text = replace_section(args.output.read_text(), args.suite, section)
    else:
        body = [line for name, section in SECTIONS.items() if args.suite in (name, "all") for line in section(args)]
        findings = (Path(__file__).with_name("findings.md")).read_text()
        text = "\n".join(["# Benchmarks", "", f"Machine: {machine()}.", "",
                          "Measured, not asserted: each table comes from one run of the command it names.", "",
                          *body, findings])
    print(text)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
