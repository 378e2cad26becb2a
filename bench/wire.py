"""A user-space Ethernet "wire": bridges two interfaces frame by frame through AF_PACKET sockets and
impairs each direction like bench/impair.py does for UDP (delay, jitter, loss, duplication, reordering,
a rate limit), so raw-IP traffic (udp2raw's fake TCP and ICMP) can cross a bad link without netem.

Run it in a namespace that owns both interfaces and has no addresses of its own (`spawn_wire()`, or
`python -m bench.wire --a IF --b IF ...`): "up" is a -> b, "down" is b -> a. One thread, one select()
whose timeout is the next departure, one heap of timed sends.

The senders on either side must not use checksum or segmentation offloads (`disable_offloads()`): an AF_PACKET
socket reads a TSO/GSO super-frame as one frame larger than the MTU (the wire counts and drops it) and
a frame whose checksum the NIC was to fill in with the checksum unfilled (the receiver drops it).
The standard library only, plus bench.impair: it must not depend on the code it is used to test.
"""

import argparse
import contextlib
import ctypes
import errno
import fcntl
import heapq
import itertools
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.impair import (
    COUNTERS,
    ROOT,
    Channel,
    CountersProcess,
    Impairment,
    add_impairment_options,
    impairment_args,
    impairments,
)

Counters = dict[str, dict[str, int]]
WIRE_COUNTERS = (*COUNTERS, "dropped_oversize", "dropped_kernel", "ignored_outgoing")
ETH_P_ALL = 0x0003
ETH_HEADER = 14
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP, PACKET_STATISTICS, PACKET_IGNORE_OUTGOING = 1, 6, 23
PACKET_MR_PROMISC = 1
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
SIOCGIFMTU, SIOCETHTOOL = 0x8921, 0x8946
# ethtool's legacy one-feature setters: tx checksum, TSO, GSO, GRO (linux/ethtool.h)
ETHTOOL_STXCSUM, ETHTOOL_STSO, ETHTOOL_SGSO, ETHTOOL_SGRO = 0x17, 0x1F, 0x24, 0x2C
_VLAN_TPIDS = (b"\x81\x00", b"\x88\xa8")  # a tagged frame may exceed MTU + 14 by the 4-byte tag
_FRAME_MAX = 1 << 16  # larger than any frame veth hands over, GSO included, so none is cut short
_BATCH = 64  # frames read per readiness, so a flood on one side cannot starve the timers or the other side
# SO_*BUFFORCE (root may exceed net.core.[rw]mem_max): ~0.5 s of 30k frames/s, so a busy machine that keeps
# the wire off the CPU for a moment delays frames instead of dropping them
_SOCKET_BUFFER = 64 << 20
_NICE = -10  # competing test processes should not turn into link jitter


@dataclass(slots=True)
class Direction:
    """Frames read on `source`, impaired by `channel`, sent out of `dest`."""

    name: str
    source: socket.socket
    dest: socket.socket
    max_frame: int  # dest's MTU plus the Ethernet header
    channel: Channel

    @property
    def counters(self) -> dict[str, int]:
        return self.channel.counters


class Wire:
    """Bridges interfaces `a` and `b` (in this process's namespace) through an `up` (a -> b) and a `down`
    Channel; `both` stands for whichever is not given.

    Counters per direction are Channel's plus dropped_oversize (larger than the egress MTU),
    dropped_kernel (the socket buffer overflowed before we read them: not in `received`) and
    ignored_outgoing (frames leaving the source interface, not forwarded and not in `received`).
    """

    def __init__(self, a: str, b: str, up: Impairment | None = None, down: Impairment | None = None, *,
                 both: Impairment | None = None, seed: int | None = None) -> None:
        self._socks: list[socket.socket] = []
        try:
            sock_a, sock_b = self._open(a), self._open(b)
            mtu_a, mtu_b = _mtu(a), _mtu(b)  # read once: a wire restarted after an MTU change sees the new one
            self._wake_r, self._wake_w = socket.socketpair()
        except BaseException:
            self._close_sockets()
            raise
        self._socks += [self._wake_r, self._wake_w]
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        self.up = Direction("up", sock_a, sock_b, mtu_b + ETH_HEADER, _channel(up or both or Impairment(), seed, "up"))
        self.down = Direction("down", sock_b, sock_a, mtu_a + ETH_HEADER,
                              _channel(down or both or Impairment(), seed, "down"))
        self._by_fd = {sock_a.fileno(): self.up, sock_b.fileno(): self.down}
        self._timers: list[tuple[float, int, bytes, Direction]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._closed = False

    @property
    def counters(self) -> Counters:
        """A copy per direction; reading it also collects the kernel's drop counts, which reset when read."""
        for direction in (self.up, self.down):
            if not self._closed:
                direction.counters["dropped_kernel"] += _kernel_drops(direction.source)
        return {"up": dict(self.up.counters), "down": dict(self.down.counters)}

    def request_stop(self) -> None:
        """Make `serve_forever` return soon; safe from a signal handler."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def stop(self) -> Counters:
        """Close the sockets and return the counters; frames still waiting stay in_flight."""
        self.request_stop()
        counters = self.counters
        self._closed = True
        self._close_sockets()
        return counters

    def serve_forever(self) -> None:
        readers = [*self._by_fd, self._wake_r.fileno()]
        while not self._stopping:
            ready, _, _ = select.select(readers, [], [], self._timeout())
            now = time.monotonic()
            for fd in ready:
                direction = self._by_fd.get(fd)
                if direction is None:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_r.recv(4096)
                else:
                    self._receive(direction, now)
            self._release_due(time.monotonic())

    def _open(self, ifname: str) -> socket.socket:
        sock = _packet_socket(ifname)
        self._socks.append(sock)
        return sock

    def _timeout(self) -> float | None:
        return max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else None

    def _receive(self, direction: Direction, now: float) -> None:
        recvfrom = direction.source.recvfrom
        for _ in range(_BATCH):
            try:
                frame, address = recvfrom(_FRAME_MAX)
            except BlockingIOError:
                return
            except OSError:  # ENETDOWN, once per link down: the socket reads again when the link is back up
                return
            if address[2] == socket.PACKET_OUTGOING:  # sent from this interface, by us or its own stack
                direction.counters["ignored_outgoing"] += 1
            else:
                self._admit(direction, frame, now)

    def _admit(self, direction: Direction, frame: bytes, now: float) -> None:
        size = len(frame)
        if size > direction.max_frame and (size > direction.max_frame + 4 or frame[12:14] not in _VLAN_TPIDS):
            direction.counters["received"] += 1
            direction.counters["dropped_oversize"] += 1
            return
        timers = self._timers
        for release in direction.channel.admit(size, now):
            # due already and ahead of everything waiting: sending now keeps the departure order
            if release <= now and (not timers or release < timers[0][0]):
                self._send(direction, frame)
            else:
                heapq.heappush(timers, (release, next(self._seq), frame, direction))

    def _release_due(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, frame, direction = heapq.heappop(timers)
            self._send(direction, frame)

    def _send(self, direction: Direction, frame: bytes) -> None:
        try:
            direction.dest.send(frame)
            outcome = "forwarded"
        except OSError as exc:  # ENOBUFS: the peer's backlog is full; EMSGSIZE: the MTU shrank meanwhile
            outcome = "dropped_oversize" if exc.errno == errno.EMSGSIZE else "send_errors"
        counters = direction.counters
        counters[outcome] += 1
        counters["in_flight"] -= 1

    def _close_sockets(self) -> None:
        for sock in self._socks:
            sock.close()


def _channel(impairment: Impairment, seed: int | None, direction: str) -> Channel:
    """A Channel with the wire's extra counters; one generator per direction, seeded like bench.impair's."""
    channel = Channel(impairment, random.Random(None if seed is None else f"{seed}/{direction}"))
    for name in WIRE_COUNTERS:
        channel.counters.setdefault(name, 0)
    return channel


def _packet_socket(ifname: str) -> socket.socket:
    """A non-blocking AF_PACKET socket that reads every frame arriving on `ifname` and sends out of it."""
    # protocol 0 until bind(): a socket created with ETH_P_ALL would see every interface's frames first
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        for option in (SO_RCVBUFFORCE, SO_SNDBUFFORCE):
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        with contextlib.suppress(OSError):  # Linux >= 4.20; recvfrom's pkttype still filters them
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.bind((ifname, ETH_P_ALL))
        # a real NIC filters frames for other MACs; veth passes them anyway
        mreq = struct.pack("iHH8s", socket.if_nametoindex(ifname), PACKET_MR_PROMISC, 0, b"")
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _kernel_drops(sock: socket.socket) -> int:
    """Frames the kernel dropped on this socket since the last call (reading resets its counters)."""
    with contextlib.suppress(OSError):
        _, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        return drops
    return 0


def _mtu(ifname: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16si", ifname.encode(), 0)
        return struct.unpack_from("i", fcntl.ioctl(sock, SIOCGIFMTU, request), 16)[0]


class _EthtoolValue(ctypes.Structure):
    _fields_ = [("cmd", ctypes.c_uint32), ("data", ctypes.c_uint32)]


class _IfreqData(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * 16), ("data", ctypes.c_void_p), ("pad", ctypes.c_char * 16)]


def disable_offloads(ifname: str) -> None:
    """Turn off tx checksumming, TSO, GSO and GRO on `ifname` in the calling thread's namespace
    (`ethtool -K IF tx off tso off gso off gro off` without ethtool).

    Needed on every interface whose frames the wire reads or whose peer's frames it reads, see the module doc.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for cmd in (ETHTOOL_STXCSUM, ETHTOOL_STSO, ETHTOOL_SGSO, ETHTOOL_SGRO):
            value = _EthtoolValue(cmd, 0)
            request = _IfreqData(ifname.encode(), ctypes.addressof(value))
            fcntl.ioctl(sock, SIOCETHTOOL, request)


# --- command line ----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.wire", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, metavar="IF", help="one interface (up = a -> b)")
    parser.add_argument("--b", required=True, metavar="IF", help="the other interface (down = b -> a)")
    parser.add_argument("--seed", type=int, help="seed the random draws, for reproducible runs")
    parser.add_argument("--stats", type=Path, metavar="FILE", help="write the counters here (JSON) on SIGTERM")
    add_impairment_options(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        up, down = impairments(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        wire = Wire(args.a, args.b, up, down, seed=args.seed)
    except OSError as exc:
        sys.exit(f"wire: cannot open {args.a} and {args.b}: {exc}")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: wire.request_stop())
    with contextlib.suppress(OSError):  # not root: an ordinary priority will do
        os.setpriority(os.PRIO_PROCESS, 0, _NICE)
    print("ready", flush=True)  # spawn_wire waits for this line
    wire.serve_forever()
    counters = wire.stop()
    if args.stats:
        args.stats.write_text(json.dumps(counters, indent=1) + "\n")


# --- a child process for tests and benches ---------------------------------------------------------------

class WireProcess(CountersProcess):
    """`python -m bench.wire` as a child; `stop()` sends SIGTERM and returns its counters."""

    tool = "bench.wire"

    def __init__(self, args: list[str], stats_file: Path, timeout: float) -> None:
        pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        super().__init__(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": pythonpath})
        self.stats_file = stats_file
        self.counters: Counters | None = None
        ready, _, _ = select.select([self.stdout], [], [], timeout)
        line = self.stdout.readline() if ready else ""  # type: ignore[union-attr]
        if line.strip() != "ready":
            self.kill()
            self.wait()
            self.stdout.close()  # type: ignore[union-attr]
            stats_file.unlink(missing_ok=True)
            raise RuntimeError(f"bench.wire did not start (exit {self.returncode}): {line!r}")

def spawn_wire(netns: str, a: str, b: str, *, up: Impairment | None = None, down: Impairment | None = None,
               both: Impairment | None = None, seed: int | None = None, timeout: float = 10.0) -> WireProcess:
    """Start a wire between interfaces `a` and `b` of namespace `netns` (up = a -> b); returns once it
    forwards. The impairment arguments are Wire's."""
    fd, stats = tempfile.mkstemp(prefix="wire-", suffix=".json")
    os.close(fd)
    args = ["ip", "netns", "exec", netns, sys.executable, "-m", "bench.wire", "--a", a, "--b", b,
            "--stats", stats]
    if seed is not None:
        args += ["--seed", str(seed)]
    args += impairment_args(up or both or Impairment(), "up-") + impairment_args(down or both or Impairment(),
                                                                                   "down-")
    return WireProcess(args, Path(stats), timeout)


if __name__ == "__main__":
    main()
