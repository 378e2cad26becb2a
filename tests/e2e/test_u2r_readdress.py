"""A u2r client that changes its address or port keeps its flows (issue 4): in two namespaces, a
u2r-server role and a `sidecar udp2raw -c` client carry an echo flow, then

* address: the client namespace moves to a new address. The old one is removed and the server's ARP
  entry for it flushed, so nothing the server sends reaches the client any more: the client hears no
  heartbeat for 10 s, reconnects, and -- because its endpoint re-resolves the route's source address
  at every handshake attempt -- does so from the new address (and a new port);
* port: the server's packets to the client are dropped until the client gives up on the conn and
  reconnects, as udp2raw does, from a new port of the same address.

Either way the server moves the conn (same const_id) with its flows: the same application socket gets
its echoes again, through the same server-side flow socket, within the spec's reconnect time.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.netns import NetnsPair, sh, start_u2r_pair, udp_socket
from tests.e2e.test_u2r_raw import exchange, wait_line
from tests.helpers import Process, counters, require

KEY = "readdress-key"
NEW_IP = "10.201.0.3"
LOCAL = ("127.0.0.1", 3333)
RECONNECT_BOUND_S = 20.0  # 10 s of silence, then one handshake (each attempt gives up after 5 s)


@pytest.fixture
def ns():
    require(os.geteuid() == 0, "needs root for network namespaces, raw sockets and firewall rules")
    require(shutil.which("ip") is not None and shutil.which("nft") is not None, "needs iproute2 and nftables")
    pair = NetnsPair(f"a{os.getpid() % 10000}")
    try:
        pair.create()
        yield pair
    finally:
        pair.delete()


def _recording_echo(sock: socket.socket, peers: list[tuple[str, int]]) -> None:
    """Echo every datagram and note who sent it: the server's flow socket, one per client conv."""
    try:
        while True:
            data, peer = sock.recvfrom(65536)
            if peer not in peers:
                peers.append(peer)
            sock.sendto(data, peer)
    except OSError:
        return


def move_address(ns: NetnsPair, _client: Process) -> None:
    """Give the client a new address (the route's source from now on), drop the old one, and make the
    server forget where the old one lived."""
    ip = ["ip", "-n", ns.client]
    sh("ip", "netns", "exec", ns.client, "sysctl", "-qw", f"net.ipv4.conf.{ns.client_dev}.promote_secondaries=1")
    sh(*ip, "addr", "add", f"{NEW_IP}/24", "dev", ns.client_dev)
    sh(*ip, "addr", "del", f"{ns.CLIENT_IP}/24", "dev", ns.client_dev)
    assert f"src {NEW_IP}" in sh(*ip, "route", "get", ns.SERVER_IP)
    sh("ip", "-n", ns.server, "neigh", "flush", "dev", ns.server_dev)


def silence_server(ns: NetnsPair, client: Process) -> None:
    """Drop everything the server sends the client until the client reconnects (its heartbeats go
    unanswered: a new port, as after a NAT rebinding)."""
    nft = ["ip", "netns", "exec", ns.server, "nft"]
    sh(*nft, f"add table ip mute; add chain ip mute out {{ type filter hook output priority 0; }};"
             f" add rule ip mute out ip daddr {ns.CLIENT_IP} drop")
    try:
        wait_line(client, "reconnecting", timeout=RECONNECT_BOUND_S)
    finally:
        sh(*nft, "delete table ip mute")


def wait_for_echo(app: socket.socket, target: tuple[str, int], timeout: float) -> None:
    """Probe every 200 ms until one probe's echo comes back."""
    start = time.monotonic()
    app.settimeout(0.2)
    probe = 0
    while time.monotonic() - start < timeout:
        payload = b"probe %d" % probe
        app.sendto(payload, target)
        try:
            while app.recv(65536) != payload:  # echoes of earlier probes may still trickle in
                pass
            return
        except TimeoutError:
            probe += 1
    raise AssertionError(f"no echo within {timeout} s")


@pytest.mark.parametrize("change", ["address", "port"])
def test_client_that_changes_address_or_port_keeps_its_flow(ns: NetnsPair, tmp_path: Path, change: str) -> None:
    target = udp_socket(ns.server, ("127.0.0.1", 7000))
    flow_sockets: list[tuple[str, int]] = []
    threading.Thread(target=_recording_echo, args=(target, flow_sockets), daemon=True).start()
    server, client = start_u2r_pair(ns, tmp_path, KEY, LOCAL, 4096, wait_line)
    try:
        wait_line(client, "connected to")
        with udp_socket(ns.client, ("127.0.0.1", 0)) as app:
            assert exchange(app, LOCAL, 50) == 50
            start = time.monotonic()
            (move_address if change == "address" else silence_server)(ns, client)
            wait_for_echo(app, LOCAL, RECONNECT_BOUND_S)
            took = time.monotonic() - start
            assert exchange(app, LOCAL, 200) == 200
    finally:
        client_log, server_log = client.stop(), server.stop()
        target.close()
    print(f"\nclient with a new {change}: echoes again after {took:.1f} s")
    assert took < RECONNECT_BOUND_S
    ports = re.findall(r"connected to \S+ from port (\d+)", client_log)
    assert len(ports) == 2 and ports[0] != ports[1], client_log
    new_ip = NEW_IP if change == "address" else ns.CLIENT_IP
    assert (f"source address {ns.CLIENT_IP} -> {NEW_IP}" in client_log) == (change == "address")
    assert f"client {new_ip}:{ports[1]} moved here with its flows" in server_log
    assert counters(server_log, "srv")["moved"] == 1
    assert len(flow_sockets) == 1, "the server opened a second flow instead of moving the first"
    assert not ns.rules(ns.client) and not ns.rules(ns.server)
