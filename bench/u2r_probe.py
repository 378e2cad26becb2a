"""Run inside a namespace: UDP round trips and paced blasts against an echo, printed as JSON.

    python -m bench.u2r_probe HOST PORT [rtt|rates|all [TRIPS [MBIT,MBIT,...]]]
        ->  {"rtt_us": [...], "rates": {"Mbit/s offered": delivered fraction}, "echoed_bytes": N}

rtt: the round trips only; rates: the paced blasts only (echoed_bytes counts their payload that came back).
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


def blast(sock: socket.socket, target: tuple[str, int], mbit: float, seconds: float = 1.0) -> tuple[int, int]:
    """Send SIZE-byte datagrams at `mbit` for `seconds` (paced), count echoes; (echoed, sent)."""
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
    return received, sent


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
    phase = sys.argv[3] if len(sys.argv) > 3 else "all"
    trips = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
    rates = [int(m) for m in sys.argv[5].split(",")] if len(sys.argv) > 5 else RATES_MBIT
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0) if target[0].startswith("127.") else ("0.0.0.0", 0))
    report: dict = {"rtt_us": [], "rates": {}, "echoed_bytes": 0}
    if phase in ("rtt", "all"):
        report["rtt_us"] = round_trips(sock, target, trips)
    for mbit in rates if phase in ("rates", "all") else ():
        echoed, sent = blast(sock, target, mbit)
        report["rates"][str(mbit)] = echoed / max(sent, 1)
        report["echoed_bytes"] += echoed * SIZE
    print(json.dumps(report))


if __name__ == "__main__":
    main()
