"""Run inside a namespace: UDP round trips and paced blasts against an echo, printed as JSON.

    python -m bench.u2r_probe HOST PORT   ->  {"rtt_us": [...], "rates": {"Mbit/s offered": delivered fraction}}
"""

import json
import socket
import sys
import time

RATES_MBIT = (10, 25, 50, 100, 150, 200, 300)
SIZE = 1200


def round_trips(sock: socket.socket, target: tuple[str, int], count: int) -> list[float]:
    times = []
    sock.settimeout(1)
    for i in range(count):
        start = time.perf_counter()
        sock.sendto(i.to_bytes(4, "big") + b"r" * 60, target)
        try:
            sock.recv(2048)
        except TimeoutError:
            continue
        times.append((time.perf_counter() - start) * 1e6)
    return times


def blast(sock: socket.socket, target: tuple[str, int], mbit: float, seconds: float = 1.0) -> float:
    """Send SIZE-byte datagrams at `mbit` for `seconds` (paced), count echoes; delivered fraction."""
    interval = SIZE * 8 / (mbit * 1e6)
    count = int(seconds / interval)
    sock.setblocking(False)
    received = sent = 0
    payload = b"b" * SIZE
    start = time.perf_counter()
    while sent < count:
        due = start + sent * interval
        now = time.perf_counter()
        if now >= due:
            try:
                sock.sendto(payload, target)
            except BlockingIOError:
                pass
            sent += 1
        received += _drain(sock)
    deadline = time.perf_counter() + 1.0
    while time.perf_counter() < deadline and received < sent:
        received += _drain(sock)
        time.sleep(0.001)
    sock.setblocking(True)
    return received / max(sent, 1)


def _drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return n
        n += 1


def main() -> None:
    target = (sys.argv[1], int(sys.argv[2]))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0) if target[0].startswith("127.") else ("0.0.0.0", 0))
    report = {"rtt_us": round_trips(sock, target, 2000), "rates": {}}
    for mbit in RATES_MBIT:
        report["rates"][str(mbit)] = blast(sock, target, mbit)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
