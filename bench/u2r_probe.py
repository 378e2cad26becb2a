"""Run inside a namespace: UDP round trips and paced blasts against an echo, printed as JSON.

    python -m bench.u2r_probe HOST PORT [rtt|rates|all [TRIPS [MBIT,MBIT,...]]]
        ->  {"rtt_us": [...], "rates": {"Mbit/s offered": delivered fraction}, "echoed_bytes": N}
    python -m bench.u2r_probe HOST PORT paced [TRIPS [PER_SECOND]]
        ->  {"rtt_us": [...], "sent": TRIPS, "warm_s": seconds until the first echo}

rtt: the round trips only, one at a time; rates: the paced blasts only (echoed_bytes counts their payload
that came back); paced: once an echo comes back (a tunnel's handshake done), TRIPS numbered datagrams at
PER_SECOND without waiting for the echoes; rtt_us holds those back within 1 s (later is lost).
"""

import json
import select
import socket
import sys
import time

RATES_MBIT = (10, 25, 50, 100, 150, 200, 300)
SIZE = 1200
PACED_PER_SECOND, LATE_S, WARM_S = 50, 1.0, 30.0
WARM = b"warm" * 16  # 64 bytes like the others; its first 4 bytes are no trip's number


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


def warm_up(sock: socket.socket, target: tuple[str, int], timeout: float = WARM_S) -> float:
    """Send WARM every 0.2 s until one comes back; the seconds that took (-1.0: none within `timeout`)."""
    sock.settimeout(0.2)
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        sock.sendto(WARM, target)
        try:
            if sock.recv(2048) == WARM:
                return time.perf_counter() - start
        except TimeoutError:
            pass
    return -1.0


def paced(sock: socket.socket, target: tuple[str, int], count: int, per_second: float) -> list[float]:
    """`count` numbered 64-byte datagrams at `per_second`; the round trips (µs) of those echoed within LATE_S."""
    sock.setblocking(False)
    sent_at: dict[int, float] = {}
    times: list[float] = []
    start = time.perf_counter()
    for i in range(count):
        _collect_until(sock, sent_at, times, start + i / per_second)
        sent_at[i] = time.perf_counter()
        sock.sendto(i.to_bytes(4, "big") + b"p" * 60, target)
    _collect_until(sock, sent_at, times, time.perf_counter() + LATE_S)
    sock.setblocking(True)
    return times


def _collect_until(sock: socket.socket, sent_at: dict[int, float], times: list[float], until: float) -> None:
    """Record the round trips of the echoes that come back before `until`."""
    while (wait := until - time.perf_counter()) > 0:
        ready, _, _ = select.select([sock], [], [], wait)
        if not ready:
            return
        while True:
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                break
            sent = sent_at.pop(int.from_bytes(data[:4], "big"), None)
            if sent is not None and (rtt := time.perf_counter() - sent) <= LATE_S:
                times.append(rtt * 1e6)


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
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0) if target[0].startswith("127.") else ("0.0.0.0", 0))
    if phase == "paced":
        per_second = float(sys.argv[5]) if len(sys.argv) > 5 else PACED_PER_SECOND
        warm_s = warm_up(sock, target)
        print(json.dumps({"rtt_us": paced(sock, target, trips, per_second), "sent": trips, "warm_s": warm_s}))
        return
    rates = [int(m) for m in sys.argv[5].split(",")] if len(sys.argv) > 5 else RATES_MBIT
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
