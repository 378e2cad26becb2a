"""Smoke test run inside an emulated chroot: `sidecar run` (the built-in demo) carries data end to end.

Starts the demo, times how long until its SOCKS5 port accepts, reads its idle RSS, pushes data
through SOCKS5 -> ss-local -> ss-server -> a local echo target, stops it with SIGTERM and requires a
clean exit. Prints one JSON line with the numbers; exits non-zero on any failure.
Standard library only: it runs on the chroot's Debian python3 with nothing but sidecar installed.
"""

import hashlib
import json
import os
import platform
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time

SOCKS_PORT = 1080
PAYLOAD_BYTES = 256 * 1024
IDLE_SETTLE_S = 2.0


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _bare_python_rss_kb() -> int:
    """RSS of an idle bare python3 under the same emulator: the floor that qemu and the interpreter add."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(IDLE_SETTLE_S)
        return _rss_kb(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sidecar exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise RuntimeError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def _socks5_echo(target_port: int) -> None:
    with socket.create_connection(("127.0.0.1", SOCKS_PORT), timeout=60) as sock:
        sock.sendall(b"\x05\x01\x00")
        if _recv_exact(sock, 2) != b"\x05\x00":
            raise RuntimeError("SOCKS5 method negotiation failed")
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", target_port))
        reply = _recv_exact(sock, 10)
        if reply[1] != 0:
            raise RuntimeError(f"SOCKS5 CONNECT refused with reply {reply[1]}")
        data = os.urandom(PAYLOAD_BYTES)
        sender = threading.Thread(target=sock.sendall, args=(data,))
        sender.start()
        echoed = _recv_exact(sock, len(data))
        sender.join()
    if hashlib.sha256(echoed).digest() != hashlib.sha256(data).digest():
        raise RuntimeError("echoed bytes differ from the bytes sent")


def main() -> int:
    echo = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    echo.daemon_threads = True
    threading.Thread(target=echo.serve_forever, daemon=True).start()

    started = time.monotonic()
    proc = subprocess.Popen(["sidecar", "run"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_port(SOCKS_PORT, proc)
        startup_s = time.monotonic() - started
        time.sleep(IDLE_SETTLE_S)
        idle_rss_kb = _rss_kb(proc.pid)
        _socks5_echo(echo.server_address[1])
        stop_started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        stop_s = time.monotonic() - stop_started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = output.decode(errors="replace")
    if proc.returncode != 0 or "counters" not in log:
        print(log, file=sys.stderr)
        raise RuntimeError(f"sidecar exited with {proc.returncode} after SIGTERM, or printed no counters")
    print(json.dumps({
        "machine": platform.machine(),
        "byteorder": sys.byteorder,
        "startup_s": round(startup_s, 2),
        "idle_rss_kb": idle_rss_kb,
        "bare_python_rss_kb": _bare_python_rss_kb(),
        "echoed_bytes": PAYLOAD_BYTES,
        "stop_s": round(stop_s, 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
