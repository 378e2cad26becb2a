"""A user-space UDP link impairer: delay, jitter, loss, duplication, reordering and a rate limit between UDP
clients and one target, for tests and benchmarks on machines without netem.

Run it as its own process (`python -m bench.impair --help`, or `spawn_impairer()`) so its timers share no GIL
with the traffic it shapes; `Impairer.start()` runs the same loop on a thread when convenience matters more.
The standard library only: it must not depend on the code it is used to test.
"""

import argparse
import contextlib
import functools
import heapq
import itertools
import json
import os
import random
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

Address = tuple[str, int]
COUNTERS = ("received", "forwarded", "dropped_loss", "dropped_queue", "duplicated", "reordered", "send_errors",
            "in_flight")
ROOT = Path(__file__).resolve().parents[1]
_BATCH = 64  # datagrams read per readiness, so a flood cannot starve the timers
_SOCKET_BUFFER = 4 << 20  # best effort, capped by net.core.[rw]mem_max
_SWEEP_S = 1.0


@dataclass(frozen=True)
class Impairment:
    """What one direction of the link does to packets; the defaults leave them alone.

    Order, per packet: loss, duplication, rate limit (each copy), delay and jitter, hold-back reordering.
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    jitter_dist: str = "uniform"  # "uniform": within ±jitter_ms; "normal": jitter_ms is the standard deviation
    jitter_reorders: bool = True  # False: a packet never overtakes an earlier one (jitter only bunches them)
    loss: float = 0.0  # loss probability; with Gilbert-Elliott, in the good state
    ge_p: float = 0.0  # Gilbert-Elliott burst loss: P(good -> bad) per packet; 0 turns the model off
    ge_r: float = 0.25  # P(bad -> good) per packet: bursts last 1/ge_r packets on average
    ge_bad_loss: float = 1.0  # loss probability in the bad state
    dup: float = 0.0  # probability that a packet is sent twice
    reorder: float = 0.0  # probability that a packet is held back by reorder_ms, so later ones overtake it
    reorder_ms: float = 10.0
    rate_mbit: float = 0.0  # 0: no rate limit; counts UDP payload bytes, not headers
    burst_bytes: int = 1500  # token bucket size
    queue_packets: int = 100  # packets that may wait for tokens; more are dropped

    def __post_init__(self) -> None:
        for name in ("loss", "ge_p", "ge_r", "ge_bad_loss", "dup", "reorder"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]")
        for name in ("delay_ms", "jitter_ms", "reorder_ms", "rate_mbit", "burst_bytes", "queue_packets"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.jitter_dist not in ("uniform", "normal"):
            raise ValueError("jitter_dist must be 'uniform' or 'normal'")


class Channel:
    """One direction of the link as a model: `admit(size, now)` returns when each surviving copy leaves.

    Sans-I/O like the protocol cores: no clock, no socket, so a seed replays the same drops and times.
    `counters` holds the model's counts; the I/O side moves in_flight to forwarded or send_errors.
    """

    def __init__(self, impairment: Impairment, rng: random.Random) -> None:
        self.impairment = impairment
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._rng = rng
        self._bad = False
        self._tokens = float(impairment.burst_bytes)
        self._token_time = 0.0
        self._backlog: deque[float] = deque()  # rate limiter departure times, oldest first
        self._last_release = 0.0

    def admit(self, size: int, now: float) -> list[float]:
        counters = self.counters
        releases = []
        if self._lost():
            counters["dropped_loss"] += 1
        else:
            copies = 2 if self._chance(self.impairment.dup) else 1
            counters["duplicated"] += copies - 1
            for _ in range(copies):
                depart = self._shape(size, now)
                if depart is None:
                    counters["dropped_queue"] += 1
                else:
                    releases.append(self._propagate(depart))
            counters["in_flight"] += len(releases)
        counters["received"] += 1  # last, so a reader on another thread that sees it sees its outcome too
        return releases

    def _chance(self, probability: float) -> bool:
        return probability > 0.0 and self._rng.random() < probability

    def _lost(self) -> bool:
        imp = self.impairment
        lost = self._chance(imp.ge_bad_loss if self._bad else imp.loss)
        if imp.ge_p:
            self._bad = not self._chance(imp.ge_r) if self._bad else self._chance(imp.ge_p)
        return lost

    def _shape(self, size: int, now: float) -> float | None:
        """Departure time from the token bucket, or None when its queue is full.

        Tokens may go negative: a packet leaves once the balance is not below zero, so packets larger than
        the bucket still pass and the long-run rate is exact.
        """
        rate = self.impairment.rate_mbit * 125_000  # bytes per second
        if not rate:
            return now
        backlog = self._backlog
        while backlog and backlog[0] <= now:
            backlog.popleft()
        if len(backlog) >= self.impairment.queue_packets:
            return None
        start = max(now, self._token_time)
        tokens = min(float(self.impairment.burst_bytes), self._tokens + (start - self._token_time) * rate)
        depart = start if tokens >= 0 else start - tokens / rate
        self._tokens = max(tokens, 0.0) - size
        self._token_time = depart
        backlog.append(depart)
        return depart

    def _propagate(self, depart: float) -> float:
        imp = self.impairment
        release = max(depart, depart + imp.delay_ms / 1000 + self._jitter())
        if not imp.jitter_reorders:
            release = self._last_release = max(release, self._last_release)
        if self._chance(imp.reorder):
            self.counters["reordered"] += 1
            release += imp.reorder_ms / 1000
        return release

    def _jitter(self) -> float:
        spread = self.impairment.jitter_ms / 1000
        if not spread:
            return 0.0
        if self.impairment.jitter_dist == "normal":
            return self._rng.gauss(0.0, spread)
        return self._rng.uniform(-spread, spread)


@dataclass(slots=True)
class _Flow:
    """One client's NAT entry: its own socket towards the target, so replies can be told apart."""

    client: Address
    sock: socket.socket
    last_seen: float


class Impairer:
    """Forwards UDP between clients at `listen` and one `target`, through an `up` and a `down` Channel.

    A packet from a client goes to the target from that client's outbound socket; the target's replies
    come back to the client from the listen socket. One thread, one selector, one heap of timed sends.
    `both` is the shorthand for whichever of up/down is not given. Idle clients are forgotten after
    `nat_timeout_s`.
    """

    def __init__(self, listen: Address, target: Address, up: Impairment | None = None,
                 down: Impairment | None = None, *, both: Impairment | None = None, seed: int | None = None,
                 nat_timeout_s: float = 60.0) -> None:
        self.target = target
        self.nat_timeout_s = nat_timeout_s
        self.up = Channel(up or both or Impairment(), _rng(seed, "up"))
        self.down = Channel(down or both or Impairment(), _rng(seed, "down"))
        self._flows: dict[Address, _Flow] = {}
        self._timers: list[tuple[float, int, bytes, socket.socket, Address, Channel]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._listen = _udp_socket(listen[0])
        self._listen.bind(listen)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # select() wakes within ~0.1 ms of its timeout where epoll and poll round it up to whole
        # milliseconds; its limit (descriptors below 1024) allows about a thousand clients.
        self._selector = selectors.SelectSelector()
        self._selector.register(self._listen, selectors.EVENT_READ, self._from_clients)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._woken)

    @property
    def listen(self) -> Address:
        """The bound listen address (the real port when 0 was asked for)."""
        return self._listen.getsockname()[:2]

    @property
    def counters(self) -> dict[str, dict[str, int]]:
        return {"up": dict(self.up.counters), "down": dict(self.down.counters)}

    def start(self) -> "Impairer":
        self._thread = threading.Thread(target=self.serve_forever, name="impairer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, dict[str, int]]:
        """Stop the loop, close the sockets and return the counters; packets still waiting stay in_flight."""
        self.request_stop()
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join()
        self._close()
        return self.counters

    def request_stop(self) -> None:
        """Make `serve_forever` return soon; safe from a signal handler or another thread."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def serve_forever(self) -> None:
        next_sweep = time.monotonic() + _SWEEP_S
        while not self._stopping:
            for key, _ in self._selector.select(self._timeout(next_sweep)):
                key.data(key.fileobj, time.monotonic())
            now = time.monotonic()
            self._release_due(now)
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + _SWEEP_S

    def _timeout(self, next_sweep: float) -> float:
        due = self._timers[0][0] if self._timers else next_sweep
        return max(0.0, min(due, next_sweep) - time.monotonic())

    def _from_clients(self, sock: socket.socket, now: float) -> None:
        for data, client in _drain(sock):
            flow = self._flows.get(client) or self._open_flow(client, now)
            flow.last_seen = now
            self._schedule(self.up, data, now, flow.sock, self.target)

    def _from_target(self, flow: _Flow, sock: socket.socket, now: float) -> None:
        for data, _ in _drain(sock):
            flow.last_seen = now
            self._schedule(self.down, data, now, self._listen, flow.client)

    def _woken(self, sock: socket.socket, now: float) -> None:
        with contextlib.suppress(BlockingIOError):
            sock.recv(4096)

    def _open_flow(self, client: Address, now: float) -> _Flow:
        sock = _udp_socket(self.target[0])
        # connect(): the kernel picks the source address and only lets the target's replies in
        sock.connect(self.target)
        flow = self._flows[client] = _Flow(client, sock, now)
        self._selector.register(sock, selectors.EVENT_READ, functools.partial(self._from_target, flow))
        return flow

    def _schedule(self, channel: Channel, data: bytes, now: float, sock: socket.socket, dest: Address) -> None:
        for release in channel.admit(len(data), now):
            heapq.heappush(self._timers, (release, next(self._seq), data, sock, dest, channel))

    def _release_due(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, data, sock, dest, channel = heapq.heappop(timers)
            try:
                sock.sendto(data, dest)
                outcome = "forwarded"
            except OSError:  # full send buffer, or an ICMP error from the target reported late
                outcome = "send_errors"
            channel.counters[outcome] += 1
            channel.counters["in_flight"] -= 1  # last: once nothing is in flight, every outcome is counted

    def _sweep(self, now: float) -> None:
        """Forget clients idle for nat_timeout_s.

        A packet still due to leave on a forgotten client's socket then counts as a send error.
        """
        for client, flow in list(self._flows.items()):
            if now - flow.last_seen > self.nat_timeout_s:
                self._selector.unregister(flow.sock)
                flow.sock.close()
                del self._flows[client]

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._selector.close()
        for sock in [self._listen, self._wake_r, self._wake_w, *(flow.sock for flow in self._flows.values())]:
            sock.close()


def _rng(seed: int | None, direction: str) -> random.Random:
    """One generator per direction, so what happens upstream does not shift the draws downstream."""
    return random.Random(None if seed is None else f"{seed}/{direction}")


def _udp_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
    return sock


def _drain(sock: socket.socket) -> Iterator[tuple[bytes, Any]]:
    for _ in range(_BATCH):
        try:
            yield sock.recvfrom(65535)
        except BlockingIOError:
            return
        except OSError:  # an ICMP error about an earlier packet; that packet is gone already
            return


# --- command line ----------------------------------------------------------------------------------------

def parse_address(text: str) -> Address:
    """"127.0.0.1:4000" or "[::1]:4000" -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _option(name: str) -> str:
    return name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.impair", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=parse_address, required=True, help="HOST:PORT the clients send to")
    parser.add_argument("--target", type=parse_address, required=True, help="HOST:PORT packets are sent to")
    parser.add_argument("--seed", type=int, help="seed the random draws, for reproducible runs")
    parser.add_argument("--stats-file", type=Path, help="write the counters here (JSON) on SIGTERM")
    parser.add_argument("--nat-timeout-s", type=float, default=60.0)
    add_impairment_options(parser)
    return parser


def add_impairment_options(parser: argparse.ArgumentParser) -> None:
    """--OPTION for both directions, --up-OPTION and --down-OPTION for one (bench.impair's and bench.wire's)."""
    group = parser.add_argument_group(
        "impairments", "Each applies to both directions; --up-OPTION and --down-OPTION (not listed) set one "
        "direction and win over the shared value. See Impairment in bench/impair.py.")
    for prefix in ("", "up-", "down-"):
        for spec in fields(Impairment):
            kwargs: dict[str, Any] = {"default": None,
                                      "help": argparse.SUPPRESS if prefix else f"default: {spec.default}"}
            if spec.type is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif spec.name == "jitter_dist":
                kwargs["choices"] = ("uniform", "normal")
            else:
                kwargs.update(type=spec.type, metavar=spec.type.__name__.upper())
            group.add_argument(f"--{prefix}{_option(spec.name)}", **kwargs)


def impairments(args: argparse.Namespace) -> tuple[Impairment, Impairment]:
    """(up, down): an --up-*/--down-* option wins over the shared one for its direction."""
    def direction(prefix: str) -> Impairment:
        values = {}
        for spec in fields(Impairment):
            for key in (f"{prefix}_{spec.name}", spec.name):
                if getattr(args, key) is not None:
                    values[spec.name] = getattr(args, key)
                    break
        return Impairment(**values)
    return direction("up"), direction("down")


def impairment_args(impairment: Impairment, prefix: str = "") -> list[str]:
    """The options that reproduce `impairment` (only those that differ from the defaults)."""
    args = []
    for spec in fields(Impairment):
        value = getattr(impairment, spec.name)
        if value == spec.default:
            continue
        option = prefix + _option(spec.name)
        if isinstance(value, bool):
            args.append(f"--{option}" if value else f"--no-{option}")
        else:
            args += [f"--{option}", str(value)]
    return args


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        up, down = impairments(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        impairer = Impairer(args.listen, args.target, up, down, seed=args.seed, nat_timeout_s=args.nat_timeout_s)
    except OSError as exc:
        sys.exit(f"impair: cannot listen on {args.listen}: {exc}")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: impairer.request_stop())
    host, port = impairer.listen
    print(f"listening {host} {port}", flush=True)  # spawn_impairer waits for this line
    impairer.serve_forever()
    counters = impairer.stop()
    if args.stats_file:
        args.stats_file.write_text(json.dumps(counters, indent=1) + "\n")


# --- a child process for tests and benches ---------------------------------------------------------------

class CountersProcess(subprocess.Popen):
    """A bench tool as a child that writes its counters to `stats_file` on SIGTERM (impair, wire)."""

    tool = "bench tool"
    stats_file: Path
    counters: dict[str, dict[str, int]] | None

    def stop(self, timeout: float = 10.0) -> dict[str, dict[str, int]]:
        """SIGTERM, wait, read the counters it wrote; calling it again returns the same counters."""
        if self.counters is None:
            self.terminate()
            try:
                self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.wait()
            self.stdout.close()  # type: ignore[union-attr]
            text = self.stats_file.read_text() if self.stats_file.exists() else ""
            self.stats_file.unlink(missing_ok=True)
            if self.returncode != 0 or not text:
                raise RuntimeError(f"{self.tool} exited with {self.returncode} and no counters")
            self.counters = json.loads(text)
        return self.counters

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.stop()
        finally:
            super().__exit__(*exc_info)


class ImpairerProcess(CountersProcess):
    """`python -m bench.impair` as a child; `stop()` sends SIGTERM and returns its counters."""

    tool = "bench.impair"

    def __init__(self, args: list[str], stats_file: Path, timeout: float) -> None:
        super().__init__(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        self.stats_file = stats_file
        self.counters: dict[str, dict[str, int]] | None = None
        line = _readline(self.stdout, timeout)
        if not line.startswith("listening "):
            self.kill()
            self.wait()
            stats_file.unlink(missing_ok=True)
            raise RuntimeError(f"bench.impair did not start (exit {self.returncode}): {line!r}")
        host, port = line.split()[1:]
        self.listen: Address = (host, int(port))

def spawn_impairer(listen: Address, target: Address, *, up: Impairment | None = None,
                   down: Impairment | None = None, both: Impairment | None = None, seed: int | None = None,
                   timeout: float = 10.0) -> ImpairerProcess:
    """Start an impairer process (listen port 0 is fine: read `.listen`); the arguments are Impairer's."""
    fd, stats = tempfile.mkstemp(prefix="impair-", suffix=".json")
    os.close(fd)
    args = [sys.executable, "-m", "bench.impair", "--listen", _format(listen), "--target", _format(target),
            "--stats-file", stats]
    if seed is not None:
        args += ["--seed", str(seed)]
    up, down = up or both or Impairment(), down or both or Impairment()
    args += impairment_args(up, "up-") + impairment_args(down, "down-")
    return ImpairerProcess(args, Path(stats), timeout)


def _format(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _readline(stream: Any, timeout: float) -> str:
    """One line from a child's stdout, or "" if none comes within `timeout`."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else ""


if __name__ == "__main__":
    main()
