"""Client-side workloads over real sockets: bulk download, request/response, connection rate, UDP round trips."""

import socket
import statistics
import time

from bench.targets import Targets
from sidecar.proto.socks_addr import encode_addr, parse_addr


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed early")
        buf += chunk
    return bytes(buf)


def open_path(socks_port: int | None, port: int, host: str = "127.0.0.1") -> socket.socket:
    """A connection to host:port, through SOCKS5 on 127.0.0.1:socks_port, or direct when it is None."""
    if socks_port is None:
        sock = socket.create_connection((host, port), timeout=30)
    else:
        sock = socket.create_connection(("127.0.0.1", socks_port), timeout=30)
        sock.sendall(b"\x05\x01\x00")
        _recv_exact(sock, 2)
        sock.sendall(b"\x05\x01\x00" + encode_addr(host, port))
        _recv_exact(sock, 10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def bulk_download(socks_port: int | None, targets: Targets, size: int) -> float:
    """MB/s (10^6 bytes per second) of one download of `size` bytes."""
    with open_path(socks_port, targets.source, targets.host) as sock:
        return timed_download(sock, size)


def timed_download(sock: socket.socket, size: int) -> float:
    """Ask a source target for `size` bytes on `sock` and read them all; MB/s."""
    start = time.perf_counter()
    sock.sendall(size.to_bytes(8, "big"))
    buf = bytearray(1 << 20)
    got = 0
    while got < size:
        n = sock.recv_into(buf)
        if not n:
            raise ConnectionError(f"closed after {got} of {size} bytes")
        got += n
    return size / (time.perf_counter() - start) / 1e6


def request_response(socks_port: int | None, targets: Targets, count: int, size: int = 64) -> list[float]:
    """Round-trip times in microseconds of `count` request/response exchanges of `size` bytes."""
    with open_path(socks_port, targets.echo, targets.host) as sock:
        return timed_exchanges(sock, count, size)


def timed_exchanges(sock: socket.socket, count: int, size: int = 64) -> list[float]:
    """Round-trip times in microseconds of `count` exchanges of `size` bytes on an echoing connection."""
    message = b"q" * size
    times = []
    for _ in range(count):
        start = time.perf_counter()
        sock.sendall(message)
        _recv_exact(sock, size)
        times.append((time.perf_counter() - start) * 1e6)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def connection_rate(socks_port: int | None, targets: Targets, seconds: float) -> float:
    """Connections per second: connect (through SOCKS5), echo one byte, close; for `seconds`."""
    count, deadline = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        with open_path(socks_port, targets.echo) as sock:
            sock.sendall(b"x")
            _recv_exact(sock, 1)
        count += 1
    return count / (time.perf_counter() - start)


def udp_round_trips(socks_port: int | None, targets: Targets, count: int, size: int = 100) -> list[float]:
    """Round-trip times in microseconds of `count` datagrams through SOCKS5 UDP ASSOCIATE (or direct)."""
    relay, header, control = ("127.0.0.1", targets.udp_echo), b"", None
    if socks_port is not None:
        control = socket.create_connection(("127.0.0.1", socks_port), timeout=10)
        control.sendall(b"\x05\x01\x00")
        _recv_exact(control, 2)
        control.sendall(b"\x05\x03\x00" + encode_addr("0.0.0.0", 0))
        host, port, _ = parse_addr(_recv_exact(control, 10), 3)
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # "same host as the proxy"
        relay, header = (host, port), b"\x00\x00\x00" + encode_addr("127.0.0.1", targets.udp_echo)
    times, payload = [], header + b"u" * size
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1)
        for _ in range(count):
            start = time.perf_counter()
            sock.sendto(payload, relay)
            try:
                sock.recv(65536)
            except TimeoutError:
                continue
            times.append((time.perf_counter() - start) * 1e6)
    if control is not None:
        control.close()
    return times


def idle_connections(socks_port: int, targets: Targets, count: int) -> list[socket.socket]:
    """`count` open, proxied, idle connections (each has carried one byte each way)."""
    socks = []
    for _ in range(count):
        sock = open_path(socks_port, targets.echo)
        sock.sendall(b"x")
        _recv_exact(sock, 1)
        socks.append(sock)
    return socks
