"""Hostile datagrams against our kcp-server and kcp-client: dropped and counted, while a transfer goes on.

The junk is injected by a UDP relay that sits between the two processes, so it arrives from the very
address (and, where the fault needs it, with the very conv) of the live session.
"""

import contextlib
import os
import socket
import struct
import threading
import time

from sidecar.proto import smux, snappy_frame
from sidecar.proto.kcp_crypt import KcpCrypt, derive_key
from sidecar.proto.kcp_pipeline import KcpPipeline, KcpSettings, route
from tests.helpers import EchoServer, counters, echo_transfer, free_port, start_sidecar
from tests.kcp_helpers import wait_ready

KEY = "faults-kcp"
CRYPT = KcpCrypt("aes", derive_key(KEY))
TRANSFER = 3 * 1024 * 1024
JUNK_EACH = 20


class Injector:
    """A UDP relay client <-> server that can also send crafted packets either way."""

    def __init__(self, server_port: int) -> None:
        self.server = ("127.0.0.1", server_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.client: tuple[str, int] | None = None
        self.conv: int | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                data, source = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            if source == self.server:
                if self.client is not None:
                    self.sock.sendto(data, self.client)
                continue
            self.client = source
            if self.conv is None:
                routed = route(CRYPT.decrypt(data))
                self.conv = routed[0] if routed else None
            self.sock.sendto(data, self.server)

    def to_server(self, packet: bytes) -> None:
        self.sock.sendto(packet, self.server)

    def to_client(self, packet: bytes) -> None:
        assert self.client is not None
        self.sock.sendto(packet, self.client)

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


def kcp_segment(conv: int, cmd: int) -> bytes:
    return struct.pack("<IBBHIIII", conv, cmd, 0, 128, 0, 5, 0, 0)


def junk(conv: int) -> dict[str, list[bytes]]:
    """Faulty packets by the counter they must land in."""
    valid = CRYPT.encrypt(b"\x00" * 8 + kcp_segment(conv, 82))
    flipped = bytearray(valid)
    flipped[30] ^= 0x40
    bad_fec = struct.pack("<IHH", 7, 0xF1, 999) + kcp_segment(conv, 82)  # size field lies
    return {
        "crypt_errors": [
            KcpCrypt("aes", derive_key("wrong key")).encrypt(kcp_segment(conv, 82)),  # wrong key
            os.urandom(7),  # shorter than the crypt header
            valid[:-3],  # truncated: CRC fails
            bytes(flipped),  # corrupted: CRC fails
        ],
        "fec_bad": [CRYPT.encrypt(bad_fec)],
        "kcp_errors": [CRYPT.encrypt(kcp_segment(conv, 99)),  # unknown KCP command
                       CRYPT.encrypt(kcp_segment(conv, 81)[:20])],  # truncated segment header
    }


def config(server_port: int, client_port: int, via: int, target: int) -> tuple[str, str]:
    server = f'[[kcp-server]]\nlisten = "127.0.0.1:{server_port}"\ntarget = "127.0.0.1:{target}"\nkey = "{KEY}"\n'
    client = f'[[kcp-client]]\nlocaladdr = "127.0.0.1:{client_port}"\nremoteaddr = "127.0.0.1:{via}"\nkey = "{KEY}"\n'
    return server, client


def test_junk_on_a_live_session_is_dropped_and_counted(tmp_path):
    echo = EchoServer()
    server_port, client_port = free_port(), free_port()
    injector = Injector(server_port)
    server_toml, client_toml = config(server_port, client_port, injector.port, echo.port)
    server = start_sidecar(server_toml, tmp_path, "server")
    wait_ready(server)
    client = start_sidecar(client_toml, tmp_path, "client", wait_ports=(client_port,))
    try:
        with socket.create_connection(("127.0.0.1", client_port), timeout=30) as sock:
            result: list[tuple[str, str]] = []
            mover = threading.Thread(target=lambda: result.append(echo_transfer(sock, TRANSFER)))
            mover.start()
            while injector.conv is None:
                time.sleep(0.01)
            faults = junk(injector.conv)
            for _ in range(JUNK_EACH):
                for packets in faults.values():
                    for packet in packets:
                        injector.to_server(packet)
                        injector.to_client(packet)
                time.sleep(0.005)
            mover.join(60)
        assert result and result[0][0] == result[0][1]
    finally:
        client_log = client.stop()
        server_log = server.stop()
        injector.close()
        echo.close()
    for log, role in ((server_log, "kcp-server[0]"), (client_log, "kcp-client[0]")):
        stats = counters(log, role)
        for name, packets in faults.items():
            assert stats[name] == JUNK_EACH * len(packets), (role, name, stats)
        assert stats["sessions"] == 1 and stats["smux_errors"] == 0, (role, stats)
        assert stats["udp_dropped"] >= JUNK_EACH * 7


def rogue_packets(conv: int, frames: bytes) -> list[bytes]:
    """Datagrams of a KCP session that carries `frames` (snappy-framed) as its byte stream."""
    rogue = KcpPipeline(conv, KcpSettings(), CRYPT, client=True, now=0.0)
    rogue.kcp.send(snappy_frame.Encoder().compress(frames))
    rogue.kcp.update(0)
    return rogue.packets_out()


def test_unknown_smux_command_ends_that_session_only(tmp_path):
    """smux treats an unknown command as a protocol error and closes the session (so does kcptun):
    counted; other sessions and the process go on."""
    echo = EchoServer()
    server_port, client_port = free_port(), free_port()
    server_toml, client_toml = config(server_port, client_port, server_port, echo.port)
    server = start_sidecar(server_toml, tmp_path, "server")
    wait_ready(server)
    client = start_sidecar(client_toml, tmp_path, "client", wait_ports=(client_port,))
    try:
        bad = smux.encode_frame(1, smux.CMD_SYN, 3) + bytes([1, 9, 0, 0, 3, 0, 0, 0])  # command 9
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rogue:
            for packet in rogue_packets(0xBADC0DE, bad):
                rogue.sendto(packet, ("127.0.0.1", server_port))
            time.sleep(0.3)
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", client_port), timeout=30) as sock:
                sent, received = echo_transfer(sock, 256 * 1024)
            assert sent == received
    finally:
        client.stop()
        server_log = server.stop()
        echo.close()
    stats = counters(server_log, "kcp-server[0]")
    assert stats["smux_errors"] == 1
    assert stats["sessions"] == 2  # the rogue's, closed, and the client's, alive throughout


def test_datagrams_from_nowhere_open_nothing(tmp_path):
    """Parity shards, junk and wrong-key packets from new addresses never create a session."""
    server_port = free_port()
    server = start_sidecar(f'[[kcp-server]]\nlisten = "127.0.0.1:{server_port}"\nkey = "{KEY}"\n', tmp_path)
    wait_ready(server)
    parity = CRYPT.encrypt(struct.pack("<IH", 10, 0xF2) + b"\0" * 40)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for packet in (parity, os.urandom(100), b"", *junk(1)["crypt_errors"]):
                with contextlib.suppress(OSError):
                    sock.sendto(packet, ("127.0.0.1", server_port))
            time.sleep(0.3)
        assert server.proc.poll() is None
    finally:
        log = server.stop()
    stats = counters(log, "kcp-server[0]")
    assert stats["sessions"] == 0
    assert stats["crypt_errors"] == 6
