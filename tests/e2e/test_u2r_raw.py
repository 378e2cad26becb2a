"""udp2raw raw drivers end to end: our client and server processes (tests/e2e/u2r_peer.py) in two network
namespaces joined by a veth, carrying UDP both ways in faketcp, udp and icmp modes through real raw
sockets, with firewall rules (nft and iptables) and our own capture on the veth.

Shows: datagrams of mixed sizes arrive intact both ways; while the rules are installed the kernel sends
no RST (faketcp) and no echo reply of its own (icmp) -- and without rules it does, so the check has
teeth; the rules are gone after a SIGTERM; a kill -9 leaves them and the next start removes them.
Needs root (namespaces, raw sockets, firewall): skipped on a laptop, a failure under CI=true.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

import pytest

from sidecar.errors import ProtocolError
from sidecar.net import raw_filter
from sidecar.net.firewall import Pattern, gen_rule
from sidecar.net.raw_socket import open_receiver, reserve_port
from sidecar.proto.ipv4 import PROTO_ICMP, PROTO_TCP, build_ipv4, parse_ipv4
from sidecar.proto.l4 import TCP_RST, build_icmp_echo, build_tcp, build_udp, parse_raw
from tests.e2e.netns import NetnsPair, capture, captured_ipv4, in_netns, sh, udp_socket
from tests.helpers import Process, require

RAW_PORT = 4096
UDP_PORT = 3333
ECHO_PORT = 7000
PEER = [sys.executable, "-m", "tests.e2e.u2r_peer"]


@pytest.fixture(scope="module")
def ns():
    require(os.geteuid() == 0, "needs root for network namespaces, raw sockets and firewall rules")
    require(shutil.which("ip") is not None and shutil.which("nft") is not None
            and shutil.which("iptables") is not None, "needs iproute2, nftables and iptables")
    pair = NetnsPair(f"{os.getpid() % 100000}")
    try:
        pair.create()
        yield pair
    finally:
        pair.delete()


@pytest.fixture(scope="module")
def echo(ns: NetnsPair):
    """A UDP echo target in the server namespace: on 127.0.0.1 (behind the tunnel) and on the veth
    address (for the direct-UDP baseline)."""
    socks = [udp_socket(ns.server, ("127.0.0.1", ECHO_PORT)), udp_socket(ns.server, (ns.SERVER_IP, ECHO_PORT))]
    for sock in socks:
        threading.Thread(target=_echo_loop, args=(sock,), daemon=True).start()
    yield
    for sock in socks:
        sock.close()


def _echo_loop(sock: socket.socket) -> None:
    try:
        while True:
            data, peer = sock.recvfrom(65536)
            sock.sendto(data, peer)
    except OSError:
        return


class Peers:
    """A server and a client peer process, stopped (SIGTERM) and checked on exit."""

    def __init__(self, ns: NetnsPair, tmp: Path, mode: str, cipher: str, auth: str, rules: str) -> None:
        common = ["--raw", f"{ns.SERVER_IP}:{RAW_PORT}", "--mode", mode, "--cipher", cipher, "--auth", auth,
                  "--rules", rules]
        self.server = Process(["ip", "netns", "exec", ns.server, *PEER, "server", "--udp",
                               f"127.0.0.1:{ECHO_PORT}", *common], tmp / f"server-{mode}.log")
        wait_line(self.server, "started")
        self.client = Process(["ip", "netns", "exec", ns.client, *PEER, "client", "--udp",
                               f"127.0.0.1:{UDP_PORT}", *common], tmp / f"client-{mode}.log")
        wait_line(self.client, "connected to")

    def stop(self) -> tuple[str, str]:
        return self.client.stop(), self.server.stop()


def wait_line(proc: Process, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.output():
        if proc.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {text!r} from peer:\n{proc.stop()}")
        time.sleep(0.05)


def exchange(sock: socket.socket, target: tuple[str, int], count: int, window: int = 8, size: int = 0) -> int:
    """Send `count` datagrams of 1..1300 bytes (or all of `size`), numbered, `window` in flight; return
    how many echoes came back intact. Each payload is checked byte for byte."""
    rng = random.Random(count)
    sent: dict[int, bytes] = {}
    ok = next_index = 0
    sock.settimeout(2.0)
    while next_index < count or sent:
        while next_index < count and len(sent) < window:
            length = size or rng.randint(1, 1300)
            payload = struct.pack("!I", next_index)[:length] + rng.randbytes(max(0, length - 4))
            sent[next_index] = payload
            sock.sendto(payload, target)
            next_index += 1
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        index = struct.unpack("!I", data[:4])[0] if len(data) >= 4 else _short_index(sent, data)
        if sent.get(index) == data:
            del sent[index]
            ok += 1
    return ok


def _short_index(sent: dict[int, bytes], data: bytes) -> int:
    return next((i for i, p in sent.items() if p == data), -1)


def kernel_replies(packets: list[bytes]) -> tuple[int, int]:
    """(TCP RSTs, ICMP echo replies that echo a request's payload -- the kernel's, not ours)."""
    rsts, requests, echoed = 0, set(), 0
    for packet in packets:
        try:
            raw = parse_raw(packet)
        except ProtocolError:  # not a packet we could be counting
            continue
        if raw.ip.proto == PROTO_TCP and raw.l4.flags & TCP_RST:
            rsts += 1
        elif raw.ip.proto == PROTO_ICMP and raw.l4.type == 8:
            requests.add((raw.l4.ident, raw.l4.seq, bytes(raw.payload)))
        elif raw.ip.proto == PROTO_ICMP and raw.l4.type == 0:
            echoed += (raw.l4.ident, raw.l4.seq, bytes(raw.payload)) in requests
    return rsts, echoed


CASES = [("faketcp", "aes128cbc", "md5", "nft"), ("faketcp", "aes128cfb", "hmac_sha1", "iptables"),
         ("udp", "xor", "simple", "nft"), ("icmp", "aes128cbc", "crc32", "iptables"),
         ("easy-faketcp", "aes128cbc", "md5", "none")]  # udp2raw discourages rules here: the kernel's
                                                        # own handshake must get through


@pytest.mark.parametrize(("mode", "cipher", "auth", "rules"), CASES)
def test_udp_both_ways_without_kernel_interference(ns: NetnsPair, echo: None, tmp_path: Path, mode: str,
                                                   cipher: str, auth: str, rules: str) -> None:
    cap = capture(ns.server, ns.server_dev)
    peers = Peers(ns, tmp_path, mode, cipher, auth, rules)
    try:
        assert (rules == "none") != bool(ns.rules(ns.server) and ns.rules(ns.client)), "rules while running"
        app = udp_socket(ns.client, ("127.0.0.1", 0))
        with app:
            assert exchange(app, ("127.0.0.1", UDP_PORT), 1000) == 1000
        packets = captured_ipv4(cap)
    finally:
        client_log, server_log = peers.stop()
        cap.close()
    assert "counters" in client_log and "counters" in server_log
    assert kernel_replies(packets) == (0, 0), "the kernel answered the raw traffic"
    assert len(packets) > 2000
    assert ns.rules(ns.server) == "" and ns.rules(ns.client) == "", "rules left behind"


@pytest.mark.parametrize("mode", ["faketcp", "icmp"])
def test_without_rules_the_kernel_interferes(ns: NetnsPair, echo: None, tmp_path: Path, mode: str) -> None:
    """The negative control: the same check does see the kernel's RSTs / echo replies when no rule hides
    the traffic (and the tunnel limps on regardless: both ends ignore them)."""
    cap = capture(ns.server, ns.server_dev)
    peers = Peers(ns, tmp_path, mode, "aes128cbc", "md5", "none")
    try:
        app = udp_socket(ns.client, ("127.0.0.1", 0))
        with app:
            exchange(app, ("127.0.0.1", UDP_PORT), 50)
        time.sleep(0.2)
        packets = captured_ipv4(cap)
    finally:
        peers.stop()
        cap.close()
    rsts, echoed = kernel_replies(packets)
    assert (rsts if mode == "faketcp" else echoed) > 0


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_kill_9_leaves_rules_that_the_next_start_removes(ns: NetnsPair, echo: None, tmp_path: Path,
                                                         backend: str) -> None:
    args = ["ip", "netns", "exec", ns.client, *PEER, "client", "--raw", f"{ns.SERVER_IP}:{RAW_PORT}", "--udp",
            f"127.0.0.1:{UDP_PORT}", "--rules", backend]
    first = Process(args, tmp_path / "first.log")
    try:
        wait_line(first, "started")
        stale = ns.rules(ns.client)
        first.proc.kill()
        first.proc.wait()
        assert stale and ns.rules(ns.client) == stale, "kill -9 cannot clean up"
        second = Process(args, tmp_path / "second.log")
        try:
            wait_line(second, "started")
            now = ns.rules(ns.client)
            assert now and now != stale and "stale rule" in second.output()
        finally:
            second.stop()
    finally:
        first.stop(signal.SIGKILL)
    assert ns.rules(ns.client) == ""


def test_rtt_and_cpu_per_packet_against_direct_udp(ns: NetnsPair, echo: None, tmp_path: Path) -> None:
    """Measured, not asserted tightly (printed with -s): p50/p99 of 64-byte round trips through the
    tunnel and direct, then 1200-byte echoes with 32 in flight: rate and each peer's CPU per packet."""
    peers = Peers(ns, tmp_path, "faketcp", "aes128cbc", "md5", "nft")
    try:
        with udp_socket(ns.client, ("127.0.0.1", 0)) as app, udp_socket(ns.client, ("0.0.0.0", 0)) as plain:
            tunnel = round_trips(app, ("127.0.0.1", UDP_PORT), 1000)
            direct = round_trips(plain, (ns.SERVER_IP, ECHO_PORT), 1000)
            cpu_before = [cpu_seconds(p.proc.pid) for p in (peers.client, peers.server)]
            start = time.perf_counter()
            echoed = exchange(app, ("127.0.0.1", UDP_PORT), 5000, window=32, size=1200)
            elapsed = time.perf_counter() - start
            cpu = [cpu_seconds(p.proc.pid) - b for p, b in zip((peers.client, peers.server), cpu_before, strict=True)]
            rss = [rss_mb(p.proc.pid) for p in (peers.client, peers.server)]
    finally:
        peers.stop()
    packets = 2 * echoed  # each peer handles every datagram twice: once each way
    rate = 8 * 1200 * echoed / elapsed / 1e6
    print(f"\nRTT µs p50/p99: tunnel {tunnel[0]:.0f}/{tunnel[1]:.0f}, direct UDP {direct[0]:.0f}/{direct[1]:.0f}"
          f"\n1200 B echoes: {echoed}/5000 in {elapsed:.2f} s = {rate:.0f} Mbit/s each way;"
          f" CPU µs per packet: client {1e6 * cpu[0] / packets:.0f}, server {1e6 * cpu[1] / packets:.0f};"
          f" RSS MB: client {rss[0]:.1f}, server {rss[1]:.1f}")
    assert tunnel[0] < 20_000 and echoed >= 4950


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_trips(sock: socket.socket, target: tuple[str, int], count: int) -> tuple[float, float]:
    sock.settimeout(2.0)
    samples = []
    payload = bytes(64)
    for _ in range(count):
        start = time.perf_counter()
        sock.sendto(payload, target)
        sock.recv(65536)
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


# --- pieces that need no namespace ----------------------------------------------------------------


def _tcp(src: str, dst: str, sport: int, dport: int) -> bytes:
    a, b = socket.inet_aton(src), socket.inet_aton(dst)
    seg = build_tcp(a, b, sport=sport, dport=dport, seq=1, ack=2, flags=0x10, window=1, tsval=0, tsecr=0)
    return build_ipv4(a, b, PROTO_TCP, len(seg), 1) + seg


def test_bpf_program_matches_only_our_traffic() -> None:
    prog = raw_filter.program(PROTO_TCP, src="10.0.0.1", sport=4096, dport=30000)
    assert raw_filter_run(prog, _tcp("10.0.0.1", "10.0.0.2", 4096, 30000))
    assert not raw_filter_run(prog, _tcp("10.0.0.1", "10.0.0.2", 4096, 30000), pkttype=4)  # our own, outgoing
    assert not raw_filter_run(prog, _tcp("10.0.0.9", "10.0.0.2", 4096, 30000))
    assert not raw_filter_run(prog, _tcp("10.0.0.1", "10.0.0.2", 4097, 30000))
    assert not raw_filter_run(prog, _tcp("10.0.0.1", "10.0.0.2", 4096, 30001))
    a, b = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
    udp = build_udp(a, b, 4096, 30000, b"x")
    assert not raw_filter_run(prog, build_ipv4(a, b, 17, len(udp), 1) + udp)
    icmp_prog = raw_filter.program(PROTO_ICMP, icmp_type=8)
    echo_req = build_icmp_echo(8, 5, 0, b"x")
    assert raw_filter_run(icmp_prog, build_ipv4(a, b, PROTO_ICMP, len(echo_req), 1) + echo_req)
    echo_rep = build_icmp_echo(0, 5, 0, b"x")
    assert not raw_filter_run(icmp_prog, build_ipv4(a, b, PROTO_ICMP, len(echo_rep), 1) + echo_rep)


def raw_filter_run(prog: bytes, packet: bytes, pkttype: int = 0) -> bool:
    """A reference interpreter for the classic-BPF subset raw_filter emits."""
    insns = [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]
    sizes = {0x30: 1, 0x50: 1, 0x28: 2, 0x48: 2, 0x20: 4}
    a = x = pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x06:
            return k != 0
        if code in sizes:
            base = x if code in (0x50, 0x48) else 0
            if k == 0xFFFFF004:
                a = pkttype
            elif base + k + sizes[code] > len(packet):
                return False
            else:
                a = int.from_bytes(packet[base + k:base + k + sizes[code]], "big")
        elif code == 0xB1:
            x = 4 * (packet[k] & 0xF)
        else:
            pc += jt if (a == k if code == 0x15 else a & k) else jf


def test_kernel_runs_the_filter_and_drops_our_outgoing_copies(ns: NetnsPair) -> None:
    wanted = raw_filter.program(17, src="127.0.0.1", dport=40001)
    receiver = in_netns(ns.server, lambda: open_receiver(wanted, dev="lo"))
    sender = udp_socket(ns.server, ("127.0.0.1", 0))
    with receiver, sender:
        for port, payload in ((40001, b"mine"), (40002, b"other"), (40001, b"mine too")):
            sender.sendto(payload, ("127.0.0.1", port))
        time.sleep(0.1)
        seen = []
        while True:
            try:
                seen.append(bytes(parse_ipv4(receiver.recv(65536))[1][8:]))  # lo: checksums left partial
            except BlockingIOError:
                break
    assert seen == [b"mine", b"mine too"]  # once each: loopback's outgoing copies are filtered out


@pytest.mark.parametrize(("mode", "kind"), [("faketcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM),
                                            ("icmp", socket.SOCK_DGRAM)])
def test_reserved_port_is_not_handed_out(mode: str, kind: int) -> None:
    held = reserve_port(mode, "127.0.0.1", 0)
    port = held.getsockname()[1]
    with held, socket.socket(socket.AF_INET, kind) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError):
            other.bind(("127.0.0.1", port))


def test_gen_rule_prints_udp2raws_rules() -> None:
    assert gen_rule(Pattern("client", "faketcp", "10.0.0.1", 4096)) == (
        "iptables -I INPUT -s 10.0.0.1 -p tcp -m tcp --sport 4096 -j DROP")
    assert gen_rule(Pattern("server", "udp", None, 4096)) == "iptables -I INPUT -p udp -m udp --dport 4096 -j DROP"
    assert gen_rule(Pattern("server", "icmp", "10.0.0.1", 0)) == (
        "iptables -I INPUT -d 10.0.0.1 -p icmp --icmp-type 8 -j DROP")
    assert "icmp type echo-reply drop" in gen_rule(Pattern("client", "icmp", "10.0.0.1", 0), "nft")


FIREWALL = """
import os, subprocess, sys
from sidecar.net.firewall import Firewall, Pattern, clean_stale, clear_all
backend, step = sys.argv[1], sys.argv[2]
fw = Firewall(Pattern("client", "faketcp", "10.201.0.1", 4096), 0xABCD, backend)
if step == "crash":
    fw.install()
    os._exit(0)  # no atexit, no stop: what a kill -9 leaves
if step == "keep":
    fw.install()
    if backend == "nft":
        subprocess.run(["nft", "delete", "table", "ip", fw.table], check=True)
    else:
        subprocess.run(fw._input_rule("-D"), check=True)
    gone = not fw.present()
    fw.ensure()
    back = fw.present()
    fw.remove()
    print(gone, back, fw.present())
if step == "exit":
    fw.install()
    sys.exit(0)  # a normal exit without stop(): atexit removes the rule
if step == "stale":
    print(clean_stale(backend))
if step == "clear":
    print(clear_all(backend))
"""


def firewall_step(ns: str, backend: str, step: str) -> str:
    return sh("ip", "netns", "exec", ns, sys.executable, "-c", FIREWALL, backend, step).strip()


@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_keep_rule_clear_and_live_owners(ns: NetnsPair, tmp_path: Path, backend: str) -> None:
    assert firewall_step(ns.client, backend, "keep") == "True True False"  # re-added after a reload, then removed
    firewall_step(ns.client, backend, "exit")
    assert ns.rules(ns.client) == ""
    live = Process(["ip", "netns", "exec", ns.client, *PEER, "client", "--raw", f"{ns.SERVER_IP}:{RAW_PORT}",
                    "--udp", f"127.0.0.1:{UDP_PORT}", "--rules", backend], tmp_path / "live.log")
    try:
        wait_line(live, "started")
        rules = ns.rules(ns.client)
        assert firewall_step(ns.client, backend, "stale") == "0" and ns.rules(ns.client) == rules  # owner alive
        firewall_step(ns.client, backend, "crash")
        assert ns.rules(ns.client) != rules
        assert int(firewall_step(ns.client, backend, "clear")) >= 2  # --clear: every one, whoever owns it
        assert ns.rules(ns.client) == ""
    finally:
        live.stop()
    assert ns.rules(ns.client) == ""


def test_server_restart_mid_stream_client_reconnects_within_15_s(ns: NetnsPair, echo: None, tmp_path: Path) -> None:
    """The client notices the silence (10 s without heartbeats), handshakes again from a new port -- a new
    reserved socket, filter and SYN -- and the same local flow carries on."""
    peers = Peers(ns, tmp_path, "faketcp", "aes128cbc", "md5", "nft")
    try:
        with udp_socket(ns.client, ("127.0.0.1", 0)) as app:
            assert exchange(app, ("127.0.0.1", UDP_PORT), 20) == 20
            peers.server.stop()
            peers.server = Process(peers.server.proc.args, tmp_path / "server-restarted.log")
            wait_line(peers.server, "started")
            start = time.monotonic()
            wait_line(peers.client, "reconnecting", timeout=15)
            wait_line(peers.server, "connected", timeout=15)
            recovered = time.monotonic() - start
            assert exchange(app, ("127.0.0.1", UDP_PORT), 20) == 20
    finally:
        peers.stop()
    assert recovered < 15
    assert ns.rules(ns.server) == "" and ns.rules(ns.client) == ""
