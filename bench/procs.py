"""Starting contender processes and reading their memory and CPU from /proc."""

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Contender:
    """A named set of processes that expose a SOCKS5 port (None for the direct floor)."""

    name: str
    socks_port: int | None
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def rss_kib(self, field_name: str = "VmRSS") -> int:
        return sum(rss_kib(pid, field_name) for pid in self.pids)

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def stop(self) -> None:
        stop_processes(self.procs)


ROOT = str(Path(__file__).resolve().parents[1])


def bench_env() -> dict[str, str]:
    """The environment for contenders: this checkout's sidecar first, whatever `pip -e` points at."""
    return {**os.environ, "PYTHONPATH": ROOT}


def spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env=bench_env())


def ss_pair(name: str, method: str, password: str = "bench-password") -> Contender:
    """An ss-local + ss-server pair of one implementation ("sidecar" or "libev"), as two processes."""
    port = free_port()
    return ss_pair_at(name, method, port, port, password)


def ss_pair_at(name: str, method: str, server_port: int, client_to_port: int,
               password: str = "bench-password", server_host: str = "127.0.0.1",
               server_prefix: Sequence[str] = ()) -> Contender:
    """The pair with the server on `server_port` and the client sending to `client_to_port` (an
    impairer in between, for UDP), as two processes. `server_prefix` runs the server inside something
    (`ip netns exec NS`), listening on `server_host`, which the client then sends to."""
    socks_port = free_port()
    if name == "sidecar":
        base = [sys.executable, "-m", "sidecar"]
        server = base + ["ss-server", "--log-level", "warning", "--allow-private"]
        local = base + ["ss-local", "--log-level", "warning"]
    else:
        server, local = [shutil.which("ss-server") or "ss-server"], [shutil.which("ss-local") or "ss-local"]
    common = ["-k", password, "-m", method, "-u"]
    procs = [spawn([*server_prefix, *server, "-s", server_host, "-p", str(server_port), *common])]
    wait_for_port(server_port, 30.0, server_host)
    procs.append(spawn(local + ["-s", server_host, "-p", str(client_to_port), "-b", "127.0.0.1", "-l", str(socks_port),
                                *common]))
    wait_for_port(socks_port)
    return Contender(name, socks_port, procs)


def stop_processes(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to each, in order, then wait for each (SIGKILL after 10 s)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
