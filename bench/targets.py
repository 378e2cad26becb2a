"""Benchmark targets in their own process: a TCP source, a TCP echo and a UDP echo, on 127.0.0.1.

A separate process keeps the targets off the measuring process's GIL. One thread, one selector,
non-blocking sockets. Started by `Targets()`, which reads the chosen ports from the first line.
"""

import json
import selectors
import socket
import subprocess
import sys
from collections.abc import Sequence

CHUNK = memoryview(bytes(1 << 16))


class _Server:
    def __init__(self, bind: str = "127.0.0.1") -> None:
        self.sel = selectors.DefaultSelector()
        self.ports: dict[str, int] = {}
        for name, handler in (("source", self._on_source_ready), ("echo", self._on_echo_ready),
                              ("mux", self._on_mux_ready)):
            listener = socket.create_server((bind, 0), backlog=1024)
            listener.setblocking(False)
            self.sel.register(listener, selectors.EVENT_READ, (self._accept, handler))
            self.ports[name] = listener.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((bind, 0))
        self.udp.setblocking(False)
        self.sel.register(self.udp, selectors.EVENT_READ, (self._udp_echo, None))
        self.ports["udp_echo"] = self.udp.getsockname()[1]
        self.pending: dict[socket.socket, int] = {}

    def _accept(self, listener: socket.socket, handler) -> None:
        conn, _ = listener.accept()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sel.register(conn, selectors.EVENT_READ, (handler, None))

    def _close(self, conn: socket.socket) -> None:
        self.sel.unregister(conn)
        self.pending.pop(conn, None)
        conn.close()

    def _on_echo_ready(self, conn: socket.socket, _) -> None:
        try:
            data = conn.recv(65536)
            if data:
                conn.setblocking(True)  # echo replies are small or the client reads concurrently
                conn.sendall(data)
                conn.setblocking(False)
                return
        except OSError:
            pass
        self._close(conn)

    def _on_mux_ready(self, conn: socket.socket, _) -> None:
        """One target port for tunnels that forward to a single address: b"S" + size streams, b"E" echoes."""
        try:
            kind = conn.recv(1)
        except OSError:
            kind = b""
        if kind == b"E":
            self.sel.modify(conn, selectors.EVENT_READ, (self._on_echo_ready, None))
        elif kind == b"S":
            conn.setblocking(True)
            conn.settimeout(30)
            self._on_source_ready(conn, None)
        else:
            self._close(conn)

    def _on_source_ready(self, conn: socket.socket, _) -> None:
        """First read: an 8-byte size; then stream that many bytes (blocking: one download at a time)."""
        try:
            header = conn.recv(8)
            if len(header) == 8:
                size = int.from_bytes(header, "big")
                conn.setblocking(True)
                while size > 0:
                    size -= conn.send(CHUNK[: min(size, len(CHUNK))])
                conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._close(conn)

    def _udp_echo(self, sock: socket.socket, _) -> None:
        while True:
            try:
                data, peer = sock.recvfrom(65536)
            except BlockingIOError:
                return
            sock.sendto(data, peer)

    def run(self) -> None:
        print(json.dumps(self.ports), flush=True)
        while True:
            for key, _ in self.sel.select():
                handler, arg = key.data
                handler(key.fileobj, arg)


class Targets:
    """The target process, started now; `source`, `echo`, `mux` and `udp_echo` are its ports, on `host`.

    `prefix` runs it inside something (`ip netns exec NS`), bound to `bind`; `host` is where clients
    (and proxies' servers) reach it.
    """

    def __init__(self, prefix: Sequence[str] = (), bind: str = "127.0.0.1", host: str = "127.0.0.1") -> None:
        self.host = host
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "bench.targets", bind], stdout=subprocess.PIPE,
                                     text=True)
        ports = json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]
        self.source, self.echo, self.udp_echo = ports["source"], ports["echo"], ports["udp_echo"]
        self.mux = ports["mux"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


if __name__ == "__main__":
    _Server(*sys.argv[1:2]).run()
