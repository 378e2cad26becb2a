"""Client-side workloads, driven over real sockets: bulk transfer and small request/response."""

import contextlib
import socket
import statistics
import threading
import time

from sidecar.proto.socks_addr import encode_addr

CHUNK = bytes(1 << 16)


class Targets:
    """Loopback targets: a source that streams N bytes on request, and an echo server for ping-pong."""

    def __init__(self) -> None:
        self.source = self._listen(self._serve_source)
        self.echo = self._listen(self._serve_echo)

    @staticmethod
    def _listen(serve) -> int:
        sock = socket.create_server(("127.0.0.1", 0), backlog=256)
        threading.Thread(target=_accept_loop, args=(sock, serve), daemon=True).start()
        return sock.getsockname()[1]

    @staticmethod
    def _serve_source(conn: socket.socket) -> None:
        size = int.from_bytes(_recv_exact(conn, 8), "big")
        view = memoryview(CHUNK)
        while size > 0:
            n = min(size, len(CHUNK))
            conn.sendall(view[:n])
            size -= n

    @staticmethod
    def _serve_echo(conn: socket.socket) -> None:
        while data := conn.recv(65536):
            conn.sendall(data)


def _accept_loop(sock: socket.socket, serve) -> None:
    while True:
        conn, _ = sock.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_guarded, args=(serve, conn), daemon=True).start()


def _guarded(serve, conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):
        serve(conn)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed early")
        buf += chunk
    return bytes(buf)


def open_path(socks_port: int | None, port: int) -> socket.socket:
    """A connection to 127.0.0.1:port, through SOCKS5 on socks_port, or direct when it is None."""
    if socks_port is None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    else:
        sock = socket.create_connection(("127.0.0.1", socks_port), timeout=30)
        sock.sendall(b"\x05\x01\x00")
        _recv_exact(sock, 2)
        sock.sendall(b"\x05\x01\x00" + encode_addr("127.0.0.1", port))
        _recv_exact(sock, 10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def bulk_download(socks_port: int | None, targets: Targets, size: int) -> float:
    """MB/s (10^6 bytes per second) of one download of `size` bytes."""
    with open_path(socks_port, targets.source) as sock:
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
    message = b"q" * size
    times = []
    with open_path(socks_port, targets.echo) as sock:
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
