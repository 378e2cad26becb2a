"""The `memory` suite: RSS of one sidecar process with every role configured and idle, against an
empty Python and the real tools' idle processes; and the cost of each idle KCP session."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.kcp_suite import command
from bench.procs import Contender, free_port, rss_kib, spawn, wait_for_port

SESSIONS = 100


def _every_role(tmp: Path) -> str:
    p = {name: free_port() for name in ("socks", "ss", "tunnel", "kcp_local", "kcp_udp", "redir", "u2r")}
    roles = f"""
[control]
enabled = false

[[ss-server]]
server = "127.0.0.1"
server_port = {p["ss"]}
password = "pw"
mode = "tcp_and_udp"

[[ss-local]]
local_port = {p["socks"]}
server = "127.0.0.1"
server_port = {p["ss"]}
password = "pw"
mode = "tcp_and_udp"

[[ss-tunnel]]
local_port = {p["tunnel"]}
tunnel_address = "127.0.0.1:53"
server = "127.0.0.1"
server_port = {p["ss"]}
password = "pw"
mode = "tcp_and_udp"

[[kcp-server]]
listen = "127.0.0.1:{p["kcp_udp"]}"
target = "127.0.0.1:{p["socks"]}"
key = "k"

[[kcp-client]]
localaddr = "127.0.0.1:{p["kcp_local"]}"
remoteaddr = "127.0.0.1:{p["kcp_udp"]}"
key = "k"
"""
    if os.geteuid() == 0:  # the transparent and raw roles need root
        roles += f"""
[[ss-redir]]
local_port = {p["redir"]}
server = "127.0.0.1"
server_port = {p["ss"]}
password = "pw"
mode = "tcp_and_udp"

[[u2r-server]]
listen = "127.0.0.1:{p["u2r"]}"
remote = "127.0.0.1:{p["kcp_udp"]}"
auto_rule = false

[[u2r-client]]
listen = "127.0.0.1:{free_port()}"
remote = "127.0.0.1:{p["u2r"]}"
auto_rule = false
"""
    path = tmp / "every-role.toml"
    path.write_text(roles)
    return str(path)


def _idle_rss(args: list[str], port: int | None = None, settle_s: float = 2.0) -> int:
    proc = spawn(args)
    try:
        if port is not None:
            wait_for_port(port)
        time.sleep(settle_s)
        return rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def _kcp_session_cost(impl: str) -> float:
    """KiB per idle KCP session: a client with `conn` sessions, each carrying one idle stream."""
    server_port, local_port, echo = free_port(), free_port(), free_port()
    sink = subprocess.Popen([sys.executable, "-c", f"import socket,time\ns=socket.create_server(('127.0.0.1',{echo}))\n"
                             "c=[]\nwhile True: c.append(s.accept())"])
    server, client = command(impl, "kcp-server"), command(impl, "kcp-client")
    procs = [spawn([*server, "-l", f"127.0.0.1:{server_port}", "-t", f"127.0.0.1:{echo}", "--key", "k"])]
    try:
        procs.append(spawn([*client, "-l", f"127.0.0.1:{local_port}", "-r", f"127.0.0.1:{server_port}", "--key", "k",
                            "--conn", str(SESSIONS)]))
        wait_for_port(local_port)
        contender = Contender(impl, local_port, procs)
        import socket

        first = [socket.create_connection(("127.0.0.1", local_port)) for _ in range(1)]
        time.sleep(1.5)
        before = contender.rss_kib()
        held = first + [socket.create_connection(("127.0.0.1", local_port)) for _ in range(SESSIONS - 1)]
        time.sleep(2.0)
        cost = (contender.rss_kib() - before) / (SESSIONS - 1)
        for sock in held:
            sock.close()
        return cost
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        sink.kill()


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        every = _every_role(Path(tmp))
        empty = [sys.executable, "-c", "import time; time.sleep(9)"]
        daemon = [sys.executable, "-m", "sidecar", "run", "-c", every, "--log-level", "warning"]
        results = {
            "empty python3 (this interpreter, site included)": _idle_rss(empty, settle_s=1.0) / 1024,
            "sidecar, every role configured, idle": _idle_rss(daemon) / 1024,
        }
    port = free_port()
    results["ss-server (libev), idle"] = _idle_rss([shutil.which("ss-server") or "", "-s", "127.0.0.1", "-p", str(port),
                                                    "-k", "pw", "-m", "aes-256-gcm"], port) / 1024
    results["KiB per idle KCP session with one stream: sidecar"] = _kcp_session_cost("sidecar")
    results["KiB per idle KCP session with one stream: kcptun"] = _kcp_session_cost("kcptun")
    return results


def table(results: dict[str, float]) -> list[str]:
    lines = ["| what | measured |", "|---|---|"]
    for name, value in results.items():
        unit = "KiB" if name.startswith("KiB") else "MiB"
        lines.append(f"| {name} | {value:.1f} {unit} |")
    return lines
