"""A packet-level impaired link for TCP (anything IP, in fact) between the root network namespace and a
namespace of its own, for machines without netem. Needs root and /dev/net/tun.

    root namespace: 10.238.7.2 on TUN "bnlc" <-> this process <-> TUN "bnls" 10.238.7.1: namespace NS

This process holds both TUN devices (one moved into the namespace) and carries every IP packet between
them through `bench.impair.Channel`, one per direction, so loss and delay hit single packets, as netem
would: a dropped segment is retransmitted by the kernels' own TCP, over a round trip that includes the
delay. The devices vanish when the process exits. Run it as its own process (`spawn_link`) so its timers
share no GIL with the traffic.

    python -m bench.tun_link --ns NS [--loss P] [--delay-ms MS] [--seed N]   prints "ready", then serves
"""

import argparse
import contextlib
import fcntl
import heapq
import itertools
import json
import os
import selectors
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench.impair import Channel, Impairment, _readline, _rng

NAMESPACE = "bench-sslink"
SERVER_IP, CLIENT_IP = "10.238.7.1", "10.238.7.2"
CLIENT_DEV, SERVER_DEV = "bnlc", "bnls"
ROOT = Path(__file__).resolve().parents[1]
_TUNSETIFF, _IFF_TUN, _IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
_BATCH = 64


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def in_namespace(ns: str = NAMESPACE) -> list[str]:
    """The command prefix that runs a program inside the namespace."""
    return ["ip", "netns", "exec", ns]


def unavailable() -> str | None:
    """Why a link cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and TUN devices)"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    try:
        create_namespace()
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"cannot create a network namespace: {exc}"
    delete_namespace()
    return None


def create_namespace(ns: str = NAMESPACE) -> None:
    delete_namespace(ns)
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")


def delete_namespace(ns: str = NAMESPACE) -> None:
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    return fd


def configure(ns: str) -> None:
    """Addresses and routes: each side reaches the other's address through its own TUN device."""
    sh("ip", "link", "set", SERVER_DEV, "netns", ns)
    sh("ip", "addr", "add", CLIENT_IP, "peer", SERVER_IP, "dev", CLIENT_DEV)
    sh("ip", "link", "set", CLIENT_DEV, "up")
    sh("ip", "-n", ns, "addr", "add", SERVER_IP, "peer", CLIENT_IP, "dev", SERVER_DEV)
    sh("ip", "-n", ns, "link", "set", SERVER_DEV, "up")


class Link:
    """Moves packets between the two TUN descriptors; up is client to server."""

    def __init__(self, client_fd: int, server_fd: int, impairment: Impairment, seed: int | None) -> None:
        self.up = Channel(impairment, _rng(seed, "up"))
        self.down = Channel(impairment, _rng(seed, "down"))
        self._routes = {client_fd: (server_fd, self.up), server_fd: (client_fd, self.down)}
        self._timers: list[tuple[float, int, bytes, int, Channel]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._selector = selectors.SelectSelector()  # sub-millisecond timeouts, like bench.impair
        for fd in self._routes:
            self._selector.register(fd, selectors.EVENT_READ)

    def request_stop(self) -> None:
        self._stopping = True

    def serve_forever(self) -> None:
        while not self._stopping:
            timeout = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else 0.2
            try:
                ready = self._selector.select(timeout)
            except InterruptedError:
                continue
            for key, _ in ready:
                self._receive(key.fd, time.monotonic())
            self._release_due(time.monotonic())

    def _receive(self, fd: int, now: float) -> None:
        out_fd, channel = self._routes[fd]
        for packet in _drain(fd):
            for release in channel.admit(len(packet), now):
                heapq.heappush(self._timers, (release, next(self._seq), packet, out_fd, channel))

    def _release_due(self, now: float) -> None:
        while self._timers and self._timers[0][0] <= now:
            _, _, packet, fd, channel = heapq.heappop(self._timers)
            try:
                os.write(fd, packet)
                channel.counters["forwarded"] += 1
            except OSError:
                channel.counters["send_errors"] += 1
            channel.counters["in_flight"] -= 1

    @property
    def counters(self) -> dict[str, dict[str, int]]:
        return {"up": dict(self.up.counters), "down": dict(self.down.counters)}


def _drain(fd: int) -> Iterator[bytes]:
    for _ in range(_BATCH):
        try:
            yield os.read(fd, 65535)
        except BlockingIOError:
            return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tun_link", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ns", default=NAMESPACE, help="the existing namespace that gets the server end")
    parser.add_argument("--loss", type=float, default=0.0, help="loss probability per packet, each way")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per packet")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    client_fd, server_fd = open_tun(CLIENT_DEV), open_tun(SERVER_DEV)
    configure(args.ns)
    link = Link(client_fd, server_fd, Impairment(loss=args.loss, delay_ms=args.delay_ms), args.seed)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: link.request_stop())
    print("ready", flush=True)
    link.serve_forever()
    os.close(client_fd)
    os.close(server_fd)
    print(json.dumps(link.counters), flush=True)


class LinkProcess(subprocess.Popen):
    """`python -m bench.tun_link` as a child; `stop()` ends it (the devices go with it), returns its counters."""

    def __init__(self, args: list[str], timeout: float) -> None:
        super().__init__(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        if _readline(self.stdout, timeout).strip() != "ready":
            self.kill()
            self.wait()
            raise RuntimeError(f"bench.tun_link did not start (exit {self.returncode})")

    def stop(self, timeout: float = 10.0) -> dict[str, dict[str, int]]:
        self.terminate()
        try:
            out, _ = self.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, _ = self.communicate()
        with contextlib.suppress(ValueError):
            return json.loads(out.strip().splitlines()[-1])
        return {}


def spawn_link(impairment: Impairment, seed: int | None = None, ns: str = NAMESPACE,
               timeout: float = 10.0) -> LinkProcess:
    """Start the link process for an existing namespace; loss and delay_ms are taken from `impairment`."""
    args = [sys.executable, "-m", "bench.tun_link", "--ns", ns, "--loss", str(impairment.loss),
            "--delay-ms", str(impairment.delay_ms)]
    if seed is not None:
        args += ["--seed", str(seed)]
    return LinkProcess(args, timeout)


if __name__ == "__main__":
    main()
