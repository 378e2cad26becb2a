"""Test plumbing: real processes, real sockets, echo targets, a SOCKS5 client, and the CI skip rule."""

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sidecar.proto.socks_addr import encode_addr, parse_addr

IN_CI = os.environ.get("CI") == "true"


def require(condition: bool, reason: str, *, module: bool = False) -> None:
    """Skip with a reason on a laptop; under CI=true a missing prerequisite is a failure. `module`: called
    at a test module's top level (skips or fails the whole module)."""
    if not condition:
        if IN_CI:
            pytest.fail(f"required in CI: {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=module)


def require_binary(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"{name} is not installed (apt-get install shadowsocks-libev kcptun)")
    return path  # type: ignore[return-value]


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


class Process:
    """A child process whose output goes to a file; `stop()` sends SIGTERM and returns the output."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.output()


def start_sidecar(config_text: str, tmp_path: Path, name: str = "sidecar", wait_ports: tuple[int, ...] = ()) -> Process:
    config = tmp_path / f"{name}.toml"
    config.write_text(config_text)
    proc = Process([sys.executable, "-m", "sidecar", "run", "-c", str(config), "--log-level", "debug"],
                   tmp_path / f"{name}.log")
    for port in wait_ports:
        try:
            wait_for_port(port)
        except TimeoutError:
            raise AssertionError(f"sidecar did not start:\n{proc.stop()}") from None
    return proc


def counters(log_text: str, role: str) -> dict[str, int]:
    """The counters a role printed at shutdown."""
    match = re.search(rf"{re.escape(role)} counters: (.*)", log_text)
    assert match, f"no counters for {role} in:\n{log_text}"
    return {k: int(v) for k, v in (pair.split("=") for pair in match.group(1).split())}


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.connections += 1  # type: ignore[attr-defined]
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.server.received += len(data)  # type: ignore[attr-defined]
                self.request.sendall(data)


class _ThreadingTCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 512  # peers like kcptun dial dozens of streams at once


class EchoServer:
    """A TCP echo target on 127.0.0.1 that counts connections and bytes."""

    def __init__(self) -> None:
        self.server = _ThreadingTCPServer(("127.0.0.1", 0), _EchoHandler)
        self.server.connections = 0  # type: ignore[attr-defined]
        self.server.received = 0  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def connections(self) -> int:
        return self.server.connections  # type: ignore[attr-defined]

    @property
    def received(self) -> int:
        return self.server.received  # type: ignore[attr-defined]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class UdpEchoServer:
    """A UDP echo target on 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                data, peer = self.sock.recvfrom(65536)
                self.sock.sendto(data, peer)

    def close(self) -> None:
        self.sock.close()


def socks5_connect(proxy_port: int, host: str, port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    sock.sendall(b"\x05\x01\x00")
    assert recv_exact(sock, 2) == b"\x05\x00"
    sock.sendall(b"\x05\x01\x00" + encode_addr(host, port))
    reply = recv_exact(sock, 4)
    if reply[1] != 0:
        sock.close()
        raise ConnectionError(f"SOCKS5 reply {reply[1]}")
    recv_exact(sock, {1: 6, 4: 18}[reply[3]])
    return sock


def socks5_udp_associate(proxy_port: int) -> tuple[socket.socket, tuple[str, int]]:
    """(control connection, UDP relay address) of a fresh UDP association."""
    control = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    control.sendall(b"\x05\x01\x00")
    assert recv_exact(control, 2) == b"\x05\x00"
    control.sendall(b"\x05\x03\x00" + encode_addr("0.0.0.0", 0))
    reply = recv_exact(control, 10)
    assert reply[1] == 0, f"UDP ASSOCIATE refused with {reply[1]}"
    host, port, _ = parse_addr(reply, 3)
    return control, (host, port)


def udp_round_trips(relay: tuple[str, int], target_port: int, payloads: list[bytes], socks: bool = True) -> list[bytes]:
    """Send each payload (wrapped in a SOCKS5 UDP header if `socks`) and collect the echoes."""
    header = b"\x00\x00\x00" + encode_addr("127.0.0.1", target_port) if socks else b""
    got = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        for payload in payloads:
            sock.sendto(header + payload, relay)
            data = sock.recv(65536)
            got.append(data[len(header):] if socks else data)
    return got


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def echo_transfer(sock: socket.socket, size: int) -> tuple[str, str]:
    """Send `size` random bytes through an echoing path; (sha256 sent, sha256 received)."""
    data = os.urandom(size)
    sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    sender.start()
    digest, got = hashlib.sha256(), 0
    while got < size:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        digest.update(chunk)
        got += len(chunk)
    sender.join(5)
    return hashlib.sha256(data).hexdigest(), digest.hexdigest()
